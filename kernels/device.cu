// Device discovery, error strings and a trivial fill kernel (also used to poison buffers in tests).
#include "cuda_check.cuh"

extern "C" int tbert_cuda_device_count_impl(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); // clear the "no device" error
        return 0;
    }
    return n;
}

extern "C" const char *tbert_cuda_error_string(int code) {
    if (code == 0) return "no error";
    if (code == TBERT_CUDA_EBADSHAPE) return "bad shape (a launcher's shape check failed)";
    if (code >= TBERT_CUDA_CUBLAS_BASE) return cublasGetStatusString((cublasStatus_t)(code - TBERT_CUDA_CUBLAS_BASE));
    return cudaGetErrorString((cudaError_t)code);
}

extern "C" int tbert_cuda_is_oom(int code) {
    return code == (int)cudaErrorMemoryAllocation ||
           code == TBERT_CUDA_CUBLAS_BASE + (int)CUBLAS_STATUS_ALLOC_FAILED;
}

__global__ void fill_kernel(float *out, float value, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = value;
}

extern "C" int tbert_cuda_fill(float *dev, float value, int n, cudaStream_t stream) {
    SHAPE_CHECK(n >= 0);
    if (n == 0) return 0;
    const int block = 256;
    TBERT_LAUNCH(fill_kernel, TBERT_CEIL_DIV(n, block), block, 0, stream, dev, value, n);
    LAUNCH_CHECK(stream);
    return 0;
}
