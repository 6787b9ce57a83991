/* safetensors reader (mmap, validated like the reference implementation) and writer (atomic).
 * Format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}, 
 * "__metadata__": {str: str}}, then the data area. */
#ifndef TBERT_SAFETENSORS_H
#define TBERT_SAFETENSORS_H

#include "tbert/common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TBERT_ST_MAX_HEADER 100000000u /* as the reference implementation */
#define TBERT_ST_MAX_DIMS 8

typedef enum {
    TBERT_DT_F32 = 0, TBERT_DT_F16, TBERT_DT_BF16, TBERT_DT_F64,
    TBERT_DT_I64, TBERT_DT_I32, TBERT_DT_I16, TBERT_DT_I8, TBERT_DT_U8, TBERT_DT_BOOL,
    /* the rest of the format's dtypes: validated and skipped (a model never uses them) */
    TBERT_DT_U16, TBERT_DT_U32, TBERT_DT_U64, TBERT_DT_F8_E4M3, TBERT_DT_F8_E5M2,
    TBERT_DT_COUNT
} tbert_dtype;
const char *tbert_dtype_name(tbert_dtype d); /* "F32", ... */
size_t tbert_dtype_size(tbert_dtype d);
/* "F32" -> TBERT_DT_F32 ...; false for a name the format does not define. */
bool tbert_dtype_from_name(const char *name, tbert_dtype *out);

typedef struct {
    char *name;
    tbert_dtype dtype;
    int ndim;
    int64_t shape[TBERT_ST_MAX_DIMS];
    size_t numel;
    size_t offset, nbytes; /* within the data area */
    const void *data;      /* points into the mapping (may be unaligned) */
} tbert_st_tensor;

typedef struct tbert_safetensors tbert_safetensors;

/* mmaps and validates a file: header cap, JSON, dtypes, shapes, checked arithmetic, offsets sorted with
 * no holes or overlaps, header + data = file size, no duplicate names. Errors name the file and tensor.
 * Beyond the reference implementation: the header must be valid UTF-8 and nest at most 3 deep with at most
 * 2^21 JSON values (bounds cJSON's memory), shapes at most 8 dims of integers below 2^53. The JSON order of
 * tensors need not be the file order. Codes: TBERT_E_IO (open/mmap), TBERT_E_UNSUPPORTED (unknown dtype),
 * TBERT_E_FORMAT (everything else), TBERT_E_NOMEM. */
tbert_status tbert_st_open(const char *path, tbert_safetensors **out, tbert_error *err);
/* Same validation over a buffer in memory (the buffer must outlive the result); `label` names it in errors. */
tbert_status tbert_st_parse(const void *buf, size_t len, const char *label, tbert_safetensors **out, tbert_error *err);
void tbert_st_close(tbert_safetensors *st);

/* Tensors in file order (sorted by data offset). */
int tbert_st_count(const tbert_safetensors *st);
const tbert_st_tensor *tbert_st_at(const tbert_safetensors *st, int i);
const tbert_st_tensor *tbert_st_find(const tbert_safetensors *st, const char *name);
/* __metadata__ value, or NULL when absent. */
const char *tbert_st_meta(const tbert_safetensors *st, const char *key);
int tbert_st_meta_count(const tbert_safetensors *st);
const char *tbert_st_meta_key(const tbert_safetensors *st, int i);
const char *tbert_st_path(const tbert_safetensors *st);
/* The whole file (header included) as mapped / passed to tbert_st_parse, e.g. to hash it. */
const void *tbert_st_bytes(const tbert_safetensors *st, size_t *len);

/* Converts a F32/F16/BF16/F64 tensor to float32 (out holds t->numel floats). Other dtypes: error. */
tbert_status tbert_st_to_f32(const tbert_safetensors *st, const tbert_st_tensor *t, float *out, tbert_error *err);
/* Exact scalar conversions (IEEE half incl. subnormals/inf/NaN; bfloat16 = top half of a float). */
float tbert_f16_to_f32(uint16_t h);
float tbert_bf16_to_f32(uint16_t h);
/* float32 -> the nearest bfloat16 (ties to even; a NaN stays a (quiet) NaN) */
uint16_t tbert_f32_to_bf16(float f);

/* Writer: collects tensors (data copied) and metadata, then saves atomically (temp + fsync + rename):
 * JSON header (__metadata__ first, then tensors in insertion order) padded with spaces to a multiple of 8,
 * data in insertion order. A failed save leaves any previous file at `path` untouched. A metadata key set
 * twice keeps the last value; a tensor name added twice is TBERT_E_ARG. */
typedef struct tbert_st_writer tbert_st_writer;
tbert_st_writer *tbert_st_writer_new(void);
tbert_status tbert_st_writer_add(tbert_st_writer *w, const char *name, tbert_dtype dtype, int ndim, const int64_t *shape,
                                 const void *data, tbert_error *err);
tbert_status tbert_st_writer_meta(tbert_st_writer *w, const char *key, const char *value, tbert_error *err);
tbert_status tbert_st_writer_save(tbert_st_writer *w, const char *path, tbert_error *err);
void tbert_st_writer_free(tbert_st_writer *w);

#ifdef __cplusplus
}
#endif
#endif
