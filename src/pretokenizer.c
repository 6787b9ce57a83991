/* BertPreTokenizer over the normalizer's output, streamed: special literals are cut out of the raw bytes
 * first (HF's added tokens, matched before normalization), every other code point goes through
 * tbert_normalize_cp and the result is split on whitespace and punctuation (each punctuation character a
 * word of its own). ASCII bytes take a table lookup precomputed per vocabulary. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"
#include "unicode_props.h"

#define NO_RUN SIZE_MAX

typedef struct {
    tbert_word_fn fn;
    void *ctx;
    char *w;          /* word bytes (2 bytes of headroom before) */
    uint32_t *run;    /* scratch for canonical reordering */
    size_t len, nchars, maxc;
    size_t run_start; /* byte offset of the trailing run of non-starters in w, or NO_RUN */
} pt_state;

static inline bool flush_word(pt_state *p) {
    if (p->nchars == 0) return true;
    bool ok = p->fn(p->ctx, p->w, p->nchars > p->maxc ? 0 : p->len, p->nchars, -1);
    p->len = p->nchars = 0;
    p->run_start = NO_RUN;
    return ok;
}

static inline bool emit_single(pt_state *p, uint32_t cp) {
    char buf[8];
    int n = tbert_utf8_encode(cp, buf + 2);
    return p->fn(p->ctx, buf + 2, (size_t)n, 1, -1);
}

/* Inserts a non-starter into the trailing run at its canonical position (stable by combining class). */
static void insert_in_run(pt_state *p, uint32_t cp, uint8_t ccc) {
    const uint8_t *s = (const uint8_t *)p->w;
    size_t k = 0;
    for (size_t i = p->run_start; i < p->len;) i = tbert_utf8_decode(s, p->len, i, &p->run[k++]);
    size_t pos = k;
    while (pos > 0 && uc_ccc(p->run[pos - 1]) > ccc) pos--;
    memmove(p->run + pos + 1, p->run + pos, (k - pos) * sizeof *p->run);
    p->run[pos] = cp;
    size_t b = p->run_start;
    for (size_t i = 0; i <= k; i++) b += (size_t)tbert_utf8_encode(p->run[i], p->w + b);
    p->len = b;
}

static inline void append_cp(pt_state *p, uint32_t cp, uint8_t ccc) {
    if (++p->nchars > p->maxc) return; /* the word is [UNK] anyway: count, do not keep */
    if (ccc == 0) {
        p->len += (size_t)tbert_utf8_encode(cp, p->w + p->len);
        p->run_start = NO_RUN;
    } else if (p->run_start == NO_RUN) {
        p->run_start = p->len;
        p->len += (size_t)tbert_utf8_encode(cp, p->w + p->len);
    } else {
        insert_in_run(p, cp, ccc);
    }
}

static int32_t match_special(const tbert_vocab *v, const char *s, size_t n, size_t *mlen) {
    for (int k = 0; k < v->n_specials; k++) {
        if (v->specials[k].len <= n && !memcmp(s, v->specials[k].lit, v->specials[k].len)) {
            *mlen = v->specials[k].len;
            return v->specials[k].id;
        }
    }
    return -1;
}

static inline bool is_ws_cp(uint32_t cp) { return cp < 0x80 ? (cp == ' ' || (cp >= 9 && cp <= 13)) : (uc_flags(cp) & UC_WS); }
static inline bool is_punct_cp(uint32_t cp) { return (uc_flags(cp) & UC_PUNCT) != 0; }

/* One code point that is not plain ASCII (or any code point when the caller wants the slow path). */
static bool feed_cp(const tbert_vocab *v, pt_state *p, uint32_t cp) {
    uint32_t out[TBERT_NORM_MAX];
    uint8_t ccc[TBERT_NORM_MAX];
    int n = tbert_normalize_cp(&v->opts, v->strip, cp, out, ccc);
    for (int k = 0; k < n; k++) {
        uint32_t c = out[k];
        if (c == TBERT_NORM_BOUNDARY) {
            p->run_start = NO_RUN;
        } else if (is_ws_cp(c)) {
            if (!flush_word(p)) return false;
        } else if (is_punct_cp(c)) {
            if (!flush_word(p) || !emit_single(p, c)) return false;
        } else {
            append_cp(p, c, ccc[k]);
        }
    }
    return true;
}

bool tbert_pretokenize(const tbert_vocab *v, const char *text, size_t len, tbert_word_fn fn, void *ctx, bool *oom) {
    *oom = false;
    pt_state p = {.fn = fn, .ctx = ctx, .maxc = (size_t)v->opts.max_input_chars_per_word, .run_start = NO_RUN};
    char stack_w[1024];
    uint32_t stack_run[256];
    size_t wcap = 4 * (p.maxc + 1) + 8 + 2;
    char *wbuf = stack_w;
    p.run = stack_run;
    if (wcap > sizeof stack_w || p.maxc + 2 > sizeof stack_run / sizeof stack_run[0]) {
        wbuf = malloc(wcap);
        p.run = tbert_malloc_array(p.maxc + 2, sizeof *p.run);
        if (!wbuf || !p.run) {
            free(wbuf);
            free(p.run);
            *oom = true;
            return false;
        }
    }
    p.w = wbuf + 2;
    const uint8_t *s = (const uint8_t *)text;
    bool ok = true;
    size_t i = 0;
    while (ok && i < len) {
        uint8_t b = s[i];
        if (b >= 0x80) {
            uint32_t cp;
            i = tbert_utf8_decode(s, len, i, &cp);
            ok = feed_cp(v, &p, cp);
            continue;
        }
        switch (v->ascii_class[b]) {
        case ASCII_WORD:
            if (++p.nchars <= p.maxc) p.w[p.len++] = (char)v->ascii_norm[b];
            p.run_start = NO_RUN;
            i++;
            break;
        case ASCII_WS:
            ok = flush_word(&p);
            i++;
            break;
        case ASCII_PUNCT: {
            size_t mlen;
            int32_t sid;
            if (b == '[' && v->n_specials && (sid = match_special(v, text + i, len - i, &mlen)) >= 0) {
                ok = flush_word(&p) && fn(ctx, NULL, 0, 0, sid);
                i += mlen;
                break;
            }
            ok = flush_word(&p) && emit_single(&p, v->ascii_norm[b]);
            i++;
            break;
        }
        default: /* ASCII_DROP */
            i++;
            break;
        }
    }
    if (ok) ok = flush_word(&p);
    if (wbuf != stack_w) {
        free(wbuf);
        free(p.run);
    }
    return ok;
}
