// Residual + layernorm backward with the saved mean and rstd (forward: layernorm.cu), and the forward twin that
// saves them. dgamma / dbeta are deterministic: per-chunk partials (one thread per column, rows in order), then the
// fixed-order second pass of colsum.cu. Contracts: include/tbert/cuda_kernels.h; CPU twins: tbert_fwd_layernorm,
// tbert_bwd_layernorm.
#include "colsum.cuh"
#include "layernorm.cuh"

namespace {

// One block per row: z += bias + residual (kept), y = (z - mean) rstd gamma + beta, two-pass float32 statistics.
template <typename T>
__global__ void layernorm_fwd_kernel(T *y, float *mean, float *rstd, T *z, const float *bias, const T *residual,
                                     const float *g, const float *beta, float eps, int H) {
    TBERT_SHARED(float, scratch, 32);
    T *zr = z + (size_t)blockIdx.x * H;
    const T *rr = residual ? residual + (size_t)blockIdx.x * H : nullptr;
    float s = 0.0f;
    for (int c = threadIdx.x; c < H; c += blockDim.x) {
        float v = tbert::to_f(zr[c]);
        if (bias || rr) {
            if (bias) v += bias[c];
            if (rr) v += tbert::to_f(rr[c]);
            zr[c] = tbert::from_f<T>(v);
            v = tbert::to_f(zr[c]); // the statistics of the stored z (bf16: rounded), as the backward sees it
        }
        s += v;
    }
    const float mu = tbert::block_sum(s, scratch) / (float)H;
    float q = 0.0f;
    for (int c = threadIdx.x; c < H; c += blockDim.x) {
        const float dl = tbert::to_f(zr[c]) - mu;
        q += dl * dl;
    }
    const float rs = rsqrtf(tbert::block_sum(q, scratch) / (float)H + eps);
    T *yr = y + (size_t)blockIdx.x * H;
    for (int c = threadIdx.x; c < H; c += blockDim.x)
        yr[c] = tbert::from_f<T>((tbert::to_f(zr[c]) - mu) * rs * g[c] + beta[c]);
    if (threadIdx.x == 0) {
        mean[blockIdx.x] = mu;
        rstd[blockIdx.x] = rs;
    }
}

// One block per row: with gd = dy gamma and xhat = (z - mean) rstd,
// dz = rstd (gd - mean(gd) - xhat mean(gd xhat)); dres += dz. Each thread reads dy[c] before it writes dz[c]
// (same thread, same column), so dz may alias dy.
template <typename T>
__global__ void layernorm_bwd_kernel(T *dz, T *dres, const T *z, const float *mean, const float *rstd,
                                     const float *g, const T *dy, int H) {
    TBERT_SHARED(float, scratch, 32);
    const size_t off = (size_t)blockIdx.x * H;
    const float mu = mean[blockIdx.x], rs = rstd[blockIdx.x];
    float m1 = 0.0f, m2 = 0.0f;
    for (int c = threadIdx.x; c < H; c += blockDim.x) {
        const float gd = tbert::to_f(dy[off + c]) * g[c], xh = (tbert::to_f(z[off + c]) - mu) * rs;
        m1 += gd;
        m2 += gd * xh;
    }
    const float a = tbert::block_sum(m1, scratch) / (float)H;
    const float b = tbert::block_sum(m2, scratch) / (float)H;
    for (int c = threadIdx.x; c < H; c += blockDim.x) {
        const float gd = tbert::to_f(dy[off + c]) * g[c], xh = (tbert::to_f(z[off + c]) - mu) * rs;
        const float v = rs * (gd - a - xh * b);
        dz[off + c] = tbert::from_f<T>(v);
        if (dres) dres[off + c] = tbert::from_f<T>(tbert::to_f(dres[off + c]) + v);
    }
}

// Chunk partials of dgamma (sum dy xhat) and dbeta (sum dy): thread per column, the chunk's rows in order.
template <typename T>
__global__ void layernorm_param_part_kernel(float *pg, float *pb, const T *z, const float *mean, const float *rstd,
                                            const T *dy, int rows, int H) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x, k = blockIdx.y;
    if (c >= H) return;
    const int r0 = k * TBERT_CUDA_BWD_CHUNK;
    const int r1 = rows - r0 < TBERT_CUDA_BWD_CHUNK ? rows : r0 + TBERT_CUDA_BWD_CHUNK;
    float sg = 0.0f, sb = 0.0f;
    for (int r = r0; r < r1; r++) {
        const float d = tbert::to_f(dy[(size_t)r * H + c]);
        sg += d * ((tbert::to_f(z[(size_t)r * H + c]) - mean[r]) * rstd[r]);
        sb += d;
    }
    pg[(size_t)k * H + c] = sg;
    pb[(size_t)k * H + c] = sb;
}

constexpr int kPartBlock = 128;

} // namespace

extern "C" int tbert_cuda_layernorm_fwd(void *y, float *mean, float *rstd, void *z, const float *bias,
                                        const void *residual, const float *gamma, const float *beta, float eps,
                                        tbert_cuda_dtype dt, int rows, int H, cudaStream_t s) {
    SHAPE_CHECK(y && mean && rstd && z && gamma && beta && y != z && residual != z && rows >= 0 && H > 0 && H <= 8192 &&
                eps >= 0.0f);
    if (rows == 0) return 0;
    TBERT_DISPATCH_DTYPE(dt, TBERT_LAUNCH(layernorm_fwd_kernel<Act>, rows, tbert::kLayernormBlock, 0, s, (Act *)y,
                                          mean, rstd, (Act *)z, bias, (const Act *)residual, gamma, beta, eps, H));
    LAUNCH_CHECK(s);
    return 0;
}

extern "C" int tbert_cuda_layernorm_bwd(void *dz, void *dres, float *dgamma, float *dbeta, const void *z,
                                        const float *mean, const float *rstd, const float *gamma, const void *dy,
                                        float *ws, tbert_cuda_dtype dt, int rows, int H, cudaStream_t s) {
    SHAPE_CHECK(dz && dgamma && dbeta && z && mean && rstd && gamma && dy && ws && rows >= 0 && H > 0 && H <= 8192);
    SHAPE_CHECK(dres != dz && dres != dy);
    if (rows == 0) return 0;
    const int chunks = tbert::colsum_chunks(rows);
    SHAPE_CHECK(chunks <= 65535);
    float *pg = ws, *pb = ws + (size_t)chunks * H;
    // the parameter partials first: they read dy, which dz may overwrite
    const dim3 grid(TBERT_CEIL_DIV(H, kPartBlock), chunks);
    TBERT_DISPATCH_DTYPE(dt, TBERT_LAUNCH(layernorm_param_part_kernel<Act>, grid, kPartBlock, 0, s, pg, pb,
                                          (const Act *)z, mean, rstd, (const Act *)dy, rows, H));
    LAUNCH_CHECK(s);
    int rc = tbert::colsum_finish(dgamma, pg, rows, H, s);
    if (rc) return rc;
    rc = tbert::colsum_finish(dbeta, pb, rows, H, s);
    if (rc) return rc;
    TBERT_DISPATCH_DTYPE(dt, TBERT_LAUNCH(layernorm_bwd_kernel<Act>, rows, tbert::kLayernormBlock, 0, s, (Act *)dz,
                                          (Act *)dres, (const Act *)z, mean, rstd, gamma, (const Act *)dy, H));
    LAUNCH_CHECK(s);
    return 0;
}
