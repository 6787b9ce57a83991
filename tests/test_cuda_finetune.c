/* The trainable stack on the CUDA device (src/finetune_stack_cuda.c through the plugin table, wrapped by
 * src/finetune_device.c) against the CPU stack (src/finetune_stack.c, itself checked against float64 and finite
 * differences in test_finetune_stack) on small random models (tbert_model_random), dropout on (0.1 / 0.1, so the
 * device must draw the CPU's masks element for element or the outputs differ by whole dropped values):
 *  1. a training forward: every document's dense row; then the backward from a random d loss / d out: every
 *     trained tensor's gradient. fp32 (and tf32 for the forward): the norm ratio < 1e-5 (issue 15's gradient
 *     tolerance), per element |got - ref| <= 1e-4 * max|ref| + 1e-6 (CONVENTIONS' fp32 atol 1e-4 at scale 1: the
 *     CPU and cuBLAS sum in other orders); bf16: the whole gradient's norm ratio < 3e-2 (issue 15), each tensor's
 *     and the forwards' as the BF16_* bounds below say, no per-element bound; tf32 likewise (TF32_*).
 *     Cases: K = 1 of 2 layers from hidden states, mean pooling + L2, documents of several windows with an empty
 *     window and a document without a real window; K = all with the embeddings and the pooler; K = 2 of 3 with
 *     flatten and odd lengths.
 *  2. two optimiser steps (src/optim.c, on the host over each stack's list): the trained tensors after them equal
 *     the CPU run's within fp32 rounding of the update (norm ratio of the change < FP32_CHANGE, BF16_CHANGE;
 *     key biases left out: their exact gradient is 0, so Adam steps both runs by the sign of rounding noise), and an
 *     evaluation forward after the steps (the device must have uploaded the new values) matches the CPU's.
 * Exit 77 without CUDA or without a device (the emulated device counts as one). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tbert/finetune_device.h"
#include "tbert/finetune_stack.h"
#include "tbert/optim.h"
#include "ft_fixture.h"
#include "testutil.h"

/* bf16 bounds, each with what seeds 1..40 measured on the emulated device:
 * one tensor's gradient: small tensors of these small models (a 12-element bias) see bf16's rounding without
 * averaging: up to 6.4e-2 (the whole gradient, issue 15's 3e-2: up to 2.25e-2);
 * the first forward: CONVENTIONS' bf16 2e-2 (1.5e-2);
 * forwards after the two steps: the weights moved apart too (AdamW at lr 1e-2 turns bf16 gradient errors of small
 * entries into whole steps): 0.1 (4.7e-2); the change of the tensors over the steps: 0.25 (0.123). */
#define BF16_TENSOR 0.1
#define BF16_FWD 2e-2
#define BF16_FWD_AFTER 0.1
#define BF16_CHANGE 0.25
/* fp32, the change over two steps: AdamW divides by sqrt(v), so an entry whose gradient is rounding-sized turns
 * 1e-7 gradient differences into different steps: 1e-4 (seeds 1..40: up to 1.9e-5) */
#define FP32_CHANGE 1e-4
/* tf32 (GEMM inputs rounded to 10 mantissa bits; the emulated cuBLAS rounds as tensor cores do), seeds 1..40: the
 * first forward 2e-3 as test_cuda_parity's composed tf32 encoder (8.3e-4); the whole gradient 5e-3 (1.8e-3); one
 * tensor 1e-2 (3.9e-3); forwards after the steps 5e-2 (1.2e-2); the change over the steps 0.15 (6.2e-2). */
#define TF32_FWD 2e-3
#define TF32_RATIO 5e-3
#define TF32_TENSOR 1e-2
#define TF32_FWD_AFTER 5e-2
#define TF32_CHANGE 0.15

static uint64_t g_seed; /* set once in main, read-only after */

/* got vs ref: ||got-ref|| / ||ref|| < ratio and, when elem > 0, |got-ref| <= 1e-6 + elem * max|ref|. scale > 0
 * replaces ||ref|| and max|ref| (a tensor whose exact gradient is zero: both sides are rounding noise) */
static bool check_scaled(const char *what, const float *got, const float *ref, size_t n, double ratio, double elem,
                         double scale) {
    double mx = 0, dn = 0, rn = 0, worst = 0;
    size_t wi = 0;
    bool finite = true;
    for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs(ref[i]));
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - ref[i];
        if (!isfinite(got[i])) finite = false;
        dn += d * d;
        rn += (double)ref[i] * ref[i];
        if (fabs(d) > worst) worst = fabs(d), wi = i;
    }
    if (scale > 0) rn = scale * scale, mx = scale;
    double nr = rn > 0 ? sqrt(dn / rn) : sqrt(dn), lim = 1e-6 + elem * mx;
    bool ok = finite && mx > 0 && nr < ratio && (elem <= 0 || worst <= lim);
    printf("  %-60s n=%-6zu ||got-ref||/||ref|| = %.2e  max|err| %.2e at %zu%s\n", what, n, nr, worst, wi,
           ok ? "" : "  FAIL");
    tu_dump(what, got, n * sizeof *got);
    return ok;
}

static bool check(const char *what, const float *got, const float *ref, size_t n, double ratio, double elem) {
    return check_scaled(what, got, ref, n, ratio, elem, 0);
}

static double norm(const float *x, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return sqrt(s);
}

/* The key projection's bias gets no gradient: softmax does not change when every score of a row moves by q . b_k.
 * Both sides hold rounding noise of the size of their other terms, so it is measured on the scale of the same
 * layer's query bias gradient (the entry before it in the list). */
static bool is_key_bias(const char *name) {
    size_t l = strlen(name), k = strlen("attention.self.key.bias");
    return l >= k && !strcmp(name + l - k, "attention.self.key.bias");
}

typedef struct {
    const char *name;
    int H, heads, IM, layers, vocab, maxpos;
    int k;
    bool emb;
    tbert_pool pool;
    int max_len;
    bool normalize;
    int n_doc;
    int wins[8];
    int lens[24];
} scase;

static const scase cases[] = {
    {"k1of2-mean-l2", 16, 2, 24, 2, 50, 40, 1, false, TBERT_POOL_MEAN, 0, true, 4, {2, 1, 3, 1},
     {7, 5, 9, 0, 4, 11, 0}},
    {"all-emb-pooler", 12, 3, 20, 2, 40, 32, 2, true, TBERT_POOL_POOLER, 0, false, 3, {1, 2, 1}, {6, 9, 3, 13}},
    {"k2of3-flatten", 8, 2, 16, 3, 30, 24, 2, false, TBERT_POOL_FLATTEN, 11, false, 3, {1, 1, 2}, {11, 3, 7, 5}},
};

/* one case in one precision; returns the number of failed comparisons */
static int run_case(const scase *c, tbert_precision prec) {
    const bool bf = prec == TBERT_PREC_BF16, tf = prec == TBERT_PREC_TF32;
    const double ratio = bf ? 3e-2 : tf ? TF32_RATIO : 1e-5, elem = bf || tf ? 0 : 1e-4;
    const double fwd0 = bf ? BF16_FWD : tf ? TF32_FWD : 1e-5, fwd1 = bf ? BF16_FWD_AFTER : tf ? TF32_FWD_AFTER : 1e-5;
    const double tensor = bf ? BF16_TENSOR : tf ? TF32_TENSOR : 1e-5;
    printf("%s (%s)\n", c->name, tbert_precision_name(prec));
    tbert_model *m = tu_ft_random_model(c->H, c->heads, c->IM, c->layers, c->vocab, c->maxpos, g_seed ^ 0x5eed);
    tu_rng r = {g_seed * 31 + (uint64_t)(c - cases)};
    tu_ft_batch b;
    tu_ft_batch_make(&b, &r, c->n_doc, c->wins, c->lens, c->vocab, c->H);
    tbert_ft_stack_cfg cfg = {.layers = c->layers, .k = c->k, .train_embeddings = c->emb, .pool = c->pool,
                              .max_len = c->max_len, .normalize = c->normalize, .hidden_dropout = 0.1f,
                              .attn_dropout = 0.1f, .dropout_seed = g_seed ^ 0xd409, .threads = 1};
    tbert_error err = {0};
    tbert_ft_stack *cpu = NULL;
    tbert_ft_dev *dev = NULL;
    if (tbert_ft_stack_create(m, &cfg, &cpu, &err)) fail_msg("cpu stack: %s", err.msg);
    if (tbert_ft_dev_create(m, &cfg, 0, prec, &dev, &err)) fail_msg("cuda stack: %s", err.msg);
    assert_true(tbert_ft_dev_is_cuda(dev));
    tbert_params *pc = tbert_ft_stack_params(cpu), *pg = tbert_ft_stack_params(tbert_ft_dev_stack(dev));
    assert_int_equal(pc->n, pg->n);
    int first = c->layers - c->k;
    tbert_ft_batch fb = {b.n_doc, b.doc_off, b.n_win, b.off, first > 0 ? b.hidden : NULL, first == 0 ? b.ids : NULL};
    size_t dim = tbert_ft_stack_dense_dim(cpu), no = (size_t)b.n_doc * dim;
    float *oc = tu_xcalloc(no, sizeof(float)), *og = tu_xcalloc(no, sizeof(float)), *dout = tu_xcalloc(no, sizeof(float));
    int bad = 0;
    char what[160];
    tbert_optim_cfg oc_cfg = tbert_optim_default_cfg();
    oc_cfg.lr[TBERT_PGROUP_ENCODER] = 1e-2; /* large steps: a value the device did not upload would show */
    oc_cfg.warmup_steps = 0;
    oc_cfg.clip_norm = 1.0;
    tbert_optim optc, optg;
    assert_int_equal(tbert_optim_init(&optc, pc, &oc_cfg, &err), TBERT_OK);
    assert_int_equal(tbert_optim_init(&optg, pg, &oc_cfg, &err), TBERT_OK);
    float *w0 = tu_xcalloc(tbert_params_numel(pc), sizeof(float));
    for (int i = 0, o = 0; i < pc->n; o += (int)pc->p[i].n, i++) memcpy(w0 + o, pc->p[i].w, pc->p[i].n * sizeof(float));
    for (int step = 0; step < 2; step++) {
        assert_int_equal(tbert_ft_stack_forward(cpu, &fb, true, 3 + (uint64_t)step, oc, &err), TBERT_OK);
        if (tbert_ft_dev_forward(dev, &fb, true, 3 + (uint64_t)step, og, &err)) fail_msg("cuda forward: %s", err.msg);
        snprintf(what, sizeof what, "%s %s step %d forward (dropout)", c->name, tbert_precision_name(prec), step);
        bad += !check(what, og, oc, no, step ? fwd1 : fwd0, elem);
        for (size_t i = 0; i < no; i++) dout[i] = tu_normal(&r);
        tbert_params_zero_grad(pc);
        tbert_params_zero_grad(pg);
        assert_int_equal(tbert_ft_stack_backward(cpu, dout, &err), TBERT_OK);
        if (tbert_ft_dev_backward(dev, dout, &err)) fail_msg("cuda backward: %s", err.msg);
        double gd = 0, gr = 0; /* the whole gradient (every tensor but the key biases) */
        for (int i = 0; i < pc->n && step == 0; i++) {
            snprintf(what, sizeof what, "%s %s d %s", c->name, tbert_precision_name(prec), pc->p[i].name);
            bool kb = is_key_bias(pc->p[i].name);
            double sc = kb && i > 0 ? norm(pc->p[i - 1].g, pc->p[i - 1].n) : 0;
            bad += !check_scaled(what, pg->p[i].g, pc->p[i].g, pc->p[i].n, tensor, elem, sc);
            for (size_t j = 0; j < pc->p[i].n && !kb; j++) {
                double d = (double)pg->p[i].g[j] - pc->p[i].g[j];
                gd += d * d;
                gr += (double)pc->p[i].g[j] * pc->p[i].g[j];
            }
        }
        if (step == 0) {
            bool ok = gr > 0 && sqrt(gd / gr) < ratio;
            printf("  %s %s: the whole gradient: ||got-ref||/||ref|| = %.2e (< %.0e)%s\n", c->name,
                   tbert_precision_name(prec), gr > 0 ? sqrt(gd / gr) : 0.0, ratio, ok ? "" : "  FAIL");
            bad += !ok;
        }
        tbert_optim_step(&optc, pc);
        tbert_optim_step(&optg, pg);
    }
    /* the change of every trained tensor over the two steps */
    size_t nt = tbert_params_numel(pc);
    float *dc = tu_xcalloc(nt, sizeof(float)), *dg = tu_xcalloc(nt, sizeof(float));
    for (int i = 0, o = 0; i < pc->n; o += (int)pc->p[i].n, i++)
        for (size_t j = 0; j < pc->p[i].n && !is_key_bias(pc->p[i].name); j++) { /* Adam's sign of noise: left out */
            dc[o + j] = pc->p[i].w[j] - w0[o + j];
            dg[o + j] = pg->p[i].w[j] - w0[o + j];
        }
    snprintf(what, sizeof what, "%s %s change of the tensors (but key biases) after 2 AdamW steps", c->name,
             tbert_precision_name(prec));
    bad += !check(what, dg, dc, nt, bf ? BF16_CHANGE : tf ? TF32_CHANGE : FP32_CHANGE, 0);
    assert_int_equal(tbert_ft_stack_forward(cpu, &fb, false, 0, oc, &err), TBERT_OK);
    if (tbert_ft_dev_forward(dev, &fb, false, 0, og, &err)) fail_msg("cuda forward: %s", err.msg);
    snprintf(what, sizeof what, "%s %s evaluation forward after the steps", c->name, tbert_precision_name(prec));
    bad += !check(what, og, oc, no, fwd1, elem);
    tbert_optim_free(&optc);
    tbert_optim_free(&optg);
    free(w0), free(dc), free(dg), free(oc), free(og), free(dout), free(b.ids), free(b.hidden);
    tbert_ft_dev_free(dev);
    tbert_ft_stack_free(cpu);
    tbert_model_free(m);
    return bad;
}

static void test_fp32(void **state) {
    (void)state;
    int bad = 0;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) bad += run_case(&cases[i], TBERT_PREC_FP32);
    if (bad) fail_msg("%d comparisons off (seed %llu)", bad, (unsigned long long)g_seed);
}

static void test_bf16(void **state) {
    (void)state;
    int bad = 0;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) bad += run_case(&cases[i], TBERT_PREC_BF16);
    if (bad) fail_msg("%d comparisons off (seed %llu)", bad, (unsigned long long)g_seed);
}

/* a model the device cannot serve in this configuration is refused in one line, not crashed on */
static void test_tf32(void **state) {
    (void)state;
    int bad = 0;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) bad += run_case(&cases[i], TBERT_PREC_TF32);
    if (bad) fail_msg("%d comparisons off (seed %llu)", bad, (unsigned long long)g_seed);
}

static void test_refusals(void **state) {
    (void)state;
    tbert_model *m = tu_ft_random_model(8, 2, 16, 2, 30, 24, g_seed);
    tbert_ft_stack_cfg cfg = {.layers = 2, .k = 1, .pool = TBERT_POOL_MEAN, .threads = 1};
    tbert_error err = {0};
    tbert_ft_dev *dev = NULL;
    assert_int_equal(tbert_ft_dev_create(m, &cfg, 0, TBERT_PREC_FP32, &dev, &err), TBERT_OK);
    int32_t doc_off[2] = {0, 1}, off[2] = {0, 30}; /* 30 tokens > 24 positions */
    float *hidden = tu_xcalloc(30 * 8, sizeof(float)), out[8];
    tbert_ft_batch b = {1, doc_off, 1, off, hidden, NULL};
    assert_int_equal(tbert_ft_dev_forward(dev, &b, true, 0, out, &err), TBERT_E_ARG);
    printf("  refused: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "window 0"));
    float dout[8] = {0};
    assert_int_equal(tbert_ft_dev_backward(dev, dout, &err), TBERT_E_ARG); /* no training forward */
    free(hidden);
    tbert_ft_dev_free(dev);
    tbert_model_free(m);
}

int main(void) {
    tu_require_cuda_device("test_cuda_finetune");
    g_seed = tu_seed_from_env("test_cuda_finetune");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fp32),
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_tf32),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests_name("cuda finetune stack", tests, NULL, NULL) ? 1 : 0;
}
