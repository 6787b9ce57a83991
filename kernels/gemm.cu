// Matrix products through cuBLAS. HF nn.Linear keeps W as (out, in) row-major: y = x @ W^T is, in cuBLAS's
// column-major view, y^T (out x rows) = op_T(W) (out x in) * x^T (in x rows).
#include "cuda_check.cuh"

extern "C" int tbert_cuda_linear(tbert_cublas_handle h, tbert_cuda_gemm_mode mode, void *y, const void *x,
                                 const void *W, int rows, int in, int out) {
    SHAPE_CHECK(h && y && x && W && rows >= 0 && in > 0 && out > 0);
    if (rows == 0) return 0;
    const float one = 1.0f, zero = 0.0f;
    cudaDataType_t t = CUDA_R_32F;
    cublasComputeType_t ct = CUBLAS_COMPUTE_32F; // plain float32 FMA (the handle keeps the default math mode)
    if (mode == TBERT_CUDA_GEMM_TF32) ct = CUBLAS_COMPUTE_32F_FAST_TF32;
    else if (mode == TBERT_CUDA_GEMM_BF16) t = CUDA_R_16BF, ct = CUBLAS_COMPUTE_32F;
    else SHAPE_CHECK(mode == TBERT_CUDA_GEMM_FP32);
    CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, &one, W, t, in, x, t, in, &zero, y, t, out,
                              ct, CUBLAS_GEMM_DEFAULT));
    return 0;
}
