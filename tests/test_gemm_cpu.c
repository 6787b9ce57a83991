/* The CPU encoder's matrix products (src/gemm_cpu.c) against float64 loops: both kernels (OpenBLAS and the
 * packed AVX-512 one, where the CPU has it), awkward shapes (1 row, rows across the 12-row tile and the
 * 480-row block, columns across the 16-lane halves and the 32-column panel, k across the 384 block), every
 * epilogue (accumulate, bias, GELU), guard values around and between the output rows. Then the whole
 * encoder with TBERT_CPU_GEMM=blas against TBERT_CPU_GEMM=avx512 on a random model (each is also checked
 * against transformers by test_encoder_cpu, which runs the default kernel).
 * Tolerance: |got - ref| <= 1e-4 + 1e-4 |ref| (inputs scaled so that outputs are O(1)). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "encoder_backend.h"
#include "gemm_cpu.h"
#include "testutil.h"
#include "tbert/encoder.h"
#include "tbert/model.h"

#define ATOL 1e-4
#define RTOL 1e-4
#define GUARD 8
#define SENTINEL 12345.0f

static double gelu64(double v) {
    return 0.5 * v * (1.0 + erf(v / sqrt(2.0)));
}

typedef struct {
    int m, n, k;
} shape;

static const shape shapes[] = {{1, 1, 1},     {1, 32, 384},  {7, 17, 5},    {12, 16, 64},   {13, 33, 385},
                               {25, 100, 7},  {5, 15, 800},  {200, 48, 96}, {197, 64, 31},  {40, 1152, 384},
                               {481, 40, 20}, {973, 33, 9}};

static void fill(tu_rng *r, float *x, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = tu_normal(r) * scale;
}

/* c (ldc = n + 3, GUARD sentinels before and after) vs the float64 reference; gap columns must be untouched */
static size_t check(const char *what, const float *buf, const double *ref, int m, int n, size_t ldc) {
    size_t bad = 0;
    for (int i = 0; i < GUARD; i++) bad += buf[i] != SENTINEL;
    const float *c = buf + GUARD;
    float *got = malloc((size_t)m * n * sizeof *got);
    assert_non_null(got);
    for (int i = 0; i < m; i++) {
        memcpy(got + (size_t)i * n, c + (size_t)i * ldc, (size_t)n * sizeof *got);
        for (size_t j = (size_t)n; j < ldc; j++) bad += c[(size_t)i * ldc + j] != SENTINEL;
    }
    for (int i = 0; i < GUARD; i++) bad += c[(size_t)m * ldc + (size_t)i] != SENTINEL;
    if (bad) print_error("%s: %zu guard values overwritten\n", what, bad);
    bad += tu_compare_f64(what, got, ref, (size_t)m * n, ATOL, RTOL);
    free(got);
    return bad;
}

static void run_packed(tbert_gemm_kind kind, const char *kname, tu_rng *r) {
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int m = shapes[s].m, n = shapes[s].n, k = shapes[s].k;
        size_t ldc = (size_t)n + 3, lda = (size_t)k + 2;
        float *a = malloc((size_t)m * lda * sizeof *a), *w = malloc((size_t)n * k * sizeof *w);
        float *bias = malloc((size_t)n * sizeof *bias), *c0 = malloc((size_t)m * ldc * sizeof *c0);
        float *buf = malloc(((size_t)m * ldc + 2 * GUARD) * sizeof *buf);
        double *ref = malloc((size_t)m * n * sizeof *ref);
        assert_true(a && w && bias && c0 && buf && ref);
        fill(r, a, (size_t)m * lda, 1.0f);
        fill(r, w, (size_t)n * k, 1.0f / sqrtf((float)k));
        fill(r, bias, (size_t)n, 0.5f);
        fill(r, c0, (size_t)m * ldc, 1.0f);
        tbert_packed_w p;
        tbert_error err;
        assert_int_equal(tbert_pack_weights(w, n, k, kind, &p, &err), TBERT_OK);
        assert_true((p.packed != NULL) == (kind == TBERT_GEMM_AVX512));
        for (int mode = 0; mode < 8; mode++) {
            bool acc = mode & 1, has_bias = mode & 2, gelu = mode & 4;
            for (size_t i = 0; i < (size_t)m * ldc + 2 * GUARD; i++) buf[i] = SENTINEL;
            float *c = buf + GUARD;
            if (acc)
                for (int i = 0; i < m; i++) memcpy(c + (size_t)i * ldc, c0 + (size_t)i * ldc, (size_t)n * sizeof *c);
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++) {
                    double v = acc ? c0[(size_t)i * ldc + j] : 0.0;
                    for (int q = 0; q < k; q++) v += (double)a[(size_t)i * lda + q] * w[(size_t)j * k + q];
                    if (has_bias) v += bias[j];
                    ref[(size_t)i * n + j] = gelu ? gelu64(v) : v;
                }
            tbert_gemm_packed(m, a, lda, &p, has_bias ? bias : NULL, acc, gelu, c, ldc);
            char what[160];
            snprintf(what, sizeof what, "%s %dx%dx%d acc=%d bias=%d gelu=%d", kname, m, n, k, acc, has_bias, gelu);
            assert_int_equal(check(what, buf, ref, m, n, ldc), 0);
        }
        tbert_packed_free(&p);
        free(a), free(w), free(bias), free(c0), free(buf), free(ref);
    }
}

static void run_nn(bool avx512, const char *kname, tu_rng *r) {
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int m = shapes[s].m, n = shapes[s].n, k = shapes[s].k;
        size_t lda = (size_t)k + 1, ldb = (size_t)n + 5, ldc = (size_t)n + 3;
        float *a = malloc((size_t)m * lda * sizeof *a), *b = malloc((size_t)k * ldb * sizeof *b);
        float *buf = malloc(((size_t)m * ldc + 2 * GUARD) * sizeof *buf);
        double *ref = malloc((size_t)m * n * sizeof *ref);
        assert_true(a && b && buf && ref);
        fill(r, a, (size_t)m * lda, 1.0f);
        fill(r, b, (size_t)k * ldb, 1.0f / sqrtf((float)k));
        for (size_t i = 0; i < (size_t)m * ldc + 2 * GUARD; i++) buf[i] = SENTINEL;
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                double v = 0.0;
                for (int q = 0; q < k; q++) v += (double)a[(size_t)i * lda + q] * b[(size_t)q * ldb + j];
                ref[(size_t)i * n + j] = v;
            }
        tbert_gemm_nn(avx512, m, n, k, a, lda, b, ldb, buf + GUARD, ldc);
        char what[160];
        snprintf(what, sizeof what, "nn %s %dx%dx%d", kname, m, n, k);
        assert_int_equal(check(what, buf, ref, m, n, ldc), 0);
        free(a), free(b), free(buf), free(ref);
    }
}

static void test_blas(void **state) {
    (void)state;
    tu_rng r = {tu_seed_from_env("test_gemm_cpu blas")};
    run_packed(TBERT_GEMM_BLAS, "blas", &r);
    run_nn(false, "blas", &r);
}

static void test_avx512(void **state) {
    (void)state;
    if (!tbert_gemm_avx512_supported()) {
        tbert_packed_w p;
        tbert_error err;
        float w = 1.0f;
        assert_int_equal(tbert_pack_weights(&w, 1, 1, TBERT_GEMM_AVX512, &p, &err), TBERT_E_UNSUPPORTED);
        print_message("test_avx512: this CPU has no AVX-512; only the refusal was checked\n");
        return;
    }
    tu_rng r = {tu_seed_from_env("test_gemm_cpu avx512")};
    run_packed(TBERT_GEMM_AVX512, "avx512", &r);
    run_nn(true, "avx512", &r);
}

/* tbert_pack_weights_t (w stored (k, n), c = a @ w) against float64, then tbert_packed_refresh after w changed */
static void run_packed_t(tbert_gemm_kind kind, const char *kname, tu_rng *r) {
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int m = shapes[s].m, n = shapes[s].n, k = shapes[s].k;
        size_t ldc = (size_t)n + 3, lda = (size_t)k + 2;
        float *a = malloc((size_t)m * lda * sizeof *a), *w = malloc((size_t)n * k * sizeof *w);
        float *buf = malloc(((size_t)m * ldc + 2 * GUARD) * sizeof *buf);
        double *ref = malloc((size_t)m * n * sizeof *ref);
        assert_true(a && w && buf && ref);
        fill(r, a, (size_t)m * lda, 1.0f);
        tbert_packed_w p;
        tbert_error err;
        for (int round = 0; round < 2; round++) { /* round 1: new values in w, repacked in place */
            fill(r, w, (size_t)n * k, 1.0f / sqrtf((float)k));
            if (round == 0) assert_int_equal(tbert_pack_weights_t(w, n, k, kind, &p, &err), TBERT_OK);
            else tbert_packed_refresh(&p);
            for (size_t i = 0; i < (size_t)m * ldc + 2 * GUARD; i++) buf[i] = SENTINEL;
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++) {
                    double v = 0.0;
                    for (int q = 0; q < k; q++) v += (double)a[(size_t)i * lda + q] * w[(size_t)q * n + j];
                    ref[(size_t)i * n + j] = v;
                }
            tbert_gemm_packed(m, a, lda, &p, NULL, false, false, buf + GUARD, ldc);
            char what[160];
            snprintf(what, sizeof what, "%s transposed %dx%dx%d round %d", kname, m, n, k, round);
            assert_int_equal(check(what, buf, ref, m, n, ldc), 0);
        }
        tbert_packed_free(&p);
        free(a), free(w), free(buf), free(ref);
    }
}

/* tbert_gemm_tn_chunked: dw += the chunk partials of dy^T x in chunk order. Against float64 (|got - ref| <= 1e-4 +
 * 1e-4 |ref|, dy scaled by 1/sqrt(rows)); rows outside [o0, o1) untouched; two ranges = one range bit for bit; and
 * the AVX-512 path bit for bit against the documented order written with fmaf (each chunk's partial from zero, row
 * by row, then added to dw), so a chunk boundary in the wrong place fails. */
typedef struct {
    int rows, out, in, chunk;
} tn_shape;

static void run_tn(bool avx512, const char *kname, tu_rng *r) {
    static const tn_shape tn[] = {{1, 1, 1, 64},     {7, 13, 5, 4},    {130, 25, 33, 64}, {300, 40, 100, 64},
                                  {517, 12, 64, 64}, {64, 1, 1, 64},   {1000, 50, 70, 256}, {200, 30, 40, 300},
                                  {129, 37, 385, 64}};
    for (size_t s = 0; s < sizeof tn / sizeof tn[0]; s++) {
        int R = tn[s].rows, O = tn[s].out, I = tn[s].in, C = tn[s].chunk;
        size_t nw = (size_t)O * I;
        float *dy = malloc((size_t)R * O * sizeof *dy), *x = malloc((size_t)R * I * sizeof *x);
        float *w0 = malloc(nw * sizeof *w0), *w1 = malloc(nw * sizeof *w1), *w2 = malloc(nw * sizeof *w2);
        double *ref = malloc(nw * sizeof *ref);
        assert_true(dy && x && w0 && w1 && w2 && ref);
        fill(r, dy, (size_t)R * O, 1.0f / sqrtf((float)R));
        fill(r, x, (size_t)R * I, 1.0f);
        fill(r, w0, nw, 1.0f);
        int o0 = O / 3, o1 = O - O / 4; /* a middle range first: the rows around it must not move */
        memcpy(w1, w0, nw * sizeof *w1);
        tbert_gemm_tn_chunked(avx512, (size_t)R, O, I, dy, x, w1, C, o0, o1);
        size_t moved = 0;
        for (size_t e = 0; e < nw; e++) {
            int o = (int)(e / (size_t)I);
            if ((o < o0 || o >= o1) && memcmp(&w1[e], &w0[e], sizeof(float)) != 0) moved++;
        }
        if (moved) print_error("%s tn %dx%dx%d: %zu values outside the row range changed\n", kname, R, O, I, moved);
        assert_int_equal(moved, 0);
        tbert_gemm_tn_chunked(avx512, (size_t)R, O, I, dy, x, w1, C, 0, o0);
        tbert_gemm_tn_chunked(avx512, (size_t)R, O, I, dy, x, w1, C, o1, O);
        memcpy(w2, w0, nw * sizeof *w2);
        tbert_gemm_tn_chunked(avx512, (size_t)R, O, I, dy, x, w2, C, 0, O);
        assert_memory_equal(w1, w2, nw * sizeof *w1);
        for (int o = 0; o < O; o++)
            for (int i = 0; i < I; i++) {
                double v = w0[(size_t)o * I + i];
                for (int q = 0; q < R; q++) v += (double)dy[(size_t)q * O + o] * x[(size_t)q * I + i];
                ref[(size_t)o * I + i] = v;
            }
        char what[160];
        snprintf(what, sizeof what, "%s tn %d rows, %d x %d, chunk %d", kname, R, O, I, C);
        assert_int_equal(tu_compare_f64(what, w2, ref, nw, ATOL, RTOL), 0);
        if (avx512 && C <= 256) {
            size_t diff = 0;
            for (int o = 0; o < O; o++)
                for (int i = 0; i < I; i++) {
                    float d = w0[(size_t)o * I + i];
                    for (int c0 = 0; c0 < R; c0 += C) {
                        float part = 0.0f;
                        for (int q = c0; q < R && q < c0 + C; q++)
                            part = fmaf(dy[(size_t)q * O + o], x[(size_t)q * I + i], part);
                        d += part;
                    }
                    diff += memcmp(&d, &w2[(size_t)o * I + i], sizeof d) != 0;
                }
            if (diff) print_error("%s: %zu of %zu values differ in their bits from the chunked order\n", what, diff, nw);
            assert_int_equal(diff, 0);
        }
        free(dy), free(x), free(w0), free(w1), free(w2), free(ref);
    }
}

static void test_transposed_and_chunked(void **state) {
    (void)state;
    tu_rng r = {tu_seed_from_env("test_gemm_cpu transposed")};
    run_packed_t(TBERT_GEMM_BLAS, "blas", &r);
    run_tn(false, "plain", &r);
    if (!tbert_gemm_avx512_supported()) {
        print_message("test_transposed_and_chunked: no AVX-512; the BLAS / plain versions only\n");
        return;
    }
    run_packed_t(TBERT_GEMM_AVX512, "avx512", &r);
    run_tn(true, "avx512", &r);
}

/* the whole encoder on both kernels (a random model with MiniLM's 12-row tile edge cases: lengths 1..40) */
static float *encode(const tbert_model *m, const char *kind, int B, int T, const int32_t *ids, const int32_t *lens) {
    setenv("TBERT_CPU_GEMM", kind, 1);
    tbert_encoder_opts o = tbert_encoder_default_opts();
    o.device.kind = TBERT_DEVICE_CPU;
    o.threads = 2;
    tbert_encoder *e = NULL;
    tbert_error err;
    if (tbert_encoder_create(m, &o, &e, &err) != TBERT_OK) fail_msg("%s", err.msg);
    float *h = malloc((size_t)B * T * m->cfg.hidden * sizeof *h);
    assert_non_null(h);
    if (tbert_encoder_forward(e, B, T, ids, lens, h, &err) != TBERT_OK) fail_msg("%s", err.msg);
    tbert_encoder_free(e);
    unsetenv("TBERT_CPU_GEMM");
    return h;
}

static void test_encoder_both_kernels(void **state) {
    (void)state;
    char dir[4096];
    tbert_error err;
    tbert_model *m = NULL;
    tu_tests_path("models/minilm_like_f16", dir, sizeof dir);
    if (tbert_model_load(dir, &m, &err) != TBERT_OK) fail_msg("%s", err.msg);
    setenv("TBERT_CPU_GEMM", "fast", 1);
    tbert_encoder_opts o = tbert_encoder_default_opts();
    o.device.kind = TBERT_DEVICE_CPU;
    tbert_encoder *e = NULL;
    assert_int_equal(tbert_encoder_create(m, &o, &e, &err), TBERT_E_ARG);
    assert_null(e);
    unsetenv("TBERT_CPU_GEMM");
    if (!tbert_gemm_avx512_supported()) {
        tbert_model_free(m);
        print_message("test_encoder_both_kernels: no AVX-512; only the refusal was checked\n");
        return;
    }
    enum { B = 9, T = 40 };
    int32_t ids[B * T], lens[B];
    tu_rng r = {tu_seed_from_env("test_gemm_cpu encoder")};
    for (int b = 0; b < B; b++) lens[b] = b == 0 ? 1 : 1 + (int)(tu_next(&r) % T);
    lens[B - 1] = T;
    for (int i = 0; i < B * T; i++) ids[i] = (int32_t)(tu_next(&r) % (uint64_t)m->cfg.vocab_size);
    float *hb = encode(m, "blas", B, T, ids, lens), *ha = encode(m, "avx512", B, T, ids, lens);
    size_t n = (size_t)B * T * m->cfg.hidden;
    assert_int_equal(tu_compare("encoder avx512 vs blas", ha, hb, n, 1e-5, 1e-5), 0);
    free(hb), free(ha);
    tbert_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_blas),
        cmocka_unit_test(test_avx512),
        cmocka_unit_test(test_transposed_and_chunked),
        cmocka_unit_test(test_encoder_both_kernels),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
