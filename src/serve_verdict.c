/* A probability in SpamAssassin's terms, and our headers in a message (docs/mail.md "Scores").
 * spamc, Exim's $spam_score_int and X-Spam-Level rules read points, not probabilities: required = 5.0 and
 * score = 5 + logit(p) - logit(threshold), clamped to +-50, so that score >= 5 exactly when tbert says spam. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "serve.h"

static double logit(double x) {
    if (x <= 0) return -INFINITY;
    if (x >= 1) return INFINITY;
    return log(x) - log1p(-x);
}

double serve_sa_score(double p, double t, bool spam) {
    double lp = logit(p), lt = logit(t), s;
    if (isinf(lp) && isinf(lt) && (lp > 0) == (lt > 0)) s = SERVE_REQUIRED; /* both at the same end */
    else s = SERVE_REQUIRED + lp - lt;
    if (isnan(s)) s = SERVE_REQUIRED;
    if (s > SERVE_SCORE_CAP) s = SERVE_SCORE_CAP;
    if (s < -SERVE_SCORE_CAP) s = -SERVE_SCORE_CAP;
    /* the head's label decides: p and t are floats whose logit may tie after rounding */
    if (spam && s < SERVE_REQUIRED) s = SERVE_REQUIRED;
    if (!spam && s >= SERVE_REQUIRED) s = nextafter(SERVE_REQUIRED, 0);
    return s;
}

void serve_format_score(double score, bool spam, char out[16]) {
    double r = floor(score * 10 + 0.5) / 10;
    if (!spam && r >= SERVE_REQUIRED) r = SERVE_REQUIRED - 0.1;
    if (r == 0) r = 0; /* no "-0.0" */
    snprintf(out, 16, "%.1f", r);
}

const char *serve_symbol_name(int symbol) {
    return symbol == SERVE_SPAM ? "TBERT_SPAM" : symbol == SERVE_UNSURE ? "TBERT_UNSURE" : "TBERT_HAM";
}

size_t serve_our_headers(const serve_result *r, const char *version, char *out, size_t cap) {
    char sc[16], stars[64];
    serve_format_score(r->score, r->spam, sc);
    double shown = strtod(sc, NULL); /* the stars agree with the score as printed */
    int n = shown >= 1 ? (int)floor(shown) : 0;
    if (n > (int)SERVE_SCORE_CAP) n = (int)SERVE_SCORE_CAP;
    memset(stars, '*', (size_t)n);
    stars[n] = '\0';
    int w = snprintf(out, cap,
                     "X-Spam-Flag: %s\r\n"
                     "X-Spam-Status: %s, score=%s required=%.1f tests=%s autolearn=no version=tbert-%s\r\n"
                     "X-Spam-Level: %s\r\n"
                     "X-TBert-Spam: %s, score=%.4f, threshold=%.4f, head=%s%s\r\n",
                     r->spam ? "YES" : "NO", r->spam ? "Yes" : "No", sc, SERVE_REQUIRED, serve_symbol_name(r->symbol), version,
                     stars, r->symbol == SERVE_UNSURE ? "Unsure" : r->spam ? "Yes" : "No", r->p, r->threshold, r->head_id,
                     r->truncated ? ", truncated" : "");
    if (w < 0 || (size_t)w >= cap) return 0;
    return (size_t)w;
}

bool serve_is_our_header(const char *name, size_t len) {
    static const char *const exact[] = {"X-Spam-Flag", "X-Spam-Status", "X-Spam-Level"};
    for (size_t i = 0; i < sizeof exact / sizeof exact[0]; i++)
        if (len == strlen(exact[i]) && !strncasecmp(name, exact[i], len)) return true;
    return len > 8 && !strncasecmp(name, "X-TBert-", 8);
}

/* Appends n bytes to a growing buffer (cap tracked by the caller's computed bound). */
typedef struct {
    char *p;
    size_t n;
} obuf;
static void put(obuf *o, const char *s, size_t n) {
    memcpy(o->p + o->n, s, n);
    o->n += n;
}

char *serve_rewrite_message(const char *raw, size_t len, const char *ours, bool head_only, size_t *out_len) {
    size_t ol = strlen(ours);
    /* the line ending: the first line's */
    const char *nl = memchr(raw, '\n', len);
    bool crlf = nl && nl > raw && nl[-1] == '\r';
    /* the output is at most raw + ours (+ 2 for a missing final newline + 2 for a missing blank line) */
    obuf o = {malloc(len + ol + 8), 0};
    if (!o.p) return NULL;
    size_t i = 0;
    bool skipping = false, ended = false;
    while (i < len) {
        const char *e = memchr(raw + i, '\n', len - i);
        size_t ll = e ? (size_t)(e - (raw + i)) + 1 : len - i; /* with its '\n' */
        size_t content = ll - (e ? 1 : 0);
        if (content && raw[i + content - 1] == '\r') content--;
        if (content == 0) { /* the blank line that ends the header block */
            ended = true;
            break;
        }
        bool cont = raw[i] == ' ' || raw[i] == '\t';
        if (!cont) {
            const char *colon = memchr(raw + i, ':', content);
            /* a line that is no header field (no colon, or a space inside the name) ends the header block:
             * it is the body of a message without a blank line. White space between the name and the colon
             * is the obsolete syntax RFC 5322 still reads ("Subject : x"). */
            const char *ne = colon ? colon : raw + i;
            while (ne > raw + i && (ne[-1] == ' ' || ne[-1] == '\t')) ne--;
            bool field = colon && ne > raw + i;
            for (const char *c = raw + i; field && c < ne; c++)
                if (*c == ' ' || *c == '\t') field = false;
            if (!field && !(i == 0 && content >= 5 && !memcmp(raw, "From ", 5))) break;
            skipping = field && serve_is_our_header(raw + i, (size_t)(ne - (raw + i)));
        }
        if (!skipping) put(&o, raw + i, ll);
        if (!e) { /* header block ran to the end without a newline */
            put(&o, crlf ? "\r\n" : "\n", crlf ? 2 : 1);
        }
        i += ll;
    }
    /* ours, in the message's line ending */
    for (const char *s = ours; *s;) {
        const char *e = strstr(s, "\r\n");
        size_t l = e ? (size_t)(e - s) : strlen(s);
        put(&o, s, l);
        put(&o, crlf ? "\r\n" : "\n", crlf ? 2 : 1);
        s += l + (e ? 2 : 0);
    }
    if (ended) { /* the blank line, then the body */
        const char *e = memchr(raw + i, '\n', len - i);
        size_t ll = e ? (size_t)(e - (raw + i)) + 1 : len - i;
        put(&o, raw + i, ll);
        i += ll;
    } else {
        put(&o, crlf ? "\r\n" : "\n", crlf ? 2 : 1);
    }
    if (!head_only) put(&o, raw + i, len - i);
    *out_len = o.n;
    return o.p;
}
