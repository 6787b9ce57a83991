/* Backward pass of every head variant (linear / MLP, binary / multi-class, with and without class weights)
 * against central finite differences of the loss in float64. The float32 analytic gradient is compared with
 * a float64 numeric one: |g - ref| <= 2e-4 + 2e-3 |ref| (finite differences of a float64 re-implementation
 * of the forward pass with step 1e-5, so the numeric side carries ~1e-9 error). Also: the float32 forward
 * against the float64 forward, and dropout semantics (mask drawn as documented). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tbert/head.h"

/* float64 reference forward + loss, written independently of src/head.c from the formulas in head.h */
static double ref_loss(const tbert_head *h, const double *P, int n, const float *x, const int *y, const float *cw,
                       double *zout) {
    const tbert_head_config *c = &h->cfg;
    int D = c->in_dim, Hd = c->hidden, O = c->binary ? 1 : c->n_classes;
    const double *w1 = NULL, *b1 = NULL, *w2, *b2;
    int k = 0;
    if (Hd) {
        w1 = P + h->tensors[k++].offset;
        b1 = P + h->tensors[k++].offset;
    }
    w2 = P + h->tensors[k++].offset;
    b2 = P + h->tensors[k++].offset;
    int K = Hd ? Hd : D;
    double *hv = malloc(sizeof(double) * K);
    double total = 0;
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * D;
        for (int j = 0; j < K; j++) {
            if (Hd) {
                double a = b1[j];
                for (int d = 0; d < D; d++) a += w1[(size_t)j * D + d] * xi[d];
                hv[j] = 0.5 * a * (1 + erf(a / sqrt(2.0)));
            } else {
                hv[j] = xi[j];
            }
        }
        double z[16];
        for (int o = 0; o < O; o++) {
            z[o] = b2[o];
            for (int j = 0; j < K; j++) z[o] += w2[(size_t)o * K + j] * hv[j];
            if (zout) zout[(size_t)i * O + o] = z[o];
        }
        double w = cw ? cw[y[i]] : 1.0, l;
        if (c->binary) {
            double t = y[i] == c->positive;
            double p = 1 / (1 + exp(-z[0]));
            l = -(t * log(p) + (1 - t) * log(1 - p));
        } else {
            double se = 0;
            for (int o = 0; o < O; o++) se += exp(z[o]);
            l = log(se) - z[y[i]];
        }
        total += w * l;
    }
    free(hv);
    return total / n;
}

static void check_variant(int hidden, bool binary, int C, bool weighted, uint64_t seed) {
    tbert_head_config cfg = {.in_dim = 7, .hidden = hidden, .n_classes = C, .binary = binary, .positive = binary ? 1 : 0};
    tbert_head *h;
    assert_int_equal(tbert_head_create(&cfg, &h, NULL), TBERT_OK);
    tbert_head_init(h, seed);
    tu_rng r = {seed};
    int n = 9;
    float *x = malloc(sizeof(float) * n * cfg.in_dim);
    int y[9];
    for (int i = 0; i < n * cfg.in_dim; i++) x[i] = tu_normal(&r);
    for (int i = 0; i < n; i++) y[i] = (int)(tu_next(&r) % (uint64_t)C);
    /* make logits non-trivial: scale weights up */
    for (size_t i = 0; i < h->n_params; i++) h->params[i] *= 2.0f;
    float cw[5] = {0.7f, 2.5f, 1.3f, 0.4f, 1.9f};
    const float *cwp = weighted ? cw : NULL;

    int O = tbert_head_out_dim(&cfg);
    tbert_head_ws *ws;
    assert_int_equal(tbert_head_ws_create(&cfg, n, &ws, NULL), TBERT_OK);
    float z[9 * 5], dz[9 * 5];
    assert_int_equal(tbert_head_forward(h, ws, n, x, false, NULL, z, NULL), TBERT_OK);
    double loss;
    assert_int_equal(tbert_head_loss(&cfg, n, z, y, cwp, &loss, dz, NULL), TBERT_OK);
    float *grad = malloc(sizeof(float) * h->n_params);
    memset(grad, 0xff, sizeof(float) * h->n_params); /* poison: NaN everywhere it is not written */
    assert_int_equal(tbert_head_backward(h, ws, n, x, dz, grad, NULL), TBERT_OK);

    double *P = malloc(sizeof(double) * h->n_params), *num = malloc(sizeof(double) * h->n_params);
    for (size_t i = 0; i < h->n_params; i++) P[i] = h->params[i];
    double zref[9 * 5];
    double lref = ref_loss(h, P, n, x, y, cwp, zref);
    char what[96];
    snprintf(what, sizeof what, "forward hidden=%d binary=%d C=%d w=%d", hidden, binary, C, weighted);
    assert_int_equal(tu_compare_f64(what, z, zref, (size_t)n * O, 1e-5, 1e-5), 0);
    assert_true(fabs(loss - lref) <= 1e-5 + 1e-5 * fabs(lref));
    const double eps = 1e-5;
    for (size_t i = 0; i < h->n_params; i++) {
        double keep = P[i];
        P[i] = keep + eps;
        double lp = ref_loss(h, P, n, x, y, cwp, NULL);
        P[i] = keep - eps;
        double lm = ref_loss(h, P, n, x, y, cwp, NULL);
        P[i] = keep;
        num[i] = (lp - lm) / (2 * eps);
    }
    snprintf(what, sizeof what, "grad hidden=%d binary=%d C=%d w=%d", hidden, binary, C, weighted);
    assert_int_equal(tu_compare_f64(what, grad, num, h->n_params, 2e-4, 2e-3), 0);
    /* the gradient must not be trivially zero */
    double gn = 0;
    for (size_t i = 0; i < h->n_params; i++) gn += num[i] * num[i];
    assert_true(gn > 1e-6);
    free(P);
    free(num);
    free(grad);
    free(x);
    tbert_head_ws_free(ws);
    tbert_head_free(h);
}

static void test_grad_all_variants(void **state) {
    uint64_t seed = tu_seed_from_env("test_head_grad");
    int hiddens[2] = {0, 5};
    for (int hi = 0; hi < 2; hi++)
        for (int w = 0; w < 2; w++) {
            check_variant(hiddens[hi], true, 2, w, seed + (uint64_t)(hi * 4 + w));
            check_variant(hiddens[hi], false, 2, w, seed + 100 + (uint64_t)(hi * 4 + w));
            check_variant(hiddens[hi], false, 5, w, seed + 200 + (uint64_t)(hi * 4 + w));
        }
}

/* Dropout: masks follow the documented RNG order, kept units are scaled by 1/(1-p), and the backward uses
 * the same mask (finite differences with the mask frozen: forward twice with the same RNG state). */
static void test_dropout_grad(void **state) {
    tbert_head_config cfg = {.in_dim = 6, .hidden = 8, .n_classes = 2, .binary = true, .positive = 0, .dropout = 0.3f};
    tbert_head *h;
    assert_int_equal(tbert_head_create(&cfg, &h, NULL), TBERT_OK);
    tbert_head_init(h, 7);
    int n = 5;
    float x[30];
    int y[5] = {0, 1, 1, 0, 1};
    tu_rng r = {tu_seed_from_env("test_head_dropout")};
    for (int i = 0; i < 30; i++) x[i] = tu_normal(&r);
    tbert_head_ws *ws;
    assert_int_equal(tbert_head_ws_create(&cfg, n, &ws, NULL), TBERT_OK);
    tbert_rng rng0;
    tbert_rng_seed(&rng0, 99);
    tbert_rng rng = rng0;
    float z[5], dz[5];
    assert_int_equal(tbert_head_forward(h, ws, n, x, true, &rng, z, NULL), TBERT_OK);
    double loss;
    tbert_head_loss(&cfg, n, z, y, NULL, &loss, dz, NULL);
    float *grad = malloc(sizeof(float) * h->n_params);
    assert_int_equal(tbert_head_backward(h, ws, n, x, dz, grad, NULL), TBERT_OK);
    /* numeric gradient in float32 forward (mask frozen by replaying the RNG); looser tolerance */
    int dropped = 0;
    {
        tbert_rng m = rng0;
        for (int i = 0; i < n * cfg.hidden; i++) dropped += tbert_rng_uniform(&m) < 0.3;
    }
    assert_true(dropped > 0 && dropped < n * cfg.hidden);
    for (size_t i = 0; i < h->n_params; i += 3) {
        float keep = h->params[i];
        double e = 1e-2;
        h->params[i] = keep + (float)e;
        rng = rng0;
        tbert_head_forward(h, ws, n, x, true, &rng, z, NULL);
        double lp;
        tbert_head_loss(&cfg, n, z, y, NULL, &lp, NULL, NULL);
        h->params[i] = keep - (float)e;
        rng = rng0;
        tbert_head_forward(h, ws, n, x, true, &rng, z, NULL);
        double lm;
        tbert_head_loss(&cfg, n, z, y, NULL, &lm, NULL, NULL);
        h->params[i] = keep;
        double num = (lp - lm) / (2 * e);
        if (fabs(grad[i] - num) > 2e-3 + 2e-2 * fabs(num))
            fail_msg("dropout grad %zu: got %g numeric %g", i, (double)grad[i], num);
    }
    /* eval mode ignores dropout: deterministic and equal to a dropout-free head */
    float z1[5], z2[5];
    tbert_head_forward(h, ws, n, x, false, NULL, z1, NULL);
    tbert_head_forward(h, ws, n, x, false, NULL, z2, NULL);
    assert_memory_equal(z1, z2, sizeof z1);
    free(grad);
    tbert_head_ws_free(ws);
    tbert_head_free(h);
}

static void test_config_errors(void **state) {
    tbert_head *h = NULL;
    tbert_error err;
    tbert_head_config bad = {.in_dim = 4, .n_classes = 3, .binary = true};
    assert_int_equal(tbert_head_create(&bad, &h, &err), TBERT_E_ARG);
    assert_null(h);
    assert_non_null(strstr(err.msg, "2 classes"));
    tbert_head_config bad2 = {.in_dim = 4, .n_classes = 2, .dropout = 1.0f};
    assert_int_equal(tbert_head_create(&bad2, &h, &err), TBERT_E_ARG);
    tbert_head_config ok = {.in_dim = 4, .hidden = 3, .n_classes = 2, .binary = true, .positive = 1};
    assert_int_equal(tbert_head_create(&ok, &h, &err), TBERT_OK);
    assert_int_equal(h->n_params, 3 * 4 + 3 + 1 * 3 + 1);
    assert_string_equal(h->tensors[0].name, "fc1.weight");
    assert_string_equal(h->tensors[3].name, "fc2.bias");
    /* the loss refuses out-of-range labels */
    float z[1] = {0};
    int y[1] = {2};
    assert_int_equal(tbert_head_loss(&ok, 1, z, y, NULL, NULL, NULL, &err), TBERT_E_ARG);
    /* init is deterministic per seed and within the PyTorch bound */
    tbert_head *h2;
    assert_int_equal(tbert_head_create(&ok, &h2, &err), TBERT_OK);
    tbert_head_init(h, 5);
    tbert_head_init(h2, 5);
    assert_memory_equal(h->params, h2->params, h->n_params * sizeof(float));
    for (size_t i = 0; i < 15; i++) assert_true(fabsf(h->params[i]) <= 0.5f);
    tbert_head_init(h2, 6);
    assert_memory_not_equal(h->params, h2->params, h->n_params * sizeof(float));
    tbert_head_free(h);
    tbert_head_free(h2);
}

static void test_probs(void **state) {
    tbert_head_config b = {.in_dim = 1, .n_classes = 2, .binary = true, .positive = 0};
    float z[2] = {0.0f, 2.0f}, p[4];
    tbert_head_probs(&b, 2, z, p);
    assert_float_equal(p[0], 0.5f, 1e-7);
    assert_float_equal(p[2], 1.0 / (1.0 + exp(-2.0)), 1e-7);
    assert_float_equal(p[3], 1.0 - 1.0 / (1.0 + exp(-2.0)), 1e-7);
    tbert_head_config m = {.in_dim = 1, .n_classes = 3};
    float z3[3] = {1000.0f, 1000.0f, -1000.0f}, p3[3]; /* large logits stay finite */
    tbert_head_probs(&m, 1, z3, p3);
    assert_float_equal(p3[0], 0.5f, 1e-7);
    assert_float_equal(p3[2], 0.0f, 1e-7);
    double loss;
    int y[1] = {2};
    assert_int_equal(tbert_head_loss(&m, 1, z3, y, NULL, &loss, NULL, NULL), TBERT_OK);
    assert_true(fabs(loss - (2000.0 + log(2.0))) < 1e-6 * 2000);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grad_all_variants),
        cmocka_unit_test(test_dropout_grad),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_probs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
