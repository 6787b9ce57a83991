/* Launchers of the CUDA kernels (one .cu file per operation under kernels/), callable from C (src/encoder_cuda.c, src/head_cuda.c, tests).
 *
 * Every launcher takes a stream, checks its shape assumptions before launching (TBERT_CUDA_EBADSHAPE when they
 * do not hold), sizes its grid with a ceiling division, checks cudaGetLastError() after the launch (and, with
 * TBERT_CUDA_SYNC_LAUNCH=1 in the environment, synchronizes the stream so that an asynchronous fault is reported
 * at the launch that caused it) and returns 0 or an error code: a cudaError_t value, TBERT_CUDA_CUBLAS_BASE + a cublasStatus_t, or
 * TBERT_CUDA_EBADSHAPE. tbert_cuda_error_string() names any of them; TBERT_CUDA_CHECK turns one into a
 * tbert_error that names the statement, the function, the file and the line.
 *
 * All pointers are device pointers unless a comment says otherwise. Activations come in two storage types
 * (tbert_cuda_dtype): float32, or bfloat16 (passed as uint16_t-sized elements; arithmetic, layernorm and
 * softmax statistics are always float32). Biases and layernorm parameters are always float32.
 *
 * This header needs no CUDA header: the two opaque types below are the same types as cudaStream_t and
 * cublasHandle_t. Only a TBERT_HAVE_CUDA build links these functions. */
#ifndef TBERT_CUDA_KERNELS_H
#define TBERT_CUDA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "tbert/common.h"
#include "tbert/encoder_backward.h" /* tbert_dropout (the backward kernels' dropout descriptor) */

#ifdef __cplusplus
extern "C" {
#endif

typedef struct CUstream_st *tbert_cuda_stream;    /* == cudaStream_t */
typedef struct cublasContext *tbert_cublas_handle; /* == cublasHandle_t */

typedef enum { TBERT_CUDA_F32 = 0, TBERT_CUDA_BF16 = 1 } tbert_cuda_dtype;
/* Matrix-product modes: fp32 (plain float32 FMA), tf32 (tensor cores on float32 data), bf16 (bf16 inputs
 * and outputs, float32 accumulation). */
typedef enum { TBERT_CUDA_GEMM_FP32 = 0, TBERT_CUDA_GEMM_TF32, TBERT_CUDA_GEMM_BF16 } tbert_cuda_gemm_mode;

enum { TBERT_CUDA_EBADSHAPE = -1, TBERT_CUDA_CUBLAS_BASE = 100000 };

/* "cudaErrorMemoryAllocation: out of memory", "cuBLAS: CUBLAS_STATUS_...", "bad shape" */
const char *tbert_cuda_error_string(int code);
/* True when code means "out of device memory" (CUDA or cuBLAS). */
int tbert_cuda_is_oom(int code);
/* Number of usable devices (0 when none; never fails). */
int tbert_cuda_device_count_impl(void);
/* Fills n floats with value (used to poison buffers in tests). */
int tbert_cuda_fill(float *dev, float value, int n, tbert_cuda_stream stream);

/* Turns a failed CUDA / cuBLAS / launcher call into a one-line tbert_error and returns TBERT_E_CUDA
 * (TBERT_E_NOMEM when the device is out of memory) from the enclosing function. */
#define TBERT_CUDA_CHECK(err, call)                                                                              \
    do {                                                                                                         \
        int tbert_rc_ = (int)(call);                                                                             \
        if (tbert_rc_ != 0)                                                                                      \
            return tbert_fail((err), tbert_cuda_is_oom(tbert_rc_) ? TBERT_E_NOMEM : TBERT_E_CUDA,                \
                              "CUDA: %s failed: %s (in %s, %s:%d)", #call, tbert_cuda_error_string(tbert_rc_),   \
                              __func__, __FILE__, __LINE__);                                                     \
    } while (0)
/* cuBLAS calls return cublasStatus_t: offset them into the launchers' code space. */
#define TBERT_CUBLAS_CHECK(err, call)                                                                            \
    do {                                                                                                         \
        int tbert_st_ = (int)(call);                                                                             \
        if (tbert_st_ != 0)                                                                                      \
            return tbert_fail((err), tbert_cuda_is_oom(TBERT_CUDA_CUBLAS_BASE + tbert_st_) ? TBERT_E_NOMEM      \
                                                                                          : TBERT_E_CUDA,      \
                              "cuBLAS: %s failed: %s (in %s, %s:%d)", #call,                                     \
                              tbert_cuda_error_string(TBERT_CUDA_CUBLAS_BASE + tbert_st_), __func__, __FILE__,   \
                              __LINE__);                                                                         \
    } while (0)

/* ---- conversions (kernels/convert.cu) ---- */
int tbert_cuda_f32_to_bf16(uint16_t *out, const float *in, size_t n, tbert_cuda_stream s);
/* out (float) = in (dt) */
int tbert_cuda_to_f32(float *out, const void *in, tbert_cuda_dtype dt, size_t n, tbert_cuda_stream s);

/* ---- matrix products (kernels/gemm.cu); the handle's stream is set by the caller ---- */
/* y[rows, out] = x[rows, in] @ W^T with W (out, in) row-major (HF nn.Linear); x, W, y are float32 for
 * FP32/TF32 and bf16 for BF16. No bias (the following kernel adds it). */
int tbert_cuda_linear(tbert_cublas_handle h, tbert_cuda_gemm_mode mode, void *y, const void *x, const void *W, int rows,
                      int in, int out);

/* ---- packed batches ----
 * The encoder works on packed tokens: a batch's real tokens concatenated (N = sum of the lengths rows, no
 * padding), sequence b owning rows cu_seqlens[b] .. cu_seqlens[b+1]-1. cu_seqlens is int32 [B+1] in device
 * memory with cu_seqlens[0] = 0, non-decreasing, cu_seqlens[B] = N. Every activation below is [N, ...] in that
 * row order; GEMMs, layernorm and GELU see N plain rows.
 * The fused attention gives each sequence ceil(length / TBERT_CUDA_QUERY_TILE) blocks per head, found through
 * a second table cu_tiles (int32 [B+1], device memory) that tbert_cuda_query_tiles() fills on the host. */
enum { TBERT_CUDA_QUERY_TILE = 16 };
/* Host: cu_tiles[b] = sum over i < b of ceil((cu_seqlens[i+1] - cu_seqlens[i]) / TBERT_CUDA_QUERY_TILE) for
 * b = 0..B (host arrays); returns cu_tiles[B], the number of query tiles. */
static inline int tbert_cuda_query_tiles(int32_t *cu_tiles, const int32_t *cu_seqlens, int B) {
    int32_t n = 0;
    cu_tiles[0] = 0;
    for (int b = 0; b < B; b++) {
        n += (cu_seqlens[b + 1] - cu_seqlens[b] + TBERT_CUDA_QUERY_TILE - 1) / TBERT_CUDA_QUERY_TILE;
        cu_tiles[b + 1] = n;
    }
    return n;
}

/* ---- embeddings (kernels/embeddings.cu) ----
 * out[r, :] = LN(word[ids[r]] + pos[t] + type[0]) * g + beta for the N packed rows r, where t = r -
 * cu_seqlens[b] is the position of row r in its sequence b. out is dt [N, H]. The host validates ids (in [0, V))
 * and lengths (<= P positions); the kernel clamps both only to keep its reads in bounds. */
int tbert_cuda_embeddings_ln(void *out, tbert_cuda_dtype dt, const int32_t *ids, const int32_t *cu_seqlens, int B,
                             int N, const float *word, const float *pos, const float *type, const float *g,
                             const float *beta, float eps, int H, int V, int P, tbert_cuda_stream s);

/* ---- layernorm (kernels/layernorm.cu) ----
 * out[r, :] = LN(x[r, :] + bias + residual[r, :]) * g + beta for r < rows; bias and residual may be NULL.
 * out may alias x or residual (each row is read completely before it is written). */
int tbert_cuda_bias_residual_ln(void *out, const void *x, const float *bias, const void *residual, const float *g,
                                const float *beta, float eps, tbert_cuda_dtype dt, int rows, int H,
                                tbert_cuda_stream s);

/* ---- elementwise (kernels/gelu.cu) ---- */
/* x[r, c] = gelu(x[r, c] + bias[c]) in place, exact erf GELU. */
int tbert_cuda_bias_gelu(void *x, const float *bias, tbert_cuda_dtype dt, int rows, int cols, tbert_cuda_stream s);
/* x[r, c] += bias[c] in place. */
int tbert_cuda_bias_add(void *x, const float *bias, tbert_cuda_dtype dt, int rows, int cols, tbert_cuda_stream s);
/* x[r, c] = tanh(x[r, c] + bias[c]) in place (float32; the BERT pooler). */
int tbert_cuda_bias_tanh(float *x, const float *bias, int rows, int cols, tbert_cuda_stream s);

/* ---- attention (kernels/attention.cu) ----
 * qkv is packed dt [N, 3H] with Q in columns [0, H), K in [H, 2H), V in [2H, 3H), as the QKV product left it;
 * bias (float32 [3H], or NULL) is added as the kernels load it. Head h uses columns h*d .. h*d+d-1 of each
 * part (H = heads*d). The queries of sequence b attend to the keys of sequence b only (its own rows: no mask,
 * no padding). ctx is packed dt [N, H]: softmax(Q K^T / sqrt(d)) V per sequence and head; a sequence of length
 * 0 has no rows. */
/* Fused: one pass with an online softmax, scores never leave the chip. One block per (query tile of
 * TBERT_CUDA_QUERY_TILE rows, head): grid (tiles, heads) with tiles = cu_tiles[B] (tbert_cuda_query_tiles).
 * d <= 128, any length. This is v2 (the one the encoder uses); v1 is its first, simpler version, kept as a
 * second opinion (TBERT_CUDA_ATTENTION=fused1). */
int tbert_cuda_attention_fused(void *ctx, const void *qkv, const float *bias, const int32_t *cu_seqlens,
                               const int32_t *cu_tiles, tbert_cuda_dtype dt, int B, int tiles, int heads, int d,
                               tbert_cuda_stream s);
int tbert_cuda_attention_fused_v1(void *ctx, const void *qkv, const float *bias, const int32_t *cu_seqlens,
                                  const int32_t *cu_tiles, tbert_cuda_dtype dt, int B, int tiles, int heads, int d,
                                  tbert_cuda_stream s);
/* Unfused reference path: heads split to a padded float32 [B, heads, T, d] layout (T >= every length; zeros
 * beyond each length), cuBLAS strided-batched Q K^T into a [B*heads, T, T] float32 score tensor, a masked
 * softmax kernel, cuBLAS P V, the real rows merged back into packed ctx. mode is FP32 or TF32 (the float32
 * products; BF16 is treated as FP32). work holds tbert_cuda_attention_unfused_work_floats() floats. The
 * handle's stream must be s. */
size_t tbert_cuda_attention_unfused_work_floats(int B, int T, int heads, int d);
int tbert_cuda_attention_unfused(tbert_cublas_handle h, tbert_cuda_gemm_mode mode, void *ctx, const void *qkv,
                                 const float *bias, const int32_t *cu_seqlens, float *work, tbert_cuda_dtype dt, int B,
                                 int T, int heads, int d, tbert_cuda_stream s);

/* ---- pooling (kernels/pooling.cu) ----
 * From packed x (dt [N, H]) into out (float32, row b at out + b*ld), with len_b = cu_seqlens[b+1] - cu_seqlens[b]:
 *   MEAN: mean of sequence b's rows (zeros for length 0); CLS: its first row (zeros for length 0);
 *   FLATTEN: its rows t < len_b at out[b, t*H ..], zeros for len_b <= t < out_T (ld >= out_T*H; rows past out_T
 *   are dropped: the host keeps len_b <= out_T). B <= 65535. */
typedef enum { TBERT_CUDA_POOL_MEAN = 0, TBERT_CUDA_POOL_CLS, TBERT_CUDA_POOL_FLATTEN } tbert_cuda_pool_kind;
int tbert_cuda_pool(float *out, size_t ld, const void *x, const int32_t *cu_seqlens, tbert_cuda_pool_kind kind,
                    tbert_cuda_dtype dt, int B, int H, int out_T, tbert_cuda_stream s);
/* Each of the rows of x (dim floats, row stride dim) divided by max(||row||, 1e-12); zero rows stay zero. */
int tbert_cuda_l2_normalize(float *x, int rows, int dim, tbert_cuda_stream s);

/* ---- classifier head (kernels/head.cu), float32, semantics of include/tbert/head.h ---- */
/* Forward products: tbert_cuda_linear in FP32 mode (the bias is added by the next kernel). */
/* dW[out, in] = dy[n, out]^T @ x[n, in]  (overwrites dW) */
int tbert_cuda_gemm_dw(tbert_cublas_handle h, float *dW, const float *dy, const float *x, int n, int in, int out);
/* dx[n, in] = dy[n, out] @ W[out, in]  (overwrites dx) */
int tbert_cuda_gemm_dx(tbert_cublas_handle h, float *dx, const float *dy, const float *W, int n, int in, int out);
/* a[r, c] += b1[c]; h[r, c] = gelu(a[r, c]) computed in double as the CPU head does (keeps the
 * pre-activation a for the backward pass). */
int tbert_cuda_head_bias_gelu(float *a, float *hout, const float *b1, int rows, int cols, tbert_cuda_stream s);
/* da[i] = (float)(dh[i] * mask[i] * gelu'(a[i])) in double (mask NULL = 1: no dropout); da may alias dh. */
int tbert_cuda_gelu_backward(float *da, const float *dh, const float *a, const float *mask, size_t n,
                             tbert_cuda_stream s);
/* x[i] *= mask[i] (inverted-dropout masks are 0 or 1/(1-p), drawn on the host in the CPU's order). */
int tbert_cuda_mul(float *x, const float *mask, size_t n, tbert_cuda_stream s);
/* Fused logits + loss + loss gradient, one thread per sample, in double as src/head.c:
 *   z[i, :] += b2 (in place: the logits), then with w_i = class_weight ? class_weight[y[i]] : 1
 *   binary (out == 1): t = (y[i] == positive); l = max(z,0) - z t + log1p(exp(-|z|)); dz = w (sigmoid(z) - t) / n
 *   multi-class:       l = logsumexp(z) - z[y[i]];                              dz = w (softmax(z) - onehot) / n
 * row_loss[i] = w_i * l_i (double). dz may be NULL (evaluation). A label outside [0, n_classes) makes the
 * row's loss NaN (the host checks labels first). */
int tbert_cuda_head_logits_loss(float *z, float *dz, double *row_loss, const float *b2, const int32_t *y,
                                const float *class_weight, int binary, int positive, int n, int out, int n_classes,
                                tbert_cuda_stream s);
/* *sum = v[0] + v[1] + ... + v[n-1] in double, in that order (the CPU's order: results match bit for bit). */
int tbert_cuda_sum_f64(double *sum, const double *v, int n, tbert_cuda_stream s);
/* db[c] = (float)(sum over r = 0, 1, ... of dy[r, c]) in double, in row order (as the CPU; overwrites db). */
int tbert_cuda_bias_grad(float *db, const float *dy, int rows, int cols, tbert_cuda_stream s);
/* One AdamW step over n parameters with the float32 scalars tbert_adam_step computes on the host:
 * w1 = 1 - beta1, b2 = beta2, w2 = 1 - beta2, decay = 1 - lr*wd, step_size = lr / bc1, bc2_sqrt = sqrt(bc2):
 *   p = p*decay (only when decay != 1); m = m + w1 (g - m); v = v b2 + w2 g g;
 *   p = p - step_size (m / (sqrt(v) / bc2_sqrt + eps))
 * every operation rounded separately (no FMA contraction), so it matches src/adam.c bit for bit. */
int tbert_cuda_adamw(float *p, float *m, float *v, const float *g, size_t n, float w1, float b2, float w2, float eps,
                     float decay, float step_size, float bc2_sqrt, tbert_cuda_stream s);
/* Sparse rows (include/tbert/rows.h: a dense block of dd columns + CSR over the sparse columns; src/head_cuda.c).
 * W (out x in, in = dd + sparse width) keeps the dense layout: the dense block multiplies its first dd columns,
 * sparse column j is W[o, dd + j] (callers pass W + dd and ldw = in).
 *   gemm_rows_fwd: y[n, out] = xd[n, dd] @ W[:, :dd]^T (overwrites y)
 *   gemm_rows_dw:  dW[:, :dd] = dy[n, out]^T @ xd[n, dd] (row stride in; the other columns untouched)
 *   csr_linear:    y[i, o] (+)= (float) sum_e (double)val[e] * W[o * ldw + idx[e]] over row i's entries
 *                  indptr[i] .. indptr[i+1]-1, in entry order (src/head.c's order: same bits); accumulate = 0
 *                  writes y, 1 adds (__fadd_rn) to it
 *   csc_scatter_dw: dW[o * ldw + cols[u]] = sum over entries e = colptr[u] .. colptr[u+1]-1 of dy[rows[e], o] *
 *                  vals[e], in float, that order, each operation rounded alone (src/head.c's scatter-add: same
 *                  bits); one thread per (column, output), no atomics. Columns not in cols are not written. */
int tbert_cuda_gemm_rows_fwd(tbert_cublas_handle h, float *y, const float *xd, const float *W, int n, int dd, int in,
                             int out);
int tbert_cuda_gemm_rows_dw(tbert_cublas_handle h, float *dW, const float *dy, const float *xd, int n, int dd, int in,
                            int out);
int tbert_cuda_csr_linear(float *y, const int32_t *indptr, const int32_t *idx, const float *val, const float *W,
                          size_t ldw, int n, int out, int accumulate, tbert_cuda_stream s);
int tbert_cuda_csc_scatter_dw(float *dW, size_t ldw, const int32_t *colptr, const int32_t *cols, const int32_t *rows,
                              const float *vals, const float *dy, int U, int out, tbert_cuda_stream s);


/* ---- backward passes (issue 15; kernels/<forward file>_bwd.cu, next to each forward) ----
 * The CUDA twins of include/tbert/encoder_backward.h (same packed layout, same names, same accumulate-or-overwrite
 * rules: parameter gradients dW, db, dgamma, dbeta and the embedding tables are ACCUMULATED (+=), activation
 * gradients OVERWRITTEN). Determinism: no float atomics. Every reduction over tokens (bias, dgamma, dbeta, the
 * type table) runs as the CPU's: chunks of TBERT_CUDA_BWD_CHUNK rows summed in row order (one thread per column),
 * then the chunk partials added to the accumulator in chunk order (a second, fixed-order pass); weight gradients
 * are cuBLAS products with beta = 1. The partials live in a caller's workspace of
 * tbert_cuda_colsum_ws_floats(rows, cols) floats ("ws" below). */
enum { TBERT_CUDA_BWD_CHUNK = 64 }; /* == TBERT_BWD_CHUNK */
static inline size_t tbert_cuda_colsum_ws_floats(size_t rows, int cols) {
    return (rows + TBERT_CUDA_BWD_CHUNK - 1) / TBERT_CUDA_BWD_CHUNK * (size_t)(cols > 0 ? cols : 0);
}
/* acc[c] += sum over rows r of a[r, c] (a is dt [rows, cols]), in the chunked order above. */
int tbert_cuda_colsum_acc(float *acc, const void *a, tbert_cuda_dtype dt, int rows, int cols, float *ws,
                          tbert_cuda_stream s);

/* linear (kernels/gemm_bwd.cu): y[rows, out] = x[rows, in] W[out, in]^T + b.
 * dx (dt [rows, in]) = dy W, or dx += dy W when accumulate_dx is 1 (a residual branch's gradient summed in the
 * product, beta = 1); skipped when dx is NULL. dW (float32 [out, in]) += dy^T x; db (float32 [out]) += column sums
 * of dy (skipped when NULL; ws: tbert_cuda_colsum_ws_floats(rows, out)). mode FP32 / TF32: x, W, dy, dx float32;
 * BF16: x, W, dy, dx bf16, products accumulated in float32 and dW kept float32. The handle's stream must be s. */
int tbert_cuda_linear_bwd(tbert_cublas_handle h, tbert_cuda_gemm_mode mode, void *dx, int accumulate_dx, float *dW,
                          float *db, const void *x, const void *W, const void *dy, float *ws, int rows, int in, int out,
                          tbert_cuda_stream s);

/* bias + exact GELU (kernels/gelu_bwd.cu): a is the saved pre-activation (bias included), h = gelu(a).
 * da[r, c] = dh * gelu'(a) (dt; da may alias dh); dbias (float32 [cols], or NULL) += column sums of da
 * (ws: tbert_cuda_colsum_ws_floats(rows, cols)). */
int tbert_cuda_bias_gelu_bwd(void *da, const void *dh, const void *a, float *dbias, float *ws, tbert_cuda_dtype dt,
                             int rows, int cols, tbert_cuda_stream s);
/* Forward twin (tbert_fwd_bias_gelu): a += bias (bias may be NULL; a keeps the pre-activation, the backward's
 * saved input), h = gelu(a); h may not alias a. */
int tbert_cuda_bias_gelu_fwd(void *a, void *h, const float *bias, tbert_cuda_dtype dt, int rows, int cols,
                             tbert_cuda_stream s);
/* tanh (the pooler's activation) from its saved output: da[i] = dout[i] (1 - out[i]^2), float32; da may alias dout. */
int tbert_cuda_tanh_bwd(float *da, const float *dout, const float *out, size_t n, tbert_cuda_stream s);

/* residual + layernorm (kernels/layernorm_bwd.cu): y = (z - mean) rstd gamma + beta with z the saved sum
 * (sublayer + residual (+ bias)), mean/rstd float32 [rows] saved by the forward (rstd = 1/sqrt(var + eps)).
 * dz (dt [rows, H], overwritten; may alias dy) = d loss / d z; dres (dt, or NULL) += dz (the residual branch);
 * dgamma, dbeta (float32 [H]) += sum dy xhat, sum dy. ws: 2 * tbert_cuda_colsum_ws_floats(rows, H). H <= 8192.
 * The forward twin (tbert_cuda_layernorm_fwd) forms z += bias + residual (each skipped when NULL; z keeps the sum,
 * in dt) and writes y, mean and rstd from it; y may not alias z. */
int tbert_cuda_layernorm_fwd(void *y, float *mean, float *rstd, void *z, const float *bias, const void *residual,
                             const float *gamma, const float *beta, float eps, tbert_cuda_dtype dt, int rows, int H,
                             tbert_cuda_stream s);
int tbert_cuda_layernorm_bwd(void *dz, void *dres, float *dgamma, float *dbeta, const void *z, const float *mean,
                             const float *rstd, const float *gamma, const void *dy, float *ws, tbert_cuda_dtype dt,
                             int rows, int H, tbert_cuda_stream s);

/* attention on packed tokens with saved probabilities (kernels/attention_bwd.cu).
 * qkv [N, 3H] (biases already added), head h = columns h*d .. h*d+d-1 of each part, S = scale q k^T per sequence
 * and head, P = softmax(S), ctx = P v. P is stored sequence by sequence, head by head, L x L row-major (as the
 * CPU's tbert_fwd_attention): sequence b's block starts at p_off[b], with p_off (int64 [B+1]) filled on the host
 * by tbert_cuda_attn_probs_offsets, which returns the total np = p_off[B] in elements. Saved rather than
 * recomputed: T <= 512, so a sequence costs heads * L^2 elements (12 MiB of float32 for 12 heads at 512), and
 * recomputing P in the backward would repeat the Q K^T product and the softmax for each layer.
 * dt is the storage type of qkv, ctx, dctx, dqkv and P: float32, or bf16 (products with bf16 inputs and float32
 * accumulation; the scores S and dP are float32 in ws, the softmax and its backward compute in float32).
 * cu_seqlens_host and cu_seqlens (device) hold the same offsets: the host copy sizes the per-sequence cuBLAS
 * strided-batched products (one call per sequence and product, batched over the heads), the device copy and
 * p_off (device) serve the softmax kernels. The handle's stream must be s. */
static inline int64_t tbert_cuda_attn_probs_offsets(int64_t *p_off, const int32_t *cu_seqlens, int B, int heads) {
    int64_t n = 0;
    p_off[0] = 0;
    for (int b = 0; b < B; b++) {
        const int64_t L = cu_seqlens[b + 1] - cu_seqlens[b];
        n += (int64_t)heads * L * L;
        p_off[b + 1] = n;
    }
    return n;
}
/* Dropout on the probabilities (BERT's attention_probs_dropout; drop NULL or drop->p = 0: none), as the CPU twins
 * tbert_fwd_attention_dropout / tbert_bwd_attention_dropout: ctx = dropout(P) v with P saved before dropout, the
 * multipliers of P element e drawn from tbert_dropout_scale(seed, step, site, drop->base + e), e the offset in
 * this batch's packed P (p_off's numbering), and drawn again in the backward (no mask is stored).
 * Workspace (floats) of both calls for np = p_off[B] probabilities: np float32 scores (S, then dP), then np
 * elements of dt (dropout(P), then dS) unless dt is float32 without dropout (dS in place over dP). */
static inline size_t tbert_cuda_attention_ws_floats(int64_t np, tbert_cuda_dtype dt, int dropout) {
    const size_t n = np > 0 ? (size_t)np : 0;
    if (dt == TBERT_CUDA_BF16) return n + (n + 1) / 2;
    return dropout ? 2 * n : n;
}
/* Forward twin: ctx [N, H] and P (dt). ws: tbert_cuda_attention_ws_floats(np, dt, dropping) floats; in float32
 * without dropout ws may be P itself (the softmax runs in place). */
int tbert_cuda_attention_fwd_probs(tbert_cublas_handle h, void *ctx, void *P, const void *qkv, float *ws,
                                   const int32_t *cu_seqlens_host, const int32_t *cu_seqlens, const int64_t *p_off,
                                   const tbert_dropout *drop, tbert_cuda_dtype dt, int B, int heads, int d,
                                   float scale, tbert_cuda_stream s);
/* dqkv [N, 3H] (overwritten) from dctx [N, H], the saved P and qkv: dV = dropout(P)^T dctx,
 * dP = (dctx V^T) * mask, dS = P (dP - rowsum(dP P)), dQ = scale dS K, dK = scale dS^T Q.
 * ws: tbert_cuda_attention_ws_floats(np, dt, dropping) floats. */
int tbert_cuda_attention_bwd(tbert_cublas_handle h, void *dqkv, const void *qkv, const void *P, const void *dctx,
                             float *ws, const int32_t *cu_seqlens_host, const int32_t *cu_seqlens,
                             const int64_t *p_off, const tbert_dropout *drop, tbert_cuda_dtype dt, int B, int heads,
                             int d, float scale, tbert_cuda_stream s);

/* pooling (kernels/pooling_bwd.cu), float32 dout with row b at dout + b*ld:
 * dhidden (dt [N, H], every row overwritten) for the packed rows of B sequences: MEAN dout[b] / len_b to each of
 * b's rows; CLS dout[b] to b's first row, zeros to the others; FLATTEN dout[b, t*H ..] to row t < out_T, zeros
 * to rows t >= out_T (ld >= out_T*H). N = cu_seqlens[B]. */
int tbert_cuda_pool_bwd(void *dhidden, const float *dout, size_t ld, const int32_t *cu_seqlens,
                        tbert_cuda_pool_kind kind, tbert_cuda_dtype dt, int B, int N, int H, int out_T,
                        tbert_cuda_stream s);
/* L2 normalisation y = x / max(|x|, 1e-12) per row (tbert_cuda_l2_normalize): dx = (dy - y (y . dy)) / |x|
 * from the saved x and y; identity on zero rows. dx may alias dy. */
int tbert_cuda_l2_normalize_bwd(float *dx, const float *x, const float *y, const float *dy, int rows, int dim,
                                tbert_cuda_stream s);
/* Pooler out = tanh(cls W^T + b) from the saved out: da = dout (1 - out^2) into ws, then the linear backward
 * (FP32): dcls [B, H] = da W, dW += da^T cls, db += sums of da. ws: B*H + tbert_cuda_colsum_ws_floats(B, H)
 * floats. The handle's stream must be s. */
int tbert_cuda_pooler_bwd(tbert_cublas_handle h, float *dcls, float *dW, float *db, const float *cls, const float *W,
                          const float *out, const float *dout, float *ws, int B, int H, tbert_cuda_stream s);


/* embeddings (kernels/embeddings_bwd.cu), float32: dz [N, H] is the gradient of the sum word[id] + pos[t] +
 * type[0] (tbert_cuda_layernorm_bwd over the embedding LayerNorm gives it). dword [V, H] += the rows of each token
 * id, dpos [P, H] += the rows of each position, dtype (type row 0, [H]) += all rows (ws:
 * tbert_cuda_colsum_ws_floats(N, H)); a NULL table is skipped. Deterministic without atomics: the host groups
 * the rows by table row with tbert_cuda_scatter_plan_host and uploads the plan (device pointers below); each table
 * element is then summed by one thread, its rows in row order. */
typedef struct {
    const int32_t *perm;  /* [N]: packed rows grouped by key, rows of one key in row order */
    const int32_t *start; /* [n_seg + 1]: segment g is perm[start[g] .. start[g+1]-1] */
    const int32_t *key;   /* [n_seg]: the table row of segment g (distinct) */
    int n_seg;
} tbert_cuda_scatter_plan;
/* Host (no CUDA call): a stable counting sort of keys[n] (each in [0, n_keys): token ids, or positions
 * row - cu_seqlens[b]) into perm [n], start [n_seg + 1], key [n_seg]; count is n_keys ints of scratch. Returns
 * n_seg, or -1 for a key out of range or a NULL array. */
int tbert_cuda_scatter_plan_host(const int32_t *keys, int n, int n_keys, int32_t *count, int32_t *perm,
                                 int32_t *start, int32_t *key);
int tbert_cuda_embeddings_bwd(float *dword, float *dpos, float *dtype, const float *dz,
                              const tbert_cuda_scatter_plan *word, const tbert_cuda_scatter_plan *pos, float *ws,
                              int N, int H, tbert_cuda_stream s);

/* dropout (kernels/dropout.cu) with the masks of include/tbert/dropout_rng.h, bit for bit: element i draws
 * tbert_dropout_scale(seed, step, site, index0 + i, p) (0 or 1 / (1 - p)); index0 places the buffer in the
 * site's element numbering (the packed [N, H] row-major index, or the offset in the packed P). 0 <= p < 1.
 * tbert_cuda_dropout: x[i] *= that multiplier in place (dt), nothing when p = 0; the backward calls it on the
 * gradient with the same arguments (no mask is stored). tbert_cuda_dropout_mask writes the multipliers. */
int tbert_cuda_dropout(void *x, tbert_cuda_dtype dt, size_t n, uint64_t seed, uint64_t step, uint32_t site,
                       uint64_t index0, float p, tbert_cuda_stream s);
int tbert_cuda_dropout_mask(float *mask, size_t n, uint64_t seed, uint64_t step, uint32_t site, uint64_t index0,
                            float p, tbert_cuda_stream s);
/* y[i] = x[i] * the multiplier of element index0 + i (out of place; y may be x), dt. p = 0 copies. */
int tbert_cuda_dropout_to(void *y, const void *x, tbert_cuda_dtype dt, size_t n, uint64_t seed, uint64_t step,
                          uint32_t site, uint64_t index0, float p, tbert_cuda_stream s);

/* ---- fine-tuning stack (kernels/finetune.cu; host side src/finetune_stack_cuda.c) ----
 * z (float32 [N, H]) = word[ids[r]] + pos[t] + type[0] for the packed rows r, t = r's position in its sequence
 * (the embedding sum that tbert_cuda_layernorm_fwd then normalises, kept for its backward; ids validated by the
 * host). */
int tbert_cuda_emb_sum(float *z, const int32_t *ids, const int32_t *cu_seqlens, int B, int N, const float *word,
                       const float *pos, const float *type, int H, tbert_cuda_stream s);

#ifdef __cplusplus
}
#endif
#endif
