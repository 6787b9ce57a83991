/* CUDA backend of the encoder (interface: src/encoder_backend.h; kernels: one .cu file per operation under kernels/).
 *
 * - Weights are uploaded once at create: embeddings, biases and layernorm parameters as float32; the four
 *   matrices of each layer (Q|K|V concatenated into one (3H, H) matrix, attention output, intermediate,
 *   output) in the precision's storage type (float32 for fp32/tf32, bf16 for bf16).
 * - One device arena holds the activations of one chunk of sequences plus two input and two output slots;
 *   it is sized for the largest (chunk rows, T, feature dim) seen and only grows. Device out of memory while
 *   sizing it: the chunk is halved and the arena retried (said once on stderr).
 * - A call is cut into chunks of at most kChunkTokens tokens. Two streams and two slots pipeline them: the
 *   copy stream uploads chunk k+1's token ids and downloads chunk k-1's features (into pinned host buffers)
 *   while the compute stream runs chunk k.
 * Part of the CUDA plugin (libtbert_cuda.so): src/encoder.c reaches these functions through the plugin's table
 * (src/cuda_plugin_api.c). */
#include "encoder_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tbert/cuda_kernels.h"

enum { kChunkTokens = 131072, kMaxChunkRows = 65535, kAlign = 256 };

typedef struct {
    void *w_qkv, *w_o, *w_i, *w_o2; /* storage type: (3H,H), (H,H), (I,H), (H,I) */
    float *b_qkv, *b_o, *ln1_g, *ln1_b, *b_i, *b_o2, *ln2_g, *ln2_b;
} dev_layer;

/* Device pointers into the arena for one call's chunk shape. */
typedef struct {
    void *x, *qkv, *ctx, *inter;
    float *att_work, *cls;
    int32_t *ids[2], *lens[2];
    float *out[2];
} arena_layout;

struct tbert_cuda_encoder {
    tbert_config cfg;
    int layers, device;
    tbert_precision precision;
    tbert_cuda_dtype dt;
    tbert_cuda_gemm_mode gemm;
    size_t act_bytes; /* bytes per activation element */
    bool unfused, fused_v1, has_pooler, oom_said; /* attention: TBERT_CUDA_ATTENTION=unfused|fused1 */
    int max_chunk_rows; /* halved on out-of-memory */
    int chunk_tokens;   /* tokens per chunk: kChunkTokens, or TBERT_CUDA_CHUNK_TOKENS (tests use it to force many chunks) */
    size_t fake_oom_bytes; /* TBERT_CUDA_FAKE_OOM_BYTES: arenas above this fail as out of memory (tests the halving) */

    cublasHandle_t blas;
    cudaStream_t compute, copy;
    cudaEvent_t ev_in[2], ev_comp[2], ev_out[2];

    void *wmat;  /* all matrices, storage type */
    float *wf32; /* everything else, float32 */
    float *word, *pos, *type, *emb_g, *emb_b, *pooler_w, *pooler_b;
    dev_layer *L;

    void *arena;
    size_t arena_bytes;
    int32_t *h_ids[2], *h_lens[2];
    float *h_out[2];
    size_t h_ids_n, h_lens_n, h_out_n; /* elements per pinned slot */
};

static size_t align_up(size_t n) {
    return (n + kAlign - 1) / kAlign * kAlign;
}

/* Bytes the arena needs for a chunk of rows x T with dim output floats per row; fills lay when arena != NULL. */
static size_t arena_plan(const tbert_cuda_encoder *e, int rows, int T, size_t dim, char *arena, arena_layout *lay) {
    const size_t N = (size_t)rows * T, H = (size_t)e->cfg.hidden, I = (size_t)e->cfg.intermediate;
    size_t sizes[12], off = 0;
    int k = 0;
    sizes[k++] = N * H * e->act_bytes;     /* x */
    sizes[k++] = N * 3 * H * e->act_bytes; /* qkv (also the GEMM outputs before each layernorm) */
    sizes[k++] = N * H * e->act_bytes;     /* ctx */
    sizes[k++] = N * I * e->act_bytes;     /* inter */
    sizes[k++] = e->unfused ? tbert_cuda_attention_unfused_work_floats(rows, T, e->cfg.heads, e->cfg.hidden / e->cfg.heads) * sizeof(float) : 0;
    sizes[k++] = (size_t)rows * H * sizeof(float); /* cls rows for the pooler */
    for (int s = 0; s < 2; s++) {
        sizes[k++] = N * sizeof(int32_t);
        sizes[k++] = (size_t)rows * sizeof(int32_t);
        sizes[k++] = (size_t)rows * dim * sizeof(float);
    }
    char *p[12];
    for (int i = 0; i < k; i++) {
        p[i] = arena ? arena + off : NULL;
        off += align_up(sizes[i]);
    }
    if (arena && lay) {
        lay->x = p[0];
        lay->qkv = p[1];
        lay->ctx = p[2];
        lay->inter = p[3];
        lay->att_work = (float *)p[4];
        lay->cls = (float *)p[5];
        for (int s = 0; s < 2; s++) {
            lay->ids[s] = (int32_t *)p[6 + 3 * s];
            lay->lens[s] = (int32_t *)p[7 + 3 * s];
            lay->out[s] = (float *)p[8 + 3 * s];
        }
    }
    return off;
}

static void free_pinned(tbert_cuda_encoder *e) {
    for (int s = 0; s < 2; s++) {
        if (e->h_ids[s]) cudaFreeHost(e->h_ids[s]);
        if (e->h_lens[s]) cudaFreeHost(e->h_lens[s]);
        if (e->h_out[s]) cudaFreeHost(e->h_out[s]);
        e->h_ids[s] = NULL;
        e->h_lens[s] = NULL;
        e->h_out[s] = NULL;
    }
    e->h_ids_n = e->h_lens_n = e->h_out_n = 0;
}

void tbert_cuda_encoder_free(tbert_cuda_encoder *e) {
    if (!e) return;
    cudaSetDevice(e->device);
    if (e->compute) cudaStreamSynchronize(e->compute);
    if (e->copy) cudaStreamSynchronize(e->copy);
    free_pinned(e);
    if (e->arena) cudaFree(e->arena);
    if (e->wmat) cudaFree(e->wmat);
    if (e->wf32) cudaFree(e->wf32);
    for (int s = 0; s < 2; s++) {
        if (e->ev_in[s]) cudaEventDestroy(e->ev_in[s]);
        if (e->ev_comp[s]) cudaEventDestroy(e->ev_comp[s]);
        if (e->ev_out[s]) cudaEventDestroy(e->ev_out[s]);
    }
    if (e->blas) cublasDestroy(e->blas);
    if (e->compute) cudaStreamDestroy(e->compute);
    if (e->copy) cudaStreamDestroy(e->copy);
    free(e->L);
    free(e);
}

/* ---- weight upload ---- */

typedef struct {
    float *f32;      /* next free float32 slot */
    char *mat;       /* next free matrix slot */
    float *staging;  /* float32 device staging for bf16 conversion */
} upload_cursor;

static tbert_status put_f32(tbert_cuda_encoder *e, upload_cursor *c, const float *host, size_t n, float **dst,
                            tbert_error *err) {
    *dst = c->f32;
    TBERT_CUDA_CHECK(err, cudaMemcpyAsync(c->f32, host, n * sizeof(float), cudaMemcpyHostToDevice, e->compute));
    c->f32 += align_up(n * sizeof(float)) / sizeof(float);
    return TBERT_OK;
}

/* Uploads up to three host matrices stacked row-wise (rows_i x cols each) as one matrix. */
static tbert_status put_mat(tbert_cuda_encoder *e, upload_cursor *c, const float *const *parts, int nparts,
                            size_t part_elems, void **dst, tbert_error *err) {
    *dst = c->mat;
    size_t total = part_elems * (size_t)nparts;
    float *target = e->dt == TBERT_CUDA_F32 ? (float *)c->mat : c->staging;
    for (int i = 0; i < nparts; i++)
        TBERT_CUDA_CHECK(err, cudaMemcpyAsync(target + i * part_elems, parts[i], part_elems * sizeof(float),
                                              cudaMemcpyHostToDevice, e->compute));
    if (e->dt == TBERT_CUDA_BF16) {
        TBERT_CUDA_CHECK(err, tbert_cuda_f32_to_bf16((uint16_t *)c->mat, c->staging, total, e->compute));
        /* the staging buffer is reused by the next matrix: same stream, so ordered */
    }
    c->mat += align_up(total * e->act_bytes);
    return TBERT_OK;
}

static tbert_status upload_weights(tbert_cuda_encoder *e, const tbert_model *m, tbert_error *err) {
    const tbert_config *cfg = &m->cfg;
    const size_t H = (size_t)cfg->hidden, I = (size_t)cfg->intermediate;
    size_t f32_bytes = align_up((size_t)cfg->vocab_size * H * 4) + align_up((size_t)cfg->max_position * H * 4) +
                       align_up((size_t)cfg->type_vocab_size * H * 4) + 2 * align_up(H * 4);
    f32_bytes += (size_t)e->layers * (align_up(3 * H * 4) + 5 * align_up(H * 4) + align_up(I * 4) + align_up(H * 4));
    if (e->has_pooler) f32_bytes += align_up(H * H * 4) + align_up(H * 4);
    size_t mat_bytes = (size_t)e->layers * (align_up(3 * H * H * e->act_bytes) + align_up(H * H * e->act_bytes) +
                                            2 * align_up(I * H * e->act_bytes));
    size_t staging = e->dt == TBERT_CUDA_BF16 ? align_up((3 * H * H > I * H ? 3 * H * H : I * H) * 4) : 0;
    TBERT_CUDA_CHECK(err, cudaMalloc((void **)&e->wf32, f32_bytes + staging));
    TBERT_CUDA_CHECK(err, cudaMalloc(&e->wmat, mat_bytes));
    upload_cursor c = {e->wf32, (char *)e->wmat, staging ? (float *)((char *)e->wf32 + f32_bytes) : NULL};
    tbert_status st;
#define PUT(host, n, dst)                                                                                      \
    if ((st = put_f32(e, &c, (host), (n), (dst), err)) != TBERT_OK) return st
    PUT(m->word_emb, (size_t)cfg->vocab_size * H, &e->word);
    PUT(m->pos_emb, (size_t)cfg->max_position * H, &e->pos);
    PUT(m->type_emb, (size_t)cfg->type_vocab_size * H, &e->type);
    PUT(m->emb_ln_g, H, &e->emb_g);
    PUT(m->emb_ln_b, H, &e->emb_b);
    for (int l = 0; l < e->layers; l++) {
        const tbert_layer_weights *w = &m->layer[l];
        dev_layer *d = &e->L[l];
        const float *qkv_b[3] = {w->q_b, w->k_b, w->v_b};
        d->b_qkv = c.f32;
        for (int i = 0; i < 3; i++) {
            TBERT_CUDA_CHECK(err, cudaMemcpyAsync(c.f32 + i * H, qkv_b[i], H * sizeof(float), cudaMemcpyHostToDevice,
                                                  e->compute));
        }
        c.f32 += align_up(3 * H * 4) / 4;
        PUT(w->attn_out_b, H, &d->b_o);
        PUT(w->attn_ln_g, H, &d->ln1_g);
        PUT(w->attn_ln_b, H, &d->ln1_b);
        PUT(w->inter_b, I, &d->b_i);
        PUT(w->out_b, H, &d->b_o2);
        PUT(w->out_ln_g, H, &d->ln2_g);
        PUT(w->out_ln_b, H, &d->ln2_b);
        const float *qkv_w[3] = {w->q_w, w->k_w, w->v_w};
        if ((st = put_mat(e, &c, qkv_w, 3, H * H, &d->w_qkv, err)) != TBERT_OK) return st;
        if ((st = put_mat(e, &c, &w->attn_out_w, 1, H * H, &d->w_o, err)) != TBERT_OK) return st;
        if ((st = put_mat(e, &c, &w->inter_w, 1, I * H, &d->w_i, err)) != TBERT_OK) return st;
        if ((st = put_mat(e, &c, &w->out_w, 1, H * I, &d->w_o2, err)) != TBERT_OK) return st;
    }
    if (e->has_pooler) {
        PUT(m->pooler_w, H * H, &e->pooler_w);
        PUT(m->pooler_b, H, &e->pooler_b);
    }
#undef PUT
    /* pageable host memory: wait before the caller may free or change the model */
    TBERT_CUDA_CHECK(err, cudaStreamSynchronize(e->compute));
    return TBERT_OK;
}

static tbert_status init_runtime(tbert_cuda_encoder *e, tbert_error *err) {
    TBERT_CUDA_CHECK(err, cudaSetDevice(e->device));
    TBERT_CUDA_CHECK(err, cudaStreamCreateWithFlags(&e->compute, cudaStreamNonBlocking));
    TBERT_CUDA_CHECK(err, cudaStreamCreateWithFlags(&e->copy, cudaStreamNonBlocking));
    for (int s = 0; s < 2; s++) {
        TBERT_CUDA_CHECK(err, cudaEventCreateWithFlags(&e->ev_in[s], cudaEventDisableTiming));
        TBERT_CUDA_CHECK(err, cudaEventCreateWithFlags(&e->ev_comp[s], cudaEventDisableTiming));
        TBERT_CUDA_CHECK(err, cudaEventCreateWithFlags(&e->ev_out[s], cudaEventDisableTiming));
    }
    TBERT_CUBLAS_CHECK(err, cublasCreate(&e->blas));
    TBERT_CUBLAS_CHECK(err, cublasSetStream(e->blas, e->compute));
    return TBERT_OK;
}

tbert_status tbert_cuda_encoder_create(const tbert_model *m, const tbert_encoder_opts *opts, tbert_cuda_encoder **out,
                                       tbert_error *err) {
    *out = NULL;
    int count = tbert_cuda_device_count_impl();
    int index = opts->device.kind == TBERT_DEVICE_CUDA ? opts->device.index : 0;
    if (count <= 0) return tbert_fail(err, TBERT_E_NODEV, "--device cuda: no CUDA device is present");
    if (index < 0 || index >= count)
        return tbert_fail(err, TBERT_E_NODEV, "--device cuda:%d: no such CUDA device (%d present)", index, count);
    const tbert_config *cfg = &m->cfg;
    if (cfg->hidden % cfg->heads || cfg->hidden / cfg->heads > 128)
        return tbert_fail(err, TBERT_E_UNSUPPORTED, "%s: head size %d is not supported by the CUDA attention (max 128)",
                          m->dir ? m->dir : "model", cfg->heads ? cfg->hidden / cfg->heads : 0);
    if (cfg->hidden > 8192) /* the layernorm kernels stage a row in 48 KB of shared memory */
        return tbert_fail(err, TBERT_E_UNSUPPORTED, "%s: hidden size %d is not supported by the CUDA layernorm (max 8192)",
                          m->dir ? m->dir : "model", cfg->hidden);
    tbert_cuda_encoder *e = calloc(1, sizeof *e);
    if (!e) return tbert_fail(err, TBERT_E_NOMEM, "CUDA encoder: out of host memory");
    e->cfg = *cfg;
    e->device = index;
    e->layers = opts->layers > 0 && opts->layers <= cfg->layers ? opts->layers : cfg->layers;
    e->precision = opts->precision;
    e->dt = opts->precision == TBERT_PREC_BF16 ? TBERT_CUDA_BF16 : TBERT_CUDA_F32;
    e->gemm = opts->precision == TBERT_PREC_BF16   ? TBERT_CUDA_GEMM_BF16
              : opts->precision == TBERT_PREC_TF32 ? TBERT_CUDA_GEMM_TF32
                                                   : TBERT_CUDA_GEMM_FP32;
    e->act_bytes = e->dt == TBERT_CUDA_BF16 ? 2 : 4;
    const char *att = getenv("TBERT_CUDA_ATTENTION");
    e->unfused = att && !strcmp(att, "unfused");
    e->fused_v1 = att && !strcmp(att, "fused1");
    e->has_pooler = m->pooler_w && m->pooler_b;
    e->max_chunk_rows = kMaxChunkRows;
    const char *ct = getenv("TBERT_CUDA_CHUNK_TOKENS");
    long ctv = ct ? strtol(ct, NULL, 10) : 0;
    e->chunk_tokens = ctv > 0 && ctv <= kChunkTokens ? (int)ctv : kChunkTokens;
    const char *fo = getenv("TBERT_CUDA_FAKE_OOM_BYTES");
    e->fake_oom_bytes = fo ? (size_t)strtoull(fo, NULL, 10) : 0;
    e->L = calloc((size_t)e->layers, sizeof *e->L);
    tbert_status st = TBERT_OK;
    if (!e->L) {
        st = tbert_fail(err, TBERT_E_NOMEM, "CUDA encoder: out of host memory");
        goto fail;
    }
#define TRY(call)                                                                                                 \
    do {                                                                                                          \
        if ((st = (call)) != TBERT_OK) goto fail;                                                                 \
    } while (0)
    TRY(init_runtime(e, err));
    TRY(upload_weights(e, m, err));
#undef TRY
    *out = e;
    return TBERT_OK;
fail:
    tbert_cuda_encoder_free(e);
    return st;
}

/* ---- workspace ---- */

/* Grows the arena and the pinned slots to fit a chunk of rows x T with dim output floats per row. */
static tbert_status ensure_capacity(tbert_cuda_encoder *e, int rows, int T, size_t dim, tbert_error *err) {
    size_t need = arena_plan(e, rows, T, dim, NULL, NULL);
    if (e->fake_oom_bytes && need > e->fake_oom_bytes)
        return tbert_fail(err, TBERT_E_NOMEM, "CUDA: cudaMalloc of a %zu-byte arena failed: out of memory (simulated: TBERT_CUDA_FAKE_OOM_BYTES)", need);
    if (need > e->arena_bytes) {
        if (e->arena) cudaFree(e->arena);
        e->arena = NULL;
        e->arena_bytes = 0;
        TBERT_CUDA_CHECK(err, cudaMalloc(&e->arena, need));
        e->arena_bytes = need;
    }
    size_t nids = (size_t)rows * T, nout = (size_t)rows * dim;
    if (nids > e->h_ids_n || (size_t)rows > e->h_lens_n || nout > e->h_out_n) {
        size_t ni = nids > e->h_ids_n ? nids : e->h_ids_n, nl = (size_t)rows > e->h_lens_n ? (size_t)rows : e->h_lens_n;
        size_t no = nout > e->h_out_n ? nout : e->h_out_n;
        free_pinned(e);
        for (int s = 0; s < 2; s++) {
            TBERT_CUDA_CHECK(err, cudaMallocHost((void **)&e->h_ids[s], ni * sizeof(int32_t)));
            TBERT_CUDA_CHECK(err, cudaMallocHost((void **)&e->h_lens[s], nl * sizeof(int32_t)));
            TBERT_CUDA_CHECK(err, cudaMallocHost((void **)&e->h_out[s], no * sizeof(float)));
        }
        e->h_ids_n = ni;
        e->h_lens_n = nl;
        e->h_out_n = no;
    }
    return TBERT_OK;
}

/* Chunk rows for length T: at most kChunkTokens tokens, halved further after an out-of-memory. */
static int chunk_rows_for(const tbert_cuda_encoder *e, int B, int T) {
    int r = e->chunk_tokens / T;
    if (r < 1) r = 1;
    if (r > e->max_chunk_rows) r = e->max_chunk_rows;
    return r < B ? r : B;
}

/* Sizes the workspace for chunks of *rows, halving on device out-of-memory (said once). */
static tbert_status fit_workspace(tbert_cuda_encoder *e, int *rows, int T, size_t dim, tbert_error *err) {
    for (;;) {
        tbert_status st = ensure_capacity(e, *rows, T, dim, err);
        if (st != TBERT_E_NOMEM || *rows <= 1) return st;
        cudaGetLastError(); /* clear the allocation error */
        int half = *rows / 2;
        if (!e->oom_said) {
            fprintf(stderr, "tbert: CUDA out of memory for a batch of %d sequences of %d tokens; halving the batch to %d and retrying\n",
                    *rows, T, half);
            e->oom_said = true;
        }
        e->max_chunk_rows = half;
        *rows = half;
    }
}

/* ---- the model on one chunk (compute stream) ---- */

static tbert_status run_layers(tbert_cuda_encoder *e, const arena_layout *a, const int32_t *d_ids, const int32_t *d_lens,
                               int rows, int T, tbert_error *err) {
    const tbert_config *c = &e->cfg;
    const int N = rows * T, H = c->hidden, I = c->intermediate, A = c->heads, d = H / A;
    cudaStream_t s = e->compute;
    TBERT_CUDA_CHECK(err, tbert_cuda_embeddings_ln(a->x, e->dt, d_ids, e->word, e->pos, e->type, e->emb_g, e->emb_b,
                                                   c->layer_norm_eps, rows, T, H, c->vocab_size, s));
    for (int l = 0; l < e->layers; l++) {
        const dev_layer *w = &e->L[l];
        /* the Q|K|V bias is added by the attention kernels as they load qkv (one pass less over [N, 3H]) */
        TBERT_CUDA_CHECK(err, tbert_cuda_linear(e->blas, e->gemm, a->qkv, a->x, w->w_qkv, N, H, 3 * H));
        if (e->unfused)
            TBERT_CUDA_CHECK(err, tbert_cuda_attention_unfused(e->blas, e->gemm, a->ctx, a->qkv, w->b_qkv, d_lens,
                                                               a->att_work, e->dt, rows, T, A, d, s));
        else if (e->fused_v1)
            TBERT_CUDA_CHECK(err, tbert_cuda_attention_fused_v1(a->ctx, a->qkv, w->b_qkv, d_lens, e->dt, rows, T, A, d, s));
        else
            TBERT_CUDA_CHECK(err, tbert_cuda_attention_fused(a->ctx, a->qkv, w->b_qkv, d_lens, e->dt, rows, T, A, d, s));
        /* the qkv buffer is dead after attention: it takes the GEMM outputs that feed each layernorm */
        TBERT_CUDA_CHECK(err, tbert_cuda_linear(e->blas, e->gemm, a->qkv, a->ctx, w->w_o, N, H, H));
        TBERT_CUDA_CHECK(err, tbert_cuda_bias_residual_ln(a->x, a->qkv, w->b_o, a->x, w->ln1_g, w->ln1_b,
                                                          c->layer_norm_eps, e->dt, N, H, s));
        TBERT_CUDA_CHECK(err, tbert_cuda_linear(e->blas, e->gemm, a->inter, a->x, w->w_i, N, H, I));
        TBERT_CUDA_CHECK(err, tbert_cuda_bias_gelu(a->inter, w->b_i, e->dt, N, I, s));
        TBERT_CUDA_CHECK(err, tbert_cuda_linear(e->blas, e->gemm, a->qkv, a->inter, w->w_o2, N, I, H));
        TBERT_CUDA_CHECK(err, tbert_cuda_bias_residual_ln(a->x, a->qkv, w->b_o2, a->x, w->ln2_g, w->ln2_b,
                                                          c->layer_norm_eps, e->dt, N, H, s));
    }
    return TBERT_OK;
}

static tbert_status pool_chunk(tbert_cuda_encoder *e, const arena_layout *a, const int32_t *d_lens, int rows, int T,
                               tbert_pool pool, int out_T, float *d_out, size_t dim, tbert_error *err) {
    const int H = e->cfg.hidden;
    cudaStream_t s = e->compute;
    switch (pool) {
    case TBERT_POOL_MEAN:
        TBERT_CUDA_CHECK(err, tbert_cuda_pool(d_out, dim, a->x, d_lens, TBERT_CUDA_POOL_MEAN, e->dt, rows, T, H, T, s));
        break;
    case TBERT_POOL_CLS:
        TBERT_CUDA_CHECK(err, tbert_cuda_pool(d_out, dim, a->x, d_lens, TBERT_CUDA_POOL_CLS, e->dt, rows, T, H, T, s));
        break;
    case TBERT_POOL_FLATTEN:
        TBERT_CUDA_CHECK(err, tbert_cuda_pool(d_out, dim, a->x, d_lens, TBERT_CUDA_POOL_FLATTEN, e->dt, rows, T, H,
                                              out_T, s));
        break;
    case TBERT_POOL_POOLER:
        /* tanh(pooler_w @ cls + b) in float32 whatever the precision: it is one small product */
        TBERT_CUDA_CHECK(err, tbert_cuda_pool(a->cls, (size_t)H, a->x, d_lens, TBERT_CUDA_POOL_CLS, e->dt, rows, T, H,
                                              T, s));
        TBERT_CUDA_CHECK(err, tbert_cuda_linear(e->blas, TBERT_CUDA_GEMM_FP32, d_out, a->cls, e->pooler_w, rows, H, H));
        TBERT_CUDA_CHECK(err, tbert_cuda_bias_tanh(d_out, e->pooler_b, rows, H, s));
        break;
    default:
        return tbert_fail(err, TBERT_E_ARG, "CUDA encoder: unknown pooling %d", (int)pool);
    }
    return TBERT_OK;
}

/* ---- the pipeline ---- */

static tbert_status check_batch(const tbert_cuda_encoder *e, int B, int T, const int32_t *ids, const int32_t *lengths,
                                tbert_error *err) {
    if (B < 1 || T < 1 || T > e->cfg.max_position)
        return tbert_fail(err, TBERT_E_ARG, "CUDA encoder: bad batch shape B=%d T=%d (1 <= T <= %d)", B, T,
                          e->cfg.max_position);
    if ((size_t)B * (size_t)T > (size_t)0x7fffffff)
        return tbert_fail(err, TBERT_E_ARG, "CUDA encoder: batch of %d x %d tokens is too large", B, T);
    for (int b = 0; b < B; b++) {
        if (lengths[b] < 1 || lengths[b] > T)
            return tbert_fail(err, TBERT_E_ARG, "CUDA encoder: sequence %d has length %d outside [1, %d]", b, lengths[b], T);
        const int32_t *r = ids + (size_t)b * T;
        for (int t = 0; t < lengths[b]; t++)
            if (r[t] < 0 || r[t] >= e->cfg.vocab_size)
                return tbert_fail(err, TBERT_E_ARG, "CUDA encoder: token id %d (sequence %d, position %d) is outside the vocabulary of %d",
                                  r[t], b, t, e->cfg.vocab_size);
    }
    return TBERT_OK;
}

typedef struct {
    int row0, rows; /* the chunk a slot holds */
} slot_state;

/* Copies chunk k's ids and lengths into pinned slot s and queues their upload on the copy stream. */
static tbert_status stage_chunk(tbert_cuda_encoder *e, const arena_layout *a, int s, int row0, int rows, int T,
                                const int32_t *ids, const int32_t *lengths, tbert_error *err) {
    TBERT_CUDA_CHECK(err, cudaEventSynchronize(e->ev_in[s])); /* the slot's previous upload has left */
    memcpy(e->h_ids[s], ids + (size_t)row0 * T, (size_t)rows * T * sizeof(int32_t));
    memcpy(e->h_lens[s], lengths + row0, (size_t)rows * sizeof(int32_t));
    /* the compute stream must be done reading this slot's device ids (chunk k-2) */
    TBERT_CUDA_CHECK(err, cudaStreamWaitEvent(e->copy, e->ev_comp[s], 0));
    TBERT_CUDA_CHECK(err, cudaMemcpyAsync(a->ids[s], e->h_ids[s], (size_t)rows * T * sizeof(int32_t),
                                          cudaMemcpyHostToDevice, e->copy));
    TBERT_CUDA_CHECK(err, cudaMemcpyAsync(a->lens[s], e->h_lens[s], (size_t)rows * sizeof(int32_t),
                                          cudaMemcpyHostToDevice, e->copy));
    TBERT_CUDA_CHECK(err, cudaEventRecord(e->ev_in[s], e->copy));
    return TBERT_OK;
}

/* Waits for slot s's download and copies its rows into out. */
static tbert_status drain_slot(tbert_cuda_encoder *e, int s, const slot_state *st, size_t dim, float *out,
                               tbert_error *err) {
    if (st->rows <= 0) return TBERT_OK;
    TBERT_CUDA_CHECK(err, cudaEventSynchronize(e->ev_out[s]));
    memcpy(out + (size_t)st->row0 * dim, e->h_out[s], (size_t)st->rows * dim * sizeof(float));
    return TBERT_OK;
}

static tbert_status run_pipeline(tbert_cuda_encoder *e, int B, int T, const int32_t *ids, const int32_t *lengths,
                                 tbert_pool pool, int out_T, size_t dim, float *out, tbert_error *err) {
    int chunk = chunk_rows_for(e, B, T);
    tbert_status st = fit_workspace(e, &chunk, T, dim, err);
    if (st != TBERT_OK) return st;
    arena_layout a;
    arena_plan(e, chunk, T, dim, (char *)e->arena, &a);
    const int nchunks = (B + chunk - 1) / chunk;
    slot_state slot[2] = {{0, 0}, {0, 0}};
    if ((st = stage_chunk(e, &a, 0, 0, chunk < B ? chunk : B, T, ids, lengths, err)) != TBERT_OK) return st;
    for (int k = 0; k < nchunks; k++) {
        const int s = k & 1, row0 = k * chunk, rows = B - row0 < chunk ? B - row0 : chunk;
        TBERT_CUDA_CHECK(err, cudaStreamWaitEvent(e->compute, e->ev_in[s], 0));
        TBERT_CUDA_CHECK(err, cudaStreamWaitEvent(e->compute, e->ev_out[s], 0)); /* chunk k-2's download is done */
        if ((st = run_layers(e, &a, a.ids[s], a.lens[s], rows, T, err)) != TBERT_OK) return st;
        if ((st = pool_chunk(e, &a, a.lens[s], rows, T, pool, out_T, a.out[s], dim, err)) != TBERT_OK) return st;
        TBERT_CUDA_CHECK(err, cudaEventRecord(e->ev_comp[s], e->compute));
        /* chunk k is queued: the host prepares chunk k+1 while the device works */
        if (k + 1 < nchunks) {
            const int r1 = row0 + chunk, n1 = B - r1 < chunk ? B - r1 : chunk;
            if ((st = stage_chunk(e, &a, s ^ 1, r1, n1, T, ids, lengths, err)) != TBERT_OK) return st;
        }
        /* the pinned slot still holds chunk k-2's features: hand them over before they are overwritten */
        if ((st = drain_slot(e, s, &slot[s], dim, out, err)) != TBERT_OK) return st;
        TBERT_CUDA_CHECK(err, cudaStreamWaitEvent(e->copy, e->ev_comp[s], 0));
        TBERT_CUDA_CHECK(err, cudaMemcpyAsync(e->h_out[s], a.out[s], (size_t)rows * dim * sizeof(float),
                                              cudaMemcpyDeviceToHost, e->copy));
        TBERT_CUDA_CHECK(err, cudaEventRecord(e->ev_out[s], e->copy));
        slot[s].row0 = row0;
        slot[s].rows = rows;
    }
    /* the last two chunks, in input order */
    for (int k = nchunks - 2; k < nchunks; k++) {
        if (k < 0) continue;
        if ((st = drain_slot(e, k & 1, &slot[k & 1], dim, out, err)) != TBERT_OK) return st;
    }
    TBERT_CUDA_CHECK(err, cudaStreamSynchronize(e->compute));
    TBERT_CUDA_CHECK(err, cudaGetLastError());
    return TBERT_OK;
}

tbert_status tbert_cuda_encoder_forward_pool(tbert_cuda_encoder *e, int B, int T, const int32_t *ids,
                                             const int32_t *lengths, tbert_pool pool, int out_T, float *out,
                                             tbert_error *err) {
    tbert_status st = check_batch(e, B, T, ids, lengths, err);
    if (st != TBERT_OK) return st;
    if (pool == TBERT_POOL_FLATTEN && out_T < T)
        return tbert_fail(err, TBERT_E_ARG, "flatten pooling: output length %d < batch length %d", out_T, T);
    if (pool == TBERT_POOL_POOLER && !e->has_pooler)
        return tbert_fail(err, TBERT_E_ARG, "--pool pooler needs a pooler, and this checkpoint has none");
    if ((unsigned)pool >= TBERT_POOL_COUNT) return tbert_fail(err, TBERT_E_ARG, "unknown pooling %d", (int)pool);
    TBERT_CUDA_CHECK(err, cudaSetDevice(e->device));
    size_t dim = pool == TBERT_POOL_FLATTEN ? (size_t)out_T * e->cfg.hidden : (size_t)e->cfg.hidden;
    return run_pipeline(e, B, T, ids, lengths, pool, out_T, dim, out, err);
}

tbert_status tbert_cuda_encoder_forward(tbert_cuda_encoder *e, int B, int T, const int32_t *ids,
                                        const int32_t *lengths, float *hidden, tbert_error *err) {
    /* the hidden state with zeroed padded rows is exactly flatten pooling with out_T = T */
    return tbert_cuda_encoder_forward_pool(e, B, T, ids, lengths, TBERT_POOL_FLATTEN, T, hidden, err);
}
