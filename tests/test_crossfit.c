/* The head cross-fitting keeps (src/crossfit.c): tbert_head_ensemble of K heads gives, on any input, the mean
 * of their logits, for linear and MLP heads, binary and multi-class, computed here in float64 from the K heads'
 * own forward passes (atol 1e-5, rtol 1e-5 on logits of magnitude ~1). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tbert/head.h"
#include "train_internal.h"

static void check(int D, int Hd, int C, bool binary, int K, uint64_t seed) {
    tbert_head_config cfg = {.in_dim = D, .hidden = Hd, .n_classes = C, .binary = binary, .positive = 1, .dropout = 0.1f};
    tbert_head **heads = calloc((size_t)K, sizeof *heads);
    for (int k = 0; k < K; k++) {
        assert_int_equal(tbert_head_create(&cfg, &heads[k], NULL), TBERT_OK);
        tbert_head_init(heads[k], seed + (uint64_t)k);
    }
    tbert_head *e = NULL;
    tbert_error err;
    assert_int_equal(tbert_head_ensemble(heads, K, &e, &err), TBERT_OK);
    assert_int_equal(e->cfg.hidden, Hd * K);
    assert_int_equal(e->cfg.in_dim, D);
    const int n = 37, O = tbert_head_out_dim(&cfg);
    tu_rng r = {seed};
    float *x = malloc(sizeof(float) * n * D), *z = malloc(sizeof(float) * n * O), *got = malloc(sizeof(float) * n * O);
    double *ref = calloc((size_t)n * O, sizeof(double));
    for (int i = 0; i < n * D; i++) x[i] = tu_normal(&r);
    tbert_head_ws *ws = NULL;
    assert_int_equal(tbert_head_ws_create(&cfg, n, &ws, NULL), TBERT_OK);
    for (int k = 0; k < K; k++) {
        assert_int_equal(tbert_head_forward(heads[k], ws, n, x, false, NULL, z, NULL), TBERT_OK);
        for (int i = 0; i < n * O; i++) ref[i] += (double)z[i] / K;
    }
    tbert_head_ws_free(ws);
    tbert_head_config ec = e->cfg;
    assert_int_equal(tbert_head_ws_create(&ec, n, &ws, NULL), TBERT_OK);
    assert_int_equal(tbert_head_forward(e, ws, n, x, false, NULL, got, NULL), TBERT_OK);
    tbert_head_ws_free(ws);
    char what[96];
    snprintf(what, sizeof what, "ensemble D%d H%d C%d %s K%d", D, Hd, C, binary ? "binary" : "softmax", K);
    assert_int_equal(tu_compare_f64(what, got, ref, (size_t)n * O, 1e-5, 1e-5), 0);
    for (int k = 0; k < K; k++) tbert_head_free(heads[k]);
    free(heads);
    tbert_head_free(e);
    free(x);
    free(z);
    free(got);
    free(ref);
}

static void test_linear(void **state) {
    (void)state;
    check(50, 0, 2, true, 5, 11);
    check(50, 0, 4, false, 3, 12);
    check(7, 0, 2, true, 1, 13); /* one head: itself */
}

static void test_mlp(void **state) {
    (void)state;
    check(40, 16, 2, true, 5, 21);
    check(40, 9, 3, false, 4, 22);
}

static void test_refused(void **state) {
    (void)state;
    tbert_head_config a = {.in_dim = 10, .hidden = 0, .n_classes = 2, .binary = true, .positive = 1};
    tbert_head_config b = a;
    b.in_dim = 11;
    tbert_head *h[2] = {NULL, NULL}, *e = NULL;
    assert_int_equal(tbert_head_create(&a, &h[0], NULL), TBERT_OK);
    assert_int_equal(tbert_head_create(&b, &h[1], NULL), TBERT_OK);
    tbert_error err;
    assert_int_equal(tbert_head_ensemble(h, 2, &e, &err), TBERT_E_ARG);
    assert_null(e);
    assert_int_equal(tbert_head_ensemble(h, 0, &e, &err), TBERT_E_ARG);
    tbert_head_free(h[0]);
    tbert_head_free(h[1]);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_linear), cmocka_unit_test(test_mlp), cmocka_unit_test(test_refused)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
