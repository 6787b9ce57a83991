/* Pooling of the last hidden state into one feature row per sequence (mean, cls, flatten, pooler) and
 * L2 normalisation. The host reference for every backend (the CUDA backend pools on the device). */
#include <assert.h>
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "encoder_backend.h"

static const char *const pool_names[] = {"mean", "cls", "flatten", "pooler"};
static_assert(sizeof pool_names / sizeof pool_names[0] == TBERT_POOL_COUNT, "one name per pooling");

const char *tbert_pool_name(tbert_pool p) {
    return (unsigned)p < TBERT_POOL_COUNT ? pool_names[p] : "?";
}

tbert_status tbert_pool_parse(const char *s, tbert_pool *out, tbert_error *err) {
    for (int i = 0; i < TBERT_POOL_COUNT; i++) {
        if (s && !strcmp(s, pool_names[i])) {
            *out = (tbert_pool)i;
            return TBERT_OK;
        }
    }
    return tbert_fail(err, TBERT_E_ARG, "--pool: expected mean, cls, flatten or pooler, got '%s'", s ? s : "");
}

size_t tbert_pool_dim(const tbert_model *m, tbert_pool pool, int max_len) {
    size_t H = (size_t)m->cfg.hidden;
    return pool == TBERT_POOL_FLATTEN ? (size_t)(max_len > 0 ? max_len : 0) * H : H;
}

/* out[b] = mean of hidden[b, t] over t < len  (hidden row b: T x H) */
static void pool_mean_row(const float *hb, int len, int H, float *o) {
    memset(o, 0, (size_t)H * sizeof *o);
    for (int t = 0; t < len; t++) {
        const float *h = hb + (size_t)t * H;
        for (int j = 0; j < H; j++) o[j] += h[j];
    }
    float inv = 1.0f / (float)(len > 0 ? len : 1);
    for (int j = 0; j < H; j++) o[j] *= inv;
}

static void pool_pooler(const tbert_model *m, int B, int T, const float *hidden, float *out) {
    int H = m->cfg.hidden;
    /* out = cls @ W^T + b, with cls rows at stride T*H inside hidden */
    for (int b = 0; b < B; b++) memcpy(out + (size_t)b * H, m->pooler_b, (size_t)H * sizeof *out);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, H, H, 1.0f, hidden, T * H, m->pooler_w, H, 1.0f, out, H);
    for (size_t i = 0; i < (size_t)B * H; i++) out[i] = tanhf(out[i]);
}

tbert_status tbert_pooler_dense(const tbert_model *m, int B, float *x, tbert_error *err) {
    if (!m->pooler_w || !m->pooler_b)
        return tbert_fail(err, TBERT_E_ARG, "%s: --pool pooler needs a pooler, and this checkpoint has none",
                          m->dir ? m->dir : "model");
    size_t H = (size_t)m->cfg.hidden;
    float *cls = tbert_malloc_array((size_t)B, H * sizeof *cls);
    if (!cls) return tbert_fail(err, TBERT_E_NOMEM, "pooler: out of memory");
    memcpy(cls, x, (size_t)B * H * sizeof *cls);
    pool_pooler(m, B, 1, cls, x);
    free(cls);
    return TBERT_OK;
}

tbert_status tbert_pool_hidden(const tbert_model *m, tbert_pool pool, int B, int T, const float *hidden,
                               const int32_t *lengths, int out_T, float *out, tbert_error *err) {
    int H = m->cfg.hidden;
    size_t TH = (size_t)T * H;
    switch (pool) {
    case TBERT_POOL_MEAN:
        for (int b = 0; b < B; b++) pool_mean_row(hidden + b * TH, lengths[b], H, out + (size_t)b * H);
        return TBERT_OK;
    case TBERT_POOL_CLS:
        for (int b = 0; b < B; b++) memcpy(out + (size_t)b * H, hidden + b * TH, (size_t)H * sizeof *out);
        return TBERT_OK;
    case TBERT_POOL_FLATTEN: {
        if (out_T < T) return tbert_fail(err, TBERT_E_ARG, "flatten pooling: output length %d < batch length %d", out_T, T);
        size_t dim = (size_t)out_T * H;
        for (int b = 0; b < B; b++) {
            float *o = out + b * dim;
            size_t real = (size_t)lengths[b] * H;
            memcpy(o, hidden + b * TH, real * sizeof *o);
            memset(o + real, 0, (dim - real) * sizeof *o);
        }
        return TBERT_OK;
    }
    case TBERT_POOL_POOLER:
        if (!m->pooler_w || !m->pooler_b)
            return tbert_fail(err, TBERT_E_ARG, "%s: --pool pooler needs a pooler, and this checkpoint has none",
                              m->dir ? m->dir : "model");
        pool_pooler(m, B, T, hidden, out);
        return TBERT_OK;
    default:
        return tbert_fail(err, TBERT_E_ARG, "unknown pooling %d", (int)pool);
    }
}

void tbert_l2_normalize_rows(float *x, size_t n, size_t dim) {
    for (size_t i = 0; i < n; i++) {
        float *r = x + i * dim;
        double ss = 0.0;
        for (size_t j = 0; j < dim; j++) ss += (double)r[j] * r[j];
        if (ss <= 0.0) continue;
        /* sentence-transformers divides by max(norm, 1e-12) */
        double nrm = sqrt(ss);
        float inv = (float)(1.0 / (nrm > 1e-12 ? nrm : 1e-12));
        for (size_t j = 0; j < dim; j++) r[j] *= inv;
    }
}
