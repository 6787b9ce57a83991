/* The fine-tuning optimiser (include/tbert/optim.h): Hugging Face's linear warm-up/decay schedule, clipping by
 * global gradient norm as torch.nn.utils.clip_grad_norm_, and AdamW per entry of a tbert_params list with the
 * learning rate of the entry's group. The AdamW arithmetic itself is src/adam.c's tbert_adam_step (torch's
 * single-tensor path), called on each entry's moments, so the head-only trainer and this one round alike.
 * Moments save to and restore from a checkpoint's safetensors as "optim.m.NAME" / "optim.v.NAME".
 * Threads: the norm's partials and the update run per chunk of the list (tbert_params_chunk_pieces) through
 * src/par_for.c; the per-entry arithmetic is the same on any piece of an entry, so any split gives the same bits. */
#include "tbert/optim.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "par_for.h"
#include "tbert/head.h"

tbert_optim_cfg tbert_optim_default_cfg(void) {
    tbert_optim_cfg c;
    memset(&c, 0, sizeof c);
    c.lr[TBERT_PGROUP_HEAD] = 1e-3;
    c.lr[TBERT_PGROUP_ENCODER] = 5e-5;
    c.beta1 = 0.9;
    c.beta2 = 0.999;
    c.eps = 1e-8;
    c.weight_decay = 0.01;
    c.clip_norm = 1.0;
    c.warmup_steps = 0;
    c.total_steps = 0;
    c.threads = 1;
    return c;
}

/* transformers.get_linear_schedule_with_warmup's lr_lambda (float(a) / float(b) in Python = double here). */
double tbert_optim_lr_factor(const tbert_optim_cfg *cfg, long step) {
    long warm = cfg->warmup_steps > 0 ? cfg->warmup_steps : 0;
    if (step < warm) return (double)step / (double)(warm > 1 ? warm : 1);
    if (cfg->total_steps <= 0) return 1.0;
    long rest = cfg->total_steps - warm;
    double f = (double)(cfg->total_steps - step) / (double)(rest > 1 ? rest : 1);
    return f > 0.0 ? f : 0.0;
}

static tbert_status check_cfg(const tbert_optim_cfg *c, tbert_error *err) {
    for (int g = 0; g < TBERT_PGROUP_COUNT; g++)
        if (!(c->lr[g] >= 0.0) || !isfinite(c->lr[g]))
            return tbert_fail(err, TBERT_E_ARG, "optimiser: learning rate %g of group %d is not a finite value >= 0",
                              c->lr[g], g);
    if (!(c->beta1 >= 0.0 && c->beta1 < 1.0) || !(c->beta2 >= 0.0 && c->beta2 < 1.0))
        return tbert_fail(err, TBERT_E_ARG, "optimiser: betas (%g, %g) must lie in [0, 1)", c->beta1, c->beta2);
    if (!(c->eps >= 0.0) || !(c->weight_decay >= 0.0) || !isfinite(c->eps) || !isfinite(c->weight_decay))
        return tbert_fail(err, TBERT_E_ARG, "optimiser: eps %g and weight decay %g must be finite and >= 0", c->eps,
                          c->weight_decay);
    if (isnan(c->clip_norm))
        return tbert_fail(err, TBERT_E_ARG, "optimiser: the clipping norm is NaN");
    if (c->warmup_steps < 0)
        return tbert_fail(err, TBERT_E_ARG, "optimiser: warm-up of %ld steps is negative", c->warmup_steps);
    return TBERT_OK;
}

tbert_status tbert_optim_init(tbert_optim *o, const tbert_params *ps, const tbert_optim_cfg *cfg, tbert_error *err) {
    memset(o, 0, sizeof *o);
    tbert_status st = check_cfg(cfg, err);
    if (st) return st;
    for (int i = 0; i < ps->n; i++)
        if (ps->p[i].group < 0 || ps->p[i].group >= TBERT_PGROUP_COUNT)
            return tbert_fail(err, TBERT_E_ARG, "optimiser: tensor %s has group %d (not 0..%d)", ps->p[i].name,
                              ps->p[i].group, TBERT_PGROUP_COUNT - 1);
    o->cfg = *cfg;
    o->n = ps->n;
    o->n_chunks = tbert_params_chunks(ps);
    o->part = tbert_malloc_array((size_t)o->n_chunks + 1, sizeof(double));
    if (!o->part) goto nomem;
    if (ps->n > 0) {
        o->m = tbert_calloc_array((size_t)ps->n, sizeof(float *));
        o->v = tbert_calloc_array((size_t)ps->n, sizeof(float *));
        if (!o->m || !o->v) goto nomem;
    }
    for (int i = 0; i < ps->n; i++) {
        size_t n = ps->p[i].n ? ps->p[i].n : 1; /* calloc(0) may return NULL */
        o->m[i] = tbert_calloc_array(n, sizeof(float));
        o->v[i] = tbert_calloc_array(n, sizeof(float));
        if (!o->m[i] || !o->v[i]) goto nomem;
    }
    return TBERT_OK;
nomem:
    tbert_optim_free(o);
    return tbert_fail(err, TBERT_E_NOMEM, "optimiser: out of memory for the moments of %zu values",
                      tbert_params_numel(ps));
}

void tbert_optim_free(tbert_optim *o) {
    for (int i = 0; i < o->n; i++) {
        if (o->m) free(o->m[i]);
        if (o->v) free(o->v[i]);
    }
    free(o->m);
    free(o->v);
    free(o->part);
    o->m = o->v = NULL;
    o->part = NULL;
    o->n = o->n_chunks = 0;
}

/* the sum of squares of chunk c's gradients: eight interleaved double sums per piece (lane k takes elements
 * lo + 8i + k; a piece's last < 8 elements go to lanes 0..), added in a fixed tree at the end of the chunk */
typedef struct {
    const tbert_params *ps;
    double lane[8];
} sq_acc;

static void sq_piece(void *ctx, int entry, size_t lo, size_t hi) {
    sq_acc *a = ctx;
    const float *g = a->ps->p[entry].g;
    double l[8];
    memcpy(l, a->lane, sizeof l);
    size_t j = lo;
    for (; j + 8 <= hi; j += 8)
        for (int k = 0; k < 8; k++) l[k] += (double)g[j + k] * (double)g[j + k];
    for (int k = 0; j < hi; j++, k++) l[k] += (double)g[j] * (double)g[j];
    memcpy(a->lane, l, sizeof l);
}

static double chunk_sq(const tbert_params *ps, int c) {
    sq_acc a = {ps, {0}};
    tbert_params_chunk_pieces(ps, c, sq_piece, &a);
    const double *l = a.lane;
    return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

double tbert_params_grad_norm(const tbert_params *ps) {
    double s = 0.0;
    for (int c = 0, n = tbert_params_chunks(ps); c < n; c++) s += chunk_sq(ps, c);
    return sqrt(s);
}

/* one step's work on the chunks (tbert_par_for items) */
typedef struct {
    tbert_optim *o;
    tbert_params *ps;
    float clip; /* the gradients' scale; 1: none */
    double factor;
} step_job;

static void norm_item(void *ctx, int c, int worker) {
    (void)worker;
    const step_job *j = ctx;
    j->o->part[c] = chunk_sq(j->ps, c);
}

/* clip (when the scale is not 1) and AdamW on entry's elements lo .. hi-1 */
static void update_piece(void *ctx, int entry, size_t lo, size_t hi) {
    const step_job *j = ctx;
    const tbert_optim *o = j->o;
    tbert_param *p = &j->ps->p[entry];
    if (j->clip != 1.0f)
        for (size_t k = lo; k < hi; k++) p->g[k] *= j->clip;
    /* one tbert_adam over this piece of the entry's moments: the arithmetic of src/adam.c, step counted here */
    tbert_adam a = {.lr = o->cfg.lr[p->group] * j->factor,
                    .beta1 = o->cfg.beta1,
                    .beta2 = o->cfg.beta2,
                    .eps = o->cfg.eps,
                    .weight_decay = p->decay ? o->cfg.weight_decay : 0.0,
                    .step = o->step,
                    .n = hi - lo,
                    .m = o->m[entry] + lo,
                    .v = o->v[entry] + lo};
    tbert_adam_step(&a, p->w + lo, p->g + lo);
}

static void update_item(void *ctx, int c, int worker) {
    (void)worker;
    const step_job *j = ctx;
    tbert_params_chunk_pieces(j->ps, c, update_piece, ctx);
}

void tbert_optim_step(tbert_optim *o, tbert_params *ps) {
    step_job j = {o, ps, 1.0f, tbert_optim_lr_factor(&o->cfg, o->step)};
    int n = ps->n == o->n && tbert_params_chunks(ps) == o->n_chunks ? o->n_chunks : 0; /* not init's list: nothing */
    tbert_par_for(o->cfg.threads, n, norm_item, &j);
    double s = 0.0;
    for (int c = 0; c < n; c++) s += o->part[c];
    double norm = sqrt(s);
    o->last_norm = norm;
    if (o->cfg.clip_norm > 0.0) {
        /* torch: clip_coef = max_norm / (total_norm + 1e-6), clamped to 1, as a float32 tensor that multiplies
         * every gradient (also when it is 1: exact, so skipped here). An infinite norm scales by 0 as torch does; a
         * NaN norm leaves the (already NaN) gradients as they are. */
        double coef = o->cfg.clip_norm / (norm + 1e-6);
        if (coef < 1.0) j.clip = (float)coef;
    }
    tbert_par_for(o->cfg.threads, n, update_item, &j);
    o->step++;
}

static void moment_name(char *buf, size_t n, char which, const char *name) {
    snprintf(buf, n, "optim.%c.%s", which, name);
}

tbert_status tbert_optim_save(const tbert_optim *o, const tbert_params *ps, tbert_st_writer *w, tbert_error *err) {
    if (ps->n != o->n)
        return tbert_fail(err, TBERT_E_INTERNAL, "optimiser: %d tensors in the list, %d in the optimiser", ps->n, o->n);
    char name[TBERT_PARAM_NAME_MAX + 16];
    for (int i = 0; i < ps->n; i++) {
        const tbert_param *p = &ps->p[i];
        moment_name(name, sizeof name, 'm', p->name);
        tbert_status st = tbert_st_writer_add(w, name, TBERT_DT_F32, p->ndim, p->shape, o->m[i], err);
        if (st) return st;
        moment_name(name, sizeof name, 'v', p->name);
        st = tbert_st_writer_add(w, name, TBERT_DT_F32, p->ndim, p->shape, o->v[i], err);
        if (st) return st;
    }
    char step[32];
    snprintf(step, sizeof step, "%ld", o->step);
    return tbert_st_writer_meta(w, "optim_step", step, err);
}

static tbert_status read_moment(const tbert_safetensors *f, const tbert_param *p, char which, float *dst,
                                tbert_error *err) {
    char name[TBERT_PARAM_NAME_MAX + 16];
    moment_name(name, sizeof name, which, p->name);
    const char *path = tbert_st_path(f);
    const tbert_st_tensor *t = tbert_st_find(f, name);
    if (!t) return tbert_fail(err, TBERT_E_FORMAT, "%s: optimiser tensor %s is missing", path, name);
    bool same = t->dtype == TBERT_DT_F32 && t->ndim == p->ndim && t->numel == p->n;
    for (int d = 0; same && d < p->ndim; d++) same = t->shape[d] == p->shape[d];
    if (!same)
        return tbert_fail(err, TBERT_E_FORMAT,
                          "%s: optimiser tensor %s is not F32 of the shape of its parameter (%zu values)", path, name,
                          p->n);
    if (dst && p->n) memcpy(dst, t->data, p->n * sizeof(float)); /* t->data may be unaligned: bytes copied */
    return TBERT_OK;
}

tbert_status tbert_optim_restore(tbert_optim *o, const tbert_params *ps, const tbert_safetensors *f, tbert_error *err) {
    const char *path = tbert_st_path(f);
    if (ps->n != o->n)
        return tbert_fail(err, TBERT_E_INTERNAL, "optimiser: %d tensors in the list, %d in the optimiser", ps->n, o->n);
    const char *s = tbert_st_meta(f, "optim_step");
    char *end = NULL;
    long long step = -1;
    if (s && *s >= '0' && *s <= '9') step = strtoll(s, &end, 10);
    if (!s || step < 0 || !end || *end || step > 1000000000000LL)
        return tbert_fail(err, TBERT_E_FORMAT, "%s: metadata optim_step is %s (want a step count >= 0)", path,
                          s ? "not a count" : "missing");
    /* validate every tensor before copying any: a failed restore leaves the optimiser as it was */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < ps->n; i++) {
            tbert_status st = read_moment(f, &ps->p[i], 'm', pass ? o->m[i] : NULL, err);
            if (!st) st = read_moment(f, &ps->p[i], 'v', pass ? o->v[i] : NULL, err);
            if (st) return st;
        }
    o->step = (long)step;
    return TBERT_OK;
}
