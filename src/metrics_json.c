/* Metrics as JSON: one split's object (what `eval --json` prints and metrics.json holds per split), the
 * {"train", "val", "test"} object a checkpoint records, and CKPT_DIR/metrics.json. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tbert/train.h"
#include "tbert/fileio.h"
#include "train_internal.h"

static cJSON *num_or_null(double v) { return isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull(); }

char *tbert_metrics_json(const tbert_metrics *m, const tbert_recipe *r) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddItemToObject(o, "n", cJSON_CreateNumber(m->n));
    cJSON_AddItemToObject(o, "accuracy", num_or_null(m->accuracy));
    cJSON_AddItemToObject(o, "roc_auc", num_or_null(m->roc_auc));
    cJSON_AddItemToObject(o, "pr_auc", num_or_null(m->pr_auc));
    cJSON_AddItemToObject(o, "threshold", num_or_null(m->threshold));
    if (!isnan(m->loss)) cJSON_AddItemToObject(o, "loss", num_or_null(m->loss));
    cJSON *labels = cJSON_AddArrayToObject(o, "labels");
    for (int k = 0; k < m->n_classes; k++) cJSON_AddItemToArray(labels, cJSON_CreateString(r->labels[k]));
    cJSON *conf = cJSON_AddArrayToObject(o, "confusion");
    for (int i = 0; i < m->n_classes; i++) {
        cJSON *row = cJSON_CreateArray();
        for (int j = 0; j < m->n_classes; j++)
            cJSON_AddItemToArray(row, cJSON_CreateNumber((double)(m->confusion ? m->confusion[(size_t)i * m->n_classes + j] : 0)));
        cJSON_AddItemToArray(conf, row);
    }
    cJSON *pc = cJSON_AddObjectToObject(o, "per_class");
    for (int k = 0; k < m->n_classes; k++) {
        cJSON *c = cJSON_CreateObject();
        cJSON_AddItemToObject(c, "precision", num_or_null(m->precision[k]));
        cJSON_AddItemToObject(c, "recall", num_or_null(m->recall[k]));
        cJSON_AddItemToObject(c, "f1", num_or_null(m->f1[k]));
        cJSON_AddNumberToObject(c, "support", (double)m->support[k]);
        cJSON_AddItemToObject(pc, r->labels[k], c);
    }
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

/* {"train": {...}, "val": {...}, "test": {...}} (a split without examples is left out) */
char *tbert_fit_metrics_json(const tbert_fit_result *r, const tbert_recipe *rec) {
    tbert_recipe lr = *rec;
    cJSON *o = cJSON_CreateObject();
    const tbert_metrics *ms[3] = {&r->train, &r->val, &r->test};
    const char *names[3] = {"train", "val", "test"};
    for (int k = 0; o && k < 3; k++) {
        if (ms[k]->n == 0) continue;
        char *s = tbert_metrics_json(ms[k], &lr);
        cJSON *v = s ? cJSON_Parse(s) : NULL;
        free(s);
        if (!v) {
            cJSON_Delete(o);
            return NULL;
        }
        cJSON_AddItemToObject(o, names[k], v);
    }
    char *out = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return out;
}

tbert_status tbert_train_metrics_write(const char *dir, const tbert_train_result *res, const tbert_recipe *r, tbert_error *err) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return tbert_fail(err, TBERT_E_NOMEM, "out of memory");
    cJSON_AddNumberToObject(o, "best_epoch", res->fit.best_epoch);
    cJSON_AddNumberToObject(o, "epochs", res->fit.epochs_run);
    cJSON_AddNumberToObject(o, "threshold", res->fit.threshold);
    const tbert_metrics *ms[3] = {&res->fit.train, &res->fit.val, &res->fit.test};
    const char *names[3] = {"train", "val", "test"};
    for (int k = 0; k < 3; k++) {
        if (ms[k]->n == 0) continue;
        char *s = tbert_metrics_json(ms[k], r);
        cJSON *v = s ? cJSON_Parse(s) : NULL;
        free(s);
        if (v) cJSON_AddItemToObject(o, names[k], v);
    }
    cJSON_AddNumberToObject(o, "seconds_total", res->seconds_total);
    cJSON_AddNumberToObject(o, "seconds_features", res->seconds_features);
    cJSON_AddBoolToObject(o, "feature_cache_hit", res->cache_hit);
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    if (!s) return tbert_fail(err, TBERT_E_NOMEM, "out of memory");
    char path[4200];
    snprintf(path, sizeof path, "%s/metrics.json", dir);
    tbert_status st = tbert_write_file_atomic(path, s, strlen(s), err);
    free(s);
    return st;
}
