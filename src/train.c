/* Head training on a feature matrix: stratified split, epochs of shuffled mini-batches with AdamW,
 * validation each epoch, best epoch kept, checkpoints each epoch, bit-identical --resume
 * (include/tbert/train.h). K-fold cross-fitting is src/crossfit.c, the metrics JSON src/metrics_json.c; the
 * pipeline around it (data, features, report) is src/train_run.c. */
#include "tbert/train.h"

#include <cblas.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "head_cuda.h"
#include "tbert/checkpoint.h"
#include "tbert/cuda_plugin.h"
#include "tbert/fileio.h"
#include "train_internal.h"

void tbert_hparams_preset(const char *name, tbert_hparams *hp) {
    memset(hp, 0, sizeof *hp);
    hp->seed = 42;
    hp->threshold = "f1";
    hp->progress = TBERT_PROGRESS_AUTO;
    hp->cuda_device = -1;
    if (name && !strcmp(name, "seed")) {
        /* the tutorial: Dense(1, sigmoid), Adam lr 1e-4, batch 32, 10 epochs */
        hp->hidden = 0;
        hp->epochs = 10;
        hp->batch = 32;
        hp->lr = 1e-4;
        return;
    }
    /* tuned on the SMS validation split (benchmarks/RESULTS.md, head training) */
    hp->hidden = 512;
    hp->dropout = 0.1f;
    hp->epochs = 20;
    hp->batch = 64;
    hp->lr = 3e-4;
    hp->weight_decay = 1e-4;
    if (name && !strcmp(name, "mail")) {
        /* docs/mail-recipe-research.md: a linear head with a high learning rate fits the L2-normalised sparse
         * blocks (lr 1e-3 / wd 1e-4 underfits them); the threshold is the zero-FP cut on validation, never
         * keeping more than 90% of the validation spam */
        hp->hidden = 0;
        hp->dropout = 0;
        hp->epochs = 30;
        hp->batch = 32;
        hp->lr = 1e-2;
        hp->weight_decay = 0;
        /* chosen on cross-validation inside the half split's training part (benchmarks/RESULTS.md, mail accuracy):
         * on the out-of-fold scores (train_run.c makes the mail recipe cross-fit), at most 1 ham in 333 above
         * the cut, and never more than 80% of the spam kept (with 90% a few newsletters in hard_ham scored
         * above the cut; with 80% none did), but that raise never more than 5 logits above the ham cut:
         * without that ceiling, spam of another time (the time split) scored below a cut set among the far
         * more confident training spam; 5 is the smallest ceiling that let no newsletter through on the
         * development folds (4: one) */
        hp->threshold = "fpr=0.003,recall=0.8,margin=5";
    }
}

void tbert_fit_result_free(tbert_fit_result *r) {
    if (!r) return;
    free(r->train_loss);
    free(r->train_acc);
    free(r->val_loss);
    free(r->val_acc);
    tbert_head_free(r->best);
    tbert_metrics_free(&r->train);
    tbert_metrics_free(&r->val);
    tbert_metrics_free(&r->test);
    free(r->val_probs);
    free(r->test_probs);
    for (int k = 0; r->fold_heads && k < r->n_fold_heads; k++) tbert_head_free(r->fold_heads[k]);
    free(r->fold_heads);
    free(r->fold);
    memset(r, 0, sizeof *r);
}

/* ---- split ---- */
int tbert_cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

tbert_status tbert_split_stratified(int n, const int *y, int C, double val_fraction, double test_fraction, uint64_t seed,
                                    int **train, int *n_train, int **val, int *n_val, int **test, int *n_test, tbert_error *err) {
    *train = *val = *test = NULL;
    *n_train = *n_val = *n_test = 0;
    if (!(val_fraction >= 0 && test_fraction >= 0 && val_fraction + test_fraction < 1))
        return tbert_fail(err, TBERT_E_ARG, "--val-fraction + --test-fraction must be below 1 (got %g + %g)", val_fraction,
                          test_fraction);
    int *tr = tbert_malloc_array((size_t)n + 1, sizeof(int)), *va = tbert_malloc_array((size_t)n + 1, sizeof(int)),
        *te = tbert_malloc_array((size_t)n + 1, sizeof(int)), *cls = tbert_malloc_array((size_t)n + 1, sizeof(int));
    if (!tr || !va || !te || !cls) {
        free(tr);
        free(va);
        free(te);
        free(cls);
        return tbert_fail(err, TBERT_E_NOMEM, "split: out of memory");
    }
    tbert_rng rng;
    tbert_rng_seed(&rng, seed ^ 0x73706c6974ull); /* "split": independent of the training stream */
    for (int c = 0; c < C; c++) {
        int m = 0;
        for (int i = 0; i < n; i++)
            if (y[i] == c) cls[m++] = i;
        tbert_rng_shuffle(&rng, cls, m);
        int nt = (int)floor(m * test_fraction + 0.5), nv = (int)floor(m * val_fraction + 0.5);
        if (nt + nv > m) nv = m - nt;
        for (int i = 0; i < m; i++) {
            if (i < nt) te[(*n_test)++] = cls[i];
            else if (i < nt + nv) va[(*n_val)++] = cls[i];
            else tr[(*n_train)++] = cls[i];
        }
    }
    free(cls);
    qsort(tr, (size_t)*n_train, sizeof(int), tbert_cmp_int);
    qsort(va, (size_t)*n_val, sizeof(int), tbert_cmp_int);
    qsort(te, (size_t)*n_test, sizeof(int), tbert_cmp_int);
    *train = tr;
    *val = va;
    *test = te;
    if (*n_train == 0) return tbert_fail(err, TBERT_E_ARG, "split: no training examples left (%d items)", n);
    return TBERT_OK;
}

/* ---- evaluation of a split ---- */
/* rows idx[0..n) of the data into the batch rb (and their classes into yb) */
static tbert_status gather(const tbert_fit_data *d, const int *idx, int n, tbert_rows *rb, int *yb, tbert_error *err) {
    for (int i = 0; i < n; i++)
        if (yb) yb[i] = d->y[idx[i]];
    tbert_rows_clear(rb);
    return tbert_rows_gather(rb, d->X, idx, n, err);
}

typedef struct {
    tbert_head_ws *ws;
    tbert_rows rb;   /* the batch's rows */
    tbert_rows drop; /* the CUDA path's batch after a linear head's dropout (tbert_cuda_head_dropout_rows) */
    float *z, *dz, *grad;
    int *yb;
    int cap;
} fit_bufs;

static void bufs_free(fit_bufs *b) {
    tbert_head_ws_free(b->ws);
    tbert_rows_free(&b->rb);
    tbert_rows_free(&b->drop);
    free(b->z);
    free(b->dz);
    free(b->grad);
    free(b->yb);
}

/* mean loss (unweighted), accuracy at 0.5 / argmax, and probabilities (n x C, may be NULL) */
static tbert_status eval_split(const tbert_head *h, fit_bufs *b, const tbert_fit_data *d, const int *idx, int n, double *loss,
                               double *acc, float *probs, tbert_error *err) {
    *loss = *acc = NAN;
    if (n == 0) return TBERT_OK;
    int O = tbert_head_out_dim(&h->cfg), C = h->cfg.n_classes;
    double lsum = 0;
    int64_t correct = 0;
    float *p = tbert_malloc_array((size_t)b->cap, (size_t)C * sizeof(float));
    if (!p) return tbert_fail(err, TBERT_E_NOMEM, "train: out of memory");
    tbert_status st = TBERT_OK;
    for (int i = 0; i < n && !st; i += b->cap) {
        int m = n - i < b->cap ? n - i : b->cap;
        st = gather(d, idx + i, m, &b->rb, b->yb, err);
        if (!st) st = tbert_head_forward_rows(h, b->ws, &b->rb, false, NULL, b->z, err);
        double l;
        if (!st) st = tbert_head_loss(&h->cfg, m, b->z, b->yb, NULL, &l, NULL, err);
        if (st) break;
        lsum += l * m;
        tbert_head_probs(&h->cfg, m, b->z, p);
        for (int k = 0; k < m; k++) {
            int pred = tbert_predict_class(C, p + (size_t)k * C, h->cfg.binary ? h->cfg.positive : -1, 0.5f);
            correct += pred == b->yb[k];
        }
        if (probs) memcpy(probs + (size_t)i * C, p, (size_t)m * C * sizeof(float));
        (void)O;
    }
    free(p);
    *loss = lsum / n;
    *acc = (double)correct / n;
    return st;
}

/* ---- checkpoint helpers ---- */
static cJSON *num_array(const double *v, int n) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < n; i++) cJSON_AddItemToArray(a, isfinite(v[i]) ? cJSON_CreateNumber(v[i]) : cJSON_CreateNull());
    return a;
}

static char *train_state_json(const char *settings, const tbert_fit_result *r, int epochs_done, double best_score) {
    cJSON *o = cJSON_CreateObject();
    cJSON *s = cJSON_Parse(settings ? settings : "{}");
    if (!o || !s) {
        cJSON_Delete(o);
        cJSON_Delete(s);
        return NULL;
    }
    cJSON_AddItemToObject(o, "settings", s);
    cJSON_AddItemToObject(o, "train_loss", num_array(r->train_loss, epochs_done));
    cJSON_AddItemToObject(o, "train_acc", num_array(r->train_acc, epochs_done));
    cJSON_AddItemToObject(o, "val_loss", num_array(r->val_loss, epochs_done));
    cJSON_AddItemToObject(o, "val_acc", num_array(r->val_acc, epochs_done));
    cJSON_AddNumberToObject(o, "best_score", best_score);
    char *out = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return out;
}

static bool restore_array(const cJSON *o, const char *key, double *v, int n) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != n) return false;
    for (int i = 0; i < n; i++) {
        const cJSON *x = cJSON_GetArrayItem(a, i);
        if (cJSON_IsNumber(x)) v[i] = x->valuedouble;
        else if (cJSON_IsNull(x)) v[i] = NAN;
        else return false;
    }
    return true;
}

bool tbert_fit_restore_history(const cJSON *tj, tbert_fit_result *r, int epochs) {
    return restore_array(tj, "train_loss", r->train_loss, epochs) && restore_array(tj, "train_acc", r->train_acc, epochs) &&
           restore_array(tj, "val_loss", r->val_loss, epochs) && restore_array(tj, "val_acc", r->val_acc, epochs);
}

/* settings of the run that wrote `train_json` must equal ours (same data, recipe, hyper-parameters) */
static bool same_settings(const char *train_json, const char *settings) {
    cJSON *o = cJSON_Parse(train_json), *s = cJSON_Parse(settings ? settings : "{}");
    bool same = o && s && cJSON_Compare(cJSON_GetObjectItemCaseSensitive(o, "settings"), s, true);
    cJSON_Delete(o);
    cJSON_Delete(s);
    return same;
}

static bool same_head(const tbert_head_config *a, const tbert_head_config *b) {
    return a->in_dim == b->in_dim && a->hidden == b->hidden && a->n_classes == b->n_classes && a->binary == b->binary &&
           a->positive == b->positive && a->dropout == b->dropout;
}

void tbert_fit_ckpt_meta(const tbert_fit_ckpt *ck, const char *file, float threshold, int epoch, int best_epoch,
                         const char *train_json, const char *metrics_json, char *path, size_t path_size, tbert_ckpt_meta *meta) {
    snprintf(path, path_size, "%s/%s", ck->out_dir, file);
    memset(meta, 0, sizeof *meta);
    meta->recipe = ck->recipe;
    meta->recipe.threshold = threshold;
    memcpy(meta->data_hash, ck->data_hash, sizeof meta->data_hash);
    meta->epoch = epoch;
    meta->seed = ck->seed;
    meta->best_epoch = best_epoch;
    meta->train_json = (char *)train_json;
    meta->metrics_json = (char *)metrics_json;
}

static tbert_status save_ckpt(const tbert_fit_ckpt *ck, const char *file, const tbert_head *h, const tbert_adam *adam,
                              const tbert_rng *rng, float threshold, int epoch, int best_epoch, const char *train_json,
                              const char *metrics_json, tbert_error *err) {
    char path[4200];
    tbert_ckpt_meta meta;
    tbert_fit_ckpt_meta(ck, file, threshold, epoch, best_epoch, train_json, metrics_json, path, sizeof path, &meta);
    return tbert_checkpoint_save(path, h, &meta, adam, rng, err);
}

int tbert_fit_kill_at(const char *what) {
    const char *k = getenv("TBERT_TEST_KILL_AT");
    size_t n = strlen(what);
    if (!k || strncmp(k, what, n) || k[n] != ':') return -1;
    return atoi(k + n + 1);
}

/* the threshold a head gets: chosen on validation, else on the training split */
static tbert_status choose_threshold(const tbert_head *h, fit_bufs *b, const tbert_fit_data *d, const char *spec, float *thr,
                                     tbert_error *err) {
    *thr = 0.5f;
    if (!h->cfg.binary) return TBERT_OK;
    const int *idx = d->n_val ? d->val_idx : d->train_idx;
    int n = d->n_val ? d->n_val : d->n_train;
    float *p = tbert_malloc_array((size_t)n + 1, 2 * sizeof(float));
    float *s = tbert_malloc_array((size_t)n + 1, sizeof(float));
    bool *pos = tbert_malloc_array((size_t)n + 1, sizeof(bool));
    tbert_status st = TBERT_OK;
    if (!p || !s || !pos) st = tbert_fail(err, TBERT_E_NOMEM, "train: out of memory");
    double l, a;
    if (!st) st = eval_split(h, b, d, idx, n, &l, &a, p, err);
    if (!st) {
        for (int i = 0; i < n; i++) {
            s[i] = p[(size_t)i * 2 + h->cfg.positive];
            pos[i] = d->y[idx[i]] == h->cfg.positive;
        }
        st = tbert_threshold_choose(spec, n, s, pos, thr, err);
    }
    free(p);
    free(s);
    free(pos);
    return st;
}

static tbert_status final_metrics(tbert_fit_result *r, fit_bufs *b, const tbert_fit_data *d, tbert_error *err) {
    const tbert_head *h = r->best;
    int C = h->cfg.n_classes, pos = h->cfg.binary ? h->cfg.positive : -1;
    struct {
        const int *idx;
        int n;
        tbert_metrics *m;
        float **keep;
    } sp[3] = {{d->train_idx, d->n_train, &r->train, NULL}, {d->val_idx, d->n_val, &r->val, &r->val_probs},
               {d->test_idx, d->n_test, &r->test, &r->test_probs}};
    for (int k = 0; k < 3; k++) {
        float *p = tbert_malloc_array((size_t)sp[k].n + 1, (size_t)C * sizeof(float));
        int *y = tbert_malloc_array((size_t)sp[k].n + 1, sizeof(int));
        if (!p || !y) {
            free(p);
            free(y);
            return tbert_fail(err, TBERT_E_NOMEM, "train: out of memory");
        }
        double l, a;
        tbert_status st = eval_split(h, b, d, sp[k].idx, sp[k].n, &l, &a, p, err);
        for (int i = 0; i < sp[k].n; i++) y[i] = d->y[sp[k].idx[i]];
        if (!st) st = tbert_metrics_compute(sp[k].n, C, p, y, pos, r->threshold, sp[k].m, err);
        sp[k].m->loss = l;
        free(y);
        if (sp[k].keep && !st) *sp[k].keep = p;
        else free(p);
        if (st) return st;
    }
    return TBERT_OK;
}

/* ---- fit ---- */

tbert_status tbert_fit(const tbert_fit_data *d, const tbert_hparams *hp, const tbert_fit_ckpt *ck, tbert_fit_result *r,
                       tbert_error *err) {
    if (hp->cv_folds >= 2) return tbert_fit_cv(d, hp, ck, r, err);
    return tbert_fit_once(d, hp, ck, r, err);
}

tbert_status tbert_fit_once(const tbert_fit_data *d, const tbert_hparams *hp, const tbert_fit_ckpt *ck, tbert_fit_result *r,
                            tbert_error *err) {
    memset(r, 0, sizeof *r);
    double t0 = tbert_now();
    if (hp->epochs < 1 || hp->batch < 1) return tbert_fail(err, TBERT_E_ARG, "train: epochs and batch must be positive");
    if (!(hp->lr > 0)) return tbert_fail(err, TBERT_E_ARG, "train: --lr must be positive");
    tbert_head_config cfg = {.in_dim = (int)d->dim,
                             .hidden = hp->hidden,
                             .n_classes = d->n_classes,
                             .binary = d->positive >= 0 && d->n_classes == 2,
                             .positive = d->positive >= 0 ? d->positive : 0,
                             .dropout = hp->dropout};
    tbert_head *h = NULL;
    tbert_adam adam = {0};
    fit_bufs b = {0};
    tbert_status st = tbert_head_create(&cfg, &h, err);
    if (st) return st;
    /* The head's GEMMs are small: one OpenBLAS thread is as fast on 2 cores, far faster on a busy machine
     * (no spinning workers), and makes the arithmetic independent of the thread count, so --resume is bit
     * for bit whatever the encoder left OpenBLAS set to. */
    int blas_threads = openblas_get_num_threads();
    openblas_set_num_threads(1);
    tbert_head_init(h, hp->seed);
    st = tbert_adam_init(&adam, h->n_params, err);
    if (st) goto done;
    adam.lr = hp->lr;
    adam.weight_decay = hp->weight_decay;
    b.cap = hp->batch > 256 ? hp->batch : 256;
    st = tbert_head_ws_create(&cfg, b.cap, &b.ws, err);
    if (st) goto done;
    int O = tbert_head_out_dim(&cfg);
    size_t bw = d->X->sparse_dim;
    if (!st) st = tbert_rows_init(&b.rb, d->X->dense_dim, 1, &bw, err);
    if (st) goto done;
    b.z = tbert_malloc_array((size_t)b.cap, (size_t)O * sizeof(float));
    b.dz = tbert_malloc_array((size_t)b.cap, (size_t)O * sizeof(float));
    b.grad = tbert_malloc_array(h->n_params, sizeof(float));
    b.yb = tbert_malloc_array((size_t)b.cap, sizeof(int));
    int *perm = tbert_malloc_array((size_t)d->n_train + 1, sizeof(int));
    r->train_loss = tbert_malloc_array((size_t)hp->epochs, sizeof(double));
    r->train_acc = tbert_malloc_array((size_t)hp->epochs, sizeof(double));
    r->val_loss = tbert_malloc_array((size_t)hp->epochs, sizeof(double));
    r->val_acc = tbert_malloc_array((size_t)hp->epochs, sizeof(double));
    tbert_head_config bc = cfg;
    st = tbert_head_create(&bc, &r->best, err);
    if (st || !b.z || !b.dz || !b.grad || !b.yb || !perm || !r->train_loss || !r->train_acc || !r->val_loss ||
        !r->val_acc) {
        free(perm);
        if (!st) st = tbert_fail(err, TBERT_E_NOMEM, "train: out of memory for %d rows of %zu features", b.cap, d->dim);
        goto done;
    }
    float cw[TBERT_METRICS_MAX_CLASSES];
    if (hp->class_weights_auto) {
        for (int c = 0; c < d->n_classes; c++) {
            int cnt = 0;
            for (int i = 0; i < d->n_train; i++) cnt += d->y[d->train_idx[i]] == c;
            cw[c] = cnt ? (float)((double)d->n_train / ((double)d->n_classes * cnt)) : 1.0f;
        }
    }
    tbert_rng rng;
    tbert_rng_seed(&rng, hp->seed ^ 0x747261696eull); /* "train": shuffles and dropout */
    int start = 0;
    double best_score = INFINITY;
    float best_thr = 0.5f;
    char path[4200];
    if (ck && ck->resume) {
        snprintf(path, sizeof path, "%s/last.safetensors", ck->out_dir);
        if (!tbert_is_regular_file(path)) {
            fprintf(stderr, "tbert: nothing to resume in %s, starting fresh\n", ck->out_dir);
        } else {
            tbert_head *lh = NULL;
            tbert_ckpt_meta meta;
            tbert_adam la = {0};
            st = tbert_checkpoint_load(path, &lh, &meta, &la, &rng, err);
            if (st) {
                free(perm);
                goto done;
            }
            bool ok = lh->n_params == h->n_params && same_head(&lh->cfg, &h->cfg) && meta.epoch <= hp->epochs &&
                      same_settings(meta.train_json, ck->settings_json);
            cJSON *tj = cJSON_Parse(meta.train_json);
            ok = ok && tj && tbert_fit_restore_history(tj, r, meta.epoch);
            const cJSON *bs = cJSON_GetObjectItemCaseSensitive(tj, "best_score");
            ok = ok && cJSON_IsNumber(bs);
            if (ok) best_score = bs->valuedouble;
            cJSON_Delete(tj);
            if (ok) {
                memcpy(h->params, lh->params, h->n_params * sizeof(float));
                memcpy(adam.m, la.m, h->n_params * sizeof(float));
                memcpy(adam.v, la.v, h->n_params * sizeof(float));
                adam.step = la.step;
                start = meta.epoch;
                r->best_epoch = meta.best_epoch;
            }
            tbert_head_free(lh);
            tbert_adam_free(&la);
            tbert_ckpt_meta_free(&meta);
            if (!ok) {
                st = tbert_fail(err, TBERT_E_MISMATCH,
                                "%s: was written by a run with other data, recipe or settings; cannot --resume (use another --out)",
                                path);
                free(perm);
                goto done;
            }
            /* the best head so far */
            snprintf(path, sizeof path, "%s/best.safetensors", ck->out_dir);
            st = tbert_checkpoint_load(path, &lh, &meta, NULL, NULL, err);
            if (st) {
                free(perm);
                goto done;
            }
            memcpy(r->best->params, lh->params, h->n_params * sizeof(float));
            best_thr = meta.recipe.threshold;
            tbert_head_free(lh);
            tbert_ckpt_meta_free(&meta);
            fprintf(stderr, "tbert: resuming %s after epoch %d of %d\n", ck->out_dir, start, hp->epochs);
        }
    }
    /* CUDA: parameters and moments live on the device during an epoch; downloaded after each one for
     * validation and checkpoints (same dropout stream, same AdamW arithmetic; GEMMs in cuBLAS float32). Each
     * batch goes up as rows (dense block + CSR), never densified. */
    tbert_cuda_plugin *plug = NULL; /* the CUDA head is reached through the plugin's table */
    const tbert_cuda_api *cu = NULL;
    tbert_cuda_head *gh = NULL;
    float *mask = NULL;
    if (hp->cuda_device >= 0) {
        st = tbert_cuda_plugin_open(&plug, err);
        if (!st) {
            cu = tbert_cuda_plugin_table(plug);
            st = cu->head_create(h, &adam, b.cap, hp->cuda_device, &gh, err);
        }
        if (!st && cfg.dropout > 0 && cfg.hidden == 0) st = tbert_rows_init(&b.drop, d->X->dense_dim, 1, &bw, err);
        if (!st && cfg.dropout > 0 && cfg.hidden > 0) {
            mask = tbert_malloc_array((size_t)b.cap, (size_t)cfg.hidden * sizeof(float));
            if (!mask) st = tbert_fail(err, TBERT_E_NOMEM, "train: out of memory");
        }
        if (st) {
            if (gh) cu->head_free(gh);
            tbert_cuda_plugin_close(plug);
            free(perm);
            goto done;
        }
    }
    int kill_at = tbert_fit_kill_at("epoch");
    tbert_progress_mode pm = hp->progress == TBERT_PROGRESS_AUTO ? (isatty(2) ? TBERT_PROGRESS_BAR : TBERT_PROGRESS_LOG) : hp->progress;
    for (int e = start; e < hp->epochs && !st; e++) {
        memcpy(perm, d->train_idx, (size_t)d->n_train * sizeof(int));
        tbert_rng_shuffle(&rng, perm, d->n_train);
        double lsum = 0;
        int64_t correct = 0;
        char stage[32];
        snprintf(stage, sizeof stage, "epoch %d/%d", e + 1, hp->epochs);
        tbert_progress *pb = pm == TBERT_PROGRESS_BAR ? tbert_progress_start(stage, (uint64_t)d->n_train, "ex", pm) : NULL;
        for (int i = 0; i < d->n_train && !st; i += hp->batch) {
            int m = d->n_train - i < hp->batch ? d->n_train - i : hp->batch;
            st = gather(d, perm + i, m, &b.rb, b.yb, err);
            if (st) break;
            double l;
            if (gh) { /* the rows as they are (never densified); dropout drawn here in the CPU head's order */
                const tbert_rows *xb = &b.rb;
                if (mask) tbert_cuda_head_dropout_mask(cfg.dropout, (size_t)m * (size_t)cfg.hidden, &rng, mask);
                else if (cfg.dropout > 0) {
                    st = tbert_cuda_head_dropout_rows(cfg.dropout, &b.rb, &rng, &b.drop, err);
                    xb = &b.drop;
                }
                /* b.z: the training forward's logits, as the CPU path's accuracy uses them */
                if (!st)
                    st = cu->head_train_step_rows(gh, &adam, xb, b.yb, hp->class_weights_auto ? cw : NULL, mask, &l, b.z,
                                                  err);
                if (st) break;
            } else {
                st = tbert_head_forward_rows(h, b.ws, &b.rb, true, &rng, b.z, err);
                if (!st) st = tbert_head_loss(&cfg, m, b.z, b.yb, hp->class_weights_auto ? cw : NULL, &l, b.dz, err);
                if (!st) st = tbert_head_backward_rows(h, b.ws, &b.rb, b.dz, b.grad, err);
                if (st) break;
                /* dz is the gradient of the batch mean; Adam sees it as is */
                tbert_adam_step(&adam, h->params, b.grad);
            }
            lsum += l * m;
            for (int k = 0; k < m; k++) {
                int pred = cfg.binary ? (b.z[k] >= 0 ? cfg.positive : 1 - cfg.positive) : 0;
                if (!cfg.binary)
                    for (int c = 1; c < O; c++)
                        if (b.z[(size_t)k * O + c] > b.z[(size_t)k * O + pred]) pred = c;
                correct += pred == b.yb[k];
            }
            if (pb) {
                char note[48];
                snprintf(note, sizeof note, "loss %.4f", lsum / (i + m));
                tbert_progress_update(pb, (uint64_t)(i + m), note);
            }
        }
        if (!st && gh) st = cu->head_download(gh, h, &adam, err);
        if (st) {
            if (pb) tbert_progress_finish(pb, "failed");
            break;
        }
        r->train_loss[e] = lsum / d->n_train;
        r->train_acc[e] = (double)correct / d->n_train;
        st = eval_split(h, &b, d, d->val_idx, d->n_val, &r->val_loss[e], &r->val_acc[e], NULL, err);
        if (st) break;
        char note[160];
        if (d->n_val)
            snprintf(note, sizeof note, "loss %.4f acc %.4f | val loss %.4f acc %.4f", r->train_loss[e], r->train_acc[e],
                     r->val_loss[e], r->val_acc[e]);
        else
            snprintf(note, sizeof note, "loss %.4f acc %.4f", r->train_loss[e], r->train_acc[e]);
        if (pb) tbert_progress_finish(pb, note);
        else if (pm != TBERT_PROGRESS_OFF) fprintf(stderr, "tbert: epoch %d/%d %s\n", e + 1, hp->epochs, note);
        double score = d->n_val ? r->val_loss[e] : r->train_loss[e];
        bool improved = hp->keep_last || score < best_score;
        if (improved) {
            best_score = score;
            r->best_epoch = e + 1;
            memcpy(r->best->params, h->params, h->n_params * sizeof(float));
            if (ck) st = choose_threshold(r->best, &b, d, hp->threshold, &best_thr, err);
        }
        r->epochs_run = e + 1;
        if (ck && !st) {
            char *tj = train_state_json(ck->settings_json, r, e + 1, best_score);
            if (!tj) st = tbert_fail(err, TBERT_E_NOMEM, "train: out of memory");
            if (!st && improved) st = save_ckpt(ck, "best.safetensors", r->best, NULL, NULL, best_thr, e + 1, r->best_epoch, tj, NULL, err);
            if (!st) st = save_ckpt(ck, "last.safetensors", h, &adam, &rng, best_thr, e + 1, r->best_epoch, tj, NULL, err);
            free(tj);
            if (!st && kill_at == e + 1) raise(SIGKILL); /* crash tests: die right after this epoch's checkpoint */
        }
    }
    free(perm);
    free(mask);
    if (gh) cu->head_free(gh);
    tbert_cuda_plugin_close(plug);
    if (st) goto done;
    r->epochs_run = hp->epochs;
    if (r->best_epoch == 0) { /* resumed a finished run with no improvement recorded: keep the current head */
        memcpy(r->best->params, h->params, h->n_params * sizeof(float));
        r->best_epoch = hp->epochs;
    }
    st = choose_threshold(r->best, &b, d, hp->threshold, &r->threshold, err);
    if (!st) st = final_metrics(r, &b, d, err);
    if (!st && ck) { /* best.safetensors again, now with the final metrics of the best epoch */
        char *tj = train_state_json(ck->settings_json, r, hp->epochs, best_score);
        char *mj = tbert_fit_metrics_json(r, &ck->recipe);
        if (!tj || !mj) st = tbert_fail(err, TBERT_E_NOMEM, "train: out of memory");
        if (!st) st = save_ckpt(ck, "best.safetensors", r->best, NULL, NULL, r->threshold, hp->epochs, r->best_epoch, tj, mj, err);
        free(tj);
        free(mj);
    }
    r->seconds = tbert_now() - t0;
done:
    openblas_set_num_threads(blas_threads);
    bufs_free(&b);
    tbert_adam_free(&adam);
    tbert_head_free(h);
    return st;
}

/* for src/crossfit.c (train_internal.h): the same checkpoint metadata and files as the epochs loop writes */
char *tbert_fit_state_json(const char *settings, const tbert_fit_result *r, int epochs_done, double best_score) {
    return train_state_json(settings, r, epochs_done, best_score);
}

tbert_status tbert_fit_save_ckpt(const tbert_fit_ckpt *ck, const char *file, const tbert_head *h, const tbert_adam *adam,
                                 const tbert_rng *rng, float threshold, int epoch, int best_epoch, const char *train_json,
                                 const char *metrics_json, tbert_error *err) {
    return save_ckpt(ck, file, h, adam, rng, threshold, epoch, best_epoch, train_json, metrics_json, err);
}

/* for src/finetune.c (train_internal.h): the head path's evaluation, threshold and final metrics on rows whose dense
 * block the fine-tuned encoder wrote */
static tbert_status eval_bufs(const tbert_head *h, const tbert_fit_data *d, fit_bufs *b, tbert_error *err) {
    memset(b, 0, sizeof *b);
    b->cap = 256;
    int O = tbert_head_out_dim(&h->cfg);
    size_t bw = d->X->sparse_dim;
    tbert_status st = tbert_head_ws_create(&h->cfg, b->cap, &b->ws, err);
    if (!st) st = tbert_rows_init(&b->rb, d->X->dense_dim, 1, &bw, err);
    b->z = tbert_malloc_array((size_t)b->cap, (size_t)O * sizeof(float));
    b->yb = tbert_malloc_array((size_t)b->cap, sizeof(int));
    if (!st && (!b->z || !b->yb)) st = tbert_fail(err, TBERT_E_NOMEM, "train: out of memory");
    if (st) bufs_free(b);
    return st;
}

tbert_status tbert_fit_eval(const tbert_head *h, const tbert_fit_data *d, const int *idx, int n, double *loss, double *acc,
                            float *probs, tbert_error *err) {
    fit_bufs b;
    tbert_status st = eval_bufs(h, d, &b, err);
    if (st) return st;
    st = eval_split(h, &b, d, idx, n, loss, acc, probs, err);
    bufs_free(&b);
    return st;
}

tbert_status tbert_fit_finish(tbert_fit_result *r, const tbert_fit_data *d, const char *threshold_spec, bool choose,
                              tbert_error *err) {
    fit_bufs b;
    tbert_status st = eval_bufs(r->best, d, &b, err);
    if (st) return st;
    if (choose) st = choose_threshold(r->best, &b, d, threshold_spec, &r->threshold, err);
    if (!st) st = final_metrics(r, &b, d, err);
    bufs_free(&b);
    return st;
}
