/* The fine-tuning optimiser (src/optim.c) against PyTorch: torch.optim.AdamW + transformers'
 * get_linear_schedule_with_warmup + torch.nn.utils.clip_grad_norm_ over 12 steps on four tensors in two
 * learning-rate groups, weight decay on and off (tests/golden/make_optim_golden.py,
 * tests/data/finetune/optim_trajectory.txt). Every step: the learning rates equal transformers' (the same
 * double arithmetic: exact), the global norm equals torch's float32 norm within rtol 1e-6, and the parameters
 * match within atol 2e-7, rtol 2e-6 per element. Tolerance: float32 rounding only. torch sums the norm in
 * float32 and tbert in double, so the clipping scale may differ by an ulp; AdamW's m/sqrt(v) nearly cancels
 * that. A wrong schedule (warm-up off by one step), clipping off, or decay on the biases moves values by
 * 1e-4 .. 1e-2 (the step sizes are 1e-3 .. 1e-2).
 * Also: the schedule and clipping in closed form, and the moments' checkpoint round trip (continuing after a
 * restore is bit-identical to not stopping) with a missing and a misshapen moment refused. And the threaded step
 * (test_threads_chunks): on a list whose entries straddle the 32K-element chunks, 1, 2, 3 and 7 threads give the
 * same bits; the norm equals a long double sum of every g^2 within rtol 1e-10; each entry's values and moments equal
 * one whole-entry tbert_adam_step (clipped by the same coefficient) bit for bit. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"
#include "tbert/head.h"
#include "tbert/optim.h"
#include "tbert/safetensors.h"

typedef struct {
    tbert_optim_cfg cfg;
    int steps, nt;
    char names[8][TBERT_PARAM_NAME_MAX];
    int group[8], decay[8], ndim[8];
    int64_t shape[8][2];
    size_t off[9]; /* tensor t is values off[t] .. off[t+1]-1 of the concatenation */
} golden_hdr;

static bool read_vec(FILE *f, const char *tag, size_t n, float *out) {
    char t[16];
    if (fscanf(f, "%15s", t) != 1 || strcmp(t, tag)) return false;
    for (size_t i = 0; i < n; i++)
        if (fscanf(f, "%f", &out[i]) != 1) return false;
    return true;
}

static FILE *open_golden(golden_hdr *h) {
    char path[512];
    FILE *f = fopen(tu_fixture("data/finetune/optim_trajectory.txt", path, sizeof path), "r");
    assert_non_null(f);
    memset(h, 0, sizeof *h);
    h->cfg = tbert_optim_default_cfg();
    tbert_optim_cfg *c = &h->cfg;
    assert_int_equal(fscanf(f, "optim %lf %lf %lf %lf %lf %lf %lf %ld %ld %d", &c->lr[TBERT_PGROUP_HEAD],
                            &c->lr[TBERT_PGROUP_ENCODER], &c->beta1, &c->beta2, &c->eps, &c->weight_decay,
                            &c->clip_norm, &c->warmup_steps, &c->total_steps, &h->steps),
                     10);
    assert_int_equal(fscanf(f, " tensors %d", &h->nt), 1);
    assert_true(h->nt >= 2 && h->nt <= 8);
    for (int t = 0; t < h->nt; t++) {
        assert_int_equal(fscanf(f, " tensor %127s %d %d %d", h->names[t], &h->group[t], &h->decay[t], &h->ndim[t]), 4);
        assert_true(h->ndim[t] == 1 || h->ndim[t] == 2);
        size_t n = 1;
        for (int d = 0; d < h->ndim[t]; d++) {
            long long x;
            assert_int_equal(fscanf(f, "%lld", &x), 1);
            h->shape[t][d] = x;
            n *= (size_t)x;
        }
        h->off[t + 1] = h->off[t] + n;
    }
    return f;
}

/* The golden's tensors as one list over w and g (each off[nt] floats). */
static void make_params(const golden_hdr *h, float *w, float *g, tbert_params *ps) {
    memset(ps, 0, sizeof *ps);
    for (int t = 0; t < h->nt; t++)
        assert_int_equal(tbert_params_add(ps, h->names[t], w + h->off[t], g + h->off[t], h->ndim[t], h->shape[t],
                                          h->group[t], h->decay[t] != 0, NULL),
                         TBERT_OK);
    assert_int_equal(ps->n, h->nt);
    assert_int_equal(tbert_params_numel(ps), h->off[h->nt]);
}

static void test_trajectory(void **state) {
    golden_hdr h;
    FILE *f = open_golden(&h);
    size_t n = h.off[h.nt];
    float *w = malloc(n * sizeof(float)), *g = malloc(n * sizeof(float)), *ref = malloc(n * sizeof(float));
    assert_true(w && g && ref);
    assert_true(read_vec(f, "p0", n, w));
    tbert_params ps;
    make_params(&h, w, g, &ps);
    tbert_optim o;
    assert_int_equal(tbert_optim_init(&o, &ps, &h.cfg, NULL), TBERT_OK);
    int clipped = 0, unclipped = 0, zero_lr = 0;
    for (int s = 1; s <= h.steps; s++) {
        int ss, was_clipped;
        double lr_head, lr_enc;
        float norm_ref;
        assert_int_equal(fscanf(f, " step %d %lf %lf %f %d", &ss, &lr_head, &lr_enc, &norm_ref, &was_clipped), 5);
        assert_int_equal(ss, s);
        assert_true(read_vec(f, "g", n, g));
        assert_true(read_vec(f, "p", n, ref));
        /* the learning rates of this step: transformers' LambdaLR computes base_lr * lr_lambda(step) in double */
        double fac = tbert_optim_lr_factor(&h.cfg, o.step);
        if (h.cfg.lr[TBERT_PGROUP_HEAD] * fac != lr_head || h.cfg.lr[TBERT_PGROUP_ENCODER] * fac != lr_enc)
            fail_msg("step %d: learning rates %.17g %.17g, transformers %.17g %.17g", s, h.cfg.lr[0] * fac,
                     h.cfg.lr[1] * fac, lr_head, lr_enc);
        tbert_optim_step(&o, &ps);
        assert_int_equal(o.step, s);
        if (!(fabs(o.last_norm - norm_ref) <= 1e-6 * norm_ref))
            fail_msg("step %d: global norm %.9g, torch %.9g", s, o.last_norm, (double)norm_ref);
        assert_int_equal(o.last_norm > h.cfg.clip_norm, was_clipped);
        if (was_clipped) clipped++;
        else unclipped++;
        if (lr_head == 0.0) zero_lr++;
        char what[64];
        snprintf(what, sizeof what, "params after step %d", s);
        assert_int_equal(tu_compare(what, w, ref, n, 2e-7, 2e-6), 0);
    }
    /* the golden covers what it claims: clipped and unclipped steps, lr 0 at step 1 and after total_steps */
    assert_true(clipped >= 2 && unclipped >= 2);
    assert_true(zero_lr >= 2 && h.steps > h.cfg.total_steps && h.cfg.warmup_steps >= 2);
    bool groups[2] = {false, false}, decays[2] = {false, false};
    for (int t = 0; t < h.nt; t++) groups[h.group[t]] = decays[h.decay[t]] = true;
    assert_true(groups[0] && groups[1] && decays[0] && decays[1]);
    assert_true(h.cfg.lr[0] != h.cfg.lr[1]);
    tbert_optim_free(&o);
    tbert_params_free(&ps);
    fclose(f);
    free(w);
    free(g);
    free(ref);
}

/* transformers' lr_lambda by hand: warm-up 0, 1/3, 2/3, peak at step 3, linear to 0 at step 10, 0 after;
 * no warm-up; constant after warm-up when total_steps <= 0. */
static void test_schedule_closed_form(void **state) {
    tbert_optim_cfg c = tbert_optim_default_cfg();
    c.warmup_steps = 3;
    c.total_steps = 10;
    double want[13] = {0, 1.0 / 3, 2.0 / 3, 1, 6.0 / 7, 5.0 / 7, 4.0 / 7, 3.0 / 7, 2.0 / 7, 1.0 / 7, 0, 0, 0};
    for (long s = 0; s < 13; s++) assert_float_equal(tbert_optim_lr_factor(&c, s), want[s], 1e-15);
    c.warmup_steps = 0;
    assert_float_equal(tbert_optim_lr_factor(&c, 0), 1.0, 0);
    assert_float_equal(tbert_optim_lr_factor(&c, 5), 0.5, 1e-15);
    c.total_steps = 0;
    c.warmup_steps = 4;
    assert_float_equal(tbert_optim_lr_factor(&c, 2), 0.5, 1e-15);
    assert_float_equal(tbert_optim_lr_factor(&c, 4), 1.0, 0);
    assert_float_equal(tbert_optim_lr_factor(&c, 1000000), 1.0, 0);
    /* the defaults: constant */
    c = tbert_optim_default_cfg();
    assert_float_equal(tbert_optim_lr_factor(&c, 0), 1.0, 0);
    assert_float_equal(c.lr[TBERT_PGROUP_HEAD], 1e-3, 0);
    assert_float_equal(c.lr[TBERT_PGROUP_ENCODER], 5e-5, 0);
}

/* Clipping by hand: gradients (3, 4) and (12) have global norm 13; max 6.5 scales them by 6.5 / (13 + 1e-6);
 * max 20 leaves them alone. With lr 0 and no decay, AdamW leaves the values alone, so only the clipping shows. */
static void test_clip_closed_form(void **state) {
    float w[3] = {1, 2, 3}, g[3] = {3, 4, 12};
    tbert_params ps = {0};
    int64_t s2 = 2, s1 = 1;
    assert_int_equal(tbert_params_add(&ps, "a", w, g, 1, &s2, TBERT_PGROUP_ENCODER, true, NULL), TBERT_OK);
    assert_int_equal(tbert_params_add(&ps, "b", w + 2, g + 2, 1, &s1, TBERT_PGROUP_HEAD, false, NULL), TBERT_OK);
    assert_float_equal(tbert_params_grad_norm(&ps), 13.0, 1e-12);
    tbert_optim_cfg c = tbert_optim_default_cfg();
    c.lr[0] = c.lr[1] = 0;
    c.clip_norm = 6.5;
    tbert_optim o;
    assert_int_equal(tbert_optim_init(&o, &ps, &c, NULL), TBERT_OK);
    tbert_optim_step(&o, &ps);
    assert_float_equal(o.last_norm, 13.0, 1e-12);
    float k = (float)(6.5 / (13.0 + 1e-6));
    assert_true(g[0] == 3 * k && g[1] == 4 * k && g[2] == 12 * k);
    assert_true(w[0] == 1 && w[1] == 2 && w[2] == 3);
    /* m after one step is (1 - beta1) g of the clipped gradient */
    assert_float_equal(o.m[0][1], 0.1 * 4 * k, 1e-7);
    tbert_optim_free(&o);
    c.clip_norm = 20;
    g[0] = 3, g[1] = 4, g[2] = 12;
    assert_int_equal(tbert_optim_init(&o, &ps, &c, NULL), TBERT_OK);
    tbert_optim_step(&o, &ps);
    assert_true(g[0] == 3 && g[1] == 4 && g[2] == 12);
    tbert_optim_free(&o);
    /* clip_norm <= 0: no clipping at all */
    c.clip_norm = 0;
    assert_int_equal(tbert_optim_init(&o, &ps, &c, NULL), TBERT_OK);
    tbert_optim_step(&o, &ps);
    assert_true(g[0] == 3 && g[1] == 4 && g[2] == 12);
    tbert_optim_free(&o);
    /* a bad configuration is refused with one line */
    tbert_error err;
    c.beta2 = 1.0;
    assert_int_equal(tbert_optim_init(&o, &ps, &c, &err), TBERT_E_ARG);
    assert_non_null(strstr(err.msg, "betas"));
    tbert_params_free(&ps);
}

/* Run the golden's first 5 steps, save the moments, restore into a fresh optimiser, and run the remaining
 * steps on both: the values stay bit-identical. Then a missing moment and a misshapen one are refused. */
static void test_save_restore(void **state) {
    golden_hdr h;
    FILE *f = open_golden(&h);
    size_t n = h.off[h.nt];
    float *w = malloc(n * sizeof(float)), *g = malloc(n * sizeof(float)), *w2 = malloc(n * sizeof(float)),
          *g2 = malloc(n * sizeof(float)), *ref = malloc(n * sizeof(float));
    assert_true(w && g && w2 && g2 && ref);
    assert_true(read_vec(f, "p0", n, w));
    tbert_params ps, ps2;
    make_params(&h, w, g, &ps);
    make_params(&h, w2, g2, &ps2);
    tbert_optim o, o2;
    assert_int_equal(tbert_optim_init(&o, &ps, &h.cfg, NULL), TBERT_OK);
    char dir[] = "/tmp/tbert_optim_XXXXXX", path[300];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/last.safetensors", dir);
    tbert_error err;
    for (int s = 1; s <= h.steps; s++) {
        int ss, cl;
        double a, b;
        float nr;
        assert_int_equal(fscanf(f, " step %d %lf %lf %f %d", &ss, &a, &b, &nr, &cl), 5);
        assert_true(read_vec(f, "g", n, g));
        assert_true(read_vec(f, "p", n, ref));
        memcpy(g2, g, n * sizeof(float));
        if (s == 6) {
            tbert_st_writer *wr = tbert_st_writer_new();
            assert_non_null(wr);
            assert_int_equal(tbert_optim_save(&o, &ps, wr, &err), TBERT_OK);
            assert_int_equal(tbert_st_writer_save(wr, path, &err), TBERT_OK);
            tbert_st_writer_free(wr);
            memcpy(w2, w, n * sizeof(float));
            assert_int_equal(tbert_optim_init(&o2, &ps2, &h.cfg, NULL), TBERT_OK);
            tbert_safetensors *sf;
            assert_int_equal(tbert_st_open(path, &sf, &err), TBERT_OK);
            assert_int_equal(tbert_st_count(sf), 2 * h.nt);
            assert_string_equal(tbert_st_meta(sf, "optim_step"), "5");
            assert_int_equal(tbert_optim_restore(&o2, &ps2, sf, &err), TBERT_OK);
            tbert_st_close(sf);
            assert_int_equal(o2.step, 5);
        }
        tbert_optim_step(&o, &ps);
        if (s >= 6) {
            tbert_optim_step(&o2, &ps2);
            assert_memory_equal(w, w2, n * sizeof(float));
            for (int t = 0; t < h.nt; t++) {
                assert_memory_equal(o.m[t], o2.m[t], (h.off[t + 1] - h.off[t]) * sizeof(float));
                assert_memory_equal(o.v[t], o2.v[t], (h.off[t + 1] - h.off[t]) * sizeof(float));
            }
        }
        assert_int_equal(tu_compare("params", w, ref, n, 2e-7, 2e-6), 0);
    }
    tbert_optim_free(&o2);

    /* a file whose last moment is missing, and one where a moment has another shape */
    for (int bad = 0; bad < 2; bad++) {
        tbert_st_writer *wr = tbert_st_writer_new();
        assert_non_null(wr);
        char name[200];
        for (int t = 0; t < h.nt; t++)
            for (int k = 0; k < 2; k++) {
                snprintf(name, sizeof name, "optim.%c.%s", k ? 'v' : 'm', h.names[t]);
                bool last = t == h.nt - 1 && k == 1;
                if (bad == 0 && last) continue;
                int64_t flat = (int64_t)(h.off[t + 1] - h.off[t]);
                const int64_t *shape = bad == 1 && last ? &flat : h.shape[t];
                int nd = bad == 1 && last ? 1 : h.ndim[t];
                if (bad == 1 && last && h.ndim[t] == 1) flat--; /* keep it misshapen for a 1-d tensor too */
                assert_int_equal(tbert_st_writer_add(wr, name, TBERT_DT_F32, nd, shape, o.m[t], NULL), TBERT_OK);
            }
        assert_int_equal(tbert_st_writer_meta(wr, "optim_step", "7", NULL), TBERT_OK);
        assert_int_equal(tbert_st_writer_save(wr, path, NULL), TBERT_OK);
        tbert_st_writer_free(wr);
        tbert_safetensors *sf;
        assert_int_equal(tbert_st_open(path, &sf, &err), TBERT_OK);
        assert_int_equal(tbert_optim_init(&o2, &ps2, &h.cfg, NULL), TBERT_OK);
        assert_int_equal(tbert_optim_restore(&o2, &ps2, sf, &err), TBERT_E_FORMAT);
        snprintf(name, sizeof name, "optim.v.%s", h.names[h.nt - 1]);
        assert_non_null(strstr(err.msg, name));
        assert_non_null(strstr(err.msg, bad ? "shape" : "missing"));
        assert_int_equal(o2.step, 0); /* nothing restored */
        tbert_optim_free(&o2);
        tbert_st_close(sf);
    }
    unlink(path);
    rmdir(dir);
    tbert_optim_free(&o);
    tbert_params_free(&ps);
    tbert_params_free(&ps2);
    fclose(f);
    free(w);
    free(g);
    free(w2);
    free(g2);
    free(ref);
}

/* The threaded step on a list whose entries straddle the chunks (sizes 70001, 5, 200 x 200, 1, 32768: 5 chunks).
 * Reference per step: the norm as a long double sum of every g^2 (rtol 1e-10: a skipped or repeated piece moves it
 * by >= 1e-5), and per entry one whole-entry tbert_adam_step with the entry's rate and decay on gradients scaled by
 * the coefficient the step clipped with (bit for bit: the update is element-wise, so a piece given the wrong slice
 * of values, moments or gradients shows). 1, 2, 3 and 7 threads: the same bits. Steps 1-2 clip, step 3 does not. */
static void test_threads_chunks(void **state) {
    (void)state;
    enum { NT = 5, STEPS = 3 };
    static const int64_t shapes[NT][2] = {{70001, 0}, {5, 0}, {200, 200}, {1, 0}, {32768, 0}};
    static const int threads[] = {1, 2, 3, 7};
    enum { NRUN = (int)(sizeof threads / sizeof threads[0]) };
    uint64_t seed = tu_seed_from_env("test_optim");
    tu_rng rng = {seed};
    size_t off[NT + 1] = {0};
    for (int t = 0; t < NT; t++) off[t + 1] = off[t] + (size_t)shapes[t][0] * (size_t)(shapes[t][1] ? shapes[t][1] : 1);
    size_t n = off[NT];
    float *w0 = tu_rand_floats(&rng, n, 0.5f), *gs[STEPS];
    for (int s = 0; s < STEPS; s++) gs[s] = tu_rand_floats(&rng, n, s == 2 ? 1e-4f : 0.05f); /* norms ~17, ~17, ~0.03 */
    float *w[NRUN + 1], *g[NRUN + 1];
    tbert_params ps[NRUN + 1];
    tbert_optim o[NRUN + 1];
    tbert_optim_cfg c = tbert_optim_default_cfg();
    c.lr[TBERT_PGROUP_HEAD] = 1e-2;
    c.lr[TBERT_PGROUP_ENCODER] = 3e-3;
    c.warmup_steps = 1;
    c.total_steps = 10;
    c.clip_norm = 1.0;
    for (int r = 0; r <= NRUN; r++) { /* r == NRUN: the whole-entry reference (its optimiser only holds the moments) */
        w[r] = tu_xmalloc(n * sizeof(float));
        g[r] = tu_xmalloc(n * sizeof(float));
        memcpy(w[r], w0, n * sizeof(float));
        memset(&ps[r], 0, sizeof ps[r]);
        char name[32];
        for (int t = 0; t < NT; t++) {
            snprintf(name, sizeof name, "t%d", t);
            int group = t % 2 ? TBERT_PGROUP_HEAD : TBERT_PGROUP_ENCODER, ndim = shapes[t][1] ? 2 : 1;
            float *wt = w[r] + off[t], *gt = g[r] + off[t];
            assert_int_equal(tbert_params_add(&ps[r], name, wt, gt, ndim, shapes[t], group, t != 1, NULL), TBERT_OK);
        }
        c.threads = r < NRUN ? threads[r] : 1;
        assert_int_equal(tbert_optim_init(&o[r], &ps[r], &c, NULL), TBERT_OK);
    }
    assert_int_equal(tbert_params_chunks(&ps[0]), 5);
    int clipped = 0;
    for (int s = 0; s < STEPS; s++) {
        long double sq = 0;
        for (size_t i = 0; i < n; i++) sq += (long double)gs[s][i] * gs[s][i];
        double norm_ref = sqrt((double)sq);
        for (int r = 0; r < NRUN; r++) {
            memcpy(g[r], gs[s], n * sizeof(float));
            double gn = tbert_params_grad_norm(&ps[r]);
            tbert_optim_step(&o[r], &ps[r]);
            if (!(fabs(o[r].last_norm - norm_ref) <= 1e-10 * norm_ref))
                fail_msg("seed %llu step %d, %d threads: norm %.17g, long double sum %.17g", (unsigned long long)seed,
                         s + 1, threads[r], o[r].last_norm, norm_ref);
            assert_memory_equal(&gn, &o[r].last_norm, sizeof gn); /* tbert_params_grad_norm: the value clipped with */
            if (r > 0) {
                assert_memory_equal(&o[r].last_norm, &o[0].last_norm, sizeof(double));
                assert_memory_equal(w[r], w[0], n * sizeof(float));
                assert_memory_equal(g[r], g[0], n * sizeof(float));
                for (int t = 0; t < NT; t++) {
                    assert_memory_equal(o[r].m[t], o[0].m[t], (off[t + 1] - off[t]) * sizeof(float));
                    assert_memory_equal(o[r].v[t], o[0].v[t], (off[t + 1] - off[t]) * sizeof(float));
                }
            }
        }
        /* the whole-entry reference, clipped by the coefficient of o[0]'s norm */
        float *rw = w[NRUN], *rg = g[NRUN];
        memcpy(rg, gs[s], n * sizeof(float));
        double coef = c.clip_norm / (o[0].last_norm + 1e-6);
        if (coef < 1.0) {
            clipped++;
            for (size_t i = 0; i < n; i++) rg[i] *= (float)coef;
        }
        double fac = tbert_optim_lr_factor(&c, o[NRUN].step);
        for (int t = 0; t < NT; t++) {
            const tbert_param *p = &ps[NRUN].p[t];
            tbert_adam a = {.lr = c.lr[p->group] * fac, .beta1 = c.beta1, .beta2 = c.beta2, .eps = c.eps,
                            .weight_decay = p->decay ? c.weight_decay : 0.0, .step = o[NRUN].step, .n = p->n,
                            .m = o[NRUN].m[t], .v = o[NRUN].v[t]};
            tbert_adam_step(&a, rw + off[t], rg + off[t]);
        }
        o[NRUN].step++;
        if (memcmp(rw, w[0], n * sizeof(float)) || memcmp(rg, g[0], n * sizeof(float)))
            fail_msg("seed %llu step %d: the chunked update differs from whole-entry AdamW", (unsigned long long)seed,
                     s + 1);
        for (int t = 0; t < NT; t++) {
            assert_memory_equal(o[NRUN].m[t], o[0].m[t], (off[t + 1] - off[t]) * sizeof(float));
            assert_memory_equal(o[NRUN].v[t], o[0].v[t], (off[t + 1] - off[t]) * sizeof(float));
        }
    }
    assert_int_equal(clipped, 2);
    assert_true(memcmp(w[0], w0, n * sizeof(float)) != 0);
    for (int r = 0; r <= NRUN; r++) {
        tbert_optim_free(&o[r]);
        tbert_params_free(&ps[r]);
        free(w[r]);
        free(g[r]);
    }
    for (int s = 0; s < STEPS; s++) free(gs[s]);
    free(w0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_trajectory),
        cmocka_unit_test(test_schedule_closed_form),
        cmocka_unit_test(test_clip_closed_form),
        cmocka_unit_test(test_save_restore),
        cmocka_unit_test(test_threads_chunks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
