/* Head checkpoints (include/tbert/checkpoint.h) and the trained classifier used by eval/predict/score/filter
 * (include/tbert/recipe.h). */
#include "tbert/checkpoint.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tbert/fileio.h"
#include "tbert/finetune.h"
#include "tbert/safetensors.h"

void tbert_ckpt_meta_free(tbert_ckpt_meta *m) {
    if (!m) return;
    free(m->metrics_json);
    free(m->train_json);
    m->metrics_json = m->train_json = NULL;
}

static char *head_json(const tbert_head_config *c) {
    char buf[256];
    snprintf(buf, sizeof buf, "{\"in_dim\":%d,\"hidden\":%d,\"n_classes\":%d,\"binary\":%s,\"dropout\":%.9g}", c->in_dim,
             c->hidden, c->n_classes, c->binary ? "true" : "false", (double)c->dropout);
    return tbert_strdup(buf);
}

static char *labels_json(const tbert_recipe *r) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < r->n_labels; i++) cJSON_AddItemToArray(a, cJSON_CreateString(r->labels[i]));
    char *s = a ? cJSON_PrintUnformatted(a) : NULL;
    cJSON_Delete(a);
    return s;
}

static tbert_status add_meta(tbert_st_writer *w, const char *k, const char *v, tbert_error *err) {
    if (!v) return tbert_fail(err, TBERT_E_NOMEM, "checkpoint: out of memory");
    return tbert_st_writer_meta(w, k, v, err);
}

tbert_status tbert_checkpoint_save(const char *path, const tbert_head *h, const tbert_ckpt_meta *meta, const tbert_adam *adam,
                                   const tbert_rng *rng, tbert_error *err) {
    return tbert_checkpoint_save_ex(path, h, meta, adam, rng, NULL, NULL, err);
}

tbert_status tbert_checkpoint_save_ex(const char *path, const tbert_head *h, const tbert_ckpt_meta *meta, const tbert_adam *adam,
                                      const tbert_rng *rng, tbert_ckpt_extra_fn extra, void *ctx, tbert_error *err) {
    tbert_st_writer *w = tbert_st_writer_new();
    if (!w) return tbert_fail(err, TBERT_E_NOMEM, "checkpoint: out of memory");
    tbert_status st = TBERT_OK;
    for (int t = 0; t < h->n_tensors && !st; t++) {
        const tbert_head_tensor *ht = &h->tensors[t];
        st = tbert_st_writer_add(w, ht->name, TBERT_DT_F32, ht->ndim, ht->shape, h->params + ht->offset, err);
    }
    if (adam) {
        char name[64];
        for (int t = 0; t < h->n_tensors && !st; t++) {
            const tbert_head_tensor *ht = &h->tensors[t];
            snprintf(name, sizeof name, "adam.m.%s", ht->name);
            st = tbert_st_writer_add(w, name, TBERT_DT_F32, ht->ndim, ht->shape, adam->m + ht->offset, err);
            snprintf(name, sizeof name, "adam.v.%s", ht->name);
            if (!st) st = tbert_st_writer_add(w, name, TBERT_DT_F32, ht->ndim, ht->shape, adam->v + ht->offset, err);
        }
        int64_t one = 1, step = adam->step;
        if (!st) st = tbert_st_writer_add(w, "adam.step", TBERT_DT_I64, 1, &one, &step, err);
    }
    if (rng && !st) {
        int64_t four = 4, s[4];
        memcpy(s, rng->s, sizeof s);
        st = tbert_st_writer_add(w, "train.rng", TBERT_DT_I64, 1, &four, s, err);
    }
    char num[64];
    char *recipe = tbert_recipe_to_json(&meta->recipe), *hj = head_json(&h->cfg), *lj = labels_json(&meta->recipe);
    if (!st) st = add_meta(w, "format", "tbert-head", err);
    snprintf(num, sizeof num, "%d", TBERT_CKPT_FORMAT_VERSION);
    if (!st) st = add_meta(w, "format_version", num, err);
    if (!st) st = add_meta(w, "tbert_version", TBERT_VERSION, err);
    if (!st) st = add_meta(w, "recipe", recipe, err);
    if (!st) st = add_meta(w, "head", hj, err);
    if (!st) st = add_meta(w, "labels", lj, err);
    if (!st)
        st = add_meta(w, "positive", meta->recipe.positive >= 0 ? meta->recipe.labels[meta->recipe.positive] : "", err);
    snprintf(num, sizeof num, "%.9g", (double)meta->recipe.threshold);
    if (!st) st = add_meta(w, "threshold", num, err);
    snprintf(num, sizeof num, "%" PRIu64, meta->seed);
    if (!st) st = add_meta(w, "seed", num, err);
    if (!st) st = add_meta(w, "data_hash", meta->data_hash, err);
    snprintf(num, sizeof num, "%d", meta->epoch);
    if (!st) st = add_meta(w, "epoch", num, err);
    snprintf(num, sizeof num, "%d", meta->best_epoch);
    if (!st) st = add_meta(w, "best_epoch", num, err);
    if (!st) st = add_meta(w, "metrics", meta->metrics_json ? meta->metrics_json : "{}", err);
    if (!st) st = add_meta(w, "train", meta->train_json ? meta->train_json : "{}", err);
    free(recipe);
    free(hj);
    free(lj);
    if (!st && extra) st = extra(ctx, w, err);
    if (!st) st = tbert_st_writer_save(w, path, err);
    tbert_st_writer_free(w);
    return st;
}

/* ---- loading ---- */
static bool parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out) {
    if (!s || !*s) return false;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

static tbert_status read_tensor(const tbert_safetensors *st, const char *path, const char *name, const tbert_head_tensor *ht,
                                float *dst, tbert_error *err) {
    const tbert_st_tensor *t = tbert_st_find(st, name);
    if (!t) return tbert_fail(err, TBERT_E_FORMAT, "%s: tensor '%s' is missing", path, name);
    bool shape_ok = t->dtype == TBERT_DT_F32 && t->ndim == ht->ndim && t->shape[0] == ht->shape[0] &&
                    (ht->ndim == 1 || t->shape[1] == ht->shape[1]);
    if (!shape_ok)
        return tbert_fail(err, TBERT_E_FORMAT, "%s: tensor '%s' should be F32 of shape (%lld%s%lld)", path, name,
                          (long long)ht->shape[0], ht->ndim == 2 ? "," : "", ht->ndim == 2 ? (long long)ht->shape[1] : 0LL);
    tbert_status s = tbert_st_to_f32(st, t, dst, err);
    if (s) return s;
    for (size_t i = 0; i < ht->numel; i++)
        if (!isfinite(dst[i])) return tbert_fail(err, TBERT_E_FORMAT, "%s: tensor '%s' holds NaN or Inf", path, name);
    return TBERT_OK;
}

static tbert_status read_i64s(const tbert_safetensors *st, const char *path, const char *name, int64_t n, int64_t *out,
                              tbert_error *err) {
    const tbert_st_tensor *t = tbert_st_find(st, name);
    if (!t) return tbert_fail(err, TBERT_E_FORMAT, "%s: tensor '%s' is missing (not a last.safetensors?)", path, name);
    if (t->dtype != TBERT_DT_I64 || t->ndim != 1 || t->shape[0] != n)
        return tbert_fail(err, TBERT_E_FORMAT, "%s: tensor '%s' should be I64 of shape (%lld)", path, name, (long long)n);
    memcpy(out, t->data, (size_t)n * sizeof(int64_t));
    return TBERT_OK;
}

/* a JSON number that is a whole number within [lo, hi] (checked in double before any conversion) */
static bool json_int(const cJSON *v, double lo, double hi, int *out) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= lo && d <= hi) || d != floor(d)) return false;
    *out = (int)d;
    return true;
}

static tbert_status parse_head_cfg(const char *json, const char *path, const tbert_recipe *r, tbert_head_config *c,
                                   tbert_error *err) {
    cJSON *o = json ? cJSON_Parse(json) : NULL;
    memset(c, 0, sizeof *c);
    const cJSON *in = cJSON_GetObjectItemCaseSensitive(o, "in_dim"), *hid = cJSON_GetObjectItemCaseSensitive(o, "hidden"),
                *nc = cJSON_GetObjectItemCaseSensitive(o, "n_classes"), *bin = cJSON_GetObjectItemCaseSensitive(o, "binary"),
                *dr = cJSON_GetObjectItemCaseSensitive(o, "dropout");
    /* the same caps as tbert_head_create; checked before the conversion to int (1e300 would be UB) */
    bool ok = json_int(in, 1, (double)(1 << 24), &c->in_dim) && json_int(hid, 0, (double)(1 << 16), &c->hidden) &&
              json_int(nc, 2, (double)TBERT_MAX_LABELS, &c->n_classes) && cJSON_IsBool(bin) && cJSON_IsNumber(dr) &&
              dr->valuedouble >= 0 && dr->valuedouble < 1;
    if (ok) {
        c->binary = cJSON_IsTrue(bin);
        c->dropout = (float)dr->valuedouble;
        c->positive = r->positive >= 0 ? r->positive : 0;
    }
    cJSON_Delete(o);
    if (!ok) return tbert_fail(err, TBERT_E_FORMAT, "%s: metadata 'head' is missing or invalid", path);
    if ((size_t)c->in_dim != tbert_recipe_dim(r))
        return tbert_fail(err, TBERT_E_FORMAT, "%s: head input size %d does not match its recipe's feature size %zu", path,
                          c->in_dim, tbert_recipe_dim(r));
    if (c->n_classes != r->n_labels)
        return tbert_fail(err, TBERT_E_FORMAT, "%s: head has %d classes but %d labels", path, c->n_classes, r->n_labels);
    if (c->binary != (r->positive >= 0))
        return tbert_fail(err, TBERT_E_FORMAT, "%s: head and recipe disagree on binary vs multi-class", path);
    return TBERT_OK;
}

/* The parameter tensors the file holds must have the shapes the claimed config implies (F32, so the
 * allocation tbert_head_create makes is bounded by the file's own size) before anything is allocated. */
static tbert_status check_head_shapes(const tbert_safetensors *st, const char *path, const tbert_head_config *c,
                                      tbert_error *err) {
    int64_t O = tbert_head_out_dim(c), K = c->hidden > 0 ? c->hidden : c->in_dim;
    struct {
        const char *name;
        int64_t d0, d1;
    } want[4] = {{"fc2.weight", O, K}, {"fc2.bias", O, 0}, {"fc1.weight", c->hidden, c->in_dim}, {"fc1.bias", c->hidden, 0}};
    int n = c->hidden > 0 ? 4 : 2;
    for (int i = 0; i < n; i++) {
        const tbert_st_tensor *t = tbert_st_find(st, want[i].name);
        if (!t) return tbert_fail(err, TBERT_E_FORMAT, "%s: tensor '%s' is missing", path, want[i].name);
        int nd = want[i].d1 ? 2 : 1;
        if (t->dtype != TBERT_DT_F32 || t->ndim != nd || t->shape[0] != want[i].d0 || (nd == 2 && t->shape[1] != want[i].d1))
            return tbert_fail(err, TBERT_E_FORMAT, "%s: tensor '%s' should be F32 of shape (%lld%s%lld) for the head in its metadata",
                              path, want[i].name, (long long)want[i].d0, nd == 2 ? "," : "", nd == 2 ? (long long)want[i].d1 : 0LL);
    }
    if (c->hidden == 0 && tbert_st_find(st, "fc1.weight"))
        return tbert_fail(err, TBERT_E_FORMAT, "%s: tensor 'fc1.weight' in a linear head", path);
    return TBERT_OK;
}

tbert_status tbert_checkpoint_load(const char *path, tbert_head **out, tbert_ckpt_meta *meta, tbert_adam *adam, tbert_rng *rng,
                                   tbert_error *err) {
    *out = NULL;
    memset(meta, 0, sizeof *meta);
    tbert_safetensors *st;
    tbert_status s = tbert_st_open(path, &st, err);
    if (s) return s;
    tbert_head *h = NULL;
    const char *fmt = tbert_st_meta(st, "format"), *fv = tbert_st_meta(st, "format_version");
    int64_t v;
    if (!fmt || strcmp(fmt, "tbert-head")) {
        s = tbert_fail(err, TBERT_E_FORMAT, "%s: not a tbert head checkpoint (metadata 'format' is not tbert-head)", path);
        goto fail;
    }
    if (!parse_i64(fv, 0, 1000000, &v) || v != TBERT_CKPT_FORMAT_VERSION) {
        s = tbert_fail(err, TBERT_E_UNSUPPORTED, "%s: checkpoint format_version %s is not supported (this tbert knows %d)", path,
                       fv ? fv : "(missing)", TBERT_CKPT_FORMAT_VERSION);
        goto fail;
    }
    s = tbert_recipe_from_json(tbert_st_meta(st, "recipe"), path, &meta->recipe, err);
    if (s) goto fail;
    /* the redundant plain-text fields must agree with the recipe */
    {
        char *lj = labels_json(&meta->recipe);
        const char *ml = tbert_st_meta(st, "labels"), *mp = tbert_st_meta(st, "positive"), *mt = tbert_st_meta(st, "threshold");
        const char *rp = meta->recipe.positive >= 0 ? meta->recipe.labels[meta->recipe.positive] : "";
        char *end = NULL;
        double thr = mt ? strtod(mt, &end) : NAN;
        bool ok = lj && ml && !strcmp(lj, ml) && mp && !strcmp(mp, rp) && mt && end && !*end && (float)thr == meta->recipe.threshold;
        free(lj);
        if (!ok) {
            s = tbert_fail(err, TBERT_E_FORMAT, "%s: metadata labels/positive/threshold disagree with the recipe", path);
            goto fail;
        }
    }
    const char *ds = tbert_st_meta(st, "data_hash"), *sd = tbert_st_meta(st, "seed");
    int64_t ep, be;
    if (!ds || strlen(ds) != 64 || !sd || !parse_i64(tbert_st_meta(st, "epoch"), 0, 1000000000, &ep) ||
        !parse_i64(tbert_st_meta(st, "best_epoch"), 0, 1000000000, &be)) {
        s = tbert_fail(err, TBERT_E_FORMAT, "%s: metadata data_hash/seed/epoch/best_epoch missing or invalid", path);
        goto fail;
    }
    memcpy(meta->data_hash, ds, 65);
    errno = 0;
    char *end;
    meta->seed = strtoull(sd, &end, 10);
    if (errno || *end || !*sd) {
        s = tbert_fail(err, TBERT_E_FORMAT, "%s: metadata seed '%s' is not a number", path, sd);
        goto fail;
    }
    meta->epoch = (int)ep;
    meta->best_epoch = (int)be;
    const char *mj = tbert_st_meta(st, "metrics"), *tj = tbert_st_meta(st, "train");
    meta->metrics_json = tbert_strdup(mj ? mj : "{}");
    meta->train_json = tbert_strdup(tj ? tj : "{}");
    if (!meta->metrics_json || !meta->train_json) {
        s = tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    tbert_head_config cfg;
    s = parse_head_cfg(tbert_st_meta(st, "head"), path, &meta->recipe, &cfg, err);
    if (!s) s = check_head_shapes(st, path, &cfg, err);
    if (s) goto fail;
    s = tbert_head_create(&cfg, &h, err);
    if (s) {
        tbert_error_prefix(err, "%s", path);
        goto fail;
    }
    int expected = h->n_tensors;
    for (int t = 0; t < h->n_tensors && !s; t++)
        s = read_tensor(st, path, h->tensors[t].name, &h->tensors[t], h->params + h->tensors[t].offset, err);
    if (s) goto fail;
    if (adam) {
        s = tbert_adam_init(adam, h->n_params, err);
        if (s) goto fail;
        char name[64];
        for (int t = 0; t < h->n_tensors && !s; t++) {
            snprintf(name, sizeof name, "adam.m.%s", h->tensors[t].name);
            s = read_tensor(st, path, name, &h->tensors[t], adam->m + h->tensors[t].offset, err);
            snprintf(name, sizeof name, "adam.v.%s", h->tensors[t].name);
            if (!s) s = read_tensor(st, path, name, &h->tensors[t], adam->v + h->tensors[t].offset, err);
        }
        int64_t step;
        if (!s) s = read_i64s(st, path, "adam.step", 1, &step, err);
        if (!s && step < 0) s = tbert_fail(err, TBERT_E_FORMAT, "%s: adam.step is negative", path);
        if (s) {
            tbert_adam_free(adam);
            goto fail;
        }
        adam->step = step;
    }
    if (tbert_st_find(st, "adam.step")) expected += 2 * h->n_tensors + 1;
    if (rng) {
        int64_t sv[4];
        s = read_i64s(st, path, "train.rng", 4, sv, err);
        if (s) {
            if (adam) tbert_adam_free(adam);
            goto fail;
        }
        memcpy(rng->s, sv, sizeof sv);
    }
    if (tbert_st_find(st, "train.rng")) expected += 1;
    if (meta->recipe.finetune.layers > 0) /* a fine-tuned encoder's tensors: checked by tbert_model_apply_finetune; in
                                            * last.safetensors also the optimiser's (src/finetune.c) */
        for (int t = 0; t < tbert_st_count(st); t++)
            expected += !strncmp(tbert_st_at(st, t)->name, TBERT_FINETUNE_PREFIX, strlen(TBERT_FINETUNE_PREFIX)) ||
                        !strncmp(tbert_st_at(st, t)->name, "optim.", 6);
    if (tbert_st_count(st) != expected) {
        s = tbert_fail(err, TBERT_E_FORMAT, "%s: %d tensors where a %s head has %d", path, tbert_st_count(st),
                       cfg.hidden ? "MLP" : "linear", expected);
        if (adam) tbert_adam_free(adam);
        goto fail;
    }
    tbert_st_close(st);
    *out = h;
    return TBERT_OK;
fail:
    tbert_head_free(h);
    tbert_ckpt_meta_free(meta);
    tbert_st_close(st);
    return s;
}

/* ---- classifier ---- */
struct tbert_classifier {
    tbert_recipe recipe;
    tbert_head *head;
};

tbert_status tbert_classifier_load(const char *ckpt, const tbert_model *m, tbert_classifier **out, tbert_error *err) {
    *out = NULL;
    char path[4096];
    if (tbert_is_dir(ckpt)) snprintf(path, sizeof path, "%s/best.safetensors", ckpt);
    else snprintf(path, sizeof path, "%s", ckpt);
    if (!tbert_is_regular_file(path))
        return tbert_fail(err, TBERT_E_IO, "%s: no head checkpoint there (expected a folder with best.safetensors)", path);
    tbert_classifier *c = calloc(1, sizeof *c);
    if (!c) return tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", path);
    tbert_ckpt_meta meta;
    tbert_status s = tbert_checkpoint_load(path, &c->head, &meta, NULL, NULL, err);
    if (s) {
        free(c);
        return s;
    }
    c->recipe = meta.recipe;
    tbert_ckpt_meta_free(&meta);
    if (m) {
        s = tbert_recipe_check_model(&c->recipe, m, false, err);
        if (s) {
            tbert_error_prefix(err, "%s", path);
            tbert_classifier_free(c);
            return s;
        }
    }
    *out = c;
    return TBERT_OK;
}

void tbert_classifier_free(tbert_classifier *c) {
    if (!c) return;
    tbert_head_free(c->head);
    free(c);
}

const tbert_recipe *tbert_classifier_recipe(const tbert_classifier *c) { return &c->recipe; }
const tbert_head *tbert_classifier_head(const tbert_classifier *c) { return c->head; }

/* one of feats (dense) or rows */
static tbert_status classifier_predict(const tbert_classifier *c, int n, const float *feats, const tbert_rows *rows,
                                       float *p_positive, int *label_idx, tbert_error *err) {
    int C = c->head->cfg.n_classes;
    float *probs = tbert_malloc_array((size_t)(n > 0 ? n : 1), (size_t)C * sizeof(float));
    if (!probs) return tbert_fail(err, TBERT_E_NOMEM, "classifier: out of memory for %d rows", n);
    tbert_status s = rows ? tbert_head_predict_rows(c->head, rows, probs, err) : tbert_head_predict(c->head, n, feats, probs, err);
    if (!s) {
        const tbert_recipe *r = &c->recipe;
        for (int i = 0; i < n; i++) {
            const float *p = probs + (size_t)i * C;
            int k;
            if (r->positive >= 0) {
                k = p[r->positive] >= r->threshold ? r->positive : 1 - r->positive;
                if (p_positive) p_positive[i] = p[r->positive];
            } else {
                k = 0;
                for (int j = 1; j < C; j++)
                    if (p[j] > p[k]) k = j;
                if (p_positive) p_positive[i] = p[k];
            }
            if (label_idx) label_idx[i] = k;
        }
    }
    free(probs);
    return s;
}

tbert_status tbert_classifier_predict(const tbert_classifier *c, int n, const float *feats, float *p_positive, int *label_idx,
                                      tbert_error *err) {
    return classifier_predict(c, n, feats, NULL, p_positive, label_idx, err);
}

tbert_status tbert_classifier_predict_rows(const tbert_classifier *c, const tbert_rows *rows, float *p_positive, int *label_idx,
                                           tbert_error *err) {
    return classifier_predict(c, rows->n, NULL, rows, p_positive, label_idx, err);
}
