/* Feature recipes: presets, JSON form (checkpoint metadata, cache keys), and the checks that a recipe fits
 * a model (include/tbert/recipe.h). */
#include "tbert/recipe.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const evidence_names[] = {"none", "lexical", "block"};

tbert_status tbert_recipe_preset(const char *name, tbert_recipe *r, tbert_error *err) {
    memset(r, 0, sizeof *r);
    r->recipe_version = TBERT_RECIPE_VERSION;
    r->pool = TBERT_POOL_MEAN;
    r->max_len = 128;
    r->windows = 1;
    r->precision = TBERT_PREC_FP32;
    r->evidence = TBERT_EVIDENCE_NONE;
    r->positive = -1;
    r->threshold = 0.5f;
    r->lexical_ngrams = 1;
    if (!name || !strcmp(name, "text")) {
        /* hashed WordPiece counts next to the sentence embedding: +0.5% accuracy on SMS (benchmarks/RESULTS.md, head training) */
        snprintf(r->name, sizeof r->name, "text");
        r->lexical_dim = 1024;
    } else if (!strcmp(name, "seed")) {
        snprintf(r->name, sizeof r->name, "seed");
        r->pool = TBERT_POOL_FLATTEN;
    } else if (!strcmp(name, "mail")) {
        snprintf(r->name, sizeof r->name, "mail");
        /* docs/mail-recipe-research.md + benchmarks/RESULTS.md (mail accuracy): a WordPiece-sized lexical block and
         * the header evidence in its own L2-normalised block (mixed into the lexical counts it costs FPs) */
        /* one window: on these corpora the encoder vector adds little next to the sparse blocks (baselines
         * note: windows + counts = counts), and 4 windows cost up to 4x the encoder time; the vector is
         * L2-normalised so that the three blocks weigh alike for the linear head */
        r->windows = 1;
        r->normalize = true;
        r->lexical_dim = 30522;
        r->evidence = TBERT_EVIDENCE_BLOCK;
        r->evidence_dim = 1024;
        /* every evidence key (upstream filters' headers are never evidence: src/mail.c), and the header words
         * in their own block, weighted so that the head leans on per-sender evidence the way bogofilter does:
         * on cross-validation inside the training half it lifted the spam recall at zero false positives
         * from 0.75 to 0.88 (benchmarks/RESULTS.md, mail accuracy) */
        r->evidence_set = 0;
        r->header_dim = 16384;
        r->header_weight = 4.0f;
    } else {
        return tbert_fail(err, TBERT_E_ARG, "unknown recipe '%s' (expected text, seed or mail)", name);
    }
    return TBERT_OK;
}

size_t tbert_recipe_dense_dim(const tbert_recipe *r) {
    return r->pool == TBERT_POOL_FLATTEN ? (size_t)r->max_len * (size_t)r->model_hidden : (size_t)r->model_hidden;
}

size_t tbert_recipe_dim(const tbert_recipe *r) {
    return tbert_recipe_dense_dim(r) + (size_t)r->lexical_dim + (size_t)(r->evidence == TBERT_EVIDENCE_BLOCK ? r->evidence_dim : 0) +
           (size_t)r->header_dim;
}

int tbert_recipe_label_index(const tbert_recipe *r, const char *label) {
    for (int i = 0; i < r->n_labels; i++)
        if (!strcmp(r->labels[i], label)) return i;
    return -1;
}

static tbert_status check_fields(const tbert_recipe *r, const char *label, tbert_error *err) {
    const char *l = label ? label : "recipe";
    if (r->recipe_version < TBERT_RECIPE_VERSION_MIN || r->recipe_version > TBERT_RECIPE_VERSION)
        return tbert_fail(err, TBERT_E_UNSUPPORTED, "%s: recipe_version %d is not supported (this tbert knows %d to %d)", l,
                          r->recipe_version, TBERT_RECIPE_VERSION_MIN, TBERT_RECIPE_VERSION);
    if (r->finetune.layers < 0 || r->finetune.layers > r->layers || (r->finetune.embeddings && r->finetune.layers == 0))
        return tbert_fail(err, TBERT_E_FORMAT, "%s: finetune layers %d out of range (0 to the %d layers in use)", l,
                          r->finetune.layers, r->layers);
    if (r->finetune.layers > 0 && r->recipe_version < 2)
        return tbert_fail(err, TBERT_E_FORMAT, "%s: finetune needs recipe_version 2", l);
    if (r->finetune.layers > 0 && strspn(r->finetune.base_model_sha256, "0123456789abcdef") != 64)
        return tbert_fail(err, TBERT_E_FORMAT, "%s: finetune base_model_sha256 is not a sha256 in hex", l);
    if ((unsigned)r->pool >= TBERT_POOL_COUNT) return tbert_fail(err, TBERT_E_FORMAT, "%s: bad pooling", l);
    if (r->max_len < 2 || r->max_len > 8192) return tbert_fail(err, TBERT_E_FORMAT, "%s: max_len %d out of range", l, r->max_len);
    if (r->windows < 1 || r->windows > 1024) return tbert_fail(err, TBERT_E_FORMAT, "%s: windows %d out of range", l, r->windows);
    if (r->pool == TBERT_POOL_FLATTEN && r->windows != 1)
        return tbert_fail(err, TBERT_E_FORMAT, "%s: flatten pooling needs windows = 1", l);
    if (r->lexical_dim < 0 || r->lexical_dim > (1 << 22))
        return tbert_fail(err, TBERT_E_FORMAT, "%s: lexical_dim %d out of range", l, r->lexical_dim);
    if (r->evidence_set < 0 || r->evidence_set > 1)
        return tbert_fail(err, TBERT_E_FORMAT, "%s: evidence_set %d out of range (0 or 1)", l, r->evidence_set);
    if (r->lexical_ngrams < 1 || r->lexical_ngrams > 2)
        return tbert_fail(err, TBERT_E_FORMAT, "%s: lexical_ngrams %d out of range (1 or 2)", l, r->lexical_ngrams);
    if (r->evidence == TBERT_EVIDENCE_LEXICAL && r->lexical_dim == 0)
        return tbert_fail(err, TBERT_E_FORMAT, "%s: evidence into the lexical space needs lexical_dim > 0", l);
    if (r->header_dim < 0 || r->header_dim > (1 << 22))
        return tbert_fail(err, TBERT_E_FORMAT, "%s: header_dim %d out of range", l, r->header_dim);
    if (r->header_dim > 0 && !(r->header_weight > 0 && r->header_weight <= 1e3f))
        return tbert_fail(err, TBERT_E_FORMAT, "%s: header_weight %g out of range (0, 1000]", l, (double)r->header_weight);
    if (r->evidence == TBERT_EVIDENCE_BLOCK && (r->evidence_dim < 1 || r->evidence_dim > (1 << 22)))
        return tbert_fail(err, TBERT_E_FORMAT, "%s: evidence_dim %d out of range", l, r->evidence_dim);
    if (r->n_labels < 0 || r->n_labels > TBERT_MAX_LABELS)
        return tbert_fail(err, TBERT_E_FORMAT, "%s: %d labels out of range", l, r->n_labels);
    for (int i = 1; i < r->n_labels; i++)
        if (strcmp(r->labels[i - 1], r->labels[i]) >= 0)
            return tbert_fail(err, TBERT_E_FORMAT, "%s: labels are not sorted and unique", l);
    if (r->positive >= r->n_labels || (r->n_labels == 2 && r->positive < 0))
        return tbert_fail(err, TBERT_E_FORMAT, "%s: positive class index %d out of range", l, r->positive);
    if (!(r->threshold >= 0.0f && r->threshold <= 1.0f))
        return tbert_fail(err, TBERT_E_FORMAT, "%s: threshold %g outside [0,1]", l, (double)r->threshold);
    return TBERT_OK;
}

tbert_status tbert_recipe_bind_model(tbert_recipe *r, const tbert_model *m, tbert_error *err) {
    snprintf(r->model_hash, sizeof r->model_hash, "%s", m->weights_sha256);
    const char *vh = m->vocab ? tbert_vocab_hash(m->vocab) : NULL;
    snprintf(r->vocab_hash, sizeof r->vocab_hash, "%s", vh ? vh : "");
    r->model_hidden = m->cfg.hidden;
    r->model_layers = m->cfg.layers;
    if (r->layers <= 0) r->layers = m->cfg.layers;
    if (r->layers > m->cfg.layers)
        return tbert_fail(err, TBERT_E_ARG, "--layers %d exceeds the model's %d layers (%s)", r->layers, m->cfg.layers, m->dir);
    if (r->max_len > m->cfg.max_position)
        return tbert_fail(err, TBERT_E_ARG, "max_len %d exceeds the model's %d positions (%s)", r->max_len,
                          m->cfg.max_position, m->dir);
    if (r->pool == TBERT_POOL_POOLER && !m->pooler_w)
        return tbert_fail(err, TBERT_E_ARG, "pooling 'pooler' needs a pooler, and %s has none", m->dir);
    return TBERT_OK;
}

tbert_status tbert_recipe_check_model(const tbert_recipe *r, const tbert_model *m, bool strict, tbert_error *err) {
    const char *vh = m->vocab ? tbert_vocab_hash(m->vocab) : "";
    if (r->model_hidden != m->cfg.hidden)
        return tbert_fail(err, TBERT_E_MISMATCH, "head was trained on hidden size %d, model %s has %d", r->model_hidden,
                          m->dir, m->cfg.hidden);
    if (strcmp(r->vocab_hash, vh ? vh : ""))
        return tbert_fail(err, TBERT_E_MISMATCH, "head was trained with another vocabulary than %s/vocab.txt", m->dir);
    if (r->layers > m->cfg.layers || r->model_layers != m->cfg.layers)
        return tbert_fail(err, TBERT_E_MISMATCH, "head was trained on %d of %d layers, model %s has %d layers", r->layers,
                          r->model_layers, m->dir, m->cfg.layers);
    if (r->max_len > m->cfg.max_position)
        return tbert_fail(err, TBERT_E_MISMATCH, "head needs max_len %d, model %s has %d positions", r->max_len, m->dir,
                          m->cfg.max_position);
    if (r->pool == TBERT_POOL_POOLER && !m->pooler_w)
        return tbert_fail(err, TBERT_E_MISMATCH, "head uses the pooler, model %s has none", m->dir);
    if (strict && strcmp(r->model_hash, m->weights_sha256))
        return tbert_fail(err, TBERT_E_MISMATCH, "head was trained on another model (weights sha256 %.12s, %s has %.12s)",
                          r->model_hash, m->dir, m->weights_sha256);
    return TBERT_OK;
}

/* ---- JSON ---- */
char *tbert_recipe_to_json(const tbert_recipe *r) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    bool ok = true;
    ok &= cJSON_AddNumberToObject(o, "recipe_version", r->recipe_version) != NULL;
    ok &= cJSON_AddStringToObject(o, "name", r->name) != NULL;
    ok &= cJSON_AddStringToObject(o, "model_hash", r->model_hash) != NULL;
    ok &= cJSON_AddStringToObject(o, "vocab_hash", r->vocab_hash) != NULL;
    ok &= cJSON_AddNumberToObject(o, "model_hidden", r->model_hidden) != NULL;
    ok &= cJSON_AddNumberToObject(o, "model_layers", r->model_layers) != NULL;
    ok &= cJSON_AddStringToObject(o, "pooling", tbert_pool_name(r->pool)) != NULL;
    ok &= cJSON_AddNumberToObject(o, "max_len", r->max_len) != NULL;
    ok &= cJSON_AddNumberToObject(o, "layers", r->layers) != NULL;
    ok &= cJSON_AddNumberToObject(o, "windows", r->windows) != NULL;
    ok &= cJSON_AddBoolToObject(o, "normalize", r->normalize) != NULL;
    ok &= cJSON_AddStringToObject(o, "precision", tbert_precision_name(r->precision)) != NULL;
    ok &= cJSON_AddNumberToObject(o, "lexical_dim", r->lexical_dim) != NULL;
    /* only when not the default, so that recipes (and feature-cache keys) without it stay as they were */
    if (r->lexical_ngrams != 1) ok &= cJSON_AddNumberToObject(o, "lexical_ngrams", r->lexical_ngrams) != NULL;
    if (r->evidence_set != 0) ok &= cJSON_AddNumberToObject(o, "evidence_set", r->evidence_set) != NULL;
    ok &= cJSON_AddStringToObject(o, "evidence", evidence_names[r->evidence]) != NULL;
    ok &= cJSON_AddNumberToObject(o, "evidence_dim", r->evidence_dim) != NULL;
    if (r->header_dim > 0) {
        char hw[32];
        snprintf(hw, sizeof hw, "%.9g", (double)r->header_weight);
        ok &= cJSON_AddNumberToObject(o, "header_dim", r->header_dim) != NULL;
        ok &= cJSON_AddRawToObject(o, "header_weight", hw) != NULL;
    }
    cJSON *labels = cJSON_AddArrayToObject(o, "labels");
    ok &= labels != NULL;
    for (int i = 0; ok && i < r->n_labels; i++) {
        cJSON *s = cJSON_CreateString(r->labels[i]);
        ok &= s != NULL && cJSON_AddItemToArray(labels, s);
    }
    if (r->positive >= 0) ok &= cJSON_AddStringToObject(o, "positive", r->labels[r->positive]) != NULL;
    else ok &= cJSON_AddNullToObject(o, "positive") != NULL;
    /* %.9g round-trips a float32 exactly */
    char thr[32];
    snprintf(thr, sizeof thr, "%.9g", (double)r->threshold);
    ok &= cJSON_AddRawToObject(o, "threshold", thr) != NULL;
    if (r->finetune.layers > 0) { /* recipe_version 2; absent for a frozen encoder */
        cJSON *ft = cJSON_AddObjectToObject(o, "finetune");
        ok &= ft != NULL && cJSON_AddNumberToObject(ft, "layers", r->finetune.layers) != NULL &&
              cJSON_AddBoolToObject(ft, "embeddings", r->finetune.embeddings) != NULL &&
              cJSON_AddStringToObject(ft, "base_model_sha256", r->finetune.base_model_sha256) != NULL;
    }
    char *s = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return s;
}

static bool get_int(const cJSON *o, const char *key, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || fabs(v->valuedouble) > 1e9) return false;
    *out = (int)v->valuedouble;
    return true;
}

static bool get_str(const cJSON *o, const char *key, char *buf, size_t n) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(v) || strlen(v->valuestring) >= n) return false;
    memcpy(buf, v->valuestring, strlen(v->valuestring) + 1);
    return true;
}

tbert_status tbert_recipe_from_json(const char *json, const char *label, tbert_recipe *r, tbert_error *err) {
    const char *l = label ? label : "recipe";
    memset(r, 0, sizeof *r);
    cJSON *o = json ? cJSON_Parse(json) : NULL;
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return tbert_fail(err, TBERT_E_FORMAT, "%s: the recipe is not a JSON object", l);
    }
    tbert_status st = TBERT_OK;
    const char *bad = NULL;
    char pool[32], prec[32], ev[32];
    r->lexical_ngrams = 1;
    if (!get_int(o, "recipe_version", &r->recipe_version)) bad = "recipe_version";
    else if (r->recipe_version < TBERT_RECIPE_VERSION_MIN || r->recipe_version > TBERT_RECIPE_VERSION) {
        cJSON_Delete(o);
        return tbert_fail(err, TBERT_E_UNSUPPORTED, "%s: recipe_version %d is not supported (this tbert knows %d to %d)", l,
                          r->recipe_version, TBERT_RECIPE_VERSION_MIN, TBERT_RECIPE_VERSION);
    } else if (!get_str(o, "name", r->name, sizeof r->name)) bad = "name";
    else if (!get_str(o, "model_hash", r->model_hash, sizeof r->model_hash)) bad = "model_hash";
    else if (!get_str(o, "vocab_hash", r->vocab_hash, sizeof r->vocab_hash)) bad = "vocab_hash";
    else if (!get_int(o, "model_hidden", &r->model_hidden) || r->model_hidden < 1) bad = "model_hidden";
    else if (!get_int(o, "model_layers", &r->model_layers) || r->model_layers < 1) bad = "model_layers";
    else if (!get_str(o, "pooling", pool, sizeof pool) || tbert_pool_parse(pool, &r->pool, NULL)) bad = "pooling";
    else if (!get_int(o, "max_len", &r->max_len)) bad = "max_len";
    else if (!get_int(o, "layers", &r->layers) || r->layers < 1 || r->layers > r->model_layers) bad = "layers";
    else if (!get_int(o, "windows", &r->windows)) bad = "windows";
    else if (!cJSON_IsBool(cJSON_GetObjectItemCaseSensitive(o, "normalize"))) bad = "normalize";
    else if (!get_str(o, "precision", prec, sizeof prec) || tbert_precision_parse(prec, &r->precision, NULL)) bad = "precision";
    else if (!get_int(o, "lexical_dim", &r->lexical_dim)) bad = "lexical_dim";
    else if (cJSON_GetObjectItemCaseSensitive(o, "lexical_ngrams") && !get_int(o, "lexical_ngrams", &r->lexical_ngrams))
        bad = "lexical_ngrams";
    else if (cJSON_GetObjectItemCaseSensitive(o, "evidence_set") && !get_int(o, "evidence_set", &r->evidence_set))
        bad = "evidence_set";
    else if (!get_str(o, "evidence", ev, sizeof ev)) bad = "evidence";
    else if (!get_int(o, "evidence_dim", &r->evidence_dim)) bad = "evidence_dim";
    else if (cJSON_GetObjectItemCaseSensitive(o, "header_dim") && !get_int(o, "header_dim", &r->header_dim)) bad = "header_dim";
    if (!bad && r->header_dim > 0) {
        const cJSON *hw = cJSON_GetObjectItemCaseSensitive(o, "header_weight");
        if (!cJSON_IsNumber(hw)) bad = "header_weight";
        else r->header_weight = (float)hw->valuedouble;
    }
    if (!bad) {
        r->normalize = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "normalize"));
        int e = -1;
        for (int i = 0; i < 3; i++)
            if (!strcmp(ev, evidence_names[i])) e = i;
        if (e < 0) bad = "evidence";
        else r->evidence = (tbert_evidence_mode)e;
    }
    const cJSON *labels = cJSON_GetObjectItemCaseSensitive(o, "labels");
    if (!bad && (!cJSON_IsArray(labels) || cJSON_GetArraySize(labels) > TBERT_MAX_LABELS)) bad = "labels";
    if (!bad) {
        const cJSON *it;
        cJSON_ArrayForEach(it, labels) {
            if (!cJSON_IsString(it) || strlen(it->valuestring) >= TBERT_MAX_LABEL_LEN) {
                bad = "labels";
                break;
            }
            memcpy(r->labels[r->n_labels++], it->valuestring, strlen(it->valuestring) + 1);
        }
    }
    if (!bad) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "positive");
        r->positive = -1;
        if (cJSON_IsString(p)) {
            r->positive = tbert_recipe_label_index(r, p->valuestring);
            if (r->positive < 0) bad = "positive";
        } else if (!cJSON_IsNull(p)) {
            bad = "positive";
        }
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "threshold");
        if (!bad && !cJSON_IsNumber(t)) bad = "threshold";
        else if (!bad) r->threshold = (float)t->valuedouble;
    }
    const cJSON *ft = cJSON_GetObjectItemCaseSensitive(o, "finetune");
    if (!bad && ft) { /* recipe_version 2 only */
        const cJSON *emb = cJSON_GetObjectItemCaseSensitive(ft, "embeddings");
        if (r->recipe_version < 2 || !cJSON_IsObject(ft) || !get_int(ft, "layers", &r->finetune.layers) ||
            r->finetune.layers < 1 || !cJSON_IsBool(emb) ||
            !get_str(ft, "base_model_sha256", r->finetune.base_model_sha256, sizeof r->finetune.base_model_sha256))
            bad = "finetune";
        else r->finetune.embeddings = cJSON_IsTrue(emb);
    }
    cJSON_Delete(o);
    if (bad) return tbert_fail(err, TBERT_E_FORMAT, "%s: recipe field '%s' is missing or invalid", l, bad);
    st = check_fields(r, l, err);
    return st;
}
