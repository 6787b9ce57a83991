/* Internals shared by the head-training files (not public API): src/train.c (split, epochs loop),
 * src/crossfit.c (K-fold cross-fitting) and src/metrics_json.c. */
#ifndef TBERT_TRAIN_INTERNAL_H
#define TBERT_TRAIN_INTERNAL_H

#include "tbert/train.h"

/* ---- train_data.c: the labelled documents of a run ---- */
typedef struct {
    int n, cap;
    tbert_doc *docs;
    char **label;   /* borrowed (table) or static "ham"/"spam" */
    char **owned;   /* strings to free */
    int n_owned, cap_owned;
    int64_t *line;  /* table line numbers (or item index for mail) */
    tbert_table table;
    bool have_table;
} tbert_labelled;

/* Appends the rows of --data (o->data, o->table) to L. */
tbert_status tbert_labelled_read_table(const tbert_train_opts *o, tbert_labelled *L, tbert_error *err);
/* Appends every item of the mail inputs with this label: a message's document through tbert_mail_document,
 * a table row's text as it is. Items that cannot be read or parsed are skipped with a line on stderr and
 * counted in *skipped. */
tbert_status tbert_labelled_read_mail(const char *const *paths, int n, char *label, tbert_labelled *L, int *skipped, tbert_error *err);
void tbert_labelled_free(tbert_labelled *L);

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
