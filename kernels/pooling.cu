// Pooling of the packed last hidden state on the device (mean, cls, flatten; the pooler is cls + GEMM +
// bias_tanh), and row-wise L2 normalisation. Semantics: tbert_pool_hidden() in src/pooling.c.
#include "elementwise.cuh"

namespace {

// Sequence b's length from the offsets, clamped to [0, cap].
__device__ __forceinline__ int packed_len(const int32_t *cu_seqlens, size_t b, int cap) {
    const int len = cu_seqlens[b + 1] - cu_seqlens[b];
    return len < 0 ? 0 : (len > cap ? cap : len);
}

// grid (ceil(H / block), B): thread owns column c of sequence b and walks its rows (coalesced across c).
template <typename T>
__global__ void pool_mean_kernel(float *out, size_t ld, const T *x, const int32_t *cu_seqlens, int H) {
    const int b = blockIdx.y, c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= H) return;
    const int len = packed_len(cu_seqlens, b, 0x7fffffff);
    const T *xb = x + (size_t)cu_seqlens[b] * H + c;
    float s = 0.0f;
    for (int t = 0; t < len; t++) s += tbert::to_f(xb[(size_t)t * H]);
    out[(size_t)b * ld + c] = len > 0 ? s / (float)len : 0.0f;
}

template <typename T>
__global__ void pool_cls_kernel(float *out, size_t ld, const T *x, const int32_t *cu_seqlens, int H) {
    const int b = blockIdx.y, c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= H) return;
    out[(size_t)b * ld + c] = packed_len(cu_seqlens, b, 1) ? tbert::to_f(x[(size_t)cu_seqlens[b] * H + c]) : 0.0f;
}

// out[b, t*H + c] for t < out_T: x[cu_seqlens[b] + t, c] when t < length, else 0
template <typename T>
__global__ void pool_flatten_kernel(float *out, size_t ld, const T *x, const int32_t *cu_seqlens, int H, int out_T,
                                    size_t n) {
    const size_t dim = (size_t)out_T * H;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const size_t b = i / dim, j = i - b * dim;
        const int t = (int)(j / (size_t)H);
        out[b * ld + j] = t < packed_len(cu_seqlens, b, out_T) ? tbert::to_f(x[(size_t)cu_seqlens[b] * H + j]) : 0.0f;
    }
}

__global__ void l2_normalize_kernel(float *x, int dim) {
    TBERT_SHARED(float, scratch, 32);
    float *r = x + (size_t)blockIdx.x * dim;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) ss += r[j] * r[j];
    ss = tbert::block_sum(ss, scratch);
    if (ss <= 0.0f) return;
    const float inv = 1.0f / fmaxf(sqrtf(ss), 1e-12f);
    for (int j = threadIdx.x; j < dim; j += blockDim.x) r[j] *= inv;
}

constexpr int kPoolBlock = 128;

} // namespace

extern "C" int tbert_cuda_pool(float *out, size_t ld, const void *x, const int32_t *cu_seqlens,
                               tbert_cuda_pool_kind kind, tbert_cuda_dtype dt, int B, int H, int out_T,
                               cudaStream_t s) {
    SHAPE_CHECK(out && x && cu_seqlens && B >= 0 && B <= 65535 && H > 0);
    if (B == 0) return 0;
    const dim3 grid(TBERT_CEIL_DIV(H, kPoolBlock), B);
    switch (kind) {
    case TBERT_CUDA_POOL_MEAN:
        SHAPE_CHECK(ld >= (size_t)H);
        TBERT_DISPATCH_DTYPE(
            dt, TBERT_LAUNCH(pool_mean_kernel<Act>, grid, kPoolBlock, 0, s, out, ld, (const Act *)x, cu_seqlens, H));
        break;
    case TBERT_CUDA_POOL_CLS:
        SHAPE_CHECK(ld >= (size_t)H);
        TBERT_DISPATCH_DTYPE(
            dt, TBERT_LAUNCH(pool_cls_kernel<Act>, grid, kPoolBlock, 0, s, out, ld, (const Act *)x, cu_seqlens, H));
        break;
    case TBERT_CUDA_POOL_FLATTEN: {
        SHAPE_CHECK(out_T > 0 && ld >= (size_t)out_T * H);
        const size_t n = (size_t)B * out_T * H;
        TBERT_DISPATCH_DTYPE(dt, TBERT_LAUNCH(pool_flatten_kernel<Act>, tbert::elt_grid(n), tbert::kEltBlock, 0, s, out,
                                              ld, (const Act *)x, cu_seqlens, H, out_T, n));
        break;
    }
    default:
        return TBERT_CUDA_EBADSHAPE;
    }
    LAUNCH_CHECK(s);
    return 0;
}

extern "C" int tbert_cuda_l2_normalize(float *x, int rows, int dim, cudaStream_t s) {
    SHAPE_CHECK(x && rows >= 0 && dim > 0);
    if (rows == 0) return 0;
    TBERT_LAUNCH(l2_normalize_kernel, rows, 256, 0, s, x, dim);
    LAUNCH_CHECK(s);
    return 0;
}
