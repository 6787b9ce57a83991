/* The trainable top of the encoder on a CUDA device (issue 15; src/finetune_stack_cuda.c, part of the CUDA plugin,
 * reached through its table include/tbert/cuda_plugin.h; the host wrapper is src/finetune_device.c). The device
 * twin of include/tbert/finetune_stack.h for the per-window part: the top K layers (and the embeddings when K =
 * all) forward with saves, dropout with dropout_rng.h's masks (the CPU's, element for element), pooling of each
 * window, and the backward to every trained tensor. The mean over a document's windows and the L2 step stay on
 * the host (tiny; the CPU stack's own code, so they are the same bits).
 *
 * Tensors: the device holds float32 copies of the trained tensors in the order and shapes of the CPU stack's
 * params list (tbert_ft_stack_params), uploaded by tbert_cuda_ft_upload; gradients are float32 on the device and
 * added (+=) to the list's host gradients by tbert_cuda_ft_backward. The optimiser runs on the host over that
 * list (src/optim.c), so fp32 master weights and moments are the host's and the step is the CPU's arithmetic.
 * Precision: fp32 (plain float32 GEMMs), tf32, or bf16 (activations and GEMM inputs bf16, float32 accumulation,
 * layernorm statistics, softmax, biases, gradients of tensors all float32; the GEMM weights get bf16 copies at
 * each upload). */
#ifndef TBERT_FINETUNE_STACK_CUDA_H
#define TBERT_FINETUNE_STACK_CUDA_H

#include "tbert/common.h"
#include "tbert/encoder.h"
#include "tbert/finetune_stack.h"
#include "tbert/model.h"
#include "tbert/params.h"

typedef struct tbert_cuda_ft tbert_cuda_ft;

/* ps: the CPU stack's list for the same model and cfg (names and shapes are looked up; values are not read
 * here). The frozen embeddings (K = layers without --finetune all) are uploaded from m. */
tbert_status tbert_cuda_ft_create(const tbert_model *m, const tbert_ft_stack_cfg *cfg, const tbert_params *ps,
                                  tbert_precision precision, int device, tbert_cuda_ft **out, tbert_error *err);
void tbert_cuda_ft_free(tbert_cuda_ft *g);
/* The list's current values to the device (after each optimiser step). */
tbert_status tbert_cuda_ft_upload(tbert_cuda_ft *g, const tbert_params *ps, tbert_error *err);
/* Windows w < n_win own rows off[w] .. off[w+1]-1 (checked: non-decreasing, at most the positions / flatten's
 * max_len); hidden [N, H] float32 (the input of the first trained layer) or, when it is layer 0, ids [N].
 * pooled[n_win, dense_dim] (host): each window's pooled row (zeros for an empty window; the pooler's output
 * tanh(b) there, which the host's document mean leaves out). training: dropout of (seed, step) and saves. */
tbert_status tbert_cuda_ft_forward(tbert_cuda_ft *g, int n_win, const int32_t *off, const float *hidden,
                                   const int32_t *ids, bool training, uint64_t step, float *pooled, tbert_error *err);
/* After a training forward: dpooled[n_win, dense_dim] (host) = d loss / d pooled; the gradients of every entry of
 * ps (the list given at create) are ADDED to ps's host gradients. */
tbert_status tbert_cuda_ft_backward(tbert_cuda_ft *g, const float *dpooled, tbert_params *ps, tbert_error *err);

#endif
