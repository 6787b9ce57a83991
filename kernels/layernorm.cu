// Bias + residual add + layernorm, fused: one read of each input row, one write of the output row.
#include "layernorm.cuh"

namespace {

template <typename T>
__global__ void bias_residual_ln_kernel(T *out, const T *x, const float *bias, const T *residual, const float *g,
                                        const float *beta, float eps, int H) {
    TBERT_DYNAMIC_SHARED(float, smem); // [32 scratch][H row]
    float *scratch = smem, *buf = smem + 32;
    const size_t row = blockIdx.x;
    const T *xr = x + row * H;
    const T *rr = residual ? residual + row * H : nullptr;
    for (int c = threadIdx.x; c < H; c += blockDim.x) {
        float v = tbert::to_f(xr[c]);
        if (bias) v += bias[c];
        if (rr) v += tbert::to_f(rr[c]);
        buf[c] = v;
    }
    __syncthreads(); // the whole row is read before any of it is written (out may alias x or residual)
    tbert::layernorm_row(out + row * H, buf, g, beta, eps, H, scratch);
}

} // namespace

extern "C" int tbert_cuda_bias_residual_ln(void *out, const void *x, const float *bias, const void *residual,
                                           const float *g, const float *beta, float eps, tbert_cuda_dtype dt,
                                           int rows, int H, cudaStream_t s) {
    SHAPE_CHECK(out && x && g && beta && rows >= 0 && H > 0 && H <= 8192 && eps >= 0.0f);
    if (rows == 0) return 0;
    const size_t smem = (32 + (size_t)H) * sizeof(float);
    TBERT_DISPATCH_DTYPE(dt, TBERT_LAUNCH(bias_residual_ln_kernel<Act>, rows, tbert::kLayernormBlock, smem, s,
                                          (Act *)out, (const Act *)x, bias, (const Act *)residual, g, beta, eps, H));
    LAUNCH_CHECK(s);
    return 0;
}
