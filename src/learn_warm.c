/* The warm-started retrain of `tbert learn` (issue 14: one message learned in seconds into a head trained on
 * thousands). From DIR/learn.state (src/learn_state.c: the training rows, their folds and the K fold heads
 * whose average is best.safetensors) and the corrections in force (DIR/learned.jsonl):
 *   1. rows: the stored rows stay; a correction no longer in force (or now of the other class) drops out;
 *      a new correction is parsed and featurized (its dense block from the row store when it was encoded
 *      before, else encoded: one message). Nothing else is parsed or encoded.
 *   2. folds: a stored row keeps its fold; a new row joins the fold with the fewest rows of its class, so the
 *      folds stay stratified. Each fold head k continues from its own weights for WARM_EPOCHS epochs on the
 *      rows outside fold k (corrections repeated CORRECTION_REPEATS times), never on fold k.
 *   3. threshold: every row's out-of-fold score is recomputed by the fold head that never trained on it (a new
 *      message's too), and the cut is re-chosen from those scores with the rule that chose the current one
 *      (oof.safetensors' rule), exactly as cross-fitting does (src/crossfit.c). So the promise stays honest:
 *      the scores the threshold is chosen on are still what the kept model's members give mail they did not
 *      train on.
 *   4. the kept head is the ensemble (average) of the K updated fold heads; best/last.safetensors, oof,
 *      metrics.json, report.html and learn.state are written into the staging folder and move in as one run
 *      (src/checkpoint_folder.c), after the current head was linked into history/.
 * The optimiser's moments start at zero (AdamW's first steps are then about lr in size), hence a learning rate
 * below the recipe's: the fold heads are already at the old data's optimum. */
#include <cblas.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <glib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "learn_internal.h"
#include "tbert/checkpoint.h"
#include "tbert/fileio.h"
#include "tbert/mail.h"
#include "tbert/model.h"
#include "tbert/store.h"
#include "tbert/threshold.h"
#include "tbert/train.h"
#include "train_internal.h"

#define MAX_JSON ((size_t)1 << 24)
/* chosen on the 6,046-message SpamAssassin head (benchmarks/RESULTS.md "Learning one message"): at 0.3 x the
 * recipe's learning rate, 2 epochs with each correction 4 times move a missed message's score most (0.007 ->
 * 0.47) while the out-of-fold ROC-AUC and false positives stay those of the full run; at 1 x the heads drift
 * (2 out-of-fold false positives), at 0.1 x the message barely moves */
enum { WARM_EPOCHS = 2, CORRECTION_REPEATS = 4 };
/* a small head (tens of messages) gets more epochs, up to this many optimiser steps: AdamW moves a weight by
 * about lr per step whatever the data size, so a fixed step count, not an epoch count, sets how far it goes */
enum { WARM_MIN_STEPS = 200 };
#define WARM_LR_SCALE 0.3

/* the recipe's head settings with training.json's overrides (the same the full retrain reads) */
static void warm_hparams(const cJSON *m, const char *recipe_name, tbert_hparams *hp) {
    tbert_hparams_preset(recipe_name, hp);
    const cJSON *s = cJSON_GetObjectItem(m, "settings");
    const cJSON *v;
    if (cJSON_IsNumber(v = cJSON_GetObjectItem(s, "lr")) && v->valuedouble > 0) hp->lr = v->valuedouble;
    if (cJSON_IsNumber(v = cJSON_GetObjectItem(s, "batch")) && v->valuedouble > 0) hp->batch = (int)v->valuedouble;
    if (cJSON_IsNumber(v = cJSON_GetObjectItem(s, "weight_decay")) && v->valuedouble >= 0) hp->weight_decay = v->valuedouble;
    if (cJSON_IsNumber(v = cJSON_GetObjectItem(s, "dropout")) && v->valuedouble >= 0) hp->dropout = (float)v->valuedouble;
    hp->class_weights_auto = cJSON_IsTrue(cJSON_GetObjectItem(s, "class_weights_auto"));
    const char *seed = cJSON_GetStringValue(cJSON_GetObjectItem(s, "seed"));
    hp->seed = seed ? strtoull(seed, NULL, 10) : 42;
    const char *thr = cJSON_GetStringValue(cJSON_GetObjectItem(s, "threshold"));
    if (thr) hp->threshold = thr;
}

static void hex32(const char *hex, uint8_t out[32]) {
    for (int b = 0; b < 32; b++) {
        unsigned v = 0;
        sscanf(hex + 2 * b, "%2x", &v);
        out[b] = (uint8_t)v;
    }
}

/* the new corrections' rows (parsed from their bytes, dense blocks from the store or encoded) */
static tbert_status featurize_new(const char *model_path, const tbert_recipe *r, const tbert_learn_opts *lo, GPtrArray *todo,
                                  tbert_rows *out, int *encoded, tbert_error *err) {
    int n = (int)todo->len;
    tbert_mail_doc *md = tbert_calloc_array((size_t)n, sizeof *md);
    tbert_doc *docs = tbert_calloc_array((size_t)n, sizeof *docs);
    tbert_status st = md && docs ? TBERT_OK : tbert_fail(err, TBERT_E_NOMEM, "learn: out of memory for %d new messages", n);
    for (int i = 0; !st && i < n; i++) {
        const correction *c = todo->pdata[i];
        gsize len = 0;
        guchar *raw = g_base64_decode(c->b64, &len);
        tbert_message msg;
        char label[96];
        snprintf(label, sizeof label, "learned message %.16s", c->sha);
        st = tbert_message_parse((const char *)raw, len, label, &msg, err);
        if (!st) {
            st = tbert_mail_document(&msg, &md[i], err);
            tbert_message_free(&msg);
        }
        g_free(raw);
        if (!st) docs[i] = (tbert_doc){md[i].text, md[i].len, md[i].evidence};
    }
    tbert_model *m = NULL;
    tbert_encoder *enc = NULL;
    tbert_featurizer *fz = NULL;
    tbert_store *store = NULL;
    if (!st) st = tbert_model_load(model_path, &m, err);
    if (!st) st = tbert_recipe_check_model(r, m, true, err);
    if (!st) {
        tbert_encoder_opts eo = tbert_encoder_default_opts();
        eo.device = lo->device;
        eo.precision = r->precision;
        eo.threads = lo->threads;
        eo.layers = r->layers;
        eo.quiet = true;
        st = tbert_encoder_create(m, &eo, &enc, err);
    }
    if (!st) st = tbert_featurizer_create(r, m, enc, &fz, err);
    if (!st) st = tbert_featurizer_rows_init(fz, out, err);
    tbert_error serr;
    if (!st && tbert_store_open(NULL, &store, &serr)) fprintf(stderr, "tbert: warning: no feature store: %s\n", serr.msg);
    tbert_feature_stats fs = {0};
    if (!st) st = tbert_featurize_stored(fz, store, n, docs, NULL, out, &fs, err);
    *encoded = fs.encoded;
    tbert_store_close(store);
    tbert_featurizer_free(fz);
    tbert_encoder_free(enc);
    tbert_model_free(m);
    for (int i = 0; md && i < n; i++) tbert_mail_doc_free(&md[i]);
    free(md);
    free(docs);
    return st;
}

/* WARM_EPOCHS epochs (at least WARM_MIN_STEPS steps) of head h on rows idx[0..n) of X: AdamW from zero moments,
 * WARM_LR_SCALE x the recipe's lr, its batch */
static tbert_status continue_head(tbert_head *h, const tbert_rows *X, const int *y, const int *idx, int n, const tbert_hparams *hp,
                                  uint64_t seed, int *epochs_run, tbert_error *err) {
    const int B = hp->batch, O = tbert_head_out_dim(&h->cfg), C = h->cfg.n_classes;
    tbert_adam adam = {0};
    tbert_head_ws *ws = NULL;
    tbert_rows rb = {0};
    size_t bw = X->sparse_dim;
    int *perm = tbert_malloc_array((size_t)n, sizeof(int)), *yb = tbert_malloc_array((size_t)B, sizeof(int));
    float *z = tbert_malloc_array((size_t)B, (size_t)O * sizeof(float)), *dz = tbert_malloc_array((size_t)B, (size_t)O * sizeof(float));
    float *grad = tbert_malloc_array(h->n_params, sizeof(float));
    tbert_status st = perm && yb && z && dz && grad ? TBERT_OK : tbert_fail(err, TBERT_E_NOMEM, "learn: out of memory");
    if (!st) st = tbert_adam_init(&adam, h->n_params, err);
    if (!st) st = tbert_head_ws_create(&h->cfg, B, &ws, err);
    if (!st) st = tbert_rows_init(&rb, X->dense_dim, 1, &bw, err);
    adam.lr = hp->lr * WARM_LR_SCALE;
    adam.weight_decay = hp->weight_decay;
    float cw[TBERT_METRICS_MAX_CLASSES];
    for (int c = 0; c < C && c < TBERT_METRICS_MAX_CLASSES; c++) {
        int cnt = 0;
        for (int i = 0; i < n; i++) cnt += y[idx[i]] == c;
        cw[c] = cnt ? (float)((double)n / ((double)C * cnt)) : 1.0f;
    }
    tbert_rng rng;
    tbert_rng_seed(&rng, seed ^ 0x7761726dull); /* "warm" */
    int steps = (n + B - 1) / B, epochs = WARM_EPOCHS;
    if (steps > 0 && epochs * steps < WARM_MIN_STEPS) epochs = (WARM_MIN_STEPS + steps - 1) / steps;
    *epochs_run = epochs;
    for (int e = 0; !st && e < epochs; e++) {
        memcpy(perm, idx, (size_t)n * sizeof(int));
        tbert_rng_shuffle(&rng, perm, n);
        for (int i = 0; !st && i < n; i += B) {
            int m = n - i < B ? n - i : B;
            for (int k = 0; k < m; k++) yb[k] = y[perm[i + k]];
            tbert_rows_clear(&rb);
            st = tbert_rows_gather(&rb, X, perm + i, m, err);
            double l;
            if (!st) st = tbert_head_forward_rows(h, ws, &rb, true, &rng, z, err);
            if (!st) st = tbert_head_loss(&h->cfg, m, z, yb, hp->class_weights_auto ? cw : NULL, &l, dz, err);
            if (!st) st = tbert_head_backward_rows(h, ws, &rb, dz, grad, err);
            if (!st) tbert_adam_step(&adam, h->params, grad);
        }
    }
    tbert_rows_free(&rb);
    tbert_head_ws_free(ws);
    tbert_adam_free(&adam);
    free(perm);
    free(yb);
    free(z);
    free(dz);
    free(grad);
    return st;
}

/* probs (m x C) of rows idx[0..m) (NULL: 0..m) under h, on the sparse rows as training evaluates them
 * (src/train.c eval_split: tbert_head_forward_rows), 256 rows at a time */
static tbert_status rows_probs(const tbert_head *h, const tbert_rows *X, const int *idx, int m, float *probs, tbert_error *err) {
    enum { CHUNK = 256 };
    const int O = tbert_head_out_dim(&h->cfg), C = h->cfg.n_classes;
    tbert_head_ws *ws = NULL;
    tbert_rows rb = {0};
    size_t bw = X->sparse_dim;
    int *ix = tbert_malloc_array(CHUNK, sizeof(int));
    float *z = tbert_malloc_array(CHUNK, (size_t)O * sizeof(float));
    tbert_status st = ix && z ? tbert_head_ws_create(&h->cfg, CHUNK, &ws, err) : tbert_fail(err, TBERT_E_NOMEM, "learn: out of memory");
    if (!st) st = tbert_rows_init(&rb, X->dense_dim, 1, &bw, err);
    for (int i = 0; !st && i < m; i += CHUNK) {
        int b = m - i < CHUNK ? m - i : CHUNK;
        for (int j = 0; j < b; j++) ix[j] = idx ? idx[i + j] : i + j;
        tbert_rows_clear(&rb);
        st = tbert_rows_gather(&rb, X, ix, b, err);
        if (!st) st = tbert_head_forward_rows(h, ws, &rb, false, NULL, z, err);
        if (!st) tbert_head_probs(&h->cfg, b, z, probs + (size_t)i * C);
    }
    tbert_rows_free(&rb);
    tbert_head_ws_free(ws);
    free(ix);
    free(z);
    return st;
}

/* probs (n x C) of row i from the fold head that never trained on it */
static tbert_status out_of_fold(const tbert_learn_state *s, float *probs, tbert_error *err) {
    const int C = s->heads[0]->cfg.n_classes;
    int *idx = tbert_malloc_array((size_t)s->n, sizeof(int));
    float *p = tbert_malloc_array((size_t)s->n, (size_t)C * sizeof(float));
    tbert_status st = idx && p ? TBERT_OK : tbert_fail(err, TBERT_E_NOMEM, "learn: out of memory");
    for (int k = 0; !st && k < s->K; k++) {
        int m = 0;
        for (int i = 0; i < s->n; i++)
            if (s->fold[i] == k) idx[m++] = i;
        st = rows_probs(s->heads[k], &s->X, idx, m, p, err);
        for (int j = 0; !st && j < m; j++) memcpy(probs + (size_t)idx[j] * C, p + (size_t)j * C, (size_t)C * sizeof(float));
    }
    free(idx);
    free(p);
    return st;
}

/* links DIR/NAME into WORK/NAME (a file of the current head that the warm retrain does not rewrite) */
static tbert_status link_in(const char *dir, const char *work, const char *name, tbert_error *err) {
    char *from = g_strdup_printf("%s/%s", dir, name), *to = g_strdup_printf("%s/%s", work, name);
    tbert_status st = TBERT_OK;
    unlink(to);
    if (link(from, to) != 0 && errno != ENOENT)
        st = tbert_fail(err, TBERT_E_IO, "%s: cannot link into %s: %s", from, work, strerror(errno));
    g_free(from);
    g_free(to);
    return st;
}

tbert_status tbert_learn_warm(const tbert_learn_opts *lo, tbert_learn_result *res, bool *no_state, tbert_error *err) {
    *no_state = false;
    double t0 = tbert_now();
    const char *dir = lo->head;
    tbert_learn_state s = {0};
    tbert_error lerr;
    char *spath = g_strdup_printf("%s/learn.state", dir);
    bool have = tbert_is_regular_file(spath);
    g_free(spath);
    if (!have || tbert_learn_state_load(dir, &s, &lerr)) {
        if (have && !lo->quiet) fprintf(stderr, "tbert: %s; retraining in full\n", lerr.msg);
        *no_state = true;
        return TBERT_OK;
    }
    /* one OpenBLAS thread, as src/train.c trains heads: the head's GEMMs are small, and on busy cores spinning
     * workers cost more than they bring (the encoder of a new message uses its own threads) */
    int blas_threads = openblas_get_num_threads();
    openblas_set_num_threads(1);
    char *mpath = g_strdup_printf("%s/training.json", dir), *txt = NULL, *best = g_strdup_printf("%s/best.safetensors", dir);
    size_t len;
    cJSON *mj = NULL;
    GPtrArray *cs = NULL, *todo = g_ptr_array_new();
    tbert_head *cur = NULL, *ens = NULL;
    tbert_ckpt_meta meta = {0};
    tbert_oof oof = {0};
    tbert_learn_state ns = {0};
    tbert_rows Xn = {0};
    tbert_fit_result fr = {0};
    tbert_train_result tres = {0};
    tbert_ckpt_plan plan = {0};
    bool planned = false;
    char *rule = NULL;
    bool *pos = NULL;
    float *score = NULL;
    int *y = NULL;
    long made = 0;
    tbert_status st = tbert_read_file(mpath, MAX_JSON, &txt, &len, err);
    if (!st && !(mj = cJSON_Parse(txt))) st = tbert_fail(err, TBERT_E_FORMAT, "%s: not valid JSON", mpath);
    const char *dh = st ? NULL : cJSON_GetStringValue(cJSON_GetObjectItem(mj, "data_hash"));
    const char *model_path = st ? NULL : cJSON_GetStringValue(cJSON_GetObjectItem(mj, "model"));
    if (!st && (!dh || strcmp(dh, s.data_hash) || !model_path)) { /* another training set: its rows are not these */
        if (!lo->quiet) fprintf(stderr, "tbert: %s/learn.state belongs to another training run; retraining in full\n", dir);
        *no_state = true;
        goto done;
    }
    if (!st) st = tbert_checkpoint_load(best, &cur, &meta, NULL, NULL, err);
    if (!st && (cur->n_params != s.heads[0]->n_params || meta.recipe.positive < 0 || meta.recipe.n_labels != 2)) {
        if (!lo->quiet) fprintf(stderr, "tbert: %s/learn.state does not fit best.safetensors; retraining in full\n", dir);
        *no_state = true;
        goto done;
    }
    tbert_hparams hp;
    if (!st) warm_hparams(mj, meta.recipe.name, &hp);
    if (!st && tbert_oof_load(dir, &oof, &lerr) == TBERT_OK && oof.rule[0]) rule = g_strdup(oof.rule);
    if (!st && !rule) rule = g_strdup(hp.threshold ? hp.threshold : "f1");
    if (!st) st = tbert_learn_corrections_read(dir, &cs, err);
    if (!st) st = tbert_learn_materialize(dir, cs, &res->learned_ham, &res->learned_spam, err);
    if (st) goto done;
    const tbert_recipe *r = &meta.recipe;
    const int K = s.K, C = 2;
    /* 1. rows: the stored ones whose origin is still in force with the same class, then the new corrections */
    GHashTable *force = g_hash_table_new(g_bytes_hash, g_bytes_equal); /* origin bytes -> correction */
    GPtrArray *keys = g_ptr_array_new_with_free_func((GDestroyNotify)g_bytes_unref);
    for (guint i = 0; i < cs->len; i++) {
        correction *c = cs->pdata[i];
        uint8_t o[32];
        hex32(c->sha, o);
        GBytes *b = g_bytes_new(o, 32);
        g_ptr_array_add(keys, b);
        g_hash_table_insert(force, b, c);
    }
    static const uint8_t zero[32];
    int *keep = tbert_malloc_array((size_t)s.n, sizeof(int)), n_keep = 0;
    GHashTable *present = g_hash_table_new(g_direct_hash, g_direct_equal);
    for (int i = 0; keep && i < s.n; i++) {
        const uint8_t *o = s.origin + (size_t)i * 32;
        if (!memcmp(o, zero, 32)) {
            keep[n_keep++] = i;
            continue;
        }
        GBytes *b = g_bytes_new_static(o, 32);
        correction *c = g_hash_table_lookup(force, b);
        g_bytes_unref(b);
        if (c && tbert_recipe_label_index(r, c->klass) == s.y[i] && !g_hash_table_contains(present, c)) {
            keep[n_keep++] = i;
            g_hash_table_add(present, c);
        }
    }
    for (guint i = 0; i < cs->len; i++)
        if (!g_hash_table_contains(present, cs->pdata[i])) g_ptr_array_add(todo, cs->pdata[i]);
    g_hash_table_destroy(present);
    g_hash_table_destroy(force);
    g_ptr_array_free(keys, TRUE);
    if (!keep) {
        st = tbert_fail(err, TBERT_E_NOMEM, "learn: out of memory");
        goto done;
    }
    int encoded = 0;
    if (todo->len) st = featurize_new(model_path, r, lo, todo, &Xn, &encoded, err);
    if (!st && todo->len && (Xn.dense_dim != s.X.dense_dim || Xn.sparse_dim != s.X.sparse_dim))
        st = tbert_fail(err, TBERT_E_MISMATCH, "%s/learn.state: rows of another width than the recipe's (retrain with --full)", dir);
    /* the new state: kept rows, then the new ones */
    int n = n_keep + (int)todo->len;
    ns.n = n;
    ns.K = K;
    memcpy(ns.data_hash, s.data_hash, sizeof ns.data_hash);
    ns.y = tbert_malloc_array((size_t)n, sizeof(int));
    ns.fold = tbert_malloc_array((size_t)n, sizeof(int));
    ns.origin = tbert_calloc_array((size_t)n, 32);
    if (!st && (!ns.y || !ns.fold || !ns.origin)) st = tbert_fail(err, TBERT_E_NOMEM, "learn: out of memory");
    size_t widths[TBERT_ROWS_MAX_BLOCKS];
    for (int b = 0; b < s.X.n_blocks; b++) widths[b] = s.X.block_start[b + 1] - s.X.block_start[b];
    if (!st) st = tbert_rows_init(&ns.X, s.X.dense_dim, s.X.n_blocks, widths, err);
    if (!st) st = tbert_rows_gather(&ns.X, &s.X, keep, n_keep, err);
    int (*per)[2] = tbert_calloc_array((size_t)K, sizeof *per); /* rows per (fold, positive?) */
    if (!st && !per) st = tbert_fail(err, TBERT_E_NOMEM, "learn: out of memory");
    for (int i = 0; !st && i < n_keep; i++) {
        ns.y[i] = s.y[keep[i]];
        ns.fold[i] = s.fold[keep[i]];
        memcpy(ns.origin + (size_t)i * 32, s.origin + (size_t)keep[i] * 32, 32);
        per[ns.fold[i]][ns.y[i] == r->positive]++;
    }
    free(keep);
    for (int j = 0; !st && j < (int)todo->len; j++) {
        const correction *c = todo->pdata[j];
        int i = n_keep + j, cls = tbert_recipe_label_index(r, c->klass);
        if (cls < 0) st = tbert_fail(err, TBERT_E_ARG, "%s: the head has no class '%s'", dir, c->klass);
        if (!st) st = tbert_rows_append_row(&ns.X, &Xn, j, err);
        if (st) break;
        ns.y[i] = cls;
        hex32(c->sha, ns.origin + (size_t)i * 32);
        int f = 0, pc = cls == r->positive;
        for (int k = 1; k < K; k++)
            if (per[k][pc] < per[f][pc]) f = k;
        ns.fold[i] = f;
        per[f][pc]++;
    }
    free(per);
    /* 2. each fold head continues on the rows outside its fold, corrections repeated */
    int epochs = WARM_EPOCHS;
    ns.heads = tbert_calloc_array((size_t)K, sizeof *ns.heads);
    int *idx = tbert_malloc_array((size_t)n * CORRECTION_REPEATS + 1, sizeof(int));
    if (!st && (!ns.heads || !idx)) st = tbert_fail(err, TBERT_E_NOMEM, "learn: out of memory");
    for (int k = 0; !st && k < K; k++) {
        ns.heads[k] = s.heads[k];
        s.heads[k] = NULL;
        ns.heads[k]->cfg.dropout = hp.dropout; /* learn.state keeps weights and shape, not the training settings */
        int m = 0;
        for (int i = 0; i < n; i++) {
            if (ns.fold[i] == k) continue;
            int reps = memcmp(ns.origin + (size_t)i * 32, zero, 32) ? CORRECTION_REPEATS : 1;
            for (int t = 0; t < reps; t++) idx[m++] = i;
        }
        st = continue_head(ns.heads[k], &ns.X, ns.y, idx, m, &hp, hp.seed + 1000003ull * (uint64_t)(k + 1), &epochs, err);
    }
    free(idx);
    /* 3. out-of-fold scores, threshold */
    float *probs = st ? NULL : tbert_malloc_array((size_t)n, (size_t)C * sizeof(float));
    score = tbert_malloc_array((size_t)n, sizeof(float));
    pos = tbert_malloc_array((size_t)n, sizeof(bool));
    y = tbert_malloc_array((size_t)n, sizeof(int));
    if (!st && (!probs || !score || !pos || !y)) st = tbert_fail(err, TBERT_E_NOMEM, "learn: out of memory");
    if (!st) st = out_of_fold(&ns, probs, err);
    for (int i = 0; !st && i < n; i++) {
        score[i] = probs[(size_t)i * C + r->positive];
        pos[i] = ns.y[i] == r->positive;
        y[i] = ns.y[i];
    }
    float thr = 0.5f;
    if (!st) st = tbert_threshold_choose(rule, n, score, pos, &thr, err);
    /* 4. the kept head and its files */
    if (!st) st = tbert_head_ensemble(ns.heads, K, &ens, err);
    fr.best = ens;
    fr.threshold = thr;
    fr.epochs_run = fr.best_epoch = epochs;
    fr.n_oof = n;
    fr.val_probs = probs;
    probs = NULL;
    if (!st) st = tbert_metrics_compute(n, C, fr.val_probs, y, r->positive, thr, &fr.val, err);
    if (!st) {
        float *pt = tbert_malloc_array((size_t)n, (size_t)C * sizeof(float));
        st = pt ? rows_probs(ens, &ns.X, NULL, n, pt, err) : tbert_fail(err, TBERT_E_NOMEM, "learn: out of memory");
        if (!st) st = tbert_metrics_compute(n, C, pt, y, r->positive, thr, &fr.train, err);
        free(pt);
    }
    if (!st) st = tbert_learn_history_push(dir, lo->keep > 0 ? lo->keep : 5, &made, err);
    if (!st) st = tbert_ckpt_plan_open(dir, false, &plan, err);
    planned = !st;
    tbert_recipe rec = *r;
    rec.threshold = thr;
    if (!st) { /* best.safetensors and last.safetensors: the ensemble, with the metrics of this retrain */
        char *fm = tbert_fit_metrics_json(&fr, &rec);
        tbert_ckpt_meta wm = meta;
        wm.recipe = rec;
        wm.epoch = wm.best_epoch = epochs;
        wm.metrics_json = fm;
        GChecksum *h = g_checksum_new(G_CHECKSUM_SHA256); /* the data: training.json's set and the corrections in force */
        g_checksum_update(h, (const guchar *)s.data_hash, 64);
        for (guint i = 0; i < cs->len; i++) {
            const correction *c = cs->pdata[i];
            g_checksum_update(h, (const guchar *)c->sha, 64);
            g_checksum_update(h, (const guchar *)c->klass, strlen(c->klass) + 1);
        }
        snprintf(wm.data_hash, sizeof wm.data_hash, "%s", g_checksum_get_string(h));
        g_checksum_free(h);
        char *p = g_strdup_printf("%s/best.safetensors", plan.work);
        st = fm ? tbert_checkpoint_save(p, ens, &wm, NULL, NULL, err) : tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", p);
        g_free(p);
        p = g_strdup_printf("%s/last.safetensors", plan.work);
        if (!st) st = tbert_checkpoint_save(p, ens, &wm, NULL, NULL, err);
        g_free(p);
        free(fm);
    }
    if (!st) { /* oof.safetensors and metrics.json: the new promise */
        tbert_oof no = {.n = n, .score = score, .is_pos = pos, .threshold = thr};
        snprintf(no.source, sizeof no.source, "out-of-fold");
        snprintf(no.rule, sizeof no.rule, "%s", rule);
        st = tbert_oof_save(plan.work, &no, &rec, err);
        tres.fit = fr;
        tres.recipe = rec;
        tres.n_docs = n;
        tres.docs_encoded = encoded;
        tres.cache_hit = encoded == 0;
        tbert_operating_point_compute(n, score, pos, thr, rule, &tres.op);
        snprintf(tres.op_source, sizeof tres.op_source, "out-of-fold");
        tres.has_op = true;
        tres.seconds_total = tbert_now() - t0;
        if (!st) st = tbert_train_metrics_write(plan.work, &tres, &rec, err);
        memset(&tres.fit, 0, sizeof tres.fit);
    }
    if (!st) st = tbert_learn_state_save(plan.work, &ns.X, ns.y, NULL, n, ns.fold, ns.origin, ns.heads, K, ns.data_hash, err);
    /* the files this retrain does not rewrite: training.json (the same training set), split.tsv and
     * report.html (of the full run that made the state; its metrics predate the corrections) */
    const char *same[] = {"training.json", "split.tsv", "report.html"};
    for (int k = 0; !st && plan.staged && k < 3; k++) st = link_in(dir, plan.work, same[k], err);
    if (!st && plan.staged) st = tbert_ckpt_plan_commit(dir, &plan, err);
    if (!st) {
        res->retrained = true;
        res->warm = true;
        res->epochs = epochs;
        res->docs = n;
        res->docs_encoded = encoded;
        res->threshold = thr;
        if (!lo->quiet)
            fprintf(stderr, "tbert: warm retrain: %d rows (%d new), %d fold heads x %d epochs, threshold %.6g (%s), %.2f s\n", n,
                    (int)todo->len, K, epochs, (double)thr, rule, tbert_now() - t0);
    }
    free(probs);
done:
    if (st && planned) tbert_ckpt_plan_failed(dir, &plan, err);
    if (st && made) { /* the head is unchanged: its copy in the history is not a previous head */
        char *e = g_strdup_printf("%s/history/%ld", dir, made);
        tbert_learn_remove_entry(e);
        g_free(e);
    }
    tbert_ckpt_plan_free(&plan);
    fr.best = NULL; /* ens, freed below */
    tbert_fit_result_free(&fr);
    tbert_head_free(ens);
    tbert_head_free(cur);
    tbert_ckpt_meta_free(&meta);
    tbert_oof_free(&oof);
    tbert_rows_free(&Xn);
    tbert_learn_state_free(&ns);
    tbert_learn_state_free(&s);
    tbert_learn_corrections_free(cs);
    g_ptr_array_free(todo, TRUE);
    cJSON_Delete(mj);
    free(txt);
    free(score);
    free(pos);
    free(y);
    g_free(rule);
    g_free(mpath);
    g_free(best);
    openblas_set_num_threads(blas_threads);
    return st;
}
