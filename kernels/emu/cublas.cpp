// tbert's emulated CUDA device: the cuBLAS subset tbert calls, implemented literally from cuBLAS's documentation
// (never through a host BLAS: the CPU backend uses OpenBLAS, and comparing OpenBLAS with itself would never catch
// a wrong OP_T, leading dimension or stride in kernels/gemm.cu or kernels/attention.cu).
//
//   C[i + j*ldc] = alpha * sum_l opA(i, l) * opB(l, j) + beta * C[i + j*ldc]      (column-major, 0 <= i < m, j < n)
//   opA(i, l) = A[i + l*lda] (OP_N) or A[l + i*lda] (OP_T, OP_C: real data)
//   opB(l, j) = B[l + j*ldb] (OP_N) or B[j + l*ldb] (OP_T, OP_C)
//
// Checks, as cuBLAS makes them (CUBLAS_STATUS_INVALID_VALUE): m, n, k, batchCount >= 0; lda >= max(1, rows of
// the stored A) (m for OP_N, k for OP_T), ldb likewise (k or n), ldc >= max(1, m); alpha, beta not NULL. Type
// combinations outside the list in cublas_v2.h: CUBLAS_STATUS_NOT_SUPPORTED. And what a GPU would only show as an
// illegal address: every operand's extent (from its first to the last element the product touches, per batch)
// must lie inside one live cudaMalloc block, checked at the call and again when the work runs (use after free);
// outside is a sticky fault (tbert_emu_fault, cudaErrorIllegalAddress).
//
// Arithmetic: inputs are loaded as float (bf16 exactly; with CUBLAS_COMPUTE_32F_FAST_TF32, or CUBLAS_COMPUTE_32F
// on a handle in CUBLAS_TF32_TENSOR_OP_MATH, rounded to tf32: 10 mantissa bits, round to nearest even), products
// are summed in double (two partial sums over even and odd l, a fixed order), then alpha * sum + beta * C is rounded once to
// float (and to bf16, nearest even, for a bf16 C). beta == 0 means C is not read, so NaN poison in C does not propagate.

#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <string>
#include <vector>

// (after the standard headers: the device half defines CUDA qualifier macros such as __noinline__)
#include "cublas_v2.h"
#include "cuda_bf16.h"

struct cublasContext {
    cudaStream_t stream = nullptr;
    cublasMath_t mode = CUBLAS_DEFAULT_MATH;
};

namespace {

struct Handles {
    std::mutex mu;
    std::set<cublasContext *> live;
};

Handles &H() {
    static Handles *h = new Handles; // never destroyed (see host.cpp)
    return *h;
}

bool valid(cublasHandle_t h) {
    Handles &hs = H();
    std::lock_guard<std::mutex> g(hs.mu);
    return h && hs.live.count(h);
}

// float -> tf32 (kept in a float): 10 mantissa bits, round to nearest even; inf and NaN unchanged.
float to_tf32(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    if ((u & 0x7f800000u) == 0x7f800000u) return f;
    u += 0xfffu + ((u >> 13) & 1u);
    u &= 0xffffe000u;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

size_t type_size(cudaDataType t) { return t == CUDA_R_16BF ? 2 : 4; }

struct Gemm {
    const char *fn;
    cublasOperation_t ta, tb;
    int m, n, k;
    float alpha, beta;
    const void *A, *B;
    void *C;
    cudaDataType at, ct; // A and B share a type
    int lda, ldb, ldc;
    long long sA, sB, sC;
    int batch;
    bool tf32;
};

// Bytes from an operand's first element to just past the last one touched: a stored rows x cols matrix.
size_t extent_bytes(int rows, int cols, int ld, size_t es) {
    if (rows == 0 || cols == 0) return 0;
    return ((size_t)(cols - 1) * (size_t)ld + (size_t)rows) * es;
}

// "" when every batch's operands lie inside live device blocks; else what is wrong.
std::string check_extents(const Gemm &g) {
    struct Op {
        const char *name;
        const void *p;
        int rows, cols, ld;
        long long stride;
        size_t es;
        bool used;
    } ops[3] = {
        {"A", g.A, g.ta == CUBLAS_OP_N ? g.m : g.k, g.ta == CUBLAS_OP_N ? g.k : g.m, g.lda, g.sA, type_size(g.at), g.k > 0},
        {"B", g.B, g.tb == CUBLAS_OP_N ? g.k : g.n, g.tb == CUBLAS_OP_N ? g.n : g.k, g.ldb, g.sB, type_size(g.at), g.k > 0},
        {"C", g.C, g.m, g.n, g.ldc, g.sC, type_size(g.ct), true},
    };
    char buf[512];
    for (const Op &o : ops) {
        if (!o.used) continue;
        size_t bytes = extent_bytes(o.rows, o.cols, o.ld, o.es);
        if (bytes == 0) continue;
        for (int b = 0; b < g.batch; b++) {
            const char *p = (const char *)o.p + (ptrdiff_t)((long long)b * o.stride * (long long)o.es);
            const void *base = nullptr;
            size_t size = 0;
            int dev = 0;
            if (tbert_emu_find_allocation(p, bytes, &base, &size, &dev) && dev) continue;
            std::string where;
            if (tbert_emu_is_freed(p)) where = "it lies in a block freed by cudaFree (use after free)";
            else if (tbert_emu_find_allocation(p, 0, &base, &size, &dev) && dev)
                std::snprintf(buf, sizeof buf, "it runs %zu bytes past the end of the %zu-byte device block at %p",
                              (size_t)((const char *)p - (const char *)base) + bytes - size, size, base),
                    where = buf;
            else if (tbert_emu_find_allocation(p, 0, &base, &size, &dev))
                where = "it is pinned host memory, not device memory";
            else where = "it is not inside any device allocation";
            std::snprintf(buf, sizeof buf,
                          "operand %s of batch %d: [%p, +%zu bytes) (%d x %d stored, ld %d, stride %lld): %s", o.name,
                          b, (const void *)p, bytes, o.rows, o.cols, o.ld, o.stride, where.c_str());
            return buf;
        }
    }
    return "";
}

float load(const void *p, cudaDataType t, size_t i, bool tf32) {
    float v = t == CUDA_R_16BF ? tbert_emu_bf16_bits_to_f32(((const unsigned short *)p)[i]) : ((const float *)p)[i];
    return tf32 ? to_tf32(v) : v;
}

// out[r][c] = sum over l of x_r[l] y_c[l] for two rows x_0, x_1 of op(A) and four rows y_0..y_3 of op(B) (each
// row loaded once for all the products it is in): two partial sums per product (even and odd l, the two lanes of a
// v2d), always combined in the same order. Not instrumented by the sanitizers: it reads only the emulator's own
// gathered rows (the reads of device memory, in compute(), are), and it is where an emulated GEMM spends its time.
typedef double v2d __attribute__((vector_size(16)));

__attribute__((no_sanitize("address", "undefined"))) void dot2x4(const double *const x[2], const double *const y[4],
                                                                  int k, double out[2][4]) {
    const double *x0 = x[0], *x1 = x[1], *y0 = y[0], *y1 = y[1], *y2 = y[2], *y3 = y[3];
    v2d s00 = {0, 0}, s01 = {0, 0}, s02 = {0, 0}, s03 = {0, 0}, s10 = {0, 0}, s11 = {0, 0}, s12 = {0, 0}, s13 = {0, 0};
    int l = 0;
    for (; l + 2 <= k; l += 2) {
        const v2d u0 = {x0[l], x0[l + 1]}, u1 = {x1[l], x1[l + 1]};
        const v2d w0 = {y0[l], y0[l + 1]}, w1 = {y1[l], y1[l + 1]}, w2 = {y2[l], y2[l + 1]}, w3 = {y3[l], y3[l + 1]};
        s00 += u0 * w0, s01 += u0 * w1, s02 += u0 * w2, s03 += u0 * w3;
        s10 += u1 * w0, s11 += u1 * w1, s12 += u1 * w2, s13 += u1 * w3;
    }
    if (l < k) {
        s00[0] += x0[l] * y0[l], s01[0] += x0[l] * y1[l], s02[0] += x0[l] * y2[l], s03[0] += x0[l] * y3[l];
        s10[0] += x1[l] * y0[l], s11[0] += x1[l] * y1[l], s12[0] += x1[l] * y2[l], s13[0] += x1[l] * y3[l];
    }
    out[0][0] = s00[0] + s00[1], out[0][1] = s01[0] + s01[1], out[0][2] = s02[0] + s02[1], out[0][3] = s03[0] + s03[1];
    out[1][0] = s10[0] + s10[1], out[1][1] = s11[0] + s11[1], out[1][2] = s12[0] + s12[1], out[1][3] = s13[0] + s13[1];
}

// Per batch: op(A) gathered into m x k rows and op(B) into n x k rows, as doubles (each element read once, by the
// index formula at the top of this file), then every C(i, j) is a dot product of two rows (dot2x4).
void compute(const Gemm &g) {
    std::vector<double> a((size_t)g.m * g.k), b((size_t)g.n * g.k);
    for (int bt = 0; bt < g.batch; bt++) {
        const char *A = (const char *)g.A + (ptrdiff_t)((long long)bt * g.sA * (long long)type_size(g.at));
        const char *B = (const char *)g.B + (ptrdiff_t)((long long)bt * g.sB * (long long)type_size(g.at));
        char *C = (char *)g.C + (ptrdiff_t)((long long)bt * g.sC * (long long)type_size(g.ct));
        for (int i = 0; i < g.m; i++)
            for (int l = 0; l < g.k; l++)
                a[(size_t)i * g.k + l] = load(A, g.at, g.ta == CUBLAS_OP_N ? (size_t)i + (size_t)l * g.lda : (size_t)l + (size_t)i * g.lda, g.tf32);
        for (int j = 0; j < g.n; j++)
            for (int l = 0; l < g.k; l++)
                b[(size_t)j * g.k + l] = load(B, g.at, g.tb == CUBLAS_OP_N ? (size_t)l + (size_t)j * g.ldb : (size_t)j + (size_t)l * g.ldb, g.tf32);
        // blocks of 2 rows x 4 columns of C; a short last block repeats a row / a column and drops the copies
        for (int j0 = 0; j0 < g.n; j0 += 4) {
            const double *y[4];
            for (int c = 0; c < 4; c++) y[c] = b.data() + (size_t)(j0 + c < g.n ? j0 + c : j0) * g.k;
            for (int i0 = 0; i0 < g.m; i0 += 2) {
                const double *x[2] = {a.data() + (size_t)i0 * g.k, a.data() + (size_t)(i0 + 1 < g.m ? i0 + 1 : i0) * g.k};
                double sum[2][4];
                dot2x4(x, y, g.k, sum);
                for (int r = 0; r < 2 && i0 + r < g.m; r++)
                    for (int c = 0; c < 4 && j0 + c < g.n; c++) {
                        size_t ic = (size_t)(i0 + r) + (size_t)(j0 + c) * g.ldc;
                        double v = (double)g.alpha * sum[r][c];
                        if (g.beta != 0.0f) v += (double)g.beta * (double)load(C, g.ct, ic, false);
                        float f = (float)v;
                        if (g.ct == CUDA_R_16BF) ((unsigned short *)C)[ic] = tbert_emu_f32_to_bf16_bits(f);
                        else ((float *)C)[ic] = f;
                    }
            }
        }
    }
}

// TBERT_EMU_PROFILE=1: calls, GFLOP and seconds per cuBLAS function, printed to stderr at exit next to the
// execution half's kernel table.
struct ProfileRow {
    const char *fn;
    uint64_t calls;
    double flop, seconds;
};
struct Profile {
    std::mutex mu;
    std::vector<ProfileRow> rows;
};
Profile &profile() {
    static Profile *p = new Profile;
    return *p;
}
void print_profile() {
    Profile &p = profile();
    std::lock_guard<std::mutex> g(p.mu);
    for (const ProfileRow &r : p.rows)
        std::fprintf(stderr, "tbert-emu profile: %-44s %8" PRIu64 " calls %10.3f GFLOP %9.3f s\n", r.fn, r.calls,
                     r.flop * 1e-9, r.seconds);
}
bool profiling() {
    const char *e = std::getenv("TBERT_EMU_PROFILE");
    return e && std::strcmp(e, "1") == 0;
}
void add_profile(const char *fn, double flop, double seconds) {
    Profile &p = profile();
    std::lock_guard<std::mutex> g(p.mu);
    if (p.rows.empty()) std::atexit(print_profile);
    for (ProfileRow &r : p.rows)
        if (std::strcmp(r.fn, fn) == 0) {
            r.calls++, r.flop += flop, r.seconds += seconds;
            return;
        }
    p.rows.push_back(ProfileRow{fn, 1, flop, seconds});
}

void gemm_run(void *ctx) {
    Gemm *g = (Gemm *)ctx;
    std::string bad = check_extents(*g);
    if (!bad.empty()) {
        tbert_emu_fault(cudaErrorIllegalAddress, "%s (m %d, n %d, k %d, batch %d) when it ran: %s", g->fn, g->m, g->n,
                        g->k, g->batch, bad.c_str());
        return;
    }
    const bool prof = profiling();
    auto t0 = std::chrono::steady_clock::now();
    compute(*g);
    if (prof)
        add_profile(g->fn, 2.0 * g->m * g->n * (double)g->k * g->batch,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

void gemm_drop(void *ctx) { delete (Gemm *)ctx; }

bool op_ok(cublasOperation_t t) { return t == CUBLAS_OP_N || t == CUBLAS_OP_T || t == CUBLAS_OP_C; }

// A cublasOperation_t argument from C may hold any int: read its bytes (loading an out-of-range value as the enum
// is undefined in C++), and map values that are not operations to CUBLAS_OP_CONJG, which gemm rejects.
cublasOperation_t op_arg(const cublasOperation_t *p) {
    int v;
    std::memcpy(&v, p, sizeof v);
    return v == CUBLAS_OP_N || v == CUBLAS_OP_T || v == CUBLAS_OP_C ? (cublasOperation_t)v : CUBLAS_OP_CONJG;
}

cublasStatus_t submit(cublasHandle_t h, Gemm g, const void *alpha, const void *beta, cublasComputeType_t compute_type,
                      cublasGemmAlgo_t algo, cudaDataType bt) {
    if (!valid(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!op_ok(g.ta) || !op_ok(g.tb) || g.m < 0 || g.n < 0 || g.k < 0 || g.batch < 0 || !alpha || !beta)
        return CUBLAS_STATUS_INVALID_VALUE;
    int rows_a = g.ta == CUBLAS_OP_N ? g.m : g.k, rows_b = g.tb == CUBLAS_OP_N ? g.k : g.n;
    if (g.lda < (rows_a > 1 ? rows_a : 1) || g.ldb < (rows_b > 1 ? rows_b : 1) || g.ldc < (g.m > 1 ? g.m : 1))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (algo != CUBLAS_GEMM_DEFAULT && algo != CUBLAS_GEMM_DEFAULT_TENSOR_OP) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (g.at != bt) return CUBLAS_STATUS_NOT_SUPPORTED;
    bool types_ok = (g.at == CUDA_R_32F && g.ct == CUDA_R_32F) || (g.at == CUDA_R_16BF && (g.ct == CUDA_R_16BF || g.ct == CUDA_R_32F));
    if (!types_ok) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (compute_type == CUBLAS_COMPUTE_32F_FAST_TF32) {
        if (g.at != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
        g.tf32 = true;
    } else if (compute_type == CUBLAS_COMPUTE_32F) {
        g.tf32 = g.at == CUDA_R_32F && (h->mode & 0xf) == CUBLAS_TF32_TENSOR_OP_MATH;
    } else if (compute_type == CUBLAS_COMPUTE_32F_PEDANTIC) {
        g.tf32 = false;
    } else {
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    g.alpha = *(const float *)alpha;
    g.beta = *(const float *)beta;
    if (g.m == 0 || g.n == 0 || g.batch == 0) return CUBLAS_STATUS_SUCCESS;
    std::string bad = check_extents(g);
    if (!bad.empty()) {
        tbert_emu_fault(cudaErrorIllegalAddress, "%s (m %d, n %d, k %d, batch %d): %s", g.fn, g.m, g.n, g.k, g.batch,
                        bad.c_str());
        return CUBLAS_STATUS_EXECUTION_FAILED;
    }
    Gemm *job = new Gemm(g);
    char what[96];
    std::snprintf(what, sizeof what, "%s (m %d, n %d, k %d, batch %d)", g.fn, g.m, g.n, g.k, g.batch);
    if (tbert_emu_enqueue(h->stream, gemm_run, job, gemm_drop, what) != cudaSuccess) return CUBLAS_STATUS_EXECUTION_FAILED;
    return CUBLAS_STATUS_SUCCESS;
}

} // namespace

extern "C" cublasStatus_t cublasCreate(cublasHandle_t *handle) {
    if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
    cublasContext *c = new cublasContext;
    Handles &hs = H();
    std::lock_guard<std::mutex> g(hs.mu);
    hs.live.insert(c);
    *handle = c;
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasDestroy(cublasHandle_t handle) {
    Handles &hs = H();
    std::lock_guard<std::mutex> g(hs.mu);
    if (!handle || !hs.live.count(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    hs.live.erase(handle);
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
    if (!valid(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasGetStream(cublasHandle_t handle, cudaStream_t *stream) {
    if (!valid(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!stream) return CUBLAS_STATUS_INVALID_VALUE;
    *stream = handle->stream;
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
    if (!valid(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    int base = (int)mode & 0xf, flags = (int)mode & ~0xf;
    if (base > CUBLAS_TF32_TENSOR_OP_MATH || (flags & ~CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION))
        return CUBLAS_STATUS_INVALID_VALUE;
    handle->mode = mode;
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasGetMathMode(cublasHandle_t handle, cublasMath_t *mode) {
    if (!valid(handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
    *mode = handle->mode;
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" const char *cublasGetStatusName(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

// cuBLAS 12's texts.
extern "C" const char *cublasGetStatusString(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "the operation completed successfully";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "an absent device architectural feature is required";
    case CUBLAS_STATUS_MAPPING_ERROR: return "an access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    case CUBLAS_STATUS_LICENSE_ERROR: return "error detected trying to check the license";
    }
    return "unknown error";
}

extern "C" cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m,
                                      int n, int k, const float *alpha, const float *A, int lda, const float *B,
                                      int ldb, const float *beta, float *C, int ldc) {
    Gemm g{"cublasSgemm", op_arg(&transa), op_arg(&transb), m, n, k, 0.0f, 0.0f, A, B, C, CUDA_R_32F, CUDA_R_32F, lda, ldb, ldc,
           0, 0, 0, 1, false};
    return submit(handle, g, alpha, beta, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT, CUDA_R_32F);
}

extern "C" cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m,
                                       int n, int k, const void *alpha, const void *A, cudaDataType Atype, int lda,
                                       const void *B, cudaDataType Btype, int ldb, const void *beta, void *C,
                                       cudaDataType Ctype, int ldc, cublasComputeType_t computeType,
                                       cublasGemmAlgo_t algo) {
    Gemm g{"cublasGemmEx", op_arg(&transa), op_arg(&transb), m, n, k, 0.0f, 0.0f, A, B, C, Atype, Ctype, lda, ldb, ldc, 0, 0, 0, 1, false};
    return submit(handle, g, alpha, beta, computeType, algo, Btype);
}

extern "C" cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa,
                                                     cublasOperation_t transb, int m, int n, int k, const void *alpha,
                                                     const void *A, cudaDataType Atype, int lda, long long int strideA,
                                                     const void *B, cudaDataType Btype, int ldb, long long int strideB,
                                                     const void *beta, void *C, cudaDataType Ctype, int ldc,
                                                     long long int strideC, int batchCount,
                                                     cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
    Gemm g{"cublasGemmStridedBatchedEx", op_arg(&transa), op_arg(&transb), m, n, k, 0.0f, 0.0f, A, B, C, Atype, Ctype, lda, ldb, ldc,
           strideA, strideB, strideC, batchCount, false};
    return submit(handle, g, alpha, beta, computeType, algo, Btype);
}
