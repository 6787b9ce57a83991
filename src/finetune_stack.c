/* The trainable top of the encoder (include/tbert/finetune_stack.h): float32 copies of the trained tensors, the
 * forward of the top K layers on packed windows saving what the backward needs, pooling per window, the mean over
 * a document's windows, optional L2, and the backward to every trained tensor's gradient. Every step is a single op
 * of include/tbert/encoder_backward.h run on a piece of the batch; the linear layers' products are src/gemm_cpu.c's
 * (the four matrices of each layer packed at every forward, and transposed at every backward, for y = x W^T and
 * dx = dy W; the weight gradients by tbert_gemm_tn_chunked, as tbert_bwd_linear).
 *
 * Threads: each op is split into items that do not depend on the thread count -- fixed chunks of rows (FWD_ROWS in
 * the forward and for the backward's dx = dy W, TBERT_BWD_CHUNK for the LayerNorm and GELU parameter gradients),
 * ranges of output rows (the linear weight and bias gradients) or single windows (attention, embeddings) -- and the
 * items are shared among cfg.threads pthreads (contiguous ranges; src/par_for.c). A parameter gradient is the sum of
 * its chunks' partials in chunk order (each partial summed from zero over its chunk), which is what the op does on
 * the whole batch at once, so the bits do not depend on the thread count. OpenBLAS (attention's small products) runs
 * on one thread (each worker calls it on its own).
 *
 * Per trained layer (N packed tokens; dropout d_site from include/tbert/dropout_rng.h):
 *   qkv = x Wqkv^T + bqkv;  ctx = d_probs(softmax(q k^T / sqrt(dh))) v      (per window and head; P saved)
 *   z1  = x + d_attn_out(ctx Wo^T + bo);  h1 = LN1(z1)                      (z1, mean, rstd saved)
 *   a   = h1 Wi^T + bi;  g = gelu(a);  z2 = h1 + d_ffn_out(g Wout^T + bout);  out = LN2(z2)
 * Embeddings (first layer 0): out = d_emb(LN(word[id] + pos[t] + type[0])).
 * Pooling per window; a window of length 0 (all padding) pools to nothing and is left out of its document's
 * mean (a document with no real window gets a zero row and no gradient). */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "encoder_backend.h"
#include "gemm_bf16.h"
#include "gemm_cpu.h"
#include "par_for.h"
#include "tbert/dropout_rng.h"
#include "tbert/encoder_backward.h"
#include "tbert/finetune_stack.h"

enum { FWD_ROWS = 4 * TBERT_BWD_CHUNK };

typedef struct {
    float *wqkv, *bqkv, *wo, *bo, *ln1_g, *ln1_b, *wi, *bi, *wout, *bout, *ln2_g, *ln2_b;
} ft_lw; /* one trained layer's tensors (values or gradients); wqkv = [query; key; value] rows, [3H, H] */

/* one trained layer's four matrices packed for gemm_cpu.c (float32) or gemm_bf16.c (cfg.bf16): for the forward
 * (y = x W^T) and, transposed, for the backward's dx = dy W; refreshed from the trained values at each forward /
 * backward (the optimiser moved them) */
enum { PK_QKV, PK_O, PK_I, PK_OUT, PK_COUNT };
typedef struct {
    tbert_packed_w f[PK_COUNT], t[PK_COUNT];
    tbert_packed_bf16 fb[PK_COUNT], tb[PK_COUNT];
} ft_pk;

typedef struct {
    float *x; /* [N,H] the layer's input (the layer below's out, or the stack's input) */
    float *qkv, *P, *Pd, *ctx, *z1, *mean1, *rstd1, *h1, *a, *g, *z2, *mean2, *rstd2, *out;
} ft_act;

struct tbert_ft_stack {
    const tbert_model *m;
    tbert_ft_stack_cfg cfg;
    int first, H, IM, A, threads;
    size_t dense_dim;
    float *wv, *gv; /* the trained tensors' values and gradients, one allocation each, same layout */
    ft_lw *lw, *lg; /* k entries: layer first + i */
    ft_pk *pk;      /* k entries */
    bool avx512;    /* gemm_cpu.c's AVX-512 kernels */
    bool bf16, amx; /* cfg.bf16: the linear layers' products in bf16 (gemm_bf16.c), on AMX when the CPU has it */
    size_t bfs_stride;
    unsigned char *bfs; /* per worker: gemm_bf16.c's scratch (bf16 only) */
    const float *word, *pos, *type, *eln_g, *eln_b; /* embeddings in use (trained copies or the model's) */
    float *dword, *dpos, *dtype, *deln_g, *deln_b;  /* NULL unless train_embeddings */
    float *pool_w, *pool_b, *dpool_w, *dpool_b;    /* pool == pooler */
    tbert_params params;
    /* scratch sized at create */
    size_t ws_stride;
    float *wsw; /* per worker: an op's workspace */
    /* the batch of the last forward, and its activations (arena sized by the capacities below) */
    size_t cap_N, cap_P;
    int cap_win, cap_doc;
    float *arena;
    int n_doc, n_win, n_ne;
    size_t N, psize;
    int32_t *doc_off, *off, *ids; /* copies */
    size_t *pbase;                /* per window: its attention probabilities' offset in P (per head block: L*L) */
    int32_t *ne;                  /* the non-empty windows, in order */
    int32_t *doc_ne;              /* per document: its non-empty windows */
    float *x0, *ez, *emean, *erstd;
    ft_act *act;
    float *cls, *pooled, *docpre, *docout; /* [n_ne,H], [n_win,dim], [n_doc,dim] x 2 */
    float *dY, *dZ, *dH, *dCtx, *dQKV, *dI, *part, *pool_ws, *dpooled, *ddoc;
    bool saved, training;
    uint64_t step;
};

/* ---- threads ------------------------------------------------------------------------------------------ */

typedef tbert_par_fn ft_task;

/* fn(ctx, i, worker) for i < n, item ranges shared among the stack's threads; worker < threads indexes scratch. */
static void par_for(const tbert_ft_stack *s, int n, ft_task fn, void *ctx) {
    tbert_par_for(s->threads, n, fn, ctx);
}

static int n_chunks(size_t N, size_t rows) {
    return (int)((N + rows - 1) / rows);
}

/* ---- forward items ------------------------------------------------------------------------------------ */

/* y = (x W^T + b) * dropout + res, rows in chunks of FWD_ROWS (b, drop, res may be NULL; W packed) */
typedef struct {
    size_t N;
    int in, out;
    const tbert_ft_stack *s;
    const float *x, *b, *res;
    const ft_pk *pk;
    int q; /* which matrix of pk (PK_*) */
    float *y;
    const tbert_dropout *drop;
} lin_fwd;

/* c[m, :] = a[m, :] @ (the layer's matrix q, transposed for the backward when t)^T + bias, in the stack's precision */
static void product(const tbert_ft_stack *s, const ft_pk *pk, bool t, int q, int m, const float *a, size_t lda,
                    const float *bias, float *c, size_t ldc, int worker) {
    if (s->bf16)
        tbert_gemm_bf16(m, a, lda, t ? &pk->tb[q] : &pk->fb[q], bias, false, false, c, ldc, s->bfs + (size_t)worker * s->bfs_stride);
    else
        tbert_gemm_packed(m, a, lda, t ? &pk->t[q] : &pk->f[q], bias, false, false, c, ldc);
}

static void lin_fwd_item(void *ctx, int item, int worker) {
    const lin_fwd *j = ctx;
    size_t r0 = (size_t)item * FWD_ROWS, m = j->N - r0 < FWD_ROWS ? j->N - r0 : FWD_ROWS;
    size_t out = (size_t)j->out;
    float *y = j->y + r0 * out;
    product(j->s, j->pk, false, j->q, (int)m, j->x + r0 * (size_t)j->in, (size_t)j->in, j->b, y, out, worker);
    if (j->drop) tbert_dropout_apply(m * out, y, j->drop, r0 * out);
    if (j->res)
        for (size_t i = 0; i < m * out; i++) y[i] += j->res[r0 * out + i];
}

static void linear_forward(const tbert_ft_stack *s, size_t N, int in, int out, const float *x, const ft_pk *pk, int q,
                           const float *b, const tbert_dropout *drop, const float *res, float *y) {
    lin_fwd j = {N, in, out, s, x, b, res, pk, q, y, drop};
    par_for(s, n_chunks(N, FWD_ROWS), lin_fwd_item, &j);
}

typedef struct {
    size_t N;
    int H;
    float *z, *y, *mean, *rstd;
    const float *g, *b;
    float eps;
    const tbert_dropout *drop; /* on y, after the LayerNorm (the embeddings) */
} ln_fwd;

static void ln_fwd_item(void *ctx, int item, int worker) {
    (void)worker;
    const ln_fwd *j = ctx;
    size_t r0 = (size_t)item * FWD_ROWS, m = j->N - r0 < FWD_ROWS ? j->N - r0 : FWD_ROWS, H = (size_t)j->H;
    tbert_fwd_layernorm(m, j->H, j->z + r0 * H, NULL, j->g, j->b, j->eps, j->y + r0 * H, j->mean + r0, j->rstd + r0);
    if (j->drop) tbert_dropout_apply(m * H, j->y + r0 * H, j->drop, r0 * H);
}

typedef struct {
    size_t N;
    int IM;
    float *a, *g;
    const float *bias;
} gelu_fwd;

static void gelu_fwd_item(void *ctx, int item, int worker) {
    (void)worker;
    const gelu_fwd *j = ctx;
    size_t r0 = (size_t)item * FWD_ROWS, m = j->N - r0 < FWD_ROWS ? j->N - r0 : FWD_ROWS, IM = (size_t)j->IM;
    tbert_fwd_bias_gelu(m, j->IM, j->a + r0 * IM, j->bias, j->g + r0 * IM);
}

typedef struct {
    const tbert_ft_stack *s;
    const float *qkv;
    float *ctx, *P, *Pd, *dctx, *dqkv; /* Pd: dropout(P) saved by the training forward (NULL without attention dropout) */
    const tbert_dropout *drop;
} attn_job;

static tbert_dropout drop_at(const tbert_dropout *d, uint64_t base) {
    tbert_dropout c = *d;
    c.base = base;
    return c;
}

static void attn_fwd_item(void *ctx, int w, int worker) {
    const attn_job *j = ctx;
    const tbert_ft_stack *s = j->s;
    tbert_dropout d = drop_at(j->drop, s->pbase[w]);
    tbert_fwd_attention_dropout(1, s->off + w, s->H, s->A, 1.0f / sqrtf((float)(s->H / s->A)), j->qkv, j->ctx,
                                j->P + s->pbase[w], j->Pd ? j->Pd + s->pbase[w] : NULL, &d,
                                s->wsw + (size_t)worker * s->ws_stride);
}

static void attn_bwd_item(void *ctx, int w, int worker) {
    const attn_job *j = ctx;
    const tbert_ft_stack *s = j->s;
    tbert_dropout d = drop_at(j->drop, s->pbase[w]);
    tbert_bwd_attention_dropout(1, s->off + w, s->H, s->A, 1.0f / sqrtf((float)(s->H / s->A)), j->qkv,
                                j->P + s->pbase[w], j->Pd ? j->Pd + s->pbase[w] : NULL, j->dctx, j->dqkv, &d,
                                s->wsw + (size_t)worker * s->ws_stride);
}

static void emb_fwd_item(void *ctx, int w, int worker) {
    (void)worker;
    const tbert_ft_stack *s = ctx;
    tbert_fwd_embeddings(1, s->off + w, s->H, s->ids, s->word, s->pos, s->type, s->ez);
}

/* ---- backward items ----------------------------------------------------------------------------------- */

/* The backward of a linear layer on the whole batch, as tbert_bwd_linear(N, ...) computes it: dx = dy W by the
 * packed transposed W on chunks of FWD_ROWS rows; dW and db in TBERT_BWD_CHUNK-row chunk partials added in chunk
 * order (gemm_cpu.c's tbert_gemm_tn_chunked, the partials in registers), one range of output rows per worker (a
 * multiple of DW_ROWS; the kernel packs x once per range, so few large ranges): every element's sum is the same
 * whichever range holds it, so the bits do not depend on the thread count. (Until issue 15's speed work each chunk's
 * dW partial was a cblas product into a slot of out*in floats and the slots were added afterwards: 2.4 MB written,
 * zeroed and read again per 64 rows of a MiniLM FFN layer.) */
enum { DW_ROWS = 12, DW_ROWS_AMX = 32 }; /* whole register tiles (gemm_cpu.c) or AMX tile pairs */
typedef struct {
    const tbert_ft_stack *s;
    size_t N;
    int in, out, per; /* per: output rows per worker (lin_dw_item) */
    const float *x, *dy;
    const ft_pk *pk;
    int q;
    float *dx, *dW, *db;
} lin_bwd;

static void lin_dw_item(void *ctx, int item, int worker) {
    const lin_bwd *j = ctx;
    const tbert_ft_stack *s = j->s;
    int per = j->per;
    int o0 = item * per < j->out ? item * per : j->out, o1 = j->out - o0 < per ? j->out : o0 + per;
    if (o0 >= o1) return;
    if (s->bf16)
        tbert_gemm_tn_bf16(s->amx, j->N, j->out, j->in, j->dy, j->x, j->dW, TBERT_BWD_CHUNK, o0, o1,
                           s->bfs + (size_t)worker * s->bfs_stride);
    else
        tbert_gemm_tn_chunked(s->avx512, j->N, j->out, j->in, j->dy, j->x, j->dW, TBERT_BWD_CHUNK, o0, o1);
    if (j->db) tbert_bwd_colsum_chunked(j->N, o1 - o0, j->dy + o0, (size_t)j->out, j->db + o0); /* dy[:, o0..o1) */
}

/* dx = dy W on chunks of FWD_ROWS rows */
static void dx_item(void *ctx, int item, int worker) {
    const lin_bwd *j = ctx;
    size_t r0 = (size_t)item * FWD_ROWS;
    int m = (int)(j->N - r0 < FWD_ROWS ? j->N - r0 : FWD_ROWS);
    product(j->s, j->pk, true, j->q, m, j->dy + r0 * j->out, (size_t)j->out, NULL, j->dx + r0 * j->in, (size_t)j->in, worker);
}

static void linear_backward(const tbert_ft_stack *s, size_t N, int in, int out, const float *x, const ft_pk *pk, int q,
                            const float *dy, float *dx, float *dW, float *db) {
    int rows = s->amx ? DW_ROWS_AMX : DW_ROWS;
    int blocks = (out + rows - 1) / rows, W = s->threads < blocks ? s->threads : blocks;
    lin_bwd j = {s, N, in, out, (blocks + W - 1) / W * rows, x, dy, pk, q, dx, dW, db};
    if (dx) par_for(s, n_chunks(N, FWD_ROWS), dx_item, &j);
    if (N > 0) par_for(s, W, lin_dw_item, &j);
}

/* LayerNorm backward per chunk (partials of dgamma|dbeta in part[c * 2H]), then reduced in chunk order. */
typedef struct {
    const tbert_ft_stack *s;
    size_t N;
    const float *z, *mean, *rstd, *gamma, *dy;
    float *dz, *part;
} ln_bwd;

static void ln_bwd_item(void *ctx, int c, int worker) {
    const ln_bwd *j = ctx;
    const tbert_ft_stack *s = j->s;
    size_t H = (size_t)s->H, r0 = (size_t)c * TBERT_BWD_CHUNK;
    size_t m = j->N - r0 < TBERT_BWD_CHUNK ? j->N - r0 : TBERT_BWD_CHUNK;
    float *pg = j->part + (size_t)c * 2 * H;
    memset(pg, 0, 2 * H * sizeof *pg);
    tbert_bwd_layernorm(m, s->H, j->z + r0 * H, j->mean + r0, j->rstd + r0, j->gamma, j->dy + r0 * H, j->dz + r0 * H,
                        NULL, pg, pg + H, s->wsw + (size_t)worker * s->ws_stride);
}

static void layernorm_backward(const tbert_ft_stack *s, const float *z, const float *mean, const float *rstd,
                               const float *gamma, const float *dy, float *dz, float *dgamma, float *dbeta) {
    int nch = n_chunks(s->N, TBERT_BWD_CHUNK);
    ln_bwd j = {s, s->N, z, mean, rstd, gamma, dy, dz, s->part};
    par_for(s, nch, ln_bwd_item, &j);
    size_t H = (size_t)s->H;
    for (int c = 0; c < nch; c++) {
        const float *pg = s->part + (size_t)c * 2 * H;
        for (size_t k = 0; k < H; k++) {
            dgamma[k] += pg[k];
            dbeta[k] += pg[H + k];
        }
    }
}

typedef struct {
    const tbert_ft_stack *s;
    const float *a;
    float *d, *part;
} gelu_bwd;

static void gelu_bwd_item(void *ctx, int c, int worker) {
    (void)worker;
    const gelu_bwd *j = ctx;
    size_t IM = (size_t)j->s->IM, r0 = (size_t)c * TBERT_BWD_CHUNK;
    size_t m = j->s->N - r0 < TBERT_BWD_CHUNK ? j->s->N - r0 : TBERT_BWD_CHUNK;
    float *pb = j->part + (size_t)c * IM;
    memset(pb, 0, IM * sizeof *pb);
    tbert_bwd_bias_gelu(m, j->s->IM, j->a + r0 * IM, j->d + r0 * IM, j->d + r0 * IM, pb);
}

/* y = x * dropout (x NULL: y in place) + add (add may be NULL), per chunk of rows of [N, H] */
typedef struct {
    const tbert_ft_stack *s;
    const float *x, *add;
    float *y;
    const tbert_dropout *drop;
} mix_job;

static void mix_item(void *ctx, int c, int worker) {
    (void)worker;
    const mix_job *j = ctx;
    size_t H = (size_t)j->s->H, r0 = (size_t)c * FWD_ROWS;
    size_t n = (j->s->N - r0 < FWD_ROWS ? j->s->N - r0 : FWD_ROWS) * H, e0 = r0 * H;
    if (j->x) memcpy(j->y + e0, j->x + e0, n * sizeof *j->y);
    if (j->drop) tbert_dropout_apply(n, j->y + e0, j->drop, e0);
    if (j->add)
        for (size_t i = 0; i < n; i++) j->y[e0 + i] += j->add[e0 + i];
}

static void mix(const tbert_ft_stack *s, const float *x, const tbert_dropout *drop, const float *add, float *y) {
    mix_job j = {s, x, add, y, drop};
    par_for(s, n_chunks(s->N, FWD_ROWS), mix_item, &j);
}

/* ---- create / free ------------------------------------------------------------------------------------ */

void tbert_ft_stack_free(tbert_ft_stack *s) {
    if (!s) return;
    free(s->wv);
    free(s->gv);
    free(s->lw);
    free(s->lg);
    tbert_params_free(&s->params);
    free(s->wsw);
    free(s->bfs);
    if (s->pk)
        for (int i = 0; i < s->cfg.k; i++)
            for (int q = 0; q < PK_COUNT; q++) {
                tbert_packed_free(&s->pk[i].f[q]), tbert_packed_free(&s->pk[i].t[q]);
                tbert_packed_bf16_free(&s->pk[i].fb[q]), tbert_packed_bf16_free(&s->pk[i].tb[q]);
            }
    free(s->pk);
    free(s->arena);
    free(s->doc_off);
    free(s->off);
    free(s->ids);
    free(s->pbase);
    free(s->ne);
    free(s->doc_ne);
    free(s->act);
    free(s);
}

/* Carves the trained tensors out of wv and gv in one order and lists them (names as transformers' BertModel). */
typedef struct {
    tbert_ft_stack *s;
    size_t at;
    tbert_status st;
    tbert_error *err;
} carver;

static float *carve(carver *c, float **grad, const char *name, int64_t d0, int64_t d1, bool decay) {
    size_t n = (size_t)d0 * (size_t)(d1 > 0 ? d1 : 1);
    float *w = c->s->wv ? c->s->wv + c->at : NULL;
    *grad = c->s->gv ? c->s->gv + c->at : NULL;
    c->at += n;
    if (w && name && c->st == TBERT_OK) {
        int64_t shape[2] = {d0, d1};
        c->st = tbert_params_add(&c->s->params, name, w, *grad, d1 > 0 ? 2 : 1, shape, TBERT_PGROUP_ENCODER, decay,
                                 c->err);
    }
    return w;
}

/* The layout of the trained tensors: a counting pass (wv NULL) and a carving pass. */
static size_t layout_params(tbert_ft_stack *s, tbert_status *st, tbert_error *err) {
    const tbert_config *c = &s->m->cfg;
    int64_t H = c->hidden, IM = c->intermediate;
    carver cv = {s, 0, TBERT_OK, err};
    float *g;
    char nm[TBERT_PARAM_NAME_MAX];
    if (s->cfg.train_embeddings) {
        float *w = carve(&cv, &g, "embeddings.word_embeddings.weight", c->vocab_size, H, true);
        if (w) s->word = w, s->dword = g;
        w = carve(&cv, &g, "embeddings.position_embeddings.weight", c->max_position, H, true);
        if (w) s->pos = w, s->dpos = g;
        w = carve(&cv, &g, "embeddings.token_type_embeddings.weight", c->type_vocab_size, H, true);
        if (w) s->type = w, s->dtype = g;
        w = carve(&cv, &g, "embeddings.LayerNorm.weight", H, 0, false);
        if (w) s->eln_g = w, s->deln_g = g;
        w = carve(&cv, &g, "embeddings.LayerNorm.bias", H, 0, false);
        if (w) s->eln_b = w, s->deln_b = g;
    }
    for (int i = 0; i < s->cfg.k; i++) {
        int l = s->first + i;
        ft_lw dummy_w, dummy_g, *lw = s->lw ? &s->lw[i] : &dummy_w, *lg = s->lg ? &s->lg[i] : &dummy_g;
        /* q, k and v are the three row blocks of one [3H, H] matrix (and one [3H] bias): one GEMM for all three */
#define T2(field, name, d0, d1, decay)                                                                             \
    snprintf(nm, sizeof nm, "encoder.layer.%d.%s", l, name);                                                       \
    lw->field = carve(&cv, &lg->field, nm, d0, d1, decay)
        float *qg, *kg, *vg;
        snprintf(nm, sizeof nm, "encoder.layer.%d.attention.self.query.weight", l);
        lw->wqkv = carve(&cv, &qg, nm, H, H, true);
        snprintf(nm, sizeof nm, "encoder.layer.%d.attention.self.key.weight", l);
        carve(&cv, &kg, nm, H, H, true);
        snprintf(nm, sizeof nm, "encoder.layer.%d.attention.self.value.weight", l);
        carve(&cv, &vg, nm, H, H, true);
        lg->wqkv = qg;
        snprintf(nm, sizeof nm, "encoder.layer.%d.attention.self.query.bias", l);
        lw->bqkv = carve(&cv, &qg, nm, H, 0, false);
        snprintf(nm, sizeof nm, "encoder.layer.%d.attention.self.key.bias", l);
        carve(&cv, &kg, nm, H, 0, false);
        snprintf(nm, sizeof nm, "encoder.layer.%d.attention.self.value.bias", l);
        carve(&cv, &vg, nm, H, 0, false);
        lg->bqkv = qg;
        T2(wo, "attention.output.dense.weight", H, H, true);
        T2(bo, "attention.output.dense.bias", H, 0, false);
        T2(ln1_g, "attention.output.LayerNorm.weight", H, 0, false);
        T2(ln1_b, "attention.output.LayerNorm.bias", H, 0, false);
        T2(wi, "intermediate.dense.weight", IM, H, true);
        T2(bi, "intermediate.dense.bias", IM, 0, false);
        T2(wout, "output.dense.weight", H, IM, true);
        T2(bout, "output.dense.bias", H, 0, false);
        T2(ln2_g, "output.LayerNorm.weight", H, 0, false);
        T2(ln2_b, "output.LayerNorm.bias", H, 0, false);
#undef T2
    }
    if (s->cfg.pool == TBERT_POOL_POOLER) {
        s->pool_w = carve(&cv, &s->dpool_w, "pooler.dense.weight", H, H, true);
        s->pool_b = carve(&cv, &s->dpool_b, "pooler.dense.bias", H, 0, false);
    }
    *st = cv.st;
    return cv.at;
}

static void copy_weights(tbert_ft_stack *s) {
    const tbert_model *m = s->m;
    const tbert_config *c = &m->cfg;
    size_t H = (size_t)c->hidden, IM = (size_t)c->intermediate, HH = H * H;
    if (s->cfg.train_embeddings) {
        /* the trained copies (carved out of wv; const only for the frozen case's sake) */
        memcpy((float *)s->word, m->word_emb, (size_t)c->vocab_size * H * sizeof(float));
        memcpy((float *)s->pos, m->pos_emb, (size_t)c->max_position * H * sizeof(float));
        memcpy((float *)s->type, m->type_emb, (size_t)c->type_vocab_size * H * sizeof(float));
        memcpy((float *)s->eln_g, m->emb_ln_g, H * sizeof(float));
        memcpy((float *)s->eln_b, m->emb_ln_b, H * sizeof(float));
    }
    for (int i = 0; i < s->cfg.k; i++) {
        const tbert_layer_weights *src = &m->layer[s->first + i];
        ft_lw *d = &s->lw[i];
        memcpy(d->wqkv, src->q_w, HH * sizeof(float));
        memcpy(d->wqkv + HH, src->k_w, HH * sizeof(float));
        memcpy(d->wqkv + 2 * HH, src->v_w, HH * sizeof(float));
        memcpy(d->bqkv, src->q_b, H * sizeof(float));
        memcpy(d->bqkv + H, src->k_b, H * sizeof(float));
        memcpy(d->bqkv + 2 * H, src->v_b, H * sizeof(float));
        memcpy(d->wo, src->attn_out_w, HH * sizeof(float));
        memcpy(d->bo, src->attn_out_b, H * sizeof(float));
        memcpy(d->ln1_g, src->attn_ln_g, H * sizeof(float));
        memcpy(d->ln1_b, src->attn_ln_b, H * sizeof(float));
        memcpy(d->wi, src->inter_w, IM * H * sizeof(float));
        memcpy(d->bi, src->inter_b, IM * sizeof(float));
        memcpy(d->wout, src->out_w, H * IM * sizeof(float));
        memcpy(d->bout, src->out_b, H * sizeof(float));
        memcpy(d->ln2_g, src->out_ln_g, H * sizeof(float));
        memcpy(d->ln2_b, src->out_ln_b, H * sizeof(float));
    }
    if (s->pool_w) {
        memcpy(s->pool_w, m->pooler_w, HH * sizeof(float));
        memcpy(s->pool_b, m->pooler_b, H * sizeof(float));
    }
}

tbert_status tbert_ft_stack_create(const tbert_model *m, const tbert_ft_stack_cfg *cfg, tbert_ft_stack **out,
                                   tbert_error *err) {
    *out = NULL;
    const tbert_config *c = &m->cfg;
    if (cfg->layers < 1 || cfg->layers > c->layers)
        return tbert_fail(err, TBERT_E_ARG, "finetune stack: %d layers in use, the model has %d", cfg->layers,
                          c->layers);
    if (cfg->k < 1 || cfg->k > cfg->layers)
        return tbert_fail(err, TBERT_E_ARG, "finetune stack: --finetune %d outside 1..%d (the layers in use)", cfg->k,
                          cfg->layers);
    if (cfg->train_embeddings && cfg->k != cfg->layers)
        return tbert_fail(err, TBERT_E_ARG, "finetune stack: the embeddings train only when all %d layers do",
                          cfg->layers);
    if ((unsigned)cfg->pool >= TBERT_POOL_COUNT) return tbert_fail(err, TBERT_E_ARG, "finetune stack: unknown pooling");
    if (cfg->pool == TBERT_POOL_POOLER && !m->pooler_w)
        return tbert_fail(err, TBERT_E_ARG, "%s: --pool pooler needs a pooler, and this checkpoint has none",
                          m->dir ? m->dir : "model");
    if (cfg->pool == TBERT_POOL_FLATTEN && (cfg->max_len < 1 || cfg->max_len > c->max_position))
        return tbert_fail(err, TBERT_E_ARG, "finetune stack: flatten needs a max length in 1..%d, got %d",
                          c->max_position, cfg->max_len);
    if (!(cfg->hidden_dropout >= 0.0f && cfg->hidden_dropout < 1.0f && cfg->attn_dropout >= 0.0f &&
          cfg->attn_dropout < 1.0f))
        return tbert_fail(err, TBERT_E_ARG, "finetune stack: dropout %g / %g outside [0, 1)", cfg->hidden_dropout,
                          cfg->attn_dropout);
    if (c->hidden <= 0 || c->heads <= 0 || c->hidden % c->heads)
        return tbert_fail(err, TBERT_E_ARG, "finetune stack: inconsistent config (hidden %d, heads %d)", c->hidden,
                          c->heads);
    tbert_ft_stack *s = calloc(1, sizeof *s);
    if (!s) return tbert_fail(err, TBERT_E_NOMEM, "finetune stack: out of memory");
    s->m = m;
    s->cfg = *cfg;
    s->first = cfg->layers - cfg->k;
    s->H = c->hidden;
    s->IM = c->intermediate;
    s->A = c->heads;
    s->threads = cfg->threads > 0 ? cfg->threads : tbert_num_cores();
    s->dense_dim = tbert_pool_dim(m, cfg->pool, cfg->max_len);
    s->word = m->word_emb, s->pos = m->pos_emb, s->type = m->type_emb, s->eln_g = m->emb_ln_g, s->eln_b = m->emb_ln_b;
    tbert_status st = TBERT_OK;
    size_t n = layout_params(s, &st, err);
    s->wv = tbert_malloc_array(n, sizeof(float));
    s->gv = tbert_calloc_array(n, sizeof(float));
    s->lw = calloc((size_t)cfg->k, sizeof *s->lw);
    s->lg = calloc((size_t)cfg->k, sizeof *s->lg);
    s->act = calloc((size_t)cfg->k, sizeof *s->act);
    /* scratch: per worker the largest op workspace (attention's 2 Lmax^2, the LayerNorm backward's 2H) */
    size_t H = (size_t)s->H, P = (size_t)c->max_position;
    s->ws_stride = 2 * P * P > 2 * H ? 2 * P * P : 2 * H;
    s->wsw = tbert_malloc_array((size_t)s->threads, s->ws_stride * sizeof(float));
    s->pk = calloc((size_t)cfg->k, sizeof *s->pk);
    s->avx512 = tbert_gemm_avx512_supported();
    s->bf16 = cfg->bf16;
    s->amx = s->bf16 && tbert_gemm_amx_supported();
    if (s->bf16) { /* the widest matrix dimension: 3H (QKV) or the intermediate size */
        int wide = 3 * s->H > s->IM ? 3 * s->H : s->IM;
        s->bfs_stride = tbert_gemm_bf16_scratch(s->amx, FWD_ROWS, wide, wide);
        s->bfs = aligned_alloc(64, (size_t)s->threads * s->bfs_stride);
        if (!s->bfs) {
            tbert_ft_stack_free(s);
            return tbert_fail(err, TBERT_E_NOMEM, "finetune stack: out of memory for the bf16 products' scratch");
        }
    }
    if (!s->wv || !s->gv || !s->lw || !s->lg || !s->act || !s->wsw || !s->pk) {
        tbert_ft_stack_free(s);
        return tbert_fail(err, TBERT_E_NOMEM, "finetune stack: out of memory for %zu trained values", n);
    }
    layout_params(s, &st, err);
    if (st != TBERT_OK) {
        tbert_ft_stack_free(s);
        return st;
    }
    copy_weights(s);
    for (int i = 0; i < cfg->k && st == TBERT_OK; i++) {
        const ft_lw *w = &s->lw[i];
        ft_pk *p = &s->pk[i];
        int h = s->H, im = s->IM;
        if (s->bf16) {
            const float *mw[PK_COUNT] = {w->wqkv, w->wo, w->wi, w->wout};
            const int mn[PK_COUNT] = {3 * h, h, im, h}, mk[PK_COUNT] = {h, h, h, im};
            for (int q = 0; q < PK_COUNT && !st; q++) {
                st = tbert_pack_bf16(mw[q], mn[q], mk[q], false, s->amx, &p->fb[q], err);
                if (!st) st = tbert_pack_bf16(mw[q], mk[q], mn[q], true, s->amx, &p->tb[q], err);
            }
            continue;
        }
        st = tbert_pack_weights(w->wqkv, 3 * h, h, TBERT_GEMM_AUTO, &p->f[PK_QKV], err);
        if (!st) st = tbert_pack_weights(w->wo, h, h, TBERT_GEMM_AUTO, &p->f[PK_O], err);
        if (!st) st = tbert_pack_weights(w->wi, im, h, TBERT_GEMM_AUTO, &p->f[PK_I], err);
        if (!st) st = tbert_pack_weights(w->wout, h, im, TBERT_GEMM_AUTO, &p->f[PK_OUT], err);
        if (!st) st = tbert_pack_weights_t(w->wqkv, h, 3 * h, TBERT_GEMM_AUTO, &p->t[PK_QKV], err);
        if (!st) st = tbert_pack_weights_t(w->wo, h, h, TBERT_GEMM_AUTO, &p->t[PK_O], err);
        if (!st) st = tbert_pack_weights_t(w->wi, h, im, TBERT_GEMM_AUTO, &p->t[PK_I], err);
        if (!st) st = tbert_pack_weights_t(w->wout, im, h, TBERT_GEMM_AUTO, &p->t[PK_OUT], err);
    }
    if (st != TBERT_OK) {
        tbert_ft_stack_free(s);
        return st;
    }
    *out = s;
    return TBERT_OK;
}

int tbert_ft_stack_first_layer(const tbert_ft_stack *s) {
    return s->first;
}

size_t tbert_ft_stack_dense_dim(const tbert_ft_stack *s) {
    return s->dense_dim;
}

tbert_params *tbert_ft_stack_params(tbert_ft_stack *s) {
    return &s->params;
}

/* ---- the batch's buffers ------------------------------------------------------------------------------ */

/* Lays out the activation arena for capacities (N tokens, P probabilities, W windows, D documents); with base
 * NULL it only counts. */
static size_t layout_acts(tbert_ft_stack *s, float *base, size_t N, size_t P, size_t W, size_t D) {
    size_t at = 0, H = (size_t)s->H, IM = (size_t)s->IM, dim = s->dense_dim;
#define TAKE(ptr, count)                                                                                           \
    do {                                                                                                           \
        if (base) (ptr) = base + at;                                                                               \
        at += ((count) + 15) / 16 * 16;                                                                            \
    } while (0)
    TAKE(s->x0, N * H);
    if (s->first == 0) {
        TAKE(s->ez, N * H);
        TAKE(s->emean, N);
        TAKE(s->erstd, N);
    }
    for (int i = 0; i < s->cfg.k; i++) {
        ft_act *a = &s->act[i];
        TAKE(a->qkv, N * 3 * H);
        TAKE(a->P, P);
        if (s->cfg.attn_dropout > 0) TAKE(a->Pd, P); /* dropout(P), for the backward */
        TAKE(a->ctx, N * H);
        TAKE(a->z1, N * H);
        TAKE(a->mean1, N);
        TAKE(a->rstd1, N);
        TAKE(a->h1, N * H);
        TAKE(a->a, N * IM);
        TAKE(a->g, N * IM);
        TAKE(a->z2, N * H);
        TAKE(a->mean2, N);
        TAKE(a->rstd2, N);
        TAKE(a->out, N * H);
        if (base) a->x = i == 0 ? s->x0 : s->act[i - 1].out;
    }
    TAKE(s->cls, W * H);
    TAKE(s->pooled, W * dim);
    TAKE(s->dpooled, W * dim);
    TAKE(s->docpre, D * dim);
    TAKE(s->docout, D * dim);
    TAKE(s->ddoc, D * dim);
    TAKE(s->pool_ws, W * H); /* the pooler's outputs (forward), then tbert_bwd_pooler's ws */
    TAKE(s->dY, N * H);
    TAKE(s->dZ, N * H);
    TAKE(s->dH, N * H);
    TAKE(s->dCtx, N * H);
    TAKE(s->dQKV, N * 3 * H);
    TAKE(s->dI, N * IM);
    size_t nch = (N + TBERT_BWD_CHUNK - 1) / TBERT_BWD_CHUNK;
    TAKE(s->part, nch * (2 * H > IM ? 2 * H : IM));
#undef TAKE
    return at;
}

static size_t grown(size_t cap, size_t need) {
    if (need <= cap) return cap;
    return need < cap / 2 * 3 ? cap / 2 * 3 : need;
}

static tbert_status reserve(tbert_ft_stack *s, size_t N, size_t P, int W, int D, tbert_error *err) {
    if (N <= s->cap_N && P <= s->cap_P && W <= s->cap_win && D <= s->cap_doc && s->arena) return TBERT_OK;
    size_t cN = grown(s->cap_N, N ? N : 1), cP = grown(s->cap_P, P ? P : 1);
    int cW = (int)grown((size_t)s->cap_win, (size_t)(W ? W : 1)),
        cD = (int)grown((size_t)s->cap_doc, (size_t)(D ? D : 1));
    size_t n = layout_acts(s, NULL, cN, cP, (size_t)cW, (size_t)cD);
    float *arena = tbert_malloc_array(n, sizeof(float));
    int32_t *doc_off = tbert_malloc_array((size_t)cD + 1, sizeof(int32_t));
    int32_t *off = tbert_malloc_array((size_t)cW + 1, sizeof(int32_t));
    int32_t *ids = tbert_malloc_array(cN, sizeof(int32_t));
    size_t *pbase = tbert_malloc_array((size_t)cW + 1, sizeof(size_t));
    int32_t *ne = tbert_malloc_array((size_t)cW, sizeof(int32_t));
    int32_t *doc_ne = tbert_malloc_array((size_t)cD, sizeof(int32_t));
    if (!arena || !doc_off || !off || !ids || !pbase || !ne || !doc_ne) {
        free(arena), free(doc_off), free(off), free(ids), free(pbase), free(ne), free(doc_ne);
        return tbert_fail(err, TBERT_E_NOMEM, "finetune stack: out of memory for a batch of %zu tokens in %d windows",
                          N, W);
    }
    free(s->arena), free(s->doc_off), free(s->off), free(s->ids), free(s->pbase), free(s->ne), free(s->doc_ne);
    s->arena = arena, s->doc_off = doc_off, s->off = off, s->ids = ids, s->pbase = pbase, s->ne = ne;
    s->doc_ne = doc_ne;
    s->cap_N = cN, s->cap_P = cP, s->cap_win = cW, s->cap_doc = cD;
    layout_acts(s, arena, cN, cP, (size_t)cW, (size_t)cD);
    s->saved = false;
    return TBERT_OK;
}

/* ---- forward ------------------------------------------------------------------------------------------ */

static tbert_status check_batch(const tbert_ft_stack *s, const tbert_ft_batch *b, tbert_error *err) {
    const tbert_config *c = &s->m->cfg;
    if (b->n_doc < 0 || !b->doc_off || b->doc_off[0] != 0)
        return tbert_fail(err, TBERT_E_ARG, "finetune stack: bad document offsets");
    for (int d = 0; d < b->n_doc; d++)
        if (b->doc_off[d + 1] < b->doc_off[d])
            return tbert_fail(err, TBERT_E_ARG, "finetune stack: document %d has a negative window count", d);
    if (b->n_win != b->doc_off[b->n_doc] || !b->off || b->off[0] != 0)
        return tbert_fail(err, TBERT_E_ARG, "finetune stack: %d windows, the document offsets say %d", b->n_win,
                          (int)b->doc_off[b->n_doc]);
    int maxL = s->cfg.pool == TBERT_POOL_FLATTEN ? s->cfg.max_len : c->max_position;
    for (int w = 0; w < b->n_win; w++) {
        int L = b->off[w + 1] - b->off[w];
        if (L < 0 || L > maxL)
            return tbert_fail(err, TBERT_E_ARG, "finetune stack: window %d has %d tokens (at most %d)", w, L, maxL);
    }
    size_t N = (size_t)b->off[b->n_win];
    if (s->first > 0 && !b->hidden && N > 0)
        return tbert_fail(err, TBERT_E_ARG, "finetune stack: the batch needs the hidden states entering layer %d",
                          s->first);
    if (s->first == 0) {
        if (!b->ids && N > 0) return tbert_fail(err, TBERT_E_ARG, "finetune stack: the batch needs token ids");
        for (size_t i = 0; i < N; i++)
            if (b->ids[i] < 0 || b->ids[i] >= c->vocab_size)
                return tbert_fail(err, TBERT_E_ARG, "finetune stack: token id %d out of range (vocab size %d)",
                                  (int)b->ids[i], c->vocab_size);
    }
    return TBERT_OK;
}

static tbert_dropout make_drop(const tbert_ft_stack *s, bool on, float p, int layer, int which) {
    tbert_dropout d = {on ? p : 0.0f, s->cfg.dropout_seed, s->step, tbert_dropout_site(layer, which), 0};
    return d;
}

/* refreshes the packed copies of one layer's four matrices (forward, or transposed when t), one matrix per item */
typedef struct {
    ft_pk *pk;
    bool t;
} refresh_job;

static void refresh_item(void *ctx, int q, int worker) {
    (void)worker;
    const refresh_job *j = ctx;
    if (j->pk->fb[q].w) tbert_packed_bf16_refresh(j->t ? &j->pk->tb[q] : &j->pk->fb[q]);
    else tbert_packed_refresh(j->t ? &j->pk->t[q] : &j->pk->f[q]);
}

static void refresh_packs(const tbert_ft_stack *s, ft_pk *pk, bool t) {
    refresh_job j = {pk, t};
    if (s->avx512 || s->bf16) par_for(s, PK_COUNT, refresh_item, &j);
}

static void layer_forward(tbert_ft_stack *s, int i, bool drop_on) {
    const tbert_config *c = &s->m->cfg;
    const ft_lw *w = &s->lw[i];
    const ft_pk *pk = &s->pk[i];
    refresh_packs(s, &s->pk[i], false);
    ft_act *a = &s->act[i];
    int l = s->first + i, H = s->H, IM = s->IM;
    size_t N = s->N;
    tbert_dropout dp = make_drop(s, drop_on, s->cfg.attn_dropout, l, TBERT_DROP_ATTN_PROBS);
    tbert_dropout da = make_drop(s, drop_on, s->cfg.hidden_dropout, l, TBERT_DROP_ATTN_OUT);
    tbert_dropout df = make_drop(s, drop_on, s->cfg.hidden_dropout, l, TBERT_DROP_FFN_OUT);
    linear_forward(s, N, H, 3 * H, a->x, pk, PK_QKV, w->bqkv, NULL, NULL, a->qkv);
    attn_job aj = {s, a->qkv, a->ctx, a->P, a->Pd, NULL, NULL, &dp};
    par_for(s, s->n_win, attn_fwd_item, &aj);
    linear_forward(s, N, H, H, a->ctx, pk, PK_O, w->bo, da.p > 0 ? &da : NULL, a->x, a->z1);
    ln_fwd l1 = {N, H, a->z1, a->h1, a->mean1, a->rstd1, w->ln1_g, w->ln1_b, c->layer_norm_eps, NULL};
    par_for(s, n_chunks(N, FWD_ROWS), ln_fwd_item, &l1);
    linear_forward(s, N, H, IM, a->h1, pk, PK_I, NULL, NULL, NULL, a->a);
    gelu_fwd gf = {N, IM, a->a, a->g, w->bi};
    par_for(s, n_chunks(N, FWD_ROWS), gelu_fwd_item, &gf);
    linear_forward(s, N, IM, H, a->g, pk, PK_OUT, w->bout, df.p > 0 ? &df : NULL, a->h1, a->z2);
    ln_fwd l2 = {N, H, a->z2, a->out, a->mean2, a->rstd2, w->ln2_g, w->ln2_b, c->layer_norm_eps, NULL};
    par_for(s, n_chunks(N, FWD_ROWS), ln_fwd_item, &l2);
}

void tbert_ft_doc_mean(int n_doc, const int32_t *doc_off, const int32_t *off, size_t dim, bool normalize, const float *pooled,
                       int32_t *doc_ne, float *docpre, float *docout) {
    /* the mean over each document's non-empty windows (double sums, as the featurizer), then L2 */
    for (int d = 0; d < n_doc; d++) {
        int n = 0;
        for (int w = doc_off[d]; w < doc_off[d + 1]; w++) n += off[w + 1] > off[w];
        doc_ne[d] = n;
        float *row = docpre + (size_t)d * dim;
        for (size_t j = 0; j < dim; j++) {
            double sum = 0.0;
            for (int w = doc_off[d]; w < doc_off[d + 1]; w++)
                if (off[w + 1] > off[w]) sum += pooled[(size_t)w * dim + j];
            row[j] = n > 0 ? (float)(sum * (1.0 / n)) : 0.0f;
        }
    }
    memcpy(docout, docpre, (size_t)n_doc * dim * sizeof(float));
    if (normalize) tbert_l2_normalize_rows(docout, (size_t)n_doc, dim);
}

void tbert_ft_doc_mean_backward(int n_doc, int n_win, const int32_t *doc_off, const int32_t *off, size_t dim, bool normalize,
                                const int32_t *doc_ne, const float *docpre, const float *docout, const float *dout, float *ddoc,
                                float *dpooled) {
    const float *dd = dout;
    if (normalize) {
        tbert_bwd_l2_normalize((size_t)n_doc, dim, docpre, docout, dout, ddoc);
        dd = ddoc;
    }
    memset(dpooled, 0, (size_t)n_win * dim * sizeof(float));
    for (int d = 0; d < n_doc; d++) {
        if (doc_ne[d] == 0) continue;
        float inv = 1.0f / (float)doc_ne[d];
        for (int w = doc_off[d]; w < doc_off[d + 1]; w++) {
            if (off[w + 1] == off[w]) continue;
            for (size_t j = 0; j < dim; j++) dpooled[(size_t)w * dim + j] = dd[(size_t)d * dim + j] * inv;
        }
    }
}

/* pooled[w] for every window, docpre/docout per document */
static void pool_forward(tbert_ft_stack *s, const float *top) {
    size_t H = (size_t)s->H, dim = s->dense_dim;
    memset(s->pooled, 0, (size_t)s->n_win * dim * sizeof(float));
    for (int k = 0; k < s->n_ne; k++) {
        int w = s->ne[k], L = s->off[w + 1] - s->off[w];
        const float *r = top + (size_t)s->off[w] * H;
        float *o = s->pooled + (size_t)w * dim;
        switch (s->cfg.pool) {
        case TBERT_POOL_MEAN: {
            for (int t = 0; t < L; t++)
                for (size_t j = 0; j < H; j++) o[j] += r[(size_t)t * H + j];
            float inv = 1.0f / (float)L;
            for (size_t j = 0; j < H; j++) o[j] *= inv;
            break;
        }
        case TBERT_POOL_CLS: memcpy(o, r, H * sizeof *o); break;
        case TBERT_POOL_FLATTEN: memcpy(o, r, (size_t)L * H * sizeof *o); break;
        default: memcpy(s->cls + (size_t)k * H, r, H * sizeof *o); break; /* pooler: below */
        }
    }
    if (s->cfg.pool == TBERT_POOL_POOLER && s->n_ne > 0) {
        /* out = tanh(cls W^T + b) for the non-empty windows, into pool_ws, then scattered */
        float *o = s->pool_ws;
        for (int k = 0; k < s->n_ne; k++) memcpy(o + (size_t)k * H, s->pool_b, H * sizeof *o);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s->n_ne, s->H, s->H, 1.0f, s->cls, s->H, s->pool_w, s->H,
                    1.0f, o, s->H);
        for (int k = 0; k < s->n_ne; k++)
            for (size_t j = 0; j < H; j++) s->pooled[(size_t)s->ne[k] * H + j] = tanhf(o[(size_t)k * H + j]);
    }
    tbert_ft_doc_mean(s->n_doc, s->doc_off, s->off, dim, s->cfg.normalize, s->pooled, s->doc_ne, s->docpre, s->docout);
}

tbert_status tbert_ft_stack_forward(tbert_ft_stack *s, const tbert_ft_batch *b, bool training, uint64_t step,
                                    float *out, tbert_error *err) {
    tbert_status st = check_batch(s, b, err);
    if (st) return st;
    size_t N = (size_t)b->off[b->n_win], psize = tbert_attn_probs_size(b->n_win, b->off, s->A);
    st = reserve(s, N, psize, b->n_win, b->n_doc, err);
    if (st) return st;
    s->saved = false;
    s->training = training;
    s->step = step;
    s->N = N;
    s->psize = psize;
    s->n_doc = b->n_doc;
    s->n_win = b->n_win;
    memcpy(s->doc_off, b->doc_off, ((size_t)b->n_doc + 1) * sizeof(int32_t));
    memcpy(s->off, b->off, ((size_t)b->n_win + 1) * sizeof(int32_t));
    s->n_ne = 0;
    size_t pb = 0;
    for (int w = 0; w < b->n_win; w++) {
        size_t L = (size_t)(b->off[w + 1] - b->off[w]);
        s->pbase[w] = pb;
        pb += (size_t)s->A * L * L;
        if (L > 0) s->ne[s->n_ne++] = w;
    }
    openblas_set_num_threads(1);
    const tbert_config *c = &s->m->cfg;
    if (s->first == 0) {
        if (N > 0) memcpy(s->ids, b->ids, N * sizeof(int32_t));
        par_for(s, s->n_win, emb_fwd_item, s);
        tbert_dropout de = make_drop(s, training, s->cfg.hidden_dropout, 0, TBERT_DROP_EMBEDDINGS);
        ln_fwd le = {N, s->H, s->ez, s->x0, s->emean, s->erstd, s->eln_g, s->eln_b, c->layer_norm_eps,
                     de.p > 0 ? &de : NULL};
        par_for(s, n_chunks(N, FWD_ROWS), ln_fwd_item, &le);
    } else if (N > 0) {
        memcpy(s->x0, b->hidden, N * (size_t)s->H * sizeof(float));
    }
    for (int i = 0; i < s->cfg.k; i++) layer_forward(s, i, training);
    pool_forward(s, s->act[s->cfg.k - 1].out);
    if (s->n_doc > 0) memcpy(out, s->docout, (size_t)s->n_doc * s->dense_dim * sizeof(float));
    s->saved = training;
    return TBERT_OK;
}

/* ---- backward ----------------------------------------------------------------------------------------- */

/* d loss / d (last layer's out) into s->dY from dout */
static void pool_backward(tbert_ft_stack *s, const float *dout) {
    size_t H = (size_t)s->H, dim = s->dense_dim;
    tbert_ft_doc_mean_backward(s->n_doc, s->n_win, s->doc_off, s->off, dim, s->cfg.normalize, s->doc_ne, s->docpre, s->docout, dout,
                               s->ddoc, s->dpooled);
    if (s->cfg.pool != TBERT_POOL_POOLER) {
        tbert_bwd_pool((int)s->cfg.pool, s->n_win, s->off, s->H, s->cfg.max_len, s->dpooled, s->dY);
        return;
    }
    memset(s->dY, 0, s->N * H * sizeof(float));
    if (s->n_ne == 0) return;
    /* the non-empty windows' rows, compacted: pooled output into dCtx, its gradient into dH, dcls into dZ */
    float *o = s->dCtx, *g = s->dH, *dcls = s->dZ;
    for (int k = 0; k < s->n_ne; k++) {
        memcpy(o + (size_t)k * H, s->pooled + (size_t)s->ne[k] * H, H * sizeof(float));
        memcpy(g + (size_t)k * H, s->dpooled + (size_t)s->ne[k] * H, H * sizeof(float));
    }
    tbert_bwd_pooler(s->n_ne, s->H, s->cls, s->pool_w, o, g, dcls, s->dpool_w, s->dpool_b, s->pool_ws);
    for (int k = 0; k < s->n_ne; k++)
        memcpy(s->dY + (size_t)s->off[s->ne[k]] * H, dcls + (size_t)k * H, H * sizeof(float));
}

/* From s->dY = d loss / d (layer i's out): the layer's gradients, and d loss / d (its input) into s->dY unless
 * need_dx is false. */
static void layer_backward(tbert_ft_stack *s, int i, bool need_dx) {
    const ft_lw *w = &s->lw[i];
    const ft_pk *pk = &s->pk[i];
    refresh_packs(s, &s->pk[i], true);
    const ft_lw *g = &s->lg[i];
    const ft_act *a = &s->act[i];
    int l = s->first + i, H = s->H, IM = s->IM;
    size_t N = s->N;
    bool on = s->training;
    tbert_dropout dp = make_drop(s, on, s->cfg.attn_dropout, l, TBERT_DROP_ATTN_PROBS);
    tbert_dropout da = make_drop(s, on, s->cfg.hidden_dropout, l, TBERT_DROP_ATTN_OUT);
    tbert_dropout df = make_drop(s, on, s->cfg.hidden_dropout, l, TBERT_DROP_FFN_OUT);
    /* out = LN2(z2), z2 = h1 + drop(g Wout^T + bout) */
    layernorm_backward(s, a->z2, a->mean2, a->rstd2, w->ln2_g, s->dY, s->dZ, g->ln2_g, g->ln2_b);
    mix(s, s->dZ, df.p > 0 ? &df : NULL, NULL, s->dY);
    linear_backward(s, N, IM, H, a->g, pk, PK_OUT, s->dY, s->dI, g->wout, g->bout);
    /* g = gelu(h1 Wi^T + bi) */
    gelu_bwd gb = {s, a->a, s->dI, s->part};
    int nch = n_chunks(N, TBERT_BWD_CHUNK);
    par_for(s, nch, gelu_bwd_item, &gb);
    for (int c = 0; c < nch; c++)
        for (int j = 0; j < IM; j++) g->bi[j] += s->part[(size_t)c * IM + j];
    linear_backward(s, N, H, IM, a->h1, pk, PK_I, s->dI, s->dH, g->wi, NULL);
    mix(s, NULL, NULL, s->dZ, s->dH); /* + the residual */
    /* h1 = LN1(z1), z1 = x + drop(ctx Wo^T + bo) */
    layernorm_backward(s, a->z1, a->mean1, a->rstd1, w->ln1_g, s->dH, s->dZ, g->ln1_g, g->ln1_b);
    mix(s, s->dZ, da.p > 0 ? &da : NULL, NULL, s->dH);
    linear_backward(s, N, H, H, a->ctx, pk, PK_O, s->dH, s->dCtx, g->wo, g->bo);
    attn_job aj = {s, a->qkv, NULL, a->P, a->Pd, s->dCtx, s->dQKV, &dp};
    par_for(s, s->n_win, attn_bwd_item, &aj);
    linear_backward(s, N, H, 3 * H, a->x, pk, PK_QKV, s->dQKV, need_dx ? s->dY : NULL, g->wqkv, g->bqkv);
    if (need_dx) mix(s, NULL, NULL, s->dZ, s->dY);
}

tbert_status tbert_ft_stack_backward(tbert_ft_stack *s, const float *dout, tbert_error *err) {
    if (!s->saved)
        return tbert_fail(err, TBERT_E_ARG, "finetune stack: backward without a training forward of the batch");
    openblas_set_num_threads(1);
    pool_backward(s, dout);
    for (int i = s->cfg.k - 1; i >= 0; i--) layer_backward(s, i, i > 0 || s->cfg.train_embeddings);
    if (s->cfg.train_embeddings) {
        tbert_dropout de = make_drop(s, s->training, s->cfg.hidden_dropout, 0, TBERT_DROP_EMBEDDINGS);
        if (de.p > 0) mix(s, NULL, &de, NULL, s->dY);
        layernorm_backward(s, s->ez, s->emean, s->erstd, s->eln_g, s->dY, s->dZ, s->deln_g, s->deln_b);
        tbert_bwd_embeddings(s->n_win, s->off, s->H, s->ids, s->dZ, s->dword, s->dpos, s->dtype);
    }
    return TBERT_OK;
}
