/* The CUDA classifier head (kernels/head.cu, src/head_cuda.c) against the CPU head (src/head.c, src/adam.c).
 * Exit 77 without CUDA or without a device. Fresh random inputs each run (seed printed; TBERT_TEST_SEED replays).
 *   - kernels one by one: GELU forward/backward, bias-gradient sums, fused logits+loss+gradient, AdamW;
 *   - a whole training step (forward with dropout, loss, backward, AdamW) for linear/MLP x binary/multi-class
 *     heads, with and without dropout and class weights;
 *   - the first step right after create, fresh and resumed (the uploads must be ordered before the kernels).
 * Tolerances: element-wise kernels and reductions that run in the CPU's order in double: |d| <= 1e-6 + 1e-6 |ref|;
 * AdamW: bit for bit; anything through a matrix product (cuBLAS vs OpenBLAS, float32): ratio < 1e-5 and
 * |d| <= 1e-6 + 1e-4 |ref|. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "head_cuda.h"
#include "tbert/cuda_plugin.h"
#include "tbert/head.h"

#if TBERT_HAVE_CUDA
#include <cuda_runtime.h>

#include "testutil_cuda.h"

static uint64_t g_seed(void **state) {
    return *(uint64_t *)*state;
}

static void expect_close(const char *what, const float *got, const float *ref, size_t n, double atol, double rtol,
                         double max_ratio) {
    size_t bad = tu_compare(what, got, ref, n, atol, rtol);
    double r = tu_norm_ratio(got, ref, n);
    if (bad || !(r < max_ratio)) fail_msg("%s: %zu outside tolerance, norm ratio %.3g", what, bad, r);
}

static void *dev_poisoned(size_t bytes) {
    void *d = NULL;
    CK(cudaMalloc(&d, bytes + 4));
    CK(cudaMemset(d, 0xFF, bytes)); /* NaN */
    return d;
}
static void to_host(void *host, const void *dev, size_t bytes) {
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost));
}

/* ---- kernels ---- */

static void test_gelu_kernels(void **state) {
    tu_rng r = {g_seed(state) ^ 1};
    const int rows = 37, cols = 129;
    const size_t n = (size_t)rows * cols;
    float *a = tu_rand_floats(&r, n, 3.0f), *b1 = tu_rand_floats(&r, cols, 1.0f), *dh = tu_rand_floats(&r, n, 1.0f);
    float *mask = malloc(n * sizeof *mask);
    tbert_rng dr;
    tbert_rng_seed(&dr, g_seed(state));
    tbert_cuda_head_dropout_mask(0.25f, n, &dr, mask);
    float *da = tu_dev_copy(a, n * 4), *dbias = tu_dev_copy(b1, cols * 4), *dhout = dev_poisoned(n * 4);
    CK(tbert_cuda_head_bias_gelu(da, dhout, dbias, rows, cols, NULL));
    float *ga = malloc(n * 4), *gh = malloc(n * 4), *ra = malloc(n * 4), *rh = malloc(n * 4);
    to_host(ga, da, n * 4);
    to_host(gh, dhout, n * 4);
    for (size_t i = 0; i < n; i++) {
        ra[i] = a[i] + b1[i % cols];
        rh[i] = (float)(0.5 * ra[i] * (1.0 + erf(ra[i] * M_SQRT1_2)));
    }
    expect_close("head bias (pre-activation)", ga, ra, n, 0, 0, 1e-30);
    expect_close("head gelu forward", gh, rh, n, 1e-6, 1e-6, 1e-6);
    /* backward with and without the dropout mask, in place */
    for (int use_mask = 0; use_mask < 2; use_mask++) {
        float *ddh = tu_dev_copy(dh, n * 4), *dm = tu_dev_copy(mask, n * 4);
        CK(tbert_cuda_gelu_backward(ddh, ddh, da, use_mask ? dm : NULL, n, NULL));
        float *got = malloc(n * 4), *ref = malloc(n * 4);
        to_host(got, ddh, n * 4);
        for (size_t i = 0; i < n; i++) {
            double g = dh[i];
            if (use_mask) g = g * (double)mask[i];
            double x = ra[i];
            double gg = 0.5 * (1.0 + erf(x * M_SQRT1_2)) + x * exp(-0.5 * x * x) / sqrt(2.0 * M_PI);
            ref[i] = (float)(g * gg);
        }
        expect_close(use_mask ? "gelu backward (dropout)" : "gelu backward", got, ref, n, 1e-6, 1e-6, 1e-6);
        free(got), free(ref);
        cudaFree(ddh), cudaFree(dm);
    }
    /* the dropout mask itself: the CPU's draws */
    tbert_rng_seed(&dr, g_seed(state));
    for (size_t i = 0; i < n; i++) {
        float want = tbert_rng_uniform(&dr) >= 0.25 ? 1.0f / 0.75f : 0.0f;
        if (mask[i] != want) fail_msg("dropout mask[%zu] = %g, want %g", i, mask[i], want);
    }
    free(a), free(b1), free(dh), free(mask), free(ga), free(gh), free(ra), free(rh);
    cudaFree(da), cudaFree(dbias), cudaFree(dhout);
}

static void test_bias_grad_and_sum(void **state) {
    tu_rng r = {g_seed(state) ^ 2};
    static const int shapes[][2] = {{1, 1}, {32, 1}, {257, 3}, {1000, 512}};
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
        int rows = shapes[k][0], cols = shapes[k][1];
        size_t n = (size_t)rows * cols;
        float *dy = tu_rand_floats(&r, n, 1.0f), *ref = malloc(cols * 4), *got = malloc(cols * 4);
        float *ddy = tu_dev_copy(dy, n * 4), *ddb = dev_poisoned(cols * 4);
        CK(tbert_cuda_bias_grad(ddb, ddy, rows, cols, NULL));
        to_host(got, ddb, cols * 4);
        for (int c = 0; c < cols; c++) {
            double s = 0;
            for (int i = 0; i < rows; i++) s += dy[(size_t)i * cols + c];
            ref[c] = (float)s;
        }
        expect_close("bias grad (CPU order: exact)", got, ref, cols, 0, 0, 1e-30);
        free(dy), free(ref), free(got);
        cudaFree(ddy), cudaFree(ddb);
    }
    const int n = 1001;
    double *v = malloc(n * sizeof *v), ref = 0, got = -1;
    for (int i = 0; i < n; i++) ref += (v[i] = tu_normal(&r));
    double *dv = tu_dev_copy(v, n * sizeof *v), *ds = dev_poisoned(sizeof(double));
    CK(tbert_cuda_sum_f64(ds, dv, n, NULL));
    to_host(&got, ds, sizeof got);
    if (got != ref) fail_msg("sum_f64: %.17g, CPU order gives %.17g", got, ref);
    free(v);
    cudaFree(dv), cudaFree(ds);
}

static void check_loss(tu_rng *r, int binary, int C, int n, int weighted) {
    tbert_head_config cfg = {.in_dim = 4, .hidden = 0, .n_classes = C, .binary = binary, .positive = binary ? 1 : 0};
    const int O = binary ? 1 : C;
    float *z = tu_rand_floats(r, (size_t)n * O, 4.0f), *b2 = tu_rand_floats(r, O, 1.0f), *cw = tu_rand_floats(r, C, 0.3f);
    for (int c = 0; c < C; c++) cw[c] = 1.0f + fabsf(cw[c]);
    int *y = malloc(n * sizeof *y);
    for (int i = 0; i < n; i++) y[i] = (int)(tu_next(r) % (uint64_t)C);
    z[0] = 40.0f; /* saturated logits */
    if (n > 1) z[O] = -40.0f;
    float *dz_d = tu_dev_copy(z, (size_t)n * O * 4), *db2 = tu_dev_copy(b2, O * 4), *dcw = tu_dev_copy(cw, C * 4);
    float *ddz = dev_poisoned((size_t)n * O * 4);
    int32_t *dy = tu_dev_copy(y, n * 4);
    double *drow = dev_poisoned(n * sizeof(double)), *dsum = dev_poisoned(sizeof(double));
    CK(tbert_cuda_head_logits_loss(dz_d, ddz, drow, db2, dy, weighted ? dcw : NULL, binary, cfg.positive, n, O, C, NULL));
    CK(tbert_cuda_sum_f64(dsum, drow, n, NULL));
    float *gz = malloc((size_t)n * O * 4), *gdz = malloc((size_t)n * O * 4), *rdz = malloc((size_t)n * O * 4);
    double gsum;
    to_host(gz, dz_d, (size_t)n * O * 4);
    to_host(gdz, ddz, (size_t)n * O * 4);
    to_host(&gsum, dsum, sizeof gsum);
    float *rz = malloc((size_t)n * O * 4);
    for (int i = 0; i < n; i++)
        for (int k = 0; k < O; k++) rz[(size_t)i * O + k] = z[(size_t)i * O + k] + b2[k];
    expect_close("logits (z + b2)", gz, rz, (size_t)n * O, 0, 0, 1e-30);
    double rloss;
    tbert_error err;
    if (tbert_head_loss(&cfg, n, rz, y, weighted ? cw : NULL, &rloss, rdz, &err)) fail_msg("cpu loss: %s", err.msg);
    char what[96];
    snprintf(what, sizeof what, "loss gradient binary=%d C=%d n=%d weighted=%d", binary, C, n, weighted);
    expect_close(what, gdz, rdz, (size_t)n * O, 1e-7, 1e-6, 1e-6);
    double gl = gsum / n;
    if (!(fabs(gl - rloss) <= 1e-12 + 1e-9 * fabs(rloss))) fail_msg("%s: loss %.17g vs CPU %.17g", what, gl, rloss);
    free(z), free(b2), free(cw), free(y), free(gz), free(gdz), free(rdz), free(rz);
    cudaFree(dz_d), cudaFree(db2), cudaFree(dcw), cudaFree(ddz), cudaFree(dy), cudaFree(drow), cudaFree(dsum);
}

static void test_logits_loss(void **state) {
    tu_rng r = {g_seed(state) ^ 3};
    for (int weighted = 0; weighted < 2; weighted++) {
        check_loss(&r, 1, 2, 1, weighted);
        check_loss(&r, 1, 2, 257, weighted);
        check_loss(&r, 0, 2, 33, weighted);
        check_loss(&r, 0, 5, 1000, weighted);
    }
}

static void test_adamw_bitexact(void **state) {
    tu_rng r = {g_seed(state) ^ 4};
    const size_t n = 4099;
    for (int wd = 0; wd < 2; wd++) {
        tbert_adam a;
        tbert_error err;
        if (tbert_adam_init(&a, n, &err)) fail_msg("adam init: %s", err.msg);
        a.lr = 3e-4;
        a.weight_decay = wd ? 0.01 : 0.0;
        float *p = tu_rand_floats(&r, n, 1.0f);
        float *dp = tu_dev_copy(p, n * 4), *dm = tu_dev_copy(a.m, n * 4), *dv = tu_dev_copy(a.v, n * 4);
        float *got = malloc(n * 4);
        for (int step = 0; step < 5; step++) {
            float *g = tu_rand_floats(&r, n, step == 2 ? 1e-6f : 1.0f);
            float *dg = tu_dev_copy(g, n * 4);
            tbert_adam_step(&a, p, g);
            double bc1 = 1.0 - pow(a.beta1, (double)a.step), bc2 = 1.0 - pow(a.beta2, (double)a.step);
            float decay = a.weight_decay != 0.0 ? (float)(1.0 - a.lr * a.weight_decay) : 1.0f;
            CK(tbert_cuda_adamw(dp, dm, dv, dg, n, (float)(1.0 - a.beta1), (float)a.beta2, (float)(1.0 - a.beta2),
                                (float)a.eps, decay, (float)(a.lr / bc1), (float)sqrt(bc2), NULL));
            to_host(got, dp, n * 4);
            if (memcmp(got, p, n * 4)) {
                for (size_t i = 0; i < n; i++)
                    if (got[i] != p[i]) fail_msg("adamw wd=%d step %d: p[%zu] = %.9g, CPU %.9g", wd, step + 1, i, got[i], p[i]);
            }
            to_host(got, dm, n * 4);
            if (memcmp(got, a.m, n * 4)) fail_msg("adamw wd=%d step %d: first moment differs from the CPU", wd, step + 1);
            to_host(got, dv, n * 4);
            if (memcmp(got, a.v, n * 4)) fail_msg("adamw wd=%d step %d: second moment differs from the CPU", wd, step + 1);
            free(g);
            cudaFree(dg);
        }
        free(p), free(got);
        cudaFree(dp), cudaFree(dm), cudaFree(dv);
        tbert_adam_free(&a);
    }
}

/* ---- whole training steps ---- */

static void check_train(tu_rng *r, uint64_t seed, int D, int Hd, int C, int binary, float dropout, int weighted, int n) {
    tbert_head_config cfg = {.in_dim = D, .hidden = Hd, .n_classes = C, .binary = binary, .positive = binary ? 1 : 0,
                             .dropout = dropout};
    tbert_error err = {0};
    tbert_head *h = NULL, *h2 = NULL;
    if (tbert_head_create(&cfg, &h, &err) || tbert_head_create(&cfg, &h2, &err)) fail_msg("head create: %s", err.msg);
    tbert_head_init(h, seed);
    const int O = tbert_head_out_dim(&cfg), K = Hd > 0 ? Hd : D;
    float *x = tu_rand_floats(r, (size_t)n * D, 1.0f), *cw = malloc(C * sizeof *cw);
    int *y = malloc(n * sizeof *y);
    for (int i = 0; i < n; i++) y[i] = (int)(tu_next(r) % (uint64_t)C);
    for (int c = 0; c < C; c++) cw[c] = 0.5f + (float)c;
    char what[160];
    snprintf(what, sizeof what, "train step D=%d hidden=%d C=%d binary=%d dropout=%.2f weighted=%d n=%d", D, Hd, C,
             binary, dropout, weighted, n);

    /* CPU: forward (dropout drawn from rng A), loss, backward */
    tbert_head_ws *ws = NULL;
    if (tbert_head_ws_create(&cfg, n, &ws, &err)) fail_msg("ws: %s", err.msg);
    tbert_rng ra, rb;
    tbert_rng_seed(&ra, seed ^ 77);
    tbert_rng_seed(&rb, seed ^ 77);
    float *z = malloc((size_t)n * O * 4), *dz = malloc((size_t)n * O * 4), *grad = malloc(h->n_params * 4);
    if (tbert_head_forward(h, ws, n, x, dropout > 0, dropout > 0 ? &ra : NULL, z, &err)) fail_msg("cpu forward: %s", err.msg);
    double cpu_loss;
    if (tbert_head_loss(&cfg, n, z, y, weighted ? cw : NULL, &cpu_loss, dz, &err)) fail_msg("cpu loss: %s", err.msg);
    if (tbert_head_backward(h, ws, n, x, dz, grad, &err)) fail_msg("cpu backward: %s", err.msg);

    /* CUDA: the same step, the mask drawn from an identically seeded rng */
    float *mask = NULL;
    if (dropout > 0) {
        mask = malloc((size_t)n * K * sizeof *mask);
        tbert_cuda_head_dropout_mask(dropout, (size_t)n * K, &rb, mask);
    }
    tbert_adam a;
    if (tbert_adam_init(&a, h->n_params, &err)) fail_msg("adam: %s", err.msg);
    a.lr = 1e-3;
    a.weight_decay = 0.01;
    tbert_cuda_head *g = NULL;
    if (tbert_cuda_head_create(h, &a, n, 0, &g, &err)) fail_msg("cuda head create: %s", err.msg);
    /* eval forward first (no dropout) against the CPU's eval forward */
    float *zc = malloc((size_t)n * O * 4), *zg = malloc((size_t)n * O * 4);
    if (tbert_head_forward(h, ws, n, x, false, NULL, zc, &err)) fail_msg("cpu eval forward: %s", err.msg);
    memset(zg, 0xFF, (size_t)n * O * 4);
    if (tbert_cuda_head_forward(g, n, x, zg, &err)) fail_msg("cuda forward: %s", err.msg);
    expect_close("eval logits", zg, zc, (size_t)n * O, 1e-5, 1e-4, 1e-5);

    double gpu_loss = NAN;
    if (tbert_cuda_head_train_step(g, &a, n, x, y, weighted ? cw : NULL, mask, &gpu_loss, &err))
        fail_msg("cuda step: %s", err.msg);
    if (!(fabs(gpu_loss - cpu_loss) <= 1e-6 * fabs(cpu_loss) + 1e-9)) fail_msg("%s: loss %.9g vs CPU %.9g", what, gpu_loss, cpu_loss);
    float *ggrad = malloc(h->n_params * 4);
    memset(ggrad, 0xFF, h->n_params * 4);
    if (tbert_cuda_head_last_grad(g, ggrad, &err)) fail_msg("grad: %s", err.msg);
    expect_close(what, ggrad, grad, h->n_params, 1e-6, 1e-4, 1e-5);

    /* the update: the CPU's AdamW applied to the GPU's own gradient must give the GPU's parameters exactly */
    tbert_adam a2;
    if (tbert_adam_init(&a2, h->n_params, &err)) fail_msg("adam: %s", err.msg);
    a2.lr = a.lr;
    a2.weight_decay = a.weight_decay;
    float *pcpu = malloc(h->n_params * 4);
    memcpy(pcpu, h->params, h->n_params * 4);
    tbert_adam_step(&a2, pcpu, ggrad);
    memcpy(h2->params, h->params, h->n_params * 4);
    tbert_adam a3;
    if (tbert_adam_init(&a3, h->n_params, &err)) fail_msg("adam: %s", err.msg);
    if (tbert_cuda_head_download(g, h2, &a3, &err)) fail_msg("download: %s", err.msg);
    if (memcmp(h2->params, pcpu, h->n_params * 4)) fail_msg("%s: parameters after AdamW differ from the CPU's update", what);
    if (memcmp(a3.m, a2.m, h->n_params * 4) || memcmp(a3.v, a2.v, h->n_params * 4))
        fail_msg("%s: Adam moments differ from the CPU's", what);
    if (a.step != 1) fail_msg("%s: adam step %lld, want 1", what, (long long)a.step);

    tbert_cuda_head_free(g);
    tbert_adam_free(&a), tbert_adam_free(&a2), tbert_adam_free(&a3);
    tbert_head_ws_free(ws);
    tbert_head_free(h), tbert_head_free(h2);
    free(x), free(cw), free(y), free(z), free(dz), free(grad), free(mask), free(zc), free(zg), free(ggrad), free(pcpu);
}

static void test_train_steps(void **state) {
    uint64_t seed = g_seed(state);
    tu_rng r = {seed ^ 5};
    check_train(&r, seed, 384, 0, 2, 1, 0.0f, 0, 32);
    check_train(&r, seed, 384, 0, 2, 1, 0.1f, 1, 33);
    check_train(&r, seed, 384, 64, 2, 1, 0.0f, 0, 32);
    check_train(&r, seed, 384, 64, 2, 1, 0.2f, 1, 257);
    check_train(&r, seed, 128, 32, 3, 0, 0.0f, 1, 17);
    check_train(&r, seed, 100, 0, 4, 0, 0.3f, 0, 1);
    check_train(&r, seed, 16384, 16, 2, 0, 0.0f, 0, 8); /* a flatten-sized input */
}

/* A head used at once after tbert_cuda_head_create: the parameters and Adam moments it uploads must be on the
 * device before the first kernel reads them. (head_create used to upload them with cudaMemcpy / cudaMemset on the
 * legacy stream, which nothing orders with the head's non-blocking stream: the emulated device, which runs
 * unordered work in the worst order, gave NaN losses and, on download, the initial parameters.) Both paths: fresh
 * moments (a == NULL: zeroed on the device) and resumed ones (uploaded). Tolerances as check_train. */
static void check_first_step(tu_rng *r, uint64_t seed, bool resume) {
    tbert_head_config cfg = {.in_dim = 24, .hidden = 8, .n_classes = 2, .binary = true, .positive = 1};
    tbert_error err = {0};
    tbert_head *h = NULL, *h2 = NULL;
    if (tbert_head_create(&cfg, &h, &err) || tbert_head_create(&cfg, &h2, &err)) fail_msg("head create: %s", err.msg);
    tbert_head_init(h, seed ^ 3);
    const int n = 5;
    float *x = tu_rand_floats(r, (size_t)n * cfg.in_dim, 1.0f);
    int y[5] = {0, 1, 1, 0, 1};
    tbert_adam a, a2, a3;
    if (tbert_adam_init(&a, h->n_params, &err) || tbert_adam_init(&a2, h->n_params, &err) ||
        tbert_adam_init(&a3, h->n_params, &err))
        fail_msg("adam: %s", err.msg);
    a.lr = a2.lr = 1e-3;
    if (resume) { /* moments and step of an earlier run */
        for (size_t i = 0; i < h->n_params; i++) a.m[i] = 0.01f * tu_normal(r), a.v[i] = 1e-3f * (1.0f + (float)tu_uniform(r));
        a.step = 3;
    }
    memcpy(a2.m, a.m, h->n_params * 4), memcpy(a2.v, a.v, h->n_params * 4);
    a2.step = a.step;
    tbert_cuda_head *g = NULL;
    if (tbert_cuda_head_create(h, resume ? &a : NULL, n, 0, &g, &err)) fail_msg("cuda head create: %s", err.msg);
    double gpu_loss = NAN, cpu_loss;
    if (tbert_cuda_head_train_step(g, &a, n, x, y, NULL, NULL, &gpu_loss, &err)) fail_msg("cuda step: %s", err.msg);

    tbert_head_ws *ws = NULL;
    if (tbert_head_ws_create(&cfg, n, &ws, &err)) fail_msg("ws: %s", err.msg);
    float z[5 * 1], dz[5 * 1], *grad = malloc(h->n_params * 4), *ggrad = malloc(h->n_params * 4);
    if (tbert_head_forward(h, ws, n, x, false, NULL, z, &err) || tbert_head_loss(&cfg, n, z, y, NULL, &cpu_loss, dz, &err) ||
        tbert_head_backward(h, ws, n, x, dz, grad, &err))
        fail_msg("cpu step: %s", err.msg);
    if (!(fabs(gpu_loss - cpu_loss) <= 1e-6 * fabs(cpu_loss) + 1e-9))
        fail_msg("first step (resume=%d): loss %.9g vs CPU %.9g", resume, gpu_loss, cpu_loss);
    if (tbert_cuda_head_last_grad(g, ggrad, &err)) fail_msg("grad: %s", err.msg);
    expect_close("first step gradient", ggrad, grad, h->n_params, 1e-6, 1e-4, 1e-5);
    float *pcpu = malloc(h->n_params * 4);
    memcpy(pcpu, h->params, h->n_params * 4);
    tbert_adam_step(&a2, pcpu, ggrad);
    if (tbert_cuda_head_download(g, h2, &a3, &err)) fail_msg("download: %s", err.msg);
    if (memcmp(h2->params, pcpu, h->n_params * 4)) fail_msg("first step (resume=%d): parameters differ from the CPU's update", resume);
    if (memcmp(a3.m, a2.m, h->n_params * 4) || memcmp(a3.v, a2.v, h->n_params * 4))
        fail_msg("first step (resume=%d): Adam moments differ from the CPU's", resume);
    tbert_cuda_head_free(g);
    tbert_adam_free(&a), tbert_adam_free(&a2), tbert_adam_free(&a3);
    tbert_head_ws_free(ws);
    tbert_head_free(h), tbert_head_free(h2);
    free(x), free(grad), free(ggrad), free(pcpu);
}

static void test_first_step_after_create(void **state) {
    uint64_t seed = g_seed(state);
    tu_rng r = {seed ^ 11};
    check_first_step(&r, seed, false);
    check_first_step(&r, seed, true);
}

static void test_errors(void **state) {
    tbert_head_config cfg = {.in_dim = 8, .hidden = 0, .n_classes = 2, .binary = true, .positive = 1};
    tbert_error err = {0};
    tbert_head *h = NULL;
    if (tbert_head_create(&cfg, &h, &err)) fail_msg("head: %s", err.msg);
    tbert_head_init(h, g_seed(state));
    tbert_cuda_head *g = NULL;
    assert_int_equal(tbert_cuda_head_create(h, NULL, 4, 1000, &g, &err), TBERT_E_NODEV);
    assert_int_equal(tbert_cuda_head_create(h, NULL, 4, 0, &g, &err), TBERT_OK);
    tbert_adam a;
    if (tbert_adam_init(&a, h->n_params, &err)) fail_msg("adam: %s", err.msg);
    float x[5 * 8] = {0};
    int bad_y[2] = {0, 2}, y[5] = {0, 1, 0, 1, 0};
    double loss;
    assert_int_equal(tbert_cuda_head_train_step(g, &a, 2, x, bad_y, NULL, NULL, &loss, &err), TBERT_E_ARG);
    assert_int_equal(tbert_cuda_head_train_step(g, &a, 5, x, y, NULL, NULL, &loss, &err), TBERT_E_ARG); /* > max_n */
    assert_int_equal(a.step, 0);
    tbert_cuda_head_free(g);
    tbert_adam_free(&a);
    tbert_head_free(h);
}
#endif

int main(void) {
#if !TBERT_HAVE_CUDA
    /* a CPU-only build has no plugin: opening it must refuse cleanly (the CUDA head is reached only through it) */
    tbert_cuda_plugin *p = (tbert_cuda_plugin *)1;
    tbert_error err = {0};
    if (tbert_cuda_plugin_open(&p, &err) != TBERT_E_NODEV || p != NULL || !strstr(err.msg, "without CUDA")) {
        fprintf(stderr, "test_cuda_head: the CPU-only build did not refuse the CUDA plugin with TBERT_E_NODEV: %s\n", err.msg);
        return 1;
    }
    tu_require_cuda_device("test_cuda_head");
    return 1; /* not reached */
#else
    tu_require_cuda_device("test_cuda_head");
    static uint64_t seed;
    seed = tu_seed_from_env("test_cuda_head");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_prestate(test_gelu_kernels, &seed),   cmocka_unit_test_prestate(test_bias_grad_and_sum, &seed),
        cmocka_unit_test_prestate(test_logits_loss, &seed),    cmocka_unit_test_prestate(test_adamw_bitexact, &seed),
        cmocka_unit_test_prestate(test_train_steps, &seed),    cmocka_unit_test_prestate(test_first_step_after_create, &seed),
        cmocka_unit_test_prestate(test_errors, &seed),
    };
    return cmocka_run_group_tests_name("cuda head", tests, NULL, NULL);
#endif
}
