/* Loading a Hugging Face BERT model folder into one float32 arena.
 *
 * Order: config.json (sizes), vocab.txt (+ tokenizer_config.json), model.safetensors. Every tensor the
 * encoder needs is looked up (with or without the `bert.` prefix of BertFor* checkpoints; old
 * LayerNorm.gamma/beta names too), its shape checked against what the config implies and its dtype against
 * the float types, all before the arena is allocated; the arena's size therefore follows from shapes the
 * file really holds. Tensors the encoder does not use (MiniLM's I64 position_ids, classifier heads) were
 * validated by the safetensors reader and are otherwise ignored. */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tbert/fileio.h"
#include "tbert/model.h"
#include "tbert/safetensors.h"

#define ARENA_ALIGN_FLOATS 16 /* every tensor starts on a 64-byte boundary */

typedef struct {
    char name[160];       /* without prefix, as written in error messages */
    int ndim;
    int64_t shape[2];
    const float **slot;   /* where the arena pointer goes */
    const tbert_st_tensor *t;
} need;

typedef struct {
    need *v;
    int n, cap;
} need_list;

static bool add_need(need_list *l, const float **slot, int ndim, int64_t d0, int64_t d1, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static bool add_need(need_list *l, const float **slot, int ndim, int64_t d0, int64_t d1, const char *fmt, ...) {
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 64;
        need *nv = tbert_realloc_array(l->v, (size_t)cap, sizeof *nv);
        if (!nv) return false;
        l->v = nv;
        l->cap = cap;
    }
    need *x = &l->v[l->n++];
    memset(x, 0, sizeof *x);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->name, sizeof x->name, fmt, ap);
    va_end(ap);
    x->ndim = ndim;
    x->shape[0] = d0;
    x->shape[1] = d1;
    x->slot = slot;
    return true;
}

/* The weight list of a BERT encoder with this config, in the order the encoder uses them. */
static bool list_needs(tbert_model *m, bool pooler, need_list *l) {
    const tbert_config *c = &m->cfg;
    int64_t H = c->hidden, I = c->intermediate;
    bool ok = add_need(l, &m->word_emb, 2, c->vocab_size, H, "embeddings.word_embeddings.weight") &&
              add_need(l, &m->pos_emb, 2, c->max_position, H, "embeddings.position_embeddings.weight") &&
              add_need(l, &m->type_emb, 2, c->type_vocab_size, H, "embeddings.token_type_embeddings.weight") &&
              add_need(l, &m->emb_ln_g, 1, H, 0, "embeddings.LayerNorm.weight") &&
              add_need(l, &m->emb_ln_b, 1, H, 0, "embeddings.LayerNorm.bias");
    for (int i = 0; ok && i < c->layers; i++) {
        tbert_layer_weights *w = &m->layer[i];
        const char *p = "encoder.layer";
        ok = add_need(l, &w->q_w, 2, H, H, "%s.%d.attention.self.query.weight", p, i) &&
             add_need(l, &w->q_b, 1, H, 0, "%s.%d.attention.self.query.bias", p, i) &&
             add_need(l, &w->k_w, 2, H, H, "%s.%d.attention.self.key.weight", p, i) &&
             add_need(l, &w->k_b, 1, H, 0, "%s.%d.attention.self.key.bias", p, i) &&
             add_need(l, &w->v_w, 2, H, H, "%s.%d.attention.self.value.weight", p, i) &&
             add_need(l, &w->v_b, 1, H, 0, "%s.%d.attention.self.value.bias", p, i) &&
             add_need(l, &w->attn_out_w, 2, H, H, "%s.%d.attention.output.dense.weight", p, i) &&
             add_need(l, &w->attn_out_b, 1, H, 0, "%s.%d.attention.output.dense.bias", p, i) &&
             add_need(l, &w->attn_ln_g, 1, H, 0, "%s.%d.attention.output.LayerNorm.weight", p, i) &&
             add_need(l, &w->attn_ln_b, 1, H, 0, "%s.%d.attention.output.LayerNorm.bias", p, i) &&
             add_need(l, &w->inter_w, 2, I, H, "%s.%d.intermediate.dense.weight", p, i) &&
             add_need(l, &w->inter_b, 1, I, 0, "%s.%d.intermediate.dense.bias", p, i) &&
             add_need(l, &w->out_w, 2, H, I, "%s.%d.output.dense.weight", p, i) &&
             add_need(l, &w->out_b, 1, H, 0, "%s.%d.output.dense.bias", p, i) &&
             add_need(l, &w->out_ln_g, 1, H, 0, "%s.%d.output.LayerNorm.weight", p, i) &&
             add_need(l, &w->out_ln_b, 1, H, 0, "%s.%d.output.LayerNorm.bias", p, i);
    }
    if (ok && pooler)
        ok = add_need(l, &m->pooler_w, 2, H, H, "pooler.dense.weight") && add_need(l, &m->pooler_b, 1, H, 0, "pooler.dense.bias");
    return ok;
}

/* prefix + name, also trying the TF-era LayerNorm.gamma / LayerNorm.beta spellings. */
static const tbert_st_tensor *find_tensor(const tbert_safetensors *st, const char *prefix, const char *name) {
    char full[256];
    snprintf(full, sizeof full, "%s%s", prefix, name);
    const tbert_st_tensor *t = tbert_st_find(st, full);
    if (t) return t;
    size_t n = strlen(full);
    static const struct {
        const char *now, *old;
    } alias[] = {{"LayerNorm.weight", "LayerNorm.gamma"}, {"LayerNorm.bias", "LayerNorm.beta"}};
    for (size_t k = 0; k < sizeof alias / sizeof alias[0]; k++) {
        size_t a = strlen(alias[k].now);
        if (n >= a && !strcmp(full + n - a, alias[k].now) && n - a + strlen(alias[k].old) < sizeof full) {
            strcpy(full + n - a, alias[k].old);
            return tbert_st_find(st, full);
        }
    }
    return NULL;
}

static void format_shape(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t pos = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < ndim && pos < n; d++) pos += (size_t)snprintf(buf + pos, n - pos, "%s%" PRId64, d ? ", " : "", shape[d]);
    if (pos < n) snprintf(buf + pos, n - pos, "]");
}

static bool is_float_dtype(tbert_dtype d) {
    return d == TBERT_DT_F32 || d == TBERT_DT_F16 || d == TBERT_DT_BF16 || d == TBERT_DT_F64;
}

/* Finds every needed tensor and checks shape and dtype; sums the arena size (padded per tensor). */
static tbert_status resolve_needs(const tbert_safetensors *st, const char *prefix, need_list *l, size_t *arena_floats,
                                  size_t *n_params, tbert_error *err) {
    const char *file = tbert_st_path(st);
    size_t total = 0, params = 0;
    for (int i = 0; i < l->n; i++) {
        need *x = &l->v[i];
        x->t = find_tensor(st, prefix, x->name);
        if (!x->t) return tbert_fail(err, TBERT_E_FORMAT, "%s: missing tensor '%s%s'", file, prefix, x->name);
        bool same = x->t->ndim == x->ndim;
        for (int d = 0; same && d < x->ndim; d++) same = x->t->shape[d] == x->shape[d];
        if (!same) {
            char got[160], want[64];
            format_shape(got, sizeof got, x->t->ndim, x->t->shape);
            format_shape(want, sizeof want, x->ndim, x->shape);
            return tbert_fail(err, TBERT_E_MISMATCH, "%s: tensor '%s' has shape %s but config.json implies %s", file, x->t->name,
                              got, want);
        }
        if (!is_float_dtype(x->t->dtype))
            return tbert_fail(err, TBERT_E_UNSUPPORTED, "%s: tensor '%s' has dtype %s (F32, F16, BF16 or F64 needed)", file,
                              x->t->name, tbert_dtype_name(x->t->dtype));
        size_t padded = (x->t->numel + ARENA_ALIGN_FLOATS - 1) / ARENA_ALIGN_FLOATS * ARENA_ALIGN_FLOATS;
        if (padded < x->t->numel || !tbert_add_size(total, padded, &total) || !tbert_add_size(params, x->t->numel, &params))
            return tbert_fail(err, TBERT_E_FORMAT, "%s: total weight size overflows", file);
    }
    *arena_floats = total;
    *n_params = params;
    return TBERT_OK;
}

/* A checkpoint with more encoder layers than config.json declares is a config/weights mismatch: running
 * it with the first N layers would give silently wrong features. */
static tbert_status check_extra_layers(const tbert_safetensors *st, const char *prefix, int layers, tbert_error *err) {
    char name[96];
    snprintf(name, sizeof name, "encoder.layer.%d.attention.self.query.weight", layers);
    if (find_tensor(st, prefix, name))
        return tbert_fail(err, TBERT_E_MISMATCH, "%s: holds tensor '%s%s' but config.json says num_hidden_layers = %d "
                          "(to run fewer layers, keep the config and pass --layers K)",
                          tbert_st_path(st), prefix, name, layers);
    return TBERT_OK;
}

static tbert_status convert_all(const tbert_safetensors *st, need_list *l, float *arena, tbert_error *err) {
    size_t pos = 0;
    for (int i = 0; i < l->n; i++) {
        need *x = &l->v[i];
        float *dst = arena + pos;
        tbert_status s = tbert_st_to_f32(st, x->t, dst, err);
        if (s) return s;
        for (size_t k = 0; k < x->t->numel; k++) {
            if (!isfinite(dst[k]))
                return tbert_fail(err, TBERT_E_FORMAT, "%s: tensor '%s' holds a non-finite value (%g) at element %zu",
                                  tbert_st_path(st), x->t->name, (double)dst[k], k);
        }
        *x->slot = dst;
        pos += (x->t->numel + ARENA_ALIGN_FLOATS - 1) / ARENA_ALIGN_FLOATS * ARENA_ALIGN_FLOATS;
    }
    return TBERT_OK;
}

/* The dtype of the encoder weights as stored ("mixed" when they differ). */
static void weights_dtype(const need_list *l, char out[8]) {
    tbert_dtype d = l->n ? l->v[0].t->dtype : TBERT_DT_F32;
    for (int i = 1; i < l->n; i++) {
        if (l->v[i].t->dtype != d) {
            snprintf(out, 8, "mixed");
            return;
        }
    }
    snprintf(out, 8, "%s", tbert_dtype_name(d));
}

/* sha256 of an 87 MB model costs ~0.25 s (glib, 2-core EPYC), most of a load: too much for `tbert filter`,
 * which loads the model once per message. The digest is therefore cached in $TBERT_CACHE/hashes/, keyed by
 * the file's real path and validated by device, inode, size, mtime and ctime (any rewrite changes ctime).
 * The cache is optional: any failure to read or write it just means hashing the bytes. Files under 16 MB
 * are always hashed (cheap), so that test folders do not fill the cache. */
#define HASH_CACHE_MIN_BYTES ((size_t)16 << 20)
static bool hash_cache_path(const char *file, char *out, size_t n) {
    char *real = realpath(file, NULL);
    if (!real) return false;
    char key[65], cache[3072];
    tbert_sha256_hex(real, strlen(real), key);
    free(real);
    tbert_cache_dir(cache, sizeof cache);
    return (size_t)snprintf(out, n, "%s/hashes/%s.txt", cache, key) < n;
}

static void stat_line(const struct stat *sb, char *out, size_t n) {
    snprintf(out, n, "v1 %llu %llu %lld %lld.%09ld %lld.%09ld", (unsigned long long)sb->st_dev, (unsigned long long)sb->st_ino,
             (long long)sb->st_size, (long long)sb->st_mtim.tv_sec, sb->st_mtim.tv_nsec, (long long)sb->st_ctim.tv_sec,
             sb->st_ctim.tv_nsec);
}

static bool hash_cache_get(const char *file, const struct stat *sb, char sha[65]) {
    char cpath[4096], want[160];
    if (!hash_cache_path(file, cpath, sizeof cpath)) return false;
    char *text;
    size_t len;
    if (tbert_read_file(cpath, 4096, &text, &len, NULL) != TBERT_OK) return false;
    stat_line(sb, want, sizeof want);
    size_t wl = strlen(want);
    bool ok = len == wl + 1 + 64 + 1 && !memcmp(text, want, wl) && text[wl] == ' ' && text[wl + 65] == '\n';
    for (size_t i = 0; ok && i < 64; i++) ok = (text[wl + 1 + i] >= '0' && text[wl + 1 + i] <= '9') || (text[wl + 1 + i] >= 'a' && text[wl + 1 + i] <= 'f');
    if (ok) {
        memcpy(sha, text + wl + 1, 64);
        sha[64] = '\0';
    }
    free(text);
    return ok;
}

static void hash_cache_put(const char *file, const struct stat *sb, const char sha[65]) {
    char cpath[4096], line[256];
    if (!hash_cache_path(file, cpath, sizeof cpath)) return;
    char *slash = strrchr(cpath, '/');
    *slash = '\0';
    bool dir_ok = tbert_mkdirs(cpath, NULL) == TBERT_OK;
    *slash = '/';
    if (!dir_ok) return;
    stat_line(sb, line, sizeof line - 80);
    size_t l = strlen(line);
    snprintf(line + l, sizeof line - l, " %s\n", sha);
    tbert_write_file_atomic(cpath, line, strlen(line), NULL);
}

static tbert_status load_weights(tbert_model *m, const char *path, tbert_error *err) {
    struct stat before;
    bool have_stat = stat(path, &before) == 0 && (size_t)before.st_size >= HASH_CACHE_MIN_BYTES;
    tbert_safetensors *st;
    tbert_status s = tbert_st_open(path, &st, err);
    if (s) return s;
    const char *prefix = "";
    if (tbert_st_find(st, "bert.embeddings.word_embeddings.weight")) prefix = "bert.";
    const tbert_st_tensor *pw = find_tensor(st, prefix, "pooler.dense.weight");
    const tbert_st_tensor *pb = find_tensor(st, prefix, "pooler.dense.bias");
    need_list l = {0};
    size_t n_params = 0;
    if ((pw == NULL) != (pb == NULL))
        s = tbert_fail(err, TBERT_E_FORMAT, "%s: has '%spooler.dense.%s' without '%spooler.dense.%s'", path, prefix,
                       pw ? "weight" : "bias", prefix, pw ? "bias" : "weight");
    if (s == TBERT_OK && !list_needs(m, pw != NULL, &l)) s = tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", path);
    if (s == TBERT_OK) s = resolve_needs(st, prefix, &l, &m->arena_floats, &n_params, err);
    if (s == TBERT_OK) s = check_extra_layers(st, prefix, m->cfg.layers, err);
    if (s == TBERT_OK) {
        size_t bytes;
        if (!tbert_mul_size(m->arena_floats ? m->arena_floats : 1, sizeof(float), &bytes) ||
            posix_memalign((void **)&m->arena, 64, bytes) != 0) {
            m->arena = NULL;
            s = tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory for %zu weights", path, m->arena_floats);
        }
    }
    if (s == TBERT_OK) s = convert_all(st, &l, m->arena, err);
    if (s == TBERT_OK) {
        size_t len;
        const void *bytes = tbert_st_bytes(st, &len);
        if (!have_stat || (size_t)before.st_size != len || !hash_cache_get(path, &before, m->weights_sha256)) {
            tbert_sha256_hex(bytes, len, m->weights_sha256);
            if (have_stat && (size_t)before.st_size == len) hash_cache_put(path, &before, m->weights_sha256);
        }
        weights_dtype(&l, m->weights_dtype);
        m->n_params = n_params;
    }
    free(l.v);
    tbert_st_close(st);
    return s;
}

/* No model.safetensors: say what the folder has instead and how to convert it. */
static tbert_status missing_weights(const char *dir, const char *path, size_t plen, tbert_error *err) {
    static const char *const other[] = {"pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json"};
    char *alt = malloc(plen + 32);
    for (size_t i = 0; alt && i < sizeof other / sizeof other[0]; i++) {
        snprintf(alt, plen + 32, "%s/%s", dir, other[i]);
        if (tbert_is_regular_file(alt)) {
            free(alt);
            return tbert_fail(err, TBERT_E_IO, "%s: not found (the folder has %s: make one model.safetensors with "
                                               "tools/convert_to_safetensors.py %s)", path, other[i], dir);
        }
    }
    free(alt);
    return tbert_fail(err, TBERT_E_IO, "%s: not found", path);
}

tbert_status tbert_model_load(const char *dir, tbert_model **out, tbert_error *err) {
    *out = NULL;
    if (!tbert_is_dir(dir)) return tbert_fail(err, TBERT_E_IO, "%s: model folder not found", dir);
    tbert_model *m = calloc(1, sizeof *m);
    size_t plen = strlen(dir) + 32;
    char *path = malloc(plen);
    if (!m || !path || !(m->dir = tbert_strdup(dir))) {
        free(path);
        tbert_model_free(m);
        return tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", dir);
    }
    snprintf(path, plen, "%s/config.json", dir);
    tbert_status s = tbert_config_load(path, &m->cfg, err);
    if (s == TBERT_OK && !(m->layer = tbert_calloc_array((size_t)m->cfg.layers, sizeof *m->layer)))
        s = tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", dir);
    if (s == TBERT_OK) s = tbert_vocab_load_model_dir(dir, &m->vocab, err);
    if (s == TBERT_OK && tbert_vocab_size(m->vocab) > m->cfg.vocab_size)
        s = tbert_fail(err, TBERT_E_MISMATCH, "%s/vocab.txt: has %d tokens but config.json says vocab_size = %d", dir,
                       (int)tbert_vocab_size(m->vocab), m->cfg.vocab_size);
    if (s == TBERT_OK) {
        snprintf(path, plen, "%s/model.safetensors", dir);
        if (!tbert_is_regular_file(path)) {
            s = missing_weights(dir, path, plen, err);
        } else {
            s = load_weights(m, path, err);
        }
    }
    free(path);
    if (s != TBERT_OK) {
        tbert_model_free(m);
        return s;
    }
    *out = m;
    return TBERT_OK;
}

void tbert_model_free(tbert_model *m) {
    if (!m) return;
    if (m->vocab) tbert_vocab_free(m->vocab);
    free(m->arena);
    free(m->layer);
    free(m->dir);
    free(m);
}

size_t tbert_model_param_count(const tbert_model *m) { return m->n_params; }

tbert_status tbert_model_tensors(const tbert_model *m, tbert_model_tensor **out, int *n, tbert_error *err) {
    *out = NULL;
    *n = 0;
    need_list l = {0};
    /* list_needs only records where each pointer lives; the model is not written */
    if (!list_needs((tbert_model *)m, m->pooler_w != NULL, &l)) {
        free(l.v);
        return tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", m->dir);
    }
    tbert_model_tensor *t = tbert_calloc_array((size_t)l.n, sizeof *t);
    if (!t) {
        free(l.v);
        return tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", m->dir);
    }
    for (int i = 0; i < l.n; i++) {
        const need *x = &l.v[i];
        memcpy(t[i].name, x->name, sizeof t[i].name);
        t[i].ndim = x->ndim;
        t[i].shape[0] = x->shape[0];
        t[i].shape[1] = x->shape[1];
        t[i].numel = (size_t)x->shape[0] * (size_t)(x->ndim == 2 ? x->shape[1] : 1);
        t[i].data = m->arena + (*x->slot - m->arena);
    }
    free(l.v);
    *out = t;
    *n = l.n;
    return TBERT_OK;
}
