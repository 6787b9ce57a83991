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


/* The folds' bookkeeping both cross-fittings share (tbert_cv_work: src/crossfit.c, used by src/finetune.c too):
 * each fold's split is the other folds / this fold, stratified, ascending; the history is the folds' mean; every
 * training row's out-of-fold probabilities are those its own fold's fit gave it (written here by row number, so a
 * row left out or taken from another fold shows); the median best epoch; the refusals. */
static void test_cv_work(void **state) {
    (void)state;
    enum { N_ROWS = 33, N = 30, K = 3, E = 3 };
    int y[N_ROWS], train_idx[N];
    for (int r = 0; r < N_ROWS; r++) y[r] = r % 3 == 0;
    for (int i = 0; i < N; i++) train_idx[i] = i + 2 + (i >= 20); /* rows 0, 1 and 22 are not training rows */
    tbert_fit_data d = {.n_classes = 2, .positive = 1, .y = y, .n_train = N, .train_idx = train_idx};
    tbert_hparams hp = {.cv_folds = K, .seed = 7, .threshold = "0.5", .progress = TBERT_PROGRESS_LOG, .keep_last = true};
    tbert_cv_work w;
    tbert_error err;
    assert_int_equal(tbert_cv_work_init(&w, &d, &hp, E, "test", &err), TBERT_OK);
    const int best[K] = {3, 1, 2};
    int seen[N_ROWS] = {0};
    for (int k = 0; k < K; k++) {
        tbert_fit_data fd;
        tbert_hparams fh;
        tbert_cv_fold_setup(&w, &d, &hp, k, &fd, &fh);
        assert_int_equal(fd.n_train + fd.n_val, N);
        assert_true(fd.n_val >= N / K - 1 && fd.n_val <= N / K + 1);
        assert_int_equal(fd.n_test, 0);
        assert_int_equal(fh.cv_folds, 0);
        assert_false(fh.keep_last);
        assert_int_equal(fh.progress, TBERT_PROGRESS_OFF);
        assert_true(fh.seed == 7 + 1000003ull * (uint64_t)(k + 1));
        int pos = 0;
        for (int j = 0; j < fd.n_val; j++) {
            if (j > 0) assert_true(fd.val_idx[j] > fd.val_idx[j - 1]);
            pos += y[fd.val_idx[j]];
            seen[fd.val_idx[j]]++;
        }
        assert_true(pos >= 3 && pos <= 4); /* 10 positives over 3 folds */
        for (int j = 0; j < fd.n_train; j++)
            for (int v = 0; v < fd.n_val; v++) assert_int_not_equal(fd.train_idx[j], fd.val_idx[v]);
        double hist[4][E];
        float probs[N * 2];
        for (int e = 0; e < E; e++)
            for (int q = 0; q < 4; q++) hist[q][e] = 10.0 * q + k + e;
        for (int j = 0; j < fd.n_val; j++) {
            float p = (float)fd.val_idx[j] / 100.0f;
            probs[2 * j] = 1.0f - p;
            probs[2 * j + 1] = p;
        }
        tbert_fit_result fr = {.best_epoch = best[k], .train_loss = hist[0], .train_acc = hist[1], .val_loss = hist[2],
                               .val_acc = hist[3], .val_probs = probs};
        tbert_cv_fold_record(&w, k, &fr);
    }
    for (int i = 0; i < N; i++) assert_int_equal(seen[train_idx[i]], 1);
    for (int q = 0; q < 4; q++)
        for (int e = 0; e < E; e++) assert_true(fabs(w.hist[q][e] - (10.0 * q + 1.0 + e)) < 1e-12); /* mean of k = 0, 1, 2 */
    float thr = 0;
    int pos_cls = -2, median = 0;
    assert_int_equal(tbert_cv_threshold(&w, &d, &hp, &thr, &pos_cls, &median, &err), TBERT_OK);
    assert_true(thr == 0.5f);
    assert_int_equal(pos_cls, 1);
    assert_int_equal(median, 2);
    for (int i = 0; i < N; i++) {
        float p = (float)train_idx[i] / 100.0f;
        assert_true(w.oof[2 * i] == 1.0f - p && w.oof[2 * i + 1] == p);
        assert_true(w.sc[i] == p);
        assert_int_equal(w.y[i], y[train_idx[i]]);
        assert_int_equal(w.pos[i], y[train_idx[i]] == 1);
    }
    tbert_cv_work_free(&w);
    /* refusals, with nothing left to free */
    d.n_val = 1;
    assert_int_equal(tbert_cv_work_init(&w, &d, &hp, E, "test", &err), TBERT_E_ARG);
    assert_null(w.fold);
    d.n_val = 0;
    d.n_train = 2 * K - 1;
    assert_int_equal(tbert_cv_work_init(&w, &d, &hp, E, "test", &err), TBERT_E_ARG);
    d.n_train = N;
    assert_int_equal(tbert_cv_work_init(&w, &d, &hp, 0, "test", &err), TBERT_E_ARG);
    tbert_cv_work_free(&w);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_linear), cmocka_unit_test(test_mlp), cmocka_unit_test(test_refused),
                                       cmocka_unit_test(test_cv_work)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
