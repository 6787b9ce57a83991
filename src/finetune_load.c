/* Loading a fine-tuned head's encoder tensors over its base model (include/tbert/finetune.h): the base's
 * checksum against the recipe, every finetune.* tensor checked against the model's own list of weights
 * (tbert_model_tensors: name, shape) and the recipe's claim (which layers, embeddings or not), then copied. */
#include "tbert/finetune.h"

#include <glib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tbert/fileio.h"
#include "tbert/safetensors.h"

enum { LAYER_TENSORS = 16 }; /* the weights of one encoder layer (model.c) */

static void ckpt_path(const char *ckpt, char *path, size_t n) {
    if (tbert_is_dir(ckpt)) snprintf(path, n, "%s/best.safetensors", ckpt);
    else snprintf(path, n, "%s", ckpt);
}

static bool is_finetune(const tbert_st_tensor *t) {
    return !strncmp(t->name, TBERT_FINETUNE_PREFIX, strlen(TBERT_FINETUNE_PREFIX));
}

static void put_u64(GChecksum *c, uint64_t v) {
    unsigned char b[8];
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(v >> (8 * i));
    g_checksum_update(c, b, sizeof b);
}

/* tbert_finetune_hash over an open file */
static void hash_tensors(const tbert_safetensors *st, char out[65]) {
    out[0] = 0;
    GChecksum *c = NULL;
    for (int i = 0; i < tbert_st_count(st); i++) {
        const tbert_st_tensor *t = tbert_st_at(st, i);
        if (!is_finetune(t)) continue;
        if (!c) c = g_checksum_new(G_CHECKSUM_SHA256);
        g_checksum_update(c, (const guchar *)t->name, (gssize)strlen(t->name) + 1);
        const char *dt = tbert_dtype_name(t->dtype);
        g_checksum_update(c, (const guchar *)dt, (gssize)strlen(dt) + 1);
        put_u64(c, (uint64_t)t->ndim);
        for (int d = 0; d < t->ndim; d++) put_u64(c, (uint64_t)t->shape[d]);
        g_checksum_update(c, t->data, (gssize)t->nbytes);
    }
    if (!c) return;
    snprintf(out, 65, "%s", g_checksum_get_string(c));
    g_checksum_free(c);
}

tbert_status tbert_finetune_hash(const char *ckpt, char out[65], tbert_error *err) {
    char path[4096];
    ckpt_path(ckpt, path, sizeof path);
    tbert_safetensors *st;
    out[0] = 0;
    tbert_status s = tbert_st_open(path, &st, err);
    if (s) return s;
    hash_tensors(st, out);
    tbert_st_close(st);
    return TBERT_OK;
}

/* The layer index of "encoder.layer.N.rest", -1 for another name. */
static int layer_of(const char *name) {
    const char *p = "encoder.layer.";
    if (strncmp(name, p, strlen(p))) return -1;
    char *end;
    long v = strtol(name + strlen(p), &end, 10);
    return end != name + strlen(p) && *end == '.' && v >= 0 && v < 1000000 ? (int)v : -1;
}

/* Finds t (a finetune.* tensor) among the model's weights and checks it against the model and the recipe. */
static tbert_status check_one(const char *path, const tbert_st_tensor *t, const tbert_model_tensor *mt, int n_mt,
                              const tbert_recipe *r, int *match, tbert_error *err) {
    const char *name = t->name + strlen(TBERT_FINETUNE_PREFIX);
    *match = -1;
    for (int k = 0; k < n_mt && *match < 0; k++)
        if (!strcmp(mt[k].name, name)) *match = k;
    if (*match < 0)
        return tbert_fail(err, TBERT_E_FORMAT,
                          "%s: tensor '%s' is not a weight of the model (finetune. + a BertModel name expected)", path, t->name);
    const tbert_model_tensor *w = &mt[*match];
    int layer = layer_of(name), first = r->layers - r->finetune.layers;
    if (layer >= 0 && (layer < first || layer >= r->layers))
        return tbert_fail(err, TBERT_E_FORMAT, "%s: tensor '%s' is outside the fine-tuned layers %d..%d of the recipe", path,
                          t->name, first, r->layers - 1);
    if (!strncmp(name, "embeddings.", 11) && !r->finetune.embeddings)
        return tbert_fail(err, TBERT_E_FORMAT, "%s: tensor '%s' but the recipe says the embeddings were not fine-tuned", path,
                          t->name);
    if (t->dtype != TBERT_DT_F32)
        return tbert_fail(err, TBERT_E_FORMAT, "%s: tensor '%s' has dtype %s (F32 expected)", path, t->name,
                          tbert_dtype_name(t->dtype));
    bool same = t->ndim == w->ndim;
    for (int d = 0; same && d < w->ndim; d++) same = t->shape[d] == w->shape[d];
    if (!same)
        return tbert_fail(err, TBERT_E_FORMAT, "%s: tensor '%s' has another shape than %s in the model", path, t->name, w->name);
    return TBERT_OK;
}

tbert_status tbert_model_apply_finetune(tbert_model *m, const char *ckpt, const tbert_recipe *r, tbert_error *err) {
    if (r->finetune.layers <= 0) return TBERT_OK;
    char path[4096];
    ckpt_path(ckpt, path, sizeof path);
    if (strcmp(m->weights_sha256, r->finetune.base_model_sha256))
        return tbert_fail(err, TBERT_E_MISMATCH, "%s: fine-tuned from base model %s, but %s has %s", path,
                          r->finetune.base_model_sha256, m->dir, m->weights_sha256);
    if (r->layers > m->cfg.layers || r->finetune.layers > r->layers)
        return tbert_fail(err, TBERT_E_MISMATCH, "%s: fine-tuned %d of %d layers, %s has %d", path, r->finetune.layers, r->layers,
                          m->dir, m->cfg.layers);
    tbert_safetensors *st = NULL;
    tbert_model_tensor *mt = NULL;
    int n_mt = 0;
    tbert_status s = tbert_st_open(path, &st, err);
    if (!s) s = tbert_model_tensors(m, &mt, &n_mt, err);
    int *match = s ? NULL : tbert_malloc_array((size_t)tbert_st_count(st) + 1, sizeof *match);
    if (!s && !match) s = tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", path);
    /* first every tensor checked, then copied: a bad file changes nothing it need not */
    int layer_tensors = 0;
    for (int i = 0; !s && i < tbert_st_count(st); i++) {
        const tbert_st_tensor *t = tbert_st_at(st, i);
        match[i] = -1;
        if (!is_finetune(t)) continue;
        s = check_one(path, t, mt, n_mt, r, &match[i], err);
        layer_tensors += !s && layer_of(mt[match[i]].name) >= 0;
    }
    if (!s && layer_tensors != LAYER_TENSORS * r->finetune.layers)
        s = tbert_fail(err, TBERT_E_FORMAT, "%s: holds %d encoder-layer tensors, the recipe's %d fine-tuned layers have %d", path,
                       layer_tensors, r->finetune.layers, LAYER_TENSORS * r->finetune.layers);
    for (int i = 0; !s && i < tbert_st_count(st); i++) {
        if (match[i] < 0) continue;
        const tbert_st_tensor *t = tbert_st_at(st, i);
        float *dst = mt[match[i]].data;
        s = tbert_st_to_f32(st, t, dst, err);
        for (size_t k = 0; !s && k < t->numel; k++)
            if (!isfinite(dst[k]))
                s = tbert_fail(err, TBERT_E_FORMAT, "%s: tensor '%s' holds a non-finite value at element %zu", path, t->name, k);
    }
    if (!s) hash_tensors(st, m->finetune_sha256);
    free(match);
    free(mt);
    tbert_st_close(st);
    return s;
}
