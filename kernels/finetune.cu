// Elementwise steps of the trainable stack on the device (src/finetune_stack_cuda.c) that no other kernel file
// has: a residual add, bias + GELU keeping the pre-activation, the embedding sum that the saving layernorm
// forward then normalises, and attention with dropout on the probabilities (forward and backward). CPU twins:
// src/finetune_stack.c and tbert_fwd/bwd_attention_dropout (src/encoder_backward.c). Contracts:
// include/tbert/cuda_kernels.h ("fine-tuning stack").
#include <math.h>

#include "elementwise.cuh"
#include "packed.cuh"
#include "tbert/dropout_rng.h"

namespace {

constexpr int kRowBlock = 128;

template <typename T> __global__ void add_kernel(T *y, const T *a, const T *b, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = tbert::from_f<T>(tbert::to_f(a[i]) + tbert::to_f(b[i]));
}

// a += bias (kept, rounded to T as the backward reads it), g = gelu(a)
template <typename T> __global__ void bias_gelu_save_kernel(T *a, T *g, const float *bias, size_t n, int cols) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const T av = tbert::from_f<T>(tbert::to_f(a[i]) + bias[i % (size_t)cols]);
        a[i] = av;
        g[i] = tbert::from_f<T>(tbert::gelu_erf(tbert::to_f(av)));
    }
}

// z[r] = word[ids[r]] + pos[t] + type[0] (float32), t = r's position in its sequence (the CPU's order of adds)
__global__ void emb_sum_kernel(float *z, const int32_t *ids, const int32_t *cu_seqlens, int B, const float *word,
                               const float *pos, const float *type, int H) {
    const int r = blockIdx.x;
    const int b = tbert::last_le(cu_seqlens, B, r);
    const int t = r - cu_seqlens[b];
    const float *w = word + (size_t)ids[r] * H, *p = pos + (size_t)t * H;
    for (int j = threadIdx.x; j < H; j += blockDim.x) z[(size_t)r * H + j] = w[j] + p[j] + type[j];
}

// Pd[i] = P[i] * the dropout multiplier of element i (the packed P index)
template <typename T>
__global__ void drop_copy_kernel(T *Pd, const T *P, size_t n, uint64_t seed, uint64_t step, uint32_t site, float p) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        Pd[i] = tbert::from_f<T>(tbert::to_f(P[i]) * tbert_dropout_scale(seed, step, site, i, p));
}

struct prow {
    int len;
    int64_t at;
};
__device__ __forceinline__ prow find_row(const int32_t *cu_seqlens, const int64_t *p_off, int B, int r, int h) {
    const int b = tbert::last_le(cu_seqlens, B, r);
    prow p;
    p.len = cu_seqlens[b + 1] - cu_seqlens[b];
    p.at = p_off[b] + ((int64_t)h * p.len + (r - cu_seqlens[b])) * p.len;
    return p;
}

// grid (N, heads): with dPd = d loss / d (dropped P) in dP: dP = dPd * mask, dS = P (dP - sum_j P dP)
template <typename T>
__global__ void softmax_drop_bwd_kernel(T *dS, const float *dP, const T *P, const int32_t *cu_seqlens,
                                        const int64_t *p_off, int B, uint64_t seed, uint64_t step, uint32_t site,
                                        float p) {
    TBERT_SHARED(float, scratch, 32);
    const prow pr = find_row(cu_seqlens, p_off, B, blockIdx.x, blockIdx.y);
    const T *pp = P + pr.at;
    const float *g = dP + pr.at;
    float dot = 0.0f;
    for (int j = threadIdx.x; j < pr.len; j += blockDim.x)
        dot += tbert::to_f(pp[j]) * (g[j] * tbert_dropout_scale(seed, step, site, (uint64_t)(pr.at + j), p));
    dot = tbert::block_sum(dot, scratch);
    T *o = dS + pr.at;
    for (int j = threadIdx.x; j < pr.len; j += blockDim.x) {
        const float gj = g[j] * tbert_dropout_scale(seed, step, site, (uint64_t)(pr.at + j), p);
        o[j] = tbert::from_f<T>(tbert::to_f(pp[j]) * (gj - dot));
    }
}

struct gemm_types {
    cudaDataType_t t;
    size_t size;
};
int gemm_heads(cublasHandle_t h, gemm_types g, cudaDataType_t tc, cublasOperation_t ta, cublasOperation_t tb, int m,
               int n, int k, float alpha, const void *A, int lda, long long sa, const void *Bm, int ldb, long long sb,
               void *C, int ldc, long long sc, int heads) {
    const float beta = 0.0f;
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(h, ta, tb, m, n, k, &alpha, A, g.t, lda, sa, Bm, g.t, ldb, sb, &beta, C, tc,
                                            ldc, sc, heads, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return 0;
}
inline const void *at_c(const void *p, size_t e, gemm_types g) { return (const char *)p + e * g.size; }
inline void *at_m(void *p, size_t e, gemm_types g) { return (char *)p + e * g.size; }

int check_seqs(const int32_t *cu_host, tbert_cuda_dtype dt, int B, int heads, int d, int *N, gemm_types *g) {
    SHAPE_CHECK(cu_host && B >= 0 && heads > 0 && heads <= 65535 && d > 0 && cu_host[0] == 0);
    for (int b = 0; b < B; b++) SHAPE_CHECK(cu_host[b + 1] >= cu_host[b] && cu_host[b + 1] - cu_host[b] <= 65536);
    *N = cu_host[B];
    SHAPE_CHECK(dt == TBERT_CUDA_F32 || dt == TBERT_CUDA_BF16);
    *g = dt == TBERT_CUDA_BF16 ? gemm_types{CUDA_R_16BF, 2} : gemm_types{CUDA_R_32F, 4};
    return 0;
}

} // namespace

extern "C" int tbert_cuda_add(void *y, const void *a, const void *b, tbert_cuda_dtype dt, size_t n, cudaStream_t s) {
    SHAPE_CHECK(y && a && b);
    if (n == 0) return 0;
    TBERT_DISPATCH_DTYPE(dt, TBERT_LAUNCH(add_kernel<Act>, tbert::elt_grid(n), tbert::kEltBlock, 0, s, (Act *)y,
                                          (const Act *)a, (const Act *)b, n));
    LAUNCH_CHECK(s);
    return 0;
}

extern "C" int tbert_cuda_bias_gelu_save(void *a, void *g, const float *bias, tbert_cuda_dtype dt, int rows, int cols,
                                         cudaStream_t s) {
    SHAPE_CHECK(a && g && bias && rows >= 0 && cols > 0);
    const size_t n = (size_t)rows * (size_t)cols;
    if (n == 0) return 0;
    TBERT_DISPATCH_DTYPE(dt, TBERT_LAUNCH(bias_gelu_save_kernel<Act>, tbert::elt_grid(n), tbert::kEltBlock, 0, s,
                                          (Act *)a, (Act *)g, bias, n, cols));
    LAUNCH_CHECK(s);
    return 0;
}

extern "C" int tbert_cuda_emb_sum(float *z, const int32_t *ids, const int32_t *cu_seqlens, int B, int N,
                                  const float *word, const float *pos, const float *type, int H, cudaStream_t s) {
    SHAPE_CHECK(z && ids && cu_seqlens && word && pos && type && B >= 0 && N >= 0 && H > 0);
    if (N == 0) return 0;
    TBERT_LAUNCH(emb_sum_kernel, N, kRowBlock, 0, s, z, ids, cu_seqlens, B, word, pos, type, H);
    LAUNCH_CHECK(s);
    return 0;
}

extern "C" int tbert_cuda_attention_fwd_dropout(tbert_cublas_handle h, void *ctx, void *P, void *Pd, const void *qkv,
                                                float *ws, const int32_t *cu_seqlens_host, const int32_t *cu_seqlens,
                                                const int64_t *p_off, tbert_cuda_dtype dt, int B, int heads, int d,
                                                float scale, uint64_t seed, uint64_t step, uint32_t site, float p,
                                                cudaStream_t s) {
    int rc = tbert_cuda_attention_fwd_probs(h, ctx, P, qkv, ws, cu_seqlens_host, cu_seqlens, p_off, dt, B, heads, d,
                                            scale, s);
    if (rc || p <= 0.0f) return rc;
    SHAPE_CHECK(Pd && Pd != P && p < 1.0f);
    gemm_types g;
    int N = 0;
    rc = check_seqs(cu_seqlens_host, dt, B, heads, d, &N, &g);
    if (rc || N == 0) return rc;
    int64_t np = 0;
    for (int b = 0; b < B; b++) {
        const int64_t L = cu_seqlens_host[b + 1] - cu_seqlens_host[b];
        np += (int64_t)heads * L * L;
    }
    TBERT_DISPATCH_DTYPE(dt, TBERT_LAUNCH(drop_copy_kernel<Act>, tbert::elt_grid((size_t)np), tbert::kEltBlock, 0, s,
                                          (Act *)Pd, (const Act *)P, (size_t)np, seed, step, site, p));
    LAUNCH_CHECK(s);
    const int H = heads * d, ld = 3 * H;
    int64_t at = 0;
    for (int b = 0; b < B; b++) { // ctx^T [d, L] = V^T [d, L] * Pd^T
        const int L = cu_seqlens_host[b + 1] - cu_seqlens_host[b];
        if (L == 0) continue;
        const size_t r0 = (size_t)cu_seqlens_host[b];
        rc = gemm_heads(h, g, g.t, CUBLAS_OP_N, CUBLAS_OP_N, d, L, L, 1.0f, at_c(qkv, r0 * ld + 2 * H, g), ld, d,
                        at_c(Pd, (size_t)at, g), L, (long long)L * L, at_m(ctx, r0 * H, g), H, d, heads);
        if (rc) return rc;
        at += (int64_t)heads * L * L;
    }
    return 0;
}

extern "C" int tbert_cuda_attention_bwd_dropout(tbert_cublas_handle h, void *dqkv, const void *qkv, const void *P,
                                                const void *Pd, const void *dctx, float *ws,
                                                const int32_t *cu_seqlens_host, const int32_t *cu_seqlens,
                                                const int64_t *p_off, tbert_cuda_dtype dt, int B, int heads, int d,
                                                float scale, uint64_t seed, uint64_t step, uint32_t site, float p,
                                                cudaStream_t s) {
    if (p <= 0.0f)
        return tbert_cuda_attention_bwd(h, dqkv, qkv, P, dctx, ws, cu_seqlens_host, cu_seqlens, p_off, dt, B, heads, d,
                                        scale, s);
    SHAPE_CHECK(h && dqkv && qkv && P && Pd && dctx && ws && cu_seqlens && p_off && dqkv != qkv && p < 1.0f);
    gemm_types g;
    int N = 0, rc = check_seqs(cu_seqlens_host, dt, B, heads, d, &N, &g);
    if (rc) return rc;
    if (N == 0) return 0;
    const int H = heads * d, ld = 3 * H;
    int64_t np = 0;
    for (int b = 0; b < B; b++) {
        const int64_t L = cu_seqlens_host[b + 1] - cu_seqlens_host[b];
        np += (int64_t)heads * L * L;
    }
    void *dS = dt == TBERT_CUDA_BF16 ? (void *)(ws + np) : (void *)ws;
    int64_t at = 0;
    for (int b = 0; b < B; b++) {
        const int L = cu_seqlens_host[b + 1] - cu_seqlens_host[b];
        if (L == 0) continue;
        const size_t r0 = (size_t)cu_seqlens_host[b];
        const size_t q = r0 * ld, dc = r0 * H;
        const long long LL = (long long)L * L;
        // dV = Pd^T dctx (the dropped probabilities multiplied V)
        rc = gemm_heads(h, g, g.t, CUBLAS_OP_N, CUBLAS_OP_T, d, L, L, 1.0f, at_c(dctx, dc, g), H, d,
                        at_c(Pd, (size_t)at, g), L, LL, at_m(dqkv, q + 2 * H, g), ld, d, heads);
        if (rc) return rc;
        // dPd = dctx V^T (float32 in ws); the mask is applied in the softmax backward
        rc = gemm_heads(h, g, CUDA_R_32F, CUBLAS_OP_T, CUBLAS_OP_N, L, L, d, 1.0f, at_c(qkv, q + 2 * H, g), ld, d,
                        at_c(dctx, dc, g), H, d, ws + at, L, LL, heads);
        if (rc) return rc;
        at += (int64_t)heads * L * L;
    }
    TBERT_DISPATCH_DTYPE(dt, TBERT_LAUNCH(softmax_drop_bwd_kernel<Act>, dim3(N, heads), kRowBlock, 0, s, (Act *)dS, ws,
                                          (const Act *)P, cu_seqlens, p_off, B, seed, step, site, p));
    LAUNCH_CHECK(s);
    at = 0;
    for (int b = 0; b < B; b++) {
        const int L = cu_seqlens_host[b + 1] - cu_seqlens_host[b];
        if (L == 0) continue;
        const size_t q = (size_t)cu_seqlens_host[b] * ld;
        const long long LL = (long long)L * L;
        rc = gemm_heads(h, g, g.t, CUBLAS_OP_N, CUBLAS_OP_N, d, L, L, scale, at_c(qkv, q + H, g), ld, d,
                        at_c(dS, (size_t)at, g), L, LL, at_m(dqkv, q, g), ld, d, heads);
        if (rc) return rc;
        rc = gemm_heads(h, g, g.t, CUBLAS_OP_N, CUBLAS_OP_T, d, L, L, scale, at_c(qkv, q, g), ld, d,
                        at_c(dS, (size_t)at, g), L, LL, at_m(dqkv, q + H, g), ld, d, heads);
        if (rc) return rc;
        at += (int64_t)heads * L * L;
    }
    return 0;
}
