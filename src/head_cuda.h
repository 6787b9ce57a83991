/* The classifier head on CUDA (src/head_cuda.c + kernels/head.cu): the same function, loss, backward pass and
 * AdamW as the CPU head (include/tbert/head.h), with parameters, gradients and Adam moments resident on the
 * device. Element-wise math runs in double where src/head.c does, reductions in the CPU's order, AdamW bit for
 * bit; the matrix products are cuBLAS float32, so results match the CPU to float32 rounding, not bit for bit.
 * The functions below, except the two dropout helpers, are part of the CUDA plugin (libtbert_cuda.so): libtbert
 * calls them through the plugin's table (include/tbert/cuda_plugin.h: head_*); the CUDA tests link the plugin
 * and call them directly. The two dropout helpers are host code in libtbert (src/cuda_plugin.c). */
#ifndef TBERT_HEAD_CUDA_H
#define TBERT_HEAD_CUDA_H

#include "tbert/head.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tbert_cuda_head tbert_cuda_head;

/* Uploads h's parameters (and a's moments when a != NULL; zeros otherwise) to CUDA device `device`, with a
 * workspace for batches of up to max_n rows. */
tbert_status tbert_cuda_head_create(const tbert_head *h, const tbert_adam *a, int max_n, int device, tbert_cuda_head **out,
                                    tbert_error *err);
void tbert_cuda_head_free(tbert_cuda_head *g);

/* z (host, n x O) = head(x) for host features x (n x D), no dropout; any n (chunked by max_n). */
tbert_status tbert_cuda_head_forward(tbert_cuda_head *g, int n, const float *x, float *z, tbert_error *err);

/* One training step on a batch of n <= max_n rows: forward (mask: NULL, or n x K dropout factors from
 * tbert_cuda_head_dropout_mask, K = hidden or D), loss (mean weighted, into *loss), backward, then one AdamW
 * update with a's hyper-parameters (a->step is incremented here; a->m, a->v on the host are untouched until
 * tbert_cuda_head_download). Labels outside [0, C) are refused (TBERT_E_ARG) before anything runs. */
tbert_status tbert_cuda_head_train_step(tbert_cuda_head *g, tbert_adam *a, int n, const float *x, const int *y,
                                        const float *class_weight, const float *mask, double *loss, tbert_error *err);

/* ---- sparse rows (include/tbert/rows.h: dense block + CSR; the same semantics as tbert_head_*_rows) ----
 * Each call uploads the batch as it is: the dense block, indptr (rebased to int32), indices and values, and for
 * a training step the batch's CSC (built on the host, entries of a column in row order) into a device workspace
 * that grows with the batch's nnz (it never densifies). Forward: a cuBLAS GEMM over the dense block with W's
 * row stride, then one thread per (row, output) sums the row's entries in double in the CPU's order. dW of the
 * sparse columns: the gradient block is zeroed, then one thread per (present column, output) sums that column's
 * entries in row order (the CPU's float scatter-add, bit for bit): deterministic, no atomics.
 * Rows must have dense_dim + sparse_dim == in_dim and indices in [0, sparse_dim) (TBERT_E_ARG otherwise). */

/* z (host, x->n x O) = head(x), no dropout; any number of rows (chunked by max_n). */
tbert_status tbert_cuda_head_forward_rows(tbert_cuda_head *g, const tbert_rows *x, float *z, tbert_error *err);

/* tbert_cuda_head_train_step on rows (1 <= x->n <= max_n). mask: an MLP head's n x hidden dropout factors
 * (tbert_cuda_head_dropout_mask) or NULL; a linear head takes no mask (TBERT_E_ARG): its dropout is applied
 * to the rows on the host by tbert_cuda_head_dropout_rows. z: NULL, or the host's n x O logits of this
 * step's training forward (dropout applied, before the update), as tbert_head_forward_rows(train = true)
 * gives them. */
tbert_status tbert_cuda_head_train_step_rows(tbert_cuda_head *g, tbert_adam *a, const tbert_rows *x, const int *y,
                                             const float *class_weight, const float *mask, double *loss, float *z,
                                             tbert_error *err);

/* Device parameters into h->params; moments into a->m, a->v when a != NULL. */
tbert_status tbert_cuda_head_download(tbert_cuda_head *g, tbert_head *h, tbert_adam *a, tbert_error *err);
/* The gradient computed by the last train step (n_params floats, host; before the AdamW update used it). */
tbert_status tbert_cuda_head_last_grad(tbert_cuda_head *g, float *grad, tbert_error *err);

/* Inverted-dropout factors for count elements in the CPU head's draw order: mask[i] = 1/(1-p) when
 * tbert_rng_uniform(rng) >= p, else 0 (src/head.c draws the same numbers in the same order). */
void tbert_cuda_head_dropout_mask(float p, size_t count, tbert_rng *rng, float *mask);
/* A linear head's inverted dropout on rows (host code in libtbert, src/cuda_plugin.c): draws one uniform per
 * element of the x->n x in_dim feature block in row-major order (zeros included: the CPU head's draws, in its
 * order) and writes into out (initialised with x's shape; cleared first) the rows x' = dropout(x): kept
 * elements scaled by 1/(1-p), dropped sparse entries left out. The head on x' without dropout computes what the
 * dense head computes with dropout on x, while only the dense block and the entries present are stored. */
tbert_status tbert_cuda_head_dropout_rows(float p, const tbert_rows *x, tbert_rng *rng, tbert_rows *out, tbert_error *err);

#ifdef __cplusplus
}
#endif
#endif
