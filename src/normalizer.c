/* UTF-8 decoding with replacement and BertNormalizer (clean_text, handle_chinese_chars, strip_accents,
 * lowercase), in HF's order, one code point at a time. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"
#include "unicode_props.h"

size_t tbert_utf8_decode(const uint8_t *s, size_t n, size_t i, uint32_t *cp) {
    uint8_t b = s[i];
    if (b < 0x80) {
        *cp = b;
        return i + 1;
    }
    int need;
    uint32_t c;
    uint8_t lo = 0x80, hi = 0xBF; /* allowed range of the next continuation byte */
    if (b >= 0xC2 && b <= 0xDF) {
        need = 1;
        c = b & 0x1F;
    } else if (b >= 0xE0 && b <= 0xEF) {
        need = 2;
        c = b & 0x0F;
        if (b == 0xE0) lo = 0xA0;      /* no overlong forms */
        else if (b == 0xED) hi = 0x9F; /* no surrogates */
    } else if (b >= 0xF0 && b <= 0xF4) {
        need = 3;
        c = b & 0x07;
        if (b == 0xF0) lo = 0x90;      /* no overlong forms */
        else if (b == 0xF4) hi = 0x8F; /* nothing above U+10FFFF */
    } else {
        *cp = 0xFFFD; /* continuation byte or C0, C1, F5..FF as a lead */
        return i + 1;
    }
    size_t j = i + 1;
    for (int k = 0; k < need; k++, j++) {
        /* a maximal valid prefix followed by a bad byte or the end becomes one U+FFFD; the bad byte
         * is decoded afresh */
        if (j >= n || s[j] < lo || s[j] > hi) {
            *cp = 0xFFFD;
            return j;
        }
        c = (c << 6) | (s[j] & 0x3F);
        lo = 0x80;
        hi = 0xBF;
    }
    *cp = c;
    return j;
}

int tbert_utf8_encode(uint32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

bool tbert_opts_strip(const tbert_tokenizer_opts *o) { return o->strip_accents < 0 ? o->lowercase : o->strip_accents != 0; }

int tbert_normalize_cp(const tbert_tokenizer_opts *o, bool strip, uint32_t cp, uint32_t *out, uint8_t *ccc) {
    unsigned f = uc_flags(cp);
    if (o->clean_text) {
        if (cp == 0 || cp == 0xFFFD || ((f & UC_OTHER) && cp != '\t' && cp != '\n' && cp != '\r')) return 0;
        if (f & UC_WS) {
            out[0] = ' ';
            ccc[0] = 0;
            return 1;
        }
    }
    int n = 0;
    bool isolate = o->handle_chinese_chars && (f & UC_CJK);
    if (isolate) {
        out[n] = ' ';
        ccc[n++] = 0;
    }
    uint32_t d[8];
    int nd = 1;
    d[0] = cp;
    if (strip) nd = uc_nfd(cp, d, 8, true);
    for (int k = 0; k < nd; k++) {
        uint8_t cls = 0;
        if (strip) {
            unsigned fk = (nd == 1) ? f : uc_flags(d[k]);
            int c = uc_ccc(d[k]);
            if (fk & UC_MN) {
                if (c == 0) { /* a removed starter still ends the run that NFD reorders */
                    out[n] = TBERT_NORM_BOUNDARY;
                    ccc[n++] = 0;
                }
                continue;
            }
            cls = (uint8_t)c;
        }
        if (o->lowercase) {
            uint32_t l[2];
            int nl = uc_lower(d[k], l, true);
            for (int m = 0; m < nl; m++) {
                out[n] = l[m];
                ccc[n++] = m == 0 ? cls : 0;
            }
        } else {
            out[n] = d[k];
            ccc[n++] = cls;
        }
    }
    if (isolate) {
        out[n] = ' ';
        ccc[n++] = 0;
    }
    return n;
}

/* Stable sort of each run of code points with a non-zero combining class (NFD's canonical ordering). */
static void canonical_order(uint32_t *cps, uint8_t *ccc, size_t n) {
    for (size_t i = 1; i < n; i++) {
        for (size_t j = i; j > 0 && ccc[j] != 0 && ccc[j - 1] > ccc[j]; j--) {
            uint32_t tc = cps[j];
            uint8_t tk = ccc[j];
            cps[j] = cps[j - 1];
            ccc[j] = ccc[j - 1];
            cps[j - 1] = tc;
            ccc[j - 1] = tk;
        }
    }
}

tbert_status tbert_normalize_text(const tbert_tokenizer_opts *o, const char *text, size_t len, char **out, size_t *out_len,
                                  tbert_error *err) {
    *out = NULL;
    *out_len = 0;
    size_t cap;
    if (!tbert_mul_size(len + 1, TBERT_NORM_MAX, &cap)) return tbert_fail(err, TBERT_E_NOMEM, "text too long to normalize");
    uint32_t *cps = tbert_malloc_array(cap, sizeof *cps);
    uint8_t *ccc = malloc(cap);
    char *s = tbert_malloc_array(cap, 4);
    if (!cps || !ccc || !s) {
        free(cps);
        free(ccc);
        free(s);
        return tbert_fail(err, TBERT_E_NOMEM, "out of memory normalizing %zu bytes", len);
    }
    bool strip = tbert_opts_strip(o);
    size_t n = 0;
    const uint8_t *u = (const uint8_t *)text;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        i = tbert_utf8_decode(u, len, i, &cp);
        n += (size_t)tbert_normalize_cp(o, strip, cp, cps + n, ccc + n);
    }
    canonical_order(cps, ccc, n);
    size_t b = 0;
    for (size_t k = 0; k < n; k++)
        if (cps[k] != TBERT_NORM_BOUNDARY) b += (size_t)tbert_utf8_encode(cps[k], s + b);
    s[b] = '\0';
    free(cps);
    free(ccc);
    *out = s;
    *out_len = b;
    return TBERT_OK;
}
