/* A list of named trainable tensors with their gradients: what fine-tuning (issue 15) trains and what the
 * optimiser (include/tbert/optim.h) steps. The encoder's trainable copies (include/tbert/finetune_stack.h) and
 * the head's tensors are each one list; tbert_params_append joins them for one optimiser.
 * Names follow transformers' BertModel (no "bert." prefix), e.g. "encoder.layer.5.attention.self.query.weight",
 * "embeddings.word_embeddings.weight", "pooler.dense.bias"; the head's tensors are "head.fc2.weight" etc.
 * Order is fixed (the order tensors were added); every reduction over the list (the global gradient norm)
 * runs in that order, so results do not depend on threads. (src/params.c) */
#ifndef TBERT_PARAMS_H
#define TBERT_PARAMS_H

#include "tbert/common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TBERT_PARAM_NAME_MAX 128

enum { TBERT_PGROUP_HEAD = 0, TBERT_PGROUP_ENCODER = 1, TBERT_PGROUP_COUNT = 2 };

typedef struct {
    char name[TBERT_PARAM_NAME_MAX];
    float *w;          /* values (borrowed: owned by whoever made the entry) */
    float *g;          /* gradient, n floats (borrowed) */
    size_t n;          /* element count */
    int ndim;
    int64_t shape[2];
    int group;         /* TBERT_PGROUP_*: which learning rate applies */
    bool decay;        /* AdamW weight decay applies (transformers' convention: not biases, not LayerNorm weights) */
} tbert_param;

typedef struct {
    int n, cap;
    tbert_param *p;
} tbert_params;

/* Adds one entry (copies the name; w and g borrowed). */
tbert_status tbert_params_add(tbert_params *ps, const char *name, float *w, float *g, int ndim, const int64_t *shape,
                              int group, bool decay, tbert_error *err);
/* Appends every entry of src to dst (borrowed pointers, names copied). */
tbert_status tbert_params_append(tbert_params *dst, const tbert_params *src, tbert_error *err);
void tbert_params_free(tbert_params *ps); /* the list only, not the tensors */
void tbert_params_zero_grad(tbert_params *ps);

/* Passes over the whole list that run on several threads (the optimiser's norm and update, the zeroing) cut the
 * list's flat concatenation (entries in list order) into fixed chunks of TBERT_PARAMS_CHUNK elements: the chunks, and
 * so every per-chunk partial sum, do not depend on the thread count. */
enum { TBERT_PARAMS_CHUNK = 1 << 15 };
/* The number of chunks: ceil(numel / TBERT_PARAMS_CHUNK). */
int tbert_params_chunks(const tbert_params *ps);
/* fn(ctx, entry, lo, hi) for each piece of one entry among the elements of chunk c: entry's elements lo .. hi-1,
 * entries in list order. */
typedef void (*tbert_params_piece_fn)(void *ctx, int entry, size_t lo, size_t hi);
void tbert_params_chunk_pieces(const tbert_params *ps, int c, tbert_params_piece_fn fn, void *ctx);
/* tbert_params_zero_grad with the chunks shared among `threads` threads (<= 1: the caller's thread). */
void tbert_params_zero_grad_threads(tbert_params *ps, int threads);
size_t tbert_params_numel(const tbert_params *ps);
/* Index of the entry with this name, -1 when absent. */
int tbert_params_find(const tbert_params *ps, const char *name);

#ifdef __cplusplus
}
#endif

#endif
