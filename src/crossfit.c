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

tbert_status tbert_cv_work_init(tbert_cv_work *w, const tbert_fit_data *d, const tbert_hparams *hp, int E, const char *who,
                                tbert_error *err) {
    memset(w, 0, sizeof *w);
    const int K = hp->cv_folds, n = d->n_train, C = d->n_classes;
    if (d->n_val > 0) return tbert_fail(err, TBERT_E_ARG, "train: cross-validation takes its folds from the training split (use --val-fraction 0)");
    if (n < 2 * K) return tbert_fail(err, TBERT_E_ARG, "train: %d training examples are too few for %d folds", n, K);
    if (E < 1) return tbert_fail(err, TBERT_E_ARG, "train: epochs and batch must be positive");
    w->K = K;
    w->n = n;
    w->C = C;
    w->E = E;
    w->fold = tbert_malloc_array((size_t)n, sizeof(int));
    w->scratch = tbert_malloc_array((size_t)n, sizeof(int));
    w->ftr = tbert_malloc_array((size_t)n, sizeof(int));
    w->fva = tbert_malloc_array((size_t)n, sizeof(int));
    w->best_epochs = tbert_malloc_array((size_t)K, sizeof(int));
    w->y = tbert_malloc_array((size_t)n, sizeof(int));
    w->oof = tbert_malloc_array((size_t)n, (size_t)C * sizeof(float));
    w->sc = tbert_malloc_array((size_t)n, sizeof(float));
    w->pos = tbert_malloc_array((size_t)n, sizeof(bool));
    for (int j = 0; j < 4; j++) w->hist[j] = tbert_calloc_array((size_t)E, sizeof(double));
    if (!w->fold || !w->scratch || !w->ftr || !w->fva || !w->best_epochs || !w->y || !w->oof || !w->sc || !w->pos || !w->hist[0] ||
        !w->hist[1] || !w->hist[2] || !w->hist[3]) {
        tbert_cv_work_free(w);
        return tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory for %d-fold cross-validation", who, K);
    }
    tbert_cv_assign_folds(d, d->train_idx, n, K, hp->seed, w->fold, w->scratch);
    return TBERT_OK;
}

void tbert_cv_fold_setup(const tbert_cv_work *w, const tbert_fit_data *d, const tbert_hparams *hp, int k, tbert_fit_data *fd,
                         tbert_hparams *fh) {
    int nt = 0, nv = 0;
    for (int i = 0; i < w->n; i++) {
        if (w->fold[i] == k) w->fva[nv++] = d->train_idx[i];
        else w->ftr[nt++] = d->train_idx[i];
    }
    *fd = *d;
    fd->train_idx = w->ftr;
    fd->n_train = nt;
    fd->val_idx = w->fva;
    fd->n_val = nv;
    fd->n_test = 0;
    *fh = *hp;
    fh->cv_folds = 0;
    fh->keep_last = false;
    fh->threshold = "f1"; /* unused: the threshold comes from all folds together */
    fh->seed = hp->seed + 1000003ull * (uint64_t)(k + 1);
    fh->progress = TBERT_PROGRESS_OFF;
}

void tbert_cv_fold_record(tbert_cv_work *w, int k, const tbert_fit_result *fr) {
    const int C = w->C;
    w->best_epochs[k] = fr->best_epoch;
    const double *f4[4] = {fr->train_loss, fr->train_acc, fr->val_loss, fr->val_acc};
    for (int j = 0; j < 4; j++)
        for (int e = 0; e < w->E; e++) w->hist[j][e] += f4[j][e] / w->K;
    int j = 0;
    for (int i = 0; i < w->n; i++) /* val_idx is ascending, as the train_idx it came from */
        if (w->fold[i] == k) memcpy(w->oof + (size_t)i * C, fr->val_probs + (size_t)j++ * C, (size_t)C * sizeof(float));
}

tbert_status tbert_cv_threshold(tbert_cv_work *w, const tbert_fit_data *d, const tbert_hparams *hp, float *thr, int *pos_cls,
                                int *median_epochs, tbert_error *err) {
    const int n = w->n, C = w->C;
    *thr = 0.5f;
    *pos_cls = d->positive >= 0 && C == 2 ? d->positive : -1;
    for (int i = 0; i < n; i++) {
        w->y[i] = d->y[d->train_idx[i]];
        if (*pos_cls >= 0) {
            w->sc[i] = w->oof[(size_t)i * C + *pos_cls];
            w->pos[i] = w->y[i] == *pos_cls;
        }
    }
    if (*pos_cls >= 0) {
        tbert_status st = tbert_threshold_choose(hp->threshold, n, w->sc, w->pos, thr, err);
        if (st) return st;
    }
    qsort(w->best_epochs, (size_t)w->K, sizeof(int), tbert_cmp_int);
    *median_epochs = w->best_epochs[w->K / 2];
    return TBERT_OK;
}

void tbert_cv_work_free(tbert_cv_work *w) {
    for (int j = 0; j < 4; j++) free(w->hist[j]);
    free(w->fold);
    free(w->scratch);
    free(w->ftr);
    free(w->fva);
    free(w->best_epochs);
    free(w->y);
    free(w->oof);
    free(w->sc);
    free(w->pos);
    memset(w, 0, sizeof *w);
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
    tbert_cv_work w;
    tbert_status st = tbert_cv_work_init(&w, d, hp, E, "train", err);
    if (st) return st;
    tbert_head **heads = tbert_calloc_array((size_t)K, sizeof *heads);
    if (!heads) st = tbert_fail(err, TBERT_E_NOMEM, "train: out of memory for %d-fold cross-validation", K);
    tbert_progress_mode pm = hp->progress == TBERT_PROGRESS_AUTO ? (isatty(2) ? TBERT_PROGRESS_BAR : TBERT_PROGRESS_LOG) : hp->progress;
    int kill_at = ck ? tbert_fit_kill_at("fold") : -1;
    for (int k = 0; k < K && !st; k++) {
        tbert_fit_data fd;
        tbert_hparams fh;
        tbert_cv_fold_setup(&w, d, hp, k, &fd, &fh);
        tbert_fit_result fr;
        st = tbert_fit_once(&fd, &fh, NULL, &fr, err);
        if (!st) {
            tbert_cv_fold_record(&w, k, &fr);
            heads[k] = fr.best;
            fr.best = NULL;
            if (pm != TBERT_PROGRESS_OFF)
                fprintf(stderr, "tbert: cross-validation fold %d/%d: best epoch %d, held-out loss %.4f acc %.4f\n", k + 1, K,
                        fr.best_epoch, fr.val_loss[fr.best_epoch - 1], fr.val_acc[fr.best_epoch - 1]);
        }
        tbert_fit_result_free(&fr);
        if (!st && kill_at == k + 1) raise(SIGKILL); /* crash tests: die after this fold (nothing is written yet) */
    }
    float thr = 0.5f;
    int pos_cls = -1, median = 0;
    if (!st) st = tbert_cv_threshold(&w, d, hp, &thr, &pos_cls, &median, err);
    if (!st) {
        r->best_epoch = median; /* informational: each member kept its own best epoch */
        r->epochs_run = E;
        r->threshold = thr;
        r->train_loss = w.hist[0];
        r->train_acc = w.hist[1];
        r->val_loss = w.hist[2];
        r->val_acc = w.hist[3];
        w.hist[0] = w.hist[1] = w.hist[2] = w.hist[3] = NULL;
        st = tbert_metrics_compute(n, C, w.oof, w.y, pos_cls, thr, &r->val, err);
    }
    if (!st) {
        r->val_probs = w.oof;
        w.oof = NULL;
        r->n_oof = n;
        if (pm != TBERT_PROGRESS_OFF)
            fprintf(stderr, "tbert: cross-validation: threshold %.4f on %d out-of-fold scores (%s); the head kept is the ensemble "
                            "of the %d fold heads\n",
                    (double)thr, n, hp->threshold ? hp->threshold : "f1", K);
        st = tbert_head_ensemble(heads, K, &r->best, err);
    }
    if (!st) { /* the members and the folds, for a warm-started `tbert learn` */
        r->fold_heads = heads;
        r->n_fold_heads = K;
        r->fold = w.fold;
        heads = NULL;
        w.fold = NULL;
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
    tbert_cv_work_free(&w);
    return st;
}
