/* Head checkpoints: CKPT_DIR/best.safetensors (weights + metadata) and last.safetensors (also Adam's
 * moments and step and the training RNG state), written atomically (CONVENTIONS.md "Files and caches").
 *
 * Tensors: fc1.weight (Hd,D) fc1.bias (Hd) [MLP only], fc2.weight (O,K) fc2.bias (O), all F32;
 * last only: adam.m.<name>, adam.v.<name> (F32, same shapes), adam.step (I64 [1]), train.rng (I64 [4]: the
 * xoshiro state as signed 64-bit bit patterns).
 * __metadata__ (all strings): format "tbert-head", format_version "1", tbert_version, recipe (JSON),
 * head (JSON: in_dim, hidden, n_classes, binary, dropout), labels (JSON array), positive (label or ""),
 * threshold ("%.9g"), seed, data_hash, epoch, best_epoch, metrics (JSON), train (JSON: settings + history). */
#ifndef TBERT_CHECKPOINT_H
#define TBERT_CHECKPOINT_H

#include "tbert/common.h"
#include "tbert/head.h"
#include "tbert/recipe.h"
#include "tbert/safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TBERT_CKPT_FORMAT_VERSION 1

typedef struct {
    tbert_recipe recipe;
    char data_hash[65];
    uint64_t seed;
    int epoch;          /* epochs completed when written */
    int best_epoch;
    char *metrics_json; /* malloc'd (may be NULL) */
    char *train_json;   /* malloc'd (may be NULL) */
} tbert_ckpt_meta;

void tbert_ckpt_meta_free(tbert_ckpt_meta *m);

/* Writes path atomically. adam/rng may be NULL (best.safetensors). */
tbert_status tbert_checkpoint_save(const char *path, const tbert_head *h, const tbert_ckpt_meta *meta, const tbert_adam *adam,
                                   const tbert_rng *rng, tbert_error *err);
/* The same with more tensors: extra (may be NULL) is called with the writer before the file is saved, to add
 * them (fine-tuning, src/finetune.c: the trained encoder tensors "finetune.*" and the optimiser state "optim.*"). */
typedef tbert_status (*tbert_ckpt_extra_fn)(void *ctx, tbert_st_writer *w, tbert_error *err);
tbert_status tbert_checkpoint_save_ex(const char *path, const tbert_head *h, const tbert_ckpt_meta *meta, const tbert_adam *adam,
                                      const tbert_rng *rng, tbert_ckpt_extra_fn extra, void *ctx, tbert_error *err);
/* Reads and validates path. *h is created here. adam (may be NULL) is initialised and filled from the
 * file (error when the file has no optimizer state); rng likewise. */
tbert_status tbert_checkpoint_load(const char *path, tbert_head **h, tbert_ckpt_meta *meta, tbert_adam *adam, tbert_rng *rng,
                                   tbert_error *err);

/* ---- the checkpoint folder as one transaction (src/checkpoint_folder.c) ----
 * A fresh run into a folder that already holds a run's files writes into DIR/.tbert-staging and moves in
 * only when all of its files are written; a kill while moving in is finished by the next run. */
typedef struct {
    char *stage;      /* DIR/.tbert-staging */
    const char *work; /* where this run writes: DIR or stage */
    bool staged, resume;
} tbert_ckpt_plan;

/* Where a run into dir writes (call once the data and model are known good, before the first file is
 * written): finishes a move-in a kill interrupted, picks the staging folder when dir holds another run or an
 * interrupted staged run is resumed, and clears resume (saying so on stderr) when there is nothing to resume. */
tbert_status tbert_ckpt_plan_open(const char *dir, bool resume, tbert_ckpt_plan *p, tbert_error *err);
/* After the run wrote all its files into p->work: moves a staged run into dir (nothing when not staged). */
tbert_status tbert_ckpt_plan_commit(const char *dir, const tbert_ckpt_plan *p, tbert_error *err);
/* A failed run: appends to err's one line what dir holds now, and removes a run that left nothing resumable. */
void tbert_ckpt_plan_failed(const char *dir, const tbert_ckpt_plan *p, tbert_error *err);
void tbert_ckpt_plan_free(tbert_ckpt_plan *p);

#ifdef __cplusplus
}
#endif
#endif
