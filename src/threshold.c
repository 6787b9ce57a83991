/* The operating point of a binary head: the held-out scores the threshold was chosen on (CKPT_DIR/
 * oof.safetensors), the counts at a threshold with Clopper-Pearson intervals, and `tbert threshold`'s
 * re-choice without retraining (include/tbert/threshold.h). */
#include "tbert/threshold.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tbert/checkpoint.h"
#include "tbert/fileio.h"
#include "tbert/metrics.h"
#include "tbert/safetensors.h"
#include "tbert/train.h"

void tbert_oof_free(tbert_oof *o) {
    if (!o) return;
    free(o->score);
    free(o->is_pos);
    memset(o, 0, sizeof *o);
}

tbert_status tbert_oof_save(const char *dir, const tbert_oof *o, const tbert_recipe *r, tbert_error *err) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, TBERT_OOF_FILE);
    if (r->positive < 0) return tbert_fail(err, TBERT_E_ARG, "%s: only a binary head has an operating point", path);
    uint8_t *lab = tbert_malloc_array((size_t)o->n + 1, 1);
    cJSON *labels = cJSON_CreateArray();
    tbert_st_writer *w = tbert_st_writer_new();
    tbert_status st = TBERT_OK;
    if (!lab || !labels || !w) st = tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", path);
    for (int i = 0; !st && i < o->n; i++) lab[i] = o->is_pos[i] ? 1 : 0;
    for (int k = 0; !st && k < r->n_labels; k++) cJSON_AddItemToArray(labels, cJSON_CreateString(r->labels[k]));
    char *lj = st ? NULL : cJSON_PrintUnformatted(labels);
    char thr[32];
    snprintf(thr, sizeof thr, "%.9g", (double)o->threshold);
    int64_t shape[1] = {o->n};
    if (!st && !lj) st = tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", path);
    if (!st) st = tbert_st_writer_add(w, "score", TBERT_DT_F32, 1, shape, o->score, err);
    if (!st) st = tbert_st_writer_add(w, "positive", TBERT_DT_U8, 1, shape, lab, err);
    if (!st) st = tbert_st_writer_meta(w, "format", "tbert-oof", err);
    if (!st) st = tbert_st_writer_meta(w, "format_version", "1", err);
    if (!st) st = tbert_st_writer_meta(w, "source", o->source, err);
    if (!st) st = tbert_st_writer_meta(w, "rule", o->rule, err);
    if (!st) st = tbert_st_writer_meta(w, "threshold", thr, err);
    if (!st) st = tbert_st_writer_meta(w, "labels", lj, err);
    if (!st) st = tbert_st_writer_meta(w, "positive", r->labels[r->positive], err);
    if (!st) st = tbert_st_writer_save(w, path, err);
    free(lj);
    cJSON_Delete(labels);
    tbert_st_writer_free(w);
    free(lab);
    return st;
}

tbert_status tbert_oof_load(const char *dir, tbert_oof *o, tbert_error *err) {
    memset(o, 0, sizeof *o);
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, TBERT_OOF_FILE);
    if (!tbert_is_regular_file(path))
        return tbert_fail(err, TBERT_E_IO, "%s: the head has no stored out-of-fold scores (trained before they were kept, or not a "
                                           "binary head): retrain it to re-pick its threshold",
                          path);
    tbert_safetensors *f = NULL;
    tbert_status st = tbert_st_open(path, &f, err);
    if (st) return st;
    const char *fmt = tbert_st_meta(f, "format"), *ver = tbert_st_meta(f, "format_version");
    const char *src = tbert_st_meta(f, "source"), *rule = tbert_st_meta(f, "rule"), *thr = tbert_st_meta(f, "threshold");
    const tbert_st_tensor *ts = tbert_st_find(f, "score"), *tp = tbert_st_find(f, "positive");
    if (!fmt || strcmp(fmt, "tbert-oof") || !ver || !src || !rule || !thr)
        st = tbert_fail(err, TBERT_E_FORMAT, "%s: not a tbert out-of-fold score file", path);
    else if (strcmp(ver, "1"))
        st = tbert_fail(err, TBERT_E_FORMAT, "%s: format_version %s is newer than this tbert knows (1)", path, ver);
    else if (!ts || !tp || ts->dtype != TBERT_DT_F32 || tp->dtype != TBERT_DT_U8 || ts->ndim != 1 || tp->ndim != 1 ||
             ts->numel != tp->numel || ts->numel > (size_t)INT32_MAX)
        st = tbert_fail(err, TBERT_E_FORMAT, "%s: tensors score (F32 [n]) and positive (U8 [n]) are missing or malformed", path);
    if (!st) {
        o->n = (int)ts->numel;
        o->score = tbert_malloc_array(ts->numel + 1, sizeof(float));
        o->is_pos = tbert_malloc_array(ts->numel + 1, sizeof(bool));
        if (!o->score || !o->is_pos) st = tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", path);
    }
    if (!st) {
        memcpy(o->score, ts->data, ts->numel * sizeof(float));
        const uint8_t *lab = tp->data;
        for (int i = 0; i < o->n && !st; i++) {
            if (lab[i] > 1 || !isfinite(o->score[i]) || o->score[i] < 0 || o->score[i] > 1)
                st = tbert_fail(err, TBERT_E_FORMAT, "%s: entry %d is not a score in [0,1] with a 0/1 label", path, i);
            o->is_pos[i] = lab[i] == 1;
        }
        snprintf(o->source, sizeof o->source, "%s", src);
        snprintf(o->rule, sizeof o->rule, "%s", rule);
        o->threshold = strtof(thr, NULL);
    }
    tbert_st_close(f);
    if (st) tbert_oof_free(o);
    return st;
}

void tbert_operating_point_compute(int n, const float *score, const bool *is_pos, float threshold, const char *rule,
                                   tbert_operating_point *op) {
    memset(op, 0, sizeof *op);
    op->threshold = threshold;
    for (int i = 0; i < n; i++) {
        bool called = score[i] >= threshold;
        if (is_pos[i]) {
            op->n_pos++;
            op->tp += called;
        } else {
            op->n_neg++;
            op->fp += called;
        }
    }
    op->fpr = op->n_neg ? (double)op->fp / (double)op->n_neg : NAN;
    op->recall = op->n_pos ? (double)op->tp / (double)op->n_pos : NAN;
    tbert_clopper_pearson(op->fp, op->n_neg, TBERT_CI_LEVEL, &op->fpr_lo, &op->fpr_hi);
    tbert_clopper_pearson(op->tp, op->n_pos, TBERT_CI_LEVEL, &op->recall_lo, &op->recall_hi);
    op->fpr_target = tbert_threshold_fpr_target(rule);
    if (!isnan(op->fpr_target)) {
        op->neg_needed = tbert_negatives_needed(op->fpr_target, TBERT_CI_LEVEL);
        if (op->n_neg < op->neg_needed) {
            double lo0, hi0; /* the best a run with these negatives can show: none above the cut */
            tbert_clopper_pearson(0, op->n_neg, TBERT_CI_LEVEL, &lo0, &hi0);
            snprintf(op->warning, sizeof op->warning,
                     "%lld held-out negatives are too few to show a false-positive rate of %g: with none above the cut the "
                     "95%% upper bound is still %.2g; that takes at least %lld",
                     (long long)op->n_neg, op->fpr_target, hi0, (long long)op->neg_needed);
        }
    }
}

static cJSON *num_or_null(double v) { return isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull(); }

static cJSON *pair(double a, double b) {
    cJSON *p = cJSON_CreateArray();
    if (p) {
        cJSON_AddItemToArray(p, num_or_null(a));
        cJSON_AddItemToArray(p, num_or_null(b));
    }
    return p;
}

static cJSON *op_object(const tbert_operating_point *op, const char *source, const char *rule) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "source", source ? source : "");
    cJSON_AddStringToObject(o, "rule", rule ? rule : "");
    cJSON_AddNumberToObject(o, "threshold", op->threshold);
    cJSON_AddNumberToObject(o, "confidence", TBERT_CI_LEVEL);
    cJSON_AddNumberToObject(o, "n_negative", (double)op->n_neg);
    cJSON_AddNumberToObject(o, "false_positives", (double)op->fp);
    cJSON_AddItemToObject(o, "fpr", num_or_null(op->fpr));
    cJSON_AddItemToObject(o, "fpr_ci95", pair(op->fpr_lo, op->fpr_hi));
    cJSON_AddNumberToObject(o, "n_positive", (double)op->n_pos);
    cJSON_AddNumberToObject(o, "true_positives", (double)op->tp);
    cJSON_AddItemToObject(o, "recall", num_or_null(op->recall));
    cJSON_AddItemToObject(o, "recall_ci95", pair(op->recall_lo, op->recall_hi));
    if (!isnan(op->fpr_target)) {
        cJSON_AddNumberToObject(o, "fpr_target", op->fpr_target);
        cJSON_AddNumberToObject(o, "negatives_needed", (double)op->neg_needed);
    }
    if (op->warning[0]) cJSON_AddStringToObject(o, "warning", op->warning);
    return o;
}

char *tbert_operating_point_json(const tbert_operating_point *op, const char *source, const char *rule) {
    cJSON *o = op_object(op, source, rule);
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return s;
}

/* metrics object of the held-out split at the new threshold, as tbert_metrics_json writes it */
static cJSON *heldout_metrics(const tbert_oof *o, const tbert_recipe *r, float thr, tbert_error *err) {
    const int C = 2, P = r->positive;
    float *p = tbert_malloc_array((size_t)o->n + 1, 2 * sizeof(float));
    int *y = tbert_malloc_array((size_t)o->n + 1, sizeof(int));
    cJSON *out = NULL;
    if (!p || !y) tbert_fail(err, TBERT_E_NOMEM, "out of memory");
    else {
        for (int i = 0; i < o->n; i++) {
            p[(size_t)i * C + P] = o->score[i];
            p[(size_t)i * C + 1 - P] = 1 - o->score[i];
            y[i] = o->is_pos[i] ? P : 1 - P;
        }
        tbert_metrics m;
        if (!tbert_metrics_compute(o->n, C, p, y, P, thr, &m, err)) {
            char *s = tbert_metrics_json(&m, r);
            out = s ? cJSON_Parse(s) : NULL;
            free(s);
            tbert_metrics_free(&m);
            if (!out) tbert_fail(err, TBERT_E_NOMEM, "out of memory");
        }
    }
    free(p);
    free(y);
    return out;
}

/* replaces o[key] */
static void put(cJSON *o, const char *key, cJSON *v) {
    if (cJSON_GetObjectItemCaseSensitive(o, key)) cJSON_ReplaceItemInObjectCaseSensitive(o, key, v);
    else cJSON_AddItemToObject(o, key, v);
}

/* A fine-tuned head's best.safetensors also holds its encoder tensors (finetune.*, include/tbert/finetune.h), which
 * tbert_checkpoint_save does not write: the file is rewritten in one atomic save with every tensor and metadata
 * value copied, but the recipe, threshold and metrics metadata, which are the new ones. */
static tbert_status save_keeping_tensors(const char *path, const tbert_ckpt_meta *meta, tbert_error *err) {
    tbert_safetensors *st = NULL;
    tbert_status s = tbert_st_open(path, &st, err);
    tbert_st_writer *w = s ? NULL : tbert_st_writer_new();
    char *recipe = s ? NULL : tbert_recipe_to_json(&meta->recipe), thr[32];
    if (!s && (!w || !recipe)) s = tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", path);
    snprintf(thr, sizeof thr, "%.9g", (double)meta->recipe.threshold);
    for (int i = 0; !s && i < tbert_st_count(st); i++) {
        const tbert_st_tensor *t = tbert_st_at(st, i);
        s = tbert_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data, err);
    }
    for (int i = 0; !s && i < tbert_st_meta_count(st); i++) {
        const char *k = tbert_st_meta_key(st, i), *v = tbert_st_meta(st, k);
        if (!strcmp(k, "recipe")) v = recipe;
        else if (!strcmp(k, "threshold")) v = thr;
        else if (!strcmp(k, "metrics")) v = meta->metrics_json ? meta->metrics_json : "{}";
        s = tbert_st_writer_meta(w, k, v, err);
    }
    if (!s) s = tbert_st_writer_save(w, path, err);
    tbert_st_writer_free(w);
    free(recipe);
    tbert_st_close(st);
    return s;
}

tbert_status tbert_threshold_repick(const char *dir, const char *rule, tbert_operating_point *op, char *oof_source, size_t cap,
                                    tbert_error *err) {
    tbert_status st = tbert_threshold_parse(rule, err);
    if (st) return st;
    char best[4200], mpath[4200];
    snprintf(best, sizeof best, "%s/best.safetensors", dir);
    snprintf(mpath, sizeof mpath, "%s/metrics.json", dir);
    if (!tbert_is_regular_file(best))
        return tbert_fail(err, TBERT_E_IO, "%s: no head checkpoint there (expected a folder with best.safetensors)", dir);
    tbert_oof o;
    st = tbert_oof_load(dir, &o, err);
    if (st) return st;
    tbert_head *h = NULL;
    tbert_ckpt_meta meta = {0};
    bool have_meta = false;
    char *mj = NULL, *new_ckpt_metrics = NULL, *new_metrics = NULL;
    size_t mlen = 0;
    cJSON *cm = NULL, *mf = NULL, *held = NULL;
    st = tbert_checkpoint_load(best, &h, &meta, NULL, NULL, err);
    have_meta = !st;
    if (!st && (meta.recipe.positive < 0 || meta.recipe.n_labels != 2))
        st = tbert_fail(err, TBERT_E_ARG, "%s: not a binary head: it has no threshold to choose", best);
    float thr = 0.5f;
    if (!st) st = tbert_threshold_choose(rule, o.n, o.score, o.is_pos, &thr, err);
    if (!st) {
        tbert_operating_point_compute(o.n, o.score, o.is_pos, thr, rule, op);
        snprintf(oof_source, cap, "%s", o.source);
        held = heldout_metrics(&o, &meta.recipe, thr, err);
        if (!held) st = err && err->code ? err->code : TBERT_E_NOMEM;
    }
    /* best.safetensors: the threshold and the held-out split's metrics ("val") */
    if (!st) {
        cm = cJSON_Parse(meta.metrics_json ? meta.metrics_json : "{}");
        if (!cm) cm = cJSON_CreateObject();
        if (cm && cJSON_GetObjectItemCaseSensitive(cm, "val")) put(cm, "val", cJSON_Duplicate(held, true));
        new_ckpt_metrics = cm ? cJSON_PrintUnformatted(cm) : NULL;
        if (!new_ckpt_metrics) st = tbert_fail(err, TBERT_E_NOMEM, "out of memory");
    }
    /* metrics.json: threshold, val, operating_point, and a note that train/test counts are at the old cut */
    if (!st) {
        if (tbert_is_regular_file(mpath) && !tbert_read_file(mpath, 64u << 20, &mj, &mlen, err)) mf = cJSON_Parse(mj);
        if (!mf) mf = cJSON_CreateObject();
        cJSON *opj = op_object(op, o.source, rule);
        if (!mf || !opj) {
            cJSON_Delete(opj);
            st = tbert_fail(err, TBERT_E_NOMEM, "out of memory");
        } else {
            double old = meta.recipe.threshold;
            put(mf, "threshold", cJSON_CreateNumber(thr));
            put(mf, "val", cJSON_Duplicate(held, true));
            put(mf, "operating_point", opj);
            cJSON *rp = cJSON_CreateObject();
            cJSON_AddStringToObject(rp, "rule", rule);
            cJSON_AddNumberToObject(rp, "previous_threshold", old);
            cJSON_AddStringToObject(rp, "note", "chosen by tbert threshold from the stored held-out scores; the train and test "
                                                "metrics here are still those at the previous threshold");
            put(mf, "threshold_repicked", rp);
            new_metrics = cJSON_Print(mf);
            if (!new_metrics) st = tbert_fail(err, TBERT_E_NOMEM, "out of memory");
        }
    }
    if (!st) {
        meta.recipe.threshold = thr;
        free(meta.metrics_json);
        meta.metrics_json = new_ckpt_metrics;
        new_ckpt_metrics = NULL;
        st = meta.recipe.finetune.layers > 0 ? save_keeping_tensors(best, &meta, err)
                                             : tbert_checkpoint_save(best, h, &meta, NULL, NULL, err);
    }
    if (!st) st = tbert_write_file_atomic(mpath, new_metrics, strlen(new_metrics), err);
    if (!st) {
        snprintf(o.rule, sizeof o.rule, "%s", rule);
        o.threshold = thr;
        st = tbert_oof_save(dir, &o, &meta.recipe, err);
    }
    cJSON_Delete(cm);
    cJSON_Delete(mf);
    cJSON_Delete(held);
    free(mj);
    free(new_ckpt_metrics);
    free(new_metrics);
    if (have_meta) tbert_ckpt_meta_free(&meta);
    tbert_head_free(h);
    tbert_oof_free(&o);
    return st;
}
