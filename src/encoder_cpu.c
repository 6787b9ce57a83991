/* CPU backend of the encoder, the reference the CUDA backend is tested against. Matrix products: gemm_cpu.c
 * (weights packed once for an AVX-512 kernel; OpenBLAS where the CPU lacks AVX-512 or TBERT_CPU_GEMM=blas), or with
 * --precision bf16 gemm_bf16.c (bf16 operands, float32 sums: AMX where the CPU has it); attention, softmax, GELU and
 * LayerNorm stay float32.
 *
 * Layout: the batch is split by sequence into one chunk per thread (balanced by estimated cost), and
 * each thread runs the whole layer stack on its chunk with single-threaded matrix products: no barriers, no
 * false sharing, and each GEMM still has hundreds of rows. Inside a chunk the sequences are packed
 * (only real tokens, no padding rows): every linear layer works per token, and attention runs per
 * (sequence, head) over that sequence's own keys, so no padding mask is needed at all and no work is
 * spent on pads. Real rows are therefore exactly what transformers computes with its additive mask
 * (there exp(mask) underflows to exactly 0 for padded keys).
 *
 * A batch of one sequence on the AVX-512 path runs on a team of all threads instead ("a lone sequence on all
 * threads" below: the products split by column panels, with barriers), bit for bit the one-thread result.
 *
 * OpenBLAS's thread count is process-wide: each forward sets it to 1 (the workers call sgemm concurrently,
 * each on its own thread) or, for a batch that fits one worker on the BLAS path, to all threads. An encoder
 * runs one call at a time; pooling reads the packed rows directly (no [B,T,H] round trip).
 *
 * Per layer (N packed tokens, H hidden, I intermediate, A heads of d = H/A):
 *   qkv[N,3H]  = x @ Wqkv^T + bqkv          (Wq|Wk|Wv fused at create time; Wq, bq pre-scaled by 1/sqrt(d))
 *   ctx[N,H]   = softmax(q k^T) v           per (sequence, head): two small products on k transposed
 *   x          = LN(x + ctx @ Wo^T + bo)     (GEMM accumulates into x: beta = 1)
 *   inter[N,I] = gelu(x @ Wi^T + bi)         (exact erf GELU, in the product's epilogue)
 *   x          = LN(x + inter @ Wout^T + bout)
 */
#include <assert.h>
#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_math.h"
#include "encoder_backend.h"
#include "gemm_bf16.h"
#include "gemm_cpu.h"
#include "par_for.h"

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
        float mean = tbert_row_sum(r, H) / (float)H;
        float var = row_sqdev(r, H, mean) / (float)H;
        float rstd = 1.0f / sqrtf(var + eps);
        for (int j = 0; j < H; j++) r[j] = (r[j] - mean) * rstd * g[j] + b[j];
    }
}

/* ---- the backend ---------------------------------------------------------------------------------- */

typedef struct {
    float *x, *ctx, *big, *scores; /* [N,H], [N,H], [N,max(3H,I)], [(H+Lmax)*Lmax] (attention) */
    size_t cap_tokens, cap_scores;
    int *seq;                       /* indices into the batch of this worker's sequences */
    int n_seq;
    size_t n_tok;
    double cost;
} cpu_worker;

/* One layer's four matrix products, packed for gemm_cpu.c (float32) or gemm_bf16.c (bf16). */
typedef struct {
    tbert_packed_w qkv, attn_out, inter, out;
    tbert_packed_bf16 qkvb, attn_outb, interb, outb;
} cpu_layer;

struct tbert_cpu_encoder {
    const tbert_model *m;
    int layers, threads;
    bool avx512;          /* the packed AVX-512 kernels (gemm_cpu.c), else OpenBLAS */
    bool bf16;            /* --precision bf16: the four products by gemm_bf16.c */
    size_t bfs_stride;
    unsigned char *bfs;   /* per thread: gemm_bf16.c's scratch (bf16 only) */
    float *qkv_w, *qkv_b; /* per layer: (3H,H) and (3H), q rows first, q rows and bias scaled by 1/sqrt(d) */
    cpu_layer *lp;        /* layers entries */
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
    if (e->lp)
        for (int l = 0; l < e->layers; l++) {
            tbert_packed_free(&e->lp[l].qkv);
            tbert_packed_free(&e->lp[l].attn_out);
            tbert_packed_free(&e->lp[l].inter);
            tbert_packed_free(&e->lp[l].out);
            tbert_packed_bf16_free(&e->lp[l].qkvb);
            tbert_packed_bf16_free(&e->lp[l].attn_outb);
            tbert_packed_bf16_free(&e->lp[l].interb);
            tbert_packed_bf16_free(&e->lp[l].outb);
        }
    free(e->bfs);
    free(e->lp);
    free(e->qkv_w);
    free(e->qkv_b);
    free(e);
}

/* TBERT_CPU_GEMM=blas|avx512 forces a kernel (benchmarks, tests); default: AVX-512 when the CPU has it. */
static tbert_status gemm_kind(tbert_gemm_kind *kind, tbert_error *err) {
    const char *s = getenv("TBERT_CPU_GEMM");
    *kind = TBERT_GEMM_AUTO;
    if (!s || !*s || !strcmp(s, "auto")) return TBERT_OK;
    if (!strcmp(s, "blas")) *kind = TBERT_GEMM_BLAS;
    else if (!strcmp(s, "avx512")) *kind = TBERT_GEMM_AVX512;
    else return tbert_fail(err, TBERT_E_ARG, "TBERT_CPU_GEMM=%s: expected auto, blas or avx512", s);
    return TBERT_OK;
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
    float scale = 1.0f / sqrtf((float)(c->hidden / c->heads));
    for (int l = 0; l < e->layers; l++) {
        const tbert_layer_weights *lw = &m->layer[l];
        float *w = e->qkv_w + (size_t)l * 3 * H * H, *b = e->qkv_b + (size_t)l * 3 * H;
        for (size_t i = 0; i < H * H; i++) w[i] = lw->q_w[i] * scale;
        memcpy(w + H * H, lw->k_w, H * H * sizeof *w);
        memcpy(w + 2 * H * H, lw->v_w, H * H * sizeof *w);
        for (size_t i = 0; i < H; i++) b[i] = lw->q_b[i] * scale;
        memcpy(b + H, lw->k_b, H * sizeof *b);
        memcpy(b + 2 * H, lw->v_b, H * sizeof *b);
    }
    tbert_gemm_kind kind;
    tbert_status st = gemm_kind(&kind, err);
    e->lp = st ? NULL : calloc((size_t)e->layers, sizeof *e->lp);
    if (!st && !e->lp) st = tbert_fail(err, TBERT_E_NOMEM, "CPU encoder: out of memory");
    int h = c->hidden, im = c->intermediate;
    e->bf16 = opts->precision == TBERT_PREC_BF16;
    bool amx = e->bf16 && tbert_gemm_amx_supported();
    if (!st && e->bf16) {
        e->bfs_stride = tbert_gemm_bf16_scratch(amx, 256, h > im ? h : im, 1);
        e->bfs = aligned_alloc(64, (size_t)e->threads * e->bfs_stride);
        if (!e->bfs) st = tbert_fail(err, TBERT_E_NOMEM, "CPU encoder: out of memory for the bf16 products' scratch");
    }
    for (int l = 0; !st && e->bf16 && l < e->layers; l++) {
        const tbert_layer_weights *lw = &m->layer[l];
        cpu_layer *p = &e->lp[l];
        st = tbert_pack_bf16(e->qkv_w + (size_t)l * 3 * H * H, 3 * h, h, false, amx, &p->qkvb, err);
        if (!st) st = tbert_pack_bf16(lw->attn_out_w, h, h, false, amx, &p->attn_outb, err);
        if (!st) st = tbert_pack_bf16(lw->inter_w, im, h, false, amx, &p->interb, err);
        if (!st) st = tbert_pack_bf16(lw->out_w, h, im, false, amx, &p->outb, err);
    }
    for (int l = 0; !st && !e->bf16 && l < e->layers; l++) {
        const tbert_layer_weights *lw = &m->layer[l];
        cpu_layer *p = &e->lp[l];
        st = tbert_pack_weights(e->qkv_w + (size_t)l * 3 * H * H, 3 * h, h, kind, &p->qkv, err);
        if (!st) st = tbert_pack_weights(lw->attn_out_w, h, h, kind, &p->attn_out, err);
        if (!st) st = tbert_pack_weights(lw->inter_w, im, h, kind, &p->inter, err);
        if (!st) st = tbert_pack_weights(lw->out_w, h, im, kind, &p->out, err);
    }
    if (st) {
        tbert_cpu_encoder_free(e);
        return st;
    }
    e->avx512 = e->bf16 ? tbert_gemm_avx512_supported() && kind != TBERT_GEMM_BLAS : e->lp[0].qkv.packed != NULL;
    *out = e;
    return TBERT_OK;
}

static bool grow(float **p, size_t *cap, size_t need) {
    if (*cap >= need) return true;
    if (need < *cap / 2 * 3) need = *cap / 2 * 3; /* geometric: length-sorted batches grow a little each time */
    float *q = tbert_realloc_array(*p, need, sizeof(float));
    if (!q) return false;
    *p = q;
    *cap = need;
    return true;
}

static bool worker_reserve(cpu_worker *w, const tbert_config *c, size_t n_tok, int lmax) {
    size_t H = (size_t)c->hidden, wide = 3 * H > (size_t)c->intermediate ? 3 * H : (size_t)c->intermediate;
    if (w->cap_tokens < n_tok) {
        /* geometric growth: batches come sorted by length, and each fresh buffer costs page faults */
        size_t n = n_tok < w->cap_tokens / 2 * 3 ? w->cap_tokens / 2 * 3 : n_tok;
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
    return grow(&w->scores, &w->cap_scores, (size_t)lmax * (H + (size_t)lmax));
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

/* In-place softmax of each of the n rows of s (len values each, row stride ld). */
TBERT_VEC static void softmax_rows(float *s, int n, int len, int ld) {
    for (int i = 0; i < n; i++) {
        float *r = s + (size_t)i * ld;
        float mx = r[0];
        for (int j = 1; j < len; j++) mx = r[j] > mx ? r[j] : mx;
        for (int j = 0; j < len; j++) r[j] = tbert_exp_approx(r[j] - mx);
        float inv = 1.0f / tbert_row_sum(r, len);
        for (int j = 0; j < len; j++) r[j] *= inv;
    }
}

/* kt[H, L] = k[L, H]^T (rows of k have stride ld) */
static void transpose_keys(const float *k, int ld, int L, int H, float *kt) {
    for (int j = 0; j < L; j++) {
        const float *r = k + (size_t)j * ld;
        for (int c = 0; c < H; c++) kt[(size_t)c * L + j] = r[c];
    }
}

/* ctx = softmax(q k^T) v for every (sequence, head) of the worker; q is pre-scaled. Per sequence the keys are
 * transposed once (kt[H, L]); per head the scores s[L, L] (at most 64 KB for L = 128: L1/L2) are one small
 * product, a softmax and a second product straight into ctx. */
static void attention(const tbert_cpu_encoder *e, cpu_worker *w, const int32_t *lengths, const float *qkv,
                      float *ctx) {
    const tbert_config *c = &e->m->cfg;
    int H = c->hidden, A = c->heads, d = H / A, ld = 3 * H;
    size_t off = 0;
    for (int s = 0; s < w->n_seq; s++) {
        int L = lengths[w->seq[s]];
        const float *q = qkv + off * ld, *k = q + H, *v = q + 2 * H;
        float *kt = w->scores, *sc = w->scores + (size_t)H * L;
        transpose_keys(k, ld, L, H, kt);
        for (int h = 0; h < A; h++) {
            tbert_gemm_nn(e->avx512, L, L, d, q + h * d, (size_t)ld, kt + (size_t)h * d * L, (size_t)L, sc, (size_t)L);
            softmax_rows(sc, L, L, L);
            tbert_gemm_nn(e->avx512, L, d, L, sc, (size_t)L, v + h * d, (size_t)ld, ctx + off * H + h * d, (size_t)H);
        }
        off += (size_t)L;
    }
}

/* one of a layer's products in the encoder's precision; scratch: the calling thread's (bf16) */
static void product(const tbert_cpu_encoder *e, int thread, int N, const float *a, size_t lda, const tbert_packed_w *w,
                    const tbert_packed_bf16 *wb, const float *bias, bool acc, bool gelu, float *c, size_t ldc) {
    if (e->bf16) tbert_gemm_bf16(N, a, lda, wb, bias, acc, gelu, c, ldc, e->bfs + (size_t)thread * e->bfs_stride);
    else tbert_gemm_packed(N, a, lda, w, bias, acc, gelu, c, ldc);
}

static void layer_forward(const tbert_cpu_encoder *e, int l, cpu_worker *w, const int32_t *lengths) {
    const tbert_config *c = &e->m->cfg;
    const tbert_layer_weights *lw = &e->m->layer[l];
    const cpu_layer *p = &e->lp[l];
    int H = c->hidden, IM = c->intermediate, N = (int)w->n_tok, th = (int)(w - e->w);
    float *x = w->x, *ctx = w->ctx, *big = w->big;

    product(e, th, N, x, (size_t)H, &p->qkv, &p->qkvb, e->qkv_b + (size_t)l * 3 * H, false, false, big, 3 * (size_t)H);
    attention(e, w, lengths, big, ctx);
    product(e, th, N, ctx, (size_t)H, &p->attn_out, &p->attn_outb, lw->attn_out_b, true, false, x, (size_t)H);
    bias_layernorm(x, NULL, lw->attn_ln_g, lw->attn_ln_b, (size_t)N, H, c->layer_norm_eps);
    product(e, th, N, x, (size_t)H, &p->inter, &p->interb, lw->inter_b, false, true, big, (size_t)IM);
    product(e, th, N, big, (size_t)IM, &p->out, &p->outb, lw->out_b, true, false, x, (size_t)H);
    bias_layernorm(x, NULL, lw->out_ln_g, lw->out_ln_b, (size_t)N, H, c->layer_norm_eps);
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

/* Runs the whole stack on job i's sequences (tbert_par_for item i) and writes their rows or pooled features. */
static void worker_item(void *ctx, int i, int worker) {
    (void)worker;
    const worker_job *j = (const worker_job *)ctx + i;
    const tbert_cpu_encoder *e = j->e;
    cpu_worker *w = j->w;
    size_t H = (size_t)e->m->cfg.hidden;
    if (w->n_seq == 0) return;
    embed(e->m, w, j->T, j->ids, j->lengths, w->x);
    for (int l = 0; l < e->layers; l++) layer_forward(e, l, w, j->lengths);
    const float *r = w->x;
    for (int s = 0; s < w->n_seq; s++) {
        int b = w->seq[s], L = j->lengths[b];
        emit(j, b, r, L, H);
        r += (size_t)L * H;
    }
}

/* ---- a lone sequence on all threads ----
 * A batch of one sequence (serve at concurrency 1, filter, learn) would keep one core busy and leave the others
 * idle. A team of the encoder's threads then splits each matrix product by 32-column panels, the attention by
 * heads and the layernorms by rows, with a barrier between steps. Every output element is computed by the same
 * code on the same inputs as on one thread, so the result is bit for bit the one-thread result
 * (tests/test_encoder_cpu.c checks it). Only on the AVX-512 path: on the BLAS path OpenBLAS's own threads split
 * a lone sequence's products. */
enum { TEAM_MIN_TOKENS = 16, TEAM_MAX = 16 };

typedef struct {
    const worker_job *j;
    int id, n;
    pthread_barrier_t *bar;
    pthread_mutex_t *mu; /* the start gate: members wait until every thread exists (or the team is called off) */
    pthread_cond_t *cv;
    const int *gate; /* 1 go, -1 called off */
} team_member;

static void team_split(int total, int id, int n, int *a, int *b) {
    *a = (int)((long)total * id / n);
    *b = (int)((long)total * (id + 1) / n);
}

static void team_gemm(const team_member *t, int m, const float *a, size_t lda, const tbert_packed_w *w,
                      const tbert_packed_bf16 *wb, const float *bias, bool acc, bool gelu, float *c, size_t ldc) {
    const tbert_cpu_encoder *e = t->j->e;
    int p0, p1;
    if (e->bf16) {
        team_split(tbert_packed_bf16_blocks(wb), t->id, t->n, &p0, &p1);
        tbert_gemm_bf16_blocks(m, a, lda, wb, bias, acc, gelu, c, ldc, e->bfs + (size_t)t->id * e->bfs_stride, p0, p1);
    } else {
        team_split(tbert_packed_panels(w), t->id, t->n, &p0, &p1);
        tbert_gemm_packed_panels(m, a, lda, w, bias, acc, gelu, c, ldc, p0, p1);
    }
    pthread_barrier_wait(t->bar);
}

/* one member's share of the whole stack (member 0 embeds; the caller emits after the join) */
static void *team_run(void *arg) {
    const team_member *t = arg;
    pthread_mutex_lock(t->mu);
    while (*t->gate == 0) pthread_cond_wait(t->cv, t->mu);
    int go = *t->gate;
    pthread_mutex_unlock(t->mu);
    if (go < 0) return NULL;
    const worker_job *j = t->j;
    const tbert_cpu_encoder *e = j->e;
    cpu_worker *w = j->w;
    const tbert_config *c = &e->m->cfg;
    int H = c->hidden, IM = c->intermediate, A = c->heads, d = H / A, N = (int)w->n_tok, ld = 3 * H;
    float *kt = e->w[t->id].scores, *sc = kt + (size_t)H * N; /* this member's attention scratch */
    int r0, r1, h0, h1;
    team_split(N, t->id, t->n, &r0, &r1);
    team_split(A, t->id, t->n, &h0, &h1);
    if (t->id == 0) embed(e->m, w, j->T, j->ids, j->lengths, w->x);
    pthread_barrier_wait(t->bar);
    for (int l = 0; l < e->layers; l++) {
        const tbert_layer_weights *lw = &e->m->layer[l];
        const cpu_layer *p = &e->lp[l];
        team_gemm(t, N, w->x, (size_t)H, &p->qkv, &p->qkvb, e->qkv_b + (size_t)l * 3 * H, false, false, w->big, 3 * (size_t)H);
        if (h0 < h1) { /* the heads [h0, h1), as attention() computes each */
            const float *q = w->big, *k = q + H, *v = q + 2 * H;
            transpose_keys(k, ld, N, H, kt);
            for (int h = h0; h < h1; h++) {
                tbert_gemm_nn(e->avx512, N, N, d, q + h * d, (size_t)ld, kt + (size_t)h * d * N, (size_t)N, sc, (size_t)N);
                softmax_rows(sc, N, N, N);
                tbert_gemm_nn(e->avx512, N, d, N, sc, (size_t)N, v + h * d, (size_t)ld, w->ctx + h * d, (size_t)H);
            }
        }
        pthread_barrier_wait(t->bar);
        team_gemm(t, N, w->ctx, (size_t)H, &p->attn_out, &p->attn_outb, lw->attn_out_b, true, false, w->x, (size_t)H);
        bias_layernorm(w->x + (size_t)r0 * H, NULL, lw->attn_ln_g, lw->attn_ln_b, (size_t)(r1 - r0), H, c->layer_norm_eps);
        pthread_barrier_wait(t->bar);
        team_gemm(t, N, w->x, (size_t)H, &p->inter, &p->interb, lw->inter_b, false, true, w->big, (size_t)IM);
        team_gemm(t, N, w->big, (size_t)IM, &p->out, &p->outb, lw->out_b, true, false, w->x, (size_t)H);
        bias_layernorm(w->x + (size_t)r0 * H, NULL, lw->out_ln_g, lw->out_ln_b, (size_t)(r1 - r0), H, c->layer_norm_eps);
        pthread_barrier_wait(t->bar);
    }
    return NULL;
}

/* The lone worker's sequence on a team of n threads; false (nothing done) when the team cannot be set up (a
 * thread that cannot start, no memory for a member's scratch): the caller then runs it on one thread. */
static bool team_forward(tbert_cpu_encoder *e, const worker_job *j, int n) {
    const tbert_config *c = &e->m->cfg;
    size_t N = j->w->n_tok, H = (size_t)c->hidden;
    for (int i = 1; i < n; i++)
        if (!grow(&e->w[i].scores, &e->w[i].cap_scores, N * (H + N))) return false;
    pthread_barrier_t bar;
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    int gate = 0;
    if (pthread_barrier_init(&bar, NULL, (unsigned)n) != 0) return false;
    team_member t[TEAM_MAX];
    pthread_t tid[TEAM_MAX];
    int started = 0;
    for (int i = 0; i < n; i++) t[i] = (team_member){j, i, n, &bar, &mu, &cv, &gate};
    for (int i = 1; i < n; i++) {
        if (pthread_create(&tid[i], NULL, team_run, &t[i]) != 0) break;
        started++;
    }
    pthread_mutex_lock(&mu);
    gate = started == n - 1 ? 1 : -1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    if (gate > 0) team_run(&t[0]);
    for (int i = 1; i <= started; i++) pthread_join(tid[i], NULL);
    pthread_barrier_destroy(&bar);
    if (gate < 0) return false;
    const float *r = j->w->x; /* one sequence: emit as worker_item does */
    int b = j->w->seq[0];
    emit(j, b, r, j->lengths[b], H);
    return true;
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
    int team = e->threads < TEAM_MAX ? e->threads : TEAM_MAX;
    bool split = e->bf16 ? tbert_packed_bf16_blocks(&e->lp[0].qkvb) > 0 : e->avx512; /* column blocks to share */
    if (W == 1 && e->w[0].n_seq == 1 && team > 1 && split && e->w[0].n_tok >= TEAM_MIN_TOKENS) {
        openblas_set_num_threads(1);
        if (team_forward(e, &jobs[0], team)) {
            if (pool == TBERT_POOL_POOLER) return tbert_pooler_dense(e->m, B, out, err);
            return TBERT_OK;
        }
    }
    /* One busy worker (a batch of one): let OpenBLAS use all threads for its GEMMs instead. */
    openblas_set_num_threads(W == 1 ? e->threads : 1);
    tbert_par_for(W, W, worker_item, jobs); /* job i on worker i (a job whose thread cannot start: on the caller) */
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
