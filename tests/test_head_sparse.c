/* The head on sparse rows (tbert_head_*_rows) against the dense head on the same features, and its
 * backward against central finite differences of a float64 loss.
 * Tolerances: sparse vs dense (same float32 math, sums in another order): logits and gradients
 * |got - ref| <= 1e-6 + 1e-5 |ref|; sparse gradient vs float64 finite differences (step 1e-5):
 * |g - ref| <= 2e-4 + 2e-3 |ref| (as tests/test_head_grad.c). Bit equality where the design promises it:
 * a linear head with dropout (runs the dense path), and predict_rows against predict. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "head_ref.h"
#include "testutil.h"
#include "tbert/head.h"
#include "tbert/rows.h"

typedef struct {
    int n;
    size_t dd, dim;
    float *x; /* dense layout n x dim */
    tbert_rows rows;
} batch;

/* dense block N(0,1); sparse columns non-zero with probability fill, the last row without sparse entries */
static void make_batch(batch *b, tu_rng *r, int n, size_t dd, size_t sparse, double fill) {
    b->n = n;
    b->dd = dd;
    b->dim = dd + sparse;
    b->x = calloc((size_t)n * b->dim, sizeof(float));
    for (int i = 0; i < n; i++)
        for (size_t j = 0; j < b->dim; j++)
            if (j < dd) b->x[(size_t)i * b->dim + j] = tu_normal(r);
            else if (i < n - 1 && tu_uniform(r) < fill) b->x[(size_t)i * b->dim + j] = (float)(0.1 + tu_uniform(r));
    size_t w[2] = {sparse / 2, sparse - sparse / 2};
    assert_int_equal(tbert_rows_init(&b->rows, dd, 2, w, NULL), TBERT_OK);
    assert_int_equal(tbert_rows_append_dense(&b->rows, n, b->x, NULL), TBERT_OK);
}

static void free_batch(batch *b) {
    free(b->x);
    tbert_rows_free(&b->rows);
}

static void check_variant(int hidden, bool binary, int C, float dropout, size_t dd, uint64_t seed) {
    tu_rng r = {seed};
    batch b;
    make_batch(&b, &r, 9, dd, 23, 0.25);
    tbert_head_config cfg = {.in_dim = (int)b.dim, .hidden = hidden, .n_classes = C, .binary = binary, .positive = binary,
                             .dropout = dropout};
    tbert_head *h;
    assert_int_equal(tbert_head_create(&cfg, &h, NULL), TBERT_OK);
    tbert_head_init(h, seed);
    for (size_t i = 0; i < h->n_params; i++) h->params[i] *= 3.0f; /* logits away from 0 */
    int y[9];
    for (int i = 0; i < b.n; i++) y[i] = (int)(tu_next(&r) % (uint64_t)C);
    int O = tbert_head_out_dim(&cfg);
    tbert_head_ws *wd, *wsp;
    assert_int_equal(tbert_head_ws_create(&cfg, b.n, &wd, NULL), TBERT_OK);
    assert_int_equal(tbert_head_ws_create(&cfg, b.n, &wsp, NULL), TBERT_OK);
    float zd[9 * 5], zs[9 * 5], dz[9 * 5];
    float *gd = malloc(sizeof(float) * h->n_params), *gs = malloc(sizeof(float) * h->n_params);
    memset(gs, 0xff, sizeof(float) * h->n_params); /* NaN where the sparse backward does not write */
    bool train = dropout > 0;
    tbert_rng r1, r2;
    tbert_rng_seed(&r1, seed ^ 5);
    r2 = r1;
    assert_int_equal(tbert_head_forward(h, wd, b.n, b.x, train, &r1, zd, NULL), TBERT_OK);
    assert_int_equal(tbert_head_forward_rows(h, wsp, &b.rows, train, &r2, zs, NULL), TBERT_OK);
    assert_memory_equal(&r1, &r2, sizeof r1); /* same draws */
    char what[96];
    snprintf(what, sizeof what, "logits hidden=%d binary=%d C=%d p=%g dd=%zu", hidden, binary, C, (double)dropout, dd);
    assert_int_equal(tu_compare(what, zs, zd, (size_t)b.n * O, 1e-6, 1e-5), 0);
    double loss;
    assert_int_equal(tbert_head_loss(&cfg, b.n, zd, y, NULL, &loss, dz, NULL), TBERT_OK);
    assert_int_equal(tbert_head_backward(h, wd, b.n, b.x, dz, gd, NULL), TBERT_OK);
    assert_int_equal(tbert_head_backward_rows(h, wsp, &b.rows, dz, gs, NULL), TBERT_OK);
    snprintf(what, sizeof what, "grad hidden=%d binary=%d C=%d p=%g dd=%zu", hidden, binary, C, (double)dropout, dd);
    assert_int_equal(tu_compare(what, gs, gd, h->n_params, 1e-6, 1e-5), 0);
    if (hidden == 0 && train) { /* documented: the dense path on the densified batch */
        assert_memory_equal(zs, zd, sizeof(float) * (size_t)b.n * O);
        assert_memory_equal(gs, gd, sizeof(float) * h->n_params);
    }
    if (!train) { /* finite differences of the float64 loss */
        double *P = malloc(sizeof(double) * h->n_params), *num = malloc(sizeof(double) * h->n_params);
        for (size_t i = 0; i < h->n_params; i++) P[i] = h->params[i];
        double lref = tu_head_ref_loss(h, P, b.x, b.n, y), eps = 1e-5, gn = 0;
        assert_true(fabs(loss - lref) <= 1e-5 + 1e-5 * fabs(lref));
        for (size_t i = 0; i < h->n_params; i++) {
            double keep = P[i];
            P[i] = keep + eps;
            double lp = tu_head_ref_loss(h, P, b.x, b.n, y);
            P[i] = keep - eps;
            double lm = tu_head_ref_loss(h, P, b.x, b.n, y);
            P[i] = keep;
            num[i] = (lp - lm) / (2 * eps);
            gn += num[i] * num[i];
        }
        assert_true(gn > 1e-6);
        snprintf(what, sizeof what, "fd grad hidden=%d binary=%d C=%d dd=%zu", hidden, binary, C, dd);
        assert_int_equal(tu_compare_f64(what, gs, num, h->n_params, 2e-4, 2e-3), 0);
        free(P);
        free(num);
    }
    /* inference on rows scores exactly as the dense head does */
    float pd[9 * 5], ps[9 * 5];
    assert_int_equal(tbert_head_predict(h, b.n, b.x, pd, NULL), TBERT_OK);
    assert_int_equal(tbert_head_predict_rows(h, &b.rows, ps, NULL), TBERT_OK);
    assert_memory_equal(pd, ps, sizeof(float) * (size_t)b.n * C);
    free(gd);
    free(gs);
    tbert_head_ws_free(wd);
    tbert_head_ws_free(wsp);
    tbert_head_free(h);
    free_batch(&b);
}

static void test_sparse_equals_dense(void **state) {
    (void)state;
    uint64_t seed = tu_seed_from_env("test_head_sparse");
    const int hiddens[2] = {0, 6};
    const size_t dds[2] = {0, 5};
    uint64_t k = 0;
    for (int hi = 0; hi < 2; hi++)
        for (int di = 0; di < 2; di++) {
            check_variant(hiddens[hi], true, 2, 0.0f, dds[di], seed + k++);
            check_variant(hiddens[hi], false, 3, 0.0f, dds[di], seed + k++);
            check_variant(hiddens[hi], true, 2, 0.3f, dds[di], seed + k++);
        }
}

/* predict_rows over more than one chunk (256 rows) equals predict on the dense matrix, bit for bit */
static void test_predict_chunks(void **state) {
    (void)state;
    tu_rng r = {tu_seed_from_env("test_head_sparse_predict")};
    batch b;
    make_batch(&b, &r, 300, 4, 40, 0.1);
    tbert_head_config cfg = {.in_dim = (int)b.dim, .n_classes = 2, .binary = true, .positive = 1};
    tbert_head *h;
    assert_int_equal(tbert_head_create(&cfg, &h, NULL), TBERT_OK);
    tbert_head_init(h, 3);
    float *pd = malloc(sizeof(float) * 600), *ps = malloc(sizeof(float) * 600);
    assert_int_equal(tbert_head_predict(h, b.n, b.x, pd, NULL), TBERT_OK);
    assert_int_equal(tbert_head_predict_rows(h, &b.rows, ps, NULL), TBERT_OK);
    assert_memory_equal(pd, ps, sizeof(float) * 600);
    tbert_error err;
    tbert_head_ws *ws;
    assert_int_equal(tbert_head_ws_create(&cfg, 8, &ws, NULL), TBERT_OK);
    assert_int_equal(tbert_head_forward_rows(h, ws, &b.rows, false, NULL, ps, &err), TBERT_E_ARG); /* 300 > 8 rows */
    tbert_head_ws_free(ws);
    free(pd);
    free(ps);
    tbert_head_free(h);
    free_batch(&b);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_sparse_equals_dense), cmocka_unit_test(test_predict_chunks)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
