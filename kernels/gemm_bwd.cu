// Backward of the linear layer (forward: gemm.cu): dx = dy W and dW += dy^T x through cuBLAS, db through the
// deterministic column sums (colsum.cu). Row-major [r, c] buffers are column-major [c, r] to cuBLAS.
// CPU twin: tbert_bwd_linear.
#include "cuda_check.cuh"

extern "C" int tbert_cuda_linear_bwd(tbert_cublas_handle h, tbert_cuda_gemm_mode mode, void *dx, int accumulate_dx,
                                     float *dW, float *db, const void *x, const void *W, const void *dy, float *ws,
                                     int rows, int in, int out, cudaStream_t s) {
    SHAPE_CHECK(h && dW && x && W && dy && rows >= 0 && in > 0 && out > 0 && (!db || ws));
    SHAPE_CHECK(accumulate_dx == 0 || accumulate_dx == 1);
    if (rows == 0) return 0;
    const float one = 1.0f, zero = 0.0f;
    cudaDataType_t t = CUDA_R_32F;
    cublasComputeType_t ct = CUBLAS_COMPUTE_32F;
    tbert_cuda_dtype dt = TBERT_CUDA_F32;
    if (mode == TBERT_CUDA_GEMM_TF32) ct = CUBLAS_COMPUTE_32F_FAST_TF32;
    else if (mode == TBERT_CUDA_GEMM_BF16) t = CUDA_R_16BF, dt = TBERT_CUDA_BF16;
    else SHAPE_CHECK(mode == TBERT_CUDA_GEMM_FP32);
    // dx^T [in, rows] (+)= W^T [in, out] * dy^T [out, rows]
    if (dx)
        CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, in, rows, out, &one, W, t, in, dy, t, out,
                                  accumulate_dx ? &one : &zero, dx, t, in, ct, CUBLAS_GEMM_DEFAULT));
    // dW^T [in, out] += x^T [in, rows] * dy [rows, out]   (float32 accumulator in every mode)
    CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_T, in, out, rows, &one, x, t, in, dy, t, out, &one, dW,
                              CUDA_R_32F, in, ct, CUBLAS_GEMM_DEFAULT));
    if (db) return tbert_cuda_colsum_acc(db, dy, dt, rows, out, ws, s);
    return 0;
}
