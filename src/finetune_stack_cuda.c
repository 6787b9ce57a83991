/* The trainable top of the encoder on a CUDA device (interface and contracts: src/finetune_stack_cuda.h). The same
 * steps as src/finetune_stack.c, op for op, with the forward kernels of kernels/ (GEMMs, bias, pooling), the
 * backward kernels and their saving forward twins (kernels/NAME_bwd.cu: layernorm with mean/rstd, bias + GELU
 * keeping the pre-activation, attention keeping P, with probability dropout) and kernels/finetune.cu:
 *   qkv = x Wqkv^T + bqkv;  ctx = d_probs(softmax(q k^T / sqrt(dh))) v       (P saved, before dropout)
 *   z1  = x + d_attn_out(ctx Wo^T + bo);  h1 = LN1(z1)                       (z1, mean, rstd saved)
 *   a   = h1 Wi^T + bi;  g = gelu(a);  z2 = h1 + d_ffn_out(g Wout^T + bout);  out = LN2(z2)
 * Embeddings (first trained layer 0): x0 = d_emb(LN(word[id] + pos[t] + type[0])), float32, then the activation type.
 * Everything runs on one non-blocking stream (copies included: docs/cuda.md on the legacy stream); the host
 * synchronises once per call, when it reads results. */
#include "finetune_stack_cuda.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "tbert/cuda_kernels.h"
#include "tbert/dropout_rng.h"

typedef struct {
    float *wqkv, *bqkv, *wo, *bo, *ln1_g, *ln1_b, *wi, *bi, *wout, *bout, *ln2_g, *ln2_b;
} ftc_lw; /* one layer's tensors (values or gradients) in the list layout; wqkv = [q; k; v] */

typedef struct {
    void *wqkv, *wo, *wi, *wout; /* the GEMM operands in the activation type (bf16 copies, or the float32 values) */
} ftc_gw;

typedef struct {
    void *x, *qkv, *P, *ctx, *z1, *h1, *a, *g, *z2, *out;
    float *mean1, *rstd1, *mean2, *rstd2;
} ftc_act;

typedef struct {
    int32_t *perm, *start, *key;
} ftc_plan;

struct tbert_cuda_ft {
    tbert_ft_stack_cfg cfg;
    int device, first, k, H, IM, A, V, NP, NT;
    float eps;
    size_t dim;
    tbert_cuda_dtype dt;
    tbert_cuda_gemm_mode mode;
    size_t esz; /* bytes of one activation */
    cudaStream_t s;
    cublasHandle_t blas;
    /* the trained tensors: list layout (entry i at offs[i] floats) */
    int n;
    size_t numel, *offs;
    float *w, *gr, *hgrad; /* device values, device gradients, host staging of the gradients */
    uint16_t *w16;         /* bf16 copies of the GEMM weights (bf16 mode), n16 values */
    size_t n16;
    ftc_lw *lw, *lg;
    ftc_gw *gw;
    const float *word, *pos, *type, *eln_g, *eln_b;
    float *dword, *dpos, *dtype, *deln_g, *deln_b;
    float *frozen; /* the model's embeddings on the device when layer 0 runs here untrained */
    float *pool_w, *pool_b, *dpool_w, *dpool_b;
    /* the batch: one device arena carved by layout(), host copies of the offsets */
    char *arena;
    size_t cap_N, cap_P, cap_W;
    int32_t *h_cu, *h_count, *h_keys;
    int64_t *h_poff;
    int32_t *h_plan; /* perm/start/key of the word and position plans, host */
    size_t cap_hN, cap_hW, cap_hcount;
    int32_t *d_cu, *d_ids;
    int64_t *d_poff;
    float *xin, *ez, *emean, *erstd, *dez;
    void *x0;
    ftc_act *act;
    float *cls, *pooled, *dpooled, *dcls, *ws;
    void *dY, *dZ, *dH, *dCtx, *dQKV, *dI;
    ftc_plan pw, pp;
    int n_wseg, n_pseg;
    int n_win;
    size_t N, np;
    bool saved, training;
    uint64_t step;
};

static tbert_status dev_alloc(void **p, size_t n, size_t size, tbert_error *err) {
    size_t bytes;
    if (!tbert_mul_size(n ? n : 1, size, &bytes))
        return tbert_fail(err, TBERT_E_NOMEM, "CUDA finetune stack: size overflow");
    TBERT_CUDA_CHECK(err, cudaMalloc(p, bytes));
    return TBERT_OK;
}

void tbert_cuda_ft_free(tbert_cuda_ft *g) {
    if (!g) return;
    cudaSetDevice(g->device);
    if (g->s) cudaStreamSynchronize(g->s);
    void *bufs[] = {g->w, g->gr, g->w16, g->frozen, g->arena};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        if (bufs[i]) cudaFree(bufs[i]);
    if (g->blas) cublasDestroy(g->blas);
    if (g->s) cudaStreamDestroy(g->s);
    free(g->offs), free(g->hgrad), free(g->lw), free(g->lg), free(g->gw), free(g->act);
    free(g->h_cu), free(g->h_poff), free(g->h_count), free(g->h_keys), free(g->h_plan);
    free(g);
}

/* the list entry called name, its device value and gradient; NULL when absent or of another size */
static float *entry(tbert_cuda_ft *g, const tbert_params *ps, const char *name, size_t n, float **grad) {
    for (int i = 0; i < ps->n; i++)
        if (!strcmp(ps->p[i].name, name)) {
            if (ps->p[i].n != n) return NULL;
            *grad = g->gr + g->offs[i];
            return g->w + g->offs[i];
        }
    return NULL;
}

static tbert_status map_tensors(tbert_cuda_ft *g, const tbert_params *ps, tbert_error *err) {
    size_t H = (size_t)g->H, IM = (size_t)g->IM;
    char nm[TBERT_PARAM_NAME_MAX];
    float *gq;
#define MAP(dst, gdst, name, count)                                                                                \
    do {                                                                                                           \
        if (!((dst) = entry(g, ps, (name), (count), &gq)))                                                         \
            return tbert_fail(err, TBERT_E_ARG, "CUDA finetune stack: tensor %s missing or of another size", name); \
        (gdst) = gq;                                                                                               \
    } while (0)
    if (g->cfg.train_embeddings) {
        float *w;
        MAP(w, g->dword, "embeddings.word_embeddings.weight", (size_t)g->V * H);
        g->word = w;
        MAP(w, g->dpos, "embeddings.position_embeddings.weight", (size_t)g->NP * H);
        g->pos = w;
        MAP(w, g->dtype, "embeddings.token_type_embeddings.weight", (size_t)g->NT * H);
        g->type = w;
        MAP(w, g->deln_g, "embeddings.LayerNorm.weight", H);
        g->eln_g = w;
        MAP(w, g->deln_b, "embeddings.LayerNorm.bias", H);
        g->eln_b = w;
    }
    for (int i = 0; i < g->k; i++) {
        int l = g->first + i;
        ftc_lw *w = &g->lw[i], *d = &g->lg[i];
        float *kw, *kg, *vw, *vg;
#define L2(field, name, count)                                                                                     \
    snprintf(nm, sizeof nm, "encoder.layer.%d.%s", l, name);                                                       \
    MAP(w->field, d->field, nm, count)
        L2(wqkv, "attention.self.query.weight", H * H);
        snprintf(nm, sizeof nm, "encoder.layer.%d.attention.self.key.weight", l);
        MAP(kw, kg, nm, H * H);
        snprintf(nm, sizeof nm, "encoder.layer.%d.attention.self.value.weight", l);
        MAP(vw, vg, nm, H * H);
        if (kw != w->wqkv + H * H || vw != kw + H * H || kg != d->wqkv + H * H || vg != kg + H * H)
            return tbert_fail(err, TBERT_E_ARG, "CUDA finetune stack: layer %d's q, k, v weights are not adjacent", l);
        L2(bqkv, "attention.self.query.bias", H);
        snprintf(nm, sizeof nm, "encoder.layer.%d.attention.self.key.bias", l);
        MAP(kw, kg, nm, H);
        snprintf(nm, sizeof nm, "encoder.layer.%d.attention.self.value.bias", l);
        MAP(vw, vg, nm, H);
        if (kw != w->bqkv + H || vw != kw + H || kg != d->bqkv + H || vg != kg + H)
            return tbert_fail(err, TBERT_E_ARG, "CUDA finetune stack: layer %d's q, k, v biases are not adjacent", l);
        L2(wo, "attention.output.dense.weight", H * H);
        L2(bo, "attention.output.dense.bias", H);
        L2(ln1_g, "attention.output.LayerNorm.weight", H);
        L2(ln1_b, "attention.output.LayerNorm.bias", H);
        L2(wi, "intermediate.dense.weight", IM * H);
        L2(bi, "intermediate.dense.bias", IM);
        L2(wout, "output.dense.weight", H * IM);
        L2(bout, "output.dense.bias", H);
        L2(ln2_g, "output.LayerNorm.weight", H);
        L2(ln2_b, "output.LayerNorm.bias", H);
#undef L2
    }
    if (g->cfg.pool == TBERT_POOL_POOLER) {
        MAP(g->pool_w, g->dpool_w, "pooler.dense.weight", H * H);
        MAP(g->pool_b, g->dpool_b, "pooler.dense.bias", H);
    }
#undef MAP
    return TBERT_OK;
}

tbert_status tbert_cuda_ft_create(const tbert_model *m, const tbert_ft_stack_cfg *cfg, const tbert_params *ps,
                                  tbert_precision precision, int device, tbert_cuda_ft **out, tbert_error *err) {
    *out = NULL;
    const tbert_config *c = &m->cfg;
    if (cfg->layers < 1 || cfg->layers > c->layers || cfg->k < 1 || cfg->k > cfg->layers ||
        (cfg->train_embeddings && cfg->k != cfg->layers) || (unsigned)cfg->pool >= TBERT_POOL_COUNT ||
        c->hidden <= 0 || c->heads <= 0 || c->hidden % c->heads)
        return tbert_fail(err, TBERT_E_ARG, "CUDA finetune stack: bad configuration (layers %d, k %d)", cfg->layers,
                          cfg->k);
    if (!(cfg->hidden_dropout >= 0.0f && cfg->hidden_dropout < 1.0f && cfg->attn_dropout >= 0.0f &&
          cfg->attn_dropout < 1.0f))
        return tbert_fail(err, TBERT_E_ARG, "CUDA finetune stack: dropout outside [0, 1)");
    tbert_cuda_ft *g = calloc(1, sizeof *g);
    if (!g) return tbert_fail(err, TBERT_E_NOMEM, "CUDA finetune stack: out of memory");
    g->cfg = *cfg;
    g->device = device;
    g->first = cfg->layers - cfg->k;
    g->k = cfg->k;
    g->H = c->hidden;
    g->IM = c->intermediate;
    g->A = c->heads;
    g->V = c->vocab_size;
    g->NP = c->max_position;
    g->NT = c->type_vocab_size;
    g->eps = c->layer_norm_eps;
    g->dim = cfg->pool == TBERT_POOL_FLATTEN ? (size_t)(cfg->max_len > 0 ? cfg->max_len : 0) * (size_t)c->hidden
                                             : (size_t)c->hidden; /* tbert_pool_dim (libtbert) */
    g->dt = precision == TBERT_PREC_BF16 ? TBERT_CUDA_BF16 : TBERT_CUDA_F32;
    g->mode = precision == TBERT_PREC_BF16   ? TBERT_CUDA_GEMM_BF16
              : precision == TBERT_PREC_TF32 ? TBERT_CUDA_GEMM_TF32
                                             : TBERT_CUDA_GEMM_FP32;
    g->esz = g->dt == TBERT_CUDA_BF16 ? 2 : 4;
    g->n = ps->n;
    g->offs = tbert_malloc_array((size_t)ps->n + 1, sizeof(size_t));
    g->lw = calloc((size_t)g->k, sizeof *g->lw);
    g->lg = calloc((size_t)g->k, sizeof *g->lg);
    g->gw = calloc((size_t)g->k, sizeof *g->gw);
    g->act = calloc((size_t)g->k, sizeof *g->act);
    if (!g->offs || !g->lw || !g->lg || !g->gw || !g->act) {
        tbert_cuda_ft_free(g);
        return tbert_fail(err, TBERT_E_NOMEM, "CUDA finetune stack: out of memory");
    }
    for (int i = 0; i < ps->n; i++) {
        g->offs[i] = g->numel;
        g->numel += ps->p[i].n;
    }
    g->hgrad = tbert_malloc_array(g->numel ? g->numel : 1, sizeof(float));
    tbert_status st = g->hgrad ? TBERT_OK : tbert_fail(err, TBERT_E_NOMEM, "CUDA finetune stack: out of memory");
#define RUN(call)                                                                                                  \
    do {                                                                                                           \
        if (st == TBERT_OK) st = (call);                                                                           \
    } while (0)
    int rc = 0;
    if (!st && (rc = cudaSetDevice(device)) != 0)
        st = tbert_fail(err, TBERT_E_CUDA, "CUDA: cudaSetDevice(%d) failed: %s", device, tbert_cuda_error_string(rc));
    if (!st && (rc = cudaStreamCreateWithFlags(&g->s, cudaStreamNonBlocking)) != 0)
        st = tbert_fail(err, TBERT_E_CUDA, "CUDA: stream: %s", tbert_cuda_error_string(rc));
    if (!st && (rc = cublasCreate(&g->blas)) != 0)
        st = tbert_fail(err, TBERT_E_CUDA, "cuBLAS: create: %s", tbert_cuda_error_string(TBERT_CUDA_CUBLAS_BASE + rc));
    if (!st && (rc = cublasSetStream(g->blas, g->s)) != 0)
        st = tbert_fail(err, TBERT_E_CUDA, "cuBLAS: set stream: %s",
                        tbert_cuda_error_string(TBERT_CUDA_CUBLAS_BASE + rc));
    RUN(dev_alloc((void **)&g->w, g->numel, sizeof(float), err));
    RUN(dev_alloc((void **)&g->gr, g->numel, sizeof(float), err));
    RUN(map_tensors(g, ps, err));
    size_t H = (size_t)g->H, IM = (size_t)g->IM;
    if (g->dt == TBERT_CUDA_BF16) {
        g->n16 = (size_t)g->k * (4 * H * H + 2 * H * IM);
        RUN(dev_alloc((void **)&g->w16, g->n16, sizeof(uint16_t), err));
    }
    for (int i = 0; i < g->k && !st; i++) {
        if (g->w16) {
            uint16_t *b = g->w16 + (size_t)i * (4 * H * H + 2 * H * IM);
            g->gw[i] = (ftc_gw){b, b + 3 * H * H, b + 4 * H * H, b + 4 * H * H + IM * H};
        } else {
            g->gw[i] = (ftc_gw){g->lw[i].wqkv, g->lw[i].wo, g->lw[i].wi, g->lw[i].wout};
        }
    }
    if (!st && g->first == 0 && !cfg->train_embeddings) { /* layer 0 trains, the embeddings stay the model's */
        size_t nf = ((size_t)g->V + g->NP + g->NT + 2) * H;
        RUN(dev_alloc((void **)&g->frozen, nf, sizeof(float), err));
        const float *src[5] = {m->word_emb, m->pos_emb, m->type_emb, m->emb_ln_g, m->emb_ln_b};
        size_t cnt[5] = {(size_t)g->V * H, (size_t)g->NP * H, (size_t)g->NT * H, H, H}, at = 0;
        const float **dst[5] = {&g->word, &g->pos, &g->type, &g->eln_g, &g->eln_b};
        for (int t = 0; t < 5 && !st; t++) {
            rc = cudaMemcpyAsync(g->frozen + at, src[t], cnt[t] * sizeof(float), cudaMemcpyHostToDevice, g->s);
            if (rc) st = tbert_fail(err, TBERT_E_CUDA, "CUDA: embeddings upload: %s", tbert_cuda_error_string(rc));
            *dst[t] = g->frozen + at;
            at += cnt[t];
        }
        if (!st && (rc = cudaStreamSynchronize(g->s)) != 0)
            st = tbert_fail(err, TBERT_E_CUDA, "CUDA: embeddings upload: %s", tbert_cuda_error_string(rc));
    }
#undef RUN
    if (st) {
        tbert_cuda_ft_free(g);
        return st;
    }
    *out = g;
    return TBERT_OK;
}

tbert_status tbert_cuda_ft_upload(tbert_cuda_ft *g, const tbert_params *ps, tbert_error *err) {
    if (ps->n != g->n)
        return tbert_fail(err, TBERT_E_ARG, "CUDA finetune stack: %d tensors, %d at create", ps->n, g->n);
    TBERT_CUDA_CHECK(err, cudaSetDevice(g->device));
    for (int i = 0; i < ps->n; i++)
        TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->w + g->offs[i], ps->p[i].w, ps->p[i].n * sizeof(float),
                                              cudaMemcpyHostToDevice, g->s));
    size_t H = (size_t)g->H, IM = (size_t)g->IM;
    for (int i = 0; i < g->k && g->w16; i++) {
        TBERT_CUDA_CHECK(err, tbert_cuda_f32_to_bf16(g->gw[i].wqkv, g->lw[i].wqkv, 3 * H * H, g->s));
        TBERT_CUDA_CHECK(err, tbert_cuda_f32_to_bf16(g->gw[i].wo, g->lw[i].wo, H * H, g->s));
        TBERT_CUDA_CHECK(err, tbert_cuda_f32_to_bf16(g->gw[i].wi, g->lw[i].wi, IM * H, g->s));
        TBERT_CUDA_CHECK(err, tbert_cuda_f32_to_bf16(g->gw[i].wout, g->lw[i].wout, H * IM, g->s));
    }
    TBERT_CUDA_CHECK(err, cudaStreamSynchronize(g->s)); /* the caller may change the host values now */
    return TBERT_OK;
}

/* ---- the batch's device buffers ---- */

static size_t ws_floats(const tbert_cuda_ft *g, size_t N, size_t P, size_t W) {
    size_t H = (size_t)g->H, IM = (size_t)g->IM, wide = 3 * H > IM ? 3 * H : IM, n = 0;
#define AT_LEAST(v)                                                                                                \
    do {                                                                                                           \
        size_t v_ = (v);                                                                                           \
        if (v_ > n) n = v_;                                                                                        \
    } while (0)
    AT_LEAST(tbert_cuda_colsum_ws_floats(N, (int)wide));
    AT_LEAST(2 * tbert_cuda_colsum_ws_floats(N, (int)H));
    AT_LEAST(tbert_cuda_attention_ws_floats((int64_t)P, g->dt, g->cfg.attn_dropout > 0));
    AT_LEAST(W * H + tbert_cuda_colsum_ws_floats(W, (int)H));
#undef AT_LEAST
    return n;
}

/* Carves the arena for N tokens, P probabilities, W windows (base NULL: counts bytes). */
static size_t layout(tbert_cuda_ft *g, char *base, size_t N, size_t P, size_t W) {
    size_t at = 0, H = (size_t)g->H, IM = (size_t)g->IM, e = g->esz;
#define TAKE(ptr, bytes)                                                                                           \
    do {                                                                                                           \
        if (base) *(void **)&(ptr) = base + at;                                                                    \
        at += ((bytes) + 255) / 256 * 256;                                                                         \
    } while (0)
    TAKE(g->d_cu, (W + 1) * sizeof(int32_t));
    TAKE(g->d_poff, (W + 1) * sizeof(int64_t));
    TAKE(g->xin, N * H * sizeof(float));
    TAKE(g->x0, N * H * e);
    if (g->first == 0) {
        TAKE(g->d_ids, N * sizeof(int32_t));
        TAKE(g->ez, N * H * sizeof(float));
        TAKE(g->emean, N * sizeof(float));
        TAKE(g->erstd, N * sizeof(float));
        if (g->cfg.train_embeddings) {
            TAKE(g->dez, N * H * sizeof(float));
            ftc_plan *pl[2] = {&g->pw, &g->pp};
            for (int t = 0; t < 2; t++) {
                TAKE(pl[t]->perm, N * sizeof(int32_t));
                TAKE(pl[t]->start, (N + 1) * sizeof(int32_t));
                TAKE(pl[t]->key, (N + 1) * sizeof(int32_t));
            }
        }
    }
    for (int i = 0; i < g->k; i++) {
        ftc_act *a = &g->act[i];
        TAKE(a->qkv, N * 3 * H * e);
        TAKE(a->P, P * e);
        TAKE(a->ctx, N * H * e);
        TAKE(a->z1, N * H * e);
        TAKE(a->h1, N * H * e);
        TAKE(a->a, N * IM * e);
        TAKE(a->g, N * IM * e);
        TAKE(a->z2, N * H * e);
        TAKE(a->out, N * H * e);
        TAKE(a->mean1, N * sizeof(float));
        TAKE(a->rstd1, N * sizeof(float));
        TAKE(a->mean2, N * sizeof(float));
        TAKE(a->rstd2, N * sizeof(float));
        if (base) a->x = i == 0 ? g->x0 : g->act[i - 1].out;
    }
    TAKE(g->cls, W * H * sizeof(float));
    TAKE(g->pooled, W * g->dim * sizeof(float));
    TAKE(g->dpooled, W * g->dim * sizeof(float));
    TAKE(g->dcls, W * H * sizeof(float));
    TAKE(g->dY, N * H * e);
    TAKE(g->dZ, N * H * e);
    TAKE(g->dH, N * H * e);
    TAKE(g->dCtx, N * H * e);
    TAKE(g->dQKV, N * 3 * H * e);
    TAKE(g->dI, N * IM * e);
    TAKE(g->ws, ws_floats(g, N, P, W) * sizeof(float));
#undef TAKE
    return at;
}

static size_t grown(size_t cap, size_t need) {
    if (need <= cap) return cap;
    return need < cap / 2 * 3 ? cap / 2 * 3 : need;
}

static tbert_status reserve(tbert_cuda_ft *g, size_t N, size_t P, size_t W, tbert_error *err) {
    if (!g->h_cu || W > g->cap_hW) {
        size_t cw = grown(g->cap_hW, W ? W : 1);
        int32_t *cu = tbert_malloc_array(cw + 1, sizeof(int32_t));
        int64_t *po = tbert_malloc_array(cw + 1, sizeof(int64_t));
        if (!cu || !po) {
            free(cu), free(po);
            return tbert_fail(err, TBERT_E_NOMEM, "CUDA finetune stack: out of memory");
        }
        free(g->h_cu), free(g->h_poff);
        g->h_cu = cu, g->h_poff = po, g->cap_hW = cw;
    }
    if (g->cfg.train_embeddings && (!g->h_plan || N > g->cap_hN)) {
        size_t cn = grown(g->cap_hN, N ? N : 1);
        int32_t *pl = tbert_malloc_array(6 * (cn + 1), sizeof(int32_t));
        int32_t *keys = tbert_malloc_array(cn + 1, sizeof(int32_t));
        size_t cc = (size_t)(g->V > g->NP ? g->V : g->NP);
        int32_t *cnt = g->h_count ? g->h_count : tbert_malloc_array(cc, sizeof(int32_t));
        if (!pl || !keys || !cnt) {
            free(pl), free(keys);
            if (cnt != g->h_count) free(cnt);
            return tbert_fail(err, TBERT_E_NOMEM, "CUDA finetune stack: out of memory");
        }
        free(g->h_plan), free(g->h_keys);
        g->h_plan = pl, g->h_keys = keys, g->h_count = cnt, g->cap_hN = cn;
    }
    if (g->arena && N <= g->cap_N && P <= g->cap_P && W <= g->cap_W) return TBERT_OK;
    size_t cN = grown(g->cap_N, N ? N : 1), cP = grown(g->cap_P, P ? P : 1), cW = grown(g->cap_W, W ? W : 1);
    if (g->arena) {
        TBERT_CUDA_CHECK(err, cudaStreamSynchronize(g->s));
        cudaFree(g->arena);
        g->arena = NULL;
    }
    g->saved = false;
    tbert_status st = dev_alloc((void **)&g->arena, layout(g, NULL, cN, cP, cW), 1, err);
    if (st) return st;
    g->cap_N = cN, g->cap_P = cP, g->cap_W = cW;
    layout(g, g->arena, cN, cP, cW);
    return TBERT_OK;
}

/* ---- forward ---- */

static float drop_p(const tbert_cuda_ft *g, bool on, float p) {
    return on ? p : 0.0f;
}

static tbert_status layer_forward(tbert_cuda_ft *g, int i, bool on, tbert_error *err) {
    const ftc_lw *w = &g->lw[i];
    const ftc_gw *gw = &g->gw[i];
    ftc_act *a = &g->act[i];
    int l = g->first + i, H = g->H, IM = g->IM, N = (int)g->N;
    tbert_cuda_dtype dt = g->dt;
    uint64_t seed = g->cfg.dropout_seed, step = g->step;
    float ph = drop_p(g, on, g->cfg.hidden_dropout), pa = drop_p(g, on, g->cfg.attn_dropout);
    size_t NH = (size_t)N * H;
    TBERT_CUDA_CHECK(err, tbert_cuda_linear(g->blas, g->mode, a->qkv, a->x, gw->wqkv, N, H, 3 * H));
    TBERT_CUDA_CHECK(err, tbert_cuda_bias_add(a->qkv, w->bqkv, dt, N, 3 * H, g->s));
    tbert_dropout dp = {pa, seed, step, tbert_dropout_site(l, TBERT_DROP_ATTN_PROBS), 0};
    TBERT_CUDA_CHECK(err, tbert_cuda_attention_fwd_probs(g->blas, a->ctx, a->P, a->qkv, g->ws, g->h_cu, g->d_cu,
                                                         g->d_poff, &dp, dt, g->n_win, g->A, H / g->A,
                                                         1.0f / sqrtf((float)(H / g->A)), g->s));
    TBERT_CUDA_CHECK(err, tbert_cuda_linear(g->blas, g->mode, a->z1, a->ctx, gw->wo, N, H, H));
    TBERT_CUDA_CHECK(err, tbert_cuda_bias_add(a->z1, w->bo, dt, N, H, g->s));
    TBERT_CUDA_CHECK(err, tbert_cuda_dropout(a->z1, dt, NH, seed, step, tbert_dropout_site(l, TBERT_DROP_ATTN_OUT), 0,
                                             ph, g->s));
    TBERT_CUDA_CHECK(err, tbert_cuda_layernorm_fwd(a->h1, a->mean1, a->rstd1, a->z1, NULL, a->x, w->ln1_g, w->ln1_b,
                                                   g->eps, dt, N, H, g->s)); /* z1 += x (kept), LN */
    TBERT_CUDA_CHECK(err, tbert_cuda_linear(g->blas, g->mode, a->a, a->h1, gw->wi, N, H, IM));
    TBERT_CUDA_CHECK(err, tbert_cuda_bias_gelu_fwd(a->a, a->g, w->bi, dt, N, IM, g->s));
    TBERT_CUDA_CHECK(err, tbert_cuda_linear(g->blas, g->mode, a->z2, a->g, gw->wout, N, IM, H));
    TBERT_CUDA_CHECK(err, tbert_cuda_bias_add(a->z2, w->bout, dt, N, H, g->s));
    TBERT_CUDA_CHECK(err, tbert_cuda_dropout(a->z2, dt, NH, seed, step, tbert_dropout_site(l, TBERT_DROP_FFN_OUT), 0,
                                             ph, g->s));
    TBERT_CUDA_CHECK(err, tbert_cuda_layernorm_fwd(a->out, a->mean2, a->rstd2, a->z2, NULL, a->h1, w->ln2_g,
                                                   w->ln2_b, g->eps, dt, N, H, g->s));
    return TBERT_OK;
}

/* float32 src (n values) into the activation buffer dst */
static tbert_status to_act(tbert_cuda_ft *g, void *dst, const float *src, size_t n, tbert_error *err) {
    if (g->dt == TBERT_CUDA_BF16) TBERT_CUDA_CHECK(err, tbert_cuda_f32_to_bf16(dst, src, n, g->s));
    else TBERT_CUDA_CHECK(err, cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, g->s));
    return TBERT_OK;
}

static tbert_cuda_pool_kind pool_kind(tbert_pool p) {
    return p == TBERT_POOL_MEAN ? TBERT_CUDA_POOL_MEAN : p == TBERT_POOL_FLATTEN ? TBERT_CUDA_POOL_FLATTEN
                                                                                : TBERT_CUDA_POOL_CLS;
}

tbert_status tbert_cuda_ft_forward(tbert_cuda_ft *g, int n_win, const int32_t *off, const float *hidden,
                                   const int32_t *ids, bool training, uint64_t step, float *pooled, tbert_error *err) {
    int maxL = g->cfg.pool == TBERT_POOL_FLATTEN ? g->cfg.max_len : g->NP;
    if (n_win < 0 || !off || off[0] != 0)
        return tbert_fail(err, TBERT_E_ARG, "CUDA finetune stack: bad window offsets");
    for (int w = 0; w < n_win; w++)
        if (off[w + 1] - off[w] < 0 || off[w + 1] - off[w] > maxL)
            return tbert_fail(err, TBERT_E_ARG, "CUDA finetune stack: window %d has %d tokens (at most %d)", w,
                              (int)(off[w + 1] - off[w]), maxL);
    size_t N = (size_t)off[n_win], H = (size_t)g->H;
    if (g->first > 0 && !hidden && N)
        return tbert_fail(err, TBERT_E_ARG, "CUDA finetune stack: the batch needs the hidden states");
    if (g->first == 0)
        for (size_t i = 0; i < N; i++)
            if (!ids || ids[i] < 0 || ids[i] >= g->V)
                return tbert_fail(err, TBERT_E_ARG, "CUDA finetune stack: token id out of range (vocab size %d)", g->V);
    TBERT_CUDA_CHECK(err, cudaSetDevice(g->device));
    size_t np = 0;
    for (int w = 0; w < n_win; w++) np += (size_t)g->A * (size_t)(off[w + 1] - off[w]) * (size_t)(off[w + 1] - off[w]);
    tbert_status st = reserve(g, N, np, (size_t)n_win, err);
    if (st) return st;
    g->saved = false;
    g->training = training;
    g->step = step;
    g->n_win = n_win;
    g->N = N;
    memcpy(g->h_cu, off, ((size_t)n_win + 1) * sizeof(int32_t));
    g->np = (size_t)tbert_cuda_attn_probs_offsets(g->h_poff, g->h_cu, n_win, g->A);
    TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->d_cu, g->h_cu, ((size_t)n_win + 1) * sizeof(int32_t),
                                          cudaMemcpyHostToDevice, g->s));
    TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->d_poff, g->h_poff, ((size_t)n_win + 1) * sizeof(int64_t),
                                          cudaMemcpyHostToDevice, g->s));
    size_t dim = g->dim;
    TBERT_CUDA_CHECK(err, cudaMemsetAsync(g->pooled, 0, (size_t)n_win * dim * sizeof(float), g->s));
    if (N > 0) {
        if (g->first == 0) {
            TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->d_ids, ids, N * sizeof(int32_t), cudaMemcpyHostToDevice, g->s));
            TBERT_CUDA_CHECK(err, tbert_cuda_emb_sum(g->ez, g->d_ids, g->d_cu, n_win, (int)N, g->word, g->pos, g->type,
                                                     g->H, g->s));
            TBERT_CUDA_CHECK(err, tbert_cuda_layernorm_fwd(g->xin, g->emean, g->erstd, g->ez, NULL, NULL, g->eln_g,
                                                           g->eln_b, g->eps, TBERT_CUDA_F32, (int)N, g->H, g->s));
            TBERT_CUDA_CHECK(err, tbert_cuda_dropout(g->xin, TBERT_CUDA_F32, N * H, g->cfg.dropout_seed, step,
                                                     tbert_dropout_site(0, TBERT_DROP_EMBEDDINGS), 0,
                                                     drop_p(g, training, g->cfg.hidden_dropout), g->s));
        } else {
            TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->xin, hidden, N * H * sizeof(float), cudaMemcpyHostToDevice, g->s));
        }
        if ((st = to_act(g, g->x0, g->xin, N * H, err))) return st;
        for (int i = 0; i < g->k; i++)
            if ((st = layer_forward(g, i, training, err))) return st;
        const void *top = g->act[g->k - 1].out;
        if (g->cfg.pool == TBERT_POOL_POOLER) {
            TBERT_CUDA_CHECK(err, tbert_cuda_pool(g->cls, H, top, g->d_cu, TBERT_CUDA_POOL_CLS, g->dt, n_win, g->H, 1,
                                                  g->s));
            TBERT_CUDA_CHECK(err, tbert_cuda_linear(g->blas, TBERT_CUDA_GEMM_FP32, g->pooled, g->cls, g->pool_w, n_win,
                                                    g->H, g->H));
            TBERT_CUDA_CHECK(err, tbert_cuda_bias_tanh(g->pooled, g->pool_b, n_win, g->H, g->s));
        } else {
            TBERT_CUDA_CHECK(err, tbert_cuda_pool(g->pooled, dim, top, g->d_cu, pool_kind(g->cfg.pool), g->dt, n_win,
                                                  g->H, g->cfg.pool == TBERT_POOL_FLATTEN ? g->cfg.max_len : 1, g->s));
        }
    }
    TBERT_CUDA_CHECK(err, cudaMemcpyAsync(pooled, g->pooled, (size_t)n_win * dim * sizeof(float),
                                          cudaMemcpyDeviceToHost, g->s));
    TBERT_CUDA_CHECK(err, cudaStreamSynchronize(g->s));
    g->saved = training;
    return TBERT_OK;
}

/* ---- backward ---- */

/* From dY = d loss / d (layer i's out): its gradients, and d loss / d (its input) into dY when need_dx. */
static tbert_status layer_backward(tbert_cuda_ft *g, int i, bool need_dx, tbert_error *err) {
    const ftc_lw *w = &g->lw[i], *d = &g->lg[i];
    const ftc_gw *gw = &g->gw[i];
    const ftc_act *a = &g->act[i];
    int l = g->first + i, H = g->H, IM = g->IM, N = (int)g->N;
    tbert_cuda_dtype dt = g->dt;
    uint64_t seed = g->cfg.dropout_seed, step = g->step;
    bool on = g->training;
    float ph = drop_p(g, on, g->cfg.hidden_dropout), pa = drop_p(g, on, g->cfg.attn_dropout);
    size_t NH = (size_t)N * H;
    TBERT_CUDA_CHECK(err, tbert_cuda_layernorm_bwd(g->dZ, NULL, d->ln2_g, d->ln2_b, a->z2, a->mean2, a->rstd2, w->ln2_g,
                                                   g->dY, g->ws, dt, N, H, g->s));
    TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->dY, g->dZ, NH * g->esz, cudaMemcpyDeviceToDevice, g->s));
    TBERT_CUDA_CHECK(err, tbert_cuda_dropout(g->dY, dt, NH, seed, step, tbert_dropout_site(l, TBERT_DROP_FFN_OUT), 0,
                                             ph, g->s));
    TBERT_CUDA_CHECK(err, tbert_cuda_linear_bwd(g->blas, g->mode, g->dI, 0, d->wout, d->bout, a->g, gw->wout, g->dY,
                                                g->ws, N, IM, H, g->s));
    TBERT_CUDA_CHECK(err, tbert_cuda_bias_gelu_bwd(g->dI, g->dI, a->a, d->bi, g->ws, dt, N, IM, g->s));
    /* dH = dZ (the residual branch) + dI Wi, summed in the product */
    TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->dH, g->dZ, NH * g->esz, cudaMemcpyDeviceToDevice, g->s));
    TBERT_CUDA_CHECK(err, tbert_cuda_linear_bwd(g->blas, g->mode, g->dH, 1, d->wi, NULL, a->h1, gw->wi, g->dI, g->ws,
                                                N, H, IM, g->s));
    TBERT_CUDA_CHECK(err, tbert_cuda_layernorm_bwd(g->dZ, NULL, d->ln1_g, d->ln1_b, a->z1, a->mean1, a->rstd1, w->ln1_g,
                                                   g->dH, g->ws, dt, N, H, g->s));
    TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->dH, g->dZ, NH * g->esz, cudaMemcpyDeviceToDevice, g->s));
    TBERT_CUDA_CHECK(err, tbert_cuda_dropout(g->dH, dt, NH, seed, step, tbert_dropout_site(l, TBERT_DROP_ATTN_OUT), 0,
                                             ph, g->s));
    TBERT_CUDA_CHECK(err, tbert_cuda_linear_bwd(g->blas, g->mode, g->dCtx, 0, d->wo, d->bo, a->ctx, gw->wo, g->dH,
                                                g->ws, N, H, H, g->s));
    tbert_dropout dp = {pa, seed, step, tbert_dropout_site(l, TBERT_DROP_ATTN_PROBS), 0};
    TBERT_CUDA_CHECK(err, tbert_cuda_attention_bwd(g->blas, g->dQKV, a->qkv, a->P, g->dCtx, g->ws, g->h_cu, g->d_cu,
                                                   g->d_poff, &dp, dt, g->n_win, g->A, H / g->A,
                                                   1.0f / sqrtf((float)(H / g->A)), g->s));
    /* dY = dZ (the residual branch) + dQKV Wqkv */
    if (need_dx) TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->dY, g->dZ, NH * g->esz, cudaMemcpyDeviceToDevice, g->s));
    TBERT_CUDA_CHECK(err, tbert_cuda_linear_bwd(g->blas, g->mode, need_dx ? g->dY : NULL, 1, d->wqkv, d->bqkv, a->x,
                                                gw->wqkv, g->dQKV, g->ws, N, H, 3 * H, g->s));
    return TBERT_OK;
}

/* the word and position plans of the batch (host counting sort), uploaded */
static tbert_status embeddings_plans(tbert_cuda_ft *g, tbert_error *err) {
    int N = (int)g->N;
    int32_t *hp = g->h_plan;
    size_t cn = g->cap_hN;
    int32_t *perm = hp, *start = hp + cn + 1, *key = hp + 2 * (cn + 1);
    /* word: the ids, read back from the device copy (the host's were not kept) */
    TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->h_keys, g->d_ids, (size_t)N * sizeof(int32_t), cudaMemcpyDeviceToHost,
                                          g->s));
    TBERT_CUDA_CHECK(err, cudaStreamSynchronize(g->s));
    g->n_wseg = tbert_cuda_scatter_plan_host(g->h_keys, N, g->V, g->h_count, perm, start, key);
    if (g->n_wseg < 0) return tbert_fail(err, TBERT_E_ARG, "CUDA finetune stack: token id out of range");
    TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->pw.perm, perm, (size_t)N * sizeof(int32_t), cudaMemcpyHostToDevice, g->s));
    TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->pw.start, start, ((size_t)g->n_wseg + 1) * sizeof(int32_t),
                                          cudaMemcpyHostToDevice, g->s));
    TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->pw.key, key, ((size_t)g->n_wseg + 1) * sizeof(int32_t),
                                          cudaMemcpyHostToDevice, g->s));
    int32_t *perm2 = hp + 3 * (cn + 1), *start2 = hp + 4 * (cn + 1), *key2 = hp + 5 * (cn + 1);
    for (int w = 0; w < g->n_win; w++)
        for (int r = g->h_cu[w]; r < g->h_cu[w + 1]; r++) g->h_keys[r] = r - g->h_cu[w];
    g->n_pseg = tbert_cuda_scatter_plan_host(g->h_keys, N, g->NP, g->h_count, perm2, start2, key2);
    if (g->n_pseg < 0) return tbert_fail(err, TBERT_E_ARG, "CUDA finetune stack: position out of range");
    TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->pp.perm, perm2, (size_t)N * sizeof(int32_t), cudaMemcpyHostToDevice,
                                          g->s));
    TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->pp.start, start2, ((size_t)g->n_pseg + 1) * sizeof(int32_t),
                                          cudaMemcpyHostToDevice, g->s));
    TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->pp.key, key2, ((size_t)g->n_pseg + 1) * sizeof(int32_t),
                                          cudaMemcpyHostToDevice, g->s));
    return TBERT_OK;
}

tbert_status tbert_cuda_ft_backward(tbert_cuda_ft *g, const float *dpooled, tbert_params *ps, tbert_error *err) {
    if (!g->saved)
        return tbert_fail(err, TBERT_E_ARG, "CUDA finetune stack: backward without a training forward of the batch");
    if (ps->n != g->n)
        return tbert_fail(err, TBERT_E_ARG, "CUDA finetune stack: %d tensors, %d at create", ps->n, g->n);
    TBERT_CUDA_CHECK(err, cudaSetDevice(g->device));
    TBERT_CUDA_CHECK(err, cudaMemsetAsync(g->gr, 0, g->numel * sizeof(float), g->s));
    size_t N = g->N, H = (size_t)g->H, dim = g->dim;
    int n_win = g->n_win;
    tbert_status st;
    if (N > 0) {
        TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->dpooled, dpooled, (size_t)n_win * dim * sizeof(float),
                                              cudaMemcpyHostToDevice, g->s));
        if (g->cfg.pool == TBERT_POOL_POOLER) {
            TBERT_CUDA_CHECK(err, tbert_cuda_pooler_bwd(g->blas, g->dcls, g->dpool_w, g->dpool_b, g->cls, g->pool_w,
                                                        g->pooled, g->dpooled, g->ws, n_win, g->H, g->s));
            TBERT_CUDA_CHECK(err, tbert_cuda_pool_bwd(g->dY, g->dcls, H, g->d_cu, TBERT_CUDA_POOL_CLS, g->dt, n_win,
                                                      (int)N, g->H, 1, g->s));
        } else {
            TBERT_CUDA_CHECK(err, tbert_cuda_pool_bwd(g->dY, g->dpooled, dim, g->d_cu, pool_kind(g->cfg.pool), g->dt,
                                                      n_win, (int)N, g->H,
                                                      g->cfg.pool == TBERT_POOL_FLATTEN ? g->cfg.max_len : 1, g->s));
        }
        for (int i = g->k - 1; i >= 0; i--)
            if ((st = layer_backward(g, i, i > 0 || g->cfg.train_embeddings, err))) return st;
        if (g->cfg.train_embeddings) {
            /* dY (activation type) -> float32 in xin (the forward's input is not needed any more) */
            if (g->dt == TBERT_CUDA_BF16) TBERT_CUDA_CHECK(err, tbert_cuda_to_f32(g->xin, g->dY, g->dt, N * H, g->s));
            else
                TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->xin, g->dY, N * H * sizeof(float), cudaMemcpyDeviceToDevice,
                                                      g->s));
            TBERT_CUDA_CHECK(err, tbert_cuda_dropout(g->xin, TBERT_CUDA_F32, N * H, g->cfg.dropout_seed, g->step,
                                                     tbert_dropout_site(0, TBERT_DROP_EMBEDDINGS), 0,
                                                     drop_p(g, g->training, g->cfg.hidden_dropout), g->s));
            TBERT_CUDA_CHECK(err, tbert_cuda_layernorm_bwd(g->dez, NULL, g->deln_g, g->deln_b, g->ez, g->emean,
                                                           g->erstd, g->eln_g, g->xin, g->ws, TBERT_CUDA_F32, (int)N,
                                                           g->H, g->s));
            if ((st = embeddings_plans(g, err))) return st;
            tbert_cuda_scatter_plan wp = {g->pw.perm, g->pw.start, g->pw.key, g->n_wseg};
            tbert_cuda_scatter_plan pp = {g->pp.perm, g->pp.start, g->pp.key, g->n_pseg};
            TBERT_CUDA_CHECK(err, tbert_cuda_embeddings_bwd(g->dword, g->dpos, g->dtype, g->dez, &wp, &pp, g->ws,
                                                            (int)N, g->H, g->s));
        }
    }
    TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->hgrad, g->gr, g->numel * sizeof(float), cudaMemcpyDeviceToHost, g->s));
    TBERT_CUDA_CHECK(err, cudaStreamSynchronize(g->s));
    for (int i = 0; i < ps->n; i++) {
        float *dst = ps->p[i].g;
        const float *src = g->hgrad + g->offs[i];
        for (size_t j = 0; j < ps->p[i].n; j++) dst[j] += src[j];
    }
    return TBERT_OK;
}
