/* Backward passes of the encoder's ops on the CPU, float32 with OpenBLAS for the products, and the forward twins
 * that save what they need (include/tbert/encoder_backward.h has the contracts and the packed layout). Proven
 * against float64 twins and central finite differences in tests/test_encoder_backward.c. */
#include <cblas.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "tbert/dropout_rng.h"
#include "tbert/encoder_backward.h"

/* acc[cols] += column sums of a[rows, cols] (ld lda) in chunks of TBERT_BWD_CHUNK rows: each chunk summed into
 * part[cols] row by row, then added to acc in chunk order. */
static void colsum_chunked(size_t rows, int cols, const float *a, size_t lda, float *acc, float *part) {
    for (size_t r0 = 0; r0 < rows; r0 += TBERT_BWD_CHUNK) {
        size_t r1 = r0 + TBERT_BWD_CHUNK < rows ? r0 + TBERT_BWD_CHUNK : rows;
        memset(part, 0, (size_t)cols * sizeof *part);
        for (size_t r = r0; r < r1; r++) {
            const float *x = a + r * lda;
            for (int j = 0; j < cols; j++) part[j] += x[j];
        }
        for (int j = 0; j < cols; j++) acc[j] += part[j];
    }
}

/* ---- linear ------------------------------------------------------------------------------------------- */

void tbert_bwd_linear(size_t N, int in, int out, const float *x, const float *W, const float *dy, float *dx,
                      float *dW, float *db, float *ws) {
    if (dx) {
        if (N && in && out)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, in, out, 1.0f, dy, out, W, in, 0.0f, dx, in);
        else if (N && in)
            memset(dx, 0, N * (size_t)in * sizeof *dx);
    }
    size_t n_w = (size_t)out * (size_t)in;
    for (size_t r0 = 0; r0 < N; r0 += TBERT_BWD_CHUNK) {
        int m = (int)(r0 + TBERT_BWD_CHUNK < N ? TBERT_BWD_CHUNK : N - r0);
        /* this chunk's dW partial: dy_c^T x_c, then added in chunk order */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, m, 1.0f, dy + r0 * (size_t)out, out,
                    x + r0 * (size_t)in, in, 0.0f, ws, in);
        for (size_t i = 0; i < n_w; i++) dW[i] += ws[i];
    }
    if (db) colsum_chunked(N, out, dy, (size_t)out, db, ws + n_w);
}

/* ---- bias + exact GELU -------------------------------------------------------------------------------- */

void tbert_fwd_bias_gelu(size_t N, int cols, float *a, const float *bias, float *h) {
    for (size_t i = 0; i < N; i++) {
        float *ar = a + i * cols, *hr = h + i * cols;
        for (int j = 0; j < cols; j++) {
            if (bias) ar[j] += bias[j];
            hr[j] = 0.5f * ar[j] * (1.0f + erff(ar[j] * 0.70710678118654752f));
        }
    }
}

void tbert_bwd_bias_gelu(size_t N, int cols, const float *a, const float *dh, float *da, float *dbias) {
    /* gelu'(a) = Phi(a) + a phi(a) */
    for (size_t i = 0; i < N * (size_t)cols; i++) {
        float v = a[i];
        float cdf = 0.5f * (1.0f + erff(v * 0.70710678118654752f));
        float pdf = 0.39894228040143268f * expf(-0.5f * v * v);
        da[i] = dh[i] * (cdf + v * pdf);
    }
    if (dbias) {
        /* the chunk partial lives on the stack in pieces of 256 columns */
        float part[256];
        for (int c0 = 0; c0 < cols; c0 += 256) {
            int w = cols - c0 < 256 ? cols - c0 : 256;
            colsum_chunked(N, w, da + c0, (size_t)cols, dbias + c0, part);
        }
    }
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

void tbert_dropout_apply(size_t n, float *x, const tbert_dropout *d, uint64_t first) {
    if (!d || d->p <= 0.0f) return;
    for (size_t i = 0; i < n; i++) x[i] *= tbert_dropout_scale(d->seed, d->step, d->site, d->base + first + i, d->p);
}

void tbert_fwd_attention(int n_seq, const int32_t *off, int H, int n_heads, float scale, const float *qkv, float *ctx,
                         float *P) {
    tbert_fwd_attention_dropout(n_seq, off, H, n_heads, scale, qkv, ctx, P, NULL, NULL);
}

void tbert_fwd_attention_dropout(int n_seq, const int32_t *off, int H, int n_heads, float scale, const float *qkv,
                                 float *ctx, float *P, const tbert_dropout *drop, float *ws) {
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
            for (int i = 0; i < L; i++) {
                float *r = p + (size_t)i * L, mx = r[0], sum = 0.0f;
                for (int j = 1; j < L; j++) mx = r[j] > mx ? r[j] : mx;
                for (int j = 0; j < L; j++) sum += (r[j] = expf(r[j] - mx));
                float inv = 1.0f / sum;
                for (int j = 0; j < L; j++) r[j] *= inv;
            }
            const float *pv = p;
            if (dropping) { /* ws = dropout(P) */
                for (size_t e = 0; e < LL; e++) ws[e] = p[e];
                tbert_dropout_apply(LL, ws, drop, pidx);
                pv = ws;
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
    tbert_bwd_attention_dropout(n_seq, off, H, n_heads, scale, qkv, P, dctx, dqkv, NULL, ws);
}

void tbert_bwd_attention_dropout(int n_seq, const int32_t *off, int H, int n_heads, float scale, const float *qkv,
                                 const float *P, const float *dctx, float *dqkv, const tbert_dropout *drop, float *ws) {
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
            if (dropping) { /* mask = the multipliers, ws = dropout(P) */
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
            for (int i = 0; i < L; i++) {
                const float *pr = P + (size_t)i * L;
                float *r = ws + (size_t)i * L;
                double dot = 0.0;
                for (int j = 0; j < L; j++) dot += (double)pr[j] * r[j];
                float dt = (float)dot;
                for (int j = 0; j < L; j++) r[j] = pr[j] * (r[j] - dt);
            }
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
    float *da = ws + (size_t)H * H + H;
    for (size_t i = 0; i < (size_t)B * H; i++) da[i] = dout[i] * (1.0f - out[i] * out[i]);
    tbert_bwd_linear((size_t)B, H, H, cls, W, da, dcls, dW, db, ws);
}
