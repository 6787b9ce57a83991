// Attention backward on packed tokens with saved probabilities (forward: attention.cu), and its forward twin that
// saves them. The products run through cuBLAS directly on the packed qkv / ctx rows: per sequence one
// strided-batched call per product, batched over the heads (head h's columns start h*d further: stride d, leading
// dimension 3H or H), so no head is split out or padded. The scores S and dP are float32 (ws); the softmax and its
// backward are one launch each over every (packed row, head) and compute in float32; P and dS are stored in the
// activation type (bf16 in bf16 mode, the products' input type). P layout and the choice of saved probabilities:
// include/tbert/cuda_kernels.h. CPU twins: tbert_fwd_attention, tbert_bwd_attention.
#include <math.h>

#include "packed.cuh"
#include "tbert/dropout_rng.h"

namespace {

constexpr int kSoftmaxBlock = 128;

// The L x L probability block of (sequence b, head h) and the row of packed row r in it.
struct prow {
    int len;
    int64_t at; // offset of the row in P
};
__device__ __forceinline__ prow find_row(const int32_t *cu_seqlens, const int64_t *p_off, int B, int r, int h) {
    const int b = tbert::last_le(cu_seqlens, B, r);
    prow p;
    p.len = cu_seqlens[b + 1] - cu_seqlens[b];
    p.at = p_off[b] + ((int64_t)h * p.len + (r - cu_seqlens[b])) * p.len;
    return p;
}

// grid (N, heads): row r of head h: P[j] = exp(S[j] - max) / sum (the scale is in the product). P may be S
// (float32, in place): every thread reads its own S[j] before it writes P[j].
template <typename T> __global__ void softmax_rows_kernel(T *P, const float *S, const int32_t *cu_seqlens,
                                                          const int64_t *p_off, int B) {
    TBERT_SHARED(float, scratch, 32);
    const prow pr = find_row(cu_seqlens, p_off, B, blockIdx.x, blockIdx.y);
    const float *srow = S + pr.at;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < pr.len; j += blockDim.x) mx = fmaxf(mx, srow[j]);
    mx = tbert::block_max(mx, scratch);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < pr.len; j += blockDim.x) sum += expf(srow[j] - mx);
    const float inv = 1.0f / tbert::block_sum(sum, scratch);
    T *prow_out = P + pr.at;
    for (int j = threadIdx.x; j < pr.len; j += blockDim.x) prow_out[j] = tbert::from_f<T>(expf(srow[j] - mx) * inv);
}

// The dropout of the probabilities, as kernel arguments (p = 0: none).
struct pdrop {
    float p;
    uint64_t seed, step, base;
    uint32_t site;
};

// grid (N, heads): with g = dP * (the dropout multiplier of each P element, drawn again from its counter),
// dS = P (g - sum_j P g). dS may be dP (float32, in place).
template <typename T> __global__ void softmax_bwd_kernel(T *dS, const float *dP, const T *P, const int32_t *cu_seqlens,
                                                         const int64_t *p_off, int B, pdrop dr) {
    TBERT_SHARED(float, scratch, 32);
    const prow pr = find_row(cu_seqlens, p_off, B, blockIdx.x, blockIdx.y);
    const T *p = P + pr.at;
    const float *g = dP + pr.at;
    const uint64_t e0 = dr.base + (uint64_t)pr.at;
    float dot = 0.0f;
    for (int j = threadIdx.x; j < pr.len; j += blockDim.x) {
        const float gj = dr.p > 0.0f ? g[j] * tbert_dropout_scale(dr.seed, dr.step, dr.site, e0 + j, dr.p) : g[j];
        dot += tbert::to_f(p[j]) * gj;
    }
    dot = tbert::block_sum(dot, scratch);
    T *o = dS + pr.at;
    for (int j = threadIdx.x; j < pr.len; j += blockDim.x) {
        const float gj = dr.p > 0.0f ? g[j] * tbert_dropout_scale(dr.seed, dr.step, dr.site, e0 + j, dr.p) : g[j];
        o[j] = tbert::from_f<T>(tbert::to_f(p[j]) * (gj - dot));
    }
}

// C = alpha op(A) op(B), column-major, batched over the heads; A, B of type t, C of type tc, float32 accumulation
struct gemm_types {
    cudaDataType_t t;
    size_t size; // bytes of one element of t
};
int gemm_heads(cublasHandle_t h, gemm_types g, cudaDataType_t tc, cublasOperation_t ta, cublasOperation_t tb, int m,
               int n, int k, float alpha, const void *A, int lda, long long sa, const void *Bm, int ldb, long long sb,
               void *C, int ldc, long long sc, int heads) {
    const float beta = 0.0f;
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(h, ta, tb, m, n, k, &alpha, A, g.t, lda, sa, Bm, g.t, ldb, sb, &beta, C, tc,
                                            ldc, sc, heads, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return 0;
}

int check_args(const int32_t *cu_host, tbert_cuda_dtype dt, int B, int heads, int d, int *N, gemm_types *g) {
    SHAPE_CHECK(cu_host && B >= 0 && heads > 0 && heads <= 65535 && d > 0 && cu_host[0] == 0);
    for (int b = 0; b < B; b++) SHAPE_CHECK(cu_host[b + 1] >= cu_host[b] && cu_host[b + 1] - cu_host[b] <= 65536);
    *N = cu_host[B];
    SHAPE_CHECK((long long)heads * d * 3 <= 0x7fffffff);
    SHAPE_CHECK(dt == TBERT_CUDA_F32 || dt == TBERT_CUDA_BF16);
    *g = dt == TBERT_CUDA_BF16 ? gemm_types{CUDA_R_16BF, 2} : gemm_types{CUDA_R_32F, 4};
    return 0;
}

pdrop make_drop(const tbert_dropout *d) {
    pdrop r{0.0f, 0, 0, 0, 0};
    if (d && d->p > 0.0f) r = pdrop{d->p, d->seed, d->step, d->base, d->site};
    return r;
}

int64_t probs_total(const int32_t *cu_host, int B, int heads) {
    int64_t np = 0;
    for (int b = 0; b < B; b++) {
        const int64_t L = cu_host[b + 1] - cu_host[b];
        np += (int64_t)heads * L * L;
    }
    return np;
}

// byte offset helpers: element e of a buffer of g's type
inline const void *at_c(const void *p, size_t e, gemm_types g) { return (const char *)p + e * g.size; }
inline void *at_m(void *p, size_t e, gemm_types g) { return (char *)p + e * g.size; }

} // namespace

extern "C" int tbert_cuda_attention_fwd_probs(tbert_cublas_handle h, void *ctx, void *P, const void *qkv, float *ws,
                                              const int32_t *cu_seqlens_host, const int32_t *cu_seqlens,
                                              const int64_t *p_off, const tbert_dropout *drop, tbert_cuda_dtype dt,
                                              int B, int heads, int d, float scale, cudaStream_t s) {
    SHAPE_CHECK(h && ctx && P && qkv && ws && cu_seqlens && p_off);
    gemm_types g;
    int N = 0, rc = check_args(cu_seqlens_host, dt, B, heads, d, &N, &g);
    if (rc) return rc;
    const pdrop dr = make_drop(drop);
    SHAPE_CHECK(dr.p < 1.0f);
    SHAPE_CHECK((dt == TBERT_CUDA_F32 && dr.p == 0.0f) || (void *)ws != P);
    if (N == 0) return 0;
    const int H = heads * d, ld = 3 * H;
    int64_t at = 0;
    for (int b = 0; b < B; b++) { // S (row-major [i][j]) = scale Q K^T, i.e. column-major S^T = scale K Q^T
        const int L = cu_seqlens_host[b + 1] - cu_seqlens_host[b];
        if (L == 0) continue;
        const size_t q = (size_t)cu_seqlens_host[b] * ld;
        rc = gemm_heads(h, g, CUDA_R_32F, CUBLAS_OP_T, CUBLAS_OP_N, L, L, d, scale, at_c(qkv, q + H, g), ld, d,
                        at_c(qkv, q, g), ld, d, ws + at, L, (long long)L * L, heads);
        if (rc) return rc;
        at += (int64_t)heads * L * L;
    }
    TBERT_DISPATCH_DTYPE(dt, TBERT_LAUNCH(softmax_rows_kernel<Act>, dim3(N, heads), kSoftmaxBlock, 0, s, (Act *)P, ws,
                                          cu_seqlens, p_off, B));
    LAUNCH_CHECK(s);
    const void *Pv = P; // the probabilities that multiply V: P, or dropout(P) over the consumed scores in ws
    if (dr.p > 0.0f) {
        rc = tbert_cuda_dropout_to(ws, P, dt, (size_t)at, dr.seed, dr.step, dr.site, dr.base, dr.p, s);
        if (rc) return rc;
        Pv = ws;
    }
    at = 0;
    for (int b = 0; b < B; b++) { // ctx^T [d, L] = V^T [d, L] * P^T
        const int L = cu_seqlens_host[b + 1] - cu_seqlens_host[b];
        if (L == 0) continue;
        const size_t r0 = (size_t)cu_seqlens_host[b];
        rc = gemm_heads(h, g, g.t, CUBLAS_OP_N, CUBLAS_OP_N, d, L, L, 1.0f, at_c(qkv, r0 * ld + 2 * H, g), ld, d,
                        at_c(Pv, (size_t)at, g), L, (long long)L * L, at_m(ctx, r0 * H, g), H, d, heads);
        if (rc) return rc;
        at += (int64_t)heads * L * L;
    }
    return 0;
}

extern "C" int tbert_cuda_attention_bwd(tbert_cublas_handle h, void *dqkv, const void *qkv, const void *P,
                                        const void *dctx, float *ws, const int32_t *cu_seqlens_host,
                                        const int32_t *cu_seqlens, const int64_t *p_off, const tbert_dropout *drop,
                                        tbert_cuda_dtype dt, int B, int heads, int d, float scale, cudaStream_t s) {
    SHAPE_CHECK(h && dqkv && qkv && P && dctx && ws && cu_seqlens && p_off && dqkv != qkv);
    gemm_types g;
    int N = 0, rc = check_args(cu_seqlens_host, dt, B, heads, d, &N, &g);
    if (rc) return rc;
    const pdrop dr = make_drop(drop);
    SHAPE_CHECK(dr.p < 1.0f);
    if (N == 0) return 0;
    const int H = heads * d, ld = 3 * H;
    const int64_t np = probs_total(cu_seqlens_host, B, heads);
    // ws: dP (float32, np) | dt region (np elements): dropout(P) for dV, then dS (bf16); float32 without dropout:
    // dS in place over dP
    void *region = (void *)(ws + np);
    void *dS = dt == TBERT_CUDA_BF16 || dr.p > 0.0f ? region : (void *)ws;
    const void *Pv = P;
    if (dr.p > 0.0f) {
        rc = tbert_cuda_dropout_to(region, P, dt, (size_t)np, dr.seed, dr.step, dr.site, dr.base, dr.p, s);
        if (rc) return rc;
        Pv = region;
    }
    int64_t at = 0;
    for (int b = 0; b < B; b++) {
        const int L = cu_seqlens_host[b + 1] - cu_seqlens_host[b];
        if (L == 0) continue;
        const size_t r0 = (size_t)cu_seqlens_host[b];
        const size_t q = r0 * ld, dc = r0 * H;
        const long long LL = (long long)L * L;
        // dV^T [d, L] = dctx^T [d, L] * dropout(P)   (dV = dropout(P)^T dctx)
        rc = gemm_heads(h, g, g.t, CUBLAS_OP_N, CUBLAS_OP_T, d, L, L, 1.0f, at_c(dctx, dc, g), H, d,
                        at_c(Pv, (size_t)at, g), L, LL, at_m(dqkv, q + 2 * H, g), ld, d, heads);
        if (rc) return rc;
        // dP^T [L, L] = V [L, d] * dctx^T [d, L]   (dP = dctx V^T, row-major, float32 in ws)
        rc = gemm_heads(h, g, CUDA_R_32F, CUBLAS_OP_T, CUBLAS_OP_N, L, L, d, 1.0f, at_c(qkv, q + 2 * H, g), ld, d,
                        at_c(dctx, dc, g), H, d, ws + at, L, LL, heads);
        if (rc) return rc;
        at += (int64_t)heads * L * L;
    }
    // dS overwrites dropout(P) (bf16 / dropout): the dV products above have read it
    TBERT_DISPATCH_DTYPE(dt, TBERT_LAUNCH(softmax_bwd_kernel<Act>, dim3(N, heads), kSoftmaxBlock, 0, s, (Act *)dS, ws,
                                          (const Act *)P, cu_seqlens, p_off, B, dr));
    LAUNCH_CHECK(s);
    at = 0;
    for (int b = 0; b < B; b++) {
        const int L = cu_seqlens_host[b + 1] - cu_seqlens_host[b];
        if (L == 0) continue;
        const size_t q = (size_t)cu_seqlens_host[b] * ld;
        const long long LL = (long long)L * L;
        // dQ^T [d, L] = scale K^T [d, L] * dS^T   (dQ = scale dS K)
        rc = gemm_heads(h, g, g.t, CUBLAS_OP_N, CUBLAS_OP_N, d, L, L, scale, at_c(qkv, q + H, g), ld, d,
                        at_c(dS, (size_t)at, g), L, LL, at_m(dqkv, q, g), ld, d, heads);
        if (rc) return rc;
        // dK^T [d, L] = scale Q^T [d, L] * dS   (dK = scale dS^T Q)
        rc = gemm_heads(h, g, g.t, CUBLAS_OP_N, CUBLAS_OP_T, d, L, L, scale, at_c(qkv, q, g), ld, d,
                        at_c(dS, (size_t)at, g), L, LL, at_m(dqkv, q + H, g), ld, d, heads);
        if (rc) return rc;
        at += (int64_t)heads * L * L;
    }
    return 0;
}
