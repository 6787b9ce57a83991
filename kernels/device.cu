// Device discovery and a trivial kernel that proves the CUDA build, link and launch path work.
#include <cuda_runtime.h>

#include "cuda_check.cuh"

extern "C" int tbert_cuda_device_count_impl(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); // clear the sticky "no device" error
        return 0;
    }
    return n;
}

__global__ void fill_kernel(float *out, float value, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = value;
}

// Fills n floats of device memory with value; returns 0 on success, else the cudaError_t.
extern "C" int tbert_cuda_fill(float *dev, float value, int n, cudaStream_t stream) {
    if (n <= 0) return 0;
    const int block = 256;
    fill_kernel<<<(n + block - 1) / block, block, 0, stream>>>(dev, value, n);
    return (int)cudaGetLastError();
}
