/* Shared basics: status codes, the error record every fallible call fills, checked allocation. */
#ifndef TBERT_COMMON_H
#define TBERT_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    TBERT_OK = 0,
    TBERT_E_IO,          /* open/read/write/fsync/rename failed (disk full included) */
    TBERT_E_FORMAT,      /* a file is malformed (bad header, bad JSON, wrong shape, ...) */
    TBERT_E_NOMEM,       /* allocation failed or a size is beyond the caps */
    TBERT_E_ARG,         /* a caller passed an invalid argument / bad option value */
    TBERT_E_UNSUPPORTED, /* valid but not supported (unknown dtype, activation, recipe version) */
    TBERT_E_MISMATCH,    /* two valid things do not fit together (head recipe vs model) */
    TBERT_E_NODEV,       /* CUDA requested but not built in, or no device present */
    TBERT_E_CUDA,        /* a CUDA / cuBLAS call failed */
    TBERT_E_INTERNAL,
    TBERT_STATUS_COUNT
} tbert_status;

/* Every library function that can fail takes a tbert_error* (may be NULL) and fills it with a
 * one-line message that names the file and the problem. The CLI prints it as "tbert: <msg>". */
typedef struct {
    tbert_status code;
    char msg[1024];
} tbert_error;

/* Fills err (when not NULL) with a printf-style message and returns code. */
tbert_status tbert_fail(tbert_error *err, tbert_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prefixes an existing message: "context: old message". Returns err->code. */
tbert_status tbert_error_prefix(tbert_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void tbert_error_clear(tbert_error *err);
const char *tbert_status_name(tbert_status s);

/* Checked allocation helpers: they return NULL on failure or on size overflow, never abort. */
void *tbert_malloc_array(size_t n, size_t size);
void *tbert_calloc_array(size_t n, size_t size);
void *tbert_realloc_array(void *p, size_t n, size_t size);
char *tbert_strdup(const char *s);
char *tbert_strndup(const char *s, size_t n);
/* a*b and a+b with overflow detection: return false on overflow. */
bool tbert_mul_size(size_t a, size_t b, size_t *out);
bool tbert_add_size(size_t a, size_t b, size_t *out);

/* Growable int32 vector used for token ids and index lists. */
typedef struct {
    int32_t *v;
    size_t n, cap;
} tbert_i32vec;
bool tbert_i32vec_push(tbert_i32vec *vec, int32_t x);
bool tbert_i32vec_reserve(tbert_i32vec *vec, size_t cap);
void tbert_i32vec_free(tbert_i32vec *vec);

/* Number of online CPU cores (>= 1). */
int tbert_num_cores(void);
/* Monotonic clock in seconds. */
double tbert_now(void);

#ifdef __cplusplus
}
#endif
#endif
