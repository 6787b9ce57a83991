/* The fine-tuning optimiser (include/tbert/optim.h): Hugging Face's linear warm-up/decay schedule, clipping by
 * global gradient norm as torch.nn.utils.clip_grad_norm_, and AdamW per entry of a tbert_params list with the
 * learning rate of the entry's group. The AdamW arithmetic itself is src/adam.c's tbert_adam_step (torch's
 * single-tensor path), called on each entry's moments, so the head-only trainer and this one round alike.
 * Moments save to and restore from a checkpoint's safetensors as "optim.m.NAME" / "optim.v.NAME". */
#include "tbert/optim.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    o->m = o->v = NULL;
    o->n = 0;
}

double tbert_params_grad_norm(const tbert_params *ps) {
    double s = 0.0;
    for (int i = 0; i < ps->n; i++) {
        const float *g = ps->p[i].g;
        for (size_t j = 0; j < ps->p[i].n; j++) s += (double)g[j] * (double)g[j];
    }
    return sqrt(s);
}

void tbert_optim_step(tbert_optim *o, tbert_params *ps) {
    double norm = tbert_params_grad_norm(ps);
    o->last_norm = norm;
    if (o->cfg.clip_norm > 0.0) {
        /* torch: clip_coef = max_norm / (total_norm + 1e-6), clamped to 1, as a float32 tensor that multiplies
         * every gradient (also when it is 1: exact, so skipped here). An infinite norm scales by 0 as torch does; a
         * NaN norm leaves the (already NaN) gradients as they are. */
        double coef = o->cfg.clip_norm / (norm + 1e-6);
        if (coef < 1.0) {
            float c = (float)coef;
            for (int i = 0; i < ps->n; i++) {
                float *g = ps->p[i].g;
                for (size_t j = 0; j < ps->p[i].n; j++) g[j] *= c;
            }
        }
    }
    double factor = tbert_optim_lr_factor(&o->cfg, o->step);
    for (int i = 0; i < ps->n && i < o->n; i++) {
        tbert_param *p = &ps->p[i];
        /* one tbert_adam over this entry's moments: the arithmetic of src/adam.c, step counted here */
        tbert_adam a = {.lr = o->cfg.lr[p->group] * factor,
                        .beta1 = o->cfg.beta1,
                        .beta2 = o->cfg.beta2,
                        .eps = o->cfg.eps,
                        .weight_decay = p->decay ? o->cfg.weight_decay : 0.0,
                        .step = o->step,
                        .n = p->n,
                        .m = o->m[i],
                        .v = o->v[i]};
        tbert_adam_step(&a, p->w, p->g);
    }
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
