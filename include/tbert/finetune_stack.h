/* The trainable top of the encoder for `tbert train --finetune K` (issue 15, src/finetune_stack.c): trainable
 * float32 copies of the top K layers in use (and of the embeddings when K = all, of the pooler when the pooling is
 * "pooler"), their forward on packed tokens saving what the backward needs, the pooling of each window, the
 * mean over a document's windows, the optional L2 normalisation, and the backward of all of it down to the
 * trained tensors' gradients. Built from the single-op functions of include/tbert/encoder_backward.h.
 *
 * Input of a batch: the windows of n_doc documents, packed (window w owns rows off[w] .. off[w+1]-1), with
 * either the hidden states entering layer first_layer (the frozen lower layers' output, from the cache) or,
 * when first_layer == 0, the token ids (the embeddings are then computed here, trained only when
 * cfg.train_embeddings). Output: the dense block of each document, exactly the function the frozen
 * featurizer computes (recipe.h) when dropout is off: same values within fp32 tolerance. A window of length 0 (all
 * padding) is allowed: it is left out of its document's mean (a document without a real window gives a zero row
 * and receives no gradient). A window holds at most max_position tokens (flatten: max_len). The forward copies what
 * it keeps of the batch, so the caller's arrays need not outlive the call.
 *
 * Dropout: hidden (after each sublayer's output projection and after the embeddings) and attention
 * probabilities, as BERT, from the counter-based generator tbert_dropout_u32 (include/tbert/dropout_rng.h), so
 * that a mask depends only on (seed, step, layer, site, element index) and CPU and CUDA draw the same masks
 * (the exact convention: include/tbert/dropout_rng.h). The pooler has no dropout (BERT's has none).
 *
 * Threads and determinism: work is split over windows and over fixed chunks of TBERT_BWD_CHUNK tokens;
 * parameter gradients are reduced in chunk order, so the bits do not depend on cfg.threads. */
#ifndef TBERT_FINETUNE_STACK_H
#define TBERT_FINETUNE_STACK_H

#include "tbert/common.h"
#include "tbert/encoder.h"
#include "tbert/model.h"
#include "tbert/params.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int layers;            /* layers in use (the recipe's, 1..model layers) */
    int k;                 /* trained top layers, 1..layers; first_layer = layers - k */
    bool train_embeddings; /* K = all: k == layers and the embeddings (word, position, type, LayerNorm) train too */
    tbert_pool pool;       /* mean, cls, flatten or pooler (pooler: the pooler's dense trains) */
    int max_len;           /* flatten's width (tokens per window) */
    bool normalize;        /* L2 after the mean over windows */
    float hidden_dropout, attn_dropout; /* 0 = off */
    uint64_t dropout_seed;
    int threads;           /* 0 = all cores */
    bool bf16;             /* the linear layers' products in bf16 with float32 sums (src/gemm_bf16.c: AMX when the CPU
                              has it); the weights, their gradients and every other op stay float32 */
} tbert_ft_stack_cfg;

typedef struct {
    int n_doc;
    const int32_t *doc_off; /* n_doc + 1: document d's windows are doc_off[d] .. doc_off[d+1]-1 */
    int n_win;              /* = doc_off[n_doc] */
    const int32_t *off;     /* n_win + 1: window w's tokens are rows off[w] .. off[w+1]-1 ([CLS] .. [SEP]) */
    const float *hidden;    /* first_layer > 0: [off[n_win], H], the input of layer first_layer; else NULL */
    const int32_t *ids;     /* first_layer == 0: [off[n_win]] token ids (positions restart in each window, type 0) */
} tbert_ft_batch;

typedef struct tbert_ft_stack tbert_ft_stack;

/* Copies the trained tensors out of the model (which must outlive the stack: frozen parts are read from it). */
tbert_status tbert_ft_stack_create(const tbert_model *m, const tbert_ft_stack_cfg *cfg, tbert_ft_stack **out,
                                   tbert_error *err);
void tbert_ft_stack_free(tbert_ft_stack *s);
int tbert_ft_stack_first_layer(const tbert_ft_stack *s);
size_t tbert_ft_stack_dense_dim(const tbert_ft_stack *s); /* tbert_pool_dim(model, pool, max_len) */
/* The trainable tensors (values and gradients owned by the stack), group TBERT_PGROUP_ENCODER, transformers
 * names ("encoder.layer.5.output.dense.weight", ...), decay off for biases and LayerNorm weights. */
tbert_params *tbert_ft_stack_params(tbert_ft_stack *s);
/* out[n_doc, dense_dim] for the batch. training: dropout with the masks of (seed, step) and everything the
 * backward needs saved; otherwise no dropout and no backward allowed (evaluation, scoring). When first_layer == 0
 * and the embeddings do not train, they are the model's (frozen). Errors: TBERT_E_ARG (bad offsets, ids out of
 * range, a window too long, hidden/ids missing), TBERT_E_NOMEM. */
tbert_status tbert_ft_stack_forward(tbert_ft_stack *s, const tbert_ft_batch *b, bool training, uint64_t step, float *out,
                                    tbert_error *err);
/* After a training forward of the same batch: accumulates (+=) d loss / d tensor into the params' gradients from
 * dout[n_doc, dense_dim] = d loss / d out (tbert_params_zero_grad once per step). TBERT_E_ARG without a training
 * forward. Calling it again after the same forward adds the same gradients again. */
tbert_status tbert_ft_stack_backward(tbert_ft_stack *s, const float *dout, tbert_error *err);

/* The documents' mean of their non-empty windows' pooled rows [n_win, dim] (double sums), shared with the CUDA
 * stack's host side (src/finetune_device.c): doc_ne[d] = document d's non-empty windows, docpre the mean, docout the
 * same rows L2-normalised when normalize. off: window token offsets, doc_off: document window offsets. */
void tbert_ft_doc_mean(int n_doc, const int32_t *doc_off, const int32_t *off, size_t dim, bool normalize, const float *pooled,
                       int32_t *doc_ne, float *docpre, float *docout);
/* Its backward: dpooled[n_win, dim] (empty windows 0) from dout[n_doc, dim]; ddoc [n_doc, dim] is scratch when normalize. */
void tbert_ft_doc_mean_backward(int n_doc, int n_win, const int32_t *doc_off, const int32_t *off, size_t dim, bool normalize,
                                const int32_t *doc_ne, const float *docpre, const float *docout, const float *dout, float *ddoc,
                                float *dpooled);

#ifdef __cplusplus
}
#endif

#endif
