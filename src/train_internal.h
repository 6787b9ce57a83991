/* Internals shared by the head-training files (not public API): src/train.c (split, epochs loop),
 * src/crossfit.c (K-fold cross-fitting) and src/metrics_json.c. */
#ifndef TBERT_TRAIN_INTERNAL_H
#define TBERT_TRAIN_INTERNAL_H

#include <glib.h>

#include "tbert/checkpoint.h"
#include "tbert/train.h"

struct cJSON;

/* ---- train_data.c: the labelled documents of a run ---- */
typedef struct {
    int n, cap;
    tbert_doc *docs;
    char **label;   /* borrowed (table) or static "ham"/"spam" */
    char **owned;   /* strings to free */
    int n_owned, cap_owned;
    int64_t *line;  /* table line numbers (or item index for mail) */
    char **name;    /* mail: the message's path ("path @ offset" inside an mbox), owned; tables: NULL */
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

/* ---- report_mail.c: the mail part of report.html (binary heads) ---- */
/* Appends the ROC on a log false-positive axis with the operating point, the per-class score histograms with
 * the threshold, recall at FPR 0.1/0.5/1%, and the misclassified items (names may be NULL). */
void tbert_report_mail_section(GString *s, int n, const float *score, const bool *pos, const char *const *names, double thr,
                               const char *pos_name, const char *neg_name, const char *which);
/* Best recall with at most floor(target * negatives) false positives (positives strictly above the cut);
 * *k_out: false positives allowed, *cut_out: the score to beat (-inf: any). NaN without positives. */
double tbert_recall_at_fpr(int n, const float *score, const bool *pos, double target, int *k_out, double *cut_out);

/* qsort comparator of ints, ascending */
int tbert_cmp_int(const void *a, const void *b);
/* tbert_fit without cross-fitting: epochs on train_idx, best epoch on val_idx (src/train.c) */
tbert_status tbert_fit_once(const tbert_fit_data *d, const tbert_hparams *hp, const tbert_fit_ckpt *ck, tbert_fit_result *r,
                            tbert_error *err);
/* the "train" metadata of a checkpoint: settings + per-epoch history of the first epochs_done epochs (src/train.c) */
char *tbert_fit_state_json(const char *settings, const tbert_fit_result *r, int epochs_done, double best_score);
/* ck->out_dir/file with this head, threshold and metadata (adam, rng NULL for best.safetensors) (src/train.c) */
tbert_status tbert_fit_save_ckpt(const tbert_fit_ckpt *ck, const char *file, const tbert_head *h, const tbert_adam *adam,
                                 const tbert_rng *rng, float threshold, int epoch, int best_epoch, const char *train_json,
                                 const char *metrics_json, tbert_error *err);
/* the path ck->out_dir/file and the metadata of a fit checkpoint with this threshold, epochs and JSON (borrowed) (src/train.c) */
void tbert_fit_ckpt_meta(const tbert_fit_ckpt *ck, const char *file, float threshold, int epoch, int best_epoch,
                         const char *train_json, const char *metrics_json, char *path, size_t path_size, tbert_ckpt_meta *meta);
/* --resume: the first `epochs` entries of train_loss/train_acc/val_loss/val_acc of a checkpoint's "train" JSON into r
 * (null: NaN); false when one is missing, of another length or not numbers (src/train.c) */
bool tbert_fit_restore_history(const struct cJSON *train_json, tbert_fit_result *r, int epochs);
/* crash tests: N when TBERT_TEST_KILL_AT is "what:N" (the run dies after step N), else -1 (src/train.c) */
int tbert_fit_kill_at(const char *what);
/* One head whose logits are the mean of the K heads' logits (same shape each): a linear head averages the
 * weights; an MLP head of hidden Hd becomes one of hidden K*Hd (fc1 stacked, fc2 side by side scaled 1/K,
 * fc2.bias averaged). The checkpoint format is the ordinary one (src/crossfit.c). */
tbert_status tbert_head_ensemble(tbert_head *const *heads, int K, tbert_head **out, tbert_error *err);
/* tbert_fit with hp->cv_folds >= 2 (src/crossfit.c) */
tbert_status tbert_fit_cv(const tbert_fit_data *d, const tbert_hparams *hp, const tbert_fit_ckpt *ck, tbert_fit_result *r,
                          tbert_error *err);
/* {"train": {...}, "val": {...}, "test": {...}} of a fit (a split without examples is left out); malloc'd, NULL on OOM
 * (src/metrics_json.c) */
char *tbert_fit_metrics_json(const tbert_fit_result *r, const tbert_recipe *rec);
/* dir/metrics.json (atomic): best epoch, epochs, threshold, each split's metrics, timings, cache hit
 * (src/metrics_json.c) */
tbert_status tbert_train_metrics_write(const char *dir, const tbert_train_result *res, const tbert_recipe *r, tbert_error *err);

/* Appends t to s with the HTML specials (< > & " ') as entities: report.html and its mail sections (src/report.c). */
void tbert_html_escape(GString *s, const char *t);

/* ---- fine-tuning (issue 15: `tbert train --finetune K`; src/finetune.c) ---- */
/* K stratified folds of idx[0..n): per class, shuffled with the seed, dealt round-robin; fold[i] = fold of idx[i]
 * (src/crossfit.c; scratch holds n ints) */
void tbert_cv_assign_folds(const tbert_fit_data *d, const int *idx, int n, int K, uint64_t seed, int *fold, int *scratch);
/* The bookkeeping that head cross-fitting (src/crossfit.c) and fine-tune cross-fitting (src/finetune.c) share:
 * folds, per-fold index lists, the folds' best epochs, their mean history and the out-of-fold probabilities. */
typedef struct {
    int K, n, C, E;
    int *fold, *scratch, *ftr, *fva, *best_epochs, *y;
    float *oof, *sc;
    bool *pos;
    double *hist[4]; /* train_loss, train_acc, val_loss, val_acc: the folds' mean per epoch */
} tbert_cv_work;
/* Checks d and hp for K = hp->cv_folds folds of E epochs, allocates w and assigns the folds (who: the error
 * prefix of the out-of-memory line). On error w holds nothing to free but is safe to tbert_cv_work_free. */
tbert_status tbert_cv_work_init(tbert_cv_work *w, const tbert_fit_data *d, const tbert_hparams *hp, int E, const char *who,
                                tbert_error *err);
/* the data and settings of fold k's fit: trains on the other folds, validates on fold k, quiet, own seed */
void tbert_cv_fold_setup(const tbert_cv_work *w, const tbert_fit_data *d, const tbert_hparams *hp, int k, tbert_fit_data *fd,
                         tbert_hparams *fh);
/* records fold k's fit: best epoch, history (mean over the folds), out-of-fold probabilities */
void tbert_cv_fold_record(tbert_cv_work *w, int k, const tbert_fit_result *fr);
/* after all folds: the threshold by hp->threshold on the out-of-fold scores (0.5 without a binary positive class),
 * *pos_cls (-1: none) and *median_epochs (the folds' median best epoch; sorts w->best_epochs) */
tbert_status tbert_cv_threshold(tbert_cv_work *w, const tbert_fit_data *d, const tbert_hparams *hp, float *thr, int *pos_cls,
                                int *median_epochs, tbert_error *err);
void tbert_cv_work_free(tbert_cv_work *w);
/* the head path's mean loss / accuracy / probabilities of h on rows idx[0..n) of d (src/train.c) */
tbert_status tbert_fit_eval(const tbert_head *h, const tbert_fit_data *d, const int *idx, int n, double *loss, double *acc,
                            float *probs, tbert_error *err);
/* the end of the head path for r->best: the threshold on validation, else train (when choose; else r->threshold as
 * set), then train/val/test metrics and val/test probabilities (src/train.c) */
tbert_status tbert_fit_finish(tbert_fit_result *r, const tbert_fit_data *d, const char *threshold_spec, bool choose,
                              tbert_error *err);

/* the fine-tuning settings of a run */
typedef struct {
    int k;                  /* trained top layers (1..layers) */
    bool embeddings;        /* --finetune all: the embeddings train too */
    double encoder_lr;      /* peak learning rate of the encoder tensors (--encoder-lr) */
    int epochs;             /* --finetune-epochs */
    double warmup_fraction; /* of all optimiser steps (0.1) */
    float hidden_dropout, attn_dropout; /* --finetune-dropout on: 0.1 / 0.1; off: 0 */
    double clip_norm;       /* 1.0 */
    int head_phase;         /* tbert_ft_head_phase (--finetune-head) */
    tbert_encoder_opts enc; /* how the frozen lower layers run (device, precision, threads) */
    bool quiet;
} tbert_ft_opts;

/* The documents' windows and the frozen lower layers' output (src/finetune.c). */
typedef struct tbert_ft_data tbert_ft_data;
/* Tokenizes the n docs into the recipe's windows and, when first_layer = r->layers - k > 0, runs the frozen layers
 * 0..first_layer-1 once per window (the row store, when not NULL, keeps their output by model, layer cut, max_len,
 * windows, dtype bf16 and precision, keyed by the text), kept in memory as bf16. first_layer == 0: token ids only.
 * *from_store counts the documents read from the store. */
tbert_status tbert_ft_data_build(const tbert_recipe *r, const tbert_model *m, const tbert_featurizer *fz, int n,
                                 const tbert_doc *docs, const tbert_ft_opts *fo, tbert_store *store, tbert_ft_data **out,
                                 int *from_store, tbert_error *err);
void tbert_ft_data_free(tbert_ft_data *fd);
/* tbert_fit with the top fo->k layers trained together with the head: fo->epochs epochs, AdamW over head and
 * encoder, linear warm-up and decay, clipping; the dense block of each row is recomputed by the trained layers (the
 * rows' own dense block is not read); best epoch and threshold as the head path; checkpoints each epoch with the
 * trained tensors (docs/architecture.md, "Fine-tuning"); cross-fitting when hp->cv_folds >= 2 (the folds fine-tune too). */
tbert_status tbert_fit_finetune(const tbert_fit_data *d, const tbert_hparams *hp, const tbert_ft_opts *fo, const tbert_model *m,
                                const tbert_ft_data *fd, const tbert_fit_ckpt *ck, tbert_fit_result *r, tbert_error *err);

#endif
