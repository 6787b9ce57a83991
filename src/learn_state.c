/* DIR/learn.state: what a warm-started `tbert learn` (src/learn_warm.c) needs from the run that made the head,
 * so that it neither parses the training mail again nor trains the fold heads from scratch: the training rows
 * (dense block + sparse CSR blocks, include/tbert/rows.h), each row's class, cross-fitting fold and origin (the
 * sha256 of a correction's message bytes, zeros for mail from training.json's folders), and the K fold heads
 * whose average is best.safetensors. Written by `tbert train` (src/train_run.c) under cross-fitting and by every
 * learn; a run file of the head folder (src/checkpoint_folder.c), so it moves in, is kept in history/ and rolls
 * back together with the head it describes.
 *
 * Layout (native byte order, checked by the magic's byte-order word):
 *   "TBLSTATE" u32 0x01020304 u32 version   u64 n K dense_dim sparse_dim n_blocks block_start[5] nnz n_params
 *   u64 in_dim hidden n_classes binary positive   char data_hash[64]
 *   i32 y[n]  i32 fold[n]  u8 origin[n][32]  f32 dense[n][dense_dim]  i64 indptr[n+1]  i32 indices[nnz]
 *   f32 values[nnz]  f32 params[K][n_params]   u64 checksum of everything before it (sum64 below)
 * The loader checks every size with checked arithmetic, the checksum, that the sizes add up to the file's, and the
 * rows as tbert_rows_append does (columns ascending and in range, values non-zero). */
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tbert/fileio.h"
#include "tbert/learn.h"

#define MAGIC "TBLSTATE"
#define BOM 0x01020304u
#define VERSION 1u
#define MAX_STATE ((size_t)1 << 36)
enum { N_HDR = 5 + TBERT_ROWS_MAX_BLOCKS + 1 + 7 }; /* u64 header words after magic, byte order and version */

void tbert_learn_state_free(tbert_learn_state *s) {
    if (!s) return;
    tbert_rows_free(&s->X);
    free(s->y);
    free(s->fold);
    free(s->origin);
    for (int k = 0; s->heads && k < s->K; k++) tbert_head_free(s->heads[k]);
    free(s->heads);
    memset(s, 0, sizeof *s);
}

/* A fast checksum for damage (a torn write, a flipped bit), not for tampering: FNV-1a over the file's 8-byte
 * words (a last partial word zero-padded), so that 25 MB are checked in milliseconds (a bytewise CRC-32 took a
 * quarter of a warm learn). The writer feeds it in pieces of any length through an 8-byte carry. */
typedef struct {
    uint64_t h;
    unsigned char carry[8];
    size_t nc;
} sum64;

static void sum_word(sum64 *c, const unsigned char *b) {
    uint64_t w;
    memcpy(&w, b, 8);
    c->h = (c->h ^ w) * 0x100000001b3ull;
}

static void sum_feed(sum64 *c, const void *p, size_t len) {
    const unsigned char *b = p;
    if (c->nc) { /* complete the carried word first */
        size_t t = 8 - c->nc < len ? 8 - c->nc : len;
        memcpy(c->carry + c->nc, b, t);
        c->nc += t;
        b += t;
        len -= t;
        if (c->nc < 8) return;
        sum_word(c, c->carry);
        c->nc = 0;
    }
    for (; len >= 8; b += 8, len -= 8) sum_word(c, b);
    memcpy(c->carry, b, len);
    c->nc = len;
}

static uint64_t sum_end(sum64 *c) {
    if (c->nc) {
        memset(c->carry + c->nc, 0, 8 - c->nc);
        sum_word(c, c->carry);
        c->nc = 0;
    }
    return c->h;
}
#define SUM_SEED 0xcbf29ce484222325ull

typedef struct {
    tbert_atomic_file *f;
    sum64 sum;
    tbert_status st;
    tbert_error *err;
} writer;

static void put(writer *w, const void *p, size_t len) {
    if (w->st || !len) return;
    sum_feed(&w->sum, p, len);
    w->st = tbert_atomic_write(w->f, p, len, w->err);
}

tbert_status tbert_learn_state_save(const char *dir, const tbert_rows *X, const int *y, const int *idx, int n, const int *fold,
                                    const uint8_t *origin, tbert_head *const *heads, int K, const char *data_hash, tbert_error *err) {
    if (K < 1 || n < 1) return tbert_fail(err, TBERT_E_ARG, "%s/learn.state: no fold heads or no rows to keep", dir);
    char *path = g_strdup_printf("%s/learn.state", dir);
    writer w = {.err = err, .sum = {.h = SUM_SEED}};
    w.st = tbert_atomic_open(path, &w.f, err);
#define ROW(i) (idx ? idx[i] : (i))
    size_t nnz = 0;
    for (int i = 0; i < n; i++) nnz += (size_t)(X->indptr[ROW(i) + 1] - X->indptr[ROW(i)]);
    const tbert_head_config *c = &heads[0]->cfg;
    uint64_t h[N_HDR] = {(uint64_t)n, (uint64_t)K, X->dense_dim, X->sparse_dim, (uint64_t)X->n_blocks};
    for (int b = 0; b <= TBERT_ROWS_MAX_BLOCKS; b++) h[5 + b] = b <= X->n_blocks ? X->block_start[b] : 0;
    int o = 6 + TBERT_ROWS_MAX_BLOCKS;
    h[o++] = nnz;
    h[o++] = heads[0]->n_params;
    h[o++] = (uint64_t)c->in_dim;
    h[o++] = (uint64_t)c->hidden;
    h[o++] = (uint64_t)c->n_classes;
    h[o++] = c->binary;
    h[o++] = (uint64_t)c->positive;
    uint32_t bv[2] = {BOM, VERSION};
    put(&w, MAGIC, 8);
    put(&w, bv, sizeof bv);
    put(&w, h, sizeof h);
    char dh[64] = {0};
    memcpy(dh, data_hash, strnlen(data_hash, 64));
    put(&w, dh, 64);
    int32_t *tmp = tbert_malloc_array((size_t)n + 1, sizeof(int32_t));
    if (!tmp && !w.st) w.st = tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", path);
    for (int i = 0; tmp && i < n; i++) tmp[i] = y[ROW(i)];
    if (tmp) put(&w, tmp, (size_t)n * sizeof(int32_t));
    for (int i = 0; tmp && i < n; i++) tmp[i] = fold[i];
    if (tmp) put(&w, tmp, (size_t)n * sizeof(int32_t));
    free(tmp);
    static const uint8_t zero[32];
    for (int i = 0; i < n; i++) put(&w, origin ? origin + (size_t)i * 32 : zero, 32);
    for (int i = 0; i < n; i++) put(&w, X->dense + (size_t)ROW(i) * X->dense_dim, X->dense_dim * sizeof(float));
    int64_t at = 0;
    put(&w, &at, sizeof at);
    for (int i = 0; i < n; i++) {
        at += X->indptr[ROW(i) + 1] - X->indptr[ROW(i)];
        put(&w, &at, sizeof at);
    }
    for (int i = 0; i < n; i++)
        put(&w, X->indices + X->indptr[ROW(i)], (size_t)(X->indptr[ROW(i) + 1] - X->indptr[ROW(i)]) * sizeof(int32_t));
    for (int i = 0; i < n; i++)
        put(&w, X->values + X->indptr[ROW(i)], (size_t)(X->indptr[ROW(i) + 1] - X->indptr[ROW(i)]) * sizeof(float));
    for (int k = 0; k < K; k++) put(&w, heads[k]->params, heads[k]->n_params * sizeof(float));
#undef ROW
    uint64_t crc = sum_end(&w.sum);
    if (!w.st) w.st = tbert_atomic_write(w.f, &crc, sizeof crc, err);
    tbert_status st = w.st;
    if (w.f) {
        if (st) tbert_atomic_abort(w.f);
        else st = tbert_atomic_commit(w.f, err);
    }
    g_free(path);
    return st;
}

/* a cursor over the file's bytes with checked sizes */
typedef struct {
    const char *p;
    size_t left;
} reader;

static const void *take(reader *r, uint64_t count, size_t size) {
    if (size && count > r->left / size) return NULL;
    const void *p = r->p;
    r->p += count * size;
    r->left -= count * size;
    return p;
}

tbert_status tbert_learn_state_load(const char *dir, tbert_learn_state *s, tbert_error *err) {
    memset(s, 0, sizeof *s);
    char *path = g_strdup_printf("%s/learn.state", dir), *buf = NULL;
    size_t len = 0;
    tbert_status st = tbert_read_file(path, MAX_STATE, &buf, &len, err);
    if (st) {
        g_free(path);
        return st;
    }
#define BAD(...)                                                                                                                  \
    do {                                                                                                                          \
        st = tbert_fail(err, TBERT_E_FORMAT, __VA_ARGS__);                                                                       \
        goto done;                                                                                                                \
    } while (0)
    reader r = {buf, len};
    uint64_t crc_file;
    if (len < 8 + 8 + 8 || memcmp(buf, MAGIC, 8)) BAD("%s: not a tbert learn state (bad magic)", path);
    memcpy(&crc_file, buf + len - 8, 8);
    sum64 sc = {.h = SUM_SEED};
    sum_feed(&sc, buf, len - 8);
    if (sum_end(&sc) != crc_file) BAD("%s: checksum mismatch (damaged)", path);
    r.left -= 8;
    take(&r, 8, 1);
    const uint32_t *bv = take(&r, 2, 4);
    uint64_t h[N_HDR];
    const void *hp = take(&r, N_HDR, 8);
    const char *dh = take(&r, 64, 1);
    if (!bv || !hp || !dh) BAD("%s: truncated header", path);
    if (bv[0] != BOM || bv[1] != VERSION) BAD("%s: byte order or version %u not known", path, bv[1]);
    memcpy(h, hp, sizeof h);
    uint64_t n = h[0], K = h[1], ddim = h[2], sdim = h[3], nb = h[4];
    int o = 6 + TBERT_ROWS_MAX_BLOCKS;
    uint64_t nnz = h[o], np = h[o + 1];
    tbert_head_config cfg = {.in_dim = (int)h[o + 2], .hidden = (int)h[o + 3], .n_classes = (int)h[o + 4], .binary = h[o + 5] != 0,
                             .positive = (int)h[o + 6]};
    if (n < 1 || n > INT32_MAX / 2 || K < 1 || K > 1000 || nb > TBERT_ROWS_MAX_BLOCKS || ddim > (1u << 24) || sdim > INT32_MAX ||
        h[o + 2] != ddim + sdim || h[o + 4] > 1000)
        BAD("%s: implausible sizes (n %llu, K %llu)", path, (unsigned long long)n, (unsigned long long)K);
    size_t widths[TBERT_ROWS_MAX_BLOCKS];
    for (uint64_t b = 0; b < nb; b++) {
        if (h[5 + b + 1] < h[5 + b]) BAD("%s: block layout out of order", path);
        widths[b] = h[5 + b + 1] - h[5 + b];
    }
    if (h[5] != 0 || h[5 + nb] != sdim) BAD("%s: block layout does not cover the sparse width", path);
    const int32_t *y = take(&r, n, 4), *fold = take(&r, n, 4);
    const uint8_t *origin = take(&r, n, 32);
    const float *dense = ddim ? take(&r, n, ddim * 4) : (const float *)r.p;
    const int64_t *indptr = take(&r, n + 1, 8);
    const int32_t *indices = take(&r, nnz, 4);
    const float *values = take(&r, nnz, 4);
    const float *params = take(&r, K, np * 4);
    if (!y || !fold || !origin || !dense || !indptr || !indices || !values || !params || (np && np > SIZE_MAX / 4 / K))
        BAD("%s: truncated", path);
    if (r.left != 0) BAD("%s: %zu bytes beyond the declared sizes", path, r.left);
    s->n = (int)n;
    s->K = (int)K;
    memcpy(s->data_hash, dh, 64);
    s->data_hash[64] = '\0';
    s->y = tbert_malloc_array(n, sizeof(int));
    s->fold = tbert_malloc_array(n, sizeof(int));
    s->origin = tbert_malloc_array(n, 32);
    s->heads = tbert_calloc_array(K, sizeof *s->heads);
    if (!s->y || !s->fold || !s->origin || !s->heads) {
        st = tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", path);
        goto done;
    }
    for (uint64_t i = 0; i < n; i++) {
        if (y[i] < 0 || y[i] >= cfg.n_classes || fold[i] < 0 || (uint64_t)fold[i] >= K)
            BAD("%s: row %llu: class or fold out of range", path, (unsigned long long)i);
        s->y[i] = y[i];
        s->fold[i] = fold[i];
    }
    memcpy(s->origin, origin, n * 32);
    st = tbert_rows_init(&s->X, ddim, (int)nb, widths, err);
    if (!st) st = tbert_rows_reserve(&s->X, n, nnz, err);
    if (indptr[0] != 0 || indptr[n] != (int64_t)nnz) BAD("%s: row pointers do not add up", path);
    for (uint64_t i = 0; !st && i < n; i++) {
        if (indptr[i + 1] < indptr[i]) BAD("%s: row pointers out of order", path);
        size_t k = (size_t)(indptr[i + 1] - indptr[i]);
        st = tbert_rows_append(&s->X, ddim ? dense + i * ddim : NULL, k, indices + indptr[i], values + indptr[i], err);
    }
    for (uint64_t k = 0; !st && k < K; k++) {
        st = tbert_head_create(&cfg, &s->heads[k], err);
        if (!st && s->heads[k]->n_params != np) BAD("%s: %llu parameters per head, the shape needs %zu", path, (unsigned long long)np,
                                                    s->heads[k]->n_params);
        if (!st) memcpy(s->heads[k]->params, params + k * np, np * sizeof(float));
    }
#undef BAD
done:
    if (st) tbert_learn_state_free(s);
    free(buf);
    g_free(path);
    return st;
}
