#include "tbert/common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *const status_names[] = {
    "ok", "io", "format", "nomem", "arg", "unsupported", "mismatch", "nodev", "cuda", "internal",
};
_Static_assert(sizeof status_names / sizeof status_names[0] == TBERT_STATUS_COUNT, "status name table");

const char *tbert_status_name(tbert_status s) {
    return (unsigned)s < TBERT_STATUS_COUNT ? status_names[s] : "?";
}

tbert_status tbert_fail(tbert_error *err, tbert_status code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        /* messages quote file contents: keep them one printable line */
        for (char *c = err->msg; *c; c++)
            if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = '?';
        err->code = code;
    }
    return code;
}

tbert_status tbert_error_prefix(tbert_error *err, const char *fmt, ...) {
    if (!err) return TBERT_E_INTERNAL;
    char prefix[512], old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    /* truncation of an over-long message is acceptable; the prefix comes first */
    size_t np = strnlen(prefix, sizeof prefix - 1);
    memcpy(err->msg, prefix, np);
    size_t pos = np;
    if (pos + 2 < sizeof err->msg) {
        err->msg[pos++] = ':';
        err->msg[pos++] = ' ';
    }
    size_t room = sizeof err->msg - 1 - pos;
    size_t no = strnlen(old, room);
    memcpy(err->msg + pos, old, no);
    err->msg[pos + no] = '\0';
    return err->code;
}

void tbert_error_clear(tbert_error *err) {
    if (err) {
        err->code = TBERT_OK;
        err->msg[0] = '\0';
    }
}

bool tbert_mul_size(size_t a, size_t b, size_t *out) { return !__builtin_mul_overflow(a, b, out); }
bool tbert_add_size(size_t a, size_t b, size_t *out) { return !__builtin_add_overflow(a, b, out); }

void *tbert_malloc_array(size_t n, size_t size) {
    size_t bytes;
    if (!tbert_mul_size(n, size, &bytes)) return NULL;
    return malloc(bytes ? bytes : 1);
}

void *tbert_calloc_array(size_t n, size_t size) { return calloc(n ? n : 1, size ? size : 1); }

void *tbert_realloc_array(void *p, size_t n, size_t size) {
    size_t bytes;
    if (!tbert_mul_size(n, size, &bytes)) return NULL;
    return realloc(p, bytes ? bytes : 1);
}

char *tbert_strndup(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *tbert_strdup(const char *s) { return tbert_strndup(s, strlen(s)); }

bool tbert_i32vec_reserve(tbert_i32vec *vec, size_t cap) {
    if (cap <= vec->cap) return true;
    size_t ncap = vec->cap ? vec->cap : 16;
    while (ncap < cap) {
        if (!tbert_mul_size(ncap, 2, &ncap)) return false;
    }
    int32_t *nv = tbert_realloc_array(vec->v, ncap, sizeof *nv);
    if (!nv) return false;
    vec->v = nv;
    vec->cap = ncap;
    return true;
}

bool tbert_i32vec_push(tbert_i32vec *vec, int32_t x) {
    if (vec->n == vec->cap && !tbert_i32vec_reserve(vec, vec->n + 1)) return false;
    vec->v[vec->n++] = x;
    return true;
}

void tbert_i32vec_free(tbert_i32vec *vec) {
    free(vec->v);
    vec->v = NULL;
    vec->n = vec->cap = 0;
}

int tbert_num_cores(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

double tbert_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
