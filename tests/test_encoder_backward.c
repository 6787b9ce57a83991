/* Backward passes of the encoder's ops (src/encoder_backward.c) against float64, op by op and for one whole
 * encoder layer with the padding mask. Two checks each:
 *  1. the float32 backward against a float64 analytic twin written here (naive loops, same float32 inputs):
 *     norm ratio ||g32 - g64|| / ||g64|| < 1e-5 and per element |g32 - g64| <= 1e-5 max|g64| (issue 15's
 *     gradient tolerances);
 *  2. that float64 twin against central finite differences (step 1e-6) of a float64 forward, the attention one
 *     on the PADDED layout with the additive -inf mask (the test-only oracle; the library works on packed
 *     tokens): norm ratio < 1e-6 and per element |g - fd| <= 1e-6 max|fd| (the differences carry ~1e-9).
 * Loss = sum(out * R) for a fixed random R, so d loss / d out = R. Shapes are random (seeded, printed), with
 * odd lengths, sequences of length 1 and 0 (all padding) and more than one TBERT_BWD_CHUNK of rows.
 * Also: the fixed chunks of the weight-gradient reduction (bit-identical when split at a chunk boundary).
 * Deliberate bugs it caught (seed 42): layernorm's mean(dy gamma) divided by H-1 (test_layernorm, test_layer,
 * norm ratio 1.7e-2); attention's dK = dS Q without the transpose (test_attention, test_layer, 0.44); flatten
 * dropping the last real row (test_pooling, 0.26). A check whose reference is all zeros fails (vacuous). */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "encoder_backend.h"
#include "tbert/dropout_rng.h"
#include "tbert/encoder_backward.h"
#include "ref64.h"
#include "testutil.h"

#define RATIO32 1e-5
#define ELEM32 1e-5
#define RATIO_FD 1e-6
#define ELEM_FD 1e-6
#define FD_STEP 1e-6

static uint64_t g_seed; /* set once in main, read-only after */

static double *todbl(const float *x, size_t n) {
    double *p = tu_xcalloc(n, sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = x[i];
    return p;
}

/* got vs ref: ||got-ref|| / ||ref|| < ratio and |got-ref| <= elem * max|ref| per element */
static void check(const char *what, const double *got, const double *ref, size_t n, double ratio, double elem) {
    double mx = 0, dn = 0, rn = 0, worst = 0;
    size_t wi = 0;
    for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs(ref[i]));
    for (size_t i = 0; i < n; i++) {
        double d = got[i] - ref[i];
        assert_false(isnan(got[i]) || isinf(got[i]));
        dn += d * d;
        rn += ref[i] * ref[i];
        if (fabs(d) > worst) worst = fabs(d), wi = i;
    }
    double nr = rn > 0 ? sqrt(dn / rn) : sqrt(dn);
    bool ok = nr < ratio && worst <= elem * mx;
    printf("  %-26s n=%-5zu norm ratio %.2e (< %.0e)  max|err| %.2e at %zu (<= %.2e)%s\n", what, n, nr, ratio,
           worst, wi, elem * mx, ok ? "" : "  FAIL");
    if (!ok) fail_msg("%s: gradient off (seed %llu)", what, (unsigned long long)g_seed);
    assert_true(mx > 0); /* a zero reference would make the check vacuous */
}
static void check32(const char *what, const float *got, const double *ref, size_t n) {
    double *g = todbl(got, n);
    check(what, g, ref, n, RATIO32, ELEM32);
    free(g);
}

/* central finite differences of loss(ctx) with respect to p[0..n) */
typedef double (*loss_fn)(void *ctx);
static void fd(double *p, size_t n, loss_fn f, void *ctx, double *g) {
    for (size_t i = 0; i < n; i++) {
        double v = p[i], h = FD_STEP * fmax(1.0, fabs(v));
        p[i] = v + h;
        double lp = f(ctx);
        p[i] = v - h;
        double lm = f(ctx);
        p[i] = v;
        g[i] = (lp - lm) / (2 * h);
    }
}
/* the float64 analytic gradient against FD on every element, or (large inputs of a separable loss) on every
 * `stride`-th one, so that the test stays short */
static void check_fd_every(const char *what, double *p, size_t n, size_t stride, loss_fn f, void *ctx,
                           const double *analytic) {
    size_t m = (n + stride - 1) / stride;
    double *g = tu_xcalloc(m, sizeof *g), *a = tu_xcalloc(m, sizeof *a);
    for (size_t k = 0; k < m; k++) {
        fd(p + k * stride, 1, f, ctx, g + k);
        a[k] = analytic[k * stride];
    }
    char name[96];
    snprintf(name, sizeof name, "%.60s (f64 vs FD)", what);
    check(name, a, g, m, RATIO_FD, ELEM_FD);
    free(g);
    free(a);
}
static void check_fd(const char *what, double *p, size_t n, loss_fn f, void *ctx, const double *analytic) {
    check_fd_every(what, p, n, 1, f, ctx, analytic);
}
static double dot(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* random packed batch: lengths with a 1, a 0, odd ones; offsets */
static int make_batch(tu_rng *r, int max_len, int32_t *off, int max_seq) {
    int n = 3 + (int)(tu_next(r) % (uint64_t)(max_seq - 2));
    off[0] = 0;
    for (int s = 0; s < n; s++) {
        int L = (int)(tu_next(r) % (uint64_t)max_len) + 1;
        if (s == 0) L = 1;
        if (s == 1) L |= 1;
        if (s == 2) L = 0;
        off[s + 1] = off[s] + L;
    }
    return n;
}

/* ---- float64 twins ------------------------------------------------------------------------------------ */

static void d_linear_bwd(size_t N, int in, int out, const double *x, const double *W, const double *dy, double *dx,
                         double *dW, double *db) {
    for (size_t i = 0; i < N; i++)
        for (int k = 0; k < in; k++) {
            double s = 0;
            for (int o = 0; o < out; o++) s += dy[i * out + o] * W[(size_t)o * in + k];
            if (dx) dx[i * in + k] = s;
        }
    for (int o = 0; o < out; o++) {
        for (int k = 0; k < in; k++) {
            double s = 0;
            for (size_t i = 0; i < N; i++) s += dy[i * out + o] * x[i * in + k];
            dW[(size_t)o * in + k] += s;
        }
        if (db)
            for (size_t i = 0; i < N; i++) db[o] += dy[i * out + o];
    }
}
static double d_gelu(double a) { return 0.5 * a * (1 + erf(a / sqrt(2.0))); }
static double d_gelu_grad(double a) {
    return 0.5 * (1 + erf(a / sqrt(2.0))) + a * exp(-0.5 * a * a) / 2.5066282746310002; /* sqrt(2 pi) */
}

/* written from the chain rule through mean and variance, not the library's closed form */
static void d_ln_bwd(size_t N, int H, const double *z, const double *g, double eps, const double *dy, double *dz,
                     double *dg, double *dbt) {
    for (size_t i = 0; i < N; i++) {
        const double *zr = z + i * H, *gy = dy + i * H;
        double mu = 0, v = 0;
        for (int j = 0; j < H; j++) mu += zr[j] / H;
        for (int j = 0; j < H; j++) v += (zr[j] - mu) * (zr[j] - mu) / H;
        double sd = sqrt(v + eps), dvar = 0, dmu = 0;
        for (int j = 0; j < H; j++) {
            double dxh = gy[j] * g[j];
            dg[j] += gy[j] * (zr[j] - mu) / sd;
            dbt[j] += gy[j];
            dvar += dxh * (zr[j] - mu) * -0.5 / (sd * sd * sd);
            dmu += -dxh / sd;
        }
        for (int j = 0; j < H; j++) dmu += dvar * -2.0 * (zr[j] - mu) / H;
        for (int j = 0; j < H; j++) dz[i * H + j] = gy[j] * g[j] / sd + dvar * 2.0 * (zr[j] - mu) / H + dmu / H;
    }
}

/* packed attention, float64, forward (P kept per seq/head in a scratch) and backward */
static void d_attn_bwd(int n_seq, const int32_t *off, int H, int nh, double scale, const double *qkv,
                       const double *dctx, double *dqkv, double *ctx) {
    int d = H / nh, ld = 3 * H;
    for (int s = 0; s < n_seq; s++) {
        int L = off[s + 1] - off[s];
        if (L <= 0) continue;
        const double *q = qkv + (size_t)off[s] * ld;
        const double *dc = dctx + (size_t)off[s] * H;
        double *dq = dqkv + (size_t)off[s] * ld;
        double *P = tu_xcalloc((size_t)L * L, sizeof *P), *dP = tu_xcalloc((size_t)L * L, sizeof *dP);
        for (int h = 0; h < nh; h++) {
            for (int i = 0; i < L; i++) {
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j < L; j++) {
                    double a = 0;
                    for (int k = 0; k < d; k++) a += q[i * ld + h * d + k] * q[j * ld + H + h * d + k];
                    P[i * L + j] = scale * a;
                    mx = fmax(mx, scale * a);
                }
                for (int j = 0; j < L; j++) sum += (P[i * L + j] = exp(P[i * L + j] - mx));
                for (int j = 0; j < L; j++) P[i * L + j] /= sum;
            }
            if (ctx)
                for (int i = 0; i < L; i++)
                    for (int k = 0; k < d; k++) {
                        double a = 0;
                        for (int j = 0; j < L; j++) a += P[i * L + j] * q[j * ld + 2 * H + h * d + k];
                        ctx[(size_t)(off[s] + i) * H + h * d + k] = a;
                    }
            if (!dqkv) continue;
            for (int j = 0; j < L; j++)
                for (int k = 0; k < d; k++) { /* dV[j] = sum_i P[i,j] dctx[i] */
                    double a = 0;
                    for (int i = 0; i < L; i++) a += P[i * L + j] * dc[i * H + h * d + k];
                    dq[j * ld + 2 * H + h * d + k] = a;
                }
            for (int i = 0; i < L; i++) { /* dS[i,j] = P[i,j] (dP[i,j] - sum_m P[i,m] dP[i,m]) */
                double rs = 0;
                for (int j = 0; j < L; j++) {
                    double a = 0;
                    for (int k = 0; k < d; k++) a += dc[i * H + h * d + k] * q[j * ld + 2 * H + h * d + k];
                    dP[i * L + j] = a;
                    rs += a * P[i * L + j];
                }
                for (int j = 0; j < L; j++) dP[i * L + j] = P[i * L + j] * (dP[i * L + j] - rs);
            }
            for (int i = 0; i < L; i++)
                for (int k = 0; k < d; k++) {
                    double aq = 0, ak = 0;
                    for (int j = 0; j < L; j++) {
                        aq += dP[i * L + j] * q[j * ld + H + h * d + k];
                        ak += dP[j * L + i] * q[j * ld + h * d + k];
                    }
                    dq[i * ld + h * d + k] = scale * aq;
                    dq[i * ld + H + h * d + k] = scale * ak;
                }
        }
        free(P);
        free(dP);
    }
}

/* the test-only oracle: attention on the padded [B, T] layout with the additive mask (-inf on padded keys);
 * rows of padded queries are computed too and then dropped, as a padded backend does */
static void d_attn_padded(int n_seq, const int32_t *off, int H, int nh, double scale, const double *qkv, double *ctx) {
    int d = H / nh, T = 0;
    for (int s = 0; s < n_seq; s++) T = off[s + 1] - off[s] > T ? off[s + 1] - off[s] : T;
    double *pad = tu_xcalloc((size_t)T * 3 * H, sizeof *pad), *sc = tu_xcalloc((size_t)T, sizeof *sc);
    for (int s = 0; s < n_seq; s++) {
        int L = off[s + 1] - off[s];
        if (L == 0) continue; /* an all-padding row has no real token to report */
        memset(pad, 0, (size_t)T * 3 * H * sizeof *pad);
        memcpy(pad, qkv + (size_t)off[s] * 3 * H, (size_t)L * 3 * H * sizeof *pad);
        for (int h = 0; h < nh; h++)
            for (int i = 0; i < T; i++) {
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j < T; j++) {
                    double a = 0;
                    for (int k = 0; k < d; k++) a += pad[i * 3 * H + h * d + k] * pad[j * 3 * H + H + h * d + k];
                    sc[j] = scale * a + (j < L ? 0.0 : -INFINITY);
                    mx = fmax(mx, sc[j]);
                }
                for (int j = 0; j < T; j++) sum += (sc[j] = exp(sc[j] - mx));
                if (i >= L) continue;
                for (int k = 0; k < d; k++) {
                    double a = 0;
                    for (int j = 0; j < T; j++) a += sc[j] / sum * pad[j * 3 * H + 2 * H + h * d + k];
                    ctx[(size_t)(off[s] + i) * H + h * d + k] = a;
                }
            }
    }
    free(pad);
    free(sc);
}

/* ---- 1. linear ---------------------------------------------------------------------------------------- */

typedef struct {
    size_t N;
    int in, out;
    double *x, *W, *b, *R, *y;
} lin_ctx;
static double lin_loss(void *p) {
    lin_ctx *c = p;
    tu_ref_linear64(c->N, c->in, c->out, c->x, c->W, c->b, c->y);
    return dot(c->y, c->R, c->N * c->out);
}

static void test_linear(void **state) {
    (void)state;
    tu_rng r = {g_seed ^ 1};
    for (int rep = 0; rep < 2; rep++) {
        size_t N = rep ? 1 + tu_next(&r) % 9 : 130 + tu_next(&r) % 40; /* one short, one over two chunks */
        int in = 3 + (int)(tu_next(&r) % 14), out = 2 + (int)(tu_next(&r) % 11);
        printf(" linear N=%zu in=%d out=%d\n", N, in, out);
        float *x = tu_rand_floats(&r, N * in, 1), *W = tu_rand_floats(&r, (size_t)out * in, 0.5f), *b = tu_rand_floats(&r, out, 0.5f);
        float *R = tu_rand_floats(&r, N * out, 1);
        float *dx = tu_xcalloc(N * in, 4), *dW = tu_xcalloc((size_t)out * in, 4), *db = tu_xcalloc(out, 4);
        tbert_bwd_linear(N, in, out, x, W, R, dx, dW, db);
        lin_ctx c = {N, in, out, todbl(x, N * in), todbl(W, (size_t)out * in), todbl(b, out), todbl(R, N * out),
                     tu_xcalloc(N * out, 8)};
        double *gx = tu_xcalloc(N * in, 8), *gW = tu_xcalloc((size_t)out * in, 8), *gb = tu_xcalloc(out, 8);
        d_linear_bwd(N, in, out, c.x, c.W, c.R, gx, gW, gb);
        check32("linear dx", dx, gx, N * in);
        check32("linear dW", dW, gW, (size_t)out * in);
        check32("linear db", db, gb, out);
        check_fd("linear dx", c.x, N * in, lin_loss, &c, gx);
        check_fd("linear dW", c.W, (size_t)out * in, lin_loss, &c, gW);
        check_fd("linear db", c.b, out, lin_loss, &c, gb);
        /* accumulation: a second call adds the same again */
        float *dW2 = tu_xcalloc((size_t)out * in, 4);
        memcpy(dW2, dW, (size_t)out * in * 4);
        tbert_bwd_linear(N, in, out, x, W, R, NULL, dW2, NULL);
        for (size_t i = 0; i < (size_t)out * in; i++) assert_float_equal(dW2[i], 2 * dW[i], 1e-5 * (1 + fabsf(dW[i])));
        free(dW2);
        free(x), free(W), free(b), free(R), free(dx), free(dW), free(db);
        free(c.x), free(c.W), free(c.b), free(c.R), free(c.y), free(gx), free(gW), free(gb);
    }
}

/* Fixed chunks: the weight gradient of N rows equals, bit for bit, the gradient of the rows split at a chunk
 * boundary into two calls accumulating into the same dW (so a scheduler that hands whole chunks to threads and
 * adds their partials in chunk order gets the same bits at any thread count). OpenBLAS itself must run on one
 * thread, as the CPU forward sets it: with 2 OpenBLAS threads sgemm's bits differ (printed here, measured). */
static void test_linear_chunks(void **state) {
    (void)state;
    tu_rng r = {g_seed ^ 2};
    size_t N = 1000, cut = 5 * TBERT_BWD_CHUNK;
    int in = 96, out = 80;
    size_t nw = (size_t)out * in;
    float *x = tu_rand_floats(&r, N * in, 1), *W = tu_rand_floats(&r, nw, 1), *dy = tu_rand_floats(&r, N * out, 1);
    float *a = tu_xcalloc(nw + out, 4), *b = tu_xcalloc(nw + out, 4);
    float *c = tu_xcalloc(nw + out, 4);
    tbert_bwd_linear(N, in, out, x, W, dy, NULL, a, a + nw);
    tbert_bwd_linear(cut, in, out, x, W, dy, NULL, b, b + nw);
    tbert_bwd_linear(N - cut, in, out, x + cut * in, W, dy + cut * out, NULL, b, b + nw);
    assert_memory_equal(a, b, (nw + out) * 4);
    openblas_set_num_threads(2);
    tbert_bwd_linear(N, in, out, x, W, dy, NULL, c, c + nw);
    openblas_set_num_threads(1);
    printf(" linear dW with 2 OpenBLAS threads: %s the 1-thread bits\n",
           memcmp(a, c, (nw + out) * 4) ? "differs from" : "equals");
    free(x), free(W), free(dy), free(a), free(b), free(c);
}

/* ---- 2. bias + GELU ----------------------------------------------------------------------------------- */

typedef struct {
    size_t N;
    int C;
    double *x, *b, *R;
} gelu_ctx;
static double gelu_loss(void *p) {
    gelu_ctx *c = p;
    double s = 0;
    for (size_t i = 0; i < c->N; i++)
        for (int j = 0; j < c->C; j++) s += d_gelu(c->x[i * c->C + j] + c->b[j]) * c->R[i * c->C + j];
    return s;
}

static void test_gelu(void **state) {
    (void)state;
    tu_rng r = {g_seed ^ 3};
    size_t N = 70 + tu_next(&r) % 30;
    int C = 5 + (int)(tu_next(&r) % 300); /* may cross the 256-column pieces of the bias sum */
    printf(" bias+gelu N=%zu cols=%d\n", N, C);
    float *x = tu_rand_floats(&r, N * C, 2), *b = tu_rand_floats(&r, C, 1), *R = tu_rand_floats(&r, N * C, 1);
    float *a = tu_xcalloc(N * C, 4), *h = tu_xcalloc(N * C, 4), *da = tu_xcalloc(N * C, 4), *db = tu_xcalloc(C, 4);
    memcpy(a, x, N * C * 4);
    tbert_fwd_bias_gelu(N, C, a, b, h);
    tbert_bwd_bias_gelu(N, C, a, R, da, db);
    gelu_ctx c = {N, C, todbl(x, N * C), todbl(b, C), todbl(R, N * C)};
    double *gx = tu_xcalloc(N * C, 8), *gb = tu_xcalloc(C, 8);
    for (size_t i = 0; i < N; i++)
        for (int j = 0; j < C; j++) {
            gx[i * C + j] = c.R[i * C + j] * d_gelu_grad(c.x[i * C + j] + c.b[j]);
            gb[j] += gx[i * C + j];
        }
    check32("gelu da", da, gx, N * C);
    check32("gelu dbias", db, gb, C);
    check_fd_every("gelu da", c.x, N * C, 1 + N * C / 400, gelu_loss, &c, gx);
    check_fd("gelu dbias", c.b, C, gelu_loss, &c, gb);
    free(x), free(b), free(R), free(a), free(h), free(da), free(db);
    free(c.x), free(c.b), free(c.R), free(gx), free(gb);
}

/* ---- 3. residual + layernorm -------------------------------------------------------------------------- */

typedef struct {
    size_t N;
    int H;
    double eps, *x, *s, *bias, *g, *b, *R, *z, *y;
} ln_ctx;
static double ln_loss(void *p) {
    ln_ctx *c = p;
    for (size_t i = 0; i < c->N * c->H; i++) c->z[i] = c->x[i] + c->s[i] + c->bias[i % c->H];
    tu_ref_layernorm64(c->N, c->H, c->z, c->g, c->b, c->eps, c->y);
    return dot(c->y, c->R, c->N * c->H);
}

static void test_layernorm(void **state) {
    (void)state;
    tu_rng r = {g_seed ^ 4};
    size_t N = 66 + tu_next(&r) % 40;
    int H = 3 + (int)(tu_next(&r) % 40);
    float eps = 1e-12f;
    printf(" residual+layernorm N=%zu H=%d\n", N, H);
    float *x = tu_rand_floats(&r, N * H, 1), *s = tu_rand_floats(&r, N * H, 1), *bias = tu_rand_floats(&r, H, 0.3f), *R = tu_rand_floats(&r, N * H, 1);
    float *g = tu_rand_floats(&r, H, 0.3f), *b = tu_rand_floats(&r, H, 0.3f);
    for (int j = 0; j < H; j++) g[j] += 1.0f;
    float *z = tu_xcalloc(N * H, 4), *y = tu_xcalloc(N * H, 4), *mean = tu_xcalloc(N, 4), *rstd = tu_xcalloc(N, 4);
    float *dz = tu_xcalloc(N * H, 4), *dres = tu_xcalloc(N * H, 4), *dg = tu_xcalloc(H, 4), *dbt = tu_xcalloc(H, 4);
    float *ws = tu_xcalloc(2 * (size_t)H, 4);
    for (size_t i = 0; i < N * H; i++) z[i] = x[i] + s[i];
    tbert_fwd_layernorm(N, H, z, bias, g, b, eps, y, mean, rstd);
    tbert_bwd_layernorm(N, H, z, mean, rstd, g, R, dz, dres, dg, dbt, ws);
    ln_ctx c = {N, H, eps, todbl(x, N * H), todbl(s, N * H), todbl(bias, H), todbl(g, H), todbl(b, H), todbl(R, N * H),
                tu_xcalloc(N * H, 8), tu_xcalloc(N * H, 8)};
    double *gz = tu_xcalloc(N * H, 8), *gg = tu_xcalloc(H, 8), *gb = tu_xcalloc(H, 8), *gbias = tu_xcalloc(H, 8);
    ln_loss(&c); /* fills c.z with the float64 sum */
    /* the float32 forward against float64, so that the saved values are the right ones */
    double *y64 = tu_xcalloc(N * H, 8);
    tu_ref_layernorm64(N, H, c.z, c.g, c.b, eps, y64);
    check32("layernorm forward y", y, y64, N * H);
    d_ln_bwd(N, H, c.z, c.g, eps, c.R, gz, gg, gb);
    for (size_t i = 0; i < N * H; i++) gbias[i % H] += gz[i];
    check32("layernorm dz (sublayer)", dz, gz, N * H);
    check32("layernorm dres (residual)", dres, gz, N * H);
    check32("layernorm dgamma", dg, gg, H);
    check32("layernorm dbeta", dbt, gb, H);
    check_fd_every("layernorm dsublayer", c.s, N * H, 1 + N * H / 400, ln_loss, &c, gz);
    check_fd_every("layernorm dresidual", c.x, N * H, 1 + N * H / 400, ln_loss, &c, gz);
    check_fd("layernorm dbias", c.bias, H, ln_loss, &c, gbias);
    check_fd("layernorm dgamma", c.g, H, ln_loss, &c, gg);
    check_fd("layernorm dbeta", c.b, H, ln_loss, &c, gb);
    free(x), free(s), free(bias), free(R), free(g), free(b), free(z), free(y), free(mean), free(rstd), free(dz);
    free(dres), free(dg), free(dbt), free(ws), free(c.x), free(c.s), free(c.bias), free(c.g), free(c.b), free(c.R);
    free(c.z), free(c.y), free(gz), free(gg), free(gb), free(gbias), free(y64);
}

/* ---- 4. attention ------------------------------------------------------------------------------------- */

typedef struct {
    int n_seq, H, nh;
    const int32_t *off;
    double scale, *qkv, *R, *ctx;
} attn_ctx;
static double attn_loss(void *p) {
    attn_ctx *c = p;
    size_t N = (size_t)c->off[c->n_seq];
    d_attn_padded(c->n_seq, c->off, c->H, c->nh, c->scale, c->qkv, c->ctx);
    return dot(c->ctx, c->R, N * c->H);
}

static void test_attention(void **state) {
    (void)state;
    tu_rng r = {g_seed ^ 5};
    int32_t off[8];
    int n_seq = make_batch(&r, 11, off, 7);
    int nh = 1 + (int)(tu_next(&r) % 3), d = 1 + (int)(tu_next(&r) % 5), H = nh * d, Lmax = 0;
    size_t N = (size_t)off[n_seq];
    for (int s = 0; s < n_seq; s++) Lmax = off[s + 1] - off[s] > Lmax ? off[s + 1] - off[s] : Lmax;
    printf(" attention n_seq=%d N=%zu heads=%d d=%d lengths", n_seq, N, nh, d);
    for (int s = 0; s < n_seq; s++) printf(" %d", off[s + 1] - off[s]);
    printf("\n");
    float scale = 1.0f / sqrtf((float)d);
    float *qkv = tu_rand_floats(&r, N * 3 * H, 1), *R = tu_rand_floats(&r, N * H, 1), *ctx = tu_xcalloc(N * H, 4);
    float *P = tu_xcalloc(tbert_attn_probs_size(n_seq, off, nh), 4), *dqkv = tu_xcalloc(N * 3 * H, 4);
    float *ws = tu_xcalloc((size_t)Lmax * Lmax, 4);
    tbert_fwd_attention(n_seq, off, H, nh, scale, qkv, ctx, P);
    tbert_bwd_attention(n_seq, off, H, nh, scale, qkv, P, R, dqkv, ws);
    attn_ctx c = {n_seq, H, nh, off, scale, todbl(qkv, N * 3 * H), todbl(R, N * H), tu_xcalloc(N * H, 8)};
    double *g = tu_xcalloc(N * 3 * H, 8), *ctx64 = tu_xcalloc(N * H, 8);
    d_attn_bwd(n_seq, off, H, nh, scale, c.qkv, c.R, g, ctx64);
    check32("attention forward ctx", ctx, ctx64, N * H);
    check32("attention dqkv", dqkv, g, N * 3 * H);
    check_fd("attention dqkv (padded)", c.qkv, N * 3 * H, attn_loss, &c, g);
    free(qkv), free(R), free(ctx), free(P), free(dqkv), free(ws), free(c.qkv), free(c.R), free(c.ctx), free(g);
    free(ctx64);
}

/* attention dropout: the backward from the forward's saved dropout(P) (Pd) gives the bits of the backward that draws
 * the masks again, and the forward's ctx is the same with and without Pd; dropout really dropped (p = 0.3) */
static void test_attention_dropout_saved(void **state) {
    (void)state;
    tu_rng r = {g_seed ^ 15};
    int32_t off[8];
    int n_seq = make_batch(&r, 11, off, 7);
    int nh = 1 + (int)(tu_next(&r) % 3), d = 1 + (int)(tu_next(&r) % 5), H = nh * d, Lmax = 0;
    size_t N = (size_t)off[n_seq], np = tbert_attn_probs_size(n_seq, off, nh);
    for (int s = 0; s < n_seq; s++) Lmax = off[s + 1] - off[s] > Lmax ? off[s + 1] - off[s] : Lmax;
    float scale = 1.0f / sqrtf((float)d);
    float *qkv = tu_rand_floats(&r, N * 3 * H, 1), *R = tu_rand_floats(&r, N * H, 1);
    float *c1 = tu_xcalloc(N * H, 4), *c2 = tu_xcalloc(N * H, 4), *P = tu_xcalloc(np + 1, 4), *P2 = tu_xcalloc(np + 1, 4);
    float *Pd = tu_xcalloc(np + 1, 4), *g1 = tu_xcalloc(N * 3 * H, 4), *g2 = tu_xcalloc(N * 3 * H, 4);
    float *ws = tu_xcalloc(2 * (size_t)Lmax * Lmax + 1, 4);
    tbert_dropout dp = {0.3f, g_seed, 7, tbert_dropout_site(1, TBERT_DROP_ATTN_PROBS), 0};
    tbert_fwd_attention_dropout(n_seq, off, H, nh, scale, qkv, c1, P, NULL, &dp, ws);
    tbert_fwd_attention_dropout(n_seq, off, H, nh, scale, qkv, c2, P2, Pd, &dp, ws);
    tbert_bwd_attention_dropout(n_seq, off, H, nh, scale, qkv, P, NULL, R, g1, &dp, ws);
    tbert_bwd_attention_dropout(n_seq, off, H, nh, scale, qkv, P2, Pd, R, g2, &dp, ws);
    size_t dropped = 0;
    for (size_t i = 0; i < np; i++) dropped += Pd[i] == 0.0f && P[i] != 0.0f;
    printf(" attention dropout, saved dropout(P): %zu of %zu probabilities dropped\n", dropped, np);
    assert_true(dropped > 0);
    assert_memory_equal(P, P2, np * sizeof *P);
    assert_memory_equal(c1, c2, N * H * sizeof *c1);
    assert_memory_equal(g1, g2, N * 3 * H * sizeof *g1);
    free(qkv), free(R), free(c1), free(c2), free(P), free(P2), free(Pd), free(g1), free(g2), free(ws);
}

/* ---- 5. pooling, L2 normalisation, pooler -------------------------------------------------------------- */

typedef struct {
    int pool, n_seq, H, out_T;
    const int32_t *off;
    double *hid, *R, *out;
} pool_ctx;
/* float64 forward of mean / cls / flatten on packed rows (an all-padding sequence pools to zeros) */
static void d_pool(const pool_ctx *c) {
    size_t dim = c->pool == 2 ? (size_t)c->out_T * c->H : (size_t)c->H;
    memset(c->out, 0, (size_t)c->n_seq * dim * sizeof *c->out);
    for (int s = 0; s < c->n_seq; s++) {
        int L = c->off[s + 1] - c->off[s];
        const double *h = c->hid + (size_t)c->off[s] * c->H;
        double *o = c->out + (size_t)s * dim;
        for (int t = 0; t < L; t++)
            for (int j = 0; j < c->H; j++) {
                if (c->pool == 0) o[j] += h[(size_t)t * c->H + j] / L;
                if (c->pool == 1 && t == 0) o[j] = h[j];
                if (c->pool == 2) o[(size_t)t * c->H + j] = h[(size_t)t * c->H + j];
            }
    }
}
static double pool_loss(void *p) {
    pool_ctx *c = p;
    d_pool(c);
    return dot(c->out, c->R, (size_t)c->n_seq * (c->pool == 2 ? (size_t)c->out_T * c->H : (size_t)c->H));
}

static void test_pooling(void **state) {
    (void)state;
    static const char *const names[] = {"mean", "cls", "flatten"};
    tu_rng r = {g_seed ^ 6};
    int32_t off[8];
    int n_seq = make_batch(&r, 9, off, 7), H = 2 + (int)(tu_next(&r) % 9), T = 0;
    size_t N = (size_t)off[n_seq];
    for (int s = 0; s < n_seq; s++) T = off[s + 1] - off[s] > T ? off[s + 1] - off[s] : T;
    int out_T = T + 2; /* flatten's output is wider than the longest sequence: the padded tail gets no gradient */
    printf(" pooling n_seq=%d N=%zu H=%d out_T=%d\n", n_seq, N, H, out_T);
    float *hid = tu_rand_floats(&r, N * H, 1), *dh = tu_xcalloc(N * H, 4);
    for (int pool = 0; pool < 3; pool++) {
        size_t dim = pool == 2 ? (size_t)out_T * H : (size_t)H;
        float *R = tu_rand_floats(&r, (size_t)n_seq * dim, 1);
        tbert_bwd_pool(pool, n_seq, off, H, out_T, R, dh);
        pool_ctx c = {pool, n_seq, H, out_T, off, todbl(hid, N * H), todbl(R, (size_t)n_seq * dim),
                      tu_xcalloc((size_t)n_seq * dim, 8)};
        double *g = tu_xcalloc(N * H, 8);
        for (int s = 0; s < n_seq; s++) { /* float64 twin */
            int L = off[s + 1] - off[s];
            for (int t = 0; t < L; t++)
                for (int j = 0; j < H; j++) {
                    double *gr = g + (size_t)(off[s] + t) * H + j;
                    const double *rr = c.R + (size_t)s * dim;
                    *gr = pool == 0 ? rr[j] / L : pool == 1 ? (t == 0 ? rr[j] : 0) : rr[(size_t)t * H + j];
                }
        }
        char name[64];
        snprintf(name, sizeof name, "pool %s dhidden", names[pool]);
        check32(name, dh, g, N * H);
        check_fd(name, c.hid, N * H, pool_loss, &c, g);
        free(R), free(c.hid), free(c.R), free(c.out), free(g);
    }
    free(hid), free(dh);
}

typedef struct {
    size_t n, dim;
    double *x, *R;
} l2_ctx;
static double l2_loss(void *p) {
    l2_ctx *c = p;
    double l = 0;
    for (size_t i = 0; i < c->n; i++) {
        double ss = 0, d = 0;
        for (size_t j = 0; j < c->dim; j++) ss += c->x[i * c->dim + j] * c->x[i * c->dim + j];
        for (size_t j = 0; j < c->dim; j++) d += c->x[i * c->dim + j] * c->R[i * c->dim + j];
        l += d / fmax(sqrt(ss), 1e-12);
    }
    return l;
}

static void test_l2_normalize(void **state) {
    (void)state;
    tu_rng r = {g_seed ^ 7};
    size_t n = 3 + tu_next(&r) % 6, dim = 2 + tu_next(&r) % 40; /* dim 1: y = sign(x), no gradient */
    printf(" l2 n=%zu dim=%zu (+ one zero row)\n", n, dim);
    float *x = tu_rand_floats(&r, (n + 1) * dim, 1), *y = tu_xcalloc((n + 1) * dim, 4), *R = tu_rand_floats(&r, (n + 1) * dim, 1);
    float *dx = tu_xcalloc((n + 1) * dim, 4);
    memset(x + n * dim, 0, dim * 4); /* last row zero: the forward leaves it, the backward passes dy through */
    memcpy(y, x, (n + 1) * dim * 4);
    tbert_l2_normalize_rows(y, n + 1, dim);
    tbert_bwd_l2_normalize(n + 1, dim, x, y, R, dx);
    assert_memory_equal(dx + n * dim, R + n * dim, dim * 4);
    l2_ctx c = {n, dim, todbl(x, n * dim), todbl(R, n * dim)};
    double *g = tu_xcalloc(n * dim, 8);
    for (size_t i = 0; i < n; i++) {
        double ss = 0, d = 0;
        for (size_t j = 0; j < dim; j++) ss += c.x[i * dim + j] * c.x[i * dim + j];
        double nr = sqrt(ss);
        for (size_t j = 0; j < dim; j++) d += c.x[i * dim + j] / nr * c.R[i * dim + j];
        for (size_t j = 0; j < dim; j++) g[i * dim + j] = (c.R[i * dim + j] - c.x[i * dim + j] / nr * d) / nr;
    }
    check32("l2 dx", dx, g, n * dim);
    check_fd("l2 dx", c.x, n * dim, l2_loss, &c, g);
    free(x), free(y), free(R), free(dx), free(c.x), free(c.R), free(g);
}

typedef struct {
    int B, H;
    double *cls, *W, *b, *R, *out;
} pooler_ctx;
static double pooler_loss(void *p) {
    pooler_ctx *c = p;
    tu_ref_linear64((size_t)c->B, c->H, c->H, c->cls, c->W, c->b, c->out);
    double l = 0;
    for (size_t i = 0; i < (size_t)c->B * c->H; i++) l += tanh(c->out[i]) * c->R[i];
    return l;
}

static void test_pooler(void **state) {
    (void)state;
    tu_rng r = {g_seed ^ 8};
    int B = 1 + (int)(tu_next(&r) % 80), H = 2 + (int)(tu_next(&r) % 20);
    printf(" pooler B=%d H=%d\n", B, H);
    size_t BH = (size_t)B * H, HH = (size_t)H * H;
    float *cls = tu_rand_floats(&r, BH, 1), *W = tu_rand_floats(&r, HH, 0.4f), *b = tu_rand_floats(&r, H, 0.3f), *R = tu_rand_floats(&r, BH, 1);
    float *out = tu_xcalloc(BH, 4), *dcls = tu_xcalloc(BH, 4), *dW = tu_xcalloc(HH, 4), *db = tu_xcalloc(H, 4);
    float *ws = tu_xcalloc(HH + H + BH, 4);
    for (int i = 0; i < B; i++)
        for (int o = 0; o < H; o++) {
            float a = b[o];
            for (int k = 0; k < H; k++) a += cls[(size_t)i * H + k] * W[(size_t)o * H + k];
            out[(size_t)i * H + o] = tanhf(a);
        }
    tbert_bwd_pooler(B, H, cls, W, out, R, dcls, dW, db, ws);
    pooler_ctx c = {B, H, todbl(cls, BH), todbl(W, HH), todbl(b, H), todbl(R, BH), tu_xcalloc(BH, 8)};
    double *da = tu_xcalloc(BH, 8), *gc = tu_xcalloc(BH, 8), *gW = tu_xcalloc(HH, 8), *gb = tu_xcalloc(H, 8);
    tu_ref_linear64((size_t)B, H, H, c.cls, c.W, c.b, c.out);
    for (size_t i = 0; i < BH; i++) da[i] = c.R[i] * (1 - tanh(c.out[i]) * tanh(c.out[i]));
    d_linear_bwd((size_t)B, H, H, c.cls, c.W, da, gc, gW, gb);
    check32("pooler dcls", dcls, gc, BH);
    check32("pooler dW", dW, gW, HH);
    check32("pooler db", db, gb, H);
    check_fd("pooler dcls", c.cls, BH, pooler_loss, &c, gc);
    check_fd("pooler dW", c.W, HH, pooler_loss, &c, gW);
    check_fd("pooler db", c.b, H, pooler_loss, &c, gb);
    free(cls), free(W), free(b), free(R), free(out), free(dcls), free(dW), free(db), free(ws);
    free(c.cls), free(c.W), free(c.b), free(c.R), free(c.out), free(da), free(gc), free(gW), free(gb);
}

/* ---- 6. one whole encoder layer with the mask ----------------------------------------------------------
 * y = LN2(x1 + gelu(x1 Wi^T + bi) Wout^T + bout), x1 = LN1(x + attn(x Wqkv^T + bqkv) Wo^T + bo), as
 * src/encoder_cpu.c's layer_forward; here the float32 forward is composed from the saving forwards and sgemm. */

enum { P_WQKV, P_BQKV, P_WO, P_BO, P_G1, P_BE1, P_WI, P_BI, P_WOUT, P_BOUT, P_G2, P_BE2, P_COUNT };
static const char *const p_names[P_COUNT] = {"Wqkv", "bqkv", "Wo",   "bo",   "ln1 gamma", "ln1 beta",
                                             "Wi",   "bi",   "Wout", "bout", "ln2 gamma", "ln2 beta"};

typedef struct {
    int n_seq, H, nh, IM;
    const int32_t *off;
    size_t N, po[P_COUNT + 1]; /* offsets of the parameters in one array */
    double scale, eps, *x, *p, *R;
    /* float64 activations */
    double *qkv, *ctx, *z1, *x1, *a, *h, *z2, *y, *t;
} layer_ctx;

static void layer_fwd64(layer_ctx *c, bool padded) {
    size_t N = c->N;
    int H = c->H, IM = c->IM;
    const double *p = c->p;
    tu_ref_linear64(N, H, 3 * H, c->x, p + c->po[P_WQKV], p + c->po[P_BQKV], c->qkv);
    if (padded)
        d_attn_padded(c->n_seq, c->off, H, c->nh, c->scale, c->qkv, c->ctx);
    else
        d_attn_bwd(c->n_seq, c->off, H, c->nh, c->scale, c->qkv, NULL, NULL, c->ctx);
    tu_ref_linear64(N, H, H, c->ctx, p + c->po[P_WO], p + c->po[P_BO], c->t);
    for (size_t i = 0; i < N * H; i++) c->z1[i] = c->x[i] + c->t[i];
    tu_ref_layernorm64(N, H, c->z1, p + c->po[P_G1], p + c->po[P_BE1], c->eps, c->x1);
    tu_ref_linear64(N, H, IM, c->x1, p + c->po[P_WI], p + c->po[P_BI], c->a);
    for (size_t i = 0; i < N * IM; i++) c->h[i] = d_gelu(c->a[i]);
    tu_ref_linear64(N, IM, H, c->h, p + c->po[P_WOUT], p + c->po[P_BOUT], c->t);
    for (size_t i = 0; i < N * H; i++) c->z2[i] = c->x1[i] + c->t[i];
    tu_ref_layernorm64(N, H, c->z2, p + c->po[P_G2], p + c->po[P_BE2], c->eps, c->y);
}
static double layer_loss(void *p) {
    layer_ctx *c = p;
    layer_fwd64(c, true);
    return dot(c->y, c->R, c->N * c->H);
}

static void test_layer(void **state) {
    (void)state;
    tu_rng r = {g_seed ^ 9};
    int32_t off[8];
    layer_ctx c = {0};
    c.n_seq = make_batch(&r, 9, off, 7);
    c.off = off;
    c.nh = 2 + (int)(tu_next(&r) % 2);
    /* H >= 6: a layernorm over 2 values has no input gradient (the check's max|ref| > 0 guard caught it), and
     * over 3 values it is so ill-conditioned that the float32 FORWARD's error (saved activations) alone reached
     * the 1e-5 bound (1 seed in 60: norm ratio 9.2e-6, element 5.5e-5 > 4.2e-5) */
    int d = 3 + (int)(tu_next(&r) % 2), H = c.nh * d, IM = 2 * H + 1;
    c.H = H, c.IM = IM, c.N = (size_t)off[c.n_seq];
    size_t N = c.N, sizes[P_COUNT] = {(size_t)3 * H * H, (size_t)3 * H, (size_t)H * H, H, H, H, (size_t)IM * H, IM,
                                      (size_t)H * IM, H, H, H};
    for (int k = 0; k < P_COUNT; k++) c.po[k + 1] = c.po[k] + sizes[k];
    size_t np = c.po[P_COUNT];
    float scale = 1.0f / sqrtf((float)d), eps = 1e-12f;
    c.scale = scale, c.eps = eps;
    printf(" layer n_seq=%d N=%zu H=%d heads=%d IM=%d params=%zu lengths", c.n_seq, N, H, c.nh, IM, np);
    for (int s = 0; s < c.n_seq; s++) printf(" %d", off[s + 1] - off[s]);
    printf("\n");

    float *x = tu_rand_floats(&r, N * H, 1), *P = tu_rand_floats(&r, np, 0.5f), *R = tu_rand_floats(&r, N * H, 1);
    for (int j = 0; j < H; j++) P[c.po[P_G1] + j] += 1.0f, P[c.po[P_G2] + j] += 1.0f;
    const float *Wqkv = P + c.po[P_WQKV], *Wo = P + c.po[P_WO], *Wi = P + c.po[P_WI], *Wout = P + c.po[P_WOUT];
    /* float32 forward, keeping what the backward needs */
    int Lmax = 0;
    for (int s = 0; s < c.n_seq; s++) Lmax = off[s + 1] - off[s] > Lmax ? off[s + 1] - off[s] : Lmax;
    float *qkv = tu_xcalloc(N * 3 * H, 4), *ctx = tu_xcalloc(N * H, 4), *z1 = tu_xcalloc(N * H, 4), *x1 = tu_xcalloc(N * H, 4);
    float *a = tu_xcalloc(N * IM, 4), *h = tu_xcalloc(N * IM, 4), *z2 = tu_xcalloc(N * H, 4), *y = tu_xcalloc(N * H, 4);
    float *m1 = tu_xcalloc(N, 4), *r1 = tu_xcalloc(N, 4), *m2 = tu_xcalloc(N, 4), *r2 = tu_xcalloc(N, 4);
    float *prob = tu_xcalloc(tbert_attn_probs_size(c.n_seq, off, c.nh), 4);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, 3 * H, H, 1.0f, x, H, Wqkv, H, 0.0f, qkv, 3 * H);
    for (size_t i = 0; i < N * 3 * H; i++) qkv[i] += P[c.po[P_BQKV] + i % (3 * H)];
    tbert_fwd_attention(c.n_seq, off, H, c.nh, scale, qkv, ctx, prob);
    memcpy(z1, x, N * H * 4);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, H, H, 1.0f, ctx, H, Wo, H, 1.0f, z1, H);
    tbert_fwd_layernorm(N, H, z1, P + c.po[P_BO], P + c.po[P_G1], P + c.po[P_BE1], eps, x1, m1, r1);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, IM, H, 1.0f, x1, H, Wi, H, 0.0f, a, IM);
    tbert_fwd_bias_gelu(N, IM, a, P + c.po[P_BI], h);
    memcpy(z2, x1, N * H * 4);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, H, IM, 1.0f, h, IM, Wout, IM, 1.0f, z2, H);
    tbert_fwd_layernorm(N, H, z2, P + c.po[P_BOUT], P + c.po[P_G2], P + c.po[P_BE2], eps, y, m2, r2);

    /* float32 backward */
    float *G = tu_xcalloc(np, 4), *dx = tu_xcalloc(N * H, 4), *dz2 = tu_xcalloc(N * H, 4), *dx1 = tu_xcalloc(N * H, 4);
    float *dh = tu_xcalloc(N * IM, 4), *da = tu_xcalloc(N * IM, 4), *tmp = tu_xcalloc(N * IM, 4), *dz1 = tu_xcalloc(N * H, 4);
    float *dctx = tu_xcalloc(N * H, 4), *dqkv = tu_xcalloc(N * 3 * H, 4);
    float *ws = tu_xcalloc((size_t)3 * H * IM + 3 * H + (size_t)Lmax * Lmax, 4);
    tbert_bwd_layernorm(N, H, z2, m2, r2, P + c.po[P_G2], R, dz2, dx1, G + c.po[P_G2], G + c.po[P_BE2], ws);
    tbert_bwd_linear(N, IM, H, h, Wout, dz2, dh, G + c.po[P_WOUT], G + c.po[P_BOUT]);
    tbert_bwd_bias_gelu(N, IM, a, dh, da, G + c.po[P_BI]);
    tbert_bwd_linear(N, H, IM, x1, Wi, da, tmp, G + c.po[P_WI], NULL);
    for (size_t i = 0; i < N * H; i++) dx1[i] += tmp[i];
    tbert_bwd_layernorm(N, H, z1, m1, r1, P + c.po[P_G1], dx1, dz1, dx, G + c.po[P_G1], G + c.po[P_BE1], ws);
    tbert_bwd_linear(N, H, H, ctx, Wo, dz1, dctx, G + c.po[P_WO], G + c.po[P_BO]);
    tbert_bwd_attention(c.n_seq, off, H, c.nh, scale, qkv, prob, dctx, dqkv, ws);
    tbert_bwd_linear(N, H, 3 * H, x, Wqkv, dqkv, tmp, G + c.po[P_WQKV], G + c.po[P_BQKV]);
    for (size_t i = 0; i < N * H; i++) dx[i] += tmp[i];

    /* float64 twin: forward (packed attention) and backward by the chain rule */
    c.x = todbl(x, N * H), c.p = todbl(P, np), c.R = todbl(R, N * H);
    c.qkv = tu_xcalloc(N * 3 * H, 8), c.ctx = tu_xcalloc(N * H, 8), c.z1 = tu_xcalloc(N * H, 8), c.x1 = tu_xcalloc(N * H, 8);
    c.a = tu_xcalloc(N * IM, 8), c.h = tu_xcalloc(N * IM, 8), c.z2 = tu_xcalloc(N * H, 8), c.y = tu_xcalloc(N * H, 8);
    c.t = tu_xcalloc(N * (size_t)(IM > 3 * H ? IM : 3 * H), 8);
    layer_fwd64(&c, false);
    check32("layer forward y", y, c.y, N * H);
    const double *p = c.p;
    double *g = tu_xcalloc(np, 8), *gx = tu_xcalloc(N * H, 8), *d2 = tu_xcalloc(N * H, 8), *d1 = tu_xcalloc(N * H, 8);
    double *dh64 = tu_xcalloc(N * IM, 8), *dt = tu_xcalloc(N * 3 * H, 8), *dc = tu_xcalloc(N * H, 8);
    d_ln_bwd(N, H, c.z2, p + c.po[P_G2], eps, c.R, d2, g + c.po[P_G2], g + c.po[P_BE2]);
    d_linear_bwd(N, IM, H, c.h, p + c.po[P_WOUT], d2, dh64, g + c.po[P_WOUT], g + c.po[P_BOUT]);
    for (size_t i = 0; i < N * IM; i++) dh64[i] *= d_gelu_grad(c.a[i]);
    d_linear_bwd(N, H, IM, c.x1, p + c.po[P_WI], dh64, dt, g + c.po[P_WI], g + c.po[P_BI]);
    for (size_t i = 0; i < N * H; i++) dt[i] += d2[i];
    d_ln_bwd(N, H, c.z1, p + c.po[P_G1], eps, dt, d1, g + c.po[P_G1], g + c.po[P_BE1]);
    d_linear_bwd(N, H, H, c.ctx, p + c.po[P_WO], d1, dc, g + c.po[P_WO], g + c.po[P_BO]);
    d_attn_bwd(c.n_seq, off, H, c.nh, scale, c.qkv, dc, dt, NULL);
    d_linear_bwd(N, H, 3 * H, c.x, p + c.po[P_WQKV], dt, gx, g + c.po[P_WQKV], g + c.po[P_BQKV]);
    for (size_t i = 0; i < N * H; i++) gx[i] += d1[i];

    char name[64];
    check32("layer dx", dx, gx, N * H);
    for (int k = 0; k < P_COUNT; k++) {
        snprintf(name, sizeof name, "layer d%s", p_names[k]);
        check32(name, G + c.po[k], g + c.po[k], sizes[k]);
    }
    check_fd("layer dx", c.x, N * H, layer_loss, &c, gx);
    for (int k = 0; k < P_COUNT; k++) {
        snprintf(name, sizeof name, "layer d%s", p_names[k]);
        check_fd(name, c.p + c.po[k], sizes[k], layer_loss, &c, g + c.po[k]);
    }
    free(x), free(P), free(R), free(qkv), free(ctx), free(z1), free(x1), free(a), free(h), free(z2), free(y);
    free(m1), free(r1), free(m2), free(r2), free(prob), free(G), free(dx), free(dz2), free(dx1), free(dh), free(da);
    free(tmp), free(dz1), free(dctx), free(dqkv), free(ws);
    free(c.x), free(c.p), free(c.R), free(c.qkv), free(c.ctx), free(c.z1), free(c.x1), free(c.a), free(c.h);
    free(c.z2), free(c.y), free(c.t), free(g), free(gx), free(d2), free(d1), free(dh64), free(dt), free(dc);
}

int main(void) {
    g_seed = tu_seed_from_env("test_encoder_backward");
    openblas_set_num_threads(1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linear),     cmocka_unit_test(test_linear_chunks), cmocka_unit_test(test_gelu),
        cmocka_unit_test(test_layernorm), cmocka_unit_test(test_attention),
        cmocka_unit_test(test_attention_dropout_saved), cmocka_unit_test(test_pooling),
        cmocka_unit_test(test_l2_normalize), cmocka_unit_test(test_pooler), cmocka_unit_test(test_layer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
