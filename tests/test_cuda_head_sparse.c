/* The CUDA head on sparse rows (tbert_cuda_head_forward_rows / _train_step_rows, kernels/head.cu csr_linear and
 * csc_scatter_dw) against the CPU rows head (tbert_head_*_rows), the CPU dense head on the densified batch, and
 * central finite differences of a float64 loss. Exit 77 without CUDA or without a device. Fresh random inputs
 * each run (seed printed; TBERT_TEST_SEED replays).
 *   - the two sparse kernels alone against plain CPU loops in src/head.c's order: bit for bit;
 *   - eval forward (chunked past max_n), one training step (loss, gradient, training logits, AdamW) for
 *     linear/MLP x binary/multi-class, dense block or none, with and without dropout (a linear head's dropout
 *     through tbert_cuda_head_dropout_rows: the same draws as the CPU, the same RNG state after);
 *   - the gradient against float64 central differences (step 1e-5);
 *   - one head fed batches whose nnz differ a lot (0 entries, rows with 0 entries, ~20000 entries: the device
 *     workspace grows), each step against the CPU, columns of an earlier batch reading 0 in a later one;
 *   - several full steps + AdamW against the CPU's steps;
 *   - bad input refused before anything runs.
 * Tolerances: the kernels alone: bit for bit (same operations, same order). Through a cuBLAS product (CUDA fp32
 * vs CPU, CONVENTIONS): ‖d‖/‖ref‖ < 1e-5 and |d| <= 1e-4 per element (logits, gradients, parameters after the
 * steps). AdamW on the GPU's own gradient: bit for bit. Gradient vs finite differences: |d| <= 2e-4 + 2e-3 |ref|
 * (as tests/test_head_sparse.c). Loss: |d| <= 1e-9 + 1e-6 |ref|. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "head_cuda.h"
#include "tbert/cuda_plugin.h"
#include "tbert/head.h"
#include "tbert/rows.h"

#if TBERT_HAVE_CUDA
#include <cuda_runtime.h>

#include "tbert/cuda_kernels.h"
#include "head_ref.h"
#include "testutil_cuda.h"

static uint64_t g_seed(void **state) { return *(uint64_t *)*state; }

/* CUDA fp32 vs CPU (CONVENTIONS): every |d| <= 1e-4 and ‖d‖/‖ref‖ < 1e-5 */
static void expect_fp32(const char *what, const float *got, const float *ref, size_t n) {
    size_t bad = tu_compare(what, got, ref, n, 1e-4, 0);
    double r = tu_norm_ratio(got, ref, n);
    if (bad || !(r < 1e-5)) fail_msg("%s: %zu outside |d| <= 1e-4, norm ratio %.3g (< 1e-5)", what, bad, r);
}
static void expect_bits(const char *what, const void *got, const void *ref, size_t bytes) {
    tu_dump(what, got, bytes);
    if (memcmp(got, ref, bytes)) {
        const float *g = got, *r = ref;
        for (size_t i = 0; i < bytes / 4; i++)
            if (memcmp(&g[i], &r[i], 4)) fail_msg("%s: element %zu = %.9g, CPU %.9g (want the same bits)", what, i, g[i], r[i]);
    }
}

/* A batch of n rows: dense block N(0,1) of dd columns, and row i's sparse columns each present with
 * probability fill[i % nfill] (values 0.1 .. 1.1, negative half the time). */
/* n rows of dd dense + sd sparse columns (two blocks); row i fills each sparse column with probability
 * fill[i % nfill], except the last `never` columns, which no row has (absent columns whatever the seed) */
static void make_rows(tbert_rows *x, tu_rng *r, int n, size_t dd, size_t sd, const double *fill, int nfill, size_t never) {
    size_t w[2] = {sd / 3, sd - sd / 3};
    assert_int_equal(tbert_rows_init(x, dd, 2, w, NULL), TBERT_OK);
    float *dense = malloc((dd + 1) * sizeof *dense), *val = malloc((sd + 1) * sizeof *val);
    int32_t *idx = malloc((sd + 1) * sizeof *idx);
    assert_true(dense && val && idx);
    for (int i = 0; i < n; i++) {
        for (size_t j = 0; j < dd; j++) dense[j] = tu_normal(r);
        size_t k = 0;
        double f = fill[i % nfill];
        for (size_t j = 0; j < sd; j++)
            if (j + never < sd && tu_uniform(r) < f) {
                idx[k] = (int32_t)j;
                val[k++] = (float)((0.1 + tu_uniform(r)) * (tu_next(r) & 1 ? -1 : 1));
            }
        assert_int_equal(tbert_rows_append(x, dense, k, idx, val, NULL), TBERT_OK);
    }
    free(dense), free(val), free(idx);
}
static float *densify(const tbert_rows *x) {
    size_t D = tbert_rows_dim(x);
    float *d = calloc((size_t)x->n * D + 1, sizeof *d);
    assert_non_null(d);
    tbert_rows_densify(x, 0, x->n, d, D);
    return d;
}
static tbert_head *make_head(int D, int Hd, int C, bool binary, float dropout, uint64_t seed) {
    tbert_head_config cfg = {.in_dim = D, .hidden = Hd, .n_classes = C, .binary = binary, .positive = binary ? 1 : 0,
                             .dropout = dropout};
    tbert_head *h = NULL;
    tbert_error err = {0};
    if (tbert_head_create(&cfg, &h, &err)) fail_msg("head create: %s", err.msg);
    tbert_head_init(h, seed);
    for (size_t i = 0; i < h->n_params; i++) h->params[i] *= 3.0f; /* logits away from 0 */
    return h;
}
/* ---- the two kernels alone ---- */

static void test_sparse_kernels(void **state) {
    tu_rng r = {g_seed(state) ^ 1};
    const int n = 37, out = 5;
    const size_t sd = 301, ldw = 311; /* W + 10 = the sparse columns of a row of 311 */
    const double fill[] = {0.0, 0.05, 0.3, 0.0, 0.9};
    tbert_rows x;
    make_rows(&x, &r, n, 0, sd, fill, 5, 0);
    const size_t nnz = tbert_rows_nnz(&x);
    float *W = malloc(out * ldw * sizeof *W), *y0 = malloc((size_t)n * out * sizeof *y0);
    for (size_t i = 0; i < out * ldw; i++) W[i] = tu_normal(&r);
    for (int i = 0; i < n * out; i++) y0[i] = tu_normal(&r);
    int32_t *ip = malloc((n + 1) * sizeof *ip);
    for (int i = 0; i <= n; i++) ip[i] = (int32_t)x.indptr[i];
    /* forward, both modes: y = (float) sum in double in entry order (accumulate: y0 + that, rounded once) */
    float *ref = malloc((size_t)n * out * sizeof *ref), *got = malloc((size_t)n * out * sizeof *got);
    int32_t *dip = tu_dev_copy(ip, (n + 1) * 4), *didx = tu_dev_copy(x.indices, nnz * 4 + 4);
    float *dval = tu_dev_copy(x.values, nnz * 4 + 4), *dW = tu_dev_copy(W, out * ldw * 4);
    for (int acc = 0; acc < 2; acc++) {
        float *dy = tu_dev_copy(y0, (size_t)n * out * 4);
        CK(tbert_cuda_csr_linear(dy, dip, didx, dval, dW + 10, ldw, n, out, acc, NULL));
        CK(cudaDeviceSynchronize());
        CK(cudaMemcpy(got, dy, (size_t)n * out * 4, cudaMemcpyDeviceToHost));
        for (int i = 0; i < n; i++)
            for (int o = 0; o < out; o++) {
                double s = 0;
                for (int64_t e = x.indptr[i]; e < x.indptr[i + 1]; e++)
                    s += (double)x.values[e] * W[o * ldw + 10 + x.indices[e]];
                ref[i * out + o] = acc ? y0[i * out + o] + (float)s : (float)s;
            }
        expect_bits(acc ? "csr_linear accumulate" : "csr_linear write", got, ref, (size_t)n * out * 4);
        cudaFree(dy);
    }
    /* scatter: the test's own CSC (columns ascending, rows ascending), dW[o, col] = float sum in row order */
    float *dyv = malloc((size_t)n * out * sizeof *dyv);
    for (int i = 0; i < n * out; i++) dyv[i] = tu_normal(&r);
    int32_t *colptr = calloc(sd + 2, 4), *cols = malloc((sd + 1) * 4), *rows = malloc((nnz + 1) * 4);
    float *vals = malloc((nnz + 1) * 4);
    int U = 0;
    size_t p = 0;
    for (size_t j = 0; j < sd; j++) {
        size_t p0 = p;
        for (int i = 0; i < n; i++)
            for (int64_t e = x.indptr[i]; e < x.indptr[i + 1]; e++)
                if ((size_t)x.indices[e] == j) rows[p] = i, vals[p++] = x.values[e];
        if (p > p0) cols[U] = (int32_t)j, colptr[++U] = (int32_t)p;
    }
    assert_int_equal(p, nnz);
    float *gW = malloc(out * ldw * 4), *rW = malloc(out * ldw * 4);
    for (size_t i = 0; i < out * ldw; i++) rW[i] = -7.0f; /* columns not present stay as they were */
    for (int o = 0; o < out; o++) /* src/head.c rows_linear_backward_params: w[idx] += g * v, row order */
        for (int i = 0; i < n; i++)
            for (int64_t e = x.indptr[i]; e < x.indptr[i + 1]; e++) {
                float *w = &rW[o * ldw + 10 + x.indices[e]];
                if (*w == -7.0f) *w = 0.0f;
                *w += dyv[i * out + o] * x.values[e];
            }
    float *fill7 = malloc(out * ldw * 4);
    for (size_t i = 0; i < out * ldw; i++) fill7[i] = -7.0f;
    float *ddW = tu_dev_copy(fill7, out * ldw * 4), *ddy = tu_dev_copy(dyv, (size_t)n * out * 4);
    int32_t *dcp = tu_dev_copy(colptr, (U + 1) * 4), *dcols = tu_dev_copy(cols, U * 4 + 4), *drows = tu_dev_copy(rows, nnz * 4 + 4);
    float *dvals = tu_dev_copy(vals, nnz * 4 + 4);
    CK(tbert_cuda_csc_scatter_dw(ddW + 10, ldw, dcp, dcols, drows, dvals, ddy, U, out, NULL));
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(gW, ddW, out * ldw * 4, cudaMemcpyDeviceToHost));
    expect_bits("csc_scatter_dw", gW, rW, out * ldw * 4);
    if (!(U > 10 && nnz > 100)) fail_msg("sparse kernels: the batch has %d columns, %zu entries: too few to test", U, nnz);
    free(W), free(y0), free(ip), free(ref), free(got), free(dyv), free(colptr), free(cols), free(rows), free(vals);
    free(gW), free(rW), free(fill7);
    cudaFree(dip), cudaFree(didx), cudaFree(dval), cudaFree(dW), cudaFree(ddW), cudaFree(ddy), cudaFree(dcp);
    cudaFree(dcols), cudaFree(drows), cudaFree(dvals);
    tbert_rows_free(&x);
}

/* ---- eval forward ---- */

static void check_forward(tu_rng *r, uint64_t seed, size_t dd, size_t sd, int Hd, int C, bool binary, int n, int max_n) {
    const double fill[] = {0.02, 0.0, 0.2, 0.005};
    tbert_rows x;
    make_rows(&x, r, n, dd, sd, fill, 4, 0);
    const int D = (int)(dd + sd);
    tbert_head *h = make_head(D, Hd, C, binary, 0.0f, seed);
    const int O = tbert_head_out_dim(&h->cfg);
    tbert_error err = {0};
    tbert_head_ws *ws = NULL;
    if (tbert_head_ws_create(&h->cfg, n, &ws, &err)) fail_msg("ws: %s", err.msg);
    float *zr = malloc((size_t)n * O * 4), *zd = malloc((size_t)n * O * 4), *zg = malloc((size_t)n * O * 4);
    float *xd = densify(&x);
    if (tbert_head_forward_rows(h, ws, &x, false, NULL, zr, &err)) fail_msg("cpu rows forward: %s", err.msg);
    if (tbert_head_forward(h, ws, n, xd, false, NULL, zd, &err)) fail_msg("cpu dense forward: %s", err.msg);
    tbert_cuda_head *g = NULL;
    if (tbert_cuda_head_create(h, NULL, max_n, 0, &g, &err)) fail_msg("cuda head create: %s", err.msg);
    memset(zg, 0xFF, (size_t)n * O * 4);
    if (tbert_cuda_head_forward_rows(g, &x, zg, &err)) fail_msg("cuda rows forward: %s", err.msg);
    char what[160];
    snprintf(what, sizeof what, "eval logits vs CPU rows dd=%zu sd=%zu hidden=%d C=%d n=%d max_n=%d", dd, sd, Hd, C, n, max_n);
    expect_fp32(what, zg, zr, (size_t)n * O);
    snprintf(what, sizeof what, "eval logits vs CPU dense dd=%zu sd=%zu hidden=%d C=%d n=%d max_n=%d", dd, sd, Hd, C, n, max_n);
    expect_fp32(what, zg, zd, (size_t)n * O);
    tbert_cuda_head_free(g);
    tbert_head_ws_free(ws);
    tbert_head_free(h);
    tbert_rows_free(&x);
    free(zr), free(zd), free(zg), free(xd);
}

static void test_forward_rows(void **state) {
    uint64_t seed = g_seed(state);
    tu_rng r = {seed ^ 2};
    check_forward(&r, seed, 0, 700, 0, 2, true, 9, 9);
    check_forward(&r, seed, 24, 700, 0, 3, false, 40, 16); /* 3 chunks */
    check_forward(&r, seed, 0, 500, 16, 2, true, 21, 8);
    check_forward(&r, seed, 12, 500, 16, 4, false, 13, 13);
}

/* ---- one training step ---- */

typedef struct {
    float *z, *grad, *params; /* training logits, gradient, parameters after one AdamW step */
    double loss;
    tbert_rng rng; /* after the step's draws */
} cpu_step;

/* The CPU's step on rows (rows = true) or on the densified batch: forward (train), loss, backward, AdamW. */
static void cpu_train_step(const tbert_head *h0, const tbert_rows *x, const int *y, const float *cw, uint64_t rseed,
                           bool rows, const tbert_adam *a0, cpu_step *out) {
    tbert_error err = {0};
    const int n = x->n, O = tbert_head_out_dim(&h0->cfg);
    tbert_head *h = NULL;
    if (tbert_head_create(&h0->cfg, &h, &err)) fail_msg("head: %s", err.msg);
    memcpy(h->params, h0->params, h->n_params * 4);
    tbert_head_ws *ws = NULL;
    if (tbert_head_ws_create(&h->cfg, n, &ws, &err)) fail_msg("ws: %s", err.msg);
    tbert_rng_seed(&out->rng, rseed);
    out->z = malloc((size_t)n * O * 4);
    out->grad = malloc(h->n_params * 4);
    float *dz = malloc((size_t)n * O * 4), *xd = rows ? NULL : densify(x);
    bool train = h->cfg.dropout > 0;
    tbert_status st = rows ? tbert_head_forward_rows(h, ws, x, train, &out->rng, out->z, &err)
                           : tbert_head_forward(h, ws, n, xd, train, &out->rng, out->z, &err);
    if (!st) st = tbert_head_loss(&h->cfg, n, out->z, y, cw, &out->loss, dz, &err);
    if (!st)
        st = rows ? tbert_head_backward_rows(h, ws, x, dz, out->grad, &err)
                  : tbert_head_backward(h, ws, n, xd, dz, out->grad, &err);
    if (st) fail_msg("cpu step: %s", err.msg);
    tbert_adam a;
    if (tbert_adam_init(&a, h->n_params, &err)) fail_msg("adam: %s", err.msg);
    a.lr = a0->lr, a.weight_decay = a0->weight_decay, a.step = a0->step;
    memcpy(a.m, a0->m, h->n_params * 4), memcpy(a.v, a0->v, h->n_params * 4);
    tbert_adam_step(&a, h->params, out->grad);
    out->params = malloc(h->n_params * 4);
    memcpy(out->params, h->params, h->n_params * 4);
    tbert_adam_free(&a);
    tbert_head_ws_free(ws);
    tbert_head_free(h);
    free(dz), free(xd);
}
static void cpu_step_free(cpu_step *c) { free(c->z), free(c->grad), free(c->params); }

/* The GPU's step on rows with the same dropout draws (the train.c path), against both CPU steps. Returns the
 * GPU's gradient (caller frees). */
static float *check_step_against_cpu(tbert_cuda_head *g, const tbert_head *h, tbert_adam *a, const tbert_rows *x, const int *y,
                                     const float *cw, uint64_t rseed, const char *tag) {
    tbert_error err = {0};
    const int n = x->n, O = tbert_head_out_dim(&h->cfg), Hd = h->cfg.hidden;
    const float p = h->cfg.dropout;
    cpu_step cr, cd;
    cpu_train_step(h, x, y, cw, rseed, true, a, &cr);
    cpu_train_step(h, x, y, cw, rseed, false, a, &cd);
    /* the GPU, with train.c's dropout */
    tbert_rng rng;
    tbert_rng_seed(&rng, rseed);
    float *mask = NULL;
    tbert_rows drop = {0};
    const tbert_rows *xb = x;
    if (p > 0 && Hd > 0) {
        mask = malloc((size_t)n * Hd * 4);
        tbert_cuda_head_dropout_mask(p, (size_t)n * Hd, &rng, mask);
    } else if (p > 0) {
        assert_int_equal(tbert_rows_init(&drop, x->dense_dim, 1, (size_t[]){x->sparse_dim}, NULL), TBERT_OK);
        if (tbert_cuda_head_dropout_rows(p, x, &rng, &drop, &err)) fail_msg("dropout rows: %s", err.msg);
        if (!(tbert_rows_nnz(&drop) < tbert_rows_nnz(x) || tbert_rows_nnz(x) == 0))
            fail_msg("%s: dropout p=%g dropped no sparse entry", tag, (double)p);
        xb = &drop;
    }
    if (memcmp(&rng, &cr.rng, sizeof rng)) fail_msg("%s: the GPU path drew other random numbers than the CPU", tag);
    float *zg = malloc((size_t)n * O * 4), *gg = malloc(h->n_params * 4);
    memset(zg, 0xFF, (size_t)n * O * 4);
    memset(gg, 0xFF, h->n_params * 4);
    double gl = NAN;
    int64_t step0 = a->step;
    tbert_adam a0;
    if (tbert_adam_init(&a0, h->n_params, &err)) fail_msg("adam: %s", err.msg);
    a0.lr = a->lr, a0.weight_decay = a->weight_decay, a0.step = a->step;
    memcpy(a0.m, a->m, h->n_params * 4), memcpy(a0.v, a->v, h->n_params * 4);
    if (tbert_cuda_head_train_step_rows(g, a, xb, y, cw, mask, &gl, zg, &err)) fail_msg("%s: cuda step: %s", tag, err.msg);
    if (tbert_cuda_head_last_grad(g, gg, &err)) fail_msg("grad: %s", err.msg);
    char what[200];
    if (!(fabs(gl - cr.loss) <= 1e-9 + 1e-6 * fabs(cr.loss))) fail_msg("%s: loss %.9g vs CPU %.9g", tag, gl, cr.loss);
    snprintf(what, sizeof what, "%s: training logits vs CPU rows", tag);
    expect_fp32(what, zg, cr.z, (size_t)n * O);
    snprintf(what, sizeof what, "%s: gradient vs CPU rows", tag);
    expect_fp32(what, gg, cr.grad, h->n_params);
    snprintf(what, sizeof what, "%s: gradient vs CPU dense", tag);
    expect_fp32(what, gg, cd.grad, h->n_params);
    /* AdamW on the GPU's own gradient: the CPU's update bit for bit; and within tolerance of the CPU's step */
    tbert_head *h2 = NULL;
    if (tbert_head_create(&h->cfg, &h2, &err)) fail_msg("head: %s", err.msg);
    tbert_adam a2;
    if (tbert_adam_init(&a2, h->n_params, &err)) fail_msg("adam: %s", err.msg);
    if (tbert_cuda_head_download(g, h2, &a2, &err)) fail_msg("download: %s", err.msg);
    float *pc = malloc(h->n_params * 4);
    memcpy(pc, h->params, h->n_params * 4);
    tbert_adam_step(&a0, pc, gg);
    snprintf(what, sizeof what, "%s: parameters after AdamW (CPU update of the GPU gradient)", tag);
    expect_bits(what, h2->params, pc, h->n_params * 4);
    if (memcmp(a2.m, a0.m, h->n_params * 4) || memcmp(a2.v, a0.v, h->n_params * 4)) fail_msg("%s: Adam moments differ", tag);
    snprintf(what, sizeof what, "%s: parameters after the step vs the CPU's step", tag);
    expect_fp32(what, h2->params, cr.params, h->n_params);
    if (a->step != step0 + 1) fail_msg("%s: adam step %lld, want %lld", tag, (long long)a->step, (long long)step0 + 1);
    tbert_head_free(h2);
    tbert_adam_free(&a2), tbert_adam_free(&a0);
    tbert_rows_free(&drop);
    cpu_step_free(&cr), cpu_step_free(&cd);
    free(mask), free(zg), free(pc);
    return gg;
}

static void check_train(tu_rng *r, uint64_t seed, size_t dd, size_t sd, int Hd, int C, bool binary, float p, bool weighted,
                        int n) {
    const double fill[] = {0.03, 0.0, 0.1};
    tbert_rows x;
    make_rows(&x, r, n, dd, sd, fill, 3, 0);
    tbert_head *h = make_head((int)(dd + sd), Hd, C, binary, p, seed);
    int *y = malloc(n * sizeof *y);
    for (int i = 0; i < n; i++) y[i] = (int)(tu_next(r) % (uint64_t)C);
    float cw[8];
    for (int c = 0; c < C; c++) cw[c] = 0.5f + (float)c;
    tbert_error err = {0};
    tbert_adam a;
    if (tbert_adam_init(&a, h->n_params, &err)) fail_msg("adam: %s", err.msg);
    a.lr = 1e-3, a.weight_decay = 0.01;
    tbert_cuda_head *g = NULL;
    if (tbert_cuda_head_create(h, &a, n, 0, &g, &err)) fail_msg("cuda head create: %s", err.msg);
    char tag[160];
    snprintf(tag, sizeof tag, "step dd=%zu sd=%zu hidden=%d C=%d binary=%d p=%.2f weighted=%d n=%d", dd, sd, Hd, C, binary,
             (double)p, weighted, n);
    free(check_step_against_cpu(g, h, &a, &x, y, weighted ? cw : NULL, seed ^ 77, tag));
    tbert_cuda_head_free(g);
    tbert_adam_free(&a);
    tbert_head_free(h);
    tbert_rows_free(&x);
    free(y);
}

static void test_train_step_rows(void **state) {
    uint64_t seed = g_seed(state);
    tu_rng r = {seed ^ 3};
    check_train(&r, seed, 0, 600, 0, 2, true, 0.0f, false, 17);
    check_train(&r, seed, 20, 600, 0, 2, true, 0.0f, true, 32);
    check_train(&r, seed, 20, 600, 0, 2, true, 0.2f, false, 9); /* linear head, dropout on the rows */
    check_train(&r, seed, 0, 600, 0, 3, false, 0.3f, true, 7);
    check_train(&r, seed, 0, 400, 16, 2, true, 0.0f, false, 11);
    check_train(&r, seed, 8, 400, 16, 3, false, 0.0f, true, 1);
    check_train(&r, seed, 8, 400, 12, 2, true, 0.25f, false, 13); /* MLP, dropout mask */
}

/* ---- finite differences ---- */

static void check_fd(tu_rng *r, uint64_t seed, size_t dd, size_t sd, int Hd, int C, bool binary) {
    const int n = 7;
    const double fill[] = {0.2, 0.0, 0.4};
    tbert_rows x;
    make_rows(&x, r, n, dd, sd, fill, 3, 2); /* 2 absent columns: their zero gradients are checked too */
    tbert_head *h = make_head((int)(dd + sd), Hd, C, binary, 0.0f, seed);
    int y[7];
    for (int i = 0; i < n; i++) y[i] = (int)(tu_next(r) % (uint64_t)C);
    tbert_error err = {0};
    tbert_adam a;
    if (tbert_adam_init(&a, h->n_params, &err)) fail_msg("adam: %s", err.msg);
    tbert_cuda_head *g = NULL;
    if (tbert_cuda_head_create(h, NULL, n, 0, &g, &err)) fail_msg("cuda head create: %s", err.msg);
    double loss;
    if (tbert_cuda_head_train_step_rows(g, &a, &x, y, NULL, NULL, &loss, NULL, &err)) fail_msg("cuda step: %s", err.msg);
    float *gg = malloc(h->n_params * 4), *xd = densify(&x);
    if (tbert_cuda_head_last_grad(g, gg, &err)) fail_msg("grad: %s", err.msg);
    double *P = malloc(sizeof(double) * h->n_params), *num = malloc(sizeof(double) * h->n_params), eps = 1e-5, gn = 0;
    for (size_t i = 0; i < h->n_params; i++) P[i] = h->params[i];
    double lref = tu_head_ref_loss(h, P, xd, n, y);
    if (!(fabs(loss - lref) <= 1e-5 + 1e-5 * fabs(lref))) fail_msg("fd: GPU loss %.9g, float64 %.9g", loss, lref);
    size_t zero_cols = 0;
    for (size_t i = 0; i < h->n_params; i++) {
        double keep = P[i];
        P[i] = keep + eps;
        double lp = tu_head_ref_loss(h, P, xd, n, y);
        P[i] = keep - eps;
        double lm = tu_head_ref_loss(h, P, xd, n, y);
        P[i] = keep;
        num[i] = (lp - lm) / (2 * eps);
        gn += num[i] * num[i];
        zero_cols += num[i] == 0.0 && gg[i] == 0.0f;
    }
    if (!(gn > 1e-6) || zero_cols == 0) fail_msg("fd: gradient norm %g, %zu absent columns: not a useful case", gn, zero_cols);
    char what[128];
    snprintf(what, sizeof what, "fd gradient dd=%zu sd=%zu hidden=%d C=%d binary=%d", dd, sd, Hd, C, binary);
    assert_int_equal(tu_compare_f64(what, gg, num, h->n_params, 2e-4, 2e-3), 0);
    tbert_cuda_head_free(g);
    tbert_adam_free(&a);
    tbert_head_free(h);
    tbert_rows_free(&x);
    free(gg), free(xd), free(P), free(num);
}

static void test_finite_differences(void **state) {
    uint64_t seed = g_seed(state);
    tu_rng r = {seed ^ 4};
    check_fd(&r, seed, 0, 30, 0, 2, true);
    check_fd(&r, seed, 5, 30, 0, 3, false);
    check_fd(&r, seed, 4, 25, 6, 2, true);
    check_fd(&r, seed, 0, 25, 5, 3, false);
}

/* ---- one head, batches of very different nnz ---- */

static void check_varied(tu_rng *r, uint64_t seed, size_t dd, int Hd) {
    const size_t sd = 3000;
    const int max_n = 8;
    tbert_head *h = make_head((int)(dd + sd), Hd, 2, true, 0.0f, seed);
    tbert_error err = {0};
    tbert_adam a;
    if (tbert_adam_init(&a, h->n_params, &err)) fail_msg("adam: %s", err.msg);
    a.lr = 1e-2;
    tbert_cuda_head *g = NULL;
    if (tbert_cuda_head_create(h, &a, max_n, 0, &g, &err)) fail_msg("cuda head create: %s", err.msg);
    /* fills: heavy (~20000 entries), empty, light, one row, heavy again after a small one */
    static const double fills[][2] = {{0.85, 0.8}, {0.0, 0.0}, {0.001, 0.0}, {0.01, 0.0}, {0.9, 0.0}, {0.0005, 0.002}};
    static const int ns[] = {8, 5, 8, 1, 8, 7};
    float *prev = NULL;
    for (size_t b = 0; b < sizeof ns / sizeof *ns; b++) {
        tbert_rows x;
        make_rows(&x, r, ns[b], dd, sd, fills[b], 2, 0);
        int y[8];
        for (int i = 0; i < ns[b]; i++) y[i] = (int)(tu_next(r) & 1);
        char tag[128];
        snprintf(tag, sizeof tag, "varied nnz: batch=%zu n=%d nnz=%zu dd=%zu hidden=%d", b, ns[b], tbert_rows_nnz(&x), dd, Hd);
        float *gg = check_step_against_cpu(g, h, &a, &x, y, NULL, seed ^ b, tag);
        /* columns the earlier batch touched and this one does not: exactly 0 (the CPU's value) */
        if (prev) {
            const int rows_w = Hd ? Hd : 1;
            size_t w_off = h->tensors[0].offset, touched = 0;
            bool *present = calloc(sd, 1);
            for (size_t e = 0; e < tbert_rows_nnz(&x); e++) present[x.indices[e]] = true;
            for (int o = 0; o < rows_w; o++)
                for (size_t j = 0; j < sd; j++) {
                    size_t k = w_off + (size_t)o * (dd + sd) + dd + j;
                    if (present[j] || prev[k] == 0.0f) continue;
                    touched++;
                    if (gg[k] != 0.0f)
                        fail_msg("%s: gradient of absent column %zu (output %d) is %g, want 0", tag, j, o, gg[k]);
                }
            free(present);
            if (b == 1 && touched == 0) fail_msg("%s: no column to check", tag);
        }
        /* the CPU follows the GPU's parameters, so the next batch starts both from the same head */
        if (tbert_cuda_head_download(g, h, &a, &err)) fail_msg("download: %s", err.msg);
        free(prev);
        prev = gg;
        tbert_rows_free(&x);
    }
    free(prev);
    tbert_cuda_head_free(g);
    tbert_adam_free(&a);
    tbert_head_free(h);
}

static void test_varied_nnz(void **state) {
    uint64_t seed = g_seed(state);
    tu_rng r = {seed ^ 5};
    check_varied(&r, seed, 0, 0);
    check_varied(&r, seed, 16, 0);
    check_varied(&r, seed, 4, 8);
}

/* ---- several steps + AdamW, CPU and GPU each on their own ---- */

static void test_full_steps(void **state) {
    uint64_t seed = g_seed(state);
    tu_rng r = {seed ^ 6};
    const size_t dd = 12, sd = 900;
    const int n = 16, steps = 5;
    for (int Hd = 0; Hd <= 10; Hd += 10) {
        const float p = 0.1f;
        tbert_head *hc = make_head((int)(dd + sd), Hd, 2, true, p, seed), *hg = NULL;
        tbert_error err = {0};
        if (tbert_head_create(&hc->cfg, &hg, &err)) fail_msg("head: %s", err.msg);
        tbert_adam ac, ag;
        if (tbert_adam_init(&ac, hc->n_params, &err) || tbert_adam_init(&ag, hc->n_params, &err)) fail_msg("adam: %s", err.msg);
        ac.lr = ag.lr = 3e-3;
        ac.weight_decay = ag.weight_decay = 1e-2;
        tbert_cuda_head *g = NULL;
        if (tbert_cuda_head_create(hc, &ag, n, 0, &g, &err)) fail_msg("cuda head create: %s", err.msg);
        tbert_head_ws *ws = NULL;
        if (tbert_head_ws_create(&hc->cfg, n, &ws, &err)) fail_msg("ws: %s", err.msg);
        tbert_rng rc, rg;
        tbert_rng_seed(&rc, seed ^ 99);
        tbert_rng_seed(&rg, seed ^ 99);
        float z[16], dz[16], *grad = malloc(hc->n_params * 4), *mask = malloc((size_t)n * 16 * 4);
        tbert_rows drop = {0};
        assert_int_equal(tbert_rows_init(&drop, dd, 1, (size_t[]){sd}, NULL), TBERT_OK);
        for (int s = 0; s < steps; s++) {
            const double fill[] = {0.05, 0.0, 0.01};
            tbert_rows x;
            make_rows(&x, &r, n, dd, sd, fill, 3, 0);
            int y[16];
            for (int i = 0; i < n; i++) y[i] = (int)(tu_next(&r) & 1);
            double lc, lg;
            if (tbert_head_forward_rows(hc, ws, &x, true, &rc, z, &err) ||
                tbert_head_loss(&hc->cfg, n, z, y, NULL, &lc, dz, &err) ||
                tbert_head_backward_rows(hc, ws, &x, dz, grad, &err))
                fail_msg("cpu step: %s", err.msg);
            tbert_adam_step(&ac, hc->params, grad);
            const tbert_rows *xb = &x;
            const float *m = NULL;
            if (Hd) tbert_cuda_head_dropout_mask(p, (size_t)n * Hd, &rg, mask), m = mask;
            else if (tbert_cuda_head_dropout_rows(p, &x, &rg, &drop, &err)) fail_msg("dropout rows: %s", err.msg);
            else xb = &drop;
            if (tbert_cuda_head_train_step_rows(g, &ag, xb, y, NULL, m, &lg, NULL, &err)) fail_msg("cuda step: %s", err.msg);
            if (!(fabs(lg - lc) <= 1e-9 + 1e-5 * fabs(lc)))
                fail_msg("full steps hidden=%d step %d: loss %.9g vs CPU %.9g", Hd, s + 1, lg, lc);
            tbert_rows_free(&x);
        }
        if (tbert_cuda_head_download(g, hg, &ag, &err)) fail_msg("download: %s", err.msg);
        char what[96];
        snprintf(what, sizeof what, "parameters after %d steps + AdamW, hidden=%d dropout=%.1f", steps, Hd, (double)p);
        expect_fp32(what, hg->params, hc->params, hc->n_params);
        snprintf(what, sizeof what, "Adam first moment after %d steps, hidden=%d", steps, Hd);
        expect_fp32(what, ag.m, ac.m, hc->n_params);
        if (ag.step != steps || memcmp(&rc, &rg, sizeof rc)) fail_msg("full steps hidden=%d: step count or RNG state differs", Hd);
        tbert_rows_free(&drop);
        tbert_cuda_head_free(g);
        tbert_head_ws_free(ws);
        tbert_adam_free(&ac), tbert_adam_free(&ag);
        tbert_head_free(hc), tbert_head_free(hg);
        free(grad), free(mask);
    }
}

/* ---- bad input ---- */

static void test_errors(void **state) {
    tu_rng r = {g_seed(state) ^ 7};
    const double fill[] = {0.1};
    tbert_rows x;
    make_rows(&x, &r, 4, 3, 50, fill, 1, 0);
    tbert_head *h = make_head(53, 0, 2, true, 0.0f, 1), *h2 = make_head(53, 4, 2, true, 0.0f, 1);
    tbert_error err = {0};
    tbert_adam a;
    if (tbert_adam_init(&a, h->n_params, &err)) fail_msg("adam: %s", err.msg);
    tbert_cuda_head *g = NULL, *g2 = NULL;
    if (tbert_cuda_head_create(h, NULL, 4, 0, &g, &err) || tbert_cuda_head_create(h2, NULL, 4, 0, &g2, &err))
        fail_msg("create: %s", err.msg);
    int y[5] = {0, 1, 1, 0, 1};
    double loss;
    float z[8], mask[16] = {1};
    assert_int_equal(tbert_cuda_head_train_step_rows(g, &a, &x, y, NULL, mask, &loss, NULL, &err), TBERT_E_ARG);
    assert_non_null(strstr(err.msg, "linear head"));
    int bad_y[4] = {0, 1, 2, 0};
    assert_int_equal(tbert_cuda_head_train_step_rows(g, &a, &x, bad_y, NULL, NULL, &loss, NULL, &err), TBERT_E_ARG);
    assert_true(tbert_rows_nnz(&x) > 2);
    x.indices[2] = 50; /* outside the sparse width */
    assert_int_equal(tbert_cuda_head_train_step_rows(g, &a, &x, y, NULL, NULL, &loss, NULL, &err), TBERT_E_ARG);
    assert_non_null(strstr(err.msg, "sparse column 50"));
    assert_int_equal(tbert_cuda_head_forward_rows(g, &x, z, &err), TBERT_E_ARG);
    x.indices[2] = 0;
    tbert_rows wide;
    make_rows(&wide, &r, 5, 3, 51, fill, 1, 0);
    assert_int_equal(tbert_cuda_head_forward_rows(g, &wide, z, &err), TBERT_E_ARG); /* 54 features for 53 */
    tbert_rows_free(&wide);
    make_rows(&wide, &r, 5, 3, 50, fill, 1, 0);
    assert_int_equal(tbert_cuda_head_train_step_rows(g, &a, &wide, y, NULL, NULL, &loss, NULL, &err), TBERT_E_ARG); /* > max_n */
    assert_int_equal(a.step, 0);
    tbert_rows_free(&wide);
    tbert_cuda_head_free(g), tbert_cuda_head_free(g2);
    tbert_adam_free(&a);
    tbert_head_free(h), tbert_head_free(h2);
    tbert_rows_free(&x);
}
#endif

int main(void) {
#if !TBERT_HAVE_CUDA
    tu_require_cuda_device("test_cuda_head_sparse");
    return 1; /* not reached */
#else
    tu_require_cuda_device("test_cuda_head_sparse");
    static uint64_t seed;
    seed = tu_seed_from_env("test_cuda_head_sparse");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_prestate(test_sparse_kernels, &seed),     cmocka_unit_test_prestate(test_forward_rows, &seed),
        cmocka_unit_test_prestate(test_train_step_rows, &seed),    cmocka_unit_test_prestate(test_finite_differences, &seed),
        cmocka_unit_test_prestate(test_varied_nnz, &seed),         cmocka_unit_test_prestate(test_full_steps, &seed),
        cmocka_unit_test_prestate(test_errors, &seed),
    };
    return cmocka_run_group_tests_name("cuda head on sparse rows", tests, NULL, NULL);
#endif
}
