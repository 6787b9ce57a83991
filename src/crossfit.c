/* K-fold cross-fitting (tbert_fit with cv_folds >= 2): K heads on stratified folds of the training split give
 * every example a held-out score; the threshold is chosen on those scores, and the head that is kept is the
 * ensemble of those same K fold heads (their logits averaged), written as one head of the ordinary format.
 * The out-of-fold score of a training example is then what the kept model's members give mail they never
 * saw, so the threshold holds on unseen mail (docs/mail.md "Choosing the threshold"). Before, the kept head
 * was a new one trained on all the data, with a scale the threshold had never seen. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tbert/train.h"
#include "train_internal.h"

/* K stratified folds of idx[0..n): per class, shuffled with the seed, dealt round-robin. fold[i] = fold of idx[i]. */
void tbert_cv_assign_folds(const tbert_fit_data *d, const int *idx, int n, int K, uint64_t seed, int *fold, int *scratch) {
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

tbert_status tbert_head_ensemble(tbert_head *const *heads, int K, tbert_head **out, tbert_error *err) {
    *out = NULL;
    if (K < 1) return tbert_fail(err, TBERT_E_ARG, "ensemble: no heads");
    const tbert_head_config *c0 = &heads[0]->cfg;
    for (int k = 1; k < K; k++) {
        const tbert_head_config *c = &heads[k]->cfg;
        if (c->in_dim != c0->in_dim || c->hidden != c0->hidden || c->n_classes != c0->n_classes || c->binary != c0->binary ||
            c->positive != c0->positive)
            return tbert_fail(err, TBERT_E_ARG, "ensemble: head %d has another shape", k);
    }
    tbert_head_config cfg = *c0;
    const int D = c0->in_dim, Hd = c0->hidden, O = tbert_head_out_dim(c0);
    if (Hd > 0 && (int64_t)Hd * K > 1 << 24) return tbert_fail(err, TBERT_E_ARG, "ensemble: %d x %d hidden units is too many", K, Hd);
    cfg.hidden = Hd * K;
    tbert_status st = tbert_head_create(&cfg, out, err);
    if (st) return st;
    tbert_head *e = *out;
    const float inv = 1.0f / (float)K;
    if (Hd == 0) { /* linear: the mean of the weights gives the mean of the logits */
        for (size_t i = 0; i < e->n_params; i++) {
            double s = 0;
            for (int k = 0; k < K; k++) s += heads[k]->params[i];
            e->params[i] = (float)(s / K);
        }
        return TBERT_OK;
    }
    /* MLP: fold k's hidden units are rows [k*Hd, (k+1)*Hd) of fc1 and columns of fc2 (scaled 1/K); fc2.bias is
     * the mean: z = sum_k (1/K) (gelu(x W1k^T + b1k) W2k^T) + mean_k b2k = mean_k z_k, exactly */
    for (int k = 0; k < K; k++) {
        const tbert_head *h = heads[k];
        memcpy(e->w1 + (size_t)k * Hd * D, h->w1, (size_t)Hd * D * sizeof(float));
        memcpy(e->b1 + (size_t)k * Hd, h->b1, (size_t)Hd * sizeof(float));
        for (int o = 0; o < O; o++)
            for (int j = 0; j < Hd; j++) e->w2[(size_t)o * Hd * K + (size_t)k * Hd + j] = h->w2[(size_t)o * Hd + j] * inv;
    }
    for (int o = 0; o < O; o++) {
        double s = 0;
        for (int k = 0; k < K; k++) s += heads[k]->b2[o];
        e->b2[o] = (float)(s / K);
    }
    return TBERT_OK;
}

static int kill_fold(void) {
    const char *k = getenv("TBERT_TEST_KILL_AT");
    if (!k || strncmp(k, "fold:", 5)) return -1;
    return atoi(k + 5);
}

/* metrics (and probabilities, n x C, malloc'd into *keep when keep != NULL) of head h on rows idx[0..n) */
static tbert_status split_metrics(const tbert_head *h, const tbert_fit_data *d, const int *idx, int n, float thr, tbert_metrics *m,
                                  float **keep, tbert_error *err) {
    memset(m, 0, sizeof *m);
    if (keep) *keep = NULL;
    if (n == 0) return TBERT_OK;
    const int C = h->cfg.n_classes, B = 256;
    float *p = tbert_malloc_array((size_t)n, (size_t)C * sizeof(float));
    float *xb = tbert_malloc_array((size_t)B, d->dim * sizeof(float));
    int *y = tbert_malloc_array((size_t)n, sizeof(int));
    tbert_status st = TBERT_OK;
    if (!p || !xb || !y) st = tbert_fail(err, TBERT_E_NOMEM, "train: out of memory");
    for (int i = 0; i < n && !st; i += B) {
        int b = n - i < B ? n - i : B;
        for (int j = 0; j < b; j++) tbert_rows_densify(d->X, idx[i + j], 1, xb + (size_t)j * d->dim, d->dim);
        st = tbert_head_predict(h, b, xb, p + (size_t)i * C, err);
    }
    double loss = 0;
    for (int i = 0; i < n && !st; i++) {
        y[i] = d->y[idx[i]];
        loss -= log(fmax((double)p[(size_t)i * C + y[i]], 1e-12));
    }
    if (!st) st = tbert_metrics_compute(n, C, p, y, h->cfg.binary ? h->cfg.positive : -1, thr, m, err);
    if (!st) m->loss = loss / n;
    free(xb);
    free(y);
    if (!st && keep) *keep = p;
    else free(p);
    return st;
}

tbert_status tbert_fit_cv(const tbert_fit_data *d, const tbert_hparams *hp, const tbert_fit_ckpt *ck, tbert_fit_result *r,
                          tbert_error *err) {
    memset(r, 0, sizeof *r);
    double t0 = tbert_now();
    const int K = hp->cv_folds, n = d->n_train, C = d->n_classes, E = hp->epochs;
    if (d->n_val > 0) return tbert_fail(err, TBERT_E_ARG, "train: cross-validation takes its folds from the training split (use --val-fraction 0)");
    if (n < 2 * K) return tbert_fail(err, TBERT_E_ARG, "train: %d training examples are too few for %d folds", n, K);
    if (E < 1) return tbert_fail(err, TBERT_E_ARG, "train: epochs and batch must be positive");
    int *fold = tbert_malloc_array((size_t)n, sizeof(int)), *scratch = tbert_malloc_array((size_t)n, sizeof(int));
    int *ftr = tbert_malloc_array((size_t)n, sizeof(int)), *fva = tbert_malloc_array((size_t)n, sizeof(int));
    int *best_epochs = tbert_malloc_array((size_t)K, sizeof(int)), *y = tbert_malloc_array((size_t)n, sizeof(int));
    float *oof = tbert_malloc_array((size_t)n, (size_t)C * sizeof(float)), *s = tbert_malloc_array((size_t)n, sizeof(float));
    bool *pos = tbert_malloc_array((size_t)n, sizeof(bool));
    tbert_head **heads = tbert_calloc_array((size_t)K, sizeof *heads);
    double *hist[4];
    for (int j = 0; j < 4; j++) hist[j] = tbert_calloc_array((size_t)E, sizeof(double));
    tbert_status st = TBERT_OK;
    if (!fold || !scratch || !ftr || !fva || !best_epochs || !y || !oof || !s || !pos || !heads || !hist[0] || !hist[1] ||
        !hist[2] || !hist[3])
        st = tbert_fail(err, TBERT_E_NOMEM, "train: out of memory for %d-fold cross-validation", K);
    if (!st) tbert_cv_assign_folds(d, d->train_idx, n, K, hp->seed, fold, scratch);
    tbert_progress_mode pm = hp->progress == TBERT_PROGRESS_AUTO ? (isatty(2) ? TBERT_PROGRESS_BAR : TBERT_PROGRESS_LOG) : hp->progress;
    int kill_at = ck ? kill_fold() : -1;
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
            heads[k] = fr.best;
            fr.best = NULL;
            const double *fh4[4] = {fr.train_loss, fr.train_acc, fr.val_loss, fr.val_acc};
            for (int j = 0; j < 4; j++)
                for (int e = 0; e < E; e++) hist[j][e] += fh4[j][e] / K;
            int j = 0;
            for (int i = 0; i < n; i++) /* val_idx is ascending, as the train_idx it came from */
                if (fold[i] == k) memcpy(oof + (size_t)i * C, fr.val_probs + (size_t)j++ * C, (size_t)C * sizeof(float));
            if (pm != TBERT_PROGRESS_OFF)
                fprintf(stderr, "tbert: cross-validation fold %d/%d: best epoch %d, held-out loss %.4f acc %.4f\n", k + 1, K,
                        fr.best_epoch, fr.val_loss[fr.best_epoch - 1], fr.val_acc[fr.best_epoch - 1]);
        }
        tbert_fit_result_free(&fr);
        if (!st && kill_at == k + 1) raise(SIGKILL); /* crash tests: die after this fold (nothing is written yet) */
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
    if (!st) {
        qsort(best_epochs, (size_t)K, sizeof(int), tbert_cmp_int);
        r->best_epoch = best_epochs[K / 2]; /* informational: each member kept its own best epoch */
        r->epochs_run = E;
        r->threshold = thr;
        r->train_loss = hist[0];
        r->train_acc = hist[1];
        r->val_loss = hist[2];
        r->val_acc = hist[3];
        hist[0] = hist[1] = hist[2] = hist[3] = NULL;
        st = tbert_metrics_compute(n, C, oof, y, pos_cls, thr, &r->val, err);
    }
    if (!st) {
        r->val_probs = oof;
        oof = NULL;
        r->n_oof = n;
        if (pm != TBERT_PROGRESS_OFF)
            fprintf(stderr, "tbert: cross-validation: threshold %.4f on %d out-of-fold scores (%s); the head kept is the ensemble "
                            "of the %d fold heads\n",
                    (double)thr, n, hp->threshold ? hp->threshold : "f1", K);
        st = tbert_head_ensemble(heads, K, &r->best, err);
    }
    if (!st) st = split_metrics(r->best, d, d->train_idx, n, thr, &r->train, NULL, err);
    if (!st) st = split_metrics(r->best, d, d->test_idx, d->n_test, thr, &r->test, &r->test_probs, err);
    if (!st && ck) { /* best and last hold the same ensemble (there is no epoch to resume: --resume refits the folds) */
        char *tj = tbert_fit_state_json(ck->settings_json, r, E, NAN);
        char *mj = tbert_fit_metrics_json(r, &ck->recipe);
        if (!tj || !mj) st = tbert_fail(err, TBERT_E_NOMEM, "train: out of memory");
        if (!st) st = tbert_fit_save_ckpt(ck, "best.safetensors", r->best, NULL, NULL, thr, E, r->best_epoch, tj, mj, err);
        if (!st) st = tbert_fit_save_ckpt(ck, "last.safetensors", r->best, NULL, NULL, thr, E, r->best_epoch, tj, mj, err);
        free(tj);
        free(mj);
    }
    r->seconds = tbert_now() - t0;
    for (int k = 0; heads && k < K; k++) tbert_head_free(heads[k]);
    free(heads);
    for (int j = 0; j < 4; j++) free(hist[j]);
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
