// Dropout on the device with the CPU's masks, bit for bit: every element draws its keep/drop from the
// counter-based Philox of include/tbert/dropout_rng.h (a pure function of seed, step, site and the element's
// index), so no mask is stored: the backward regenerates the same multipliers. Contracts:
// include/tbert/cuda_kernels.h.
#include "elementwise.cuh"
#include "tbert/dropout_rng.h"

namespace {

__global__ void dropout_mask_kernel(float *mask, size_t n, uint64_t seed, uint64_t step, uint32_t site,
                                    uint64_t index0, float p) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        mask[i] = tbert_dropout_scale(seed, step, site, index0 + i, p);
}

template <typename T>
__global__ void dropout_kernel(T *y, const T *x, size_t n, uint64_t seed, uint64_t step, uint32_t site,
                               uint64_t index0, float p) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = tbert::from_f<T>(tbert::to_f(x[i]) * tbert_dropout_scale(seed, step, site, index0 + i, p));
}

} // namespace

extern "C" int tbert_cuda_dropout_mask(float *mask, size_t n, uint64_t seed, uint64_t step, uint32_t site,
                                       uint64_t index0, float p, cudaStream_t s) {
    SHAPE_CHECK(mask && p >= 0.0f && p < 1.0f);
    if (n == 0) return 0;
    TBERT_LAUNCH(dropout_mask_kernel, tbert::elt_grid(n), tbert::kEltBlock, 0, s, mask, n, seed, step, site, index0, p);
    LAUNCH_CHECK(s);
    return 0;
}

extern "C" int tbert_cuda_dropout_to(void *y, const void *x, tbert_cuda_dtype dt, size_t n, uint64_t seed,
                                     uint64_t step, uint32_t site, uint64_t index0, float p, cudaStream_t s) {
    SHAPE_CHECK(y && x && p >= 0.0f && p < 1.0f);
    if (n == 0 || (p == 0.0f && y == x)) return 0;
    TBERT_DISPATCH_DTYPE(dt, TBERT_LAUNCH(dropout_kernel<Act>, tbert::elt_grid(n), tbert::kEltBlock, 0, s, (Act *)y,
                                          (const Act *)x, n, seed, step, site, index0, p));
    LAUNCH_CHECK(s);
    return 0;
}

extern "C" int tbert_cuda_dropout(void *x, tbert_cuda_dtype dt, size_t n, uint64_t seed, uint64_t step, uint32_t site,
                                  uint64_t index0, float p, cudaStream_t s) {
    return tbert_cuda_dropout_to(x, x, dt, n, seed, step, site, index0, p, s);
}
