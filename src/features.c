/* The featurizer (recipe -> feature rows, include/tbert/rows.h: pooled windows as the dense block; hashed
 * WordPiece counts, hashed header evidence and header words as sparse blocks) and its use of the row store
 * for the dense blocks (include/tbert/recipe.h, include/tbert/store.h, docs/store.md). */
#include "tbert/recipe.h"

#include <glib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tbert/fileio.h"
#include "tbert/progress.h"
#include "tbert/store.h"
#include "tbert/tokenizer.h"

enum { DOCS_PER_CHUNK = 128 };

struct tbert_featurizer {
    tbert_recipe r;
    const tbert_model *m;
    tbert_encoder *enc;
    size_t dense_dim, dim;
    bool no_dense; /* tbert_featurizer_skip_dense: the dense block stays zero, nothing is encoded */
};

void tbert_featurizer_skip_dense(tbert_featurizer *fz) { fz->no_dense = true; }

tbert_status tbert_featurizer_create(const tbert_recipe *r, const tbert_model *m, tbert_encoder *enc, tbert_featurizer **out,
                                     tbert_error *err) {
    *out = NULL;
    tbert_status st = tbert_recipe_check_model(r, m, false, err);
    if (st) return st;
    if (r->windows < 1 || (r->pool == TBERT_POOL_FLATTEN && r->windows != 1))
        return tbert_fail(err, TBERT_E_ARG, "recipe: %d windows with pooling %s is not possible", r->windows,
                          tbert_pool_name(r->pool));
    tbert_featurizer *fz = calloc(1, sizeof *fz);
    if (!fz) return tbert_fail(err, TBERT_E_NOMEM, "featurizer: out of memory");
    fz->r = *r;
    fz->m = m;
    fz->enc = enc;
    fz->dense_dim = tbert_recipe_dense_dim(r);
    fz->dim = tbert_recipe_dim(r);
    *out = fz;
    return TBERT_OK;
}

void tbert_featurizer_free(tbert_featurizer *fz) { free(fz); }
size_t tbert_featurizer_dim(const tbert_featurizer *fz) { return fz->dim; }

tbert_status tbert_featurizer_tokenize(const tbert_featurizer *fz, const tbert_doc *doc, tbert_i32vec *ids, tbert_error *err) {
    ids->n = 0;
    return tbert_tokenize(fz->m->vocab, doc->text ? doc->text : "", doc->text ? doc->len : 0, ids, err);
}

/* ---- hashing ---- */
static uint64_t fmix64(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ull;
    k ^= k >> 33;
    return k;
}

static uint64_t fnv1a64(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static bool e1_key(const char *s, size_t n) {
    static const char *const keys[] = {"from_domain:", "from_tld:", "mailer:", "rcvd_hops:", "ctype:", "body:",
                                       "attach:", "charset:", "has:", "no:"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        size_t k = strlen(keys[i]);
        if (n > k && !memcmp(s, keys[i], k)) return true;
    }
    return false;
}

/* Which evidence tokens a block takes: the recipe's evidence_set (0: all but the header words, 1: the E1
 * keys) or, for the header block, only the header words "h.NAME:word". */
enum { EV_ALL = 0, EV_E1 = 1, EV_HEADER_WORDS = 2 };

static bool takes_token(int set, const char *s, size_t n) {
    bool word = n > 2 && s[0] == 'h' && s[1] == '.';
    if (set == EV_HEADER_WORDS) return word;
    return !word && (set == EV_ALL || e1_key(s, n));
}

/* appends the bucket of every evidence token the set takes */
static bool hash_evidence(const char *ev, int set, int dim, tbert_i32vec *buckets) {
    if (!ev) return true;
    const char *p = ev;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == '\n') p++;
        const char *s = p;
        while (*p && *p != ' ' && *p != '\t' && *p != '\n') p++;
        if (p > s && takes_token(set, s, (size_t)(p - s)) &&
            !tbert_i32vec_push(buckets, (int32_t)(fmix64(fnv1a64(s, (size_t)(p - s))) % (uint64_t)dim)))
            return false;
    }
    return true;
}

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* One sparse block from its buckets (one entry per hashed token): counts, log1p, L2 over the block, times
 * `weight` when it is not 1, appended to (idx, val) with columns offset by `base`. The operations and their
 * order are those of the dense block this replaces (float log1pf of the count, a double sum of squares over
 * ascending columns, one float multiply by the inverse norm, then by the weight), so the values are the same
 * bits. */
static bool sparse_block(tbert_i32vec *buckets, int32_t base, float weight, tbert_i32vec *idx, float **val, size_t *val_cap) {
    size_t n = buckets->n, k = 0, first = idx->n;
    if (n == 0) return true;
    qsort(buckets->v, n, sizeof(int32_t), cmp_i32);
    for (size_t i = 0; i < n; i++) k += i == 0 || buckets->v[i] != buckets->v[i - 1];
    if (idx->n + k > *val_cap) {
        size_t cap = (idx->n + k) * 2;
        float *v = tbert_realloc_array(*val, cap, sizeof(float));
        if (!v) return false;
        *val = v;
        *val_cap = cap;
    }
    if (!tbert_i32vec_reserve(idx, idx->n + k)) return false;
    double ss = 0;
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && buckets->v[j] == buckets->v[i]) j++;
        float v = log1pf((float)(j - i));
        ss += (double)v * v;
        (*val)[idx->n] = v;
        idx->v[idx->n++] = base + buckets->v[i];
        i = j;
    }
    float inv = (float)(1.0 / sqrt(ss));
    for (size_t e = first; e < idx->n; e++) {
        (*val)[e] *= inv;
        if (weight != 1.0f) (*val)[e] *= weight;
    }
    return true;
}

static void l2_normalize(float *v, size_t dim) {
    double ss = 0;
    for (size_t i = 0; i < dim; i++) ss += (double)v[i] * v[i];
    if (ss > 0) {
        float inv = (float)(1.0 / sqrt(ss));
        for (size_t i = 0; i < dim; i++) v[i] *= inv;
    }
}

/* ---- featurize ---- */
typedef struct {
    tbert_i32vec *win;  /* per doc: window token buffer */
    size_t *starts;     /* per doc x windows */
    int *lens;
    int *nwin;
    const int32_t **seqs;
    int *seq_lens;
    float *pooled;
} chunk_buf;

static void chunk_free(chunk_buf *c, int n) {
    if (c->win)
        for (int i = 0; i < n; i++) tbert_i32vec_free(&c->win[i]);
    free(c->win);
    free(c->starts);
    free(c->lens);
    free(c->nwin);
    free(c->seqs);
    free(c->seq_lens);
    free(c->pooled);
}

/* The sparse entries of one doc (its n_ids token ids) appended to (idx, val) in block order; buckets is scratch. */
static bool doc_sparse(const tbert_recipe *r, const tbert_doc *doc, const int32_t *ids, size_t n_ids, tbert_i32vec *buckets,
                       tbert_i32vec *idx, float **val, size_t *val_cap) {
    int32_t base = 0;
    if (r->lexical_dim > 0) {
        buckets->n = 0;
        if (!tbert_i32vec_reserve(buckets, n_ids)) return false;
        for (size_t k = 0; k < n_ids; k++) buckets->v[buckets->n++] = (int32_t)(fmix64((uint64_t)ids[k] + 1) % (uint64_t)r->lexical_dim);
        for (size_t k = 1; r->lexical_ngrams >= 2 && k < n_ids; k++) {
            uint64_t pair = ((uint64_t)(uint32_t)(ids[k - 1] + 1) << 32) | (uint32_t)(ids[k] + 1);
            if (!tbert_i32vec_push(buckets, (int32_t)(fmix64(pair ^ 0x9e3779b97f4a7c15ull) % (uint64_t)r->lexical_dim))) return false;
        }
        if (r->evidence == TBERT_EVIDENCE_LEXICAL && !hash_evidence(doc->evidence, r->evidence_set, r->lexical_dim, buckets))
            return false;
        if (!sparse_block(buckets, base, 1.0f, idx, val, val_cap)) return false;
        base += r->lexical_dim;
    }
    if (r->evidence == TBERT_EVIDENCE_BLOCK) {
        buckets->n = 0;
        if (!hash_evidence(doc->evidence, r->evidence_set, r->evidence_dim, buckets) ||
            !sparse_block(buckets, base, 1.0f, idx, val, val_cap))
            return false;
        base += r->evidence_dim;
    }
    if (r->header_dim > 0) {
        buckets->n = 0;
        if (!hash_evidence(doc->evidence, EV_HEADER_WORDS, r->header_dim, buckets) ||
            !sparse_block(buckets, base, r->header_weight, idx, val, val_cap))
            return false;
    }
    return true;
}

/* Rows of n docs appended to out. dense (n x dense_dim) holds the dense blocks of the docs with need[i] false
 * (from the store) and receives those of the docs with need[i] true (need NULL: every doc), which are
 * encoded here; *encoded (may be NULL) counts them. pre (may be NULL): the docs' token ids from
 * tbert_featurizer_tokenize (else they are tokenized here). */
static tbert_status featurize_chunk(tbert_featurizer *fz, int n, const tbert_doc *docs, const tbert_i32vec *pre, float *dense,
                                    const bool *need, tbert_rows *out, int *tokens_seen, int *encoded, tbert_error *err) {
    const tbert_recipe *r = &fz->r;
    int W = r->windows;
    size_t nwmax = (size_t)n * (size_t)W, dd = fz->dense_dim;
    chunk_buf c = {0};
    c.win = calloc((size_t)n, sizeof *c.win);
    c.starts = tbert_malloc_array(nwmax, sizeof *c.starts);
    c.lens = tbert_malloc_array(nwmax, sizeof *c.lens);
    c.nwin = tbert_malloc_array((size_t)n, sizeof *c.nwin);
    c.seqs = tbert_malloc_array(nwmax, sizeof *c.seqs);
    c.seq_lens = tbert_malloc_array(nwmax, sizeof *c.seq_lens);
    c.pooled = tbert_malloc_array(nwmax, dd * sizeof(float));
    tbert_i32vec ids = {0}, buckets = {0}, idx = {0};
    float *val = NULL;
    size_t val_cap = 0;
    if (!c.win || !c.starts || !c.lens || !c.nwin || !c.seqs || !c.seq_lens || !c.pooled) {
        chunk_free(&c, n);
        return tbert_fail(err, TBERT_E_NOMEM, "featurizer: out of memory for %d documents", n);
    }
    tbert_status st = TBERT_OK;
    int total_w = 0;
    size_t *first = tbert_malloc_array((size_t)n + 1, sizeof *first); /* per doc: its first entry in (idx, val) */
    if (!first) st = tbert_fail(err, TBERT_E_NOMEM, "featurizer: out of memory for %d documents", n);
    for (int i = 0; i < n && !st; i++) {
        bool enc = !need || need[i];
        /* tv, tn: the doc's token ids, tokenized here or by the caller (tbert_featurizer_tokenize) */
        const int32_t *tv = pre ? pre[i].v : NULL;
        size_t tn = pre ? pre[i].n : 0;
        if (!pre) {
            st = tbert_featurizer_tokenize(fz, &docs[i], &ids, err);
            if (st) break;
            tv = ids.v;
            tn = ids.n;
        }
        if (tokens_seen) tokens_seen[i] = tn > INT32_MAX ? INT32_MAX : (int)tn;
        c.nwin[i] = 0;
        if (enc) {
            st = tbert_make_windows(fz->m->vocab, tv, tn, r->max_len, W, &c.win[i], c.starts + (size_t)i * W,
                                    c.lens + (size_t)i * W, &c.nwin[i], err);
            if (st) break;
            for (int w = 0; w < c.nwin[i]; w++) {
                c.seqs[total_w] = c.win[i].v + c.starts[(size_t)i * W + w];
                c.seq_lens[total_w] = c.lens[(size_t)i * W + w];
                total_w++;
            }
        }
        first[i] = idx.n;
        if (!doc_sparse(r, &docs[i], tv, tn, &buckets, &idx, &val, &val_cap))
            st = tbert_fail(err, TBERT_E_NOMEM, "featurizer: out of memory for the sparse blocks");
    }
    if (!st) first[n] = idx.n;
    tbert_i32vec_free(&ids);
    tbert_i32vec_free(&buckets);
    if (!st && total_w > 0) {
        bool norm_each = r->normalize && W == 1;
        st = tbert_encoder_pool(fz->enc, total_w, c.seqs, c.seq_lens, r->max_len, r->pool, norm_each, c.pooled, err);
    }
    if (!st) {
        int w0 = 0;
        for (int i = 0; i < n; i++) {
            if (need && !need[i]) continue;
            float *row = dense + (size_t)i * dd;
            double inv = 1.0 / c.nwin[i];
            for (size_t d = 0; d < dd; d++) {
                double s = 0;
                for (int w = 0; w < c.nwin[i]; w++) s += c.pooled[(size_t)(w0 + w) * dd + d];
                row[d] = (float)(s * inv);
            }
            if (r->normalize && W > 1) l2_normalize(row, dd);
            w0 += c.nwin[i];
            if (encoded) (*encoded)++;
        }
    }
    if (!st) st = tbert_rows_reserve(out, (size_t)n, idx.n, err);
    for (int i = 0; i < n && !st; i++)
        st = tbert_rows_append(out, dense + (size_t)i * dd, first[i + 1] - first[i], idx.v + first[i], val + first[i], err);
    free(first);
    free(val);
    tbert_i32vec_free(&idx);
    chunk_free(&c, n);
    return st;
}

tbert_status tbert_featurizer_rows_init(const tbert_featurizer *fz, tbert_rows *rows, tbert_error *err) {
    const tbert_recipe *r = &fz->r;
    size_t w[3];
    int nb = 0;
    if (r->lexical_dim > 0) w[nb++] = (size_t)r->lexical_dim;
    if (r->evidence == TBERT_EVIDENCE_BLOCK) w[nb++] = (size_t)r->evidence_dim;
    if (r->header_dim > 0) w[nb++] = (size_t)r->header_dim;
    return tbert_rows_init(rows, fz->dense_dim, nb, w, err);
}

static tbert_status featurize_progress(tbert_featurizer *fz, int n, const tbert_doc *docs, const tbert_i32vec *pre,
                                       tbert_rows *out, int *tokens_seen, const char *label, tbert_error *err) {
    tbert_progress *p = label ? tbert_progress_start(label, (uint64_t)n, "docs", TBERT_PROGRESS_AUTO) : NULL;
    float *dense = tbert_malloc_array(DOCS_PER_CHUNK, (fz->dense_dim ? fz->dense_dim : 1) * sizeof(float));
    tbert_status st = dense ? TBERT_OK : tbert_fail(err, TBERT_E_NOMEM, "featurizer: out of memory");
    for (int i = 0; i < n && !st; i += DOCS_PER_CHUNK) {
        int m = n - i < DOCS_PER_CHUNK ? n - i : DOCS_PER_CHUNK;
        st = featurize_chunk(fz, m, docs + i, pre ? pre + i : NULL, dense, NULL, out, tokens_seen ? tokens_seen + i : NULL,
                             NULL, err);
        tbert_progress_update(p, (uint64_t)(i + m), NULL);
    }
    free(dense);
    if (p) tbert_progress_finish(p, st ? "failed" : NULL);
    return st;
}

tbert_status tbert_featurize_rows(tbert_featurizer *fz, int n, const tbert_doc *docs, tbert_rows *out, int *tokens_seen,
                                  tbert_error *err) {
    if (out->dense_dim != fz->dense_dim || tbert_rows_dim(out) != fz->dim)
        return tbert_fail(err, TBERT_E_ARG, "featurizer: rows of %zu features for a recipe of %zu", tbert_rows_dim(out), fz->dim);
    return featurize_progress(fz, n, docs, NULL, out, tokens_seen, NULL, err);
}

tbert_status tbert_featurize_rows_ids(tbert_featurizer *fz, int n, const tbert_doc *docs, const tbert_i32vec *ids,
                                      tbert_rows *out, int *tokens_seen, tbert_error *err) {
    if (out->dense_dim != fz->dense_dim || tbert_rows_dim(out) != fz->dim)
        return tbert_fail(err, TBERT_E_ARG, "featurizer: rows of %zu features for a recipe of %zu", tbert_rows_dim(out), fz->dim);
    return featurize_progress(fz, n, docs, ids, out, tokens_seen, NULL, err);
}

tbert_status tbert_featurize(tbert_featurizer *fz, int n, const tbert_doc *docs, float *out, int *tokens_seen, tbert_error *err) {
    tbert_rows rows;
    tbert_status st = tbert_featurizer_rows_init(fz, &rows, err);
    if (!st) st = featurize_progress(fz, n, docs, NULL, &rows, tokens_seen, NULL, err);
    if (!st) tbert_rows_densify(&rows, 0, n, out, fz->dim);
    tbert_rows_free(&rows);
    return st;
}

/* ---- hashes of documents ---- */
void tbert_docs_hash(int n, const tbert_doc *docs, char out[65]) {
    GChecksum *cs = g_checksum_new(G_CHECKSUM_SHA256);
    for (int i = 0; i < n; i++) {
        uint64_t lens[2] = {docs[i].text ? docs[i].len : 0, docs[i].evidence ? strlen(docs[i].evidence) + 1 : 0};
        g_checksum_update(cs, (const guchar *)lens, sizeof lens);
        if (lens[0]) g_checksum_update(cs, (const guchar *)docs[i].text, lens[0]);
        if (lens[1]) g_checksum_update(cs, (const guchar *)docs[i].evidence, lens[1]);
    }
    snprintf(out, 65, "%s", g_checksum_get_string(cs));
    g_checksum_free(cs);
}

/* ---- the store ---- */
/* The dense (encoder) block of each document is kept in the row store (include/tbert/store.h); the sparse
 * blocks are recomputed (cheap), so a change of lexical_dim needs no re-encoding. Key fields: kind
 * "dense-block", dtype "f32", and the recipe's JSON with every field that does not shape the dense block
 * cleared (the model and vocabulary hashes, pooling, max_len, layers, windows, normalize and precision
 * remain); content: the sha256 of the document's text (evidence does not reach the dense block). */
tbert_status tbert_features_dense_key(const tbert_recipe *r, char key[65], tbert_error *err) {
    return tbert_features_dense_key_ft(r, "", key, err);
}

tbert_status tbert_features_dense_key_ft(const tbert_recipe *r, const char *finetune_sha256, char key[65], tbert_error *err) {
    tbert_recipe k = *r;
    /* recipe_version 2 changed nothing in the dense block: a frozen encoder keeps the keys version 1 had. The
     * "finetune" key says which layers trained, not to what values: the tensors' hash below keys those. */
    k.recipe_version = TBERT_RECIPE_VERSION_MIN;
    memset(&k.finetune, 0, sizeof k.finetune);
    memset(k.name, 0, sizeof k.name);
    k.n_labels = 0;
    k.positive = -1;
    k.threshold = 0;
    k.lexical_dim = 0;
    k.lexical_ngrams = 1;
    k.evidence_set = 0;
    k.evidence = TBERT_EVIDENCE_NONE;
    k.evidence_dim = 0;
    k.header_dim = 0;
    k.header_weight = 0;
    char *json = tbert_recipe_to_json(&k);
    if (!json) return tbert_fail(err, TBERT_E_NOMEM, "featurizer: out of memory");
    tbert_store_field f[4] = {{"kind", "dense-block"}, {"dtype", "f32"}, {"recipe", json}, {"finetune", finetune_sha256}};
    tbert_status st = tbert_store_key(finetune_sha256 && *finetune_sha256 ? 4 : 3, f, key, err);
    free(json);
    return st;
}

static tbert_status dense_key(const tbert_featurizer *fz, char key[65], tbert_error *err) {
    /* the weights that really encode: a head may run on another model than its recipe names (an exported
     * or F16 copy, tbert_recipe_check_model not strict), whose rows are not the recipe model's */
    tbert_recipe r = fz->r;
    snprintf(r.model_hash, sizeof r.model_hash, "%s", fz->m->weights_sha256);
    return tbert_features_dense_key_ft(&r, fz->m->finetune_sha256, key, err);
}

tbert_status tbert_featurize_stored(tbert_featurizer *fz, tbert_store *store, int n, const tbert_doc *docs,
                                    const char *progress_label, tbert_rows *out, tbert_feature_stats *stats, tbert_error *err) {
    if (out->dense_dim != fz->dense_dim || tbert_rows_dim(out) != fz->dim)
        return tbert_fail(err, TBERT_E_ARG, "featurizer: rows of %zu features for a recipe of %zu", tbert_rows_dim(out), fz->dim);
    tbert_feature_stats local = {0};
    if (!stats) stats = &local;
    memset(stats, 0, sizeof *stats);
    stats->docs = n;
    char key[65];
    tbert_status st = store ? dense_key(fz, key, err) : TBERT_OK;
    if (st) return st;
    size_t dd = fz->dense_dim;
    float *dense = tbert_malloc_array(DOCS_PER_CHUNK, (dd ? dd : 1) * sizeof(float));
    char(*content)[65] = tbert_malloc_array(DOCS_PER_CHUNK, 65);
    bool need[DOCS_PER_CHUNK];
    if (!dense || !content) st = tbert_fail(err, TBERT_E_NOMEM, "featurizer: out of memory");
    tbert_progress *p = progress_label && !st ? tbert_progress_start(progress_label, (uint64_t)n, "docs", TBERT_PROGRESS_AUTO) : NULL;
    for (int i = 0; i < n && !st; i += DOCS_PER_CHUNK) {
        int m = n - i < DOCS_PER_CHUNK ? n - i : DOCS_PER_CHUNK;
        for (int j = 0; j < m && !st; j++) {
            need[j] = !fz->no_dense;
            if (fz->no_dense) memset(dense + (size_t)j * dd, 0, dd * sizeof(float));
            if (!store || !dd || fz->no_dense) continue;
            const tbert_doc *d = &docs[i + j];
            tbert_store_content_hash(d->text ? d->text : "", d->text ? d->len : 0, content[j]);
            bool found;
            uint64_t corrupt = tbert_store_get_stats(store)->corrupt;
            st = tbert_store_get(store, key, content[j], dense + (size_t)j * dd, dd * sizeof(float), &found, err);
            need[j] = !found;
            stats->from_store += found;
            stats->corrupt += (int)(tbert_store_get_stats(store)->corrupt - corrupt);
        }
        int enc = 0;
        if (!st) st = featurize_chunk(fz, m, docs + i, NULL, dense, need, out, NULL, &enc, err);
        stats->encoded += enc;
        for (int j = 0; j < m && !st && store && dd; j++) {
            if (!need[j]) continue;
            tbert_error werr; /* a store that cannot be written (read-only home, full disk) costs time, not the run */
            if (tbert_store_put(store, key, content[j], dense + (size_t)j * dd, dd * sizeof(float), &werr)) {
                if (!stats->write_failed) fprintf(stderr, "tbert: warning: feature store not written: %s\n", werr.msg);
                stats->write_failed = true;
            }
        }
        tbert_progress_update(p, (uint64_t)(i + m), NULL);
    }
    if (p) tbert_progress_finish(p, st ? "failed" : NULL);
    free(dense);
    free(content);
    return st;
}
