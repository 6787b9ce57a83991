/* Internals shared by the head-training files (not public API): src/train.c (split, epochs loop),
 * src/crossfit.c (K-fold cross-fitting) and src/metrics_json.c. */
#ifndef TBERT_TRAIN_INTERNAL_H
#define TBERT_TRAIN_INTERNAL_H

#include "tbert/train.h"

/* qsort comparator of ints, ascending */
int tbert_cmp_int(const void *a, const void *b);
/* tbert_fit without cross-fitting: epochs on train_idx, best epoch on val_idx (src/train.c) */
tbert_status tbert_fit_once(const tbert_fit_data *d, const tbert_hparams *hp, const tbert_fit_ckpt *ck, tbert_fit_result *r,
                            tbert_error *err);
/* tbert_fit with hp->cv_folds >= 2 (src/crossfit.c) */
tbert_status tbert_fit_cv(const tbert_fit_data *d, const tbert_hparams *hp, const tbert_fit_ckpt *ck, tbert_fit_result *r,
                          tbert_error *err);
/* {"train": {...}, "val": {...}, "test": {...}} of a fit (a split without examples is left out); malloc'd, NULL on OOM
 * (src/metrics_json.c) */
char *tbert_fit_metrics_json(const tbert_fit_result *r, const tbert_recipe *rec);
/* dir/metrics.json (atomic): best epoch, epochs, threshold, each split's metrics, timings, cache hit
 * (src/metrics_json.c) */
tbert_status tbert_train_metrics_write(const char *dir, const tbert_train_result *res, const tbert_recipe *r, tbert_error *err);

#endif
