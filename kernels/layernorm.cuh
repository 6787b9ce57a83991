// Row layernorm on a row staged in shared memory (shared by embeddings.cu and layernorm.cu).
#pragma once
#include "cuda_check.cuh"

namespace tbert {

// buf holds the row (H floats, shared memory, written by this block before the call); writes
// out[c] = (buf[c] - mean) * rstd * g[c] + beta[c]. Two-pass statistics in float32 (biased variance, as
// torch.nn.LayerNorm). scratch: 32 floats of shared memory.
template <typename T>
__device__ void layernorm_row(T *out, const float *buf, const float *g, const float *beta, float eps, int H,
                              float *scratch) {
    float s = 0.0f;
    for (int c = threadIdx.x; c < H; c += blockDim.x) s += buf[c];
    const float mean = block_sum(s, scratch) / (float)H;
    float q = 0.0f;
    for (int c = threadIdx.x; c < H; c += blockDim.x) {
        const float dlt = buf[c] - mean;
        q += dlt * dlt;
    }
    const float var = block_sum(q, scratch) / (float)H;
    const float rstd = rsqrtf(var + eps);
    for (int c = threadIdx.x; c < H; c += blockDim.x) out[c] = from_f<T>((buf[c] - mean) * rstd * g[c] + beta[c]);
}

constexpr int kLayernormBlock = 128;

} // namespace tbert
