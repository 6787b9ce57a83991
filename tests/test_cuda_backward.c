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
    if (!(mx > 0)) fail_msg("%s: the reference is all zeros (vacuous check; seed %llu)", what, (unsigned long long)g_seed);
    if (bad || !(ratio < lim))
        fail_msg("%s: %zu elements outside tolerance, norm ratio %.3g (limit %.0g; seed %llu)", what, bad, ratio, lim,
                 (unsigned long long)g_seed);
}

/* ---- bf16 on the host (round to nearest even, as __float2bfloat16) ---- */
static uint16_t f2bf(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static float bf2f(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static size_t dt_size(tbert_cuda_dtype dt) {
    return dt == TBERT_CUDA_BF16 ? 2 : 4;
}
static const char *dt_name(tbert_cuda_dtype dt) {
    return dt == TBERT_CUDA_BF16 ? "bf16" : "fp32";
}

/* ---- guarded device buffers ---- */
enum { GUARD = 256 };
static const unsigned char SENTINEL = 0xA5;
typedef struct {
    unsigned char *base;
    size_t bytes;
    void *p;
} gbuf;

static gbuf g_alloc(size_t bytes) {
    gbuf g = {NULL, bytes, NULL};
    CK(cudaMalloc((void **)&g.base, bytes + 2 * GUARD));
    CK(cudaMemset(g.base, SENTINEL, GUARD));
    CK(cudaMemset(g.base + GUARD + bytes, SENTINEL, GUARD));
    CK(cudaMemset(g.base + GUARD, 0xFF, bytes)); /* NaN poison */
    g.p = g.base + GUARD;
    return g;
}
static void g_check(const gbuf *g, const char *what) {
    unsigned char front[GUARD], back[GUARD];
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(front, g->base, GUARD, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(back, g->base + GUARD + g->bytes, GUARD, cudaMemcpyDeviceToHost));
    for (int i = 0; i < GUARD; i++)
        if (front[i] != SENTINEL || back[i] != SENTINEL) fail_msg("%s: write outside the buffer", what);
}
static void g_free(gbuf *g) {
    if (g->base) CK(cudaFree(g->base));
    g->base = NULL;
}
/* Uploads n floats as dt; for bf16 the host values are rounded in place so that the CPU twin sees what the device
 * sees. */
static gbuf up_act(float *host, size_t n, tbert_cuda_dtype dt) {
    gbuf g = g_alloc(n * dt_size(dt));
    if (dt == TBERT_CUDA_BF16) {
        uint16_t *h = malloc(n * 2 + 2);
        assert_non_null(h);
        for (size_t i = 0; i < n; i++) {
            h[i] = f2bf(host[i]);
            host[i] = bf2f(h[i]);
        }
        CK(cudaMemcpy(g.p, h, n * 2, cudaMemcpyHostToDevice));
        free(h);
    } else {
        CK(cudaMemcpy(g.p, host, n * 4, cudaMemcpyHostToDevice));
    }
    return g;
}
static gbuf up_f32(const float *host, size_t n) {
    gbuf g = g_alloc(n * 4);
    CK(cudaMemcpy(g.p, host, n * 4, cudaMemcpyHostToDevice));
    return g;
}
static gbuf up_bytes(const void *host, size_t bytes) {
    gbuf g = g_alloc(bytes);
    CK(cudaMemcpy(g.p, host, bytes, cudaMemcpyHostToDevice));
    return g;
}
/* Downloads n elements of dt as float (caller frees); checks the guards first. */
static float *down(const gbuf *g, size_t n, tbert_cuda_dtype dt, const char *what) {
    g_check(g, what);
    float *out = malloc(n * 4 + 4);
    assert_non_null(out);
    if (dt == TBERT_CUDA_BF16) {
        uint16_t *h = malloc(n * 2 + 2);
        assert_non_null(h);
        CK(cudaMemcpy(h, g->p, n * 2, cudaMemcpyDeviceToHost));
        for (size_t i = 0; i < n; i++) out[i] = bf2f(h[i]);
        free(h);
    } else {
        CK(cudaMemcpy(out, g->p, n * 4, cudaMemcpyDeviceToHost));
    }
    return out;
}
/* Rounds n host floats to what a bf16 buffer holds (no-op for fp32). */
static void round_dt(float *x, size_t n, tbert_cuda_dtype dt) {
    if (dt == TBERT_CUDA_BF16)
        for (size_t i = 0; i < n; i++) x[i] = bf2f(f2bf(x[i]));
}

static float *frand(tu_rng *r, size_t n, float scale) {
    float *v = malloc(n * sizeof *v + 4);
    assert_non_null(v);
    for (size_t i = 0; i < n; i++) v[i] = scale * tu_normal(r);
    return v;
}
static float *fdup(const float *x, size_t n) {
    float *v = malloc(n * sizeof *v + 4);
    assert_non_null(v);
    memcpy(v, x, n * sizeof *v);
    return v;
}
static int rand_int(tu_rng *r, int lo, int hi) { /* inclusive */
    return lo + (int)(tu_next(r) % (uint64_t)(hi - lo + 1));
}

/* A packed batch: B sequences, the first of length maxT, then 1, then 0 (all padding), the rest random odd lengths
 * in [1, maxT] and one more 0 at the end. off [B+1] (caller frees); *N = off[B]. */
static int32_t *make_batch(tu_rng *r, int B, int maxT, int *N) {
    int32_t *off = malloc(((size_t)B + 1) * sizeof *off);
    assert_non_null(off);
    off[0] = 0;
    for (int b = 0; b < B; b++) {
        int L = rand_int(r, 1, maxT) | 1;
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

/* ================= kernels ================= */

/* colsum: the deterministic chunked column sums, bit-identical to the CPU's tree (pure float adds, same order) */
static void test_colsum(void **state) {
    (void)state;
    tu_rng r = {g_seed ^ 1};
    const int shapes[][2] = {{1, 7}, {64, 33}, {65, 129}, {1000, 48}};
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
        const int rows = shapes[k][0], cols = shapes[k][1];
        float *a = frand(&r, (size_t)rows * cols, 1.0f), *acc = frand(&r, (size_t)cols, 1.0f);
        float *ref = fdup(acc, (size_t)cols);
        /* CPU: the linear backward's db (in = 1): db += column sums of dy in TBERT_BWD_CHUNK chunks */
        float *x = frand(&r, (size_t)rows, 1.0f), *W = frand(&r, (size_t)cols, 1.0f), *dW = calloc((size_t)cols, 4);
        float *ws = malloc(((size_t)cols + (size_t)cols) * 4);
        assert_non_null(dW), assert_non_null(ws);
        tbert_bwd_linear((size_t)rows, 1, cols, x, W, a, NULL, dW, ref, ws);
        gbuf da = up_f32(a, (size_t)rows * cols), dacc = up_f32(acc, (size_t)cols);
        gbuf dws = g_alloc(tbert_cuda_colsum_ws_floats((size_t)rows, cols) * 4);
        CK(tbert_cuda_colsum_acc(dacc.p, da.p, TBERT_CUDA_F32, rows, cols, dws.p, NULL));
        float *got = down(&dacc, (size_t)cols, TBERT_CUDA_F32, "colsum");
        g_check(&dws, "colsum ws");
        char what[96];
        snprintf(what, sizeof what, "colsum rows=%d cols=%d", rows, cols);
        expect_grad(what, got, ref, (size_t)cols, TBERT_CUDA_F32);
        if (memcmp(got, ref, (size_t)cols * 4) != 0) fail_msg("%s: not bit-identical to the CPU's chunked sums", what);
        free(a), free(acc), free(ref), free(x), free(W), free(dW), free(ws), free(got);
        g_free(&da), g_free(&dacc), g_free(&dws);
    }
}

static void check_linear(tu_rng *r, cublasHandle_t h, tbert_cuda_gemm_mode mode, int rows, int in, int out,
                         bool with_dx) {
    const tbert_cuda_dtype dt = mode == TBERT_CUDA_GEMM_BF16 ? TBERT_CUDA_BF16 : TBERT_CUDA_F32;
    const size_t nx = (size_t)rows * in, nw = (size_t)out * in, ny = (size_t)rows * out;
    float *x = frand(r, nx, 1.0f), *W = frand(r, nw, 0.2f), *dy = frand(r, ny, 1.0f);
    float *dW0 = frand(r, nw, 1.0f), *db0 = frand(r, (size_t)out, 1.0f);
    gbuf gx = up_act(x, nx, dt), gW = up_act(W, nw, dt), gdy = up_act(dy, ny, dt); /* rounds x, W, dy for bf16 */
    gbuf gdx = g_alloc(nx * dt_size(dt)), gdW = up_f32(dW0, nw), gdb = up_f32(db0, (size_t)out);
    gbuf gws = g_alloc(tbert_cuda_colsum_ws_floats((size_t)rows, out) * 4);
    CK(tbert_cuda_linear_bwd(h, mode, with_dx ? gdx.p : NULL, gdW.p, gdb.p, gx.p, gW.p, gdy.p, gws.p, rows, in, out,
                             NULL));
    float *rdx = malloc(nx * 4 + 4), *rdW = fdup(dW0, nw), *rdb = fdup(db0, (size_t)out), *ws = malloc((nw + out) * 4);
    assert_non_null(rdx), assert_non_null(ws);
    tbert_bwd_linear((size_t)rows, in, out, x, W, dy, rdx, rdW, rdb, ws);
    round_dt(rdx, nx, dt);
    char what[128];
    if (with_dx) {
        float *got = down(&gdx, nx, dt, "linear dx");
        snprintf(what, sizeof what, "linear %s dx rows=%d in=%d out=%d", dt_name(dt), rows, in, out);
        expect_grad(what, got, rdx, nx, dt);
        free(got);
    }
    float *got = down(&gdW, nw, TBERT_CUDA_F32, "linear dW");
    snprintf(what, sizeof what, "linear %s dW += rows=%d in=%d out=%d", dt_name(dt), rows, in, out);
    /* dW starts from random values: the check is on the increment, where the error lies */
    for (size_t i = 0; i < nw; i++) got[i] -= dW0[i], rdW[i] -= dW0[i];
    expect_grad(what, got, rdW, nw, dt);
    free(got);
    got = down(&gdb, (size_t)out, TBERT_CUDA_F32, "linear db");
    for (int i = 0; i < out; i++) got[i] -= db0[i], rdb[i] -= db0[i];
    snprintf(what, sizeof what, "linear %s db += rows=%d out=%d", dt_name(dt), rows, out);
    expect_grad(what, got, rdb, (size_t)out, dt);
    free(got);
    g_check(&gws, "linear ws");
    free(x), free(W), free(dy), free(dW0), free(db0), free(rdx), free(rdW), free(rdb), free(ws);
    g_free(&gx), g_free(&gW), g_free(&gdy), g_free(&gdx), g_free(&gdW), g_free(&gdb), g_free(&gws);
}

static void test_linear(void **state) {
    (void)state;
    tu_rng r = {g_seed ^ 2};
    cublasHandle_t h = make_handle();
    for (int k = 0; k < 2; k++) {
        tbert_cuda_gemm_mode mode = k ? TBERT_CUDA_GEMM_BF16 : TBERT_CUDA_GEMM_FP32;
        check_linear(&r, h, mode, 1, 48, 37, true);
        check_linear(&r, h, mode, 65, 33, 96, true);
        check_linear(&r, h, mode, 701, 48, 144, true);
        check_linear(&r, h, mode, 130, 96, 48, false);
    }
    cublasDestroy(h);
}

static void check_gelu(tu_rng *r, tbert_cuda_dtype dt, int rows, int cols, bool alias) {
    const size_t n = (size_t)rows * cols;
    float *a = frand(r, n, 2.0f), *dh = frand(r, n, 1.0f), *db0 = frand(r, (size_t)cols, 1.0f);
    gbuf ga = up_act(a, n, dt), gdh = up_act(dh, n, dt), gda = alias ? gdh : g_alloc(n * dt_size(dt));
    gbuf gdb = up_f32(db0, (size_t)cols), gws = g_alloc(tbert_cuda_colsum_ws_floats((size_t)rows, cols) * 4);
    CK(tbert_cuda_bias_gelu_bwd(gda.p, gdh.p, ga.p, gdb.p, gws.p, dt, rows, cols, NULL));
    float *rda = malloc(n * 4 + 4), *rdb = fdup(db0, (size_t)cols);
    assert_non_null(rda);
    if (dt == TBERT_CUDA_BF16) {
        /* the device rounds da to bf16 before summing it: the CPU twin's bias sum gets the same rounded da */
        tbert_bwd_bias_gelu((size_t)rows, cols, a, dh, rda, NULL);
        round_dt(rda, n, dt);
        float *one = malloc((size_t)rows * 4 + 4), *wz = calloc((size_t)cols, 4), *dWz = calloc((size_t)cols, 4),
              *ws = malloc((size_t)cols * 2 * 4);
        for (int i = 0; i < rows; i++) one[i] = 1.0f;
        tbert_bwd_linear((size_t)rows, 1, cols, one, wz, rda, NULL, dWz, rdb, ws);
        free(one), free(wz), free(dWz), free(ws);
    } else {
        tbert_bwd_bias_gelu((size_t)rows, cols, a, dh, rda, rdb);
    }
    char what[128];
    float *got = down(&gda, n, dt, "gelu da");
    snprintf(what, sizeof what, "bias_gelu_bwd %s da rows=%d cols=%d%s", dt_name(dt), rows, cols, alias ? " (in place)" : "");
    expect_grad(what, got, rda, n, dt);
    free(got);
    got = down(&gdb, (size_t)cols, TBERT_CUDA_F32, "gelu dbias");
    for (int i = 0; i < cols; i++) got[i] -= db0[i], rdb[i] -= db0[i];
    snprintf(what, sizeof what, "bias_gelu_bwd %s dbias += rows=%d cols=%d", dt_name(dt), rows, cols);
    expect_grad(what, got, rdb, (size_t)cols, TBERT_CUDA_F32); /* both sum the same da: fp32 tolerance */
    free(got);
    free(a), free(dh), free(db0), free(rda), free(rdb);
    g_free(&ga), g_free(&gdh), g_free(&gdb), g_free(&gws);
    if (!alias) g_free(&gda);
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
    float *out = frand(&r, n, 1.0f), *dout = frand(&r, n, 1.0f), *ref = malloc(n * 4);
    for (size_t i = 0; i < n; i++) out[i] = tanhf(out[i]), ref[i] = dout[i] * (1.0f - out[i] * out[i]);
    gbuf go = up_f32(out, n), gd = up_f32(dout, n), gda = g_alloc(n * 4);
    CK(tbert_cuda_tanh_bwd(gda.p, gd.p, go.p, n, NULL));
    float *got = down(&gda, n, TBERT_CUDA_F32, "tanh_bwd");
    expect_grad("tanh_bwd n=1001", got, ref, n, TBERT_CUDA_F32);
    free(out), free(dout), free(ref), free(got);
    g_free(&go), g_free(&gd), g_free(&gda);
}

static void check_layernorm(tu_rng *r, tbert_cuda_dtype dt, int rows, int H, bool with_bias, bool with_res, bool alias) {
    const size_t n = (size_t)rows * H;
    float *z = frand(r, n, 1.5f), *bias = frand(r, (size_t)H, 0.5f), *g = frand(r, (size_t)H, 0.5f);
    float *beta = frand(r, (size_t)H, 0.5f), *dy = frand(r, n, 1.0f), *dres0 = frand(r, n, 1.0f);
    float *dg0 = frand(r, (size_t)H, 1.0f), *dbt0 = frand(r, (size_t)H, 1.0f);
    for (int c = 0; c < H; c++) g[c] += 1.0f;
    char what[160];
    /* forward twin: z += bias (kept), y, mean, rstd */
    gbuf gz = up_act(z, n, dt), gb = up_f32(bias, (size_t)H), gg = up_f32(g, (size_t)H), gbeta = up_f32(beta, (size_t)H);
    gbuf gy = g_alloc(n * dt_size(dt)), gmean = g_alloc((size_t)rows * 4), grstd = g_alloc((size_t)rows * 4);
    CK(tbert_cuda_layernorm_fwd(gy.p, gmean.p, grstd.p, gz.p, with_bias ? gb.p : NULL, gg.p, gbeta.p, 1e-12f, dt, rows,
                                H, NULL));
    float *ry = malloc(n * 4 + 4), *rmean = malloc((size_t)rows * 4 + 4), *rrstd = malloc((size_t)rows * 4 + 4);
    tbert_fwd_layernorm((size_t)rows, H, z, with_bias ? bias : NULL, g, beta, 1e-12f, ry, rmean, rrstd);
    round_dt(z, n, dt); /* the device keeps z + bias in dt */
    round_dt(ry, n, dt);
    float *got = down(&gz, n, dt, "layernorm z");
    snprintf(what, sizeof what, "layernorm_fwd %s z%s rows=%d H=%d", dt_name(dt), with_bias ? " + bias" : "", rows, H);
    expect_grad(what, got, z, n, dt);
    free(got);
    got = down(&gy, n, dt, "layernorm y");
    snprintf(what, sizeof what, "layernorm_fwd %s y rows=%d H=%d", dt_name(dt), rows, H);
    expect_grad(what, got, ry, n, dt);
    free(got);
    /* the backward's saved statistics: the device's own (bf16: of its rounded z); the CPU twin gets the same */
    float *mean = down(&gmean, (size_t)rows, TBERT_CUDA_F32, "layernorm mean");
    float *rstd = down(&grstd, (size_t)rows, TBERT_CUDA_F32, "layernorm rstd");
    snprintf(what, sizeof what, "layernorm_fwd %s mean rows=%d H=%d", dt_name(dt), rows, H);
    expect_grad(what, mean, rmean, (size_t)rows, dt);
    snprintf(what, sizeof what, "layernorm_fwd %s rstd rows=%d H=%d", dt_name(dt), rows, H);
    expect_grad(what, rstd, rrstd, (size_t)rows, dt);

    /* backward */
    gbuf gdy = up_act(dy, n, dt), gdres = with_res ? up_act(dres0, n, dt) : (gbuf){0};
    gbuf gdz = alias ? gdy : g_alloc(n * dt_size(dt));
    gbuf gdg = up_f32(dg0, (size_t)H), gdbt = up_f32(dbt0, (size_t)H);
    gbuf gws = g_alloc(2 * tbert_cuda_colsum_ws_floats((size_t)rows, H) * 4);
    CK(tbert_cuda_layernorm_bwd(gdz.p, with_res ? gdres.p : NULL, gdg.p, gdbt.p, gz.p, gmean.p, grstd.p, gg.p, gdy.p,
                                gws.p, dt, rows, H, NULL));
    float *rdz = malloc(n * 4 + 4), *rdres = fdup(dres0, n), *rdg = fdup(dg0, (size_t)H), *rdbt = fdup(dbt0, (size_t)H);
    float *ws = malloc((size_t)H * 2 * 4);
    assert_non_null(rdz), assert_non_null(ws);
    tbert_bwd_layernorm((size_t)rows, H, z, mean, rstd, g, dy, rdz, with_res ? rdres : NULL, rdg, rdbt, ws);
    round_dt(rdz, n, dt);
    round_dt(rdres, n, dt);
    got = down(&gdz, n, dt, "layernorm dz");
    snprintf(what, sizeof what, "layernorm_bwd %s dz rows=%d H=%d%s", dt_name(dt), rows, H, alias ? " (dz = dy)" : "");
    expect_grad(what, got, rdz, n, dt);
    free(got);
    if (with_res) {
        got = down(&gdres, n, dt, "layernorm dres");
        for (size_t i = 0; i < n; i++) got[i] -= dres0[i], rdres[i] -= dres0[i];
        snprintf(what, sizeof what, "layernorm_bwd %s dres += rows=%d H=%d", dt_name(dt), rows, H);
        expect_grad(what, got, rdres, n, dt);
        free(got);
    }
    got = down(&gdg, (size_t)H, TBERT_CUDA_F32, "layernorm dgamma");
    for (int c = 0; c < H; c++) got[c] -= dg0[c], rdg[c] -= dg0[c];
    snprintf(what, sizeof what, "layernorm_bwd %s dgamma += rows=%d H=%d", dt_name(dt), rows, H);
    expect_grad(what, got, rdg, (size_t)H, dt);
    free(got);
    got = down(&gdbt, (size_t)H, TBERT_CUDA_F32, "layernorm dbeta");
    for (int c = 0; c < H; c++) got[c] -= dbt0[c], rdbt[c] -= dbt0[c];
    snprintf(what, sizeof what, "layernorm_bwd %s dbeta += rows=%d H=%d", dt_name(dt), rows, H);
    expect_grad(what, got, rdbt, (size_t)H, dt);
    free(got);
    g_check(&gws, "layernorm ws");
    free(z), free(bias), free(g), free(beta), free(dy), free(dres0), free(dg0), free(dbt0), free(ry), free(rmean);
    free(rrstd), free(mean), free(rstd), free(rdz), free(rdres), free(rdg), free(rdbt), free(ws);
    g_free(&gz), g_free(&gb), g_free(&gg), g_free(&gbeta), g_free(&gy), g_free(&gmean), g_free(&grstd);
    g_free(&gdy), g_free(&gdg), g_free(&gdbt), g_free(&gws);
    if (with_res) g_free(&gdres);
    if (!alias) g_free(&gdz);
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

/* attention: the forward twin against tbert_fwd_attention (P and ctx), then the backward from the CPU's P (the
 * same saved input on both sides; rounded to bf16 on both in bf16) against tbert_bwd_attention. */
static void check_attention(tu_rng *r, cublasHandle_t h, tbert_cuda_dtype dt, int B, int maxT, int heads, int d) {
    int N = 0;
    int32_t *off = make_batch(r, B, maxT, &N);
    const int H = heads * d;
    const float scale = 1.0f / sqrtf((float)d);
    int64_t *p_off = malloc(((size_t)B + 1) * sizeof *p_off);
    assert_non_null(p_off);
    const size_t np = (size_t)tbert_cuda_attn_probs_offsets(p_off, off, B, heads);
    if (np != tbert_attn_probs_size(B, off, heads)) fail_msg("P sizes differ: %zu vs %zu", np, tbert_attn_probs_size(B, off, heads));
    const size_t nqkv = (size_t)N * 3 * H, nctx = (size_t)N * H, nws = tbert_cuda_attention_bwd_ws_floats((int64_t)np, dt);
    float *qkv = frand(r, nqkv, 1.0f), *dctx = frand(r, nctx, 1.0f);
    float *rctx = malloc(nctx * 4 + 4), *rP = malloc(np * 4 + 4), *rdqkv = malloc(nqkv * 4 + 4);
    int Lmax = 0;
    for (int b = 0; b < B; b++) Lmax = off[b + 1] - off[b] > Lmax ? off[b + 1] - off[b] : Lmax;
    float *ws = malloc((size_t)Lmax * Lmax * 4 + 4);
    assert_non_null(rctx), assert_non_null(rP), assert_non_null(rdqkv), assert_non_null(ws);
    gbuf gqkv = up_act(qkv, nqkv, dt), gdctx = up_act(dctx, nctx, dt); /* round qkv, dctx for bf16 */
    gbuf gcu = up_bytes(off, ((size_t)B + 1) * 4), gpo = up_bytes(p_off, ((size_t)B + 1) * 8);
    tbert_fwd_attention(B, off, H, heads, scale, qkv, rctx, rP);

    gbuf gctx = g_alloc(nctx * dt_size(dt)), gP = g_alloc(np * dt_size(dt)), gws = g_alloc(nws * 4);
    CK(tbert_cuda_attention_fwd_probs(h, gctx.p, gP.p, gqkv.p, gws.p, off, gcu.p, gpo.p, dt, B, heads, d, scale, NULL));
    char what[160];
    float *got = down(&gP, np, dt, "attention P");
    snprintf(what, sizeof what, "attention_fwd_probs %s P B=%d N=%d heads=%d d=%d", dt_name(dt), B, N, heads, d);
    expect_grad(what, got, rP, np, dt);
    free(got);
    got = down(&gctx, nctx, dt, "attention ctx");
    snprintf(what, sizeof what, "attention_fwd_probs %s ctx B=%d N=%d heads=%d d=%d", dt_name(dt), B, N, heads, d);
    expect_grad(what, got, rctx, nctx, dt);
    free(got);
    g_check(&gws, "attention fwd ws");
    if (dt == TBERT_CUDA_F32) { /* in place: ws = P */
        CK(tbert_cuda_fill(gP.p, -1.0f, (int)np, NULL));
        CK(tbert_cuda_attention_fwd_probs(h, gctx.p, gP.p, gqkv.p, gP.p, off, gcu.p, gpo.p, dt, B, heads, d, scale, NULL));
        got = down(&gP, np, dt, "attention P in place");
        snprintf(what, sizeof what, "attention_fwd_probs fp32 P (ws = P) B=%d N=%d heads=%d d=%d", B, N, heads, d);
        expect_grad(what, got, rP, np, dt);
        free(got);
    }

    gbuf gPc = up_act(rP, np, dt), gdqkv = g_alloc(nqkv * dt_size(dt)), gws2 = g_alloc(nws * 4);
    tbert_bwd_attention(B, off, H, heads, scale, qkv, rP, dctx, rdqkv, ws); /* rP as the device holds it */
    round_dt(rdqkv, nqkv, dt);
    CK(tbert_cuda_attention_bwd(h, gdqkv.p, gqkv.p, gPc.p, gdctx.p, gws2.p, off, gcu.p, gpo.p, dt, B, heads, d, scale,
                                NULL));
    got = down(&gdqkv, nqkv, dt, "attention dqkv");
    g_check(&gws2, "attention ws");
    /* dq, dk, dv separately: each has its own scale */
    static const char *part[] = {"dQ", "dK", "dV"};
    float *gp = malloc(nctx * 4 + 4), *rp = malloc(nctx * 4 + 4);
    for (int k = 0; k < 3; k++) {
        for (int i = 0; i < N; i++) {
            memcpy(gp + (size_t)i * H, got + (size_t)i * 3 * H + (size_t)k * H, (size_t)H * 4);
            memcpy(rp + (size_t)i * H, rdqkv + (size_t)i * 3 * H + (size_t)k * H, (size_t)H * 4);
        }
        snprintf(what, sizeof what, "attention_bwd %s %s B=%d N=%d Lmax=%d heads=%d d=%d", dt_name(dt), part[k], B, N,
                 Lmax, heads, d);
        if (Lmax == 1 && k < 2) { /* one key: P = 1, so dS = 0 and dQ = dK = 0 exactly */
            for (size_t i = 0; i < nctx; i++)
                if (gp[i] != 0.0f || rp[i] != 0.0f) fail_msg("%s: [%zu] = %g (cpu %g), expected 0", what, i, gp[i], rp[i]);
            continue;
        }
        expect_grad(what, gp, rp, nctx, dt);
    }
    free(got), free(gp), free(rp);
    free(off), free(p_off), free(qkv), free(dctx), free(rctx), free(rP), free(rdqkv), free(ws);
    g_free(&gqkv), g_free(&gcu), g_free(&gpo), g_free(&gctx), g_free(&gP), g_free(&gPc), g_free(&gdctx);
    g_free(&gdqkv), g_free(&gws), g_free(&gws2);
}

static void test_attention(void **state) {
    (void)state;
    tu_rng r = {g_seed ^ 5};
    cublasHandle_t h = make_handle();
    for (int k = 0; k < 2; k++) {
        tbert_cuda_dtype dt = k ? TBERT_CUDA_BF16 : TBERT_CUDA_F32;
        check_attention(&r, h, dt, 7, 512, 2, 16); /* 512, 1, 0, ..., 0: lengths 0..512 in one batch */
        check_attention(&r, h, dt, 5, 67, 3, 7);   /* odd d, odd lengths */
        check_attention(&r, h, dt, 1, 1, 1, 5);    /* one token */
    }
    cublasDestroy(h);
}

static void check_pool(tu_rng *r, tbert_cuda_dtype dt, tbert_cuda_pool_kind kind, int B, int maxT, int H, int out_T) {
    int N = 0;
    int32_t *off = make_batch(r, B, maxT, &N);
    const size_t dim = kind == TBERT_CUDA_POOL_FLATTEN ? (size_t)out_T * H : (size_t)H;
    float *dout = frand(r, (size_t)B * dim, 1.0f), *ref = malloc((size_t)N * H * 4 + 4);
    assert_non_null(ref);
    tbert_bwd_pool((int)kind, B, off, H, out_T, dout, ref);
    round_dt(ref, (size_t)N * H, dt);
    gbuf gd = up_f32(dout, (size_t)B * dim), gcu = up_bytes(off, ((size_t)B + 1) * 4);
    gbuf gh = g_alloc((size_t)N * H * dt_size(dt));
    CK(tbert_cuda_pool_bwd(gh.p, gd.p, dim, gcu.p, kind, dt, B, N, H, out_T, NULL));
    float *got = down(&gh, (size_t)N * H, dt, "pool_bwd");
    static const char *names[] = {"mean", "cls", "flatten"};
    char what[128];
    snprintf(what, sizeof what, "pool_bwd %s %s B=%d N=%d H=%d out_T=%d", names[kind], dt_name(dt), B, N, H, out_T);
    expect_grad(what, got, ref, (size_t)N * H, dt);
    free(off), free(dout), free(ref), free(got);
    g_free(&gd), g_free(&gcu), g_free(&gh);
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
        float *x = frand(&r, n, 1.0f), *y = malloc(n * 4), *dy = frand(&r, n, 1.0f), *ref = malloc(n * 4);
        for (int j = 0; j < dim; j++) x[(size_t)2 * dim + j] = 0.0f;
        for (int i = 0; i < rows; i++) {
            double ss = 0;
            for (int j = 0; j < dim; j++) ss += (double)x[(size_t)i * dim + j] * x[(size_t)i * dim + j];
            double nrm = sqrt(ss);
            for (int j = 0; j < dim; j++)
                y[(size_t)i * dim + j] = ss > 0 ? (float)(x[(size_t)i * dim + j] / fmax(nrm, 1e-12)) : x[(size_t)i * dim + j];
        }
        tbert_bwd_l2_normalize((size_t)rows, (size_t)dim, x, y, dy, ref);
        gbuf gx = up_f32(x, n), gy = up_f32(y, n), gdy = up_f32(dy, n), gdx = g_alloc(n * 4);
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
        g_free(&gx), g_free(&gy), g_free(&gdy), g_free(&gdx);
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
        float *cls = frand(&r, n, 1.0f), *W = frand(&r, nw, 0.2f), *out = frand(&r, n, 1.0f), *dout = frand(&r, n, 1.0f);
        float *dW0 = frand(&r, nw, 1.0f), *db0 = frand(&r, (size_t)H, 1.0f);
        for (size_t i = 0; i < n; i++) out[i] = tanhf(out[i]);
        float *rdcls = malloc(n * 4), *rdW = fdup(dW0, nw), *rdb = fdup(db0, (size_t)H), *ws = malloc((nw + H + n) * 4);
        tbert_bwd_pooler(B, H, cls, W, out, dout, rdcls, rdW, rdb, ws);
        gbuf gcls = up_f32(cls, n), gW = up_f32(W, nw), gout = up_f32(out, n), gdout = up_f32(dout, n);
        gbuf gdcls = g_alloc(n * 4), gdW = up_f32(dW0, nw), gdb = up_f32(db0, (size_t)H);
        gbuf gws = g_alloc((n + tbert_cuda_colsum_ws_floats((size_t)B, H)) * 4);
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
        g_check(&gws, "pooler ws");
        free(cls), free(W), free(out), free(dout), free(dW0), free(db0), free(rdcls), free(rdW), free(rdb), free(ws);
        g_free(&gcls), g_free(&gW), g_free(&gout), g_free(&gdout), g_free(&gdcls), g_free(&gdW), g_free(&gdb);
        g_free(&gws);
    }
    cublasDestroy(h);
}

/* embeddings: no CPU twin yet (issue 15's embeddings backward is in src/ work of another branch): a float64
 * reference here, the scatter order checked by the emulator's schedules */
static void check_embeddings(tu_rng *r, int B, int maxT, int V, int H) {
    int N = 0;
    int32_t *off = make_batch(r, B, maxT, &N);
    int32_t *ids = malloc((size_t)N * 4 + 4), *posk = malloc((size_t)N * 4 + 4);
    assert_non_null(ids), assert_non_null(posk);
    for (int b = 0; b < B; b++)
        for (int i = off[b]; i < off[b + 1]; i++) {
            /* a small vocabulary slice so that ids repeat (several rows per table row), ids 0 and V-1 present */
            ids[i] = i % 5 == 0 ? V - 1 : rand_int(r, 0, V / 8);
            posk[i] = i - off[b];
        }
    ids[0] = 0;
    const size_t nz = (size_t)N * H;
    float *dz = frand(r, nz, 1.0f), *w0 = frand(r, (size_t)V * H, 1.0f), *p0 = frand(r, (size_t)maxT * H, 1.0f);
    float *t0 = frand(r, (size_t)H, 1.0f);
    double *rw = calloc((size_t)V * H, sizeof *rw), *rp = calloc((size_t)maxT * H, sizeof *rp), *rt = calloc((size_t)H, 8);
    assert_non_null(rw), assert_non_null(rp), assert_non_null(rt);
    for (int i = 0; i < N; i++)
        for (int c = 0; c < H; c++) {
            const double g = dz[(size_t)i * H + c];
            rw[(size_t)ids[i] * H + c] += g;
            rp[(size_t)posk[i] * H + c] += g;
            rt[c] += g;
        }
    /* the plans */
    int32_t *cnt = malloc((size_t)(V > maxT ? V : maxT) * 4), *perm[2], *start[2], *key[2];
    int nseg[2];
    gbuf gperm[2], gstart[2], gkey[2];
    tbert_cuda_scatter_plan plan[2];
    for (int k = 0; k < 2; k++) {
        perm[k] = malloc((size_t)N * 4 + 4), start[k] = malloc((size_t)N * 4 + 8), key[k] = malloc((size_t)N * 4 + 4);
        nseg[k] = tbert_cuda_scatter_plan_host(k ? posk : ids, N, k ? maxT : V, cnt, perm[k], start[k], key[k]);
        assert_true(nseg[k] > 0);
        gperm[k] = up_bytes(perm[k], (size_t)N * 4), gstart[k] = up_bytes(start[k], ((size_t)nseg[k] + 1) * 4);
        gkey[k] = up_bytes(key[k], (size_t)nseg[k] * 4);
        plan[k] = (tbert_cuda_scatter_plan){gperm[k].p, gstart[k].p, gkey[k].p, nseg[k]};
    }
    assert_int_equal(nseg[1], maxT); /* every position 0..maxT-1 occurs (the first sequence has maxT rows) */
    gbuf gdz = up_f32(dz, nz), gw = up_f32(w0, (size_t)V * H), gp = up_f32(p0, (size_t)maxT * H), gt = up_f32(t0, (size_t)H);
    gbuf gws = g_alloc(tbert_cuda_colsum_ws_floats((size_t)N, H) * 4);
    CK(tbert_cuda_embeddings_bwd(gw.p, gp.p, gt.p, gdz.p, &plan[0], &plan[1], gws.p, N, H, NULL));
    char what[128];
    float *got[3] = {down(&gw, (size_t)V * H, TBERT_CUDA_F32, "dword"), down(&gp, (size_t)maxT * H, TBERT_CUDA_F32, "dpos"),
                     down(&gt, (size_t)H, TBERT_CUDA_F32, "dtype")};
    const float *base[3] = {w0, p0, t0};
    double *ref[3] = {rw, rp, rt};
    const size_t cnts[3] = {(size_t)V * H, (size_t)maxT * H, (size_t)H};
    static const char *names[] = {"dword", "dpos", "dtype"};
    for (int k = 0; k < 3; k++) {
        float *inc = malloc(cnts[k] * 4), *rf = malloc(cnts[k] * 4);
        for (size_t i = 0; i < cnts[k]; i++) inc[i] = got[k][i] - base[k][i], rf[i] = (float)ref[k][i];
        snprintf(what, sizeof what, "embeddings_bwd %s += B=%d N=%d V=%d H=%d", names[k], B, N, V, H);
        expect_grad(what, inc, rf, cnts[k], TBERT_CUDA_F32);
        /* rows no token touched stay exactly as they were */
        for (size_t i = 0; i < cnts[k]; i++)
            if (ref[k][i] == 0.0 && got[k][i] != base[k][i]) fail_msg("%s: untouched element %zu changed", what, i);
        free(inc), free(rf), free(got[k]);
    }
    g_check(&gws, "embeddings ws");
    for (int k = 0; k < 2; k++) {
        free(perm[k]), free(start[k]), free(key[k]);
        g_free(&gperm[k]), g_free(&gstart[k]), g_free(&gkey[k]);
    }
    free(off), free(ids), free(posk), free(dz), free(w0), free(p0), free(t0), free(rw), free(rp), free(rt), free(cnt);
    g_free(&gdz), g_free(&gw), g_free(&gp), g_free(&gt), g_free(&gws);
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
    float *ref = malloc(n * 4), *x = frand(&r, n, 1.0f);
    gbuf gm = g_alloc(n * 4);
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
                gbuf gx = up_act(xr, n, dt); /* rounds xr for bf16 */
                CK(tbert_cuda_dropout(gx.p, dt, n, seeds[k], step, site, idx0[k], p, NULL));
                float *gotx = down(&gx, n, dt, "dropout");
                for (size_t i = 0; i < n; i++) {
                    float e = xr[i] * ref[i];
                    if (dt == TBERT_CUDA_BF16) e = bf2f(f2bf(e));
                    if (memcmp(&gotx[i], &e, 4) != 0)
                        fail_msg("dropout %s %s [%zu]: %g, expected %g", dt_name(dt), what, i, gotx[i], e);
                }
                free(gotx), free(xr);
                g_free(&gx);
            }
        }
    /* p = 0: the mask is all ones and the in-place form leaves x alone */
    CK(tbert_cuda_dropout_mask(gm.p, n, 1, 2, 3, 0, 0.0f, NULL));
    float *got = down(&gm, n, TBERT_CUDA_F32, "dropout mask p=0");
    for (size_t i = 0; i < n; i++)
        if (got[i] != 1.0f) fail_msg("dropout_mask p=0 [%zu] = %g", i, got[i]);
    free(got), free(ref), free(x);
    g_free(&gm);
}

/* Bad shapes are refused before any launch. */
static void test_bad_shapes(void **state) {
    (void)state;
    int32_t cu[3] = {0, 5, 3}; /* decreasing */
    int64_t po[3] = {0, 25, 25};
    float f = 0.0f;
    cublasHandle_t h = make_handle();
    assert_int_equal(tbert_cuda_attention_bwd(h, &f, &f + 1, &f, &f, &f, cu, (const int32_t *)&f, po, TBERT_CUDA_F32,
                                              2, 1, 4, 1.0f, NULL),
                     TBERT_CUDA_EBADSHAPE);
    assert_int_equal(tbert_cuda_layernorm_bwd(&f, &f, &f, &f, &f, &f, &f, &f, &f, &f, TBERT_CUDA_F32, 1, 9000, NULL),
                     TBERT_CUDA_EBADSHAPE);
    assert_int_equal(tbert_cuda_bias_gelu_bwd(&f, &f, &f, &f, &f, (tbert_cuda_dtype)7, 1, 1, NULL),
                     TBERT_CUDA_EBADSHAPE);
    assert_int_equal(tbert_cuda_linear_bwd(h, (tbert_cuda_gemm_mode)9, &f, &f, NULL, &f, &f, &f, NULL, 1, 1, 1, NULL),
                     TBERT_CUDA_EBADSHAPE);
    cublasDestroy(h);
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
        cmocka_unit_test(test_bad_shapes),
    };
    return cmocka_run_group_tests_name("cuda backward kernels", tests, NULL, NULL) ? 1 : 0;
#endif
}
