// Error checking and small device helpers shared by all kernels' launchers.
#pragma once
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cublas_v2.h>

#include "cuda_launch.cuh"
#include "tbert/cuda_kernels.h"

#define TBERT_CEIL_DIV(a, b) (((a) + (b) - 1) / (b))

// Inside a launcher (returns int): a failing CUDA call returns its cudaError_t. The host side turns the code
// into a one-line message naming the launcher call, function, file and line (TBERT_CUDA_CHECK in
// tbert/cuda_kernels.h); with TBERT_CUDA_VERBOSE defined the failing statement inside the launcher is printed.
#ifdef TBERT_CUDA_VERBOSE
#define TBERT_CUDA_REPORT(stmt, msg) \
    std::fprintf(stderr, "tbert: %s failed: %s (in %s, %s:%d)\n", stmt, msg, __func__, __FILE__, __LINE__)
#else
#define TBERT_CUDA_REPORT(stmt, msg) ((void)0)
#endif

#define CUDA_CHECK(call)                                                  \
    do {                                                                  \
        cudaError_t cuda_e_ = (call);                                     \
        if (cuda_e_ != cudaSuccess) {                                     \
            TBERT_CUDA_REPORT(#call, cudaGetErrorString(cuda_e_));        \
            return (int)cuda_e_;                                          \
        }                                                                 \
    } while (0)

#define CUBLAS_CHECK(call)                                                \
    do {                                                                  \
        cublasStatus_t cublas_s_ = (call);                                \
        if (cublas_s_ != CUBLAS_STATUS_SUCCESS) {                         \
            TBERT_CUDA_REPORT(#call, cublasGetStatusString(cublas_s_));   \
            return TBERT_CUDA_CUBLAS_BASE + (int)cublas_s_;               \
        }                                                                 \
    } while (0)

namespace tbert {
// TBERT_CUDA_SYNC_LAUNCH=1 (environment, off by default): synchronise the stream after every launch, so that a
// kernel's fault is reported at the launch that made it. Off, nothing waits: the emulated device's stream checks
// see the real ordering in every build type.
inline bool sync_after_launch() {
    const char *e = std::getenv("TBERT_CUDA_SYNC_LAUNCH");
    return e && e[0] == '1' && e[1] == '\0';
}
} // namespace tbert

// After a launch: the launch error always; with TBERT_CUDA_SYNC_LAUNCH=1 also the kernel's own faults.
#define LAUNCH_CHECK(stream)                                                         \
    do {                                                                             \
        CUDA_CHECK(cudaGetLastError());                                              \
        if (tbert::sync_after_launch()) CUDA_CHECK(cudaStreamSynchronize(stream));   \
    } while (0)

#define SHAPE_CHECK(cond)                                                  \
    do {                                                                   \
        if (!(cond)) {                                                     \
            TBERT_CUDA_REPORT("shape check " #cond, "false");              \
            return TBERT_CUDA_EBADSHAPE;                                   \
        }                                                                  \
    } while (0)

namespace tbert {

// Activation storage types: arithmetic is always float.
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
// scratch: 32 floats of shared memory; the function ends with a barrier so scratch can be reused.
__device__ __forceinline__ float block_sum(float v, float *scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < nwarps ? scratch[lane] : 0.0f;
    t = warp_sum(t);
    __syncthreads();
    return t;
}

// Maximum over the whole block (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
// scratch: 32 floats of shared memory; the function ends with a barrier so scratch can be reused.
__device__ __forceinline__ float block_max(float v, float *scratch) {
    v = warp_max(v);
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
    __syncthreads();
    v = -INFINITY;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) v = fmaxf(v, scratch[w]);
    __syncthreads();
    return v;
}

} // namespace tbert

// Runs body with T bound to the storage type of dt.
#define TBERT_DISPATCH_DTYPE(dt, ...)                          \
    do {                                                       \
        if ((dt) == TBERT_CUDA_BF16) {                         \
            using Act = __nv_bfloat16;                           \
            __VA_ARGS__;                                       \
        } else if ((dt) == TBERT_CUDA_F32) {                   \
            using Act = float;                                   \
            __VA_ARGS__;                                       \
        } else {                                               \
            return TBERT_CUDA_EBADSHAPE;                       \
        }                                                      \
    } while (0)
