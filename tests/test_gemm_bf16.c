/* The CPU's bf16 matrix products (src/gemm_bf16.c) against float64 loops on the bf16-rounded operands, on both
 * paths: the AMX tile kernel (where the CPU has it; the rest of the test runs either way) and the float32 fallback.
 *   - forward c = a w^T (w stored (n, k) and (k, n)), the epilogues (bias, accumulate, GELU; the AMX kernel starts a
 *     whole 32 x 32 block from the bias or c and stores it directly, other blocks go through a buffer), shapes (k = 1
 *     and 2, where a wrong bf16 rounding shows as a whole bf16 step, rows across the 16-row tile, the 32-row pair
 *     and the 256-row block, columns across 16 and 32, k across 32), guard values after every row and the matrix;
 *   - the forward split by 32-column blocks (two calls) gives the whole product's bits, and so do its rows from row 7
 *     on computed alone (another position in the kernel's row blocks);
 *   - the weight gradient dw += dy^T x (dw starting from random values), and the same bits whatever range of output
 *     rows a call computes (threads split the rows: [0, n) against two calls split at 16, 7 and 33);
 *   - tbert_round_bf16 on hand-picked values (ties to even, the largest values, NaN).
 * Tolerance per element: the float32 summation bound (terms + 2) 2^-23 sum |term| (+1e-6 after GELU), where each
 * product of two bf16 values is exact in float32: an operand rounded differently from tbert_round_bf16 is off by up to
 * 2^-9 relative of its term and fails (k = 1 shapes especially). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gemm_bf16.h"
#include "testutil.h"

#define GUARD 8
#define SENTINEL 12345.0f

static double gelu64(double v) {
    return 0.5 * v * (1.0 + erf(v / sqrt(2.0)));
}

static void fill(tu_rng *r, float *x, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = tu_normal(r) * scale;
}

static double r64(float f) {
    return (double)tbert_round_bf16(f);
}

typedef struct {
    int m, n, k;
} shape;

static const shape fwd_shapes[] = {{1, 1, 1},   {1, 32, 384}, {7, 17, 5},    {33, 40, 64},  {40, 1152, 384},
                                   {300, 48, 96}, {257, 33, 1}, {31, 16, 800}, {64, 31, 2},   {513, 64, 33}};

static size_t run_forward(bool amx, tu_rng *r) {
    size_t bad = 0;
    const char *path = amx ? "amx" : "fallback";
    for (size_t s = 0; s < sizeof fwd_shapes / sizeof fwd_shapes[0]; s++)
        for (int trans = 0; trans < 2; trans++) {
            /* epilogues: none, bias, accumulate, both, bias + GELU, all three (each 3-4 times over the shapes) */
            static const bool epi[6][3] = {{0, 0, 0}, {1, 0, 0}, {0, 1, 0}, {1, 1, 0}, {1, 0, 1}, {1, 1, 1}};
            int m = fwd_shapes[s].m, n = fwd_shapes[s].n, k = fwd_shapes[s].k, e = (int)((2 * s + (size_t)trans) % 6);
            bool bias_on = epi[e][0], acc = epi[e][1], gelu = epi[e][2];
            size_t ldc = (size_t)n + 3, lda = (size_t)k + 1;
            float *a = malloc((size_t)m * lda * sizeof *a), *w = malloc((size_t)n * k * sizeof *w), *bias = malloc((size_t)n * sizeof *bias);
            float *buf = malloc(((size_t)m * ldc + 2 * GUARD) * sizeof *buf);
            double *ref = malloc((size_t)m * n * sizeof *ref), *bound = malloc((size_t)m * n * sizeof *bound);
            void *scratch = aligned_alloc(64, tbert_gemm_bf16_scratch(amx, m, k, n));
            assert_true(a && w && bias && buf && ref && bound && scratch);
            float sc = 1.0f / sqrtf((float)k);
            fill(r, a, (size_t)m * lda, 1.0f);
            fill(r, w, (size_t)n * k, sc);
            fill(r, bias, (size_t)n, 0.5f);
            for (size_t i = 0; i < (size_t)m * ldc + 2 * GUARD; i++) buf[i] = SENTINEL;
            float *c = buf + GUARD;
            double *c0v = malloc((size_t)m * n * sizeof *c0v);
            assert_non_null(c0v);
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++) {
                    if (acc) c[(size_t)i * ldc + j] = tu_normal(r);
                    c0v[(size_t)i * n + j] = c[(size_t)i * ldc + j];
                }
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++) {
                    double sum = 0.0, abs = 0.0;
                    for (int p = 0; p < k; p++) {
                        double wv = trans ? r64(w[(size_t)p * n + j]) : r64(w[(size_t)j * k + p]);
                        double t = r64(a[(size_t)i * lda + p]) * wv;
                        sum += t, abs += fabs(t);
                    }
                    double c0 = acc ? c[(size_t)i * ldc + j] : 0.0, b = bias_on ? bias[j] : 0.0;
                    double v = sum + c0 + b;
                    abs += fabs(c0) + fabs(b);
                    ref[(size_t)i * n + j] = gelu ? gelu64(v) : v;
                    bound[(size_t)i * n + j] = (k + 2) * ldexp(1.0, -23) * abs * 1.2 + (gelu ? 1e-6 : 0.0);
                }
            tbert_packed_bf16 pw;
            tbert_error err = {0};
            assert_int_equal(tbert_pack_bf16(w, n, k, trans, amx, &pw, &err), TBERT_OK);
            tbert_gemm_bf16(m, a, lda, &pw, bias_on ? bias : NULL, acc, gelu, c, ldc, scratch);
            size_t nb = 0;
            double worst = 0.0;
            for (int i = 0; i < m; i++) {
                for (int j = 0; j < n; j++) {
                    double d = fabs((double)c[(size_t)i * ldc + j] - ref[(size_t)i * n + j]);
                    double q = d / (bound[(size_t)i * n + j] + 1e-30);
                    if (q > worst) worst = q;
                    if (!(d <= bound[(size_t)i * n + j])) {
                        if (nb < 3)
                            print_error("%s forward %dx%dx%d trans %d: c[%d][%d] = %.9g, ref %.9g (bound %.3g)\n", path, m, n, k,
                                        trans, i, j, c[(size_t)i * ldc + j], ref[(size_t)i * n + j], bound[(size_t)i * n + j]);
                        nb++;
                    }
                }
                for (size_t j = (size_t)n; j < ldc; j++) nb += c[(size_t)i * ldc + j] != SENTINEL;
            }
            for (int i = 0; i < GUARD; i++) nb += buf[i] != SENTINEL || c[(size_t)m * ldc + (size_t)i] != SENTINEL;
            /* rows 7.. alone (another position in the 32-row blocks): the same bits, as a row's result must not
             * depend on how rows were batched (the CPU encoder packs sequences per thread) */
            if (m > 7) {
                int ms = m - 7;
                float *c3 = malloc((size_t)ms * ldc * sizeof *c3);
                assert_non_null(c3);
                for (int i = 0; i < ms; i++)
                    for (int j = 0; j < n; j++) c3[(size_t)i * ldc + j] = (float)c0v[(size_t)(i + 7) * n + j];
                tbert_gemm_bf16(ms, a + 7 * lda, lda, &pw, bias_on ? bias : NULL, acc, gelu, c3, ldc, scratch);
                size_t pos_diff = 0;
                for (int i = 0; i < ms; i++) pos_diff += memcmp(c3 + (size_t)i * ldc, c + (size_t)(i + 7) * ldc, (size_t)n * sizeof *c3) != 0;
                if (pos_diff) print_error("%s forward %dx%dx%d: %zu rows differ when computed from row 7\n", path, m, n, k, pos_diff);
                nb += pos_diff;
                free(c3);
            }
            /* split by 32-column blocks (the encoder's team): the same bits as the whole product */
            int blocks = tbert_packed_bf16_blocks(&pw);
            if (blocks > 1) {
                float *c2 = malloc((size_t)m * ldc * sizeof *c2);
                assert_non_null(c2);
                for (size_t i = 0; i < (size_t)m * ldc; i++) c2[i] = acc ? buf[GUARD + i] : SENTINEL;
                if (acc) /* the product's input c, as before the whole call */
                    for (int i = 0; i < m; i++)
                        for (int j = 0; j < n; j++) c2[(size_t)i * ldc + j] = c0v[(size_t)i * n + j];
                int sp = blocks / 2;
                tbert_gemm_bf16_blocks(m, a, lda, &pw, bias_on ? bias : NULL, acc, gelu, c2, ldc, scratch, sp, blocks);
                tbert_gemm_bf16_blocks(m, a, lda, &pw, bias_on ? bias : NULL, acc, gelu, c2, ldc, scratch, 0, sp);
                size_t split_diff = 0;
                for (int i = 0; i < m; i++) split_diff += memcmp(c2 + (size_t)i * ldc, c + (size_t)i * ldc, (size_t)n * sizeof *c2) != 0;
                if (split_diff) print_error("%s forward %dx%dx%d: %zu rows differ when split at block %d of %d\n", path, m, n, k, split_diff, sp, blocks);
                nb += split_diff;
                free(c2);
            }
            printf("%s forward m %d n %d k %d trans %d bias %d acc %d gelu %d: worst error / bound %.3f%s\n", path, m, n, k, trans,
                   bias_on, acc, gelu, worst, nb ? " FAIL" : "");
            bad += nb;
            tbert_packed_bf16_free(&pw);
            free(a), free(w), free(bias), free(buf), free(ref), free(bound), free(scratch), free(c0v);
        }
    return bad;
}

static const struct {
    int rows, out, in;
} tn_shapes[] = {{1, 5, 3}, {31, 40, 16}, {64, 96, 50}, {257, 33, 64}, {600, 96, 384}, {300, 64, 33}};

static size_t run_tn(bool amx, tu_rng *r) {
    size_t bad = 0;
    const char *path = amx ? "amx" : "fallback";
    for (size_t s = 0; s < sizeof tn_shapes / sizeof tn_shapes[0]; s++) {
        int rows = tn_shapes[s].rows, no = tn_shapes[s].out, ni = tn_shapes[s].in;
        float *dy = malloc((size_t)rows * no * sizeof *dy), *x = malloc((size_t)rows * ni * sizeof *x);
        float *dw0 = malloc((size_t)no * ni * sizeof *dw0), *dw = malloc((size_t)no * ni * sizeof *dw),
              *dw2 = malloc((size_t)no * ni * sizeof *dw2);
        void *scratch = aligned_alloc(64, tbert_gemm_bf16_scratch(amx, 1, 1, no > ni ? no : ni));
        assert_true(dy && x && dw0 && dw && dw2 && scratch);
        fill(r, dy, (size_t)rows * no, 1.0f);
        fill(r, x, (size_t)rows * ni, 1.0f);
        fill(r, dw0, (size_t)no * ni, 4.0f);
        memcpy(dw, dw0, (size_t)no * ni * sizeof *dw);
        tbert_gemm_tn_bf16(amx, (size_t)rows, no, ni, dy, x, dw, 64, 0, no, scratch);
        size_t nb = 0;
        double worst = 0.0;
        for (int o = 0; o < no; o++)
            for (int i = 0; i < ni; i++) {
                double sum = dw0[(size_t)o * ni + i], abs = fabs(sum);
                for (int q = 0; q < rows; q++) {
                    double t = r64(dy[(size_t)q * no + o]) * r64(x[(size_t)q * ni + i]);
                    sum += t, abs += fabs(t);
                }
                double bound = (rows + 2) * ldexp(1.0, -23) * abs * 1.2, d = fabs(dw[(size_t)o * ni + i] - sum);
                if (d / (bound + 1e-30) > worst) worst = d / (bound + 1e-30);
                if (!(d <= bound)) {
                    if (nb < 3)
                        print_error("%s tn rows %d out %d in %d: dw[%d][%d] = %.9g, ref %.9g (bound %.3g)\n", path, rows, no, ni, o, i,
                                    dw[(size_t)o * ni + i], sum, bound);
                    nb++;
                }
            }
        /* the same bits when the output rows are split between two calls */
        static const int splits[] = {16, 7, 33};
        size_t diff = 0;
        for (size_t q = 0; q < sizeof splits / sizeof splits[0]; q++) {
            int sp = splits[q] < no ? splits[q] : no / 2;
            memcpy(dw2, dw0, (size_t)no * ni * sizeof *dw2);
            tbert_gemm_tn_bf16(amx, (size_t)rows, no, ni, dy, x, dw2, 64, sp, no, scratch);
            tbert_gemm_tn_bf16(amx, (size_t)rows, no, ni, dy, x, dw2, 64, 0, sp, scratch);
            diff += memcmp(dw, dw2, (size_t)no * ni * sizeof *dw) != 0;
        }
        if (diff) print_error("%s tn rows %d out %d in %d: %zu of 3 row splits changed the bits\n", path, rows, no, ni, diff);
        printf("%s tn rows %d out %d in %d: worst error / bound %.3f, splits identical %s%s\n", path, rows, no, ni, worst,
               diff ? "no" : "yes", nb || diff ? " FAIL" : "");
        bad += nb + diff;
        free(dy), free(x), free(dw0), free(dw), free(dw2), free(scratch);
    }
    return bad;
}

static void test_round(void **state) {
    (void)state;
    /* 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties to even -> 1; 1 + 3 2^-8 -> 1 + 2^-6 */
    assert_true(tbert_round_bf16(1.0f + ldexpf(1.0f, -8)) == 1.0f);
    assert_true(tbert_round_bf16(1.0f + 3 * ldexpf(1.0f, -8)) == 1.0f + ldexpf(1.0f, -6));
    assert_true(tbert_round_bf16(1.0f + ldexpf(1.0f, -8) + ldexpf(1.0f, -20)) == 1.0f + ldexpf(1.0f, -7));
    assert_true(tbert_round_bf16(-2.5f) == -2.5f);
    assert_true(isnan(tbert_round_bf16(NAN)));
    assert_true(isinf(tbert_round_bf16(INFINITY)));
}

static void test_products(void **state) {
    (void)state;
    tu_rng r = {tu_seed_from_env("test_gemm_bf16")};
    bool amx = tbert_gemm_amx_supported();
    printf("AMX on this CPU: %s\n", amx ? "yes (tile kernel and fallback tested)" : "no (fallback tested only)");
    size_t bad = run_forward(false, &r) + run_tn(false, &r);
    if (amx) bad += run_forward(true, &r) + run_tn(true, &r);
    assert_int_equal(bad, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_round), cmocka_unit_test(test_products)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
