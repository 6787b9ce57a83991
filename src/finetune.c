/* `tbert train --finetune K` (issue 15): the top K encoder layers train together with the head.
 *
 * Data (tbert_ft_data_build): every document's windows (the recipe's tokenization, as the featurizer makes
 * them) and, when layers below the cut stay frozen, their output: the frozen layers 0..first_layer-1 run once per
 * window (the encoder with opts.layers = first_layer), kept packed (real tokens only) as bf16 in memory and in
 * the row store under a key with the layer cut, max_len, windows, dtype, precision and model, so a second run (or
 * the folds) reuses it. first_layer == 0 (K = all): the token ids are kept instead.
 *
 * The loop (tbert_fit_finetune): per step a minibatch of documents -> the trainable stack (include/tbert/
 * finetune_stack.h, training: dropout) -> the dense block of each row; the rows' sparse blocks as the head path
 * has them -> head forward, loss, head backward and d loss / d dense block (tbert_head_backward_input_rows) ->
 * stack backward -> one AdamW step (include/tbert/optim.h) over head and encoder tensors with their own learning
 * rates, linear warm-up over fo->warmup_fraction of the steps then linear decay, clipping by global norm.
 * Validation each epoch recomputes the dense blocks with the current layers (no dropout); the best epoch (validation
 * loss, as the head path) keeps its head and encoder tensors; the threshold and the final metrics are the head
 * path's (tbert_fit_finish) on rows whose dense block the best encoder wrote.
 * Cross-fitting (hp->cv_folds >= 2): each fold fine-tunes from the base model and validates on its held-out fold;
 * the threshold is chosen on the out-of-fold scores; the kept model is one final fine-tune on all the training
 * examples for the folds' median best epoch count (a fine-tuned encoder cannot be averaged the way the heads'
 * logits are).
 * Checkpoints (docs/architecture.md, "Fine-tuning"): best/last.safetensors hold the head, the trained encoder tensors as
 * "finetune.<transformers name>" (float32) and, in last, the optimiser state (its step also numbers the dropout
 * masks) and the shuffle RNG, so --resume continues bit for bit. */
#include <cblas.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tbert/checkpoint.h"
#include "tbert/fileio.h"
#include "tbert/finetune_device.h"
#include "tbert/finetune_stack.h"
#include "tbert/optim.h"
#include "tbert/params.h"
#include "tbert/safetensors.h"
#include "tbert/store.h"
#include "tbert/tokenizer.h"
#include "par_for.h"
#include "train_internal.h"

enum { FT_ENCODE_WINDOWS = 32, FT_EVAL_DOCS = 64 };

struct tbert_ft_data {
    int n_doc, H, first_layer;
    int32_t *doc_win; /* n_doc + 1: document d's windows are doc_win[d] .. doc_win[d+1]-1 */
    int64_t *win_tok; /* n_win + 1: window w's tokens are win_tok[w] .. win_tok[w+1]-1 */
    int32_t *ids;     /* every window's token ids, packed */
    uint16_t *hidden; /* first_layer > 0: [tokens, H] bf16, the input of layer first_layer */
};

void tbert_ft_data_free(tbert_ft_data *fd) {
    if (!fd) return;
    free(fd->doc_win);
    free(fd->win_tok);
    free(fd->ids);
    free(fd->hidden);
    free(fd);
}

static tbert_status lower_key(const tbert_recipe *r, const tbert_model *m, int first_layer, const tbert_ft_opts *fo, char key[65],
                              tbert_error *err) {
    char layers[16], max_len[16], windows[16];
    snprintf(layers, sizeof layers, "%d", first_layer);
    snprintf(max_len, sizeof max_len, "%d", r->max_len);
    snprintf(windows, sizeof windows, "%d", r->windows);
    tbert_store_field f[] = {{"kind", "finetune-lower-layers"}, {"model", m->weights_sha256}, {"vocab", r->vocab_hash},
                             {"layers", layers},  {"max_len", max_len}, {"windows", windows}, {"dtype", "bf16"},
                             {"precision", tbert_precision_name(fo->enc.precision)}};
    return tbert_store_key((int)(sizeof f / sizeof f[0]), f, key, err);
}

/* runs the frozen lower layers on the nw windows wins[] (at most FT_ENCODE_WINDOWS, one padded batch) into fd->hidden */
static tbert_status encode_windows(tbert_encoder *enc, tbert_ft_data *fd, const int *wins, int nw, int32_t *ids, int32_t *lens,
                                   float *out, tbert_error *err) {
    int T = 1;
    for (int i = 0; i < nw; i++) {
        int64_t l = fd->win_tok[wins[i] + 1] - fd->win_tok[wins[i]];
        if (l > T) T = (int)l;
    }
    for (int i = 0; i < nw; i++) {
        int64_t a = fd->win_tok[wins[i]];
        lens[i] = (int32_t)(fd->win_tok[wins[i] + 1] - a);
        memcpy(ids + (size_t)i * T, fd->ids + a, (size_t)lens[i] * sizeof(int32_t));
        for (int t = lens[i]; t < T; t++) ids[(size_t)i * T + t] = 0;
    }
    tbert_status st = tbert_encoder_forward(enc, nw, T, ids, lens, out, err);
    if (st) return st;
    const size_t H = (size_t)fd->H;
    for (int i = 0; i < nw; i++) {
        uint16_t *dst = fd->hidden + (size_t)fd->win_tok[wins[i]] * H;
        const float *src = out + (size_t)i * T * H;
        for (size_t k = 0; k < (size_t)lens[i] * H; k++) dst[k] = tbert_f32_to_bf16(src[k]);
    }
    return TBERT_OK;
}

tbert_status tbert_ft_data_build(const tbert_recipe *r, const tbert_model *m, const tbert_featurizer *fz, int n,
                                 const tbert_doc *docs, const tbert_ft_opts *fo, tbert_store *store, tbert_ft_data **out,
                                 int *from_store, tbert_error *err) {
    *out = NULL;
    if (from_store) *from_store = 0;
    tbert_ft_data *fd = calloc(1, sizeof *fd);
    if (!fd) return tbert_fail(err, TBERT_E_NOMEM, "finetune: out of memory");
    fd->n_doc = n;
    fd->H = m->cfg.hidden;
    fd->first_layer = r->layers - fo->k;
    const int W = r->windows;
    tbert_i32vec tok = {0}, win = {0}, all = {0};
    size_t *starts = tbert_malloc_array((size_t)W, sizeof *starts);
    int *wl = tbert_malloc_array((size_t)W, sizeof *wl);
    int64_t *wt = NULL;
    size_t cap_w = 0, n_win = 0;
    fd->doc_win = tbert_malloc_array((size_t)n + 1, sizeof *fd->doc_win);
    tbert_status st = starts && wl && fd->doc_win ? TBERT_OK : tbert_fail(err, TBERT_E_NOMEM, "finetune: out of memory");
    if (!st) fd->doc_win[0] = 0;
    for (int i = 0; i < n && !st; i++) {
        int nw = 0;
        st = tbert_featurizer_tokenize(fz, &docs[i], &tok, err);
        if (!st) st = tbert_make_windows(m->vocab, tok.v, tok.n, r->max_len, W, &win, starts, wl, &nw, err);
        if (st) break;
        if (n_win + (size_t)nw + 1 > cap_w) {
            size_t c = (n_win + (size_t)nw + 1) * 2;
            int64_t *p = tbert_realloc_array(wt, c, sizeof *wt);
            if (!p) {
                st = tbert_fail(err, TBERT_E_NOMEM, "finetune: out of memory for %zu windows", c);
                break;
            }
            wt = p;
            cap_w = c;
        }
        if (n_win == 0) wt[0] = 0;
        for (int w = 0; w < nw && !st; w++) {
            if (!tbert_i32vec_reserve(&all, all.n + (size_t)wl[w])) st = tbert_fail(err, TBERT_E_NOMEM, "finetune: out of memory");
            else {
                memcpy(all.v + all.n, win.v + starts[w], (size_t)wl[w] * sizeof(int32_t));
                all.n += (size_t)wl[w];
                wt[++n_win] = (int64_t)all.n;
            }
        }
        fd->doc_win[i + 1] = (int32_t)n_win;
    }
    tbert_i32vec_free(&tok);
    tbert_i32vec_free(&win);
    free(starts);
    free(wl);
    fd->win_tok = wt;
    fd->ids = all.v;
    if (st) {
        tbert_ft_data_free(fd);
        return st;
    }
    if (fd->first_layer == 0) {
        *out = fd;
        return TBERT_OK;
    }
    /* the frozen lower layers, once per window (store first) */
    const size_t H = (size_t)fd->H;
    fd->hidden = tbert_malloc_array(all.n ? all.n : 1, H * sizeof(uint16_t));
    tbert_encoder_opts eo = fo->enc;
    eo.layers = fd->first_layer;
    eo.quiet = true;
    tbert_encoder *enc = NULL;
    char key[65];
    int *pend = tbert_malloc_array((size_t)n_win + 1, sizeof(int));
    int *pend_doc = tbert_malloc_array((size_t)n + 1, sizeof(int));
    int32_t *bids = NULL, *blens = tbert_malloc_array(FT_ENCODE_WINDOWS, sizeof(int32_t));
    float *bout = NULL;
    if (!fd->hidden || !pend || !pend_doc || !blens) st = tbert_fail(err, TBERT_E_NOMEM, "finetune: out of memory for the lower layers' cache");
    if (!st && store) st = lower_key(r, m, fd->first_layer, fo, key, err);
    if (!st) st = tbert_encoder_create(m, &eo, &enc, err);
    if (!st) {
        bids = tbert_malloc_array((size_t)FT_ENCODE_WINDOWS * r->max_len, sizeof(int32_t));
        bout = tbert_malloc_array((size_t)FT_ENCODE_WINDOWS * r->max_len, H * sizeof(float));
        if (!bids || !bout) st = tbert_fail(err, TBERT_E_NOMEM, "finetune: out of memory");
    }
    int np = 0, npd = 0, hits = 0;
    char content[65];
    double t0 = tbert_now();
    for (int i = 0; i < n && !st; i++) {
        uint16_t *dst = fd->hidden + (size_t)wt[fd->doc_win[i]] * H;
        size_t bytes = (size_t)(wt[fd->doc_win[i + 1]] - wt[fd->doc_win[i]]) * H * sizeof(uint16_t);
        bool found = false;
        if (store) {
            tbert_store_content_hash(docs[i].text ? docs[i].text : "", docs[i].text ? docs[i].len : 0, content);
            st = tbert_store_get(store, key, content, dst, bytes, &found, err);
            if (st) break;
        }
        hits += found;
        if (!found) {
            pend_doc[npd++] = i;
            for (int w = fd->doc_win[i]; w < fd->doc_win[i + 1]; w++) pend[np++] = w;
        }
    }
    for (int i = 0; i < np && !st; i += FT_ENCODE_WINDOWS) {
        int b = np - i < FT_ENCODE_WINDOWS ? np - i : FT_ENCODE_WINDOWS;
        st = encode_windows(enc, fd, pend + i, b, bids, blens, bout, err);
    }
    bool warned = false;
    for (int j = 0; j < npd && !st && store; j++) {
        int i = pend_doc[j];
        uint16_t *src = fd->hidden + (size_t)wt[fd->doc_win[i]] * H;
        size_t bytes = (size_t)(wt[fd->doc_win[i + 1]] - wt[fd->doc_win[i]]) * H * sizeof(uint16_t);
        tbert_store_content_hash(docs[i].text ? docs[i].text : "", docs[i].text ? docs[i].len : 0, content);
        tbert_error werr; /* a store that cannot be written costs time, not the run */
        if (tbert_store_put(store, key, content, src, bytes, &werr) && !warned) {
            fprintf(stderr, "tbert: warning: lower-layer cache not stored: %s\n", werr.msg);
            warned = true;
        }
    }
    if (!st && !fo->quiet)
        fprintf(stderr, "tbert: fine-tuning cache: layers 0..%d of %zu windows (%zu tokens, %.1f MB bf16), %d documents from the store, "
                        "%d encoded (%.2f s)\n",
                fd->first_layer - 1, n_win, all.n, (double)all.n * H * 2 / 1e6, hits, npd, tbert_now() - t0);
    if (from_store) *from_store = hits;
    tbert_encoder_free(enc);
    free(pend);
    free(pend_doc);
    free(bids);
    free(blens);
    free(bout);
    if (st) {
        tbert_ft_data_free(fd);
        return st;
    }
    *out = fd;
    return TBERT_OK;
}

/* ---- the training state ---- */
typedef struct {
    int32_t *doc_off, *off, *ids;
    int32_t *src; /* per window of the batch: its window in the data */
    float *hidden;
    size_t cap_doc, cap_win, cap_src, cap_tok;
} batch_buf;

static void batch_buf_free(batch_buf *b) {
    free(b->doc_off);
    free(b->off);
    free(b->src);
    free(b->ids);
    free(b->hidden);
}

static bool grow(void **p, size_t *cap, size_t need, size_t size) {
    if (need <= *cap) return true;
    size_t c = need * 2;
    void *q = tbert_realloc_array(*p, c, size);
    if (!q) return false;
    *p = q;
    *cap = c;
    return true;
}

/* bf16 -> float32 (tbert_bf16_to_f32's bits: the 16 bits on top), a loop the compiler vectorises */
static void bf16_to_f32_n(const uint16_t *src, size_t n, float *dst) {
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)src[i] << 16;
        memcpy(dst + i, &u, sizeof u);
    }
}

/* the batch's windows' rows from the data: one window per item (make_batch's copy, shared among threads) */
typedef struct {
    const tbert_ft_data *fd;
    batch_buf *bb;
} batch_copy;

static void batch_copy_item(void *ctx, int w, int worker) {
    (void)worker;
    const batch_copy *j = ctx;
    const tbert_ft_data *fd = j->fd;
    int64_t a = fd->win_tok[j->bb->src[w]];
    size_t t = (size_t)j->bb->off[w], len = (size_t)(j->bb->off[w + 1] - j->bb->off[w]), H = (size_t)fd->H;
    if (fd->first_layer == 0) memcpy(j->bb->ids + t, fd->ids + a, len * sizeof(int32_t));
    else bf16_to_f32_n(fd->hidden + (size_t)a * H, len * H, j->bb->hidden + t * H);
}

/* the stack's input for documents idx[0..n); the rows copied (and converted from bf16) on `threads` threads */
static tbert_status make_batch(const tbert_ft_data *fd, const int *idx, int n, int threads, batch_buf *bb,
                               tbert_ft_batch *b, tbert_error *err) {
    size_t nw = 0, nt = 0;
    for (int i = 0; i < n; i++) {
        int d = idx[i];
        nw += (size_t)(fd->doc_win[d + 1] - fd->doc_win[d]);
        nt += (size_t)(fd->win_tok[fd->doc_win[d + 1]] - fd->win_tok[fd->doc_win[d]]);
    }
    size_t H = (size_t)fd->H, cap_doc = bb->cap_doc, cap_win = bb->cap_win, cap_src = bb->cap_src;
    bool ok = grow((void **)&bb->doc_off, &cap_doc, (size_t)n + 1, sizeof(int32_t)) &&
              grow((void **)&bb->off, &cap_win, nw + 1, sizeof(int32_t)) &&
              grow((void **)&bb->src, &cap_src, nw + 1, sizeof(int32_t));
    bb->cap_doc = cap_doc;
    bb->cap_win = cap_win;
    bb->cap_src = cap_src;
    if (ok && fd->first_layer == 0) ok = grow((void **)&bb->ids, &bb->cap_tok, nt, sizeof(int32_t));
    if (ok && fd->first_layer > 0) ok = grow((void **)&bb->hidden, &bb->cap_tok, nt, H * sizeof(float));
    if (!ok) return tbert_fail(err, TBERT_E_NOMEM, "finetune: out of memory for a batch of %zu tokens", nt);
    if (nt > INT32_MAX) return tbert_fail(err, TBERT_E_ARG, "finetune: a batch of %zu tokens is too large", nt);
    size_t w = 0, t = 0;
    bb->doc_off[0] = 0;
    bb->off[0] = 0;
    for (int i = 0; i < n; i++) {
        int d = idx[i];
        for (int k = fd->doc_win[d]; k < fd->doc_win[d + 1]; k++) {
            t += (size_t)(fd->win_tok[k + 1] - fd->win_tok[k]);
            bb->src[w] = k;
            bb->off[++w] = (int32_t)t;
        }
        bb->doc_off[i + 1] = (int32_t)w;
    }
    batch_copy j = {fd, bb};
    tbert_par_for(threads, (int)w, batch_copy_item, &j);
    b->n_doc = n;
    b->doc_off = bb->doc_off;
    b->n_win = (int)w;
    b->off = bb->off;
    b->hidden = fd->first_layer > 0 ? bb->hidden : NULL;
    b->ids = fd->first_layer == 0 ? bb->ids : NULL;
    return TBERT_OK;
}

typedef struct {
    const tbert_hparams *hp;
    const tbert_ft_opts *fo;
    const tbert_model *m;
    const tbert_ft_data *fd;
    const tbert_recipe *recipe;
    int threads; /* the stack's: the step's serial remainder (batch copy, zeroing, optimiser) runs on them too */
} ft_ctx;

typedef struct {
    tbert_head *h;
    float *hgrad;
    tbert_ft_dev *dev;     /* the stack on the CPU or a CUDA device (src/finetune_device.c) */
    tbert_ft_stack *stack; /* dev's CPU stack: the params list */
    tbert_params *enc;     /* the stack's (borrowed) */
    tbert_params all;      /* head entries then the stack's */
    tbert_optim opt;
    bool opt_ready;
    float *best_enc;       /* the best epoch's encoder tensors, in list order */
    size_t enc_numel;
    tbert_rows X;          /* every row of d->X, the dense block rewritten by the trained layers */
    batch_buf bb;
    float *dense, *dx;     /* batch x dense_dim */
    size_t dd;
} ft_state;

static void state_free(ft_state *s) {
    tbert_head_free(s->h);
    free(s->hgrad);
    tbert_params_free(&s->all);
    if (s->opt_ready) tbert_optim_free(&s->opt);
    tbert_ft_dev_free(s->dev);
    free(s->best_enc);
    tbert_rows_free(&s->X);
    batch_buf_free(&s->bb);
    free(s->dense);
    free(s->dx);
    memset(s, 0, sizeof *s);
}

static tbert_status state_init(const ft_ctx *c, const tbert_fit_data *d, const tbert_hparams *hp, ft_state *s, tbert_error *err) {
    memset(s, 0, sizeof *s);
    const tbert_recipe *r = c->recipe;
    tbert_head_config cfg = {.in_dim = (int)d->dim, .hidden = hp->hidden, .n_classes = d->n_classes,
                             .binary = d->positive >= 0 && d->n_classes == 2, .positive = d->positive >= 0 ? d->positive : 0,
                             .dropout = hp->dropout};
    tbert_status st = tbert_head_create(&cfg, &s->h, err);
    if (st) return st;
    tbert_head_init(s->h, hp->seed);
    tbert_ft_stack_cfg sc = {.layers = r->layers, .k = c->fo->k, .train_embeddings = c->fo->embeddings, .pool = r->pool,
                             .max_len = r->max_len, .normalize = r->normalize, .hidden_dropout = c->fo->hidden_dropout,
                             .attn_dropout = c->fo->attn_dropout, .dropout_seed = hp->seed ^ 0x64726f706f7574ull, /* "dropout" */
                             .threads = c->fo->enc.threads, .bf16 = c->fo->enc.precision == TBERT_PREC_BF16 && hp->cuda_device < 0};
    st = tbert_ft_dev_create(c->m, &sc, hp->cuda_device, c->fo->enc.precision, &s->dev, err);
    if (st) return st;
    s->stack = tbert_ft_dev_stack(s->dev);
    s->dd = tbert_ft_stack_dense_dim(s->stack);
    if (s->dd != d->X->dense_dim)
        return tbert_fail(err, TBERT_E_ARG, "finetune: the stack gives %zu dense columns, the rows have %zu", s->dd, d->X->dense_dim);
    s->hgrad = tbert_calloc_array(s->h->n_params, sizeof(float));
    if (!s->hgrad) return tbert_fail(err, TBERT_E_NOMEM, "finetune: out of memory");
    for (int t = 0; t < s->h->n_tensors && !st; t++) {
        const tbert_head_tensor *ht = &s->h->tensors[t];
        char name[TBERT_PARAM_NAME_MAX];
        snprintf(name, sizeof name, "head.%s", ht->name);
        st = tbert_params_add(&s->all, name, s->h->params + ht->offset, s->hgrad + ht->offset, ht->ndim, ht->shape, TBERT_PGROUP_HEAD,
                              ht->ndim == 2, err);
    }
    s->enc = tbert_ft_stack_params(s->stack);
    if (!st) st = tbert_params_append(&s->all, s->enc, err);
    if (st) return st;
    s->enc_numel = tbert_params_numel(s->enc);
    s->best_enc = tbert_malloc_array(s->enc_numel ? s->enc_numel : 1, sizeof(float));
    int cap = hp->batch > FT_EVAL_DOCS ? hp->batch : FT_EVAL_DOCS;
    s->dense = tbert_malloc_array((size_t)cap, (s->dd ? s->dd : 1) * sizeof(float));
    s->dx = tbert_malloc_array((size_t)cap, (s->dd ? s->dd : 1) * sizeof(float));
    if (!s->best_enc || !s->dense || !s->dx) return tbert_fail(err, TBERT_E_NOMEM, "finetune: out of memory");
    size_t bw = d->X->sparse_dim;
    st = tbert_rows_init(&s->X, d->X->dense_dim, 1, &bw, err);
    if (st) return st;
    int *all = tbert_malloc_array((size_t)d->X->n + 1, sizeof(int));
    if (!all) return tbert_fail(err, TBERT_E_NOMEM, "finetune: out of memory");
    for (int i = 0; i < d->X->n; i++) all[i] = i;
    st = tbert_rows_gather(&s->X, d->X, all, d->X->n, err);
    free(all);
    return st;
}

static void enc_copy(tbert_params *enc, float *buf, bool save) {
    size_t o = 0;
    for (int i = 0; i < enc->n; i++) {
        tbert_param *p = &enc->p[i];
        if (save) memcpy(buf + o, p->w, p->n * sizeof(float));
        else memcpy(p->w, buf + o, p->n * sizeof(float));
        o += p->n;
    }
}

/* the dense blocks of rows idx[0..n) of s->X by the stack as it is now (no dropout) */
static tbert_status refresh_dense(const ft_ctx *c, ft_state *s, const int *idx, int n, tbert_error *err) {
    tbert_status st = TBERT_OK;
    for (int i = 0; i < n && !st; i += FT_EVAL_DOCS) {
        int m = n - i < FT_EVAL_DOCS ? n - i : FT_EVAL_DOCS;
        tbert_ft_batch b;
        st = make_batch(c->fd, idx + i, m, c->threads, &s->bb, &b, err);
        if (!st) st = tbert_ft_dev_forward(s->dev, &b, false, 0, s->dense, err);
        for (int j = 0; j < m && !st; j++) memcpy(s->X.dense + (size_t)idx[i + j] * s->dd, s->dense + (size_t)j * s->dd, s->dd * sizeof(float));
    }
    return st;
}

/* ---- checkpoints ---- */
typedef struct {
    tbert_params *enc;
    const float *values; /* NULL: the entries' own values */
    const tbert_optim *opt; /* last.safetensors only */
    const tbert_params *all;
} extra_ctx;

static tbert_status add_extra(void *vctx, tbert_st_writer *w, tbert_error *err) {
    extra_ctx *x = vctx;
    tbert_status st = TBERT_OK;
    size_t o = 0;
    for (int i = 0; i < x->enc->n && !st; i++) {
        const tbert_param *p = &x->enc->p[i];
        char name[TBERT_PARAM_NAME_MAX + 16];
        snprintf(name, sizeof name, "finetune.%s", p->name);
        st = tbert_st_writer_add(w, name, TBERT_DT_F32, p->ndim, p->shape, x->values ? x->values + o : p->w, err);
        o += p->n;
    }
    if (!st && x->opt) st = tbert_optim_save(x->opt, x->all, w, err);
    return st;
}

static tbert_status save_ckpt(const tbert_fit_ckpt *ck, const char *file, const tbert_head *h, ft_state *s, const float *enc_values,
                              bool with_state, const tbert_rng *rng, float thr, int epoch, int best_epoch, const char *tj,
                              const char *mj, tbert_error *err) {
    char path[4200];
    tbert_ckpt_meta meta;
    tbert_fit_ckpt_meta(ck, file, thr, epoch, best_epoch, tj, mj, path, sizeof path, &meta);
    extra_ctx x = {s->enc, enc_values, with_state ? &s->opt : NULL, &s->all};
    return tbert_checkpoint_save_ex(path, h, &meta, NULL, with_state ? rng : NULL, add_extra, &x, err);
}

/* the finetune.* tensors of an open checkpoint into buf (list order), shapes checked */
static tbert_status read_enc(const tbert_safetensors *f, const char *path, const tbert_params *enc, float *buf, tbert_error *err) {
    size_t o = 0;
    for (int i = 0; i < enc->n; i++) {
        const tbert_param *p = &enc->p[i];
        char name[TBERT_PARAM_NAME_MAX + 16];
        snprintf(name, sizeof name, "finetune.%s", p->name);
        const tbert_st_tensor *t = tbert_st_find(f, name);
        if (!t) return tbert_fail(err, TBERT_E_FORMAT, "%s: tensor '%s' is missing", path, name);
        bool ok = t->dtype == TBERT_DT_F32 && t->ndim == p->ndim;
        for (int k = 0; ok && k < p->ndim; k++) ok = t->shape[k] == p->shape[k];
        if (!ok) return tbert_fail(err, TBERT_E_FORMAT, "%s: tensor '%s' has another shape than the stack's", path, name);
        tbert_status st = tbert_st_to_f32(f, t, buf + o, err);
        if (st) return st;
        o += p->n;
    }
    return TBERT_OK;
}

/* --resume: last.safetensors into the state (head, encoder, optimiser, RNG, history), best.safetensors into r->best
 * and s->best_enc. *start = epochs done (0: nothing to resume). */
static tbert_status resume(const tbert_fit_ckpt *ck, int epochs, ft_state *s, tbert_rng *rng, tbert_fit_result *r, int *start,
                           double *best_score, tbert_error *err) {
    *start = 0;
    char path[4200];
    snprintf(path, sizeof path, "%s/last.safetensors", ck->out_dir);
    if (!tbert_is_regular_file(path)) {
        fprintf(stderr, "tbert: nothing to resume in %s, starting fresh\n", ck->out_dir);
        return TBERT_OK;
    }
    tbert_head *lh = NULL;
    tbert_ckpt_meta meta;
    tbert_safetensors *f = NULL;
    tbert_status st = tbert_checkpoint_load(path, &lh, &meta, NULL, rng, err);
    if (st) return st;
    cJSON *tj = cJSON_Parse(meta.train_json), *set = cJSON_Parse(ck->settings_json ? ck->settings_json : "{}");
    bool ok = lh->n_params == s->h->n_params && lh->cfg.hidden == s->h->cfg.hidden && meta.epoch <= epochs && tj && set &&
              cJSON_Compare(cJSON_GetObjectItemCaseSensitive(tj, "settings"), set, true) &&
              tbert_fit_restore_history(tj, r, meta.epoch);
    const cJSON *bs = cJSON_GetObjectItemCaseSensitive(tj, "best_score");
    ok = ok && cJSON_IsNumber(bs);
    if (ok) *best_score = bs->valuedouble;
    cJSON_Delete(tj);
    cJSON_Delete(set);
    if (!ok)
        st = tbert_fail(err, TBERT_E_MISMATCH, "%s: was written by a run with other data, recipe or settings; cannot --resume (use another --out)",
                        path);
    if (!st) {
        memcpy(s->h->params, lh->params, s->h->n_params * sizeof(float));
        *start = meta.epoch;
        r->best_epoch = meta.best_epoch;
        st = tbert_st_open(path, &f, err);
    }
    float *cur = NULL;
    if (!st) {
        cur = tbert_malloc_array(s->enc_numel ? s->enc_numel : 1, sizeof(float));
        st = cur ? read_enc(f, path, s->enc, cur, err) : tbert_fail(err, TBERT_E_NOMEM, "finetune: out of memory");
    }
    if (!st) {
        enc_copy(s->enc, cur, false);
        st = tbert_optim_restore(&s->opt, &s->all, f, err);
    }
    free(cur);
    tbert_st_close(f);
    f = NULL;
    tbert_head_free(lh);
    lh = NULL;
    tbert_ckpt_meta_free(&meta);
    if (st) return st;
    snprintf(path, sizeof path, "%s/best.safetensors", ck->out_dir);
    st = tbert_checkpoint_load(path, &lh, &meta, NULL, NULL, err);
    if (!st) {
        memcpy(r->best->params, lh->params, s->h->n_params * sizeof(float));
        st = tbert_st_open(path, &f, err);
    }
    if (!st) st = read_enc(f, path, s->enc, s->best_enc, err);
    tbert_st_close(f);
    tbert_head_free(lh);
    tbert_ckpt_meta_free(&meta);
    if (!st) fprintf(stderr, "tbert: resuming %s after epoch %d of %d\n", ck->out_dir, *start, epochs);
    return st;
}

/* epochs of fine-tuning on d's training rows; the best epoch by validation loss (or, with keep_last / no
 * validation, the last / the lowest training loss) in r->best and s->best_enc. Checkpoints each epoch when ck. */
static tbert_status run_epochs(const ft_ctx *c, const tbert_fit_data *d, const tbert_hparams *hp, int epochs, const tbert_fit_ckpt *ck,
                               ft_state *s, tbert_fit_result *r, tbert_error *err) {
    const tbert_head_config *cfg = &s->h->cfg;
    int O = tbert_head_out_dim(cfg);
    long per_epoch = (d->n_train + hp->batch - 1) / hp->batch;
    tbert_optim_cfg oc = tbert_optim_default_cfg();
    oc.lr[TBERT_PGROUP_HEAD] = hp->lr;
    oc.lr[TBERT_PGROUP_ENCODER] = c->fo->encoder_lr;
    oc.weight_decay = hp->weight_decay;
    oc.clip_norm = c->fo->clip_norm;
    oc.total_steps = per_epoch * epochs;
    oc.warmup_steps = (long)(c->fo->warmup_fraction * (double)oc.total_steps);
    oc.threads = c->threads;
    tbert_status st = tbert_optim_init(&s->opt, &s->all, &oc, err);
    if (st) return st;
    s->opt_ready = true;
    tbert_head_config bc = *cfg;
    st = tbert_head_create(&bc, &r->best, err);
    tbert_head_ws *ws = NULL;
    if (!st) st = tbert_head_ws_create(cfg, hp->batch, &ws, err);
    tbert_rows rb = {0};
    size_t bw = d->X->sparse_dim;
    if (!st) st = tbert_rows_init(&rb, d->X->dense_dim, 1, &bw, err);
    float *z = tbert_malloc_array((size_t)hp->batch, (size_t)O * sizeof(float));
    float *dz = tbert_malloc_array((size_t)hp->batch, (size_t)O * sizeof(float));
    int *yb = tbert_malloc_array((size_t)hp->batch, sizeof(int));
    int *perm = tbert_malloc_array((size_t)d->n_train + 1, sizeof(int));
    r->train_loss = tbert_malloc_array((size_t)epochs, sizeof(double));
    r->train_acc = tbert_malloc_array((size_t)epochs, sizeof(double));
    r->val_loss = tbert_malloc_array((size_t)epochs, sizeof(double));
    r->val_acc = tbert_malloc_array((size_t)epochs, sizeof(double));
    float *vp = tbert_malloc_array((size_t)d->n_val + 1, (size_t)d->n_classes * sizeof(float));
    float *vs = tbert_malloc_array((size_t)d->n_val + 1, sizeof(float));
    bool *vpos = tbert_malloc_array((size_t)d->n_val + 1, sizeof(bool));
    if (!st && (!z || !dz || !yb || !perm || !r->train_loss || !r->train_acc || !r->val_loss || !r->val_acc || !vp || !vs || !vpos))
        st = tbert_fail(err, TBERT_E_NOMEM, "finetune: out of memory");
    float cw[TBERT_METRICS_MAX_CLASSES];
    for (int k = 0; hp->class_weights_auto && k < d->n_classes; k++) {
        int cnt = 0;
        for (int i = 0; i < d->n_train; i++) cnt += d->y[d->train_idx[i]] == k;
        cw[k] = cnt ? (float)((double)d->n_train / ((double)d->n_classes * cnt)) : 1.0f;
    }
    tbert_rng rng;
    tbert_rng_seed(&rng, hp->seed ^ 0x747261696eull); /* "train": shuffles and the head's dropout, as the head path */
    int start = 0;
    double best_score = INFINITY;
    float best_thr = 0.5f;
    if (!st) {
        enc_copy(s->enc, s->best_enc, true);
        memcpy(r->best->params, s->h->params, s->h->n_params * sizeof(float));
    }
    if (!st && ck && ck->resume) st = resume(ck, epochs, s, &rng, r, &start, &best_score, err);
    int kill_at = ck ? tbert_fit_kill_at("epoch") : -1;
    bool log = hp->progress != TBERT_PROGRESS_OFF;
    tbert_fit_data dv = *d;
    dv.X = &s->X;
    for (int e = start; e < epochs && !st; e++) {
        double t0 = tbert_now();
        memcpy(perm, d->train_idx, (size_t)d->n_train * sizeof(int));
        tbert_rng_shuffle(&rng, perm, d->n_train);
        double lsum = 0;
        int64_t correct = 0;
        for (int i = 0; i < d->n_train && !st; i += hp->batch) {
            int m = d->n_train - i < hp->batch ? d->n_train - i : hp->batch;
            tbert_ft_batch b;
            double l;
            st = make_batch(c->fd, perm + i, m, c->threads, &s->bb, &b, err);
            if (!st) st = tbert_ft_dev_forward(s->dev, &b, true, (uint64_t)s->opt.step, s->dense, err);
            if (!st) {
                for (int k = 0; k < m; k++) yb[k] = d->y[perm[i + k]];
                tbert_rows_clear(&rb);
                st = tbert_rows_gather(&rb, d->X, perm + i, m, err);
            }
            if (st) break;
            memcpy(rb.dense, s->dense, (size_t)m * s->dd * sizeof(float));
            st = tbert_head_forward_rows(s->h, ws, &rb, true, &rng, z, err);
            if (!st) st = tbert_head_loss(cfg, m, z, yb, hp->class_weights_auto ? cw : NULL, &l, dz, err);
            if (!st) st = tbert_head_backward_rows(s->h, ws, &rb, dz, s->hgrad, err);
            if (!st) st = tbert_head_backward_input_rows(s->h, ws, &rb, dz, s->dx, err);
            if (!st) {
                tbert_params_zero_grad_threads(s->enc, c->threads);
                st = tbert_ft_dev_backward(s->dev, s->dx, err);
            }
            if (st) break;
            tbert_optim_step(&s->opt, &s->all);
            lsum += l * m;
            for (int k = 0; k < m; k++) {
                int pred = cfg->binary ? (z[k] >= 0 ? cfg->positive : 1 - cfg->positive) : 0;
                if (!cfg->binary)
                    for (int o = 1; o < O; o++)
                        if (z[(size_t)k * O + o] > z[(size_t)k * O + pred]) pred = o;
                correct += pred == yb[k];
            }
        }
        if (st) break;
        r->train_loss[e] = lsum / d->n_train;
        r->train_acc[e] = (double)correct / d->n_train;
        st = refresh_dense(c, s, d->val_idx, d->n_val, err);
        if (!st) st = tbert_fit_eval(s->h, &dv, d->val_idx, d->n_val, &r->val_loss[e], &r->val_acc[e], vp, err);
        if (st) break;
        if (log) {
            if (d->n_val)
                fprintf(stderr, "tbert: fine-tune epoch %d/%d loss %.4f acc %.4f | val loss %.4f acc %.4f (%.1f s)\n", e + 1, epochs,
                        r->train_loss[e], r->train_acc[e], r->val_loss[e], r->val_acc[e], tbert_now() - t0);
            else
                fprintf(stderr, "tbert: fine-tune epoch %d/%d loss %.4f acc %.4f (%.1f s)\n", e + 1, epochs, r->train_loss[e],
                        r->train_acc[e], tbert_now() - t0);
        }
        double score = d->n_val ? r->val_loss[e] : r->train_loss[e];
        bool improved = hp->keep_last || score < best_score;
        if (improved) {
            best_score = score;
            r->best_epoch = e + 1;
            memcpy(r->best->params, s->h->params, s->h->n_params * sizeof(float));
            enc_copy(s->enc, s->best_enc, true);
            if (ck && d->n_val && cfg->binary) { /* the best head's threshold so far, on the validation scores just taken */
                for (int i = 0; i < d->n_val; i++) {
                    vs[i] = vp[(size_t)i * 2 + cfg->positive];
                    vpos[i] = d->y[d->val_idx[i]] == cfg->positive;
                }
                st = tbert_threshold_choose(hp->threshold, d->n_val, vs, vpos, &best_thr, err);
            }
        }
        r->epochs_run = e + 1;
        if (ck && !st) {
            char *tj = tbert_fit_state_json(ck->settings_json, r, e + 1, best_score);
            if (!tj) st = tbert_fail(err, TBERT_E_NOMEM, "finetune: out of memory");
            if (!st && improved)
                st = save_ckpt(ck, "best.safetensors", r->best, s, s->best_enc, false, NULL, best_thr, e + 1, r->best_epoch, tj, NULL, err);
            if (!st) st = save_ckpt(ck, "last.safetensors", s->h, s, NULL, true, &rng, best_thr, e + 1, r->best_epoch, tj, NULL, err);
            free(tj);
            if (!st && kill_at == e + 1) raise(SIGKILL); /* crash tests: die right after this epoch's checkpoint */
        }
    }
    if (!st) {
        r->epochs_run = epochs;
        if (r->best_epoch == 0) r->best_epoch = epochs;
    }
    tbert_head_ws_free(ws);
    tbert_rows_free(&rb);
    free(z);
    free(dz);
    free(yb);
    free(perm);
    free(vp);
    free(vs);
    free(vpos);
    return st;
}

/* --finetune-head first|refit: the head path (src/train.c: hp's epochs at its constant rate, its best epoch on
 * d's validation rows) trains a head on the dense blocks s->X holds now; its parameters go to dst */
static tbert_status head_phase(const tbert_fit_data *d, const tbert_hparams *hp, ft_state *s, tbert_head *dst, tbert_error *err) {
    tbert_fit_data dv = *d;
    dv.X = &s->X;
    tbert_hparams hh = *hp;
    hh.cv_folds = 0;
    tbert_fit_result hr;
    tbert_status st = tbert_fit_once(&dv, &hh, NULL, &hr, err);
    if (!st && hr.best->n_params != dst->n_params)
        st = tbert_fail(err, TBERT_E_ARG, "finetune: the head path's head has %zu parameters, the fine-tuned one %zu", hr.best->n_params,
                        dst->n_params);
    if (!st) memcpy(dst->params, hr.best->params, dst->n_params * sizeof(float));
    if (!st && hp->progress != TBERT_PROGRESS_OFF)
        fprintf(stderr, "tbert: fine-tune head phase: %d epoch(s) of the head path, best %d (%.1f s)\n", hr.epochs_run, hr.best_epoch,
                hr.seconds);
    tbert_fit_result_free(&hr);
    return st;
}

/* one fine-tune: [the head first], epochs, then the best epoch's dense blocks for every split, [a new head on them],
 * the threshold (chosen as the head path does, or *fixed) and the final metrics; best.safetensors again with them
 * when ck */
static tbert_status fit_one(const ft_ctx *c, const tbert_fit_data *d, const tbert_hparams *hp, int epochs, const tbert_fit_ckpt *ck,
                            const float *fixed, ft_state *s, tbert_fit_result *r, tbert_error *err) {
    memset(r, 0, sizeof *r);
    double t0 = tbert_now();
    tbert_status st = state_init(c, d, hp, s, err);
    if (!st && c->fo->head_phase == TBERT_FT_HEAD_FIRST) st = head_phase(d, hp, s, s->h, err); /* rows: the frozen encoder's */
    if (!st) st = run_epochs(c, d, hp, epochs, ck, s, r, err);
    if (st) return st;
    enc_copy(s->enc, s->best_enc, false);
    st = refresh_dense(c, s, d->train_idx, d->n_train, err);
    if (!st) st = refresh_dense(c, s, d->val_idx, d->n_val, err);
    if (!st) st = refresh_dense(c, s, d->test_idx, d->n_test, err);
    if (!st && c->fo->head_phase == TBERT_FT_HEAD_REFIT) st = head_phase(d, hp, s, r->best, err);
    tbert_fit_data dv = *d;
    dv.X = &s->X;
    if (fixed) r->threshold = *fixed;
    if (!st) st = tbert_fit_finish(r, &dv, hp->threshold, fixed == NULL, err);
    r->seconds = tbert_now() - t0;
    return st;
}

static tbert_status save_final(const tbert_fit_ckpt *ck, ft_state *s, const tbert_fit_result *r, int epochs, tbert_error *err) {
    char *tj = tbert_fit_state_json(ck->settings_json, r, epochs, NAN);
    char *mj = tbert_fit_metrics_json(r, &ck->recipe);
    tbert_status st = tj && mj ? TBERT_OK : tbert_fail(err, TBERT_E_NOMEM, "finetune: out of memory");
    if (!st) st = save_ckpt(ck, "best.safetensors", r->best, s, s->best_enc, false, NULL, r->threshold, epochs, r->best_epoch, tj, mj, err);
    free(tj);
    free(mj);
    return st;
}

/* cross-fitting: the folds fine-tune from the base model; threshold on their out-of-fold scores; the kept model is a
 * final fine-tune on all the training rows for the folds' median best epoch count */
static tbert_status fit_cv(const ft_ctx *c, const tbert_fit_data *d, const tbert_hparams *hp, const tbert_fit_ckpt *ck,
                           tbert_fit_result *r, tbert_error *err) {
    const int K = hp->cv_folds, n = d->n_train, C = d->n_classes, E = c->fo->epochs;
    tbert_cv_work w;
    tbert_status st = tbert_cv_work_init(&w, d, hp, E, "finetune", err);
    if (st) return st;
    bool log = hp->progress != TBERT_PROGRESS_OFF;
    for (int k = 0; k < K && !st; k++) {
        tbert_fit_data fd;
        tbert_hparams fh;
        tbert_cv_fold_setup(&w, d, hp, k, &fd, &fh);
        tbert_fit_result fr;
        ft_state s;
        st = fit_one(c, &fd, &fh, E, NULL, NULL, &s, &fr, err);
        if (!st) {
            tbert_cv_fold_record(&w, k, &fr);
            if (log)
                fprintf(stderr, "tbert: fine-tune cross-validation fold %d/%d: best epoch %d, held-out loss %.4f acc %.4f (%.1f s)\n", k + 1,
                        K, fr.best_epoch, fr.val_loss[fr.best_epoch - 1], fr.val_acc[fr.best_epoch - 1], fr.seconds);
        }
        tbert_fit_result_free(&fr);
        state_free(&s);
    }
    float thr = 0.5f;
    int pos_cls = -1, final_epochs = E;
    if (!st) st = tbert_cv_threshold(&w, d, hp, &thr, &pos_cls, &final_epochs, err);
    if (!st && log)
        fprintf(stderr, "tbert: fine-tune cross-validation: threshold %.4f on %d out-of-fold scores (%s); the model kept is one "
                        "fine-tune on all %d training examples for %d epoch(s) (the folds' median best)\n",
                (double)thr, n, hp->threshold ? hp->threshold : "f1", n, final_epochs);
    ft_state s = {0};
    if (!st) {
        tbert_hparams fh = *hp;
        fh.cv_folds = 0;
        fh.keep_last = true;
        st = fit_one(c, d, &fh, final_epochs, ck, &thr, &s, r, err);
    }
    if (!st) { /* the out-of-fold view is the validation of the kept model (as the head path's cross-fitting) */
        free(r->train_loss);
        free(r->train_acc);
        free(r->val_loss);
        free(r->val_acc);
        r->train_loss = w.hist[0];
        r->train_acc = w.hist[1];
        r->val_loss = w.hist[2];
        r->val_acc = w.hist[3];
        w.hist[0] = w.hist[1] = w.hist[2] = w.hist[3] = NULL;
        r->epochs_run = E;
        tbert_metrics_free(&r->val);
        st = tbert_metrics_compute(n, C, w.oof, w.y, pos_cls, thr, &r->val, err);
    }
    if (!st) {
        free(r->val_probs);
        r->val_probs = w.oof;
        w.oof = NULL;
        r->n_oof = n;
        if (ck) st = save_final(ck, &s, r, E, err);
    }
    state_free(&s);
    tbert_cv_work_free(&w);
    return st;
}

tbert_status tbert_fit_finetune(const tbert_fit_data *d, const tbert_hparams *hp, const tbert_ft_opts *fo, const tbert_model *m,
                                const tbert_ft_data *fd, const tbert_fit_ckpt *ck, tbert_fit_result *r, tbert_error *err) {
    memset(r, 0, sizeof *r);
    if (fo->epochs < 1 || hp->batch < 1) return tbert_fail(err, TBERT_E_ARG, "train: --finetune-epochs and --batch must be positive");
    if (!(hp->lr > 0) || !(fo->encoder_lr > 0)) return tbert_fail(err, TBERT_E_ARG, "train: --lr and --encoder-lr must be positive");
    if (!ck) return tbert_fail(err, TBERT_E_ARG, "finetune: no checkpoint context");
    if (fd->n_doc != d->X->n) return tbert_fail(err, TBERT_E_ARG, "finetune: %d documents for %d rows", fd->n_doc, d->X->n);
    ft_ctx c = {hp, fo, m, fd, &ck->recipe, fo->enc.threads > 0 ? fo->enc.threads : tbert_num_cores()};
    /* the head's GEMMs with one OpenBLAS thread, as the head path (bits independent of the thread count) */
    int blas_threads = openblas_get_num_threads();
    openblas_set_num_threads(1);
    double t0 = tbert_now();
    tbert_status st;
    if (hp->cv_folds >= 2) {
        st = fit_cv(&c, d, hp, ck, r, err);
    } else {
        ft_state s;
        st = fit_one(&c, d, hp, fo->epochs, ck, NULL, &s, r, err);
        if (!st) st = save_final(ck, &s, r, fo->epochs, err);
        state_free(&s);
    }
    r->seconds = tbert_now() - t0;
    openblas_set_num_threads(blas_threads);
    return st;
}
