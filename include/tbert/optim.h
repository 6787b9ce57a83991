/* The fine-tuning optimiser (issue 15, src/optim.c): AdamW over a tbert_params list with one learning rate
 * per group (encoder, head), Hugging Face's linear schedule (linear warm-up from 0 to the peak over
 * warmup_steps, then linear decay to 0 at total_steps: transformers.get_linear_schedule_with_warmup) and
 * gradient clipping by global norm (torch.nn.utils.clip_grad_norm_: total norm over every gradient, scale
 * = max_norm / (norm + 1e-6) applied when < 1). The AdamW arithmetic is torch.optim.AdamW's single-tensor path,
 * as src/adam.c (the head-only trainer, which stays unchanged: --finetune 0 keeps today's bits).
 * Threads (cfg.threads): the norm and the update run on the list's fixed chunks (include/tbert/params.h) shared among
 * the threads. The update is element-wise, so its bits do not depend on the split; the norm is one double partial
 * per chunk (eight interleaved double sums over the chunk, added in a fixed tree) and the partials added in chunk
 * order, so it does not depend on cfg.threads either. */
#ifndef TBERT_OPTIM_H
#define TBERT_OPTIM_H

#include "tbert/common.h"
#include "tbert/params.h"
#include "tbert/safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    double lr[TBERT_PGROUP_COUNT]; /* peak learning rate per group */
    double beta1, beta2, eps, weight_decay;
    double clip_norm;              /* <= 0: no clipping */
    long warmup_steps, total_steps; /* total_steps <= 0: constant learning rate after warm-up */
    int threads;                    /* threads for the norm and the update (<= 1: the caller's; bits the same) */
} tbert_optim_cfg;

/* beta1 0.9, beta2 0.999, eps 1e-8, weight_decay 0.01, clip_norm 1.0, lr head 1e-3, encoder 5e-5, no warm-up,
 * constant, 1 thread. */
tbert_optim_cfg tbert_optim_default_cfg(void);

/* The multiplier of the peak learning rate at a step (0-based count of steps taken before this one), exactly
 * transformers' lr_lambda: step < warmup: step / max(1, warmup); else max(0, (total - step) / max(1, total - warmup)). */
double tbert_optim_lr_factor(const tbert_optim_cfg *cfg, long step);

typedef struct {
    tbert_optim_cfg cfg;
    long step;     /* steps taken */
    int n;         /* entries (same list, same order as at init) */
    float **m, **v; /* first and second moments per entry */
    double last_norm; /* the global gradient norm of the last step (before clipping) */
    int n_chunks;     /* the list's chunks (tbert_params_chunks) */
    double *part;     /* n_chunks: the norm's per-chunk partials */
} tbert_optim;

tbert_status tbert_optim_init(tbert_optim *o, const tbert_params *ps, const tbert_optim_cfg *cfg, tbert_error *err);
void tbert_optim_free(tbert_optim *o);
/* Global L2 norm of every gradient in the list: the sum of squares in double per fixed chunk (see above), the
 * chunks' partials added in chunk order; the value tbert_optim_step clips with, whatever cfg.threads. */
double tbert_params_grad_norm(const tbert_params *ps);
/* One step: clip the gradients in place (when cfg.clip_norm > 0), then AdamW on every entry with
 * lr = cfg.lr[group] * lr_factor(step); step++. ps is the list given to tbert_optim_init (another list: no update). */
void tbert_optim_step(tbert_optim *o, tbert_params *ps);
/* Checkpoint: moments as tensors "optim.m.NAME" / "optim.v.NAME" (float32, shape of the entry) added to a
 * safetensors writer, and the step as metadata key "optim_step"; restore reads them back (TBERT_E_FORMAT, naming
 * the tensor, when one is missing or has another shape). */
tbert_status tbert_optim_save(const tbert_optim *o, const tbert_params *ps, tbert_st_writer *w, tbert_error *err);
tbert_status tbert_optim_restore(tbert_optim *o, const tbert_params *ps, const tbert_safetensors *f, tbert_error *err);

#ifdef __cplusplus
}
#endif

#endif
