// Bias + exact (erf) GELU fused, and the other bias epilogues of the encoder (bias add, bias + tanh).
#include "elementwise.cuh"

namespace {

template <typename T>
__global__ void bias_gelu_kernel(T *x, const float *bias, size_t n, int cols) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float v = tbert::to_f(x[i]) + bias[i % (size_t)cols];
        x[i] = tbert::from_f<T>(tbert::gelu_erf(v));
    }
}

template <typename T>
__global__ void bias_add_kernel(T *x, const float *bias, size_t n, int cols) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = tbert::from_f<T>(tbert::to_f(x[i]) + bias[i % (size_t)cols]);
}

__global__ void bias_tanh_kernel(float *x, const float *bias, size_t n, int cols) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = tanhf(x[i] + bias[i % (size_t)cols]);
}

} // namespace

extern "C" int tbert_cuda_bias_gelu(void *x, const float *bias, tbert_cuda_dtype dt, int rows, int cols,
                                    cudaStream_t s) {
    SHAPE_CHECK(x && bias && rows >= 0 && cols > 0);
    const size_t n = (size_t)rows * (size_t)cols;
    if (n == 0) return 0;
    TBERT_DISPATCH_DTYPE(
        dt, TBERT_LAUNCH(bias_gelu_kernel<Act>, tbert::elt_grid(n), tbert::kEltBlock, 0, s, (Act *)x, bias, n, cols));
    LAUNCH_CHECK(s);
    return 0;
}

extern "C" int tbert_cuda_bias_add(void *x, const float *bias, tbert_cuda_dtype dt, int rows, int cols,
                                   cudaStream_t s) {
    SHAPE_CHECK(x && bias && rows >= 0 && cols > 0);
    const size_t n = (size_t)rows * (size_t)cols;
    if (n == 0) return 0;
    TBERT_DISPATCH_DTYPE(
        dt, TBERT_LAUNCH(bias_add_kernel<Act>, tbert::elt_grid(n), tbert::kEltBlock, 0, s, (Act *)x, bias, n, cols));
    LAUNCH_CHECK(s);
    return 0;
}

extern "C" int tbert_cuda_bias_tanh(float *x, const float *bias, int rows, int cols, cudaStream_t s) {
    SHAPE_CHECK(x && bias && rows >= 0 && cols > 0);
    const size_t n = (size_t)rows * (size_t)cols;
    if (n == 0) return 0;
    TBERT_LAUNCH(bias_tanh_kernel, tbert::elt_grid(n), tbert::kEltBlock, 0, s, x, bias, n, cols);
    LAUNCH_CHECK(s);
    return 0;
}
