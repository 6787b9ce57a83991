/* Classifier head on the CPU: forward, loss, hand-written backward, init, and the deterministic RNG.
 * Semantics are documented in include/tbert/head.h (kernels/head.cu implements the same). */
#include "tbert/head.h"
#include "tbert/rows.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- RNG ---- */
static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void tbert_rng_seed(tbert_rng *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t tbert_rng_next(tbert_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double tbert_rng_uniform(tbert_rng *r) { return (double)(tbert_rng_next(r) >> 11) * 0x1.0p-53; }

double tbert_rng_normal(tbert_rng *r) {
    double u1 = tbert_rng_uniform(r), u2 = tbert_rng_uniform(r);
    return sqrt(-2.0 * log1p(-u1)) * cos(2.0 * M_PI * u2);
}

uint64_t tbert_rng_below(tbert_rng *r, uint64_t n) {
    if (n <= 1) return 0;
    uint64_t limit = UINT64_MAX - UINT64_MAX % n; /* reject the short tail so every value is equally likely */
    for (;;) {
        uint64_t x = tbert_rng_next(r);
        if (x < limit) return x % n;
    }
}

void tbert_rng_shuffle(tbert_rng *r, int *idx, int n) {
    for (int i = n - 1; i > 0; i--) {
        int j = (int)tbert_rng_below(r, (uint64_t)i + 1);
        int t = idx[i];
        idx[i] = idx[j];
        idx[j] = t;
    }
}

/* ---- config and parameters ---- */
int tbert_head_out_dim(const tbert_head_config *c) { return c->binary ? 1 : c->n_classes; }

static tbert_status check_config(const tbert_head_config *c, tbert_error *err) {
    if (c->in_dim <= 0 || c->in_dim > (1 << 24))
        return tbert_fail(err, TBERT_E_ARG, "head: feature dimension %d out of range", c->in_dim);
    if (c->hidden < 0 || c->hidden > (1 << 16))
        return tbert_fail(err, TBERT_E_ARG, "head: hidden size %d out of range (0..65536)", c->hidden);
    if (c->n_classes < 2 || c->n_classes > 4096)
        return tbert_fail(err, TBERT_E_ARG, "head: needs 2..4096 classes, got %d", c->n_classes);
    if (c->binary && c->n_classes != 2)
        return tbert_fail(err, TBERT_E_ARG, "head: a binary head needs exactly 2 classes, got %d", c->n_classes);
    if (c->binary && (c->positive < 0 || c->positive >= 2))
        return tbert_fail(err, TBERT_E_ARG, "head: positive class index %d out of range", c->positive);
    if (!(c->dropout >= 0.0f && c->dropout < 1.0f))
        return tbert_fail(err, TBERT_E_ARG, "head: dropout %g outside [0, 1)", (double)c->dropout);
    return TBERT_OK;
}

static void add_tensor(tbert_head *h, const char *name, int64_t d0, int64_t d1, size_t *off) {
    tbert_head_tensor *t = &h->tensors[h->n_tensors++];
    t->name = name;
    t->ndim = d1 ? 2 : 1;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->numel = (size_t)d0 * (size_t)(d1 ? d1 : 1);
    t->offset = *off;
    *off += t->numel;
}

tbert_status tbert_head_create(const tbert_head_config *cfg, tbert_head **out, tbert_error *err) {
    *out = NULL;
    tbert_status st = check_config(cfg, err);
    if (st) return st;
    tbert_head *h = calloc(1, sizeof *h);
    if (!h) return tbert_fail(err, TBERT_E_NOMEM, "head: out of memory");
    h->cfg = *cfg;
    int O = tbert_head_out_dim(cfg);
    size_t off = 0;
    if (cfg->hidden > 0) {
        add_tensor(h, "fc1.weight", cfg->hidden, cfg->in_dim, &off);
        add_tensor(h, "fc1.bias", cfg->hidden, 0, &off);
        add_tensor(h, "fc2.weight", O, cfg->hidden, &off);
        add_tensor(h, "fc2.bias", O, 0, &off);
    } else {
        add_tensor(h, "fc2.weight", O, cfg->in_dim, &off);
        add_tensor(h, "fc2.bias", O, 0, &off);
    }
    h->n_params = off;
    h->params = tbert_calloc_array(off, sizeof(float));
    if (!h->params) {
        free(h);
        return tbert_fail(err, TBERT_E_NOMEM, "head: out of memory for %zu parameters", off);
    }
    int k = 0;
    if (cfg->hidden > 0) {
        h->w1 = h->params + h->tensors[k++].offset;
        h->b1 = h->params + h->tensors[k++].offset;
    }
    h->w2 = h->params + h->tensors[k++].offset;
    h->b2 = h->params + h->tensors[k++].offset;
    *out = h;
    return TBERT_OK;
}

void tbert_head_free(tbert_head *h) {
    if (!h) return;
    free(h->params);
    free(h);
}

void tbert_head_init(tbert_head *h, uint64_t seed) {
    tbert_rng r;
    tbert_rng_seed(&r, seed);
    for (int t = 0; t < h->n_tensors; t++) {
        const tbert_head_tensor *ht = &h->tensors[t];
        /* fan_in of a weight is its second dimension; a bias uses its layer's weight fan_in */
        int64_t fan_in = ht->ndim == 2 ? ht->shape[1] : h->tensors[t - 1].shape[1];
        double bound = 1.0 / sqrt((double)fan_in);
        float *p = h->params + ht->offset;
        for (size_t i = 0; i < ht->numel; i++) p[i] = (float)((2.0 * tbert_rng_uniform(&r) - 1.0) * bound);
    }
}

/* ---- workspace ---- */
struct tbert_head_ws {
    int max_n;
    int K;          /* input width of the last layer: hidden or D */
    float *a;       /* MLP pre-activation, max_n x hidden */
    float *h;       /* MLP post-dropout activation (or dropped-out x for a linear head), max_n x K */
    uint8_t *keep;  /* dropout mask, max_n x K (NULL without dropout) */
    float *dh;      /* gradient w.r.t. h, max_n x hidden */
    bool train;
};

tbert_status tbert_head_ws_create(const tbert_head_config *cfg, int max_n, tbert_head_ws **out, tbert_error *err) {
    *out = NULL;
    tbert_status st = check_config(cfg, err);
    if (st) return st;
    if (max_n <= 0) return tbert_fail(err, TBERT_E_ARG, "head: batch size %d must be positive", max_n);
    tbert_head_ws *ws = calloc(1, sizeof *ws);
    if (!ws) return tbert_fail(err, TBERT_E_NOMEM, "head: out of memory");
    ws->max_n = max_n;
    ws->K = cfg->hidden > 0 ? cfg->hidden : cfg->in_dim;
    size_t nk;
    bool ok = tbert_mul_size((size_t)max_n, (size_t)ws->K, &nk);
    if (ok && cfg->hidden > 0) {
        ws->a = tbert_malloc_array(nk, sizeof(float));
        ws->dh = tbert_malloc_array(nk, sizeof(float));
        ok = ws->a && ws->dh;
    }
    if (ok && (cfg->hidden > 0 || cfg->dropout > 0)) {
        ws->h = tbert_malloc_array(nk, sizeof(float));
        ok = ws->h != NULL;
    }
    if (ok && cfg->dropout > 0) {
        ws->keep = tbert_malloc_array(nk, 1);
        ok = ws->keep != NULL;
    }
    if (!ok) {
        tbert_head_ws_free(ws);
        return tbert_fail(err, TBERT_E_NOMEM, "head: out of memory for a %d-row workspace", max_n);
    }
    *out = ws;
    return TBERT_OK;
}

void tbert_head_ws_free(tbert_head_ws *ws) {
    if (!ws) return;
    free(ws->a);
    free(ws->h);
    free(ws->keep);
    free(ws->dh);
    free(ws);
}

/* ---- forward ---- */
static float gelu(float a) { return (float)(0.5 * a * (1.0 + erf(a * M_SQRT1_2))); }
static double gelu_grad(double a) { return 0.5 * (1.0 + erf(a * M_SQRT1_2)) + a * exp(-0.5 * a * a) / sqrt(2.0 * M_PI); }

/* y (n x out) = x (n x in) @ W^T (out x in) + b */
static void linear_forward(int n, int in, int outd, const float *x, const float *W, const float *b, float *y) {
    for (int i = 0; i < n; i++) memcpy(y + (size_t)i * outd, b, (size_t)outd * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, outd, in, 1.0f, x, in, W, in, 1.0f, y, outd);
}

static void apply_dropout(tbert_head_ws *ws, int n, float p, tbert_rng *rng, float *v) {
    size_t total = (size_t)n * (size_t)ws->K;
    float scale = 1.0f / (1.0f - p);
    for (size_t i = 0; i < total; i++) {
        ws->keep[i] = tbert_rng_uniform(rng) >= (double)p;
        v[i] = ws->keep[i] ? v[i] * scale : 0.0f;
    }
}

tbert_status tbert_head_forward(const tbert_head *h, tbert_head_ws *ws, int n, const float *x, bool train, tbert_rng *rng,
                                float *z, tbert_error *err) {
    const tbert_head_config *c = &h->cfg;
    if (n < 0 || n > ws->max_n) return tbert_fail(err, TBERT_E_ARG, "head: batch of %d rows exceeds the workspace (%d)", n, ws->max_n);
    if (n == 0) return TBERT_OK;
    bool drop = train && c->dropout > 0;
    if (drop && !rng) return tbert_fail(err, TBERT_E_ARG, "head: dropout needs an RNG");
    ws->train = drop;
    int O = tbert_head_out_dim(c);
    const float *last_in = x;
    if (c->hidden > 0) {
        size_t total = (size_t)n * (size_t)c->hidden;
        linear_forward(n, c->in_dim, c->hidden, x, h->w1, h->b1, ws->a);
        for (size_t i = 0; i < total; i++) ws->h[i] = gelu(ws->a[i]);
        if (drop) apply_dropout(ws, n, c->dropout, rng, ws->h);
        last_in = ws->h;
    } else if (drop) {
        if (x != ws->h) memcpy(ws->h, x, (size_t)n * (size_t)c->in_dim * sizeof(float));
        apply_dropout(ws, n, c->dropout, rng, ws->h);
        last_in = ws->h;
    }
    linear_forward(n, ws->K, O, last_in, h->w2, h->b2, z);
    return TBERT_OK;
}

/* ---- loss ---- */
tbert_status tbert_head_loss(const tbert_head_config *c, int n, const float *z, const int *y, const float *class_weight,
                             double *loss, float *dz, tbert_error *err) {
    int O = tbert_head_out_dim(c);
    double total = 0.0;
    for (int i = 0; i < n; i++) {
        if (y[i] < 0 || y[i] >= c->n_classes)
            return tbert_fail(err, TBERT_E_ARG, "head: class index %d of row %d out of range", y[i], i);
        double w = class_weight ? class_weight[y[i]] : 1.0;
        const float *zi = z + (size_t)i * O;
        if (c->binary) {
            double zz = zi[0], t = y[i] == c->positive ? 1.0 : 0.0;
            total += w * (fmax(zz, 0.0) - zz * t + log1p(exp(-fabs(zz))));
            if (dz) {
                double s = zz >= 0 ? 1.0 / (1.0 + exp(-zz)) : exp(zz) / (1.0 + exp(zz));
                dz[i] = (float)(w * (s - t) / n);
            }
        } else {
            double mx = zi[0];
            for (int k = 1; k < O; k++) mx = fmax(mx, zi[k]);
            double se = 0.0;
            for (int k = 0; k < O; k++) se += exp(zi[k] - mx);
            double lse = mx + log(se);
            total += w * (lse - zi[y[i]]);
            if (dz) {
                for (int k = 0; k < O; k++) {
                    double p = exp(zi[k] - lse) - (k == y[i] ? 1.0 : 0.0);
                    dz[(size_t)i * O + k] = (float)(w * p / n);
                }
            }
        }
    }
    if (loss) *loss = n > 0 ? total / n : 0.0;
    return TBERT_OK;
}

/* ---- backward ---- */
/* dW (out x in) = dy^T (out x n) @ x (n x in); db = column sums of dy (double) */
static void linear_backward_params(int n, int in, int outd, const float *x, const float *dy, float *dW, float *db) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, outd, in, n, 1.0f, dy, outd, x, in, 0.0f, dW, in);
    for (int k = 0; k < outd; k++) {
        double s = 0.0;
        for (int i = 0; i < n; i++) s += dy[(size_t)i * outd + k];
        db[k] = (float)s;
    }
}

/* MLP heads: dh = dz @ w2 (n x hidden), through dropout and GELU into da (stored in ws->dh); the dense and the
 * rows backward passes share it. */
static void hidden_backward(const tbert_head *h, tbert_head_ws *ws, int n, int O, const float *dz) {
    const tbert_head_config *c = &h->cfg;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, c->hidden, O, 1.0f, dz, O, h->w2, c->hidden, 0.0f, ws->dh,
                c->hidden);
    size_t total = (size_t)n * (size_t)c->hidden;
    float scale = ws->train ? 1.0f / (1.0f - c->dropout) : 1.0f;
    for (size_t i = 0; i < total; i++) {
        double g = ws->dh[i];
        if (ws->train) g = ws->keep[i] ? g * scale : 0.0;
        ws->dh[i] = (float)(g * gelu_grad(ws->a[i]));
    }
}

tbert_status tbert_head_backward(const tbert_head *h, tbert_head_ws *ws, int n, const float *x, const float *dz, float *grad,
                                 tbert_error *err) {
    const tbert_head_config *c = &h->cfg;
    if (n <= 0 || n > ws->max_n) return tbert_fail(err, TBERT_E_ARG, "head: backward batch of %d rows out of range", n);
    int O = tbert_head_out_dim(c);
    int k = 0;
    float *g_w1 = NULL, *g_b1 = NULL;
    if (c->hidden > 0) {
        g_w1 = grad + h->tensors[k++].offset;
        g_b1 = grad + h->tensors[k++].offset;
    }
    float *g_w2 = grad + h->tensors[k++].offset;
    float *g_b2 = grad + h->tensors[k++].offset;
    const float *last_in = (c->hidden > 0 || ws->train) ? ws->h : x;
    linear_backward_params(n, ws->K, O, last_in, dz, g_w2, g_b2);
    if (c->hidden == 0) return TBERT_OK;
    hidden_backward(h, ws, n, O, dz);
    linear_backward_params(n, c->in_dim, c->hidden, x, ws->dh, g_w1, g_b1);
    return TBERT_OK;
}

/* ---- sparse input (tbert_rows: dense block + CSR) ----
 * The feature column c of the dense layout is the rows' dense column c < dd, or sparse column c - dd.
 * W (out x in) keeps the dense layout; the dense block goes through one GEMM on W's first dd columns
 * (leading dimension in), the CSR part is a gather-dot per output row (forward) and a scatter-add into the
 * columns present (backward), both in row order, so the result is deterministic. */

/* y (n x out) = x @ W^T + b for rows x (x->n rows, in = dense_dim + sparse_dim) */
static void rows_linear_forward(const tbert_rows *x, int in, int outd, const float *W, const float *b, float *y) {
    int n = x->n, dd = (int)x->dense_dim;
    for (int i = 0; i < n; i++) memcpy(y + (size_t)i * outd, b, (size_t)outd * sizeof(float));
    if (dd > 0) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, outd, dd, 1.0f, x->dense, dd, W, in, 1.0f, y, outd);
    for (int o = 0; o < outd; o++) {
        const float *w = W + (size_t)o * in + dd;
        for (int i = 0; i < n; i++) {
            double s = 0.0;
            for (int64_t e = x->indptr[i]; e < x->indptr[i + 1]; e++) s += (double)x->values[e] * w[x->indices[e]];
            y[(size_t)i * outd + o] += (float)s;
        }
    }
}

/* dW (out x in) = dy^T @ x: GEMM for the dense columns, scatter-add for the sparse ones (the rest zero);
 * db = column sums of dy (double) */
static void rows_linear_backward_params(const tbert_rows *x, int in, int outd, const float *dy, float *dW, float *db) {
    int n = x->n, dd = (int)x->dense_dim;
    for (int o = 0; o < outd; o++) memset(dW + (size_t)o * in + dd, 0, (size_t)(in - dd) * sizeof(float));
    if (dd > 0) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, outd, dd, n, 1.0f, dy, outd, x->dense, dd, 0.0f, dW, in);
    for (int o = 0; o < outd; o++) {
        float *w = dW + (size_t)o * in + dd;
        for (int i = 0; i < n; i++) {
            float g = dy[(size_t)i * outd + o];
            for (int64_t e = x->indptr[i]; e < x->indptr[i + 1]; e++) w[x->indices[e]] += g * x->values[e];
        }
    }
    for (int k = 0; k < outd; k++) {
        double s = 0.0;
        for (int i = 0; i < n; i++) s += dy[(size_t)i * outd + k];
        db[k] = (float)s;
    }
}

static tbert_status check_rows(const tbert_head *h, const tbert_head_ws *ws, const tbert_rows *x, tbert_error *err) {
    if (tbert_rows_dim(x) != (size_t)h->cfg.in_dim)
        return tbert_fail(err, TBERT_E_ARG, "head: rows of %zu features for a head of %d", tbert_rows_dim(x), h->cfg.in_dim);
    if (x->n < 0 || x->n > ws->max_n)
        return tbert_fail(err, TBERT_E_ARG, "head: batch of %d rows exceeds the workspace (%d)", x->n, ws->max_n);
    return TBERT_OK;
}

/* A linear head with dropout drops input columns, zeros included (one draw per element, as the dense path):
 * it runs the dense path on the densified batch, so the two agree bit for bit. */
static bool rows_use_dense(const tbert_head *h, bool train) { return h->cfg.hidden == 0 && train && h->cfg.dropout > 0; }

tbert_status tbert_head_forward_rows(const tbert_head *h, tbert_head_ws *ws, const tbert_rows *x, bool train, tbert_rng *rng,
                                     float *z, tbert_error *err) {
    tbert_status st = check_rows(h, ws, x, err);
    if (st || x->n == 0) return st;
    const tbert_head_config *c = &h->cfg;
    int n = x->n;
    if (rows_use_dense(h, train)) {
        tbert_rows_densify(x, 0, n, ws->h, (size_t)c->in_dim);
        return tbert_head_forward(h, ws, n, ws->h, train, rng, z, err); /* copies ws->h onto itself: same bits */
    }
    bool drop = train && c->dropout > 0;
    if (drop && !rng) return tbert_fail(err, TBERT_E_ARG, "head: dropout needs an RNG");
    ws->train = drop;
    int O = tbert_head_out_dim(c);
    if (c->hidden == 0) {
        rows_linear_forward(x, c->in_dim, O, h->w2, h->b2, z);
        return TBERT_OK;
    }
    size_t total = (size_t)n * (size_t)c->hidden;
    rows_linear_forward(x, c->in_dim, c->hidden, h->w1, h->b1, ws->a);
    for (size_t i = 0; i < total; i++) ws->h[i] = gelu(ws->a[i]);
    if (drop) apply_dropout(ws, n, c->dropout, rng, ws->h);
    linear_forward(n, ws->K, O, ws->h, h->w2, h->b2, z);
    return TBERT_OK;
}

tbert_status tbert_head_backward_rows(const tbert_head *h, tbert_head_ws *ws, const tbert_rows *x, const float *dz, float *grad,
                                      tbert_error *err) {
    tbert_status st = check_rows(h, ws, x, err);
    if (st) return st;
    const tbert_head_config *c = &h->cfg;
    int n = x->n;
    if (n <= 0) return tbert_fail(err, TBERT_E_ARG, "head: backward batch of %d rows out of range", n);
    if (c->hidden == 0 && ws->train) return tbert_head_backward(h, ws, n, ws->h, dz, grad, err); /* see rows_use_dense */
    int O = tbert_head_out_dim(c);
    if (c->hidden == 0) {
        rows_linear_backward_params(x, c->in_dim, O, dz, grad + h->tensors[0].offset, grad + h->tensors[1].offset);
        return TBERT_OK;
    }
    linear_backward_params(n, ws->K, O, ws->h, dz, grad + h->tensors[2].offset, grad + h->tensors[3].offset);
    hidden_backward(h, ws, n, O, dz);
    rows_linear_backward_params(x, c->in_dim, c->hidden, ws->dh, grad + h->tensors[0].offset, grad + h->tensors[1].offset);
    return TBERT_OK;
}

tbert_status tbert_head_backward_input_rows(const tbert_head *h, tbert_head_ws *ws, const tbert_rows *x, const float *dz, float *dx,
                                            tbert_error *err) {
    tbert_status st = check_rows(h, ws, x, err);
    if (st) return st;
    const tbert_head_config *c = &h->cfg;
    int n = x->n, dd = (int)x->dense_dim, O = tbert_head_out_dim(c);
    if (n <= 0 || dd == 0) return TBERT_OK;
    if (c->hidden > 0) { /* ws->dh holds da (n x hidden) from backward_rows */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, dd, c->hidden, 1.0f, ws->dh, c->hidden, h->w1, c->in_dim, 0.0f,
                    dx, dd);
        return TBERT_OK;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, dd, O, 1.0f, dz, O, h->w2, c->in_dim, 0.0f, dx, dd);
    if (ws->train) { /* the linear head's forward dropped input columns: mask row-major over n x in_dim */
        float scale = 1.0f / (1.0f - c->dropout);
        for (int i = 0; i < n; i++)
            for (int j = 0; j < dd; j++) {
                float *g = dx + (size_t)i * dd + j;
                *g = ws->keep[(size_t)i * c->in_dim + j] ? *g * scale : 0.0f;
            }
    }
    return TBERT_OK;
}

/* ---- inference ---- */
void tbert_head_probs(const tbert_head_config *c, int n, const float *z, float *probs) {
    int O = tbert_head_out_dim(c), C = c->n_classes;
    for (int i = 0; i < n; i++) {
        const float *zi = z + (size_t)i * O;
        float *pi = probs + (size_t)i * C;
        if (c->binary) {
            double zz = zi[0];
            double s = zz >= 0 ? 1.0 / (1.0 + exp(-zz)) : exp(zz) / (1.0 + exp(zz));
            pi[c->positive] = (float)s;
            pi[1 - c->positive] = (float)(1.0 - s);
        } else {
            double mx = zi[0], se = 0.0;
            for (int k = 1; k < C; k++) mx = fmax(mx, zi[k]);
            for (int k = 0; k < C; k++) se += exp(zi[k] - mx);
            for (int k = 0; k < C; k++) pi[k] = (float)(exp(zi[k] - mx) / se);
        }
    }
}

tbert_status tbert_head_predict(const tbert_head *h, int n, const float *x, float *probs, tbert_error *err) {
    enum { CHUNK = 256 };
    int O = tbert_head_out_dim(&h->cfg);
    tbert_head_ws *ws = NULL;
    tbert_status st = tbert_head_ws_create(&h->cfg, CHUNK, &ws, err);
    if (st) return st;
    float *z = tbert_malloc_array((size_t)CHUNK * (size_t)O, sizeof(float));
    if (!z) {
        tbert_head_ws_free(ws);
        return tbert_fail(err, TBERT_E_NOMEM, "head: out of memory");
    }
    for (int i = 0; i < n && !st; i += CHUNK) {
        int m = n - i < CHUNK ? n - i : CHUNK;
        st = tbert_head_forward(h, ws, m, x + (size_t)i * h->cfg.in_dim, false, NULL, z, err);
        if (!st) tbert_head_probs(&h->cfg, m, z, probs + (size_t)i * h->cfg.n_classes);
    }
    free(z);
    tbert_head_ws_free(ws);
    return st;
}

tbert_status tbert_head_predict_rows(const tbert_head *h, const tbert_rows *x, float *probs, tbert_error *err) {
    enum { CHUNK = 256 }; /* the chunks of tbert_head_predict: the same GEMM shapes, so the same bits */
    size_t D = (size_t)h->cfg.in_dim;
    if (tbert_rows_dim(x) != D)
        return tbert_fail(err, TBERT_E_ARG, "head: rows of %zu features for a head of %d", tbert_rows_dim(x), h->cfg.in_dim);
    int cap = x->n < CHUNK ? x->n : CHUNK;
    if (cap == 0) return TBERT_OK;
    float *buf = tbert_malloc_array((size_t)cap, D * sizeof(float));
    if (!buf) return tbert_fail(err, TBERT_E_NOMEM, "head: out of memory for %d rows of %zu features", cap, D);
    tbert_status st = TBERT_OK;
    for (int i = 0; i < x->n && !st; i += CHUNK) {
        int m = x->n - i < CHUNK ? x->n - i : CHUNK;
        tbert_rows_densify(x, i, m, buf, D);
        st = tbert_head_predict(h, m, buf, probs + (size_t)i * h->cfg.n_classes, err);
    }
    free(buf);
    return st;
}
