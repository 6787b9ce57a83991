/* The frozen encoder: token ids -> last hidden state -> pooled features, on the CPU (OpenBLAS) or CUDA.
 * Backends implement the same function; the CPU backend is the reference in tests. */
#ifndef TBERT_ENCODER_H
#define TBERT_ENCODER_H

#include "tbert/common.h"
#include "tbert/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { TBERT_POOL_MEAN = 0, TBERT_POOL_CLS, TBERT_POOL_FLATTEN, TBERT_POOL_POOLER, TBERT_POOL_COUNT } tbert_pool;
const char *tbert_pool_name(tbert_pool p);
tbert_status tbert_pool_parse(const char *s, tbert_pool *out, tbert_error *err);

typedef enum { TBERT_PREC_FP32 = 0, TBERT_PREC_TF32, TBERT_PREC_BF16, TBERT_PREC_COUNT } tbert_precision;
const char *tbert_precision_name(tbert_precision p);
tbert_status tbert_precision_parse(const char *s, tbert_precision *out, tbert_error *err);

typedef enum { TBERT_DEVICE_AUTO = 0, TBERT_DEVICE_CPU, TBERT_DEVICE_CUDA } tbert_device_kind;
typedef struct {
    tbert_device_kind kind;
    int index; /* cuda:N */
} tbert_device;
/* "auto" | "cpu" | "cuda" | "cuda:N" */
tbert_status tbert_device_parse(const char *s, tbert_device *out, tbert_error *err);
/* Number of usable CUDA devices (0 when built without CUDA, when the CUDA plugin or its libraries cannot be
 * loaded, or when none is present). Loads the plugin to ask (src/cuda_plugin.c). */
int tbert_cuda_device_count(void);

typedef struct {
    tbert_device device;
    tbert_precision precision; /* CPU supports fp32 only (others are refused for cpu) */
    int threads;               /* CPU threads; 0 = all cores */
    int layers;                /* use the first K layers; 0 = all */
    int batch;                 /* sequences per forward batch; 0 = backend default */
    bool quiet;                /* no "using CPU" line for auto */
} tbert_encoder_opts;
tbert_encoder_opts tbert_encoder_default_opts(void);

typedef struct tbert_encoder tbert_encoder;

/* Creates a backend for the model. device auto: CUDA when present, else CPU (says so once on stderr
 * unless quiet). Asking for cuda without CUDA support/device is TBERT_E_NODEV. */
tbert_status tbert_encoder_create(const tbert_model *m, const tbert_encoder_opts *opts, tbert_encoder **out, tbert_error *err);
void tbert_encoder_free(tbert_encoder *e);
bool tbert_encoder_is_cuda(const tbert_encoder *e);

/* Feature dimension for a pooling: H, or max_len*H for flatten. */
size_t tbert_pool_dim(const tbert_model *m, tbert_pool pool, int max_len);

/* Pools n already-tokenized sequences (each with [CLS]/[SEP], length <= max_len) into out (n x dim,
 * row i for sequence i, input order). Internally sorts by length and pads each batch to its longest
 * sequence (flatten: to max_len; positions beyond a sequence are zero in the output). */
tbert_status tbert_encoder_pool(tbert_encoder *e, int n, const int32_t *const *seqs, const int *lens, int max_len,
                                tbert_pool pool, bool normalize, float *out, tbert_error *err);

/* Low level, one padded batch: last hidden state [B,T,H] (host memory). ids is B*T (values at
 * t >= lengths[b] are ignored), 1 <= lengths[b] <= T <= max_position. Rows t >= lengths[b] are zero. */
tbert_status tbert_encoder_forward(tbert_encoder *e, int B, int T, const int32_t *ids, const int32_t *lengths,
                                   float *hidden, tbert_error *err);

/* One padded batch pooled as it is (no sorting): out[B, tbert_pool_dim(m, pool, out_T)], out_T >= T
 * (only flatten uses out_T; pass T otherwise). This is what tbert_encoder_pool runs per batch and what
 * `tbert bench` times. */
tbert_status tbert_encoder_pool_batch(tbert_encoder *e, int B, int T, const int32_t *ids, const int32_t *lengths,
                                      tbert_pool pool, int out_T, bool normalize, float *out, tbert_error *err);

/* The model and options the encoder was created with (opts: layers resolved to the count in use,
 * threads to the count in use, device.kind to CPU or CUDA). */
const tbert_model *tbert_encoder_model(const tbert_encoder *e);
tbert_encoder_opts tbert_encoder_get_opts(const tbert_encoder *e);
/* Forward FLOPs of one sequence of length L (matrix products and attention, multiply-add = 2). */
double tbert_encoder_flops(const tbert_config *cfg, int layers, int L);

/* A model with random weights for a config (no weights file): benchmarks of any BERT shape and CPU/GPU
 * parity on the real configs. Deterministic for a seed; O(1)-scaled weights (matrices uniform with std
 * 1/sqrt(fan_in), embeddings std 1, layernorm gains 1 +- 0.1, biases std 0.1) so that attention is peaked
 * and every term matters. No vocabulary (vocab NULL). Free with tbert_model_free. */
tbert_status tbert_model_random(const tbert_config *cfg, bool with_pooler, uint64_t seed, tbert_model **out,
                                tbert_error *err);

#ifdef __cplusplus
}
#endif
#endif
