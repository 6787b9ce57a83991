// Storage-type conversions: float32 weights to bf16 at upload, bf16 activations back to float32.
#include "elementwise.cuh"

namespace {

__global__ void f32_to_bf16_kernel(__nv_bfloat16 *out, const float *in, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = __float2bfloat16(in[i]);
}

template <typename T>
__global__ void to_f32_kernel(float *out, const T *in, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = tbert::to_f(in[i]);
}

} // namespace

extern "C" int tbert_cuda_f32_to_bf16(uint16_t *out, const float *in, size_t n, cudaStream_t s) {
    SHAPE_CHECK(out && in);
    if (n == 0) return 0;
    TBERT_LAUNCH(f32_to_bf16_kernel, tbert::elt_grid(n), tbert::kEltBlock, 0, s, (__nv_bfloat16 *)out, in, n);
    LAUNCH_CHECK(s);
    return 0;
}

extern "C" int tbert_cuda_to_f32(float *out, const void *in, tbert_cuda_dtype dt, size_t n, cudaStream_t s) {
    SHAPE_CHECK(out && in);
    if (n == 0) return 0;
    TBERT_DISPATCH_DTYPE(
        dt, TBERT_LAUNCH(to_f32_kernel<Act>, tbert::elt_grid(n), tbert::kEltBlock, 0, s, out, (const Act *)in, n));
    LAUNCH_CHECK(s);
    return 0;
}
