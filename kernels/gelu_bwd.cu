// Backward of bias + exact GELU (forward: gelu.cu; with the forward twin that keeps the pre-activation) and of the
// pooler's tanh. The bias gradient is a deterministic
// column reduction (colsum.cu). Contracts: include/tbert/cuda_kernels.h; CPU twin: tbert_bwd_bias_gelu.
#include "colsum.cuh"
#include "elementwise.cuh"

namespace {

// gelu'(a) = Phi(a) + a phi(a)
template <typename T> __global__ void bias_gelu_bwd_kernel(T *da, const T *dh, const T *a, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float v = tbert::to_f(a[i]);
        const float cdf = 0.5f * (1.0f + erff(v * 0.70710678118654752f));
        const float pdf = 0.39894228040143268f * expf(-0.5f * v * v);
        da[i] = tbert::from_f<T>(tbert::to_f(dh[i]) * (cdf + v * pdf));
    }
}

template <typename T> __global__ void bias_gelu_fwd_kernel(T *a, T *h, const float *bias, size_t n, int cols) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float v = tbert::to_f(a[i]);
        if (bias) {
            a[i] = tbert::from_f<T>(v + bias[i % (size_t)cols]);
            v = tbert::to_f(a[i]); // the stored pre-activation (bf16: rounded), as the backward sees it
        }
        h[i] = tbert::from_f<T>(tbert::gelu_erf(v));
    }
}

__global__ void tanh_bwd_kernel(float *da, const float *dout, const float *out, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        da[i] = dout[i] * (1.0f - out[i] * out[i]);
}

} // namespace

extern "C" int tbert_cuda_bias_gelu_bwd(void *da, const void *dh, const void *a, float *dbias, float *ws,
                                        tbert_cuda_dtype dt, int rows, int cols, cudaStream_t s) {
    SHAPE_CHECK(da && dh && a && rows >= 0 && cols > 0 && (!dbias || ws));
    const size_t n = (size_t)rows * (size_t)cols;
    if (n == 0) return 0;
    TBERT_DISPATCH_DTYPE(dt, TBERT_LAUNCH(bias_gelu_bwd_kernel<Act>, tbert::elt_grid(n), tbert::kEltBlock, 0, s,
                                          (Act *)da, (const Act *)dh, (const Act *)a, n));
    LAUNCH_CHECK(s);
    if (dbias) return tbert_cuda_colsum_acc(dbias, da, dt, rows, cols, ws, s);
    return 0;
}

extern "C" int tbert_cuda_bias_gelu_fwd(void *a, void *h, const float *bias, tbert_cuda_dtype dt, int rows, int cols,
                                        cudaStream_t s) {
    SHAPE_CHECK(a && h && a != h && rows >= 0 && cols > 0);
    const size_t n = (size_t)rows * (size_t)cols;
    if (n == 0) return 0;
    TBERT_DISPATCH_DTYPE(dt, TBERT_LAUNCH(bias_gelu_fwd_kernel<Act>, tbert::elt_grid(n), tbert::kEltBlock, 0, s,
                                          (Act *)a, (Act *)h, bias, n, cols));
    LAUNCH_CHECK(s);
    return 0;
}

extern "C" int tbert_cuda_tanh_bwd(float *da, const float *dout, const float *out, size_t n, cudaStream_t s) {
    SHAPE_CHECK(da && dout && out);
    if (n == 0) return 0;
    TBERT_LAUNCH(tanh_bwd_kernel, tbert::elt_grid(n), tbert::kEltBlock, 0, s, da, dout, out, n);
    LAUNCH_CHECK(s);
    return 0;
}
