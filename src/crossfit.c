/* K-fold cross-fitting (tbert_fit with cv_folds >= 2): K heads on stratified folds of the training split give
 * every example a held-out score; the threshold is chosen on those scores, the epoch count is the median of
 * the folds' best epochs, and the kept head trains on the whole training split (src/train.c's epochs loop). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tbert/train.h"
#include "train_internal.h"

/* K stratified folds of idx[0..n): per class, shuffled with the seed, dealt round-robin. fold[i] = fold of idx[i]. */
static void assign_folds(const tbert_fit_data *d, const int *idx, int n, int K, uint64_t seed, int *fold, int *scratch) {
    tbert_rng rng;
    tbert_rng_seed(&rng, seed ^ 0x6376666f6c6473ull); /* "cvfolds" */
    for (int c = 0; c < d->n_classes; c++) {
        int m = 0;
        for (int i = 0; i < n; i++)
            if (d->y[idx[i]] == c) scratch[m++] = i;
        tbert_rng_shuffle(&rng, scratch, m);
        for (int j = 0; j < m; j++) fold[scratch[j]] = j % K;
    }
}

tbert_status tbert_fit_cv(const tbert_fit_data *d, const tbert_hparams *hp, const tbert_fit_ckpt *ck, tbert_fit_result *r,
                          tbert_error *err) {
    memset(r, 0, sizeof *r);
    const int K = hp->cv_folds, n = d->n_train, C = d->n_classes;
    if (d->n_val > 0) return tbert_fail(err, TBERT_E_ARG, "train: cross-validation takes its folds from the training split (use --val-fraction 0)");
    if (n < 2 * K) return tbert_fail(err, TBERT_E_ARG, "train: %d training examples are too few for %d folds", n, K);
    int *fold = tbert_malloc_array((size_t)n, sizeof(int)), *scratch = tbert_malloc_array((size_t)n, sizeof(int));
    int *ftr = tbert_malloc_array((size_t)n, sizeof(int)), *fva = tbert_malloc_array((size_t)n, sizeof(int));
    int *best_epochs = tbert_malloc_array((size_t)K, sizeof(int)), *y = tbert_malloc_array((size_t)n, sizeof(int));
    float *oof = tbert_malloc_array((size_t)n, (size_t)C * sizeof(float)), *s = tbert_malloc_array((size_t)n, sizeof(float));
    bool *pos = tbert_malloc_array((size_t)n, sizeof(bool));
    tbert_status st = TBERT_OK;
    if (!fold || !scratch || !ftr || !fva || !best_epochs || !y || !oof || !s || !pos)
        st = tbert_fail(err, TBERT_E_NOMEM, "train: out of memory for %d-fold cross-validation", K);
    if (!st) assign_folds(d, d->train_idx, n, K, hp->seed, fold, scratch);
    tbert_progress_mode pm = hp->progress == TBERT_PROGRESS_AUTO ? (isatty(2) ? TBERT_PROGRESS_BAR : TBERT_PROGRESS_LOG) : hp->progress;
    for (int k = 0; k < K && !st; k++) {
        int nt = 0, nv = 0;
        for (int i = 0; i < n; i++) {
            if (fold[i] == k) fva[nv++] = d->train_idx[i];
            else ftr[nt++] = d->train_idx[i];
        }
        tbert_fit_data fd = *d;
        fd.train_idx = ftr;
        fd.n_train = nt;
        fd.val_idx = fva;
        fd.n_val = nv;
        fd.n_test = 0;
        tbert_hparams fh = *hp;
        fh.cv_folds = 0;
        fh.keep_last = false;
        fh.threshold = "f1"; /* unused: the threshold comes from all folds together */
        fh.seed = hp->seed + 1000003ull * (uint64_t)(k + 1);
        fh.progress = TBERT_PROGRESS_OFF;
        tbert_fit_result fr;
        st = tbert_fit_once(&fd, &fh, NULL, &fr, err);
        if (!st) {
            best_epochs[k] = fr.best_epoch;
            int j = 0;
            for (int i = 0; i < n; i++) /* val_idx is ascending, as the train_idx it came from */
                if (fold[i] == k) memcpy(oof + (size_t)i * C, fr.val_probs + (size_t)j++ * C, (size_t)C * sizeof(float));
            if (pm != TBERT_PROGRESS_OFF)
                fprintf(stderr, "tbert: cross-validation fold %d/%d: best epoch %d, held-out loss %.4f acc %.4f\n", k + 1, K,
                        fr.best_epoch, fr.val_loss[fr.best_epoch - 1], fr.val_acc[fr.best_epoch - 1]);
        }
        tbert_fit_result_free(&fr);
    }
    float thr = 0.5f;
    int pos_cls = d->positive >= 0 && C == 2 ? d->positive : -1;
    for (int i = 0; !st && i < n; i++) {
        y[i] = d->y[d->train_idx[i]];
        if (pos_cls >= 0) {
            s[i] = oof[(size_t)i * C + pos_cls];
            pos[i] = y[i] == pos_cls;
        }
    }
    if (!st && pos_cls >= 0) st = tbert_threshold_choose(hp->threshold, n, s, pos, &thr, err);
    int E = hp->epochs;
    if (!st) {
        qsort(best_epochs, (size_t)K, sizeof(int), tbert_cmp_int);
        E = best_epochs[K / 2];
    }
    tbert_metrics oofm = {0};
    if (!st) st = tbert_metrics_compute(n, C, oof, y, pos_cls, thr, &oofm, err);
    if (!st) {
        char spec[32];
        snprintf(spec, sizeof spec, "%.9g", (double)thr);
        tbert_hparams fh = *hp;
        fh.cv_folds = 0;
        fh.keep_last = true;
        fh.epochs = E;
        fh.threshold = spec;
        if (pm != TBERT_PROGRESS_OFF)
            fprintf(stderr, "tbert: cross-validation: threshold %.4f on %d out-of-fold scores (%s), %d epochs; training the head on all %d\n",
                    (double)thr, n, hp->threshold ? hp->threshold : "f1", E, n);
        st = tbert_fit_once(d, &fh, ck, r, err);
    }
    if (!st) { /* the held-out view: out-of-fold metrics and probabilities stand in for validation */
        tbert_metrics_free(&r->val);
        r->val = oofm;
        memset(&oofm, 0, sizeof oofm);
        free(r->val_probs);
        r->val_probs = oof;
        oof = NULL;
        r->n_oof = n;
    }
    tbert_metrics_free(&oofm);
    free(fold);
    free(scratch);
    free(ftr);
    free(fva);
    free(best_epochs);
    free(y);
    free(oof);
    free(s);
    free(pos);
    return st;
}
