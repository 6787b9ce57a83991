/* Fine-tuning's pieces outside the encoder stack (issue 15):
 * - tbert_head_backward_input_rows (d loss / d dense block) against central finite differences of a float64 loss
 *   written from head.h's formulas (linear and MLP heads, binary and 3 classes, with and without dropout: the
 *   float64 loss replays the documented mask, one tbert_rng_uniform per element in row-major order). Tolerance (the
 *   issue's fp32-against-float64 gradient rule): ||got - ref|| / ||ref|| < 1e-5 and per element
 *   |got - ref| <= 1e-5 * max|ref|.
 * - recipe_version 2: the "finetune" key written only for a fine-tuned recipe and read back; version 1 still loads
 *   (without "finetune"); a version-1 recipe with "finetune", version 3, a finetune deeper than the layers in use
 *   and a malformed base checksum are refused naming the problem. The training side: tests/test_finetune_train.sh. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tbert/head.h"
#include "tbert/recipe.h"
#include "tbert/rows.h"

/* float64 mean loss of head h (its own float32 parameters) on dense x (n x D) with dropout masks keep (n x K,
 * NULL = none) */
static double ref_loss(const tbert_head *h, int n, const double *x, const uint8_t *keep, const int *y) {
    const tbert_head_config *c = &h->cfg;
    int D = c->in_dim, Hd = c->hidden, O = tbert_head_out_dim(c), K = Hd ? Hd : D;
    double scale = keep ? 1.0 / (1.0 - (double)c->dropout) : 1.0, total = 0;
    double *hv = malloc(sizeof(double) * (size_t)K), *z = malloc(sizeof(double) * (size_t)O);
    for (int i = 0; i < n; i++) {
        const double *xi = x + (size_t)i * D;
        for (int j = 0; j < K; j++) {
            double v = Hd ? 0.0 : xi[j];
            if (Hd) {
                double a = h->b1[j];
                for (int d = 0; d < D; d++) a += (double)h->w1[(size_t)j * D + d] * xi[d];
                v = 0.5 * a * (1 + erf(a / sqrt(2.0)));
            }
            if (keep) v = keep[(size_t)i * K + j] ? v * scale : 0.0;
            hv[j] = v;
        }
        for (int o = 0; o < O; o++) {
            double s = h->b2[o];
            for (int j = 0; j < K; j++) s += (double)h->w2[(size_t)o * K + j] * hv[j];
            z[o] = s;
        }
        if (c->binary) {
            double t = y[i] == c->positive;
            total += fmax(z[0], 0.0) - z[0] * t + log1p(exp(-fabs(z[0])));
        } else {
            double mx = z[0], se = 0;
            for (int o = 1; o < O; o++) mx = fmax(mx, z[o]);
            for (int o = 0; o < O; o++) se += exp(z[o] - mx);
            total += mx + log(se) - z[y[i]];
        }
    }
    free(hv);
    free(z);
    return total / n;
}

static char *dup(const char *s) {
    char *d = malloc(strlen(s) + 1);
    assert_non_null(d);
    return memcpy(d, s, strlen(s) + 1);
}

static int check_case(int hidden, bool binary, float dropout, uint64_t seed) {
    const int n = 4, dd = 5, sparse = 30, D = dd + sparse;
    tu_rng r = {seed};
    double *x = calloc((size_t)n * D, sizeof(double));
    float *xf = calloc((size_t)n * D, sizeof(float));
    for (int i = 0; i < n; i++)
        for (int j = 0; j < D; j++) {
            float v = j < dd ? tu_normal(&r) : (tu_uniform(&r) < 0.2 ? (float)(0.2 + tu_uniform(&r)) : 0.0f);
            xf[(size_t)i * D + j] = v;
            x[(size_t)i * D + j] = v;
        }
    size_t w = sparse;
    tbert_rows rows;
    assert_int_equal(tbert_rows_init(&rows, dd, 1, &w, NULL), TBERT_OK);
    assert_int_equal(tbert_rows_append_dense(&rows, n, xf, NULL), TBERT_OK);
    int C = binary ? 2 : 3, y[4];
    for (int i = 0; i < n; i++) y[i] = (int)(tu_next(&r) % (uint64_t)C);
    tbert_head_config cfg = {.in_dim = D, .hidden = hidden, .n_classes = C, .binary = binary, .positive = 1, .dropout = dropout};
    tbert_head *h;
    tbert_head_ws *ws;
    assert_int_equal(tbert_head_create(&cfg, &h, NULL), TBERT_OK);
    tbert_head_init(h, seed);
    for (size_t i = 0; i < h->n_params; i++) h->params[i] *= 3.0f; /* logits away from 0: every term matters */
    assert_int_equal(tbert_head_ws_create(&cfg, n, &ws, NULL), TBERT_OK);
    int O = tbert_head_out_dim(&cfg), K = hidden ? hidden : D;
    float *z = malloc(sizeof(float) * (size_t)n * O), *dz = malloc(sizeof(float) * (size_t)n * O);
    float *grad = malloc(sizeof(float) * h->n_params), *grad2 = malloc(sizeof(float) * h->n_params);
    float *dx = malloc(sizeof(float) * (size_t)n * dd);
    double *ref = malloc(sizeof(double) * (size_t)n * dd);
    tbert_rng rng, replay;
    tbert_rng_seed(&rng, seed ^ 77);
    replay = rng;
    double loss;
    assert_int_equal(tbert_head_forward_rows(h, ws, &rows, true, &rng, z, NULL), TBERT_OK);
    assert_int_equal(tbert_head_loss(&cfg, n, z, y, NULL, &loss, dz, NULL), TBERT_OK);
    assert_int_equal(tbert_head_backward_rows(h, ws, &rows, dz, grad, NULL), TBERT_OK);
    memcpy(grad2, grad, sizeof(float) * h->n_params);
    assert_int_equal(tbert_head_backward_input_rows(h, ws, &rows, dz, dx, NULL), TBERT_OK);
    assert_memory_equal(grad, grad2, sizeof(float) * h->n_params); /* changes nothing else */
    uint8_t *keep = NULL;
    if (dropout > 0) { /* head.h: one uniform per element of the n x K block, row-major, kept when u >= p */
        keep = malloc((size_t)n * K);
        for (int i = 0; i < n * K; i++) keep[i] = tbert_rng_uniform(&replay) >= (double)dropout;
    }
    double l0 = ref_loss(h, n, x, keep, y);
    if (fabs(l0 - loss) > 1e-5 * fmax(1.0, fabs(l0))) fail_msg("loss %.9g vs float64 %.9g", loss, l0);
    const double eps = 1e-6;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < dd; j++) {
            double *p = &x[(size_t)i * D + j], keepv = *p;
            *p = keepv + eps;
            double lp = ref_loss(h, n, x, keep, y);
            *p = keepv - eps;
            double lm = ref_loss(h, n, x, keep, y);
            *p = keepv;
            ref[(size_t)i * dd + j] = (lp - lm) / (2 * eps);
        }
    double mx = 0, num = 0, den = 0;
    for (int i = 0; i < n * dd; i++) {
        mx = fmax(mx, fabs(ref[i]));
        num += (dx[i] - ref[i]) * (dx[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    char what[96];
    snprintf(what, sizeof what, "dx hidden %d %s dropout %.1f", hidden, binary ? "binary" : "3 classes", (double)dropout);
    size_t bad = tu_compare_f64(what, dx, ref, (size_t)(n * dd), 1e-5 * mx, 0.0);
    double ratio = sqrt(num / den);
    print_message("%s: ||dx - ref|| / ||ref|| = %.3g (max |ref| %.3g)\n", what, ratio, mx);
    if (!(ratio < 1e-5) || bad || !(mx > 1e-3)) fail_msg("%s: norm ratio %.3g, %zu elements off, max |ref| %.3g", what, ratio, bad, mx);
    free(keep);
    free(x);
    free(xf);
    free(z);
    free(dz);
    free(grad);
    free(grad2);
    free(dx);
    free(ref);
    tbert_head_ws_free(ws);
    tbert_head_free(h);
    tbert_rows_free(&rows);
    return 0;
}

static void test_backward_input(void **state) {
    (void)state;
    uint64_t seed = tu_seed_from_env("test_finetune_head");
    uint64_t k = 0;
    const int hiddens[2] = {0, 6};
    for (int hi = 0; hi < 2; hi++) {
        check_case(hiddens[hi], true, 0.0f, seed + k++);
        check_case(hiddens[hi], false, 0.0f, seed + k++);
        check_case(hiddens[hi], true, 0.3f, seed + k++);
        check_case(hiddens[hi], false, 0.3f, seed + k++);
    }
}

static void test_recipe_v2(void **state) {
    (void)state;
    tbert_recipe r, back;
    tbert_error err;
    assert_int_equal(tbert_recipe_preset("text", &r, NULL), TBERT_OK);
    assert_int_equal(r.recipe_version, 2);
    snprintf(r.model_hash, sizeof r.model_hash, "%064d", 0);
    r.model_hidden = 32;
    r.model_layers = 4;
    r.layers = 3;
    r.n_labels = 2;
    snprintf(r.labels[0], TBERT_MAX_LABEL_LEN, "ham");
    snprintf(r.labels[1], TBERT_MAX_LABEL_LEN, "spam");
    r.positive = 1;
    char *j = tbert_recipe_to_json(&r);
    assert_non_null(j);
    assert_non_null(strstr(j, "\"recipe_version\":2"));
    assert_null(strstr(j, "finetune")); /* K = 0: no key */
    assert_int_equal(tbert_recipe_from_json(j, "t", &back, &err), TBERT_OK);
    assert_int_equal(back.finetune.layers, 0);
    /* version 1 (older heads) still loads, as a frozen recipe */
    char *v1 = dup(j);
    memcpy(strstr(v1, "\"recipe_version\":2") + 17, "1", 1);
    assert_int_equal(tbert_recipe_from_json(v1, "t", &back, &err), TBERT_OK);
    assert_int_equal(back.recipe_version, 1);
    assert_int_equal(back.finetune.layers, 0);
    free(j);
    /* a fine-tuned recipe */
    const char *sha = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";
    r.finetune.layers = 2;
    snprintf(r.finetune.base_model_sha256, sizeof r.finetune.base_model_sha256, "%s", sha);
    j = tbert_recipe_to_json(&r);
    assert_non_null(strstr(j, "\"finetune\":{\"layers\":2,\"embeddings\":false,\"base_model_sha256\":\"53aa5117"));
    memset(&back, 0, sizeof back);
    assert_int_equal(tbert_recipe_from_json(j, "t", &back, &err), TBERT_OK);
    assert_int_equal(back.finetune.layers, 2);
    assert_false(back.finetune.embeddings);
    assert_string_equal(back.finetune.base_model_sha256, sha);
    char *j2 = tbert_recipe_to_json(&back);
    assert_string_equal(j, j2); /* round trip */
    free(j2);
    /* a version-1 recipe cannot carry "finetune" */
    char *bad1 = dup(j);
    memcpy(strstr(bad1, "\"recipe_version\":2") + 17, "1", 1);
    assert_int_equal(tbert_recipe_from_json(bad1, "t", &back, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "finetune"));
    /* version 3 is refused */
    char *bad3 = dup(j);
    memcpy(strstr(bad3, "\"recipe_version\":2") + 17, "3", 1);
    assert_int_equal(tbert_recipe_from_json(bad3, "t", &back, &err), TBERT_E_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "recipe_version 3"));
    free(j);
    /* deeper than the layers in use; a bad checksum */
    r.finetune.layers = 4;
    j = tbert_recipe_to_json(&r);
    assert_int_equal(tbert_recipe_from_json(j, "t", &back, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "finetune"));
    free(j);
    r.finetune.layers = 3; /* --finetune all */
    r.finetune.embeddings = true;
    assert_int_equal(tbert_recipe_from_json((j = tbert_recipe_to_json(&r)), "t", &back, &err), TBERT_OK);
    assert_true(back.finetune.embeddings);
    free(j);
    r.finetune.base_model_sha256[10] = 'X';
    j = tbert_recipe_to_json(&r);
    assert_int_equal(tbert_recipe_from_json(j, "t", &back, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "base_model_sha256"));
    free(j);
    free(v1);
    free(bad1);
    free(bad3);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_backward_input), cmocka_unit_test(test_recipe_v2)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
