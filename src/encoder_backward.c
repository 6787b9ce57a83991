/* Backward passes of the encoder's ops on the CPU, float32 with OpenBLAS for the products, and the forward twins
 * that save what they need (include/tbert/encoder_backward.h has the contracts and the packed layout). Proven
 * against float64 twins and central finite differences in tests/test_encoder_backward.c. */
#include <cblas.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "cpu_math.h"
#include "gemm_cpu.h"
#include "tbert/dropout_rng.h"
#include "tbert/encoder_backward.h"

TBERT_VEC void tbert_bwd_colsum_chunked(size_t rows, int cols, const float *a, size_t lda, float *acc) {
    enum { PIECE = 256 }; /* the chunk partial lives on the stack, PIECE columns at a time */
    float part[PIECE];
    for (int c0 = 0; c0 < cols; c0 += PIECE) {
        int w = cols - c0 < PIECE ? cols - c0 : PIECE;
        for (size_t r0 = 0; r0 < rows; r0 += TBERT_BWD_CHUNK) {
            size_t r1 = r0 + TBERT_BWD_CHUNK < rows ? r0 + TBERT_BWD_CHUNK : rows;
            memset(part, 0, (size_t)w * sizeof *part);
            for (size_t r = r0; r < r1; r++) {
                const float *x = a + r * lda + c0;
                for (int j = 0; j < w; j++) part[j] += x[j];
            }
            for (int j = 0; j < w; j++) acc[c0 + j] += part[j];
        }
    }
}

/* ---- linear ------------------------------------------------------------------------------------------- */

void tbert_bwd_linear(size_t N, int in, int out, const float *x, const float *W, const float *dy, float *dx,
                      float *dW, float *db) {
    if (dx) {
        if (N && in && out)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, in, out, 1.0f, dy, out, W, in, 0.0f, dx, in);
        else if (N && in)
            memset(dx, 0, N * (size_t)in * sizeof *dx);
    }
    /* each chunk's dW partial dy_c^T x_c (summed row by row from zero), added in chunk order: gemm_cpu.c, the
     * same function the fine-tuning stack calls on ranges of output rows */
    tbert_gemm_tn_chunked(tbert_gemm_avx512_supported(), N, out, in, dy, x, dW, TBERT_BWD_CHUNK, 0, out);
    if (db) tbert_bwd_colsum_chunked(N, out, dy, (size_t)out, db);
}

/* ---- bias + exact GELU -------------------------------------------------------------------------------- */

/* erf and exp: the vectorisable forms of src/cpu_math.h (absolute error < 1.5e-7 for erf, relative < 2e-7 for
 * exp; the CPU encoder's GELU uses the same), in loops the compiler runs in vector registers: libm's scalar erff was
 * a tenth of a training step's CPU time. */
TBERT_VEC void tbert_fwd_bias_gelu(size_t N, int cols, float *a, const float *bias, float *h) {
    for (size_t i = 0; i < N; i++) {
        float *ar = a + i * cols, *hr = h + i * cols;
        if (bias)
            for (int j = 0; j < cols; j++) ar[j] += bias[j];
        for (int j = 0; j < cols; j++) hr[j] = 0.5f * ar[j] * (1.0f + tbert_erf_approx(ar[j] * 0.70710678118654752f));
    }
}

TBERT_VEC void tbert_bwd_bias_gelu(size_t N, int cols, const float *a, const float *dh, float *da, float *dbias) {
    /* gelu'(a) = Phi(a) + a phi(a); erf as tbert_erf_approx (A&S 7.1.26), whose exp(-z^2), z = |a|/sqrt 2, is
     * also phi's exp(-a^2/2): one exp per element instead of two */
    for (size_t i = 0; i < N * (size_t)cols; i++) {
        float v = a[i], z = fabsf(v) * 0.70710678118654752f;
        float e = tbert_exp_approx(-z * z);
        float erf_abs = tbert_erf_abs_given_exp(z, e);
        float cdf = 0.5f * (1.0f + copysignf(erf_abs, v));
        da[i] = dh[i] * (cdf + v * (0.39894228040143268f * e));
    }
    if (dbias) tbert_bwd_colsum_chunked(N, cols, da, (size_t)cols, dbias);
}

/* ---- residual + layernorm ----------------------------------------------------------------------------- */

void tbert_fwd_layernorm(size_t N, int H, float *z, const float *bias, const float *gamma, const float *beta, float eps,
                         float *y, float *mean, float *rstd) {
    for (size_t i = 0; i < N; i++) {
        float *r = z + i * H, *o = y + i * H;
        if (bias)
            for (int j = 0; j < H; j++) r[j] += bias[j];
        double s = 0.0;
        for (int j = 0; j < H; j++) s += r[j];
        float mu = (float)(s / H);
        double v = 0.0;
        for (int j = 0; j < H; j++) v += (double)(r[j] - mu) * (r[j] - mu);
        float rs = (float)(1.0 / sqrt(v / H + eps));
        for (int j = 0; j < H; j++) o[j] = (r[j] - mu) * rs * gamma[j] + beta[j];
        mean[i] = mu;
        rstd[i] = rs;
    }
}

void tbert_bwd_layernorm(size_t N, int H, const float *z, const float *mean, const float *rstd, const float *gamma,
                         const float *dy, float *dz, float *dres, float *dgamma, float *dbeta, float *ws) {
    float *pg = ws, *pb = ws + H;
    for (size_t r0 = 0; r0 < N; r0 += TBERT_BWD_CHUNK) {
        size_t r1 = r0 + TBERT_BWD_CHUNK < N ? r0 + TBERT_BWD_CHUNK : N;
        memset(ws, 0, 2 * (size_t)H * sizeof *ws);
        for (size_t i = r0; i < r1; i++) {
            const float *zr = z + i * H, *g = dy + i * H;
            float *o = dz + i * H;
            float mu = mean[i], rs = rstd[i];
            /* dz = rstd (g - mean(g) - xhat mean(g xhat)), g = dy gamma */
            double m1 = 0.0, m2 = 0.0;
            for (int j = 0; j < H; j++) {
                float xh = (zr[j] - mu) * rs, gj = g[j] * gamma[j];
                m1 += gj;
                m2 += (double)gj * xh;
                pg[j] += g[j] * xh;
                pb[j] += g[j];
            }
            float a = (float)(m1 / H), b = (float)(m2 / H);
            for (int j = 0; j < H; j++) {
                float xh = (zr[j] - mu) * rs;
                o[j] = rs * (g[j] * gamma[j] - a - xh * b);
            }
            if (dres)
                for (int j = 0; j < H; j++) dres[i * H + j] += o[j];
        }
        for (int j = 0; j < H; j++) {
            dgamma[j] += pg[j];
            dbeta[j] += pb[j];
        }
    }
}

/* ---- attention ---------------------------------------------------------------------------------------- */

size_t tbert_attn_probs_size(int n_seq, const int32_t *off, int n_heads) {
    size_t n = 0;
    for (int s = 0; s < n_seq; s++) {
        size_t L = (size_t)(off[s + 1] - off[s]);
        n += (size_t)n_heads * L * L;
    }
    return n;
}

/* tbert_dropout_apply in blocks of 256 elements: 64 Philox draws (four independent groups of 16 lanes, GCC/Clang
 * vector extensions; the high half of each 32x32 product from the even and odd 64-bit lanes, so that the rounds of
 * one group overlap with the others'), each giving the four words of four consecutive elements (the convention of
 * include/tbert/dropout_rng.h), interleaved into element order by two stages of shuffles. The words are
 * tbert_dropout_u32's (tests/test_dropout_rng.c compares every multiplier). History: element by element, 7.8 ns
 * per element (a quarter of a training step's CPU time); 16-lane blocks with one draw per element, 3.7 ns (11% of
 * the CPU time of `--finetune 2` on 300 messages); four words per draw: below. */
typedef uint32_t drop_u32x16 __attribute__((vector_size(64)));
typedef uint64_t drop_u64x8 __attribute__((vector_size(64)));
typedef int32_t drop_i32x16 __attribute__((vector_size(64)));
typedef float drop_f32x16 __attribute__((vector_size(64)));
enum { DROP_GROUPS = 4, DROP_LANES = 16 * DROP_GROUPS, DROP_BLOCK = 4 * DROP_LANES };

/* the high words of the 16 products a[l] * m (a macro: 64-byte vectors are not passed to functions, whose ABI
 * for them depends on the target) */
#define DROP_MULHI(a, m)                                                                                           \
    ((drop_u32x16)(((((drop_u64x8)(a) & 0xffffffffu) * (uint64_t)(m)) >> 32) |                                    \
                   ((((drop_u64x8)(a) >> 32) * (uint64_t)(m)) & 0xffffffff00000000ull)))

/* x[e] *= the multiplier of word w of 16 lanes (the 16 elements of x that vector v of the interleave holds) */
#define DROP_SCALE16(x, words)                                                                                     \
    do {                                                                                                           \
        drop_f32x16 u_ = __builtin_convertvector((drop_i32x16)((words) >> 8), drop_f32x16) * 5.9604644775390625e-8f; \
        drop_f32x16 v_, s_ = (drop_f32x16)((drop_i32x16)kv & (u_ >= pv));                                          \
        memcpy(&v_, (x), sizeof v_);                                                                               \
        v_ *= s_;                                                                                                  \
        memcpy((x), &v_, sizeof v_);                                                                               \
    } while (0)

/* GCC 12 reports the broadcast stores into c1/c3 below as reads of uninitialised memory in the clones without
 * AVX-512 (where it splits the 64-byte vectors): a false positive, silenced for this function only */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
/* x[0..DROP_BLOCK) *= the multipliers of elements 4 blk0 .. 4 blk0 + DROP_BLOCK - 1 (blocks blk0 .. blk0 +
 * DROP_LANES - 1, no 2^32 carry among them) */
static inline __attribute__((always_inline)) void drop_block(float *x, const tbert_dropout *d, uint64_t blk0,
                                                              float keep) {
    drop_u32x16 c0[DROP_GROUPS], c1[DROP_GROUPS], c2[DROP_GROUPS], c3[DROP_GROUPS];
    const drop_u32x16 iota = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, zero = {0};
    for (int g = 0; g < DROP_GROUPS; g++) {
        c0[g] = iota + (uint32_t)(blk0 + 16u * (unsigned)g);
        c1[g] = zero + (uint32_t)(blk0 >> 32);
        c2[g] = zero + (uint32_t)d->step;
        c3[g] = zero + d->site;
    }
    uint32_t k0 = (uint32_t)d->seed, k1 = (uint32_t)(d->seed >> 32);
    for (int r = 0; r < 10; r++) {
        for (int g = 0; g < DROP_GROUPS; g++) {
            drop_u32x16 hi0 = DROP_MULHI(c0[g], 0xD2511F53u), hi1 = DROP_MULHI(c2[g], 0xCD9E8D57u);
            drop_u32x16 lo0 = c0[g] * 0xD2511F53u, lo1 = c2[g] * 0xCD9E8D57u;
            c0[g] = hi1 ^ c1[g] ^ k0;
            c2[g] = hi0 ^ c3[g] ^ k1;
            c1[g] = lo1;
            c3[g] = lo0;
        }
        k0 += 0x9E3779B9u, k1 += 0xBB67AE85u;
    }
    const drop_f32x16 pv = (drop_f32x16){0} + d->p, kv = (drop_f32x16){0} + keep;
    for (int g = 0; g < DROP_GROUPS; g++) {
        /* lane l, word w -> element 4 l + w: pairs (w0 w1), (w2 w3) per lane, then the two pairs of each lane */
        drop_u32x16 lo01 = __builtin_shufflevector(c0[g], c1[g], 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        drop_u32x16 hi01 =
            __builtin_shufflevector(c0[g], c1[g], 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        drop_u32x16 lo23 = __builtin_shufflevector(c2[g], c3[g], 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        drop_u32x16 hi23 =
            __builtin_shufflevector(c2[g], c3[g], 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        float *xg = x + 64 * g;
        DROP_SCALE16(xg, __builtin_shufflevector(lo01, lo23, 0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23));
        DROP_SCALE16(xg + 16,
                     __builtin_shufflevector(lo01, lo23, 8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31));
        DROP_SCALE16(xg + 32, __builtin_shufflevector(hi01, hi23, 0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23));
        DROP_SCALE16(xg + 48,
                     __builtin_shufflevector(hi01, hi23, 8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31));
    }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

/* The elements are taken in pieces that end at multiples of DROP_BLOCK in index space; a piece shorter than a
 * block (the start, the end) goes through the same vector code on a copy padded around it. */
TBERT_VEC void tbert_dropout_apply(size_t n, float *x, const tbert_dropout *d, uint64_t first) {
    if (!d || d->p <= 0.0f) return;
    const float keep = 1.0f / (1.0f - d->p);
    size_t i = 0;
    while (i < n) {
        uint64_t idx = d->base + first + i, a = idx / DROP_BLOCK * DROP_BLOCK, blk0 = a / 4;
        size_t skip = (size_t)(idx - a), m = n - i < DROP_BLOCK - skip ? n - i : DROP_BLOCK - skip;
        if ((uint32_t)blk0 > UINT32_MAX - (DROP_LANES - 1)) { /* the blocks cross a multiple of 2^32: one by one */
            for (size_t e = 0; e < m; e++) x[i + e] *= tbert_dropout_scale(d->seed, d->step, d->site, idx + e, d->p);
        } else if (m == DROP_BLOCK) {
            drop_block(x + i, d, blk0, keep);
        } else {
            float t[DROP_BLOCK] = {0};
            memcpy(t + skip, x + i, m * sizeof *t);
            drop_block(t, d, blk0, keep);
            memcpy(x + i, t + skip, m * sizeof *t);
        }
        i += m;
    }
}

/* the L rows of p[L, L] in place: softmax (max subtracted; tbert_exp_approx; max and sum by 16 partials, so that
 * every loop vectorises: a sequential float sum is one dependent add per element) */
static TBERT_VEC void softmax_rows(float *p, int L) {
    for (int i = 0; i < L; i++) {
        float *r = p + (size_t)i * L, mx = tbert_row_max(r, L);
        for (int j = 0; j < L; j++) r[j] = tbert_exp_approx(r[j] - mx);
        float inv = 1.0f / tbert_row_sum(r, L);
        for (int j = 0; j < L; j++) r[j] *= inv;
    }
}

/* dS = P (dP - rowsum(P dP)) in place of dP = ws[L, L] (the row sums in double, 16 partials) */
static TBERT_VEC void softmax_bwd_rows(const float *P, float *ws, int L) {
    for (int i = 0; i < L; i++) {
        const float *pr = P + (size_t)i * L;
        float *r = ws + (size_t)i * L;
        float dt = (float)tbert_row_dot64(pr, r, L);
        for (int j = 0; j < L; j++) r[j] = pr[j] * (r[j] - dt);
    }
}

void tbert_fwd_attention(int n_seq, const int32_t *off, int H, int n_heads, float scale, const float *qkv, float *ctx,
                         float *P) {
    tbert_fwd_attention_dropout(n_seq, off, H, n_heads, scale, qkv, ctx, P, NULL, NULL, NULL);
}

void tbert_fwd_attention_dropout(int n_seq, const int32_t *off, int H, int n_heads, float scale, const float *qkv,
                                 float *ctx, float *P, float *Pd, const tbert_dropout *drop, float *ws) {
    int d = H / n_heads, ld = 3 * H;
    bool dropping = drop && drop->p > 0.0f;
    uint64_t pidx = 0; /* P index of the current (sequence, head) block, relative to drop->base */
    for (int s = 0; s < n_seq; s++) {
        int L = off[s + 1] - off[s];
        if (L <= 0) continue;
        const float *q = qkv + (size_t)off[s] * ld;
        for (int h = 0; h < n_heads; h++) {
            float *p = P;
            size_t LL = (size_t)L * L;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, L, L, d, scale, q + h * d, ld, q + H + h * d, ld, 0.0f,
                        p, L);
            softmax_rows(p, L);
            const float *pv = p;
            if (dropping) { /* dropout(P) into Pd's block, else ws */
                float *t = Pd ? Pd + pidx : ws;
                for (size_t e = 0; e < LL; e++) t[e] = p[e];
                tbert_dropout_apply(LL, t, drop, pidx);
                pv = t;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, L, d, L, 1.0f, pv, L, q + 2 * H + h * d, ld, 0.0f,
                        ctx + (size_t)off[s] * H + h * d, H);
            P += LL;
            pidx += LL;
        }
    }
}

void tbert_bwd_attention(int n_seq, const int32_t *off, int H, int n_heads, float scale, const float *qkv,
                         const float *P, const float *dctx, float *dqkv, float *ws) {
    tbert_bwd_attention_dropout(n_seq, off, H, n_heads, scale, qkv, P, NULL, dctx, dqkv, NULL, ws);
}

void tbert_bwd_attention_dropout(int n_seq, const int32_t *off, int H, int n_heads, float scale, const float *qkv,
                                 const float *P, const float *Pd, const float *dctx, float *dqkv, const tbert_dropout *drop,
                                 float *ws) {
    int d = H / n_heads, ld = 3 * H;
    bool dropping = drop && drop->p > 0.0f;
    uint64_t pidx = 0;
    for (int s = 0; s < n_seq; s++) {
        int L = off[s + 1] - off[s];
        if (L <= 0) continue;
        size_t LL = (size_t)L * L;
        float *mask = ws + LL; /* with dropout: the multipliers of this block */
        const float *q = qkv + (size_t)off[s] * ld, *dc = dctx + (size_t)off[s] * H;
        float *dq = dqkv + (size_t)off[s] * ld;
        for (int h = 0; h < n_heads; h++) {
            const float *qh = q + h * d, *kh = q + H + h * d, *vh = q + 2 * H + h * d, *dch = dc + h * d;
            const float *pv = P;
            if (dropping && Pd) { /* the forward's dropout(P); the multipliers from where it kept elements */
                pv = Pd + pidx;
                const float keep = 1.0f / (1.0f - drop->p);
                for (size_t e = 0; e < LL; e++) mask[e] = pv[e] != 0.0f ? keep : 0.0f;
            } else if (dropping) { /* mask = the multipliers, ws = dropout(P) */
                for (size_t e = 0; e < LL; e++) mask[e] = 1.0f;
                tbert_dropout_apply(LL, mask, drop, pidx);
                for (size_t e = 0; e < LL; e++) ws[e] = P[e] * mask[e];
                pv = ws;
            }
            /* dV = dropout(P)^T dctx */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, L, d, L, 1.0f, pv, L, dch, H, 0.0f, dq + 2 * H + h * d,
                        ld);
            /* dP = (dctx V^T) * mask, then dS = P (dP - rowsum(P dP)) in place */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, L, L, d, 1.0f, dch, H, vh, ld, 0.0f, ws, L);
            if (dropping)
                for (size_t e = 0; e < LL; e++) ws[e] *= mask[e];
            softmax_bwd_rows(P, ws, L);
            /* S = scale Q K^T: dQ = scale dS K, dK = scale dS^T Q */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, L, d, L, scale, ws, L, kh, ld, 0.0f, dq + h * d, ld);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, L, d, L, scale, ws, L, qh, ld, 0.0f, dq + H + h * d,
                        ld);
            P += LL;
            pidx += LL;
        }
    }
}

/* ---- embeddings --------------------------------------------------------------------------------------- */

void tbert_fwd_embeddings(int n_seq, const int32_t *off, int H, const int32_t *ids, const float *word, const float *pos,
                          const float *type, float *z) {
    for (int s = 0; s < n_seq; s++)
        for (int i = off[s]; i < off[s + 1]; i++) {
            const float *we = word + (size_t)ids[i] * H, *pe = pos + (size_t)(i - off[s]) * H;
            float *r = z + (size_t)i * H;
            for (int j = 0; j < H; j++) r[j] = we[j] + pe[j] + type[j];
        }
}

void tbert_bwd_embeddings(int n_seq, const int32_t *off, int H, const int32_t *ids, const float *dz, float *dword,
                          float *dpos, float *dtype) {
    for (int s = 0; s < n_seq; s++)
        for (int i = off[s]; i < off[s + 1]; i++) {
            const float *g = dz + (size_t)i * H;
            float *dw = dword ? dword + (size_t)ids[i] * H : NULL, *dp = dpos ? dpos + (size_t)(i - off[s]) * H : NULL;
            for (int j = 0; j < H; j++) {
                if (dw) dw[j] += g[j];
                if (dp) dp[j] += g[j];
                if (dtype) dtype[j] += g[j];
            }
        }
}

/* ---- pooling, L2 normalisation, pooler ---------------------------------------------------------------- */

void tbert_bwd_pool(int pool, int n_seq, const int32_t *off, int H, int out_T, const float *dout, float *dhidden) {
    size_t dim = pool == 2 ? (size_t)out_T * H : (size_t)H;
    memset(dhidden, 0, (size_t)off[n_seq] * H * sizeof *dhidden);
    for (int s = 0; s < n_seq; s++) {
        int L = off[s + 1] - off[s];
        const float *g = dout + (size_t)s * dim;
        float *dh = dhidden + (size_t)off[s] * H;
        if (L <= 0) continue;
        if (pool == 0) {
            float inv = 1.0f / (float)L;
            for (int t = 0; t < L; t++)
                for (int j = 0; j < H; j++) dh[(size_t)t * H + j] = g[j] * inv;
        } else if (pool == 1) {
            memcpy(dh, g, (size_t)H * sizeof *dh);
        } else {
            int n = L < out_T ? L : out_T;
            memcpy(dh, g, (size_t)n * H * sizeof *dh);
        }
    }
}

void tbert_bwd_l2_normalize(size_t n, size_t dim, const float *x, const float *y, const float *dy, float *dx) {
    for (size_t i = 0; i < n; i++) {
        const float *xr = x + i * dim, *yr = y + i * dim, *g = dy + i * dim;
        float *o = dx + i * dim;
        double ss = 0.0, dot = 0.0;
        for (size_t j = 0; j < dim; j++) {
            ss += (double)xr[j] * xr[j];
            dot += (double)yr[j] * g[j];
        }
        if (ss <= 0.0) { /* the forward leaves a zero row as it is */
            if (o != g) memcpy(o, g, dim * sizeof *o);
            continue;
        }
        double nrm = sqrt(ss);
        if (nrm > 1e-12) {
            float inv = (float)(1.0 / nrm), dt = (float)dot;
            for (size_t j = 0; j < dim; j++) o[j] = (g[j] - yr[j] * dt) * inv;
        } else { /* y = x / 1e-12: linear */
            for (size_t j = 0; j < dim; j++) o[j] = g[j] * 1e12f;
        }
    }
}

void tbert_bwd_pooler(int B, int H, const float *cls, const float *W, const float *out, const float *dout, float *dcls,
                      float *dW, float *db, float *ws) {
    float *da = ws;
    for (size_t i = 0; i < (size_t)B * H; i++) da[i] = dout[i] * (1.0f - out[i] * out[i]);
    tbert_bwd_linear((size_t)B, H, H, cls, W, da, dcls, dW, db);
}
