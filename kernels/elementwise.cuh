// Grid sizing for the elementwise kernels: grid-stride loops over size_t indices.
#pragma once
#include "cuda_check.cuh"

namespace tbert {
constexpr int kEltBlock = 256;
inline unsigned elt_grid(size_t n) {
    size_t g = TBERT_CEIL_DIV(n, (size_t)kEltBlock);
    const size_t cap = (size_t)1 << 20; // enough blocks to fill any device; the loop covers the rest
    return (unsigned)(g < cap ? (g > 0 ? g : 1) : cap);
}
__device__ __forceinline__ float gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }
} // namespace tbert
