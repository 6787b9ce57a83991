/* CUDA backward kernels (kernels/NAME_bwd.cu, colsum.cu) against their CPU twins (src/encoder_backward.c, proven
 * against float64 and finite differences in test_encoder_backward). Exit 77 without CUDA or without a device; in
 * the emulated build (-DTBERT_CUDA=EMU) it runs in every CI run, under ASan + UBSan, in three schedule orders.
 *
 * Every kernel runs on fresh random inputs (seed printed; replay with TBERT_TEST_SEED) into outputs poisoned with
 * NaN (bytes 0xFF) and framed by guard regions that must survive; accumulated gradients (dW, db, dgamma, dbeta,
 * dres) start from random values on both sides, so += is checked as well. Packed batches mix lengths 1..512 with
 * odd lengths and sequences of length 0; the row counts cross several TBERT_BWD_CHUNK chunks.
 * Tolerances (issue 15, Decisions): fp32 norm ratio ||gpu - cpu|| / ||cpu|| < 1e-5 and per element
 * |gpu - cpu| <= 1e-5 max|cpu|; bf16 (inputs rounded to bf16 on both sides, outputs stored in bf16) norm ratio
 * < 3e-2. A reference that is all zeros fails (the check would be vacuous). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tbert/dropout_rng.h"
#include "tbert/encoder_backward.h"

#if TBERT_HAVE_CUDA
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "testutil_cuda.h"

static uint64_t g_seed; /* set once in main, read-only after */

/* ---- comparison ---- */
static void expect_grad(const char *what, const float *got, const float *ref, size_t n, tbert_cuda_dtype dt) {
    double mx = 0, dn = 0, rn = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - ref[i];
        mx = fmax(mx, fabs(ref[i]));
        dn += d * d;
        rn += (double)ref[i] * ref[i];
    }
    const double ratio = rn > 0 ? sqrt(dn / rn) : INFINITY;
    const double lim = dt == TBERT_CUDA_BF16 ? 3e-2 : 1e-5;
    /* per element: fp32 1e-5 max|ref|; bf16 is held by its norm ratio, the element bound only catches gross errors */
    const double atol = dt == TBERT_CUDA_BF16 ? 0.25 * mx : 1e-5 * mx;
    size_t bad = tu_compare(what, got, ref, n, atol, dt == TBERT_CUDA_BF16 ? 0.1 : 0.0);
    if (!(mx > 0))
        fail_msg("%s: the reference is all zeros (vacuous check; seed %llu)", what, (unsigned long long)g_seed);
    if (bad || !(ratio < lim))
        fail_msg("%s: %zu elements outside tolerance, norm ratio %.3g (limit %.0g; seed %llu)", what, bad, ratio, lim,
                 (unsigned long long)g_seed);
}

static tu_gbuf up_f32(const float *host, size_t n) {
    tu_gbuf g = tu_galloc(n * 4);
    CK(cudaMemcpy(g.p, host, n * 4, cudaMemcpyHostToDevice));
    return g;
}
/* Downloads n elements of dt as float (caller frees); checks the guards first. */
static float *down(const tu_gbuf *g, size_t n, tbert_cuda_dtype dt, const char *what) {
    tu_gcheck(g, what);
    return tu_down_act(g, n, dt);
}
/* Rounds n host floats to what a bf16 buffer holds (no-op for fp32). */
static void round_dt(float *x, size_t n, tbert_cuda_dtype dt) {
    if (dt == TBERT_CUDA_BF16)
        for (size_t i = 0; i < n; i++) x[i] = tu_bf2f(tu_f2bf(x[i]));
}

static float *fdup(const float *x, size_t n) {
    float *v = tu_xmalloc(n * sizeof *v + 4);
    assert_non_null(v);
    memcpy(v, x, n * sizeof *v);
    return v;
}
/* A packed batch: B sequences, the first of length maxT, then 1, then 0 (all padding), the rest random odd lengths
 * in [1, maxT] and one more 0 at the end. off [B+1] (caller frees); *N = off[B]. */
static int32_t *make_batch(tu_rng *r, int B, int maxT, int *N) {
    int32_t *off = tu_xmalloc(((size_t)B + 1) * sizeof *off);
    assert_non_null(off);
    off[0] = 0;
    for (int b = 0; b < B; b++) {
        int L = tu_rand_int(r, 1, maxT) | 1;
        if (L > maxT) L = maxT;
        if (b == 0) L = maxT;
        if (b == 1 && B > 3) L = 1;
        if ((b == 2 || b == B - 1) && B > 3) L = 0;
        off[b + 1] = off[b] + L;
    }
    *N = off[B];
    return off;
}

static cublasHandle_t make_handle(void) {
    cublasHandle_t h = NULL;
    int st = (int)cublasCreate(&h);
    if (st) fail_msg("cublasCreate: %s", tbert_cuda_error_string(TBERT_CUDA_CUBLAS_BASE + st));
    return h;
}
static void free_handle(cublasHandle_t h) {
    int st = (int)cublasDestroy(h);
    if (st) fail_msg("cublasDestroy: %s", tbert_cuda_error_string(TBERT_CUDA_CUBLAS_BASE + st));
}

/* ================= kernels ================= */

/* colsum: the deterministic chunked column sums, bit-identical to the CPU's tree (pure float adds, same order) */
static void test_colsum(void **state) {
    (void)state;
    tu_rng r = {g_seed ^ 1};
    const int shapes[][2] = {{1, 7}, {64, 33}, {65, 129}, {1000, 48}};
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
        const int rows = shapes[k][0], cols = shapes[k][1];
        float *a = tu_rand_floats(&r, (size_t)rows * cols, 1.0f), *acc = tu_rand_floats(&r, (size_t)cols, 1.0f);
        float *ref = fdup(acc, (size_t)cols);
        /* CPU: every bias gradient's column sums of dy in TBERT_BWD_CHUNK chunks */
        tbert_bwd_colsum_chunked((size_t)rows, cols, a, (size_t)cols, ref);
        tu_gbuf da = up_f32(a, (size_t)rows * cols), dacc = up_f32(acc, (size_t)cols);
        tu_gbuf dws = tu_galloc(tbert_cuda_colsum_ws_floats((size_t)rows, cols) * 4);
        CK(tbert_cuda_colsum_acc(dacc.p, da.p, TBERT_CUDA_F32, rows, cols, dws.p, NULL));
        float *got = down(&dacc, (size_t)cols, TBERT_CUDA_F32, "colsum");
        tu_gcheck(&dws, "colsum ws");
        char what[96];
        snprintf(what, sizeof what, "colsum rows=%d cols=%d", rows, cols);
        expect_grad(what, got, ref, (size_t)cols, TBERT_CUDA_F32);
        if (memcmp(got, ref, (size_t)cols * 4) != 0) fail_msg("%s: not bit-identical to the CPU's chunked sums", what);
        free(a), free(acc), free(ref), free(got);
        tu_gfree(&da), tu_gfree(&dacc), tu_gfree(&dws);
    }
}

/* dx_mode: 0 no dx, 1 dx overwritten, 2 dx accumulated (from random values) */
static void check_linear(tu_rng *r, cublasHandle_t h, tbert_cuda_gemm_mode mode, int rows, int in, int out,
                         int dx_mode) {
    const tbert_cuda_dtype dt = mode == TBERT_CUDA_GEMM_BF16 ? TBERT_CUDA_BF16 : TBERT_CUDA_F32;
    const size_t nx = (size_t)rows * in, nw = (size_t)out * in, ny = (size_t)rows * out;
    float *x = tu_rand_floats(r, nx, 1.0f), *W = tu_rand_floats(r, nw, 0.2f), *dy = tu_rand_floats(r, ny, 1.0f);
    float *dW0 = tu_rand_floats(r, nw, 1.0f), *db0 = tu_rand_floats(r, (size_t)out, 1.0f), *dx0 = tu_rand_floats(r, nx, 1.0f);
    tu_gbuf gx = tu_up_act(x, nx, dt), gW = tu_up_act(W, nw, dt), gdy = tu_up_act(dy, ny, dt); /* rounds x, W, dy for bf16 */
    tu_gbuf gdx = dx_mode == 2 ? tu_up_act(dx0, nx, dt) : tu_galloc(nx * tu_dt_size(dt)), gdW = up_f32(dW0, nw);
    tu_gbuf gdb = up_f32(db0, (size_t)out), gws = tu_galloc(tbert_cuda_colsum_ws_floats((size_t)rows, out) * 4);
    CK(tbert_cuda_linear_bwd(h, mode, dx_mode ? gdx.p : NULL, dx_mode == 2, gdW.p, gdb.p, gx.p, gW.p, gdy.p, gws.p,
                             rows, in, out, NULL));
    float *rdx = tu_xmalloc(nx * 4 + 4), *rdW = fdup(dW0, nw), *rdb = fdup(db0, (size_t)out);
    assert_non_null(rdx);
    tbert_bwd_linear((size_t)rows, in, out, x, W, dy, rdx, rdW, rdb);
    char what[128];
    if (dx_mode) {
        float *got = down(&gdx, nx, dt, "linear dx");
        if (dx_mode == 2) /* the increment */
            for (size_t i = 0; i < nx; i++) got[i] -= dx0[i];
        else
            round_dt(rdx, nx, dt);
        snprintf(what, sizeof what, "linear %s dx %s rows=%d in=%d out=%d", tu_dt_name(dt), dx_mode == 2 ? "+=" : "=",
                 rows, in, out);
        expect_grad(what, got, rdx, nx, dt);
        free(got);
    }
    float *got = down(&gdW, nw, TBERT_CUDA_F32, "linear dW");
    snprintf(what, sizeof what, "linear %s dW += rows=%d in=%d out=%d", tu_dt_name(dt), rows, in, out);
    /* dW starts from random values: the check is on the increment, where the error lies */
    for (size_t i = 0; i < nw; i++) got[i] -= dW0[i], rdW[i] -= dW0[i];
    expect_grad(what, got, rdW, nw, dt);
    free(got);
    got = down(&gdb, (size_t)out, TBERT_CUDA_F32, "linear db");
    for (int i = 0; i < out; i++) got[i] -= db0[i], rdb[i] -= db0[i];
    snprintf(what, sizeof what, "linear %s db += rows=%d out=%d", tu_dt_name(dt), rows, out);
    expect_grad(what, got, rdb, (size_t)out, dt);
    free(got);
    tu_gcheck(&gws, "linear ws");
    free(x), free(W), free(dy), free(dW0), free(db0), free(dx0), free(rdx), free(rdW), free(rdb);
    tu_gfree(&gx), tu_gfree(&gW), tu_gfree(&gdy), tu_gfree(&gdx), tu_gfree(&gdW), tu_gfree(&gdb), tu_gfree(&gws);
}

static void test_linear(void **state) {
    (void)state;
    tu_rng r = {g_seed ^ 2};
    cublasHandle_t h = make_handle();
    for (int k = 0; k < 2; k++) {
        tbert_cuda_gemm_mode mode = k ? TBERT_CUDA_GEMM_BF16 : TBERT_CUDA_GEMM_FP32;
        check_linear(&r, h, mode, 1, 48, 37, 1);
        check_linear(&r, h, mode, 65, 33, 96, 1);
        check_linear(&r, h, mode, 701, 48, 144, 1);
        check_linear(&r, h, mode, 130, 96, 48, 0);
        check_linear(&r, h, mode, 67, 40, 120, 2);
    }
    free_handle(h);
}

static void check_gelu(tu_rng *r, tbert_cuda_dtype dt, int rows, int cols, bool alias) {
    const size_t n = (size_t)rows * cols;
    float *a = tu_rand_floats(r, n, 2.0f), *dh = tu_rand_floats(r, n, 1.0f), *db0 = tu_rand_floats(r, (size_t)cols, 1.0f);
    tu_gbuf ga = tu_up_act(a, n, dt), gdh = tu_up_act(dh, n, dt), gda = alias ? gdh : tu_galloc(n * tu_dt_size(dt));
    tu_gbuf gdb = up_f32(db0, (size_t)cols), gws = tu_galloc(tbert_cuda_colsum_ws_floats((size_t)rows, cols) * 4);
    CK(tbert_cuda_bias_gelu_bwd(gda.p, gdh.p, ga.p, gdb.p, gws.p, dt, rows, cols, NULL));
    {   /* the forward twin: a + bias kept, h = gelu */
        float *fa = fdup(a, n), *fb = tu_rand_floats(r, (size_t)cols, 0.5f), *rh = tu_xmalloc(n * 4 + 4);
        tu_gbuf gfa = tu_up_act(fa, n, dt), gfb = up_f32(fb, (size_t)cols), gfh = tu_galloc(n * tu_dt_size(dt));
        CK(tbert_cuda_bias_gelu_fwd(gfa.p, gfh.p, gfb.p, dt, rows, cols, NULL));
        tbert_fwd_bias_gelu((size_t)rows, cols, fa, fb, rh);
        round_dt(fa, n, dt);
        round_dt(rh, n, dt);
        char w2[128];
        float *ga2 = down(&gfa, n, dt, "bias_gelu_fwd a"), *gh2 = down(&gfh, n, dt, "bias_gelu_fwd h");
        snprintf(w2, sizeof w2, "bias_gelu_fwd %s a + bias rows=%d cols=%d", tu_dt_name(dt), rows, cols);
        expect_grad(w2, ga2, fa, n, dt);
        snprintf(w2, sizeof w2, "bias_gelu_fwd %s h rows=%d cols=%d", tu_dt_name(dt), rows, cols);
        expect_grad(w2, gh2, rh, n, dt);
        free(fa), free(fb), free(rh), free(ga2), free(gh2);
        tu_gfree(&gfa), tu_gfree(&gfb), tu_gfree(&gfh);
    }
    float *rda = tu_xmalloc(n * 4 + 4), *rdb = fdup(db0, (size_t)cols);
    assert_non_null(rda);
    tbert_bwd_bias_gelu((size_t)rows, cols, a, dh, rda, dt == TBERT_CUDA_BF16 ? NULL : rdb);
    if (dt == TBERT_CUDA_BF16) round_dt(rda, n, dt);
    char what[128];
    float *got = down(&gda, n, dt, "gelu da");
    snprintf(what, sizeof what, "bias_gelu_bwd %s da rows=%d cols=%d%s", tu_dt_name(dt), rows, cols,
             alias ? " (in place)" : "");
    expect_grad(what, got, rda, n, dt);
    if (dt == TBERT_CUDA_BF16) {
        /* the device sums its own bf16 da; a CPU da rounded to bf16 can land one bf16 step away from it (the two
         * GELU' differ in the last fp32 bits), so the bias sum's reference is the column sum of the device's da, in
         * the CPU's chunked order: the reduction is checked at fp32 tolerance, the da values above at bf16's */
        tbert_bwd_colsum_chunked((size_t)rows, cols, got, (size_t)cols, rdb);
    }
    free(got);
    got = down(&gdb, (size_t)cols, TBERT_CUDA_F32, "gelu dbias");
    for (int i = 0; i < cols; i++) got[i] -= db0[i], rdb[i] -= db0[i];
    snprintf(what, sizeof what, "bias_gelu_bwd %s dbias += rows=%d cols=%d", tu_dt_name(dt), rows, cols);
    expect_grad(what, got, rdb, (size_t)cols, TBERT_CUDA_F32); /* both sum the same da: fp32 tolerance */
    free(got);
    free(a), free(dh), free(db0), free(rda), free(rdb);
    tu_gfree(&ga), tu_gfree(&gdh), tu_gfree(&gdb), tu_gfree(&gws);
    if (!alias) tu_gfree(&gda);
}

static void test_gelu(void **state) {
    (void)state;
    tu_rng r = {g_seed ^ 3};
    for (int k = 0; k < 2; k++) {
        tbert_cuda_dtype dt = k ? TBERT_CUDA_BF16 : TBERT_CUDA_F32;
        check_gelu(&r, dt, 1, 37, false);
        check_gelu(&r, dt, 129, 384, false);
        check_gelu(&r, dt, 300, 33, true);
    }
    /* tanh (the pooler's activation) */
    const size_t n = 1001;
    float *out = tu_rand_floats(&r, n, 1.0f), *dout = tu_rand_floats(&r, n, 1.0f), *ref = tu_xmalloc(n * 4);
    for (size_t i = 0; i < n; i++) out[i] = tanhf(out[i]), ref[i] = dout[i] * (1.0f - out[i] * out[i]);
    tu_gbuf go = up_f32(out, n), gd = up_f32(dout, n), gda = tu_galloc(n * 4);
    CK(tbert_cuda_tanh_bwd(gda.p, gd.p, go.p, n, NULL));
    float *got = down(&gda, n, TBERT_CUDA_F32, "tanh_bwd");
    expect_grad("tanh_bwd n=1001", got, ref, n, TBERT_CUDA_F32);
    free(out), free(dout), free(ref), free(got);
    tu_gfree(&go), tu_gfree(&gd), tu_gfree(&gda);
}

static void check_layernorm(tu_rng *r, tbert_cuda_dtype dt, int rows, int H, bool with_bias, bool with_res,
                            bool alias) {
    const size_t n = (size_t)rows * H;
    float *z = tu_rand_floats(r, n, 1.5f), *bias = tu_rand_floats(r, (size_t)H, 0.5f), *g = tu_rand_floats(r, (size_t)H, 0.5f);
    float *beta = tu_rand_floats(r, (size_t)H, 0.5f), *dy = tu_rand_floats(r, n, 1.0f), *dres0 = tu_rand_floats(r, n, 1.0f);
    float *dg0 = tu_rand_floats(r, (size_t)H, 1.0f), *dbt0 = tu_rand_floats(r, (size_t)H, 1.0f);
    for (int c = 0; c < H; c++) g[c] += 1.0f;
    char what[160];
    /* forward twin: z += bias + residual (kept), y, mean, rstd (with_res: a residual forward, a dres backward) */
    float *res = tu_rand_floats(r, n, 1.0f);
    tu_gbuf gz = tu_up_act(z, n, dt), gb = up_f32(bias, (size_t)H), gg = up_f32(g, (size_t)H),
         gbeta = up_f32(beta, (size_t)H);
    tu_gbuf gy = tu_galloc(n * tu_dt_size(dt)), gmean = tu_galloc((size_t)rows * 4), grstd = tu_galloc((size_t)rows * 4);
    tu_gbuf gres = tu_up_act(res, n, dt);
    CK(tbert_cuda_layernorm_fwd(gy.p, gmean.p, grstd.p, gz.p, with_bias ? gb.p : NULL, with_res ? gres.p : NULL, gg.p,
                                gbeta.p, 1e-12f, dt, rows, H, NULL));
    float *ry = tu_xmalloc(n * 4 + 4), *rmean = tu_xmalloc((size_t)rows * 4 + 4), *rrstd = tu_xmalloc((size_t)rows * 4 + 4);
    if (with_res) /* the CPU twin takes the sum formed by its caller; the device adds bias, then residual */
        for (size_t i = 0; i < n; i++) z[i] = with_bias ? (z[i] + bias[i % (size_t)H]) + res[i] : z[i] + res[i];
    tbert_fwd_layernorm((size_t)rows, H, z, with_bias && !with_res ? bias : NULL, g, beta, 1e-12f, ry, rmean, rrstd);
    round_dt(z, n, dt); /* the device keeps z + bias + residual in dt */
    round_dt(ry, n, dt);
    float *got = down(&gz, n, dt, "layernorm z");
    snprintf(what, sizeof what, "layernorm_fwd %s z%s%s rows=%d H=%d", tu_dt_name(dt), with_bias ? " + bias" : "",
             with_res ? " + residual" : "", rows, H);
    expect_grad(what, got, z, n, dt);
    free(got);
    got = down(&gy, n, dt, "layernorm y");
    snprintf(what, sizeof what, "layernorm_fwd %s y rows=%d H=%d", tu_dt_name(dt), rows, H);
    expect_grad(what, got, ry, n, dt);
    free(got);
    /* the backward's saved statistics: the device's own (bf16: of its rounded z); the CPU twin gets the same */
    float *mean = down(&gmean, (size_t)rows, TBERT_CUDA_F32, "layernorm mean");
    float *rstd = down(&grstd, (size_t)rows, TBERT_CUDA_F32, "layernorm rstd");
    snprintf(what, sizeof what, "layernorm_fwd %s mean rows=%d H=%d", tu_dt_name(dt), rows, H);
    {   /* a row's mean can sit near 0 by cancellation (seeds 11, 21: rows=1, H=48), so a ratio to the mean itself
         * measures rounding noise; the mean is held to its inputs' scale instead: fp32 1e-5 max|z|, bf16 (the
         * device averages its bf16-rounded z, the CPU twin the unrounded sum) 1e-2 max|z| */
        double zmax = 0;
        for (size_t i = 0; i < n; i++) zmax = fmax(zmax, fabs(z[i]));
        const double atol = (dt == TBERT_CUDA_BF16 ? 1e-2 : 1e-5) * zmax;
        if (tu_compare(what, mean, rmean, (size_t)rows, atol, 0.0) || !(zmax > 0))
            fail_msg("%s: outside %.3g (1e-5 or 1e-2 of max|z| %.3g; seed %llu)", what, atol, zmax,
                     (unsigned long long)g_seed);
    }
    snprintf(what, sizeof what, "layernorm_fwd %s rstd rows=%d H=%d", tu_dt_name(dt), rows, H);
    expect_grad(what, rstd, rrstd, (size_t)rows, dt);

    /* backward */
    tu_gbuf gdy = tu_up_act(dy, n, dt), gdres = with_res ? tu_up_act(dres0, n, dt) : (tu_gbuf){0};
    tu_gbuf gdz = alias ? gdy : tu_galloc(n * tu_dt_size(dt));
    tu_gbuf gdg = up_f32(dg0, (size_t)H), gdbt = up_f32(dbt0, (size_t)H);
    tu_gbuf gws = tu_galloc(2 * tbert_cuda_colsum_ws_floats((size_t)rows, H) * 4);
    CK(tbert_cuda_layernorm_bwd(gdz.p, with_res ? gdres.p : NULL, gdg.p, gdbt.p, gz.p, gmean.p, grstd.p, gg.p, gdy.p,
                                gws.p, dt, rows, H, NULL));
    float *rdz = tu_xmalloc(n * 4 + 4), *rdres = fdup(dres0, n), *rdg = fdup(dg0, (size_t)H),
          *rdbt = fdup(dbt0, (size_t)H);
    float *ws = tu_xmalloc((size_t)H * 2 * 4);
    assert_non_null(rdz), assert_non_null(ws);
    tbert_bwd_layernorm((size_t)rows, H, z, mean, rstd, g, dy, rdz, with_res ? rdres : NULL, rdg, rdbt, ws);
    round_dt(rdz, n, dt);
    round_dt(rdres, n, dt);
    got = down(&gdz, n, dt, "layernorm dz");
    snprintf(what, sizeof what, "layernorm_bwd %s dz rows=%d H=%d%s", tu_dt_name(dt), rows, H, alias ? " (dz = dy)" : "");
    expect_grad(what, got, rdz, n, dt);
    free(got);
    if (with_res) {
        got = down(&gdres, n, dt, "layernorm dres");
        for (size_t i = 0; i < n; i++) got[i] -= dres0[i], rdres[i] -= dres0[i];
        snprintf(what, sizeof what, "layernorm_bwd %s dres += rows=%d H=%d", tu_dt_name(dt), rows, H);
        expect_grad(what, got, rdres, n, dt);
        free(got);
    }
    got = down(&gdg, (size_t)H, TBERT_CUDA_F32, "layernorm dgamma");
    for (int c = 0; c < H; c++) got[c] -= dg0[c], rdg[c] -= dg0[c];
    snprintf(what, sizeof what, "layernorm_bwd %s dgamma += rows=%d H=%d", tu_dt_name(dt), rows, H);
    expect_grad(what, got, rdg, (size_t)H, dt);
    free(got);
    got = down(&gdbt, (size_t)H, TBERT_CUDA_F32, "layernorm dbeta");
    for (int c = 0; c < H; c++) got[c] -= dbt0[c], rdbt[c] -= dbt0[c];
    snprintf(what, sizeof what, "layernorm_bwd %s dbeta += rows=%d H=%d", tu_dt_name(dt), rows, H);
    expect_grad(what, got, rdbt, (size_t)H, dt);
    free(got);
    tu_gcheck(&gws, "layernorm ws");
    free(res), tu_gfree(&gres);
    free(z), free(bias), free(g), free(beta), free(dy), free(dres0), free(dg0), free(dbt0), free(ry), free(rmean);
    free(rrstd), free(mean), free(rstd), free(rdz), free(rdres), free(rdg), free(rdbt), free(ws);
    tu_gfree(&gz), tu_gfree(&gb), tu_gfree(&gg), tu_gfree(&gbeta), tu_gfree(&gy), tu_gfree(&gmean), tu_gfree(&grstd);
    tu_gfree(&gdy), tu_gfree(&gdg), tu_gfree(&gdbt), tu_gfree(&gws);
    if (with_res) tu_gfree(&gdres);
    if (!alias) tu_gfree(&gdz);
}

static void test_layernorm(void **state) {
    (void)state;
    tu_rng r = {g_seed ^ 4};
    for (int k = 0; k < 2; k++) {
        tbert_cuda_dtype dt = k ? TBERT_CUDA_BF16 : TBERT_CUDA_F32;
        check_layernorm(&r, dt, 1, 48, true, true, false);
        check_layernorm(&r, dt, 129, 384, false, true, false);
        check_layernorm(&r, dt, 301, 33, true, false, true);
    }
}

/* attention: the forward twin against tbert_fwd_attention_dropout (P and ctx), then the backward from the CPU's P
 * (the same saved input on both sides; rounded to bf16 on both in bf16) against tbert_bwd_attention_dropout;
 * pdrop > 0 drops probabilities (the multipliers drawn from the counters on both sides, base past 2^32). */
static void check_attention(tu_rng *r, cublasHandle_t h, tbert_cuda_dtype dt, int B, int maxT, int heads, int d,
                            float pdrop) {
    const tbert_dropout drop = {pdrop, 0x5eedULL + (uint64_t)B, 17, tbert_dropout_site(3, TBERT_DROP_ATTN_PROBS),
                                (1ULL << 32) + 12345};
    const tbert_dropout *dp = pdrop > 0.0f ? &drop : NULL;
    int N = 0;
    int32_t *off = make_batch(r, B, maxT, &N);
    const int H = heads * d;
    const float scale = 1.0f / sqrtf((float)d);
    int64_t *p_off = tu_xmalloc(((size_t)B + 1) * sizeof *p_off);
    assert_non_null(p_off);
    const size_t np = (size_t)tbert_cuda_attn_probs_offsets(p_off, off, B, heads);
    if (np != tbert_attn_probs_size(B, off, heads))
        fail_msg("P sizes differ: %zu vs %zu", np, tbert_attn_probs_size(B, off, heads));
    const size_t nqkv = (size_t)N * 3 * H, nctx = (size_t)N * H,
                 nws = tbert_cuda_attention_ws_floats((int64_t)np, dt, dp != NULL);
    float *qkv = tu_rand_floats(r, nqkv, 1.0f), *dctx = tu_rand_floats(r, nctx, 1.0f);
    float *rctx = tu_xmalloc(nctx * 4 + 4), *rP = tu_xmalloc(np * 4 + 4), *rdqkv = tu_xmalloc(nqkv * 4 + 4);
    int Lmax = 0;
    for (int b = 0; b < B; b++) Lmax = off[b + 1] - off[b] > Lmax ? off[b + 1] - off[b] : Lmax;
    float *ws = tu_xmalloc((size_t)Lmax * Lmax * 8 + 4);
    assert_non_null(rctx), assert_non_null(rP), assert_non_null(rdqkv), assert_non_null(ws);
    tu_gbuf gqkv = tu_up_act(qkv, nqkv, dt), gdctx = tu_up_act(dctx, nctx, dt); /* round qkv, dctx for bf16 */
    tu_gbuf gcu = tu_up_bytes(off, ((size_t)B + 1) * 4), gpo = tu_up_bytes(p_off, ((size_t)B + 1) * 8);
    tbert_fwd_attention_dropout(B, off, H, heads, scale, qkv, rctx, rP, NULL, dp, ws);

    tu_gbuf gctx = tu_galloc(nctx * tu_dt_size(dt)), gP = tu_galloc(np * tu_dt_size(dt)), gws = tu_galloc(nws * 4);
    CK(tbert_cuda_attention_fwd_probs(h, gctx.p, gP.p, gqkv.p, gws.p, off, gcu.p, gpo.p, dp, dt, B, heads, d, scale,
                                      NULL));
    char what[160], tag[32] = "";
    if (dp) snprintf(tag, sizeof tag, " drop=%.2f", (double)pdrop);
    float *got = down(&gP, np, dt, "attention P");
    snprintf(what, sizeof what, "attention_fwd_probs %s%s P B=%d N=%d heads=%d d=%d", tu_dt_name(dt), tag, B, N, heads, d);
    expect_grad(what, got, rP, np, dt);
    free(got);
    got = down(&gctx, nctx, dt, "attention ctx");
    snprintf(what, sizeof what, "attention_fwd_probs %s%s ctx B=%d N=%d heads=%d d=%d", tu_dt_name(dt), tag, B, N, heads,
             d);
    expect_grad(what, got, rctx, nctx, dt);
    free(got);
    tu_gcheck(&gws, "attention fwd ws");
    if (dt == TBERT_CUDA_F32 && !dp) { /* in place: ws = P */
        CK(tbert_cuda_fill(gP.p, -1.0f, (int)np, NULL));
        CK(tbert_cuda_attention_fwd_probs(h, gctx.p, gP.p, gqkv.p, gP.p, off, gcu.p, gpo.p, NULL, dt, B, heads, d,
                                          scale, NULL));
        got = down(&gP, np, dt, "attention P in place");
        snprintf(what, sizeof what, "attention_fwd_probs fp32 P (ws = P) B=%d N=%d heads=%d d=%d", B, N, heads, d);
        expect_grad(what, got, rP, np, dt);
        free(got);
    }

    tu_gbuf gPc = tu_up_act(rP, np, dt), gdqkv = tu_galloc(nqkv * tu_dt_size(dt)), gws2 = tu_galloc(nws * 4);
    tbert_bwd_attention_dropout(B, off, H, heads, scale, qkv, rP, NULL, dctx, rdqkv, dp, ws); /* rP as the device holds it */
    round_dt(rdqkv, nqkv, dt);
    CK(tbert_cuda_attention_bwd(h, gdqkv.p, gqkv.p, gPc.p, gdctx.p, gws2.p, off, gcu.p, gpo.p, dp, dt, B, heads, d,
                                scale, NULL));
    got = down(&gdqkv, nqkv, dt, "attention dqkv");
    tu_gcheck(&gws2, "attention ws");
    /* dq, dk, dv separately: each has its own scale */
    static const char *part[] = {"dQ", "dK", "dV"};
    float *gp = tu_xmalloc(nctx * 4 + 4), *rp = tu_xmalloc(nctx * 4 + 4);
    for (int k = 0; k < 3; k++) {
        for (int i = 0; i < N; i++) {
            memcpy(gp + (size_t)i * H, got + (size_t)i * 3 * H + (size_t)k * H, (size_t)H * 4);
            memcpy(rp + (size_t)i * H, rdqkv + (size_t)i * 3 * H + (size_t)k * H, (size_t)H * 4);
        }
        snprintf(what, sizeof what, "attention_bwd %s%s %s B=%d N=%d Lmax=%d heads=%d d=%d", tu_dt_name(dt), tag, part[k],
                 B, N, Lmax, heads, d);
        if (Lmax == 1 && k < 2) { /* one key: P = 1, so dS = 0 and dQ = dK = 0 exactly */
            for (size_t i = 0; i < nctx; i++)
                if (gp[i] != 0.0f || rp[i] != 0.0f)
                    fail_msg("%s: [%zu] = %g (cpu %g), expected 0", what, i, gp[i], rp[i]);
            continue;
        }
        expect_grad(what, gp, rp, nctx, dt);
    }
    free(got), free(gp), free(rp);
    free(off), free(p_off), free(qkv), free(dctx), free(rctx), free(rP), free(rdqkv), free(ws);
    tu_gfree(&gqkv), tu_gfree(&gcu), tu_gfree(&gpo), tu_gfree(&gctx), tu_gfree(&gP), tu_gfree(&gPc), tu_gfree(&gdctx);
    tu_gfree(&gdqkv), tu_gfree(&gws), tu_gfree(&gws2);
}

static void test_attention(void **state) {
    (void)state;
    tu_rng r = {g_seed ^ 5};
    cublasHandle_t h = make_handle();
    for (int k = 0; k < 2; k++) {
        tbert_cuda_dtype dt = k ? TBERT_CUDA_BF16 : TBERT_CUDA_F32;
        check_attention(&r, h, dt, 7, 512, 2, 16, 0.0f); /* 512, 1, 0, ..., 0: lengths 0..512 in one batch */
        check_attention(&r, h, dt, 5, 67, 3, 7, 0.0f);   /* odd d, odd lengths */
        check_attention(&r, h, dt, 1, 1, 1, 5, 0.0f);    /* one token */
        check_attention(&r, h, dt, 6, 130, 2, 8, 0.1f);  /* probability dropout */
        check_attention(&r, h, dt, 4, 33, 3, 7, 0.5f);
    }
    free_handle(h);
}

static void check_pool(tu_rng *r, tbert_cuda_dtype dt, tbert_cuda_pool_kind kind, int B, int maxT, int H, int out_T) {
    int N = 0;
    int32_t *off = make_batch(r, B, maxT, &N);
    const size_t dim = kind == TBERT_CUDA_POOL_FLATTEN ? (size_t)out_T * H : (size_t)H;
    float *dout = tu_rand_floats(r, (size_t)B * dim, 1.0f), *ref = tu_xmalloc((size_t)N * H * 4 + 4);
    assert_non_null(ref);
    tbert_bwd_pool((int)kind, B, off, H, out_T, dout, ref);
    round_dt(ref, (size_t)N * H, dt);
    tu_gbuf gd = up_f32(dout, (size_t)B * dim), gcu = tu_up_bytes(off, ((size_t)B + 1) * 4);
    tu_gbuf gh = tu_galloc((size_t)N * H * tu_dt_size(dt));
    CK(tbert_cuda_pool_bwd(gh.p, gd.p, dim, gcu.p, kind, dt, B, N, H, out_T, NULL));
    float *got = down(&gh, (size_t)N * H, dt, "pool_bwd");
    static const char *names[] = {"mean", "cls", "flatten"};
    char what[128];
    snprintf(what, sizeof what, "pool_bwd %s %s B=%d N=%d H=%d out_T=%d", names[kind], tu_dt_name(dt), B, N, H, out_T);
    expect_grad(what, got, ref, (size_t)N * H, dt);
    free(off), free(dout), free(ref), free(got);
    tu_gfree(&gd), tu_gfree(&gcu), tu_gfree(&gh);
}

static void test_pooling(void **state) {
    (void)state;
    tu_rng r = {g_seed ^ 6};
    for (int k = 0; k < 2; k++) {
        tbert_cuda_dtype dt = k ? TBERT_CUDA_BF16 : TBERT_CUDA_F32;
        for (int kind = 0; kind < 3; kind++) {
            check_pool(&r, dt, (tbert_cuda_pool_kind)kind, 6, 37, 48, 37);
            check_pool(&r, dt, (tbert_cuda_pool_kind)kind, 5, 512, 24, 300); /* flatten: rows past out_T get 0 */
        }
    }
    /* L2 normalisation: a zero row, a tiny row, ordinary rows; in place too */
    const int dims[] = {48, 385};
    for (int k = 0; k < 2; k++) {
        const int rows = 7, dim = dims[k];
        const size_t n = (size_t)rows * dim;
        float *x = tu_rand_floats(&r, n, 1.0f), *y = tu_xmalloc(n * 4), *dy = tu_rand_floats(&r, n, 1.0f), *ref = tu_xmalloc(n * 4);
        for (int j = 0; j < dim; j++) x[(size_t)2 * dim + j] = 0.0f;
        for (int i = 0; i < rows; i++) {
            double ss = 0;
            for (int j = 0; j < dim; j++) ss += (double)x[(size_t)i * dim + j] * x[(size_t)i * dim + j];
            double nrm = sqrt(ss);
            for (int j = 0; j < dim; j++)
                y[(size_t)i * dim + j] =
                    ss > 0 ? (float)(x[(size_t)i * dim + j] / fmax(nrm, 1e-12)) : x[(size_t)i * dim + j];
        }
        tbert_bwd_l2_normalize((size_t)rows, (size_t)dim, x, y, dy, ref);
        tu_gbuf gx = up_f32(x, n), gy = up_f32(y, n), gdy = up_f32(dy, n), gdx = tu_galloc(n * 4);
        CK(tbert_cuda_l2_normalize_bwd(gdx.p, gx.p, gy.p, gdy.p, rows, dim, NULL));
        CK(tbert_cuda_l2_normalize_bwd(gdy.p, gx.p, gy.p, gdy.p, rows, dim, NULL)); /* in place */
        char what[96];
        float *got = down(&gdx, n, TBERT_CUDA_F32, "l2_normalize_bwd");
        snprintf(what, sizeof what, "l2_normalize_bwd rows=%d dim=%d", rows, dim);
        expect_grad(what, got, ref, n, TBERT_CUDA_F32);
        free(got);
        got = down(&gdy, n, TBERT_CUDA_F32, "l2_normalize_bwd in place");
        snprintf(what, sizeof what, "l2_normalize_bwd in place rows=%d dim=%d", rows, dim);
        expect_grad(what, got, ref, n, TBERT_CUDA_F32);
        free(got);
        free(x), free(y), free(dy), free(ref);
        tu_gfree(&gx), tu_gfree(&gy), tu_gfree(&gdy), tu_gfree(&gdx);
    }
}

static void test_pooler(void **state) {
    (void)state;
    tu_rng r = {g_seed ^ 7};
    cublasHandle_t h = make_handle();
    const int shapes[][2] = {{1, 32}, {5, 48}, {70, 96}};
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
        const int B = shapes[k][0], H = shapes[k][1];
        const size_t n = (size_t)B * H, nw = (size_t)H * H;
        float *cls = tu_rand_floats(&r, n, 1.0f), *W = tu_rand_floats(&r, nw, 0.2f), *out = tu_rand_floats(&r, n, 1.0f),
              *dout = tu_rand_floats(&r, n, 1.0f);
        float *dW0 = tu_rand_floats(&r, nw, 1.0f), *db0 = tu_rand_floats(&r, (size_t)H, 1.0f);
        for (size_t i = 0; i < n; i++) out[i] = tanhf(out[i]);
        float *rdcls = tu_xmalloc(n * 4), *rdW = fdup(dW0, nw), *rdb = fdup(db0, (size_t)H),
              *ws = tu_xmalloc((nw + H + n) * 4);
        tbert_bwd_pooler(B, H, cls, W, out, dout, rdcls, rdW, rdb, ws);
        tu_gbuf gcls = up_f32(cls, n), gW = up_f32(W, nw), gout = up_f32(out, n), gdout = up_f32(dout, n);
        tu_gbuf gdcls = tu_galloc(n * 4), gdW = up_f32(dW0, nw), gdb = up_f32(db0, (size_t)H);
        tu_gbuf gws = tu_galloc((n + tbert_cuda_colsum_ws_floats((size_t)B, H)) * 4);
        CK(tbert_cuda_pooler_bwd(h, gdcls.p, gdW.p, gdb.p, gcls.p, gW.p, gout.p, gdout.p, gws.p, B, H, NULL));
        char what[96];
        float *got = down(&gdcls, n, TBERT_CUDA_F32, "pooler dcls");
        snprintf(what, sizeof what, "pooler_bwd dcls B=%d H=%d", B, H);
        expect_grad(what, got, rdcls, n, TBERT_CUDA_F32);
        free(got);
        got = down(&gdW, nw, TBERT_CUDA_F32, "pooler dW");
        for (size_t i = 0; i < nw; i++) got[i] -= dW0[i], rdW[i] -= dW0[i];
        snprintf(what, sizeof what, "pooler_bwd dW += B=%d H=%d", B, H);
        expect_grad(what, got, rdW, nw, TBERT_CUDA_F32);
        free(got);
        got = down(&gdb, (size_t)H, TBERT_CUDA_F32, "pooler db");
        for (int i = 0; i < H; i++) got[i] -= db0[i], rdb[i] -= db0[i];
        snprintf(what, sizeof what, "pooler_bwd db += B=%d H=%d", B, H);
        expect_grad(what, got, rdb, (size_t)H, TBERT_CUDA_F32);
        free(got);
        tu_gcheck(&gws, "pooler ws");
        free(cls), free(W), free(out), free(dout), free(dW0), free(db0), free(rdcls), free(rdW), free(rdb), free(ws);
        tu_gfree(&gcls), tu_gfree(&gW), tu_gfree(&gout), tu_gfree(&gdout), tu_gfree(&gdcls), tu_gfree(&gdW), tu_gfree(&gdb);
        tu_gfree(&gws);
    }
    free_handle(h);
}

/* embeddings: against the CPU twin tbert_bwd_embeddings (token by token in input order). The word and position
 * tables sum each table row's tokens in that same order, so they match it bit for bit; the type row is a chunked
 * column sum (colsum.cu), within the fp32 tolerance. */
static void check_embeddings(tu_rng *r, int B, int maxT, int V, int H) {
    int N = 0;
    int32_t *off = make_batch(r, B, maxT, &N);
    int32_t *ids = tu_xmalloc((size_t)N * 4 + 4), *posk = tu_xmalloc((size_t)N * 4 + 4);
    for (int b = 0; b < B; b++)
        for (int i = off[b]; i < off[b + 1]; i++) {
            /* a small vocabulary slice so that ids repeat (several rows per table row), ids 0 and V-1 present */
            ids[i] = i % 5 == 0 ? V - 1 : tu_rand_int(r, 0, V / 8);
            posk[i] = i - off[b];
        }
    ids[0] = 0;
    const size_t nz = (size_t)N * H;
    float *dz = tu_rand_floats(r, nz, 1.0f), *w0 = tu_rand_floats(r, (size_t)V * H, 1.0f), *p0 = tu_rand_floats(r, (size_t)maxT * H, 1.0f);
    float *t0 = tu_rand_floats(r, (size_t)H, 1.0f);
    float *cw = fdup(w0, (size_t)V * H), *cp = fdup(p0, (size_t)maxT * H), *ct = fdup(t0, (size_t)H);
    tbert_bwd_embeddings(B, off, H, ids, dz, cw, cp, ct);
    /* the plans */
    int32_t *cnt = tu_xmalloc((size_t)(V > maxT ? V : maxT) * 4), *perm[2], *start[2], *key[2];
    int nseg[2];
    tu_gbuf gperm[2], gstart[2], gkey[2];
    tbert_cuda_scatter_plan plan[2];
    for (int k = 0; k < 2; k++) {
        perm[k] = tu_xmalloc((size_t)N * 4 + 4), start[k] = tu_xmalloc((size_t)N * 4 + 8),
        key[k] = tu_xmalloc((size_t)N * 4 + 4);
        nseg[k] = tbert_cuda_scatter_plan_host(k ? posk : ids, N, k ? maxT : V, cnt, perm[k], start[k], key[k]);
        assert_true(nseg[k] > 0);
        gperm[k] = tu_up_bytes(perm[k], (size_t)N * 4), gstart[k] = tu_up_bytes(start[k], ((size_t)nseg[k] + 1) * 4);
        gkey[k] = tu_up_bytes(key[k], (size_t)nseg[k] * 4);
        plan[k] = (tbert_cuda_scatter_plan){gperm[k].p, gstart[k].p, gkey[k].p, nseg[k]};
    }
    assert_int_equal(nseg[1], maxT); /* every position 0..maxT-1 occurs (the first sequence has maxT rows) */
    tu_gbuf gdz = up_f32(dz, nz), gw = up_f32(w0, (size_t)V * H), gp = up_f32(p0, (size_t)maxT * H);
    tu_gbuf gt = up_f32(t0, (size_t)H), gws = tu_galloc(tbert_cuda_colsum_ws_floats((size_t)N, H) * 4);
    CK(tbert_cuda_embeddings_bwd(gw.p, gp.p, gt.p, gdz.p, &plan[0], &plan[1], gws.p, N, H, NULL));
    char what[128];
    float *got[3] = {down(&gw, (size_t)V * H, TBERT_CUDA_F32, "dword"),
                     down(&gp, (size_t)maxT * H, TBERT_CUDA_F32, "dpos"),
                     down(&gt, (size_t)H, TBERT_CUDA_F32, "dtype")};
    const float *base[3] = {w0, p0, t0}, *ref[3] = {cw, cp, ct};
    const size_t cnts[3] = {(size_t)V * H, (size_t)maxT * H, (size_t)H};
    static const char *names[] = {"dword", "dpos", "dtype"};
    for (int k = 0; k < 3; k++) {
        /* the increments (the tables start from random values) */
        float *inc = tu_xmalloc(cnts[k] * 4), *rf = tu_xmalloc(cnts[k] * 4);
        for (size_t i = 0; i < cnts[k]; i++) inc[i] = got[k][i] - base[k][i], rf[i] = ref[k][i] - base[k][i];
        snprintf(what, sizeof what, "embeddings_bwd %s += B=%d N=%d V=%d H=%d", names[k], B, N, V, H);
        expect_grad(what, inc, rf, cnts[k], TBERT_CUDA_F32);
        if (k < 2 && memcmp(got[k], ref[k], cnts[k] * 4) != 0)
            fail_msg("%s: not bit-identical to tbert_bwd_embeddings (same order of additions)", what);
        free(inc), free(rf), free(got[k]);
    }
    tu_gcheck(&gws, "embeddings ws");
    for (int k = 0; k < 2; k++) {
        free(perm[k]), free(start[k]), free(key[k]);
        tu_gfree(&gperm[k]), tu_gfree(&gstart[k]), tu_gfree(&gkey[k]);
    }
    free(off), free(ids), free(posk), free(dz), free(w0), free(p0), free(t0), free(cw), free(cp), free(ct), free(cnt);
    tu_gfree(&gdz), tu_gfree(&gw), tu_gfree(&gp), tu_gfree(&gt), tu_gfree(&gws);
}

static void test_embeddings(void **state) {
    (void)state;
    tu_rng r = {g_seed ^ 8};
    check_embeddings(&r, 6, 512, 1000, 24);
    check_embeddings(&r, 5, 33, 97, 130);
    check_embeddings(&r, 1, 1, 3, 7);
    /* the plan: stable grouping, refusal of a key out of range */
    const int32_t keys[] = {2, 0, 2, 1, 0, 2};
    int32_t cnt[3], perm[6], start[4], key[3];
    assert_int_equal(tbert_cuda_scatter_plan_host(keys, 6, 3, cnt, perm, start, key), 3);
    const int32_t eperm[] = {1, 4, 3, 0, 2, 5}, estart[] = {0, 2, 3, 6}, ekey[] = {0, 1, 2};
    assert_memory_equal(perm, eperm, sizeof perm);
    assert_memory_equal(start, estart, sizeof start);
    assert_memory_equal(key, ekey, sizeof key);
    const int32_t bad[] = {0, 3};
    assert_int_equal(tbert_cuda_scatter_plan_host(bad, 2, 3, cnt, perm, start, key), -1);
}

/* dropout: the device's masks equal tbert_dropout_scale on the host bit for bit, for every site, p in {0.1, 0.5},
 * index offsets beyond 2^32; applying in place multiplies by exactly those values (fp32 and bf16) */
static void test_dropout(void **state) {
    (void)state;
    tu_rng r = {g_seed ^ 9};
    const size_t n = 4099;
    const uint64_t seeds[] = {0, 42, 0x123456789abcdefULL};
    const uint64_t idx0[] = {0, 77, (1ULL << 32) - 5};
    float *ref = tu_xmalloc(n * 4), *x = tu_rand_floats(&r, n, 1.0f);
    tu_gbuf gm = tu_galloc(n * 4);
    for (int k = 0; k < 3; k++)
        for (int which = 0; which < 4; which++) {
            const float p = which & 1 ? 0.5f : 0.1f;
            const uint32_t site = tbert_dropout_site(k + 1, which);
            const uint64_t step = 1000u * (uint64_t)k + (uint64_t)which;
            for (size_t i = 0; i < n; i++) ref[i] = tbert_dropout_scale(seeds[k], step, site, idx0[k] + i, p);
            CK(tbert_cuda_dropout_mask(gm.p, n, seeds[k], step, site, idx0[k], p, NULL));
            float *got = down(&gm, n, TBERT_CUDA_F32, "dropout mask");
            size_t kept = 0;
            for (size_t i = 0; i < n; i++) kept += ref[i] != 0.0f;
            char what[96];
            snprintf(what, sizeof what, "dropout_mask seed#%d site=%u p=%.1f", k, site, (double)p);
            tu_dump(what, got, n * 4);
            if (memcmp(got, ref, n * 4) != 0) fail_msg("%s: differs from the CPU's masks", what);
            if (kept == 0 || kept == n) fail_msg("%s: kept %zu of %zu (a mask that keeps all or none)", what, kept, n);
            free(got);
            for (int dtk = 0; dtk < 2; dtk++) {
                tbert_cuda_dtype dt = dtk ? TBERT_CUDA_BF16 : TBERT_CUDA_F32;
                float *xr = fdup(x, n);
                tu_gbuf gx = tu_up_act(xr, n, dt); /* rounds xr for bf16 */
                CK(tbert_cuda_dropout(gx.p, dt, n, seeds[k], step, site, idx0[k], p, NULL));
                float *gotx = down(&gx, n, dt, "dropout");
                for (size_t i = 0; i < n; i++) {
                    float e = xr[i] * ref[i];
                    if (dt == TBERT_CUDA_BF16) e = tu_bf2f(tu_f2bf(e));
                    if (memcmp(&gotx[i], &e, 4) != 0)
                        fail_msg("dropout %s %s [%zu]: %g, expected %g", tu_dt_name(dt), what, i, gotx[i], e);
                }
                free(gotx), free(xr);
                tu_gfree(&gx);
            }
        }
    /* a hidden-row dropout as the CPU twin applies it (tbert_dropout_apply: element base + first + i), on a [rows, H]
     * block that starts at row 5 of its batch: the device's index0 is base + 5 H */
    {
        const int rows = 37, H = 48;
        const size_t nn = (size_t)rows * H;
        const tbert_dropout dd = {0.1f, 7, 3, tbert_dropout_site(2, TBERT_DROP_FFN_OUT), 1000};
        float *hx = tu_rand_floats(&r, nn, 1.0f), *cx = fdup(hx, nn);
        tbert_dropout_apply(nn, cx, &dd, (uint64_t)5 * H);
        tu_gbuf gx = up_f32(hx, nn), gy = tu_galloc(nn * 4);
        CK(tbert_cuda_dropout_to(gy.p, gx.p, TBERT_CUDA_F32, nn, dd.seed, dd.step, dd.site, dd.base + (uint64_t)5 * H,
                                 dd.p, NULL));
        float *gotd = down(&gy, nn, TBERT_CUDA_F32, "dropout_to");
        tu_dump("dropout_to hidden rows", gotd, nn * 4);
        if (memcmp(gotd, cx, nn * 4) != 0) fail_msg("dropout_to: differs from tbert_dropout_apply");
        free(hx), free(cx), free(gotd);
        tu_gfree(&gx), tu_gfree(&gy);
    }
    /* p = 0: the mask is all ones and the in-place form leaves x alone */
    CK(tbert_cuda_dropout_mask(gm.p, n, 1, 2, 3, 0, 0.0f, NULL));
    float *got = down(&gm, n, TBERT_CUDA_F32, "dropout mask p=0");
    for (size_t i = 0; i < n; i++)
        if (got[i] != 1.0f) fail_msg("dropout_mask p=0 [%zu] = %g", i, got[i]);
    free(got), free(ref), free(x);
    tu_gfree(&gm);
}

/* One whole encoder layer, forward (saving twins) and backward, chained on the device as a training step would
 * chain it, against the same chain of CPU twins (the chain of test_encoder_backward's test_layer, which proves it
 * against float64 and finite differences): y, dx and all twelve parameter gradients. Checks that the launchers'
 * layouts and accumulate-or-overwrite rules compose (residual gradients through dres and accumulate_dx). */
enum { L_WQKV, L_BQKV, L_WO, L_BO, L_G1, L_BE1, L_WI, L_BI, L_WOUT, L_BOUT, L_G2, L_BE2, L_COUNT };
static void check_layer(tu_rng *r, cublasHandle_t h, tbert_cuda_dtype dt, int B, int maxT, int heads, int d, int IM) {
    int N = 0;
    int32_t *off = make_batch(r, B, maxT, &N);
    const int H = heads * d;
    const size_t n = (size_t)N;
    const float scale = 1.0f / sqrtf((float)d), eps = 1e-12f;
    const size_t sz[L_COUNT] = {(size_t)3 * H * H, (size_t)3 * H, (size_t)H * H, (size_t)H, (size_t)H, (size_t)H,
                                (size_t)IM * H, (size_t)IM, (size_t)H * IM, (size_t)H, (size_t)H, (size_t)H};
    static const char *pname[L_COUNT] = {"Wqkv", "bqkv", "Wo",   "bo",   "g1", "be1",
                                         "Wi",   "bi",   "Wout", "bout", "g2", "be2"};
    const bool is_matrix[L_COUNT] = {true, false, true, false, false, false, true, false, true, false, false, false};
    float *prm[L_COUNT];
    tu_gbuf gprm[L_COUNT], ggrad[L_COUNT];
    for (int k = 0; k < L_COUNT; k++) {
        prm[k] = tu_rand_floats(r, sz[k], k == L_G1 || k == L_G2 ? 0.2f : (is_matrix[k] ? 0.3f : 0.5f));
        if (k == L_G1 || k == L_G2)
            for (size_t i = 0; i < sz[k]; i++) prm[k][i] += 1.0f;
        /* the four matrices in the storage type (rounded for bf16), vectors float32 */
        gprm[k] = is_matrix[k] ? tu_up_act(prm[k], sz[k], dt) : up_f32(prm[k], sz[k]);
        ggrad[k] = tu_galloc(sz[k] * 4);
        CK(cudaMemset(ggrad[k].p, 0, sz[k] * 4));
    }
    float *x = tu_rand_floats(r, n * H, 1.0f), *R = tu_rand_floats(r, n * H, 1.0f);
    tu_gbuf gx = tu_up_act(x, n * H, dt), gR = tu_up_act(R, n * H, dt);
    const tbert_cuda_gemm_mode mode = dt == TBERT_CUDA_BF16 ? TBERT_CUDA_GEMM_BF16 : TBERT_CUDA_GEMM_FP32;
    const size_t es = tu_dt_size(dt);
    int64_t *p_off = tu_xmalloc(((size_t)B + 1) * sizeof *p_off);
    const size_t np = (size_t)tbert_cuda_attn_probs_offsets(p_off, off, B, heads);
    tu_gbuf gcu = tu_up_bytes(off, ((size_t)B + 1) * 4), gpo = tu_up_bytes(p_off, ((size_t)B + 1) * 8);
    tu_gbuf gqkv = tu_galloc(n * 3 * H * es), gctx = tu_galloc(n * H * es), gP = tu_galloc(np * es);
    tu_gbuf gz1 = tu_galloc(n * H * es), gx1 = tu_galloc(n * H * es), ga = tu_galloc(n * IM * es), gh = tu_galloc(n * IM * es);
    tu_gbuf gz2 = tu_galloc(n * H * es), gy = tu_galloc(n * H * es);
    tu_gbuf gm1 = tu_galloc(n * 4), gr1 = tu_galloc(n * 4), gm2 = tu_galloc(n * 4), gr2 = tu_galloc(n * 4);
    tu_gbuf gaws = tu_galloc(tbert_cuda_attention_ws_floats((int64_t)np, dt, 0) * 4);
    const int widest = IM > 3 * H ? IM : 3 * H;
    tu_gbuf gws = tu_galloc(2 * tbert_cuda_colsum_ws_floats(n, widest) * 4);
#define PP(k) gprm[k].p
#define GG(k) ggrad[k].p
    /* forward */
    CK(tbert_cuda_linear(h, mode, gqkv.p, gx.p, PP(L_WQKV), N, H, 3 * H));
    CK(tbert_cuda_bias_add(gqkv.p, PP(L_BQKV), dt, N, 3 * H, NULL));
    CK(tbert_cuda_attention_fwd_probs(h, gctx.p, gP.p, gqkv.p, gaws.p, off, gcu.p, gpo.p, NULL, dt, B, heads, d, scale,
                                      NULL));
    CK(tbert_cuda_linear(h, mode, gz1.p, gctx.p, PP(L_WO), N, H, H));
    CK(tbert_cuda_layernorm_fwd(gx1.p, gm1.p, gr1.p, gz1.p, PP(L_BO), gx.p, PP(L_G1), PP(L_BE1), eps, dt, N, H, NULL));
    CK(tbert_cuda_linear(h, mode, ga.p, gx1.p, PP(L_WI), N, H, IM));
    CK(tbert_cuda_bias_gelu_fwd(ga.p, gh.p, PP(L_BI), dt, N, IM, NULL));
    CK(tbert_cuda_linear(h, mode, gz2.p, gh.p, PP(L_WOUT), N, IM, H));
    CK(tbert_cuda_layernorm_fwd(gy.p, gm2.p, gr2.p, gz2.p, PP(L_BOUT), gx1.p, PP(L_G2), PP(L_BE2), eps, dt, N, H,
                                NULL));
    /* backward, d loss / d y = R */
    tu_gbuf gdz2 = tu_galloc(n * H * es), gdx1 = tu_galloc(n * H * es), gdh = tu_galloc(n * IM * es), gdz1 = tu_galloc(n * H * es);
    tu_gbuf gdx = tu_galloc(n * H * es), gdctx = tu_galloc(n * H * es), gdqkv = tu_galloc(n * 3 * H * es);
    CK(cudaMemset(gdx1.p, 0, n * H * es));
    CK(cudaMemset(gdx.p, 0, n * H * es));
    CK(tbert_cuda_layernorm_bwd(gdz2.p, gdx1.p, GG(L_G2), GG(L_BE2), gz2.p, gm2.p, gr2.p, PP(L_G2), gR.p, gws.p, dt, N,
                                H, NULL));
    CK(tbert_cuda_linear_bwd(h, mode, gdh.p, 0, GG(L_WOUT), GG(L_BOUT), gh.p, PP(L_WOUT), gdz2.p, gws.p, N, IM, H,
                             NULL));
    CK(tbert_cuda_bias_gelu_bwd(gdh.p, gdh.p, ga.p, GG(L_BI), gws.p, dt, N, IM, NULL));
    CK(tbert_cuda_linear_bwd(h, mode, gdx1.p, 1, GG(L_WI), NULL, gx1.p, PP(L_WI), gdh.p, gws.p, N, H, IM, NULL));
    CK(tbert_cuda_layernorm_bwd(gdz1.p, gdx.p, GG(L_G1), GG(L_BE1), gz1.p, gm1.p, gr1.p, PP(L_G1), gdx1.p, gws.p, dt, N,
                                H, NULL));
    CK(tbert_cuda_linear_bwd(h, mode, gdctx.p, 0, GG(L_WO), GG(L_BO), gctx.p, PP(L_WO), gdz1.p, gws.p, N, H, H, NULL));
    CK(tbert_cuda_attention_bwd(h, gdqkv.p, gqkv.p, gP.p, gdctx.p, gaws.p, off, gcu.p, gpo.p, NULL, dt, B, heads, d,
                                scale, NULL));
    CK(tbert_cuda_linear_bwd(h, mode, gdx.p, 1, GG(L_WQKV), GG(L_BQKV), gx.p, PP(L_WQKV), gdqkv.p, gws.p, N, H, 3 * H,
                             NULL));
#undef PP
#undef GG

    /* the CPU chain (float32, OpenBLAS) on the same (rounded) inputs */
    int Lmax = 0;
    for (int b = 0; b < B; b++) Lmax = off[b + 1] - off[b] > Lmax ? off[b + 1] - off[b] : Lmax;
    float *qkv = tu_xcalloc(n * 3 * H + 1, 4), *ctx = tu_xcalloc(n * H + 1, 4), *z1 = tu_xcalloc(n * H + 1, 4),
          *x1 = tu_xcalloc(n * H + 1, 4);
    float *a = tu_xcalloc(n * IM + 1, 4), *hh = tu_xcalloc(n * IM + 1, 4), *z2 = tu_xcalloc(n * H + 1, 4),
          *y = tu_xcalloc(n * H + 1, 4);
    float *m1 = tu_xcalloc(n + 1, 4), *r1 = tu_xcalloc(n + 1, 4), *m2 = tu_xcalloc(n + 1, 4), *r2 = tu_xcalloc(n + 1, 4);
    float *prob = tu_xcalloc(np + 1, 4), *G[L_COUNT];
    for (int k = 0; k < L_COUNT; k++) G[k] = tu_xcalloc(sz[k], 4);
    float *dx = tu_xcalloc(n * H + 1, 4), *dz2 = tu_xcalloc(n * H + 1, 4), *dx1 = tu_xcalloc(n * H + 1, 4),
          *dh = tu_xcalloc(n * IM + 1, 4);
    float *da = tu_xcalloc(n * IM + 1, 4), *tmp = tu_xcalloc(n * IM + 1, 4), *dz1 = tu_xcalloc(n * H + 1, 4);
    float *dctx = tu_xcalloc(n * H + 1, 4), *dqkv = tu_xcalloc(n * 3 * H + 1, 4);
    float *ws = tu_xcalloc((size_t)3 * H * IM + 3 * H + (size_t)Lmax * Lmax + (size_t)IM * H + IM, 4);
    {
        /* forward */
        for (size_t i = 0; i < n; i++)
            for (int o = 0; o < 3 * H; o++) {
                float acc = 0.0f;
                for (int c = 0; c < H; c++) acc += x[i * H + c] * prm[L_WQKV][(size_t)o * H + c];
                qkv[i * 3 * H + o] = acc + prm[L_BQKV][o];
            }
        tbert_fwd_attention(B, off, H, heads, scale, qkv, ctx, prob);
        for (size_t i = 0; i < n; i++)
            for (int o = 0; o < H; o++) {
                float acc = 0.0f;
                for (int c = 0; c < H; c++) acc += ctx[i * H + c] * prm[L_WO][(size_t)o * H + c];
                z1[i * H + o] = acc + x[i * H + o];
            }
        tbert_fwd_layernorm(n, H, z1, prm[L_BO], prm[L_G1], prm[L_BE1], eps, x1, m1, r1);
        for (size_t i = 0; i < n; i++)
            for (int o = 0; o < IM; o++) {
                float acc = 0.0f;
                for (int c = 0; c < H; c++) acc += x1[i * H + c] * prm[L_WI][(size_t)o * H + c];
                a[i * IM + o] = acc;
            }
        tbert_fwd_bias_gelu(n, IM, a, prm[L_BI], hh);
        for (size_t i = 0; i < n; i++)
            for (int o = 0; o < H; o++) {
                float acc = 0.0f;
                for (int c = 0; c < IM; c++) acc += hh[i * IM + c] * prm[L_WOUT][(size_t)o * IM + c];
                z2[i * H + o] = acc + x1[i * H + o];
            }
        tbert_fwd_layernorm(n, H, z2, prm[L_BOUT], prm[L_G2], prm[L_BE2], eps, y, m2, r2);
        /* backward */
        tbert_bwd_layernorm(n, H, z2, m2, r2, prm[L_G2], R, dz2, dx1, G[L_G2], G[L_BE2], ws);
        tbert_bwd_linear(n, IM, H, hh, prm[L_WOUT], dz2, dh, G[L_WOUT], G[L_BOUT]);
        tbert_bwd_bias_gelu(n, IM, a, dh, da, G[L_BI]);
        tbert_bwd_linear(n, H, IM, x1, prm[L_WI], da, tmp, G[L_WI], NULL);
        for (size_t i = 0; i < n * H; i++) dx1[i] += tmp[i];
        tbert_bwd_layernorm(n, H, z1, m1, r1, prm[L_G1], dx1, dz1, dx, G[L_G1], G[L_BE1], ws);
        tbert_bwd_linear(n, H, H, ctx, prm[L_WO], dz1, dctx, G[L_WO], G[L_BO]);
        tbert_bwd_attention(B, off, H, heads, scale, qkv, prob, dctx, dqkv, ws);
        tbert_bwd_linear(n, H, 3 * H, x, prm[L_WQKV], dqkv, tmp, G[L_WQKV], G[L_BQKV]);
        for (size_t i = 0; i < n * H; i++) dx[i] += tmp[i];
    }
    char what[160];
    float *got = down(&gy, n * H, dt, "layer y");
    snprintf(what, sizeof what, "layer %s y B=%d N=%d heads=%d d=%d", tu_dt_name(dt), B, N, heads, d);
    expect_grad(what, got, y, n * H, dt);
    free(got);
    got = down(&gdx, n * H, dt, "layer dx");
    snprintf(what, sizeof what, "layer %s dx B=%d N=%d heads=%d d=%d", tu_dt_name(dt), B, N, heads, d);
    expect_grad(what, got, dx, n * H, dt);
    free(got);
    for (int k = 0; k < L_COUNT; k++) {
        got = down(&ggrad[k], sz[k], TBERT_CUDA_F32, pname[k]);
        snprintf(what, sizeof what, "layer %s d%s B=%d N=%d heads=%d d=%d", tu_dt_name(dt), pname[k], B, N, heads, d);
        expect_grad(what, got, G[k], sz[k], dt);
        free(got);
    }
    tu_gcheck(&gws, "layer ws");
    tu_gcheck(&gaws, "layer attention ws");
    for (int k = 0; k < L_COUNT; k++) free(prm[k]), free(G[k]), tu_gfree(&gprm[k]), tu_gfree(&ggrad[k]);
    free(off), free(p_off), free(x), free(R), free(qkv), free(ctx), free(z1), free(x1), free(a), free(hh), free(z2);
    free(y), free(m1), free(r1), free(m2), free(r2), free(prob), free(dx), free(dz2), free(dx1), free(dh), free(da);
    free(tmp), free(dz1), free(dctx), free(dqkv), free(ws);
    tu_gbuf *all[] = {&gx, &gR, &gcu, &gpo, &gqkv, &gctx, &gP, &gz1, &gx1, &ga, &gh, &gz2, &gy, &gm1, &gr1, &gm2, &gr2,
                   &gaws, &gws, &gdz2, &gdx1, &gdh, &gdz1, &gdx, &gdctx, &gdqkv};
    for (size_t k = 0; k < sizeof all / sizeof *all; k++) tu_gfree(all[k]);
}

static void test_layer(void **state) {
    (void)state;
    tu_rng r = {g_seed ^ 10};
    cublasHandle_t h = make_handle();
    for (int k = 0; k < 2; k++) {
        tbert_cuda_dtype dt = k ? TBERT_CUDA_BF16 : TBERT_CUDA_F32;
        check_layer(&r, h, dt, 6, 77, 2, 16, 97);
        check_layer(&r, h, dt, 4, 9, 3, 5, 31);
    }
    free_handle(h);
}

/* Bad shapes are refused before any launch. */
static void test_bad_shapes(void **state) {
    (void)state;
    int32_t cu[3] = {0, 5, 3}; /* decreasing */
    int64_t po[3] = {0, 25, 25};
    float f = 0.0f;
    cublasHandle_t h = make_handle();
    assert_int_equal(tbert_cuda_attention_bwd(h, &f, &f + 1, &f, &f, &f, cu, (const int32_t *)&f, po, NULL,
                                              TBERT_CUDA_F32, 2, 1, 4, 1.0f, NULL),
                     TBERT_CUDA_EBADSHAPE);
    assert_int_equal(tbert_cuda_layernorm_bwd(&f, &f, &f, &f, &f, &f, &f, &f, &f, &f, TBERT_CUDA_F32, 1, 9000, NULL),
                     TBERT_CUDA_EBADSHAPE);
    assert_int_equal(tbert_cuda_bias_gelu_bwd(&f, &f, &f, &f, &f, (tbert_cuda_dtype)7, 1, 1, NULL),
                     TBERT_CUDA_EBADSHAPE);
    assert_int_equal(
        tbert_cuda_linear_bwd(h, (tbert_cuda_gemm_mode)9, &f, 0, &f, NULL, &f, &f, &f, NULL, 1, 1, 1, NULL),
        TBERT_CUDA_EBADSHAPE);
    free_handle(h);
}
#endif /* TBERT_HAVE_CUDA */

int main(void) {
    tu_require_cuda_device("test_cuda_backward");
#if !TBERT_HAVE_CUDA
    return 1; /* not reached */
#else
    g_seed = tu_seed_from_env("test_cuda_backward");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_colsum),    cmocka_unit_test(test_linear),    cmocka_unit_test(test_gelu),
        cmocka_unit_test(test_layernorm), cmocka_unit_test(test_attention), cmocka_unit_test(test_pooling),
        cmocka_unit_test(test_pooler),    cmocka_unit_test(test_embeddings), cmocka_unit_test(test_dropout),
        cmocka_unit_test(test_layer),     cmocka_unit_test(test_bad_shapes),
    };
    return cmocka_run_group_tests_name("cuda backward kernels", tests, NULL, NULL) ? 1 : 0;
#endif
}
