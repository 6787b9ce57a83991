/* Internal interface between the encoder front end (src/encoder.c: device choice, length sorting,
 * batching, input order, L2 normalisation) and its two backends:
 *   CPU  : src/encoder_cpu.c  (OpenBLAS; the reference)
 *   CUDA : src/encoder_cuda.c + the kernels/ folder (cuBLAS + custom kernels)
 * Both compute the same function on one padded batch. Not a public header.
 *
 * Shapes: B sequences, T padded length (1 <= T <= cfg.max_position), H = cfg.hidden.
 * ids is B*T row-major (entries at t >= lengths[b] are ignored; any value allowed there),
 * 1 <= lengths[b] <= T. Token type ids are all 0. The attention mask is (t < lengths[b]) and
 * is applied as an additive mask on the scores, as transformers does (-inf-like large negative, so
 * padded keys get weight 0; padded query rows are computed but never read by pooling).
 *
 * Rules for the CUDA backend (src/encoder_cuda.c, owned by the CUDA engineer):
 * - encoder_cuda.c is part of the CUDA plugin (libtbert_cuda.so, include/tbert/cuda_plugin.h), never of
 *   libtbert: src/encoder.c reaches the functions below only through the plugin's table (cu->encoder_*), and
 *   answers TBERT_E_NODEV itself when the plugin cannot be loaded or there is no device.
 * - All pointers passed in are host pointers; outputs are host memory written completely (every element
 *   of out, including the zeros of flatten), so callers may poison them before the call.
 * - opts->layers: 0 = all cfg.layers, else 1..cfg.layers (already validated by encoder.c).
 * - opts->batch: a hint for workspace sizing; forward may be called with any B, T (grow on demand).
 * - opts->precision: fp32 / tf32 / bf16 (encoder.c refuses non-fp32 for the CPU only).
 * - Errors: TBERT_E_NODEV (no device / index out of range), TBERT_E_CUDA (a CUDA/cuBLAS call failed),
 *   TBERT_E_NOMEM (device allocation failed), TBERT_E_ARG (bad B/T/lengths); one-line message.
 */
#ifndef TBERT_ENCODER_BACKEND_H
#define TBERT_ENCODER_BACKEND_H

#include "tbert/encoder.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- CPU backend (src/encoder_cpu.c) --------------------------------------------------------- */
typedef struct tbert_cpu_encoder tbert_cpu_encoder;
tbert_status tbert_cpu_encoder_create(const tbert_model *m, const tbert_encoder_opts *opts, tbert_cpu_encoder **out,
                                      tbert_error *err);
void tbert_cpu_encoder_free(tbert_cpu_encoder *e);
/* last hidden state hidden[B,T,H]; rows t >= lengths[b] are zero */
tbert_status tbert_cpu_encoder_forward(tbert_cpu_encoder *e, int B, int T, const int32_t *ids, const int32_t *lengths,
                                       float *hidden, tbert_error *err);

/* pooled features of one padded batch, as tbert_cuda_encoder_forward_pool below (no normalisation); pooled
 * straight from the packed activations, without the [B,T,H] round trip */
tbert_status tbert_cpu_encoder_forward_pool(tbert_cpu_encoder *e, int B, int T, const int32_t *ids,
                                            const int32_t *lengths, tbert_pool pool, int out_T, float *out,
                                            tbert_error *err);

/* ---- CUDA backend (src/encoder_cuda.c), inside the CUDA plugin only --------------------------- */
typedef struct tbert_cuda_encoder tbert_cuda_encoder;
/* Uploads the model's weights (converted to the precision's storage type as it sees fit) to device
 * opts->device.index. */
tbert_status tbert_cuda_encoder_create(const tbert_model *m, const tbert_encoder_opts *opts, tbert_cuda_encoder **out,
                                       tbert_error *err);
void tbert_cuda_encoder_free(tbert_cuda_encoder *e);
/* last hidden state hidden[B,T,H], copied to host; rows t >= lengths[b] are set to zero (the CPU
 * backend does not compute padded rows at all: real rows do not depend on them) */
tbert_status tbert_cuda_encoder_forward(tbert_cuda_encoder *e, int B, int T, const int32_t *ids,
                                        const int32_t *lengths, float *hidden, tbert_error *err);
/* Pooled features of one padded batch, pooled on the device, copied to host: out[B, dim] with
 * dim = tbert_pool_dim(m, pool, out_T), i.e. H, or out_T*H for flatten (out_T >= T; row b holds
 * hidden[b, t, :] for t < lengths[b] and zeros for lengths[b] <= t < out_T). No L2 normalisation
 * (encoder.c does it on the host). pool == POOLER requires m->pooler_w (encoder.c checks).
 * Semantics are exactly tbert_pool_hidden() below applied to the forward's hidden state. */
tbert_status tbert_cuda_encoder_forward_pool(tbert_cuda_encoder *e, int B, int T, const int32_t *ids,
                                             const int32_t *lengths, tbert_pool pool, int out_T, float *out,
                                             tbert_error *err);

/* ---- pooling reference on the host (src/pooling.c) --------------------------------------------- */
/* out[B, dim] from hidden[B,T,H]:
 *   MEAN    masked mean over t < lengths[b]
 *   CLS     hidden[b, 0, :]
 *   FLATTEN hidden[b, t, :] for t < lengths[b], zeros up to out_T (out_T >= T)
 *   POOLER  tanh(pooler_w @ hidden[b,0,:] + pooler_b)  (HF layout: pooler_w is (out=H, in=H))
 * Fails with TBERT_E_ARG on pooler without pooler weights or out_T < T. */
tbert_status tbert_pool_hidden(const tbert_model *m, tbert_pool pool, int B, int T, const float *hidden,
                               const int32_t *lengths, int out_T, float *out, tbert_error *err);
/* In place: x[B,H] holds CLS rows; replaces them by tanh(pooler_w @ cls + pooler_b). */
tbert_status tbert_pooler_dense(const tbert_model *m, int B, float *x, tbert_error *err);
/* L2-normalises each of the n rows of x (dim values each) in place; an all-zero row stays zero. */
void tbert_l2_normalize_rows(float *x, size_t n, size_t dim);

#ifdef __cplusplus
}
#endif
#endif
