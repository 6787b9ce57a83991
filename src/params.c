/* The list of named trainable tensors (include/tbert/params.h): entries in the order they were added, pointers
 * borrowed, names copied; the fixed chunks of its flat concatenation that threaded passes split on. */
#include "tbert/params.h"

#include <stdlib.h>
#include <string.h>

#include "par_for.h"

static tbert_status params_reserve(tbert_params *ps, int need, tbert_error *err) {
    if (need <= ps->cap) return TBERT_OK;
    int cap = ps->cap > 0 ? ps->cap : 16;
    while (cap < need) {
        if (cap > (1 << 29)) return tbert_fail(err, TBERT_E_NOMEM, "params: too many entries (%d)", need);
        cap *= 2;
    }
    tbert_param *p = tbert_realloc_array(ps->p, (size_t)cap, sizeof(*p));
    if (!p) return tbert_fail(err, TBERT_E_NOMEM, "params: out of memory for %d entries", cap);
    ps->p = p;
    ps->cap = cap;
    return TBERT_OK;
}

tbert_status tbert_params_add(tbert_params *ps, const char *name, float *w, float *g, int ndim, const int64_t *shape,
                              int group, bool decay, tbert_error *err) {
    if (!ps || !name || !w || !g || !shape) return tbert_fail(err, TBERT_E_ARG, "params: NULL argument");
    size_t len = strlen(name);
    if (len == 0 || len >= TBERT_PARAM_NAME_MAX)
        return tbert_fail(err, TBERT_E_ARG, "params: name '%.*s' is empty or longer than %d bytes", 64, name,
                          TBERT_PARAM_NAME_MAX - 1);
    if (ndim < 1 || ndim > 2) return tbert_fail(err, TBERT_E_ARG, "params: %s: ndim %d is not 1 or 2", name, ndim);
    if (group < 0 || group >= TBERT_PGROUP_COUNT)
        return tbert_fail(err, TBERT_E_ARG, "params: %s: group %d out of range", name, group);
    size_t n = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] <= 0 || !tbert_mul_size(n, (size_t)shape[d], &n))
            return tbert_fail(err, TBERT_E_ARG, "params: %s: bad shape dimension %lld", name, (long long)shape[d]);
    }
    if (tbert_params_find(ps, name) >= 0)
        return tbert_fail(err, TBERT_E_ARG, "params: duplicate tensor name %s", name);
    tbert_status st = params_reserve(ps, ps->n + 1, err);
    if (st != TBERT_OK) return st;
    tbert_param *e = &ps->p[ps->n];
    memset(e, 0, sizeof(*e));
    memcpy(e->name, name, len + 1);
    e->w = w;
    e->g = g;
    e->n = n;
    e->ndim = ndim;
    e->shape[0] = shape[0];
    e->shape[1] = ndim == 2 ? shape[1] : 1;
    e->group = group;
    e->decay = decay;
    ps->n++;
    return TBERT_OK;
}

tbert_status tbert_params_append(tbert_params *dst, const tbert_params *src, tbert_error *err) {
    if (!dst || !src) return tbert_fail(err, TBERT_E_ARG, "params: NULL argument");
    for (int i = 0; i < src->n; i++) {
        const tbert_param *s = &src->p[i];
        tbert_status st = tbert_params_add(dst, s->name, s->w, s->g, s->ndim, s->shape, s->group, s->decay, err);
        if (st != TBERT_OK) return st;
    }
    return TBERT_OK;
}

void tbert_params_free(tbert_params *ps) {
    if (!ps) return;
    free(ps->p);
    ps->p = NULL;
    ps->n = ps->cap = 0;
}

void tbert_params_zero_grad(tbert_params *ps) {
    for (int i = 0; i < ps->n; i++) memset(ps->p[i].g, 0, ps->p[i].n * sizeof(float));
}

int tbert_params_chunks(const tbert_params *ps) {
    return (int)((tbert_params_numel(ps) + TBERT_PARAMS_CHUNK - 1) / TBERT_PARAMS_CHUNK);
}

void tbert_params_chunk_pieces(const tbert_params *ps, int c, tbert_params_piece_fn fn, void *ctx) {
    size_t a = (size_t)c * TBERT_PARAMS_CHUNK, b = a + TBERT_PARAMS_CHUNK, at = 0; /* at: the entry's first element */
    for (int i = 0; i < ps->n && at < b; i++) {
        size_t e = at + ps->p[i].n;
        if (e > a) fn(ctx, i, (a > at ? a : at) - at, (b < e ? b : e) - at);
        at = e;
    }
}

static void zero_piece(void *ctx, int entry, size_t lo, size_t hi) {
    const tbert_params *ps = ctx;
    memset(ps->p[entry].g + lo, 0, (hi - lo) * sizeof(float));
}

static void zero_chunk(void *ctx, int c, int worker) {
    (void)worker;
    tbert_params_chunk_pieces(ctx, c, zero_piece, ctx);
}

void tbert_params_zero_grad_threads(tbert_params *ps, int threads) {
    tbert_par_for(threads, tbert_params_chunks(ps), zero_chunk, ps);
}

size_t tbert_params_numel(const tbert_params *ps) {
    size_t total = 0;
    for (int i = 0; i < ps->n; i++) total += ps->p[i].n;
    return total;
}

int tbert_params_find(const tbert_params *ps, const char *name) {
    for (int i = 0; i < ps->n; i++)
        if (strcmp(ps->p[i].name, name) == 0) return i;
    return -1;
}
