// Classifier head on CUDA: bias + GELU forward, fused logits + loss + loss gradient, GELU backward, bias-gradient
// reductions, AdamW update, the two backward matrix products (cuBLAS), and the sparse-rows products (dense block
// through cuBLAS with W's row stride, CSR part forward, CSC scatter of dW: src/head_cuda.c). Semantics:
// include/tbert/head.h and src/head.c / src/adam.c, which compute the per-element math in double where these
// kernels do too; the reductions run in the CPU's order so that they match it bit for bit.
#include <math.h>

#include "elementwise.cuh"

namespace {

__device__ __forceinline__ double gelu_d(double a) { return 0.5 * a * (1.0 + erf(a * 0.70710678118654752440)); }
__device__ __forceinline__ double gelu_grad_d(double a) {
    return 0.5 * (1.0 + erf(a * 0.70710678118654752440)) + a * exp(-0.5 * a * a) / sqrt(2.0 * 3.14159265358979323846);
}

__global__ void head_bias_gelu_kernel(float *a, float *h, const float *b1, size_t n, int cols) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float v = __fadd_rn(a[i], b1[i % (size_t)cols]);
        a[i] = v;
        h[i] = (float)gelu_d((double)v);
    }
}

__global__ void gelu_backward_kernel(float *da, const float *dh, const float *a, const float *mask, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        double g = dh[i];
        if (mask) g = g * (double)mask[i];
        da[i] = (float)(g * gelu_grad_d((double)a[i]));
    }
}

__global__ void mul_kernel(float *x, const float *mask, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = __fmul_rn(x[i], mask[i]);
}

__device__ __forceinline__ double sigmoid_d(double z) {
    return z >= 0 ? 1.0 / (1.0 + exp(-z)) : exp(z) / (1.0 + exp(z));
}

__global__ void logits_loss_kernel(float *z, float *dz, double *row_loss, const float *b2, const int32_t *y,
                                   const float *class_weight, int binary, int positive, int n, int O, int C) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float *zi = z + (size_t)i * O;
    for (int k = 0; k < O; k++) zi[k] = __fadd_rn(zi[k], b2[k]);
    const int yi = y[i];
    if (yi < 0 || yi >= C) {
        row_loss[i] = nan("");
        if (dz)
            for (int k = 0; k < O; k++) dz[(size_t)i * O + k] = nanf("");
        return;
    }
    const double w = class_weight ? (double)class_weight[yi] : 1.0;
    if (binary) {
        const double zz = zi[0], t = yi == positive ? 1.0 : 0.0;
        row_loss[i] = w * (fmax(zz, 0.0) - zz * t + log1p(exp(-fabs(zz))));
        if (dz) dz[i] = (float)(w * (sigmoid_d(zz) - t) / n);
    } else {
        double mx = zi[0];
        for (int k = 1; k < O; k++) mx = fmax(mx, (double)zi[k]);
        double se = 0.0;
        for (int k = 0; k < O; k++) se += exp((double)zi[k] - mx);
        const double lse = mx + log(se);
        row_loss[i] = w * (lse - (double)zi[yi]);
        if (dz)
            for (int k = 0; k < O; k++) {
                const double p = exp((double)zi[k] - lse) - (k == yi ? 1.0 : 0.0);
                dz[(size_t)i * O + k] = (float)(w * p / n);
            }
    }
}

// One thread: the CPU's left-to-right order (n is a batch; eval sets of 1e5 rows take well under a millisecond).
__global__ void sum_f64_kernel(double *sum, const double *v, int n) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double s = 0.0;
    for (int i = 0; i < n; i++) s += v[i];
    *sum = s;
}

// Thread per column, rows in order: coalesced across columns, and the CPU's summation order.
__global__ void bias_grad_kernel(float *db, const float *dy, int rows, int cols) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    double s = 0.0;
    for (int r = 0; r < rows; r++) s += dy[(size_t)r * cols + c];
    db[c] = (float)s;
}

__global__ void adamw_kernel(float *p, float *m, float *v, const float *g, size_t n, float w1, float b2, float w2,
                             float eps, float decay, float step_size, float bc2_sqrt) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float gi = g[i];
        const float pi = decay != 1.0f ? __fmul_rn(p[i], decay) : p[i];
        const float mi = __fadd_rn(m[i], __fmul_rn(w1, __fsub_rn(gi, m[i])));
        const float vi = __fadd_rn(__fmul_rn(v[i], b2), __fmul_rn(__fmul_rn(w2, gi), gi));
        const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2_sqrt), eps);
        p[i] = __fsub_rn(pi, __fmul_rn(step_size, __fdiv_rn(mi, denom)));
        m[i] = mi;
        v[i] = vi;
    }
}


// ---- sparse rows (dense block + CSR): the CSR part of y = x W^T and of dW = dy^T x ----
// W keeps the dense layout (out x in, row stride ldw = in); the callers pass W + dense_dim, so column j of the
// sparse space is W[o * ldw + j].

// y[i, o] (+)= (float) sum over row i's entries e, in entry order, of (double)val[e] * W[o, idx[e]]: the CPU's
// rows_linear_forward (src/head.c) sum, in double and in its order (each product of two floats is exact in double,
// so a contracted FMA gives the same bits). One thread per (row, output), outputs fastest. accumulate = 0 writes
// y (the batch has no dense block), 1 adds to what the dense GEMM wrote.
__global__ void csr_linear_kernel(float *y, const int32_t *indptr, const int32_t *idx, const float *val,
                                  const float *W, size_t ldw, int n, int out, int accumulate) {
    const size_t total = (size_t)n * out;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total; t += (size_t)gridDim.x * blockDim.x) {
        const int i = (int)(t / (size_t)out), o = (int)(t % (size_t)out);
        const float *w = W + (size_t)o * ldw;
        double s = 0.0;
        for (int32_t e = indptr[i]; e < indptr[i + 1]; e++) s += (double)val[e] * (double)w[idx[e]];
        y[t] = accumulate ? __fadd_rn(y[t], (float)s) : (float)s;
    }
}

// dW[o, cols[u]] = sum over column u's entries e (in row order) of dy[rows[e], o] * vals[e], in float with every
// operation rounded alone: the CPU's scatter-add (rows_linear_backward_params) in its order, so the bits match.
// The batch's CSC (colptr, cols, rows, vals; built on the host) gives each present column to one thread per
// output: no atomics, deterministic. Columns not present are not written (the caller zeroed dW).
__global__ void csc_scatter_dw_kernel(float *dW, size_t ldw, const int32_t *colptr, const int32_t *cols,
                                      const int32_t *rows, const float *vals, const float *dy, int U, int out) {
    const size_t total = (size_t)U * out;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total; t += (size_t)gridDim.x * blockDim.x) {
        const int u = (int)(t / (size_t)out), o = (int)(t % (size_t)out);
        float s = 0.0f;
        for (int32_t e = colptr[u]; e < colptr[u + 1]; e++)
            s = __fadd_rn(s, __fmul_rn(dy[(size_t)rows[e] * out + o], vals[e]));
        dW[(size_t)o * ldw + (size_t)cols[u]] = s;
    }
}

} // namespace

extern "C" int tbert_cuda_gemm_dw(tbert_cublas_handle h, float *dW, const float *dy, const float *x, int n, int in,
                                  int out) {
    SHAPE_CHECK(h && dW && dy && x && n > 0 && in > 0 && out > 0);
    const float one = 1.0f, zero = 0.0f;
    // column-major: dW^T (in x out) = x^T (in x n) * dy (n x out)
    CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_T, in, out, n, &one, x, in, dy, out, &zero, dW, in));
    return 0;
}

extern "C" int tbert_cuda_gemm_dx(tbert_cublas_handle h, float *dx, const float *dy, const float *W, int n, int in,
                                  int out) {
    SHAPE_CHECK(h && dx && dy && W && n > 0 && in > 0 && out > 0);
    const float one = 1.0f, zero = 0.0f;
    // column-major: dx^T (in x n) = W^T (in x out) * dy^T (out x n)
    CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, in, n, out, &one, W, in, dy, out, &zero, dx, in));
    return 0;
}

extern "C" int tbert_cuda_head_bias_gelu(float *a, float *hout, const float *b1, int rows, int cols, cudaStream_t s) {
    SHAPE_CHECK(a && hout && b1 && rows >= 0 && cols > 0);
    const size_t n = (size_t)rows * cols;
    if (n == 0) return 0;
    TBERT_LAUNCH(head_bias_gelu_kernel, tbert::elt_grid(n), tbert::kEltBlock, 0, s, a, hout, b1, n, cols);
    LAUNCH_CHECK(s);
    return 0;
}

extern "C" int tbert_cuda_gelu_backward(float *da, const float *dh, const float *a, const float *mask, size_t n,
                                        cudaStream_t s) {
    SHAPE_CHECK(da && dh && a);
    if (n == 0) return 0;
    TBERT_LAUNCH(gelu_backward_kernel, tbert::elt_grid(n), tbert::kEltBlock, 0, s, da, dh, a, mask, n);
    LAUNCH_CHECK(s);
    return 0;
}

extern "C" int tbert_cuda_mul(float *x, const float *mask, size_t n, cudaStream_t s) {
    SHAPE_CHECK(x && mask);
    if (n == 0) return 0;
    TBERT_LAUNCH(mul_kernel, tbert::elt_grid(n), tbert::kEltBlock, 0, s, x, mask, n);
    LAUNCH_CHECK(s);
    return 0;
}

extern "C" int tbert_cuda_head_logits_loss(float *z, float *dz, double *row_loss, const float *b2, const int32_t *y,
                                           const float *class_weight, int binary, int positive, int n, int out,
                                           int n_classes, cudaStream_t s) {
    SHAPE_CHECK(z && row_loss && b2 && y && n >= 0 && out > 0 && n_classes >= 2);
    SHAPE_CHECK(binary ? (out == 1 && n_classes == 2 && positive >= 0 && positive < 2) : out == n_classes);
    if (n == 0) return 0;
    const int block = 128;
    TBERT_LAUNCH(logits_loss_kernel, TBERT_CEIL_DIV(n, block), block, 0, s, z, dz, row_loss, b2, y, class_weight,
                 binary, positive, n, out, n_classes);
    LAUNCH_CHECK(s);
    return 0;
}

extern "C" int tbert_cuda_sum_f64(double *sum, const double *v, int n, cudaStream_t s) {
    SHAPE_CHECK(sum && v && n >= 0);
    TBERT_LAUNCH(sum_f64_kernel, 1, 32, 0, s, sum, v, n);
    LAUNCH_CHECK(s);
    return 0;
}

extern "C" int tbert_cuda_bias_grad(float *db, const float *dy, int rows, int cols, cudaStream_t s) {
    SHAPE_CHECK(db && dy && rows >= 0 && cols > 0);
    const int block = 128;
    TBERT_LAUNCH(bias_grad_kernel, TBERT_CEIL_DIV(cols, block), block, 0, s, db, dy, rows, cols);
    LAUNCH_CHECK(s);
    return 0;
}

extern "C" int tbert_cuda_adamw(float *p, float *m, float *v, const float *g, size_t n, float w1, float b2, float w2,
                                float eps, float decay, float step_size, float bc2_sqrt, cudaStream_t s) {
    SHAPE_CHECK(p && m && v && g && bc2_sqrt > 0.0f);
    if (n == 0) return 0;
    TBERT_LAUNCH(adamw_kernel, tbert::elt_grid(n), tbert::kEltBlock, 0, s, p, m, v, g, n, w1, b2, w2, eps, decay,
                 step_size, bc2_sqrt);
    LAUNCH_CHECK(s);
    return 0;
}

extern "C" int tbert_cuda_gemm_rows_fwd(tbert_cublas_handle h, float *y, const float *xd, const float *W, int n, int dd,
                                        int in, int out) {
    SHAPE_CHECK(h && y && xd && W && n > 0 && dd > 0 && in >= dd && out > 0);
    const float one = 1.0f, zero = 0.0f;
    // column-major: y^T (out x n) = op_T(W viewed as in x out, ld in: its first dd rows) * xd^T (dd x n, ld dd)
    CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, out, n, dd, &one, W, in, xd, dd, &zero, y, out));
    return 0;
}

extern "C" int tbert_cuda_gemm_rows_dw(tbert_cublas_handle h, float *dW, const float *dy, const float *xd, int n, int dd,
                                       int in, int out) {
    SHAPE_CHECK(h && dW && dy && xd && n > 0 && dd > 0 && in >= dd && out > 0);
    const float one = 1.0f, zero = 0.0f;
    // column-major: dW^T's first dd rows (dd x out, ld in) = xd^T (dd x n, ld dd) * dy (n x out)
    CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_T, dd, out, n, &one, xd, dd, dy, out, &zero, dW, in));
    return 0;
}

extern "C" int tbert_cuda_csr_linear(float *y, const int32_t *indptr, const int32_t *idx, const float *val,
                                     const float *W, size_t ldw, int n, int out, int accumulate, cudaStream_t s) {
    SHAPE_CHECK(y && indptr && idx && val && W && n >= 0 && out > 0 && ldw > 0);
    const size_t total = (size_t)n * out;
    if (total == 0) return 0;
    TBERT_LAUNCH(csr_linear_kernel, tbert::elt_grid(total), tbert::kEltBlock, 0, s, y, indptr, idx, val, W, ldw, n, out,
                 accumulate);
    LAUNCH_CHECK(s);
    return 0;
}

extern "C" int tbert_cuda_csc_scatter_dw(float *dW, size_t ldw, const int32_t *colptr, const int32_t *cols,
                                         const int32_t *rows, const float *vals, const float *dy, int U, int out,
                                         cudaStream_t s) {
    SHAPE_CHECK(dW && colptr && cols && rows && vals && dy && U >= 0 && out > 0 && ldw > 0);
    const size_t total = (size_t)U * out;
    if (total == 0) return 0;
    TBERT_LAUNCH(csc_scatter_dw_kernel, tbert::elt_grid(total), tbert::kEltBlock, 0, s, dW, ldw, colptr, cols, rows,
                 vals, dy, U, out);
    LAUNCH_CHECK(s);
    return 0;
}
