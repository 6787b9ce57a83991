/* The emulated cuBLAS (kernels/emu/cublas.cpp) against a naive column-major product written here from cuBLAS's
 * documentation: random ops, leading dimensions larger than the rows, strides with gaps, batch counts, alpha/beta,
 * float32 / tf32 / bf16. Unused entries (between rows and the leading dimension, between batches) hold NaN, so an
 * implementation that reads the wrong element gets NaN, and C's unused entries must come back untouched.
 * Then the checks: wrong leading dimensions (CUBLAS_STATUS_INVALID_VALUE), strides and extents past the
 * allocation and use after free (sticky cudaErrorIllegalAddress), the handle's stream, tf32 rounding.
 *
 * Tolerances (|got - ref| <= atol + rtol |ref|): float32 C, atol 1e-6 rtol 1e-6 (the emulator and the reference
 * both sum in double; only the final rounding differs); bf16 C, atol 1e-6 rtol 8e-3 (one bf16 ulp is 2^-8
 * relative). The seed is TBERT_TEST_SEED or 20261205, printed. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cublas_v2.h"
#include "cuda_bf16.h"
#include "cuda_runtime.h"

#define CK(call)                                                                                                 \
    do {                                                                                                         \
        cudaError_t e_ = (call);                                                                                 \
        if (e_ != cudaSuccess) fail_msg("%s: %s (%s:%d)", #call, cudaGetErrorName(e_), __FILE__, __LINE__);      \
    } while (0)
#define CB(call)                                                                                                 \
    do {                                                                                                         \
        cublasStatus_t s_ = (call);                                                                              \
        if (s_ != CUBLAS_STATUS_SUCCESS) fail_msg("%s: %s (%s:%d)", #call, cublasGetStatusName(s_), __FILE__, __LINE__); \
    } while (0)

/* ---- seeded RNG (splitmix64) ---- */
typedef struct {
    uint64_t s;
} rng;
static uint64_t next(rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static int below(rng *r, int n) { return (int)(next(r) % (uint64_t)n); }
static float uni(rng *r) { return (float)((double)(next(r) >> 11) / 9007199254740992.0 * 2.0 - 1.0); } /* [-1, 1) */

static uint64_t test_seed(void) {
    const char *e = getenv("TBERT_TEST_SEED");
    uint64_t s = e && *e ? strtoull(e, NULL, 10) : 20261205u;
    printf("test_emu_host_cublas: seed %llu (TBERT_TEST_SEED)\n", (unsigned long long)s);
    return s;
}

/* ---- the reference's own roundings (from the definitions, with frexp/rint: ties to even) ---- */
static double round_bits(double x, int bits) { /* keep `bits` significant bits */
    if (x == 0.0 || !isfinite(x)) return x;
    int e;
    double m = frexp(x, &e); /* x = m 2^e, 0.5 <= |m| < 1 */
    return ldexp(rint(ldexp(m, bits)), e - bits);
}
static double tf32_ref(float x) { return round_bits(x, 11); } /* 1 + 10 mantissa bits */
static float bf16_value(uint16_t b) {                          /* bits -> value, via the exponent fields */
    int exp = (b >> 7) & 0xff, man = b & 0x7f;
    double v = exp == 0 ? ldexp(man, -133) : ldexp(128 + man, exp - 134);
    return (float)((b & 0x8000) ? -v : v);
}

enum { F32, TF32, BF16_TO_BF16, BF16_TO_F32 };

typedef struct {
    int mode, api; /* api: 0 cublasSgemm, 1 cublasGemmEx, 2 cublasGemmStridedBatchedEx */
    cublasOperation_t ta, tb;
    int m, n, k, lda, ldb, ldc, batch;
    long long sA, sB, sC;
    float alpha, beta;
} gcase;

static size_t extent(int rows, int cols, int ld) { return rows && cols ? (size_t)(cols - 1) * ld + rows : 0; }

/* Runs one case on the emulated device and against the reference; returns the number of mismatches. The data
 * are laid out as c says; the emulator is called with `call` (NULL: c), so a test can pass wrong arguments. */
static int run_case(cublasHandle_t h, const gcase *c, const gcase *call, rng *r, int verbose) {
    const gcase *k = call ? call : c;
    int ra = c->ta == CUBLAS_OP_N ? c->m : c->k, ca = c->ta == CUBLAS_OP_N ? c->k : c->m;
    int rb = c->tb == CUBLAS_OP_N ? c->k : c->n, cb = c->tb == CUBLAS_OP_N ? c->n : c->k;
    size_t nA = (size_t)c->sA * (c->batch - 1) + extent(ra, ca, c->lda);
    size_t nB = (size_t)c->sB * (c->batch - 1) + extent(rb, cb, c->ldb);
    size_t nC = (size_t)c->sC * (c->batch - 1) + extent(c->m, c->n, c->ldc);
    int in_bf16 = c->mode == BF16_TO_BF16 || c->mode == BF16_TO_F32, out_bf16 = c->mode == BF16_TO_BF16;
    size_t ein = in_bf16 ? 2 : 4, eout = out_bf16 ? 2 : 4;
    /* host images: NaN everywhere, values at the entries the product uses */
    double *vA = malloc(nA * sizeof(double)), *vB = malloc(nB * sizeof(double)), *vC = malloc(nC * sizeof(double));
    unsigned char *hA = malloc(nA * ein), *hB = malloc(nB * ein), *hC = malloc(nC * eout), *got = malloc(nC * eout);
    assert_true(vA && vB && vC && hA && hB && hC && got);
    memset(hA, 0xff, nA * ein), memset(hB, 0xff, nB * ein), memset(hC, 0xff, nC * eout);
    struct {
        double *v;
        unsigned char *h;
        int rows, cols, ld;
        long long stride;
        size_t es;
    } ops[3] = {{vA, hA, ra, ca, c->lda, c->sA, ein}, {vB, hB, rb, cb, c->ldb, c->sB, ein},
                {vC, hC, c->m, c->n, c->ldc, c->sC, eout}};
    for (int o = 0; o < 3; o++) {
        if (o == 2 && c->beta == 0.0f) continue; /* C stays NaN: it must not be read */
        for (int b = 0; b < c->batch; b++)
            for (int col = 0; col < ops[o].cols; col++)
                for (int row = 0; row < ops[o].rows; row++) {
                    size_t at = (size_t)b * ops[o].stride + (size_t)col * ops[o].ld + row;
                    float x = uni(r);
                    if (ops[o].es == 2) {
                        uint16_t bits = (uint16_t)(tbert_emu_f32_to_bf16_bits(x));
                        memcpy(ops[o].h + at * 2, &bits, 2);
                        ops[o].v[at] = bf16_value(bits);
                    } else {
                        memcpy(ops[o].h + at * 4, &x, 4);
                        ops[o].v[at] = x;
                    }
                }
    }
    void *dA, *dB, *dC;
    CK(cudaMalloc(&dA, nA * ein));
    CK(cudaMalloc(&dB, nB * ein));
    CK(cudaMalloc(&dC, nC * eout));
    CK(cudaMemcpy(dA, hA, nA * ein, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dB, hB, nB * ein, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dC, hC, nC * eout, cudaMemcpyHostToDevice));
    cudaDataType tin = in_bf16 ? CUDA_R_16BF : CUDA_R_32F, tout = out_bf16 ? CUDA_R_16BF : CUDA_R_32F;
    cublasComputeType_t ct = k->mode == TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    if (k->api == 0)
        CB(cublasSgemm(h, k->ta, k->tb, k->m, k->n, k->k, &k->alpha, dA, k->lda, dB, k->ldb, &k->beta, dC, k->ldc));
    else if (k->api == 1)
        CB(cublasGemmEx(h, k->ta, k->tb, k->m, k->n, k->k, &k->alpha, dA, tin, k->lda, dB, tin, k->ldb, &k->beta, dC,
                        tout, k->ldc, ct, CUBLAS_GEMM_DEFAULT));
    else
        CB(cublasGemmStridedBatchedEx(h, k->ta, k->tb, k->m, k->n, k->k, &k->alpha, dA, tin, k->lda, k->sA, dB, tin,
                                      k->ldb, k->sB, &k->beta, dC, tout, k->ldc, k->sC, k->batch, ct,
                                      CUBLAS_GEMM_DEFAULT_TENSOR_OP));
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(got, dC, nC * eout, cudaMemcpyDeviceToHost));
    int bad = 0;
    double atol = 1e-6, rtol = out_bf16 ? 8e-3 : 1e-6;
    /* every C entry: inside the product -> the reference value; outside -> untouched bytes */
    unsigned char *touched = calloc(nC, 1);
    assert_non_null(touched);
    for (int b = 0; b < c->batch; b++)
        for (int j = 0; j < c->n; j++)
            for (int i = 0; i < c->m; i++) {
                double sum = 0.0;
                for (int l = 0; l < c->k; l++) {
                    /* op(A)(i, l): stored A is ra x ca; OP_T reads stored (l, i) */
                    size_t ia = (size_t)b * c->sA + (c->ta == CUBLAS_OP_N ? (size_t)l * c->lda + i : (size_t)i * c->lda + l);
                    size_t ib = (size_t)b * c->sB + (c->tb == CUBLAS_OP_N ? (size_t)j * c->ldb + l : (size_t)l * c->ldb + j);
                    double a = vA[ia], bb = vB[ib];
                    if (c->mode == TF32) a = tf32_ref((float)a), bb = tf32_ref((float)bb);
                    sum += a * bb;
                }
                size_t ic = (size_t)b * c->sC + (size_t)j * c->ldc + i;
                double ref = c->alpha * sum + (c->beta != 0.0f ? c->beta * vC[ic] : 0.0);
                if (out_bf16) ref = round_bits(ref, 8);
                float g;
                if (out_bf16) {
                    uint16_t bits;
                    memcpy(&bits, got + ic * 2, 2);
                    g = bf16_value(bits);
                    if ((bits & 0x7f80) == 0x7f80) g = NAN;
                } else {
                    memcpy(&g, got + ic * 4, 4);
                }
                touched[ic] = 1;
                if (!(fabs(g - ref) <= atol + rtol * fabs(ref))) {
                    if (verbose && bad < 3)
                        printf("  batch %d C(%d,%d) = %.9g, reference %.9g\n", b, i, j, (double)g, ref);
                    bad++;
                }
            }
    for (size_t i = 0; i < nC; i++)
        if (!touched[i] && memcmp(got + i * eout, hC + i * eout, eout) != 0) {
            if (verbose && bad < 3) printf("  C element %zu outside the product was written\n", i);
            bad++;
        }
    free(touched);
    CK(cudaFree(dA));
    CK(cudaFree(dB));
    CK(cudaFree(dC));
    free(vA), free(vB), free(vC), free(hA), free(hB), free(hC), free(got);
    return bad;
}

static void random_case(gcase *c, rng *r) {
    memset(c, 0, sizeof *c);
    c->mode = below(r, 4);
    c->api = c->mode == F32 ? below(r, 3) : 1 + below(r, 2);
    c->ta = below(r, 2) ? CUBLAS_OP_T : CUBLAS_OP_N;
    c->tb = below(r, 2) ? CUBLAS_OP_T : CUBLAS_OP_N;
    c->m = 1 + below(r, 9), c->n = 1 + below(r, 9), c->k = below(r, 10) ? 1 + below(r, 17) : 0;
    int ra = c->ta == CUBLAS_OP_N ? c->m : c->k, rb = c->tb == CUBLAS_OP_N ? c->k : c->n;
    c->lda = (ra > 1 ? ra : 1) + below(r, 4);
    c->ldb = (rb > 1 ? rb : 1) + below(r, 4);
    c->ldc = c->m + below(r, 4);
    c->batch = c->api == 2 ? 1 + below(r, 4) : 1;
    int ca = c->ta == CUBLAS_OP_N ? c->k : c->m, cb = c->tb == CUBLAS_OP_N ? c->n : c->k;
    c->sA = (long long)extent(ra, ca, c->lda) + below(r, 6);
    c->sB = (long long)extent(rb, cb, c->ldb) + below(r, 6);
    c->sC = (long long)extent(c->m, c->n, c->ldc) + below(r, 6);
    static const float alphas[] = {1.0f, 0.5f, -2.0f}, betas[] = {0.0f, 1.0f, 0.25f};
    c->alpha = alphas[below(r, 3)];
    c->beta = betas[below(r, 3)];
}

static void test_random_products(void **state) {
    (void)state;
    rng r = {test_seed()};
    cublasHandle_t h;
    CB(cublasCreate(&h));
    int failed = 0;
    for (int t = 0; t < 300; t++) {
        gcase c;
        random_case(&c, &r);
        int bad = run_case(h, &c, NULL, &r, 1);
        if (bad) {
            printf("case %d FAILED (%d entries): mode %d api %d op %c%c m %d n %d k %d lda %d ldb %d ldc %d batch %d "
                   "strides %lld %lld %lld alpha %g beta %g\n",
                   t, bad, c.mode, c.api, c.ta ? 'T' : 'N', c.tb ? 'T' : 'N', c.m, c.n, c.k, c.lda, c.ldb, c.ldc,
                   c.batch, c.sA, c.sB, c.sC, (double)c.alpha, (double)c.beta);
            failed++;
        }
    }
    CB(cublasDestroy(h));
    assert_int_equal(failed, 0);
}

/* The comparison must fail when the emulator is given a wrong op, leading dimension, stride or beta whose extent
 * still fits the buffers (so only the values can tell). */
static void test_reference_catches_wrong_arguments(void **state) {
    (void)state;
    rng r = {7};
    cublasHandle_t h;
    CB(cublasCreate(&h));
    /* mode api ta tb m n k lda ldb ldc batch sA sB sC alpha beta */
    gcase sq = {F32, 1, CUBLAS_OP_N, CUBLAS_OP_N, 6, 6, 6, 8, 6, 6, 1, 0, 0, 0, 1.0f, 0.0f};
    assert_int_equal(run_case(h, &sq, NULL, &r, 0), 0);
    gcase w = sq;
    w.ta = CUBLAS_OP_T; /* transposed A */
    assert_int_not_equal(run_case(h, &sq, &w, &r, 0), 0);
    w = sq;
    w.lda = 7; /* lda one short: reads the NaN padding */
    assert_int_not_equal(run_case(h, &sq, &w, &r, 0), 0);
    w = sq;
    w.beta = 1.0f; /* reads C, which holds poison when beta is 0 */
    assert_int_not_equal(run_case(h, &sq, &w, &r, 0), 0);
    gcase b = {TF32, 2, CUBLAS_OP_T, CUBLAS_OP_N, 3, 4, 5, 5, 5, 3, 3, 20, 25, 14, 1.0f, 0.5f};
    assert_int_equal(run_case(h, &b, NULL, &r, 0), 0);
    w = b;
    w.sA = 15; /* stride too small: batches overlap */
    assert_int_not_equal(run_case(h, &b, &w, &r, 0), 0);
    w = b;
    w.mode = F32; /* tf32 expected, fp32 given: not within 1e-6 */
    assert_int_not_equal(run_case(h, &b, &w, &r, 0), 0);
    CB(cublasDestroy(h));
}

static void test_tf32_and_bf16_rounding(void **state) {
    (void)state;
    cublasHandle_t h;
    CB(cublasCreate(&h));
    /* A = [1 + 2^-12, 1 + 2^-11, 1 + 3 * 2^-11] (1 x 3 per column), B = 1: C = A */
    float hA[3] = {1.0f + 0x1p-12f, 1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f}, hB[1] = {1.0f}, out[3];
    float *dA, *dB, *dC;
    CK(cudaMalloc((void **)&dA, sizeof hA));
    CK(cudaMalloc((void **)&dB, sizeof hB));
    CK(cudaMalloc((void **)&dC, sizeof out));
    CK(cudaMemcpy(dA, hA, sizeof hA, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dB, hB, sizeof hB, cudaMemcpyHostToDevice));
    const float one = 1.0f, zero = 0.0f;
    /* C (3 x 1) = A (3 x 1) * B (1 x 1) */
    CB(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 3, 1, 1, &one, dA, CUDA_R_32F, 3, dB, CUDA_R_32F, 1, &zero, dC,
                    CUDA_R_32F, 3, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    CK(cudaMemcpy(out, dC, sizeof out, cudaMemcpyDeviceToHost));
    for (int i = 0; i < 3; i++) assert_true(out[i] == hA[i]); /* fp32: exact */
    CB(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 3, 1, 1, &one, dA, CUDA_R_32F, 3, dB, CUDA_R_32F, 1, &zero, dC,
                    CUDA_R_32F, 3, CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT));
    CK(cudaMemcpy(out, dC, sizeof out, cudaMemcpyDeviceToHost));
    assert_true(out[0] == 1.0f);                 /* below half an ulp (2^-10): down */
    assert_true(out[1] == 1.0f);                 /* tie: to even (1.0) */
    assert_true(out[2] == 1.0f + 0x1p-9f);       /* tie between 1 + 2^-10 (odd) and 1 + 2^-9 (even): up */
    /* the handle's TF32 math mode makes COMPUTE_32F and cublasSgemm use tf32; PEDANTIC never does */
    CB(cublasSetMathMode(h, CUBLAS_TF32_TENSOR_OP_MATH));
    cublasMath_t mm;
    CB(cublasGetMathMode(h, &mm));
    assert_int_equal(mm, CUBLAS_TF32_TENSOR_OP_MATH);
    CB(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 3, 1, 1, &one, dA, 3, dB, 1, &zero, dC, 3));
    CK(cudaMemcpy(out, dC, sizeof out, cudaMemcpyDeviceToHost));
    assert_true(out[0] == 1.0f);
    CB(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 3, 1, 1, &one, dA, CUDA_R_32F, 3, dB, CUDA_R_32F, 1, &zero, dC,
                    CUDA_R_32F, 3, CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_GEMM_DEFAULT));
    CK(cudaMemcpy(out, dC, sizeof out, cudaMemcpyDeviceToHost));
    assert_true(out[0] == hA[0]);
    CB(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH));
    /* bf16 output rounds to nearest even: 1 + 2^-8 is a tie between 1 and 1 + 2^-7 -> 1; 1 + 3 * 2^-8 -> 1 + 2^-6 */
    uint16_t hb[2] = {0x3f80, 0x3f80}, ob[2]; /* A = [1, 1], B = alpha... */
    uint16_t *db, *dcb;
    CK(cudaMalloc((void **)&db, sizeof hb));
    CK(cudaMalloc((void **)&dcb, sizeof ob));
    CK(cudaMemcpy(db, hb, sizeof hb, cudaMemcpyHostToDevice));
    const float a1 = 1.0f + 0x1p-8f, a2 = 1.0f + 3 * 0x1p-8f;
    CB(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, &a1, db, CUDA_R_16BF, 1, db + 1, CUDA_R_16BF, 1, &zero, dcb,
                    CUDA_R_16BF, 1, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    CB(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, &a2, db, CUDA_R_16BF, 1, db + 1, CUDA_R_16BF, 1, &zero,
                    dcb + 1, CUDA_R_16BF, 1, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    CK(cudaMemcpy(ob, dcb, sizeof ob, cudaMemcpyDeviceToHost));
    assert_int_equal(ob[0], 0x3f80);
    assert_int_equal(ob[1], 0x3f82);
    CK(cudaFree(dA));
    CK(cudaFree(dB));
    CK(cudaFree(dC));
    CK(cudaFree(db));
    CK(cudaFree(dcb));
    CB(cublasDestroy(h));
}

static void test_argument_checks(void **state) {
    (void)state;
    cublasHandle_t h;
    CB(cublasCreate(&h));
    float *d;
    CK(cudaMalloc((void **)&d, 4096));
    const float one = 1.0f, zero = 0.0f;
    /* lda below the stored rows: OP_N stores A as m x k, OP_T as k x m */
    assert_int_equal(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 3, 5, &one, d, 3, d, 5, &zero, d, 4), CUBLAS_STATUS_INVALID_VALUE);
    assert_int_equal(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, 4, 3, 5, &one, d, 4, d, 5, &zero, d, 4), CUBLAS_STATUS_INVALID_VALUE);
    CB(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, 4, 3, 5, &one, d, 5, d + 100, 5, &zero, d + 200, 4));
    assert_int_equal(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 3, 5, &one, d, 4, d, 4, &zero, d, 4), CUBLAS_STATUS_INVALID_VALUE);
    assert_int_equal(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_T, 4, 3, 5, &one, d, 4, d, 2, &zero, d, 4), CUBLAS_STATUS_INVALID_VALUE);
    assert_int_equal(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 3, 5, &one, d, 4, d, 5, &zero, d, 3), CUBLAS_STATUS_INVALID_VALUE);
    assert_int_equal(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, -1, 3, 5, &one, d, 4, d, 5, &zero, d, 4), CUBLAS_STATUS_INVALID_VALUE);
    assert_int_equal(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 3, 5, NULL, d, 4, d, 5, &zero, d, 4), CUBLAS_STATUS_INVALID_VALUE);
    assert_int_equal(cublasSgemm(h, (cublasOperation_t)7, CUBLAS_OP_N, 4, 3, 5, &one, d, 4, d, 5, &zero, d, 4), CUBLAS_STATUS_INVALID_VALUE);
    assert_int_equal(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 3, 5, &one, d, CUDA_R_32F, 4, d, CUDA_R_16BF, 5, &zero,
                                  d, CUDA_R_32F, 4, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_NOT_SUPPORTED);
    assert_int_equal(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 3, 5, &one, d, CUDA_R_16BF, 4, d, CUDA_R_16BF, 5, &zero,
                                  d, CUDA_R_16BF, 4, CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_NOT_SUPPORTED);
    assert_int_equal(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 3, 5, &one, d, CUDA_R_32F, 4, d, CUDA_R_32F, 5, &zero,
                                  d, CUDA_R_32F, 4, CUBLAS_COMPUTE_16F, CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_NOT_SUPPORTED);
    assert_int_equal(cublasGemmStridedBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 3, 5, &one, d, CUDA_R_32F, 4, 20, d,
                                                CUDA_R_32F, 5, 15, &zero, d, CUDA_R_32F, 4, 12, -1, CUBLAS_COMPUTE_32F,
                                                CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_INVALID_VALUE);
    /* nothing to do: m = 0, batch 0 */
    CB(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 0, 3, 5, &one, d, 1, d, 5, &zero, d, 1));
    assert_int_equal(tbert_emu_pending_work(), 1); /* only the valid product above */
    /* k = 0: C = beta C; with beta = 0 the poison in C is replaced by zeros */
    float *c0;
    CK(cudaMalloc((void **)&c0, 6 * sizeof(float)));
    CB(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 3, 0, &one, d, 2, d, 1, &zero, c0, 2));
    float out[6];
    CK(cudaMemcpy(out, c0, sizeof out, cudaMemcpyDeviceToHost));
    for (int i = 0; i < 6; i++) assert_true(out[i] == 0.0f);
    CK(cudaFree(c0));
    /* handles */
    cudaStream_t s = (cudaStream_t)0x1234;
    CB(cublasGetStream(h, &s));
    assert_null(s);
    CB(cublasDestroy(h));
    assert_int_equal(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 3, 5, &one, d, 4, d, 5, &zero, d, 4), CUBLAS_STATUS_NOT_INITIALIZED);
    assert_int_equal(cublasDestroy(h), CUBLAS_STATUS_NOT_INITIALIZED);
    assert_string_equal(cublasGetStatusName(CUBLAS_STATUS_INVALID_VALUE), "CUBLAS_STATUS_INVALID_VALUE");
    assert_non_null(strstr(cublasGetStatusString(CUBLAS_STATUS_ALLOC_FAILED), "allocation"));
    CK(cudaFree(d));
}

/* Extents past the allocation (a stride or leading dimension too big for the buffer), non-device operands and
 * use after free: sticky illegal-address faults, as the product's reads and writes would be on a GPU. */
static void test_extent_faults(void **state) {
    (void)state;
    cublasHandle_t h;
    CB(cublasCreate(&h));
    const float one = 1.0f, zero = 0.0f;
    float *A, *B, *C;
    /* batch 2 of 3x4 (A), 4x2 (B), 3x2 (C), packed */
    CK(cudaMalloc((void **)&A, 24 * sizeof(float)));
    CK(cudaMalloc((void **)&B, 16 * sizeof(float)));
    CK(cudaMalloc((void **)&C, 12 * sizeof(float)));
    CK(cudaMemset(A, 0, 24 * sizeof(float)));
    CK(cudaMemset(B, 0, 16 * sizeof(float)));
    CB(cublasGemmStridedBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 3, 2, 4, &one, A, CUDA_R_32F, 3, 12, B, CUDA_R_32F, 4, 8,
                                  &zero, C, CUDA_R_32F, 3, 6, 2, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    CK(cudaDeviceSynchronize());
    /* strideB one too big: batch 1's B runs 4 bytes past the end */
    assert_int_equal(cublasGemmStridedBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 3, 2, 4, &one, A, CUDA_R_32F, 3, 12, B,
                                                CUDA_R_32F, 4, 9, &zero, C, CUDA_R_32F, 3, 6, 2, CUBLAS_COMPUTE_32F,
                                                CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_EXECUTION_FAILED);
    assert_non_null(strstr(tbert_emu_last_fault(), "operand B of batch 1"));
    assert_non_null(strstr(tbert_emu_last_fault(), "4 bytes past the end"));
    assert_int_equal(cudaDeviceSynchronize(), cudaErrorIllegalAddress); /* sticky */
    tbert_emu_reset_faults();
    /* lda valid for the shape but too big for the buffer */
    assert_int_equal(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 3, 2, 4, &one, A + 12, 4, B, 4, &zero, C, 3),
                     CUBLAS_STATUS_EXECUTION_FAILED);
    assert_non_null(strstr(tbert_emu_last_fault(), "operand A of batch 0"));
    tbert_emu_reset_faults();
    /* ldc too big for C */
    assert_int_equal(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 3, 2, 4, &one, A, 3, B, 4, &zero, C + 6, 4),
                     CUBLAS_STATUS_EXECUTION_FAILED);
    assert_non_null(strstr(tbert_emu_last_fault(), "operand C"));
    tbert_emu_reset_faults();
    /* host memory as an operand */
    float host[16] = {0};
    assert_int_equal(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 3, 2, 4, &one, A, 3, host, 4, &zero, C, 3),
                     CUBLAS_STATUS_EXECUTION_FAILED);
    assert_non_null(strstr(tbert_emu_last_fault(), "not inside any device allocation"));
    tbert_emu_reset_faults();
    /* use after free: queued on the handle's stream, A freed before it runs */
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CB(cublasSetStream(h, s));
    CB(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 3, 2, 4, &one, A, 3, B, 4, &zero, C, 3));
    CK(cudaFree(A));
    assert_int_equal(cudaStreamSynchronize(s), cudaErrorIllegalAddress);
    assert_non_null(strstr(tbert_emu_last_fault(), "when it ran"));
    assert_non_null(strstr(tbert_emu_last_fault(), "use after free"));
    tbert_emu_reset_faults();
    CK(cudaStreamDestroy(s));
    CK(cudaFree(B));
    CK(cudaFree(C));
    CB(cublasDestroy(h));
}

/* Work runs on the handle's stream: read back without synchronizing it, the result is still poison. */
static void test_handle_stream(void **state) {
    (void)state;
    cublasHandle_t h;
    CB(cublasCreate(&h));
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CB(cublasSetStream(h, s));
    cudaStream_t got;
    CB(cublasGetStream(h, &got));
    assert_ptr_equal(got, s);
    float hA[4] = {1, 2, 3, 4}, hB[2] = {1, 1}, out[2];
    float *A, *B, *C;
    CK(cudaMalloc((void **)&A, sizeof hA));
    CK(cudaMalloc((void **)&B, sizeof hB));
    CK(cudaMalloc((void **)&C, sizeof out));
    CK(cudaMemcpyAsync(A, hA, sizeof hA, cudaMemcpyHostToDevice, s));
    CK(cudaMemcpyAsync(B, hB, sizeof hB, cudaMemcpyHostToDevice, s));
    const float one = 1.0f, zero = 0.0f;
    CB(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 1, 2, &one, A, 2, B, 2, &zero, C, 2)); /* C = A [1 1]^T */
    CK(cudaMemcpy(out, C, sizeof out, cudaMemcpyDeviceToHost)); /* BUG: s not synchronized */
    assert_true(isnan(out[0]) && isnan(out[1]));
    CK(cudaStreamSynchronize(s));
    CK(cudaMemcpy(out, C, sizeof out, cudaMemcpyDeviceToHost));
    assert_true(out[0] == 4.0f && out[1] == 6.0f);
    CK(cudaFree(A));
    CK(cudaFree(B));
    CK(cudaFree(C));
    CK(cudaStreamDestroy(s));
    CB(cublasDestroy(h));
}

static int setup(void **state) {
    (void)state;
    tbert_emu_reset_faults();
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_random_products, setup),
        cmocka_unit_test_setup(test_reference_catches_wrong_arguments, setup),
        cmocka_unit_test_setup(test_tf32_and_bf16_rounding, setup),
        cmocka_unit_test_setup(test_argument_checks, setup),
        cmocka_unit_test_setup(test_extent_faults, setup),
        cmocka_unit_test_setup(test_handle_stream, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
