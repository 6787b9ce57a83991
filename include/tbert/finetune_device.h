/* Where the trainable stack runs (issue 15, src/finetune_device.c): the CPU stack (include/tbert/finetune_stack.h)
 * or its CUDA twin behind the plugin table (src/finetune_stack_cuda.h), one interface for the fine-tuning loop
 * (src/finetune.c). The CPU stack always exists: its params list holds the host float32 master values and
 * gradients that the optimiser (src/optim.c) steps, on either device. With CUDA, each forward uploads the list's
 * values (the optimiser step, or the loop restoring the best epoch's tensors, changed them on the host), the
 * device runs the top K layers and the pooling of each window, and the host takes the mean over a document's
 * windows and the L2 step with the CPU stack's arithmetic; the backward adds the device's gradients to the list's. */
#ifndef TBERT_FINETUNE_DEVICE_H
#define TBERT_FINETUNE_DEVICE_H

#include "tbert/common.h"
#include "tbert/encoder.h"
#include "tbert/finetune_stack.h"
#include "tbert/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tbert_ft_dev tbert_ft_dev;

/* cuda_device < 0: the CPU stack alone; else CUDA device cuda_device (TBERT_E_NODEV with one line when the plugin
 * cannot be loaded), computing in precision (fp32, tf32 or bf16; the CPU stack takes fp32 only). */
tbert_status tbert_ft_dev_create(const tbert_model *m, const tbert_ft_stack_cfg *cfg, int cuda_device,
                                 tbert_precision precision, tbert_ft_dev **out, tbert_error *err);
void tbert_ft_dev_free(tbert_ft_dev *d);
/* The CPU stack: its params list (values the optimiser steps, gradients the backward adds to), dense_dim. */
tbert_ft_stack *tbert_ft_dev_stack(tbert_ft_dev *d);
bool tbert_ft_dev_is_cuda(const tbert_ft_dev *d);
/* tbert_ft_stack_forward / tbert_ft_stack_backward on the chosen device (same contracts). */
tbert_status tbert_ft_dev_forward(tbert_ft_dev *d, const tbert_ft_batch *b, bool training, uint64_t step, float *out,
                                  tbert_error *err);
tbert_status tbert_ft_dev_backward(tbert_ft_dev *d, const float *dout, tbert_error *err);

#ifdef __cplusplus
}
#endif

#endif
