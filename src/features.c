/* The featurizer (recipe -> feature rows: pooled windows, hashed WordPiece counts, hashed header evidence)
 * and the feature cache under $TBERT_CACHE/features (include/tbert/recipe.h). */
#include "tbert/recipe.h"

#include <glib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tbert/fileio.h"
#include "tbert/progress.h"
#include "tbert/tokenizer.h"

enum { DOCS_PER_CHUNK = 128 };

struct tbert_featurizer {
    tbert_recipe r;
    const tbert_model *m;
    tbert_encoder *enc;
    size_t dense_dim, dim;
};

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

static void hash_evidence(const char *ev, int set, float *block, int dim) {
    if (!ev) return;
    const char *p = ev;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == '\n') p++;
        const char *s = p;
        while (*p && *p != ' ' && *p != '\t' && *p != '\n') p++;
        if (p > s && takes_token(set, s, (size_t)(p - s))) block[fmix64(fnv1a64(s, (size_t)(p - s))) % (uint64_t)dim] += 1.0f;
    }
}

static void log1p_l2(float *v, int dim) {
    double ss = 0;
    for (int i = 0; i < dim; i++) {
        v[i] = log1pf(v[i]);
        ss += (double)v[i] * v[i];
    }
    if (ss > 0) {
        float inv = (float)(1.0 / sqrt(ss));
        for (int i = 0; i < dim; i++) v[i] *= inv;
    }
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

/* Rows of n docs into out (row stride fz->dim). dense: the pooled block; sparse: the lexical/evidence blocks
 * (each part leaves the other's columns untouched). */
static tbert_status featurize_chunk(tbert_featurizer *fz, int n, const tbert_doc *docs, const tbert_i32vec *pre, float *out,
                                    int *tokens_seen, bool dense, bool sparse, tbert_error *err) {
    const tbert_recipe *r = &fz->r;
    int W = r->windows;
    size_t nwmax = (size_t)n * (size_t)W;
    chunk_buf c = {0};
    c.win = calloc((size_t)n, sizeof *c.win);
    c.starts = tbert_malloc_array(nwmax, sizeof *c.starts);
    c.lens = tbert_malloc_array(nwmax, sizeof *c.lens);
    c.nwin = tbert_malloc_array((size_t)n, sizeof *c.nwin);
    c.seqs = tbert_malloc_array(nwmax, sizeof *c.seqs);
    c.seq_lens = tbert_malloc_array(nwmax, sizeof *c.seq_lens);
    c.pooled = tbert_malloc_array(nwmax, fz->dense_dim * sizeof(float));
    tbert_i32vec ids = {0};
    if (!c.win || !c.starts || !c.lens || !c.nwin || !c.seqs || !c.seq_lens || !c.pooled) {
        chunk_free(&c, n);
        return tbert_fail(err, TBERT_E_NOMEM, "featurizer: out of memory for %d documents", n);
    }
    tbert_status st = TBERT_OK;
    int total_w = 0;
    for (int i = 0; i < n; i++) {
        float *row = out + (size_t)i * fz->dim;
        if (dense) memset(row, 0, fz->dense_dim * sizeof(float));
        if (sparse) memset(row + fz->dense_dim, 0, (fz->dim - fz->dense_dim) * sizeof(float));
    }
    for (int i = 0; i < n && !st; i++) {
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
        st = tbert_make_windows(fz->m->vocab, tv, tn, r->max_len, W, &c.win[i], c.starts + (size_t)i * W,
                                c.lens + (size_t)i * W, &c.nwin[i], err);
        if (st) break;
        for (int w = 0; dense && w < c.nwin[i]; w++) {
            c.seqs[total_w] = c.win[i].v + c.starts[(size_t)i * W + w];
            c.seq_lens[total_w] = c.lens[(size_t)i * W + w];
            total_w++;
        }
        float *row = out + (size_t)i * fz->dim;
        if (sparse && r->lexical_dim > 0) {
            float *lex = row + fz->dense_dim;
            for (size_t k = 0; k < tn; k++) lex[fmix64((uint64_t)tv[k] + 1) % (uint64_t)r->lexical_dim] += 1.0f;
            for (size_t k = 1; r->lexical_ngrams >= 2 && k < tn; k++) {
                uint64_t pair = ((uint64_t)(uint32_t)(tv[k - 1] + 1) << 32) | (uint32_t)(tv[k] + 1);
                lex[fmix64(pair ^ 0x9e3779b97f4a7c15ull) % (uint64_t)r->lexical_dim] += 1.0f;
            }
            if (r->evidence == TBERT_EVIDENCE_LEXICAL) hash_evidence(docs[i].evidence, r->evidence_set, lex, r->lexical_dim);
            log1p_l2(lex, r->lexical_dim);
        }
        if (sparse && r->evidence == TBERT_EVIDENCE_BLOCK) {
            float *evb = row + fz->dense_dim + r->lexical_dim;
            hash_evidence(docs[i].evidence, r->evidence_set, evb, r->evidence_dim);
            log1p_l2(evb, r->evidence_dim);
        }
        if (sparse && r->header_dim > 0) {
            float *hb = row + fz->dense_dim + r->lexical_dim + (r->evidence == TBERT_EVIDENCE_BLOCK ? r->evidence_dim : 0);
            hash_evidence(docs[i].evidence, EV_HEADER_WORDS, hb, r->header_dim);
            log1p_l2(hb, r->header_dim);
            for (int k = 0; k < r->header_dim; k++) hb[k] *= r->header_weight;
        }
    }
    tbert_i32vec_free(&ids);
    if (!st && total_w > 0) {
        bool norm_each = r->normalize && W == 1;
        st = tbert_encoder_pool(fz->enc, total_w, c.seqs, c.seq_lens, r->max_len, r->pool, norm_each, c.pooled, err);
    }
    if (!st && dense) {
        int w0 = 0;
        for (int i = 0; i < n; i++) {
            float *row = out + (size_t)i * fz->dim;
            double inv = 1.0 / c.nwin[i];
            for (size_t d = 0; d < fz->dense_dim; d++) {
                double s = 0;
                for (int w = 0; w < c.nwin[i]; w++) s += c.pooled[(size_t)(w0 + w) * fz->dense_dim + d];
                row[d] = (float)(s * inv);
            }
            if (r->normalize && W > 1) l2_normalize(row, fz->dense_dim);
            w0 += c.nwin[i];
        }
    }
    chunk_free(&c, n);
    return st;
}

static tbert_status featurize_progress(tbert_featurizer *fz, int n, const tbert_doc *docs, const tbert_i32vec *pre, float *out,
                                       int *tokens_seen, bool dense, bool sparse, const char *label, tbert_error *err) {
    tbert_progress *p = label ? tbert_progress_start(label, (uint64_t)n, "docs", TBERT_PROGRESS_AUTO) : NULL;
    tbert_status st = TBERT_OK;
    for (int i = 0; i < n && !st; i += DOCS_PER_CHUNK) {
        int m = n - i < DOCS_PER_CHUNK ? n - i : DOCS_PER_CHUNK;
        st = featurize_chunk(fz, m, docs + i, pre ? pre + i : NULL, out + (size_t)i * fz->dim, tokens_seen ? tokens_seen + i : NULL,
                             dense, sparse, err);
        tbert_progress_update(p, (uint64_t)(i + m), NULL);
    }
    if (p) tbert_progress_finish(p, st ? "failed" : NULL);
    return st;
}

tbert_status tbert_featurize(tbert_featurizer *fz, int n, const tbert_doc *docs, float *out, int *tokens_seen, tbert_error *err) {
    return featurize_progress(fz, n, docs, NULL, out, tokens_seen, true, true, NULL, err);
}

tbert_status tbert_featurize_ids(tbert_featurizer *fz, int n, const tbert_doc *docs, const tbert_i32vec *ids, float *out,
                                 int *tokens_seen, tbert_error *err) {
    return featurize_progress(fz, n, docs, ids, out, tokens_seen, true, true, NULL, err);
}

/* ---- cache ---- */
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

static const char CACHE_MAGIC[8] = {'T', 'B', 'F', 'E', 'A', 'T', '1', 0};

/* The cache holds the dense (encoder) block only: the sparse blocks are cheap to recompute, and a change of
 * lexical_dim then needs no re-encoding. Key: every recipe field that shapes the dense block (model hash,
 * vocab hash, pooling, max_len, layers, windows, normalize, precision) and the docs' hash. */
static bool cache_path(const tbert_featurizer *fz, const char *data_hash, char *path, size_t n) {
    tbert_recipe k = fz->r;
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
    if (!json) return false;
    size_t len = strlen(json) + 1 + strlen(data_hash);
    char *buf = malloc(len + 1);
    if (!buf) {
        free(json);
        return false;
    }
    snprintf(buf, len + 1, "%s\n%s", json, data_hash);
    char key[65], dir[4096];
    tbert_sha256_hex(buf, len, key);
    free(buf);
    free(json);
    tbert_cache_dir(dir, sizeof dir);
    return snprintf(path, n, "%s/features/%s.f32", dir, key) < (int)n;
}

/* reads n rows of ddim floats into out (row stride stride) */
static bool cache_read(const char *path, int n, size_t ddim, size_t stride, float *out) {
    FILE *f = fopen(path, "rb");
    if (!f) return false;
    char magic[8];
    int64_t hdr[2];
    bool ok = fread(magic, 1, 8, f) == 8 && !memcmp(magic, CACHE_MAGIC, 8) && fread(hdr, sizeof hdr, 1, f) == 1 &&
              hdr[0] == n && hdr[1] == (int64_t)ddim;
    for (int i = 0; ok && i < n; i++) ok = fread(out + (size_t)i * stride, sizeof(float), ddim, f) == ddim;
    ok = ok && fgetc(f) == EOF;
    fclose(f);
    return ok;
}

static tbert_status cache_write(const char *path, int n, size_t ddim, size_t stride, const float *feats, tbert_error *err) {
    char dir[4400];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    tbert_status st = tbert_mkdirs(dir, err);
    if (st) return st;
    tbert_atomic_file *f;
    st = tbert_atomic_open(path, &f, err);
    if (st) return st;
    int64_t hdr[2] = {n, (int64_t)ddim};
    st = tbert_atomic_write(f, CACHE_MAGIC, 8, err);
    if (!st) st = tbert_atomic_write(f, hdr, sizeof hdr, err);
    for (int i = 0; i < n && !st; i++) st = tbert_atomic_write(f, feats + (size_t)i * stride, ddim * sizeof(float), err);
    if (st) {
        tbert_atomic_abort(f);
        return st;
    }
    return tbert_atomic_commit(f, err);
}

tbert_status tbert_featurize_cached(tbert_featurizer *fz, int n, const tbert_doc *docs, const char *data_hash,
                                    const char *progress_label, float *out, bool *hit, tbert_error *err) {
    char dh[65], path[4400];
    if (hit) *hit = false;
    if (!data_hash) {
        tbert_docs_hash(n, docs, dh);
        data_hash = dh;
    }
    bool have_path = cache_path(fz, data_hash, path, sizeof path);
    bool sparse = fz->dim > fz->dense_dim;
    if (have_path && cache_read(path, n, fz->dense_dim, fz->dim, out)) {
        if (hit) *hit = true;
        return sparse ? featurize_progress(fz, n, docs, NULL, out, NULL, false, true, NULL, err) : TBERT_OK;
    }
    tbert_status st = featurize_progress(fz, n, docs, NULL, out, NULL, true, sparse, progress_label, err);
    if (st || !have_path) return st;
    /* a cache that cannot be written (read-only home, full disk) costs time, not the run */
    tbert_error werr;
    if (cache_write(path, n, fz->dense_dim, fz->dim, out, &werr))
        fprintf(stderr, "tbert: warning: feature cache not written: %s\n", werr.msg);
    return TBERT_OK;
}
