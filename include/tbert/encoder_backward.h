/* Backward passes of the encoder's ops on the CPU (float32, OpenBLAS), for fine-tuning (issue 15), and the
 * forward twins that save what each backward needs. src/encoder_backward.c holds them all.
 *
 * Layout: packed tokens, as the CPU forward (src/encoder_cpu.c): the n_seq sequences of a batch lie one after
 * another, sequence s owning rows off[s] .. off[s+1]-1 of every [N, .] matrix (N = off[n_seq]). Only real
 * tokens are stored, so the padding mask is the sequence bounds: a token attends to its own sequence's keys.
 * A sequence of length 0 (all padding) contributes nothing and receives no gradient.
 *
 * Conventions: matrices are row-major; a linear layer's W is [out, in] as in transformers (y = x W^T + b).
 * Outputs named d* that are parameter gradients (dW, db, dgamma, dbeta) are ACCUMULATED (+=), so a caller
 * zeroes them once per step; activation gradients (dx, dz, dqkv, ...) are OVERWRITTEN unless said otherwise.
 * Determinism: every reduction over tokens (parameter gradients) runs in fixed chunks of TBERT_BWD_CHUNK rows,
 * in input order, each chunk's partial added to the running sum in chunk order (a fixed left-to-right tree), so
 * that the bits do not depend on how chunks are shared among threads. OpenBLAS must run on one thread (as the
 * CPU forward sets it): its multi-threaded sgemm gives other bits (measured in the test). No function allocates
 * or fails: the caller passes the workspaces whose sizes are stated. */
#ifndef TBERT_ENCODER_BACKWARD_H
#define TBERT_ENCODER_BACKWARD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TBERT_BWD_CHUNK 64

/* ---- linear: y[N,out] = x[N,in] W[out,in]^T + b --------------------------------------------------------- */
/* dx[N,in] = dy W (skipped when dx is NULL); dW[out,in] += dy^T x (src/gemm_cpu.c's tbert_gemm_tn_chunked);
 * db[out] += column sums of dy (db may be NULL). */
void tbert_bwd_linear(size_t N, int in, int out, const float *x, const float *W, const float *dy, float *dx,
                      float *dW, float *db);
/* acc[cols] += column sums of a[rows, cols] (row stride lda) in chunks of TBERT_BWD_CHUNK rows: each chunk summed
 * from zero row by row, then added to acc in chunk order (every bias gradient: linear, GELU, the stack's ranges). */
void tbert_bwd_colsum_chunked(size_t rows, int cols, const float *a, size_t lda, float *acc);

/* ---- bias + exact GELU: h = gelu(a), a = pre-activation (bias included), gelu(a) = a/2 (1 + erf(a/sqrt 2)) -- */
/* (erf and exp from src/cpu_math.h, as the CPU encoder: erf to 1.5e-7 absolute, exp to 2e-7 relative; the same
 * for the attention's softmax below) */
/* Forward twin: a[N,cols] += bias (bias may be NULL), h = gelu(a); a is kept (the backward's saved input). */
void tbert_fwd_bias_gelu(size_t N, int cols, float *a, const float *bias, float *h);
/* da[N,cols] = dh * gelu'(a) (da may alias dh); dbias[cols] += column sums of da (dbias may be NULL). */
void tbert_bwd_bias_gelu(size_t N, int cols, const float *a, const float *dh, float *da, float *dbias);

/* ---- residual + layernorm: z = x + r (+ bias), y = (z - mean) rstd gamma + beta ------------------------- */
/* Forward twin: z[N,H] is the sum, already formed by the caller (e.g. the sublayer's GEMM with beta = 1 onto the
 * residual); adds bias when not NULL, keeps z, writes y, mean[N] and rstd[N] = 1/sqrt(var + eps) (biased var,
 * two passes, as torch). y may not alias z. */
void tbert_fwd_layernorm(size_t N, int H, float *z, const float *bias, const float *gamma, const float *beta, float eps,
                         float *y, float *mean, float *rstd);
/* From the saved z, mean, rstd: dz[N,H] = d loss / d z (overwritten; also the gradient of the sublayer's output
 * and of its bias), and when dres is not NULL dres += dz (the residual branch's gradient, fused);
 * dgamma[H] += sum dy xhat, dbeta[H] += sum dy. ws: 2*H floats. */
void tbert_bwd_layernorm(size_t N, int H, const float *z, const float *mean, const float *rstd, const float *gamma,
                         const float *dy, float *dz, float *dres, float *dgamma, float *dbeta, float *ws);

/* ---- self-attention on packed tokens: qkv[N,3H] = [q | k | v], heads split as the forward (head h = columns
 * h*d .. h*d+d-1 of each part, d = H/n_heads); per (sequence, head): S = scale q k^T, P = softmax(S), ctx = P v. */
/* Saved probabilities, not recomputed: T <= 512, so P is at most 512 x 512 floats (1 MiB) per head and sequence,
 * sum over the batch of n_heads*L^2 floats; on a CPU storing it costs less than a second QK^T GEMM and softmax
 * (the recompute saves memory that a CPU batch does not lack). P layout: sequence by sequence, head by head, L x L
 * row-major; size tbert_attn_probs_size(). */
size_t tbert_attn_probs_size(int n_seq, const int32_t *off, int n_heads);
/* Forward twin: ctx[N,H], P. */
void tbert_fwd_attention(int n_seq, const int32_t *off, int H, int n_heads, float scale, const float *qkv, float *ctx,
                         float *P);
/* dqkv[N,3H] (overwritten) from dctx[N,H], the saved P and qkv. ws: Lmax*Lmax floats (Lmax the longest sequence). */
void tbert_bwd_attention(int n_seq, const int32_t *off, int H, int n_heads, float scale, const float *qkv,
                         const float *P, const float *dctx, float *dqkv, float *ws);

/* ---- dropout (include/tbert/dropout_rng.h has the generator and the counter convention) ------------------ */
/* One dropout site of one batch: element e of the op's output keeps its value times 1/(1-p) or becomes 0, from
 * tbert_dropout_scale(seed, step, site, base + e), e the element's index in the op's packed layout (row * cols +
 * column for a [N, cols] matrix; the offset in P for attention probabilities). base lets a caller that splits a
 * batch pass each piece's first index. p = 0 (or a NULL descriptor): no dropout. */
typedef struct {
    float p;
    uint64_t seed, step;
    uint32_t site;
    uint64_t base;
} tbert_dropout;
/* x[i] *= the multiplier of element first + i, i < n (forward of a hidden dropout, and its backward: the same
 * multipliers applied to the gradient). */
void tbert_dropout_apply(size_t n, float *x, const tbert_dropout *d, uint64_t first);

/* Attention with dropout on the probabilities (BERT's attention_probs_dropout): ctx = dropout(P) v, P the softmax
 * output, saved before dropout (the backward needs both). Pd (may be NULL; same layout as P): dropout(P) is saved
 * there too, and the backward given it takes the masks from it (an element is kept where Pd != 0; where P itself is
 * 0 the mask cannot matter) instead of drawing them again from the counters: the same bits, one Philox pass less.
 * drop->base is the P index of the first sequence's first element (P points there). ws: Lmax*Lmax floats (unused
 * without dropout). tbert_fwd_attention / tbert_bwd_attention are these with drop and Pd NULL. */
void tbert_fwd_attention_dropout(int n_seq, const int32_t *off, int H, int n_heads, float scale, const float *qkv,
                                 float *ctx, float *P, float *Pd, const tbert_dropout *drop, float *ws);
/* ws: 2*Lmax*Lmax floats with dropout, Lmax*Lmax without. */
void tbert_bwd_attention_dropout(int n_seq, const int32_t *off, int H, int n_heads, float scale, const float *qkv,
                                 const float *P, const float *Pd, const float *dctx, float *dqkv, const tbert_dropout *drop,
                                 float *ws);

/* ---- embeddings: z[N,H] = word[ids[i]] + pos[t] + type[0], t = the token's position inside its sequence (0 at
 * [CLS]); the embedding LayerNorm on z is tbert_fwd_layernorm / tbert_bwd_layernorm. */
void tbert_fwd_embeddings(int n_seq, const int32_t *off, int H, const int32_t *ids, const float *word, const float *pos,
                          const float *type, float *z);
/* From dz[N,H] = d loss / d z: dword[ids[i]] += dz[i], dpos[t] += dz[i], dtype[0] += dz[i], token by token in input
 * order (a fixed order: repeated ids sum in the same order whatever the threads). Any of the three may be NULL. */
void tbert_bwd_embeddings(int n_seq, const int32_t *off, int H, const int32_t *ids, const float *dz, float *dword,
                          float *dpos, float *dtype);

/* ---- pooling (the forward is src/pooling.c; here the hidden rows are packed) ---------------------------- */
/* dhidden[N,H] (overwritten) from dout: mean -> dout[s]/L to each real row; cls -> dout[s] to the first row;
 * flatten -> dout[s] is [out_T, H], its first L rows go back, the padded tail's gradient is dropped.
 * pool: 0 mean, 1 cls, 2 flatten (tbert_pool's values). out_T is used by flatten only. */
void tbert_bwd_pool(int pool, int n_seq, const int32_t *off, int H, int out_T, const float *dout, float *dhidden);
/* L2 normalisation y = x / max(|x|, 1e-12) per row (forward: tbert_l2_normalize_rows, which leaves zero rows as
 * they are): dx[n,dim] = (dy - y (y . dy)) / |x| from the saved y and x; identity on zero rows. dx may alias dy. */
void tbert_bwd_l2_normalize(size_t n, size_t dim, const float *x, const float *y, const float *dy, float *dx);
/* Pooler out = tanh(cls W^T + b) with the saved out: da = dout (1 - out^2), then the linear backward:
 * dcls[B,H] = da W, dW += da^T cls, db += sums of da. ws: B*H floats (da). */
void tbert_bwd_pooler(int B, int H, const float *cls, const float *W, const float *out, const float *dout, float *dcls,
                      float *dW, float *db, float *ws);

#ifdef __cplusplus
}
#endif

#endif
