// Backward of pooling (mean, cls, flatten) over packed rows, of the row L2 normalisation and of the pooler
// (tanh + linear), forwards in pooling.cu / gelu.cu. Contracts: include/tbert/cuda_kernels.h; CPU twins:
// tbert_bwd_pool, tbert_bwd_l2_normalize, tbert_bwd_pooler.
#include "elementwise.cuh"
#include "packed.cuh"

namespace {

// One thread per packed element (every row written: zeros where the pooling took nothing).
template <typename T>
__global__ void pool_bwd_kernel(T *dh, const float *dout, size_t ld, const int32_t *cu_seqlens, int kind, int B, int H,
                                int out_T, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const int r = (int)(i / (size_t)H), c = (int)(i - (size_t)r * H);
        const int b = tbert::last_le(cu_seqlens, B, r);
        const int t = r - cu_seqlens[b], len = cu_seqlens[b + 1] - cu_seqlens[b];
        const float *g = dout + (size_t)b * ld;
        float v = 0.0f;
        if (kind == TBERT_CUDA_POOL_MEAN) v = g[c] * (1.0f / (float)len);
        else if (kind == TBERT_CUDA_POOL_CLS) v = t == 0 ? g[c] : 0.0f;
        else v = t < out_T ? g[(size_t)t * H + c] : 0.0f;
        dh[i] = tbert::from_f<T>(v);
    }
}

// One block per row: |x|^2 and y . dy, then dx = (dy - y (y . dy)) / |x| (dy * 1e12 below the forward's floor).
__global__ void l2_normalize_bwd_kernel(float *dx, const float *x, const float *y, const float *dy, int dim) {
    TBERT_SHARED(float, scratch, 32);
    const size_t off = (size_t)blockIdx.x * dim;
    float ss = 0.0f, dot = 0.0f;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        ss += x[off + j] * x[off + j];
        dot += y[off + j] * dy[off + j];
    }
    ss = tbert::block_sum(ss, scratch);
    dot = tbert::block_sum(dot, scratch);
    const float nrm = sqrtf(ss);
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        const float g = dy[off + j];
        if (ss <= 0.0f) dx[off + j] = g; // the forward leaves a zero row as it is
        else if (nrm > 1e-12f) dx[off + j] = (g - y[off + j] * dot) / nrm;
        else dx[off + j] = g * 1e12f; // y = x / 1e-12: linear
    }
}

} // namespace

extern "C" int tbert_cuda_pool_bwd(void *dhidden, const float *dout, size_t ld, const int32_t *cu_seqlens,
                                   tbert_cuda_pool_kind kind, tbert_cuda_dtype dt, int B, int N, int H, int out_T,
                                   cudaStream_t s) {
    SHAPE_CHECK(dhidden && dout && cu_seqlens && B >= 0 && N >= 0 && H > 0);
    SHAPE_CHECK(kind == TBERT_CUDA_POOL_MEAN || kind == TBERT_CUDA_POOL_CLS || kind == TBERT_CUDA_POOL_FLATTEN);
    SHAPE_CHECK(kind == TBERT_CUDA_POOL_FLATTEN ? out_T > 0 && ld >= (size_t)out_T * H : ld >= (size_t)H);
    if (N == 0) return 0;
    SHAPE_CHECK(B > 0);
    const size_t n = (size_t)N * H;
    TBERT_DISPATCH_DTYPE(dt, TBERT_LAUNCH(pool_bwd_kernel<Act>, tbert::elt_grid(n), tbert::kEltBlock, 0, s,
                                          (Act *)dhidden, dout, ld, cu_seqlens, (int)kind, B, H, out_T, n));
    LAUNCH_CHECK(s);
    return 0;
}

extern "C" int tbert_cuda_l2_normalize_bwd(float *dx, const float *x, const float *y, const float *dy, int rows,
                                           int dim, cudaStream_t s) {
    SHAPE_CHECK(dx && x && y && dy && rows >= 0 && dim > 0);
    if (rows == 0) return 0;
    TBERT_LAUNCH(l2_normalize_bwd_kernel, rows, 256, 0, s, dx, x, y, dy, dim);
    LAUNCH_CHECK(s);
    return 0;
}

extern "C" int tbert_cuda_pooler_bwd(tbert_cublas_handle h, float *dcls, float *dW, float *db, const float *cls,
                                     const float *W, const float *out, const float *dout, float *ws, int B, int H,
                                     cudaStream_t s) {
    SHAPE_CHECK(h && dcls && dW && db && cls && W && out && dout && ws && B >= 0 && H > 0);
    if (B == 0) return 0;
    float *da = ws;
    int rc = tbert_cuda_tanh_bwd(da, dout, out, (size_t)B * H, s);
    if (rc) return rc;
    return tbert_cuda_linear_bwd(h, TBERT_CUDA_GEMM_FP32, dcls, 0, dW, db, cls, W, da, ws + (size_t)B * H, B, H, H, s);
}
