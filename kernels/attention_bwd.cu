// Attention backward on packed tokens with saved probabilities (forward: attention.cu), and its forward twin that
// saves them. Float32. The products run through cuBLAS directly on the packed qkv / ctx rows: per sequence one
// strided-batched call per product, batched over the heads (head h's columns start h*d further: stride d, leading
// dimension 3H or H), so no head is split out or padded. The softmax and its backward are one launch each over
// every (packed row, head). P layout and the choice of saved probabilities: include/tbert/cuda_kernels.h.
// CPU twins: tbert_fwd_attention, tbert_bwd_attention.
#include <math.h>

#include "packed.cuh"

namespace {

constexpr int kSoftmaxBlock = 128;

// The L x L probability block of (sequence b, head h) and the row of packed row r in it.
struct prow {
    int len, i;
    int64_t at; // offset of the row in P
};
__device__ __forceinline__ prow find_row(const int32_t *cu_seqlens, const int64_t *p_off, int B, int r, int h) {
    const int b = tbert::last_le(cu_seqlens, B, r);
    prow p;
    p.len = cu_seqlens[b + 1] - cu_seqlens[b];
    p.i = r - cu_seqlens[b];
    p.at = p_off[b] + ((int64_t)h * p.len + p.i) * p.len;
    return p;
}

// grid (N, heads): row r of head h, in place: p[j] = exp(s[j] - max) / sum (the scale is in the product)
__global__ void softmax_rows_kernel(float *P, const int32_t *cu_seqlens, const int64_t *p_off, int B) {
    TBERT_SHARED(float, scratch, 32);
    const prow pr = find_row(cu_seqlens, p_off, B, blockIdx.x, blockIdx.y);
    float *row = P + pr.at;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < pr.len; j += blockDim.x) mx = fmaxf(mx, row[j]);
    mx = tbert::warp_max(mx);
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = mx;
    __syncthreads();
    mx = -INFINITY;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) mx = fmaxf(mx, scratch[w]);
    __syncthreads();
    float sum = 0.0f;
    for (int j = threadIdx.x; j < pr.len; j += blockDim.x) sum += expf(row[j] - mx);
    const float inv = 1.0f / tbert::block_sum(sum, scratch);
    for (int j = threadIdx.x; j < pr.len; j += blockDim.x) row[j] = expf(row[j] - mx) * inv;
}

// grid (N, heads): dS = P (dP - sum_j P dP), in place over dP
__global__ void softmax_bwd_kernel(float *dP, const float *P, const int32_t *cu_seqlens, const int64_t *p_off, int B) {
    TBERT_SHARED(float, scratch, 32);
    const prow pr = find_row(cu_seqlens, p_off, B, blockIdx.x, blockIdx.y);
    const float *p = P + pr.at;
    float *g = dP + pr.at;
    float dot = 0.0f;
    for (int j = threadIdx.x; j < pr.len; j += blockDim.x) dot += p[j] * g[j];
    dot = tbert::block_sum(dot, scratch);
    for (int j = threadIdx.x; j < pr.len; j += blockDim.x) g[j] = p[j] * (g[j] - dot);
}

// C = alpha op(A) op(B) + beta C, column-major, batched over the heads
int gemm_heads(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha,
               const float *A, int lda, long long sa, const float *Bm, int ldb, long long sb, float *C, int ldc,
               long long sc, int heads) {
    const float beta = 0.0f;
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(h, ta, tb, m, n, k, &alpha, A, CUDA_R_32F, lda, sa, Bm, CUDA_R_32F, ldb,
                                            sb, &beta, C, CUDA_R_32F, ldc, sc, heads, CUBLAS_COMPUTE_32F,
                                            CUBLAS_GEMM_DEFAULT));
    return 0;
}

int check_args(const int32_t *cu_host, int B, int heads, int d, int *N) {
    SHAPE_CHECK(cu_host && B >= 0 && heads > 0 && heads <= 65535 && d > 0 && cu_host[0] == 0);
    for (int b = 0; b < B; b++) SHAPE_CHECK(cu_host[b + 1] >= cu_host[b] && cu_host[b + 1] - cu_host[b] <= 65536);
    *N = cu_host[B];
    SHAPE_CHECK((long long)heads * d * 3 <= 0x7fffffff);
    return 0;
}

} // namespace

extern "C" int tbert_cuda_attention_fwd_probs(tbert_cublas_handle h, float *ctx, float *P, const float *qkv,
                                              const int32_t *cu_seqlens_host, const int32_t *cu_seqlens,
                                              const int64_t *p_off, int B, int heads, int d, float scale,
                                              cudaStream_t s) {
    SHAPE_CHECK(h && ctx && P && qkv && cu_seqlens && p_off);
    int N = 0, rc = check_args(cu_seqlens_host, B, heads, d, &N);
    if (rc) return rc;
    if (N == 0) return 0;
    const int H = heads * d, ld = 3 * H;
    int64_t at = 0;
    for (int b = 0; b < B; b++) { // S (row-major [i][j]) = scale Q K^T, i.e. column-major S^T = scale K Q^T
        const int L = cu_seqlens_host[b + 1] - cu_seqlens_host[b];
        if (L == 0) continue;
        const float *q = qkv + (size_t)cu_seqlens_host[b] * ld;
        rc = gemm_heads(h, CUBLAS_OP_T, CUBLAS_OP_N, L, L, d, scale, q + H, ld, d, q, ld, d, P + at, L,
                        (long long)L * L, heads);
        if (rc) return rc;
        at += (int64_t)heads * L * L;
    }
    TBERT_LAUNCH(softmax_rows_kernel, dim3(N, heads), kSoftmaxBlock, 0, s, P, cu_seqlens, p_off, B);
    LAUNCH_CHECK(s);
    at = 0;
    for (int b = 0; b < B; b++) { // ctx^T [d, L] = V^T [d, L] * P^T
        const int L = cu_seqlens_host[b + 1] - cu_seqlens_host[b];
        if (L == 0) continue;
        const size_t r0 = (size_t)cu_seqlens_host[b];
        rc = gemm_heads(h, CUBLAS_OP_N, CUBLAS_OP_N, d, L, L, 1.0f, qkv + r0 * ld + 2 * H, ld, d, P + at, L,
                        (long long)L * L, ctx + r0 * H, H, d, heads);
        if (rc) return rc;
        at += (int64_t)heads * L * L;
    }
    return 0;
}

extern "C" int tbert_cuda_attention_bwd(tbert_cublas_handle h, float *dqkv, const float *qkv, const float *P,
                                        const float *dctx, float *ws, const int32_t *cu_seqlens_host,
                                        const int32_t *cu_seqlens, const int64_t *p_off, int B, int heads, int d,
                                        float scale, cudaStream_t s) {
    SHAPE_CHECK(h && dqkv && qkv && P && dctx && ws && cu_seqlens && p_off && dqkv != qkv);
    int N = 0, rc = check_args(cu_seqlens_host, B, heads, d, &N);
    if (rc) return rc;
    if (N == 0) return 0;
    const int H = heads * d, ld = 3 * H;
    int64_t at = 0;
    for (int b = 0; b < B; b++) {
        const int L = cu_seqlens_host[b + 1] - cu_seqlens_host[b];
        if (L == 0) continue;
        const size_t r0 = (size_t)cu_seqlens_host[b];
        const float *q = qkv + r0 * ld, *dc = dctx + r0 * H;
        float *dq = dqkv + r0 * ld;
        const long long LL = (long long)L * L;
        // dV^T [d, L] = dctx^T [d, L] * P   (dV = P^T dctx)
        rc = gemm_heads(h, CUBLAS_OP_N, CUBLAS_OP_T, d, L, L, 1.0f, dc, H, d, P + at, L, LL, dq + 2 * H, ld, d, heads);
        if (rc) return rc;
        // dP^T [L, L] = V [L, d] * dctx^T [d, L]   (dP = dctx V^T, row-major in ws)
        rc = gemm_heads(h, CUBLAS_OP_T, CUBLAS_OP_N, L, L, d, 1.0f, q + 2 * H, ld, d, dc, H, d, ws + at, L, LL, heads);
        if (rc) return rc;
        at += (int64_t)heads * L * L;
    }
    TBERT_LAUNCH(softmax_bwd_kernel, dim3(N, heads), kSoftmaxBlock, 0, s, ws, P, cu_seqlens, p_off, B);
    LAUNCH_CHECK(s);
    at = 0;
    for (int b = 0; b < B; b++) {
        const int L = cu_seqlens_host[b + 1] - cu_seqlens_host[b];
        if (L == 0) continue;
        const size_t r0 = (size_t)cu_seqlens_host[b];
        const float *q = qkv + r0 * ld;
        float *dq = dqkv + r0 * ld;
        const long long LL = (long long)L * L;
        // dQ^T [d, L] = scale K^T [d, L] * dS^T   (dQ = scale dS K)
        rc = gemm_heads(h, CUBLAS_OP_N, CUBLAS_OP_N, d, L, L, scale, q + H, ld, d, ws + at, L, LL, dq, ld, d, heads);
        if (rc) return rc;
        // dK^T [d, L] = scale Q^T [d, L] * dS   (dK = scale dS^T Q)
        rc = gemm_heads(h, CUBLAS_OP_N, CUBLAS_OP_T, d, L, L, scale, q, ld, d, ws + at, L, LL, dq + H, ld, d, heads);
        if (rc) return rc;
        at += (int64_t)heads * L * L;
    }
    return 0;
}
