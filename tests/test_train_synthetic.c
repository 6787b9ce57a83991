/* End to end on synthetic features: a separable set reaches 100% training accuracy (linear and MLP heads,
 * binary and 3 classes); with shuffled labels the test accuracy stays at chance; the stratified split keeps
 * class proportions and is a partition. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tbert/train.h"

/* X (n x D) as rows: the first D/2 columns the dense block, the rest one sparse block (zeros dropped) */
static const tbert_rows *rows_of(tbert_rows *rows, const float *X, int n, int D) {
    size_t sw = (size_t)(D - D / 2);
    assert_int_equal(tbert_rows_init(rows, (size_t)(D / 2), 1, &sw, NULL), TBERT_OK);
    assert_int_equal(tbert_rows_append_dense(rows, n, X, NULL), TBERT_OK);
    return rows;
}

static void make_blobs(tu_rng *r, int n, int D, int C, float sep, float *X, int *y) {
    for (int i = 0; i < n; i++) {
        y[i] = i % C;
        for (int d = 0; d < D; d++) X[(size_t)i * D + d] = tu_normal(r) * 0.5f + (d == y[i] ? sep : 0.0f);
    }
}

static void fit_and_check(int hidden, int C, uint64_t seed) {
    tu_rng r = {seed};
    int n = 240, D = 12;
    float *X = malloc(sizeof(float) * n * D);
    tbert_rows rows;
    int *y = malloc(sizeof(int) * n);
    make_blobs(&r, n, D, C, 4.0f, X, y);
    int *tr, *va, *te, ntr, nva, nte;
    assert_int_equal(tbert_split_stratified(n, y, C, 0.1, 0.2, seed, &tr, &ntr, &va, &nva, &te, &nte, NULL), TBERT_OK);
    tbert_fit_data d = {.n_classes = C, .positive = C == 2 ? 1 : -1, .dim = (size_t)D, .X = rows_of(&rows, X, n, D), .y = y, .n_train = ntr,
                        .n_val = nva, .n_test = nte, .train_idx = tr, .val_idx = va, .test_idx = te};
    tbert_hparams hp;
    tbert_hparams_preset("text", &hp);
    hp.hidden = hidden;
    hp.dropout = 0;
    hp.epochs = 40;
    hp.lr = 1e-2;
    hp.progress = TBERT_PROGRESS_OFF;
    hp.seed = seed;
    tbert_fit_result res;
    tbert_error err;
    tbert_status st = tbert_fit(&d, &hp, NULL, &res, &err);
    if (st) fail_msg("fit: %s", err.msg);
    print_message("hidden=%d C=%d: train acc %.4f val %.4f test %.4f best epoch %d\n", hidden, C, res.train.accuracy,
                  res.val.accuracy, res.test.accuracy, res.best_epoch);
    assert_float_equal(res.train.accuracy, 1.0, 0);
    assert_true(res.test.accuracy >= 0.95);
    assert_true(res.train_loss[hp.epochs - 1] < res.train_loss[0]);
    tbert_fit_result_free(&res);
    free(tr);
    free(va);
    free(te);
    tbert_rows_free(&rows);
    free(X);
    free(y);
}

static void test_separable(void **state) {
    uint64_t seed = tu_seed_from_env("test_train_synthetic");
    fit_and_check(0, 2, seed);
    fit_and_check(16, 2, seed + 1);
    fit_and_check(0, 3, seed + 2);
    fit_and_check(16, 3, seed + 3);
}

static void test_shuffled_labels_chance(void **state) {
    uint64_t seed = tu_seed_from_env("test_train_shuffled");
    tu_rng r = {seed};
    int n = 600, D = 20;
    float *X = malloc(sizeof(float) * n * D);
    tbert_rows rows;
    int *y = malloc(sizeof(int) * n);
    for (int i = 0; i < n * D; i++) X[i] = tu_normal(&r);
    for (int i = 0; i < n; i++) y[i] = (int)(tu_next(&r) & 1); /* labels independent of X */
    int *tr, *va, *te, ntr, nva, nte;
    assert_int_equal(tbert_split_stratified(n, y, 2, 0.15, 0.3, seed, &tr, &ntr, &va, &nva, &te, &nte, NULL), TBERT_OK);
    tbert_fit_data d = {.n_classes = 2, .positive = 1, .dim = (size_t)D, .X = rows_of(&rows, X, n, D), .y = y, .n_train = ntr, .n_val = nva,
                        .n_test = nte, .train_idx = tr, .val_idx = va, .test_idx = te};
    tbert_hparams hp;
    tbert_hparams_preset("text", &hp);
    hp.hidden = 32;
    hp.epochs = 30;
    hp.lr = 3e-3;
    hp.progress = TBERT_PROGRESS_OFF;
    hp.threshold = "0.5";
    tbert_fit_result res;
    tbert_error err;
    assert_int_equal(tbert_fit(&d, &hp, NULL, &res, &err), TBERT_OK);
    /* chance is 0.5; 4 standard deviations of a binomial over the test split */
    double bound = 0.5 + 4 * sqrt(0.25 / nte);
    print_message("shuffled: train acc %.3f (memorised) test acc %.3f (bound %.3f), test ROC-AUC %.3f\n",
                  res.train_acc[hp.epochs - 1], res.test.accuracy, bound, res.test.roc_auc);
    assert_true(res.test.accuracy <= bound);
    assert_true(res.test.roc_auc <= 0.5 + 4 * sqrt(1.0 / (3.0 * nte)));
    tbert_fit_result_free(&res);
    free(tr);
    free(va);
    free(te);
    tbert_rows_free(&rows);
    free(X);
    free(y);
}

/* Cross-fitting (cv_folds): the out-of-fold probabilities are really held out (with labels independent of X
 * the final head memorises its training set, but the out-of-fold accuracy and ROC-AUC stay at chance), every
 * training example gets one, the threshold is the rule applied to them, and the kept head is the ensemble of
 * the fold heads (tests/test_crossfit.c checks that ensemble's arithmetic). */
static void test_cross_fitting(void **state) {
    uint64_t seed = tu_seed_from_env("test_train_cv");
    tu_rng r = {seed};
    int n = 500, D = 400, K = 5;
    float *X = malloc(sizeof(float) * n * D);
    tbert_rows rows;
    int *y = malloc(sizeof(int) * n);
    for (int i = 0; i < n * D; i++) X[i] = tu_normal(&r);
    for (int i = 0; i < n; i++) y[i] = (int)(tu_next(&r) & 1);
    int *tr, *va, *te, ntr, nva, nte;
    assert_int_equal(tbert_split_stratified(n, y, 2, 0, 0.2, seed, &tr, &ntr, &va, &nva, &te, &nte, NULL), TBERT_OK);
    assert_int_equal(nva, 0);
    tbert_fit_data d = {.n_classes = 2, .positive = 1, .dim = (size_t)D, .X = rows_of(&rows, X, n, D), .y = y, .n_train = ntr, .n_val = 0,
                        .n_test = nte, .train_idx = tr, .val_idx = va, .test_idx = te};
    tbert_hparams hp;
    tbert_hparams_preset("text", &hp);
    hp.hidden = 0;
    hp.dropout = 0;
    hp.epochs = 40;
    hp.batch = 8; /* many steps per epoch: one epoch already memorises part of the training set */
    hp.lr = 3e-2;
    hp.progress = TBERT_PROGRESS_OFF;
    hp.threshold = "fpr=0.1";
    hp.cv_folds = K;
    tbert_fit_result res;
    tbert_error err;
    tbert_status st = tbert_fit(&d, &hp, NULL, &res, &err);
    if (st) fail_msg("fit: %s", err.msg);
    print_message("cv: final head %d epochs (train ROC-AUC %.3f), out-of-fold acc %.3f ROC-AUC %.3f, threshold %.4f\n",
                  res.epochs_run, res.train.roc_auc, res.val.accuracy, res.val.roc_auc, (double)res.threshold);
    assert_int_equal(res.n_oof, ntr);
    assert_int_equal(res.val.n, ntr);
    assert_int_equal(res.epochs_run, hp.epochs); /* the folds' history; the kept head is their ensemble */
    assert_true(res.best_epoch >= 1 && res.best_epoch <= hp.epochs); /* the folds' median best epoch */
    double bound = 0.5 + 4 * sqrt(0.25 / ntr);
    double auc_bound = 0.5 + 4 * sqrt(1.0 / (3.0 * ntr));
    assert_true(res.train.roc_auc > auc_bound); /* in-sample probabilities are far from chance */
    assert_true(res.val.accuracy <= bound);
    assert_true(res.val.roc_auc <= auc_bound);
    /* the threshold is the rule on the out-of-fold scores: at most 10% of the negatives above it */
    float *s = malloc(sizeof(float) * ntr);
    bool *pos = malloc(sizeof(bool) * ntr);
    for (int i = 0; i < ntr; i++) {
        s[i] = res.val_probs[(size_t)i * 2 + 1];
        pos[i] = y[tr[i]] == 1;
    }
    float t;
    assert_int_equal(tbert_threshold_choose("fpr=0.1", ntr, s, pos, &t, NULL), TBERT_OK);
    assert_float_equal(t, res.threshold, 0);
    free(s);
    free(pos);
    tbert_fit_result_free(&res);
    /* too few examples for the folds: one line, no crash */
    d.n_train = 2 * K - 1;
    assert_int_equal(tbert_fit(&d, &hp, NULL, &res, &err), TBERT_E_ARG);
    assert_non_null(strstr(err.msg, "folds"));
    free(tr);
    free(va);
    free(te);
    tbert_rows_free(&rows);
    free(X);
    free(y);
}

static void test_split(void **state) {
    int n = 1003, y[1003];
    for (int i = 0; i < n; i++) y[i] = i % 10 == 0 ? 1 : (i % 10 < 4 ? 2 : 0); /* 10% / 30% / 60% */
    int *tr, *va, *te, ntr, nva, nte;
    assert_int_equal(tbert_split_stratified(n, y, 3, 0.1, 0.2, 42, &tr, &ntr, &va, &nva, &te, &nte, NULL), TBERT_OK);
    assert_int_equal(ntr + nva + nte, n);
    char *seen = calloc(n, 1);
    int cnt[3][3] = {{0}};
    for (int i = 0; i < ntr; i++) seen[tr[i]]++, cnt[0][y[tr[i]]]++;
    for (int i = 0; i < nva; i++) seen[va[i]]++, cnt[1][y[va[i]]]++;
    for (int i = 0; i < nte; i++) seen[te[i]]++, cnt[2][y[te[i]]]++;
    for (int i = 0; i < n; i++) assert_int_equal(seen[i], 1);
    for (int i = 1; i < ntr; i++) assert_true(tr[i - 1] < tr[i]);
    /* class 1 has 101 items: round(20.2) = 20 test, round(10.1) = 10 val */
    assert_int_equal(cnt[2][1], 20);
    assert_int_equal(cnt[1][1], 10);
    assert_int_equal(cnt[0][1], 71);
    /* same seed, same split; another seed, another split */
    int *tr2, *va2, *te2, a, b2, c;
    assert_int_equal(tbert_split_stratified(n, y, 3, 0.1, 0.2, 42, &tr2, &a, &va2, &b2, &te2, &c, NULL), TBERT_OK);
    assert_memory_equal(te, te2, sizeof(int) * nte);
    free(tr2), free(va2), free(te2);
    assert_int_equal(tbert_split_stratified(n, y, 3, 0.1, 0.2, 43, &tr2, &a, &va2, &b2, &te2, &c, NULL), TBERT_OK);
    assert_memory_not_equal(te, te2, sizeof(int) * nte);
    free(tr2), free(va2), free(te2);
    /* zero fractions allowed; fractions summing to 1 are not */
    free(tr), free(va), free(te);
    assert_int_equal(tbert_split_stratified(n, y, 3, 0, 0, 1, &tr, &ntr, &va, &nva, &te, &nte, NULL), TBERT_OK);
    assert_int_equal(ntr, n);
    free(tr), free(va), free(te);
    tbert_error err;
    assert_int_equal(tbert_split_stratified(n, y, 3, 0.5, 0.5, 1, &tr, &ntr, &va, &nva, &te, &nte, &err), TBERT_E_ARG);
    free(seen);
}

/* The optimiser reaches the optimum: a linear head trained with full-batch Adam on a non-separable problem
 * ends at the maximum-likelihood logistic regression found independently by Newton's method in double
 * precision (loss within 1e-6 relative, weights within 2e-3). */
static double lr_loss(int n, int D, const float *X, const int *y, const double *w) {
    double l = 0;
    for (int i = 0; i < n; i++) {
        double z = w[D];
        for (int d = 0; d < D; d++) z += w[d] * X[(size_t)i * D + d];
        l += fmax(z, 0) - z * y[i] + log1p(exp(-fabs(z)));
    }
    return l / n;
}

static void newton_lr(int n, int D, const float *X, const int *y, double *w) {
    int P = D + 1;
    double *Hm = malloc(sizeof(double) * P * P), g[16];
    memset(w, 0, sizeof(double) * P);
    for (int it = 0; it < 50; it++) {
        memset(Hm, 0, sizeof(double) * P * P);
        memset(g, 0, sizeof g);
        for (int i = 0; i < n; i++) {
            double xi[16], z = 0;
            for (int d = 0; d < D; d++) xi[d] = X[(size_t)i * D + d];
            xi[D] = 1;
            for (int d = 0; d < P; d++) z += w[d] * xi[d];
            double p = 1 / (1 + exp(-z)), s = p * (1 - p);
            for (int a = 0; a < P; a++) {
                g[a] += (p - y[i]) * xi[a];
                for (int b = 0; b < P; b++) Hm[a * P + b] += s * xi[a] * xi[b];
            }
        }
        /* solve Hm dx = g by Gaussian elimination with partial pivoting */
        double A[16][17];
        for (int a = 0; a < P; a++) {
            for (int b = 0; b < P; b++) A[a][b] = Hm[a * P + b];
            A[a][P] = g[a];
        }
        for (int c = 0; c < P; c++) {
            int piv = c;
            for (int r = c + 1; r < P; r++)
                if (fabs(A[r][c]) > fabs(A[piv][c])) piv = r;
            for (int k = 0; k <= P; k++) {
                double t = A[c][k];
                A[c][k] = A[piv][k];
                A[piv][k] = t;
            }
            for (int r = 0; r < P; r++) {
                if (r == c) continue;
                double f = A[r][c] / A[c][c];
                for (int k = c; k <= P; k++) A[r][k] -= f * A[c][k];
            }
        }
        for (int a = 0; a < P; a++) w[a] -= A[a][P] / A[a][a];
    }
    free(Hm);
}

static void test_reaches_logistic_optimum(void **state) {
    uint64_t seed = tu_seed_from_env("test_train_optimum");
    tu_rng r = {seed};
    int n = 400, D = 5;
    float *X = malloc(sizeof(float) * n * D);
    tbert_rows rows;
    int *y = malloc(sizeof(int) * n), *idx = malloc(sizeof(int) * n);
    double wt[6] = {1.5, -2.0, 0.5, 0.0, 1.0, -0.3};
    for (int i = 0; i < n; i++) {
        double z = wt[D];
        for (int d = 0; d < D; d++) z += wt[d] * (X[(size_t)i * D + d] = tu_normal(&r));
        y[i] = tu_uniform(&r) < 1 / (1 + exp(-z)); /* labels drawn from the model: not separable */
        idx[i] = i;
    }
    double w[6];
    newton_lr(n, D, X, y, w);
    double lref = lr_loss(n, D, X, y, w);
    tbert_fit_data d = {.n_classes = 2, .positive = 1, .dim = (size_t)D, .X = rows_of(&rows, X, n, D), .y = y, .n_train = n, .train_idx = idx};
    tbert_hparams hp;
    tbert_hparams_preset("seed", &hp);
    hp.hidden = 0;
    hp.batch = n; /* full batch: a deterministic objective */
    hp.epochs = 3000;
    hp.lr = 0.02;
    hp.progress = TBERT_PROGRESS_OFF;
    hp.threshold = "0.5";
    tbert_fit_result res;
    tbert_error err;
    assert_int_equal(tbert_fit(&d, &hp, NULL, &res, &err), TBERT_OK);
    double got[6];
    for (int k = 0; k < D; k++) got[k] = res.best->w2[k];
    got[D] = res.best->b2[0];
    double lgot = lr_loss(n, D, X, y, got);
    print_message("newton loss %.9f, tbert loss %.9f (train metric %.9f); w* = %.4f %.4f %.4f %.4f %.4f b %.4f\n", lref, lgot,
                  res.train.loss, w[0], w[1], w[2], w[3], w[4], w[5]);
    assert_true(lgot >= lref - 1e-12);
    assert_true(lgot - lref <= 1e-6 * lref);
    for (int k = 0; k <= D; k++)
        if (fabs(got[k] - w[k]) > 2e-3) fail_msg("weight %d: tbert %.6f vs newton %.6f", k, got[k], w[k]);
    tbert_fit_result_free(&res);
    tbert_rows_free(&rows);
    free(X);
    free(y);
    free(idx);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_separable),
        cmocka_unit_test(test_shuffled_labels_chance),
        cmocka_unit_test(test_cross_fitting),
        cmocka_unit_test(test_split),
        cmocka_unit_test(test_reaches_logistic_optimum),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
