/* CPU backend of the encoder (OpenBLAS), the reference the CUDA backend is tested against.
 *
 * Layout: the batch is split by sequence into one chunk per thread (balanced by estimated cost), and
 * each thread runs the whole layer stack on its chunk with single-threaded OpenBLAS: no barriers, no
 * false sharing, and each GEMM still has hundreds of rows. Inside a chunk the sequences are packed
 * (only real tokens, no padding rows): every linear layer works per token, and attention runs per
 * (sequence, head) over that sequence's own keys, so no padding mask is needed at all and no work is
 * spent on pads. Real rows are therefore exactly what transformers computes with its additive mask
 * (there exp(mask) underflows to exactly 0 for padded keys).
 *
 * OpenBLAS's thread count is process-wide: each forward sets it to 1 (the workers call sgemm concurrently,
 * each on its own thread) or, for a batch that fits one worker (e.g. a single text), to all threads. An
 * encoder runs one call at a time; pooling reads the packed rows directly (no [B,T,H] round trip).
 *
 * Per layer (N packed tokens, H hidden, I intermediate, A heads of d = H/A):
 *   qkv[N,3H]  = x @ Wqkv^T + bqkv          (Wq|Wk|Wv fused at create time; q pre-scaled by 1/sqrt(d))
 *   ctx[N,H]   = softmax(q k^T) v           per (sequence, head)
 *   x          = LN(x + ctx @ Wo^T + bo)     (GEMM accumulates into x: beta = 1)
 *   inter[N,I] = gelu(x @ Wi^T + bi)         (exact erf GELU)
 *   x          = LN(x + inter @ Wout^T + bout)
 */
#include <assert.h>
#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "encoder_backend.h"

/* Vectorised clones of the element-wise loops (the build has no -march flag). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define TBERT_VEC __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TBERT_VEC
#endif

/* ---- element-wise math -------------------------------------------------------------------------- */

/* exp(x) for x <= 88: 2^k * p(r), r = x - k ln2 in [-ln2/2, ln2/2], degree-6 Taylor polynomial
 * (relative error < 2e-7). Branch-free, without floorf/fminf (which block vectorisation without
 * -ffast-math): k is rounded with the 1.5*2^23 trick, 2^k built in the exponent bits. x < -87 gives ~0. */
static inline float exp_approx(float x) {
    const float log2e = 1.44269504088896341f, ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    const float round_magic = 12582912.0f; /* 1.5 * 2^23 */
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float k = (x * log2e + round_magic) - round_magic;
    float r = x - k * ln2_hi - k * ln2_lo;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* erf(x), Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7, exact enough for float GELU). */
static inline float erf_approx(float x) {
    float ax = fabsf(x);
    float t = 1.0f / (1.0f + 0.3275911f * ax);
    float y = 1.061405429f;
    y = y * t - 1.453152027f;
    y = y * t + 1.421413741f;
    y = y * t - 0.284496736f;
    y = y * t + 0.254829592f;
    y = 1.0f - y * t * exp_approx(-ax * ax);
    return copysignf(y, x);
}

/* x[n,cols] += bias, then gelu(x) = x/2 (1 + erf(x/sqrt 2)) */
TBERT_VEC static void bias_gelu(float *x, const float *bias, size_t n, int cols) {
    for (size_t i = 0; i < n; i++) {
        float *r = x + i * cols;
        for (int j = 0; j < cols; j++) {
            float v = r[j] + bias[j];
            r[j] = 0.5f * v * (1.0f + erf_approx(v * 0.70710678118654752f));
        }
    }
}

/* qkv[n,3H] += bqkv; q part scaled by s (the attention's 1/sqrt(d)) */
TBERT_VEC static void bias_qkv(float *qkv, const float *b, size_t n, int H, float s) {
    for (size_t i = 0; i < n; i++) {
        float *r = qkv + i * 3 * H;
        for (int j = 0; j < H; j++) r[j] = (r[j] + b[j]) * s;
        for (int j = H; j < 3 * H; j++) r[j] += b[j];
    }
}

/* Sum of a row with 16 independent partial sums, so that the loop vectorises without reassociation. */
static inline float row_sum(const float *x, int n) {
    float acc[16] = {0};
    int j = 0;
    for (; j + 16 <= n; j += 16)
        for (int k = 0; k < 16; k++) acc[k] += x[j + k];
    float s = 0.0f;
    for (; j < n; j++) s += x[j];
    for (int k = 0; k < 16; k++) s += acc[k];
    return s;
}

static inline float row_sqdev(const float *x, int n, float mean) {
    float acc[16] = {0};
    int j = 0;
    for (; j + 16 <= n; j += 16)
        for (int k = 0; k < 16; k++) {
            float d = x[j + k] - mean;
            acc[k] += d * d;
        }
    float s = 0.0f;
    for (; j < n; j++) s += (x[j] - mean) * (x[j] - mean);
    for (int k = 0; k < 16; k++) s += acc[k];
    return s;
}

/* x[n,H] = LN(x + bias) * g + b  (bias may be NULL); two-pass mean/variance as torch does */
TBERT_VEC static void bias_layernorm(float *x, const float *bias, const float *g, const float *b, size_t n, int H,
                                     float eps) {
    for (size_t i = 0; i < n; i++) {
        float *r = x + i * H;
        if (bias)
            for (int j = 0; j < H; j++) r[j] += bias[j];
        float mean = row_sum(r, H) / (float)H;
        float var = row_sqdev(r, H, mean) / (float)H;
        float rstd = 1.0f / sqrtf(var + eps);
        for (int j = 0; j < H; j++) r[j] = (r[j] - mean) * rstd * g[j] + b[j];
    }
}

/* In-place softmax of each of the n rows of s (len values each). */
TBERT_VEC static void softmax_rows(float *s, int n, int len) {
    for (int i = 0; i < n; i++) {
        float *r = s + (size_t)i * len;
        float mx = r[0];
        for (int j = 1; j < len; j++) mx = r[j] > mx ? r[j] : mx;
        for (int j = 0; j < len; j++) r[j] = exp_approx(r[j] - mx);
        float inv = 1.0f / row_sum(r, len);
        for (int j = 0; j < len; j++) r[j] *= inv;
    }
}

/* ---- the backend ---------------------------------------------------------------------------------- */

typedef struct {
    float *x, *ctx, *big, *scores; /* [N,H], [N,H], [N,max(3H,I)], [Lmax*Lmax] */
    size_t cap_tokens, cap_scores;
    int *seq;                       /* indices into the batch of this worker's sequences */
    int n_seq;
    size_t n_tok;
    double cost;
} cpu_worker;

struct tbert_cpu_encoder {
    const tbert_model *m;
    int layers, threads;
    float *qkv_w, *qkv_b; /* per layer: (3H,H) and (3H), q rows first */
    cpu_worker *w;        /* threads entries */
};

/* What a worker writes: the hidden state [B,T,H] (pool < 0), or pooled rows straight from its packed
 * activations (no [B,T,H] round trip): MEAN, CLS and POOLER (the CLS row; the dense+tanh runs after the
 * join) into out[B,H], FLATTEN into out[B, out_T*H]. */
typedef struct {
    tbert_cpu_encoder *e;
    cpu_worker *w;
    int T, out_T, pool;
    const int32_t *ids, *lengths;
    float *out;
} worker_job;

void tbert_cpu_encoder_free(tbert_cpu_encoder *e) {
    if (!e) return;
    if (e->w)
        for (int i = 0; i < e->threads; i++) {
            free(e->w[i].x);
            free(e->w[i].ctx);
            free(e->w[i].big);
            free(e->w[i].scores);
            free(e->w[i].seq);
        }
    free(e->w);
    free(e->qkv_w);
    free(e->qkv_b);
    free(e);
}

tbert_status tbert_cpu_encoder_create(const tbert_model *m, const tbert_encoder_opts *opts, tbert_cpu_encoder **out,
                                      tbert_error *err) {
    *out = NULL;
    const tbert_config *c = &m->cfg;
    if (c->hidden <= 0 || c->heads <= 0 || c->hidden % c->heads || c->layers <= 0 || c->intermediate <= 0)
        return tbert_fail(err, TBERT_E_ARG, "CPU encoder: inconsistent config (hidden %d, heads %d, layers %d)",
                          c->hidden, c->heads, c->layers);
    tbert_cpu_encoder *e = calloc(1, sizeof *e);
    if (!e) return tbert_fail(err, TBERT_E_NOMEM, "CPU encoder: out of memory");
    e->m = m;
    e->layers = opts->layers > 0 && opts->layers < c->layers ? opts->layers : c->layers;
    e->threads = opts->threads > 0 ? opts->threads : tbert_num_cores();
    size_t H = (size_t)c->hidden;
    e->qkv_w = tbert_malloc_array((size_t)e->layers * 3 * H, H * sizeof(float));
    e->qkv_b = tbert_malloc_array((size_t)e->layers * 3 * H, sizeof(float));
    e->w = calloc((size_t)e->threads, sizeof *e->w);
    if (!e->qkv_w || !e->qkv_b || !e->w) {
        tbert_cpu_encoder_free(e);
        return tbert_fail(err, TBERT_E_NOMEM, "CPU encoder: out of memory for the fused QKV weights");
    }
    for (int l = 0; l < e->layers; l++) {
        const tbert_layer_weights *lw = &m->layer[l];
        float *w = e->qkv_w + (size_t)l * 3 * H * H, *b = e->qkv_b + (size_t)l * 3 * H;
        memcpy(w, lw->q_w, H * H * sizeof *w);
        memcpy(w + H * H, lw->k_w, H * H * sizeof *w);
        memcpy(w + 2 * H * H, lw->v_w, H * H * sizeof *w);
        memcpy(b, lw->q_b, H * sizeof *b);
        memcpy(b + H, lw->k_b, H * sizeof *b);
        memcpy(b + 2 * H, lw->v_b, H * sizeof *b);
    }
    *out = e;
    return TBERT_OK;
}

static bool grow(float **p, size_t *cap, size_t need) {
    if (*cap >= need) return true;
    float *q = tbert_realloc_array(*p, need, sizeof(float));
    if (!q) return false;
    *p = q;
    *cap = need;
    return true;
}

static bool worker_reserve(cpu_worker *w, const tbert_config *c, size_t n_tok, int lmax) {
    size_t H = (size_t)c->hidden, wide = 3 * H > (size_t)c->intermediate ? 3 * H : (size_t)c->intermediate;
    if (w->cap_tokens < n_tok) {
        size_t n = n_tok;
        float *x = tbert_malloc_array(n, H * sizeof(float)), *ctx = tbert_malloc_array(n, H * sizeof(float));
        float *big = tbert_malloc_array(n, wide * sizeof(float));
        if (!x || !ctx || !big) {
            free(x);
            free(ctx);
            free(big);
            return false;
        }
        free(w->x);
        free(w->ctx);
        free(w->big);
        w->x = x, w->ctx = ctx, w->big = big;
        w->cap_tokens = n;
    }
    return grow(&w->scores, &w->cap_scores, (size_t)lmax * (size_t)lmax);
}

/* x[n_tok,H] = LN(word[id] + pos[t] + type[0]) for the worker's sequences */
static void embed(const tbert_model *m, const cpu_worker *w, int T, const int32_t *ids, const int32_t *lengths,
                  float *x) {
    const tbert_config *c = &m->cfg;
    size_t H = (size_t)c->hidden;
    float *r = x;
    for (int s = 0; s < w->n_seq; s++) {
        int b = w->seq[s];
        for (int t = 0; t < lengths[b]; t++, r += H) {
            const float *we = m->word_emb + (size_t)ids[(size_t)b * T + t] * H;
            const float *pe = m->pos_emb + (size_t)t * H, *te = m->type_emb;
            for (size_t j = 0; j < H; j++) r[j] = we[j] + pe[j] + te[j];
        }
    }
    bias_layernorm(x, NULL, m->emb_ln_g, m->emb_ln_b, w->n_tok, c->hidden, c->layer_norm_eps);
}

/* ctx = softmax(q k^T) v for every (sequence, head) of the worker; q is pre-scaled */
static void attention(const tbert_config *c, cpu_worker *w, const int32_t *lengths, const float *qkv, float *ctx) {
    int H = c->hidden, A = c->heads, d = H / A, ld = 3 * H;
    size_t off = 0;
    for (int s = 0; s < w->n_seq; s++) {
        int L = lengths[w->seq[s]];
        const float *q = qkv + off * ld, *k = q + H, *v = q + 2 * H;
        for (int h = 0; h < A; h++) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, L, L, d, 1.0f, q + h * d, ld, k + h * d, ld, 0.0f,
                        w->scores, L);
            softmax_rows(w->scores, L, L);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, L, d, L, 1.0f, w->scores, L, v + h * d, ld, 0.0f,
                        ctx + off * H + h * d, H);
        }
        off += (size_t)L;
    }
}

static void layer_forward(const tbert_cpu_encoder *e, int l, cpu_worker *w, const int32_t *lengths) {
    const tbert_config *c = &e->m->cfg;
    const tbert_layer_weights *lw = &e->m->layer[l];
    int H = c->hidden, IM = c->intermediate, N = (int)w->n_tok;
    float *x = w->x, *ctx = w->ctx, *big = w->big;
    const float *wqkv = e->qkv_w + (size_t)l * 3 * H * H, *bqkv = e->qkv_b + (size_t)l * 3 * H;

    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, 3 * H, H, 1.0f, x, H, wqkv, H, 0.0f, big, 3 * H);
    bias_qkv(big, bqkv, (size_t)N, H, 1.0f / sqrtf((float)(H / c->heads)));
    attention(c, w, lengths, big, ctx);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, H, H, 1.0f, ctx, H, lw->attn_out_w, H, 1.0f, x, H);
    bias_layernorm(x, lw->attn_out_b, lw->attn_ln_g, lw->attn_ln_b, (size_t)N, H, c->layer_norm_eps);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, IM, H, 1.0f, x, H, lw->inter_w, H, 0.0f, big, IM);
    bias_gelu(big, lw->inter_b, (size_t)N, IM);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, H, IM, 1.0f, big, IM, lw->out_w, IM, 1.0f, x, H);
    bias_layernorm(x, lw->out_b, lw->out_ln_g, lw->out_ln_b, (size_t)N, H, c->layer_norm_eps);
}

/* Writes one sequence's rows r[L,H] where the job wants them. */
static void emit(const worker_job *j, int b, const float *r, int L, size_t H) {
    if (j->pool < 0 || j->pool == TBERT_POOL_FLATTEN) {
        size_t rows = (size_t)(j->pool < 0 ? j->T : j->out_T);
        float *o = j->out + (size_t)b * rows * H;
        memcpy(o, r, (size_t)L * H * sizeof *o);
        memset(o + (size_t)L * H, 0, (rows - (size_t)L) * H * sizeof *o);
    } else if (j->pool == TBERT_POOL_MEAN) {
        float *o = j->out + (size_t)b * H;
        memset(o, 0, H * sizeof *o);
        for (int t = 0; t < L; t++)
            for (size_t k = 0; k < H; k++) o[k] += r[(size_t)t * H + k];
        float inv = 1.0f / (float)L;
        for (size_t k = 0; k < H; k++) o[k] *= inv;
    } else { /* CLS, POOLER */
        memcpy(j->out + (size_t)b * H, r, H * sizeof *r);
    }
}

/* Runs the whole stack on one worker's sequences and writes their rows or pooled features. */
static void *worker_run(void *arg) {
    worker_job *j = arg;
    const tbert_cpu_encoder *e = j->e;
    cpu_worker *w = j->w;
    size_t H = (size_t)e->m->cfg.hidden;
    if (w->n_seq == 0) return NULL;
    embed(e->m, w, j->T, j->ids, j->lengths, w->x);
    for (int l = 0; l < e->layers; l++) layer_forward(e, l, w, j->lengths);
    const float *r = w->x;
    for (int s = 0; s < w->n_seq; s++) {
        int b = w->seq[s], L = j->lengths[b];
        emit(j, b, r, L, H);
        r += (size_t)L * H;
    }
    return NULL;
}

enum { MIN_WORKER_TOKENS = 64 };

/* Estimated cost of a sequence: per-token GEMMs plus quadratic attention. */
static double seq_cost(const tbert_config *c, int L) {
    return (double)L * (4.0 * c->hidden + 2.0 * c->intermediate) + 2.0 * (double)L * L;
}

/* Longest-processing-time assignment of sequences to workers; returns the number of busy workers. */
static int assign(tbert_cpu_encoder *e, int B, const int32_t *lengths, int *order) {
    /* a worker needs some rows for its GEMMs to pay: at most one per MIN_WORKER_TOKENS tokens */
    size_t tokens = 0;
    for (int i = 0; i < B; i++) tokens += (size_t)lengths[i];
    size_t by_tokens = (tokens + MIN_WORKER_TOKENS - 1) / MIN_WORKER_TOKENS;
    int W = e->threads < B ? e->threads : B;
    if ((size_t)W > by_tokens) W = (int)by_tokens;
    for (int i = 0; i < W; i++) e->w[i].n_seq = 0, e->w[i].n_tok = 0, e->w[i].cost = 0.0;
    for (int i = 0; i < B; i++) order[i] = i;
    /* insertion sort by length, descending (batches are small and usually already sorted) */
    for (int i = 1; i < B; i++) {
        int v = order[i], k = i;
        while (k > 0 && lengths[order[k - 1]] < lengths[v]) order[k] = order[k - 1], k--;
        order[k] = v;
    }
    for (int i = 0; i < B; i++) {
        int best = 0;
        for (int k = 1; k < W; k++)
            if (e->w[k].cost < e->w[best].cost) best = k;
        cpu_worker *w = &e->w[best];
        w->seq[w->n_seq++] = order[i];
        w->n_tok += (size_t)lengths[order[i]];
        w->cost += seq_cost(&e->m->cfg, lengths[order[i]]);
    }
    return W;
}

static tbert_status run(tbert_cpu_encoder *e, int B, int T, const int32_t *ids, const int32_t *lengths, int pool,
                        int out_T, float *out, tbert_error *err) {
    const tbert_config *c = &e->m->cfg;
    if (B <= 0 || T <= 0 || T > c->max_position)
        return tbert_fail(err, TBERT_E_ARG, "CPU encoder: bad batch shape B=%d T=%d (max length %d)", B, T,
                          c->max_position);
    if (pool == TBERT_POOL_FLATTEN && out_T < T)
        return tbert_fail(err, TBERT_E_ARG, "flatten pooling: output length %d < batch length %d", out_T, T);
    if (pool == TBERT_POOL_POOLER && !e->m->pooler_w)
        return tbert_fail(err, TBERT_E_ARG, "%s: --pool pooler needs a pooler, and this checkpoint has none",
                          e->m->dir ? e->m->dir : "model");
    for (int b = 0; b < B; b++) {
        if (lengths[b] < 1 || lengths[b] > T)
            return tbert_fail(err, TBERT_E_ARG, "CPU encoder: sequence %d has length %d (batch length %d)", b,
                              (int)lengths[b], T);
        for (int t = 0; t < lengths[b]; t++) {
            int32_t id = ids[(size_t)b * T + t];
            if (id < 0 || id >= c->vocab_size)
                return tbert_fail(err, TBERT_E_ARG, "CPU encoder: token id %d out of range (vocab size %d)", (int)id,
                                  c->vocab_size);
        }
    }
    int *order = tbert_malloc_array((size_t)B, sizeof *order);
    if (!order) return tbert_fail(err, TBERT_E_NOMEM, "CPU encoder: out of memory");
    for (int i = 0; i < e->threads && i < B; i++) {
        int *s = tbert_realloc_array(e->w[i].seq, (size_t)B, sizeof *s);
        if (!s) {
            free(order);
            return tbert_fail(err, TBERT_E_NOMEM, "CPU encoder: out of memory");
        }
        e->w[i].seq = s;
    }
    int W = assign(e, B, lengths, order);
    free(order);
    for (int i = 0; i < W; i++) {
        int lmax = 0;
        for (int s = 0; s < e->w[i].n_seq; s++)
            if (lengths[e->w[i].seq[s]] > lmax) lmax = lengths[e->w[i].seq[s]];
        if (!worker_reserve(&e->w[i], c, e->w[i].n_tok, lmax))
            return tbert_fail(err, TBERT_E_NOMEM, "CPU encoder: out of memory for a batch of %d x %d", B, T);
    }

    worker_job jobs[W];
    for (int i = 0; i < W; i++) jobs[i] = (worker_job){e, &e->w[i], T, out_T, pool, ids, lengths, out};
    /* One busy worker (a batch of one): let OpenBLAS use all threads for its GEMMs instead. */
    openblas_set_num_threads(W == 1 ? e->threads : 1);
    pthread_t tid[W > 1 ? W - 1 : 1];
    int started = 0;
    for (int i = 1; i < W; i++) {
        if (pthread_create(&tid[i - 1], NULL, worker_run, &jobs[i]) != 0) break;
        started++;
    }
    worker_run(&jobs[0]);
    for (int i = 0; i < started; i++) pthread_join(tid[i], NULL);
    /* chunks whose thread could not start run here */
    for (int i = 1 + started; i < W; i++) worker_run(&jobs[i]);
    if (pool == TBERT_POOL_POOLER) return tbert_pooler_dense(e->m, B, out, err);
    return TBERT_OK;
}

tbert_status tbert_cpu_encoder_forward(tbert_cpu_encoder *e, int B, int T, const int32_t *ids, const int32_t *lengths,
                                       float *hidden, tbert_error *err) {
    return run(e, B, T, ids, lengths, -1, T, hidden, err);
}

tbert_status tbert_cpu_encoder_forward_pool(tbert_cpu_encoder *e, int B, int T, const int32_t *ids,
                                            const int32_t *lengths, tbert_pool pool, int out_T, float *out,
                                            tbert_error *err) {
    if ((unsigned)pool >= TBERT_POOL_COUNT) return tbert_fail(err, TBERT_E_ARG, "CPU encoder: unknown pooling");
    return run(e, B, T, ids, lengths, (int)pool, pool == TBERT_POOL_FLATTEN ? out_T : T, out, err);
}
