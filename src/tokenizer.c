/* The tokenizer's public entry points: ids of a text, [CLS]/[SEP] encoding with truncation, windows over
 * long texts, and a threaded padded batch. The stages live in normalizer.c, pretokenizer.c, wordpiece.c. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"

typedef struct {
    const tbert_vocab *v;
    tbert_i32vec *out;
    size_t limit;
    bool oom;
} tok_sink;

static bool sink_word(void *ctx, char *word, size_t len, size_t nchars, int32_t special_id) {
    tok_sink *t = ctx;
    bool ok;
    if (special_id >= 0) ok = tbert_i32vec_push(t->out, special_id);
    else if (nchars > (size_t)t->v->opts.max_input_chars_per_word) ok = tbert_i32vec_push(t->out, t->v->unk);
    else ok = tbert_wordpiece(t->v, word, len, t->out);
    if (!ok) {
        t->oom = true;
        return false;
    }
    return t->out->n < t->limit;
}

tbert_status tbert_tokenize_limit(const tbert_vocab *v, const char *text, size_t len, size_t limit, tbert_i32vec *out,
                                  tbert_error *err) {
    if (out->n >= limit) return TBERT_OK;
    tok_sink t = {.v = v, .out = out, .limit = limit};
    bool oom = false;
    tbert_pretokenize(v, text, len, sink_word, &t, &oom);
    if (oom || t.oom) return tbert_fail(err, TBERT_E_NOMEM, "out of memory tokenizing a text of %zu bytes", len);
    return TBERT_OK;
}

tbert_status tbert_tokenize(const tbert_vocab *v, const char *text, size_t len, tbert_i32vec *out, tbert_error *err) {
    return tbert_tokenize_limit(v, text, len, SIZE_MAX, out, err);
}

tbert_status tbert_encode(const tbert_vocab *v, const char *text, size_t len, int max_len, tbert_i32vec *out, tbert_error *err) {
    if (max_len < 2) return tbert_fail(err, TBERT_E_ARG, "max_len must be at least 2, got %d", max_len);
    out->n = 0;
    if (!tbert_i32vec_reserve(out, (size_t)max_len < 64 ? (size_t)max_len : 64) || !tbert_i32vec_push(out, v->cls))
        return tbert_fail(err, TBERT_E_NOMEM, "out of memory");
    /* truncation keeps the first max_len-2 tokens, so tokenizing can stop once they exist */
    tbert_status s = tbert_tokenize_limit(v, text, len, (size_t)max_len - 1, out, err);
    if (s) return s;
    if (out->n > (size_t)max_len - 1) out->n = (size_t)max_len - 1;
    if (!tbert_i32vec_push(out, v->sep)) return tbert_fail(err, TBERT_E_NOMEM, "out of memory");
    return TBERT_OK;
}

tbert_status tbert_make_windows(const tbert_vocab *v, const int32_t *ids, size_t n_ids, int max_len, int max_windows,
                                tbert_i32vec *out, size_t *starts, int *lens, int *n_windows, tbert_error *err) {
    *n_windows = 0;
    if (max_len < 3) return tbert_fail(err, TBERT_E_ARG, "windows need max_len of at least 3, got %d", max_len);
    if (max_windows < 0) return tbert_fail(err, TBERT_E_ARG, "max_windows must be >= 0, got %d", max_windows);
    size_t per = (size_t)max_len - 2;
    size_t nw = n_ids == 0 ? 1 : (n_ids + per - 1) / per;
    if (max_windows > 0 && nw > (size_t)max_windows) nw = (size_t)max_windows;
    if (nw > (size_t)INT32_MAX) return tbert_fail(err, TBERT_E_ARG, "too many windows (%zu)", nw);
    out->n = 0;
    size_t need;
    if (!tbert_mul_size(nw, 2, &need) || !tbert_add_size(need, n_ids, &need) || !tbert_i32vec_reserve(out, need))
        return tbert_fail(err, TBERT_E_NOMEM, "out of memory for %zu windows", nw);
    for (size_t w = 0; w < nw; w++) {
        size_t a = w * per, b = a + per < n_ids ? a + per : n_ids;
        if (a > n_ids) a = n_ids;
        starts[w] = out->n;
        out->v[out->n++] = v->cls;
        if (b > a) memcpy(out->v + out->n, ids + a, (b - a) * sizeof *ids); /* ids may be NULL when n_ids == 0 */
        out->n += b - a;
        out->v[out->n++] = v->sep;
        lens[w] = (int)(b - a + 2);
    }
    *n_windows = (int)nw;
    return TBERT_OK;
}

typedef struct {
    const tbert_vocab *v;
    const char *const *texts;
    const size_t *lens;
    int a, b, max_len;
    int32_t *rows; /* row r at rows + r*max_len */
    int32_t *lengths;
    tbert_error err;
    tbert_status status;
} batch_job;

static void *batch_worker(void *arg) {
    batch_job *j = arg;
    tbert_i32vec ids = {0};
    j->status = TBERT_OK;
    for (int r = j->a; r < j->b && !j->status; r++) {
        j->status = tbert_encode(j->v, j->texts[r], j->lens[r], j->max_len, &ids, &j->err);
        if (j->status) {
            tbert_error_prefix(&j->err, "text %d", r);
            break;
        }
        memcpy(j->rows + (size_t)r * (size_t)j->max_len, ids.v, ids.n * sizeof *ids.v);
        j->lengths[r] = (int32_t)ids.n;
    }
    tbert_i32vec_free(&ids);
    return NULL;
}

tbert_status tbert_encode_batch(const tbert_vocab *v, const char *const *texts, const size_t *lens, int n, int max_len,
                                bool pad_to_max, int threads, tbert_batch *out, tbert_error *err) {
    memset(out, 0, sizeof *out);
    if (n < 0 || max_len < 2) return tbert_fail(err, TBERT_E_ARG, "encode_batch: bad n (%d) or max_len (%d)", n, max_len);
    size_t cells;
    if (!tbert_mul_size((size_t)(n ? n : 1), (size_t)max_len, &cells)) return tbert_fail(err, TBERT_E_NOMEM, "batch too large");
    out->ids = tbert_malloc_array(cells, sizeof *out->ids);
    out->lengths = tbert_calloc_array((size_t)(n ? n : 1), sizeof *out->lengths);
    if (!out->ids || !out->lengths) {
        tbert_batch_free(out);
        return tbert_fail(err, TBERT_E_NOMEM, "out of memory for a batch of %d x %d", n, max_len);
    }
    if (threads < 1) threads = 1;
    if (threads > n) threads = n > 0 ? n : 1;
    batch_job jobs[64];
    if (threads > 64) threads = 64;
    pthread_t tids[64];
    int started = 0;
    for (int t = 0; t < threads; t++) {
        jobs[t] = (batch_job){.v = v, .texts = texts, .lens = lens, .a = (int)((int64_t)n * t / threads),
                              .b = (int)((int64_t)n * (t + 1) / threads), .max_len = max_len, .rows = out->ids,
                              .lengths = out->lengths};
        if (t == 0 || pthread_create(&tids[t], NULL, batch_worker, &jobs[t]) != 0) jobs[t].status = -1; /* run inline */
        else started++;
    }
    for (int t = 0; t < threads; t++)
        if (jobs[t].status == (tbert_status)-1) batch_worker(&jobs[t]);
    for (int t = 1; t < threads; t++)
        if (jobs[t].status != (tbert_status)-1) pthread_join(tids[t], NULL);
    (void)started;
    for (int t = 0; t < threads; t++) {
        if (jobs[t].status) {
            if (err) *err = jobs[t].err;
            tbert_batch_free(out);
            return jobs[t].status;
        }
    }
    int T = pad_to_max ? max_len : 2;
    for (int r = 0; r < n && !pad_to_max; r++)
        if (out->lengths[r] > T) T = out->lengths[r];
    int32_t pad = v->pad;
    for (int r = 0; r < n; r++) { /* compact rows from stride max_len to stride T (moving forward only) */
        int32_t *dst = out->ids + (size_t)r * (size_t)T;
        memmove(dst, out->ids + (size_t)r * (size_t)max_len, (size_t)out->lengths[r] * sizeof *dst);
        for (int t = out->lengths[r]; t < T; t++) dst[t] = pad;
    }
    out->B = n;
    out->T = T;
    return TBERT_OK;
}

void tbert_batch_free(tbert_batch *b) {
    free(b->ids);
    free(b->lengths);
    b->ids = NULL;
    b->lengths = NULL;
    b->B = b->T = 0;
}
