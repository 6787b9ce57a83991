/* Training pipeline of `tbert train` (src/train.c): stratified split, features computed once (cached),
 * epochs over shuffled features with the hand-written head and AdamW, validation each epoch, best epoch
 * kept, threshold chosen on validation, test metrics at the end, checkpoints every epoch, --resume. */
#ifndef TBERT_TRAIN_H
#define TBERT_TRAIN_H

#include "tbert/common.h"
#include "tbert/dataset.h"
#include "tbert/encoder.h"
#include "tbert/head.h"
#include "tbert/metrics.h"
#include "tbert/progress.h"
#include "tbert/recipe.h"
#include "tbert/threshold.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Head training settings. */
typedef struct {
    int hidden;           /* 0 = linear head */
    float dropout;
    int epochs, batch;
    double lr, weight_decay;
    uint64_t seed;
    bool class_weights_auto; /* w_c = n / (C * n_c) */
    const char *threshold; /* f1 | fpr=X | VALUE */
    tbert_progress_mode progress;
    int cuda_device;       /* >= 0: train steps on this CUDA device (src/head_cuda.c); -1: CPU */
    int cv_folds;          /* >= 2: cross-fitted threshold and epoch count, then one head on all of train (tbert_fit) */
    bool keep_last;        /* the last epoch is the one kept (no validation to pick by) */
} tbert_hparams;

/* Defaults of a recipe preset ("text", "seed", "mail"). */
void tbert_hparams_preset(const char *recipe_name, tbert_hparams *hp);

/* Features in memory with their classes and the split. */
typedef struct {
    int n_classes;
    int positive; /* binary: the positive class; -1 multi-class */
    size_t dim;          /* tbert_rows_dim(X) */
    const tbert_rows *X; /* n rows: dense block + sparse blocks (include/tbert/rows.h) */
    const int *y;   /* n */
    int n_train, n_val, n_test;
    const int *train_idx, *val_idx, *test_idx;
} tbert_fit_data;

typedef struct {
    int epochs_run, best_epoch;
    double *train_loss, *train_acc, *val_loss, *val_acc; /* per epoch (epochs entries; NAN when no val) */
    float threshold;
    tbert_head *best;                 /* weights of the best epoch */
    tbert_metrics train, val, test;   /* of the best head at the chosen threshold (n = 0 when a split is empty) */
    float *val_probs, *test_probs;    /* n_val x C, n_test x C (for curves) */
    int n_oof;                        /* cross-validation: val_probs holds the out-of-fold probabilities of
                                         the n_oof = n_train examples of train_idx, and val their metrics */
    /* cross-validation: the K fold heads the kept ensemble averages and each training example's fold
     * (fold[i] for train_idx[i]); `tbert learn` warm-starts from them (src/learn_state.c) */
    int n_fold_heads;
    tbert_head **fold_heads;
    int *fold;
    double seconds;
} tbert_fit_result;
void tbert_fit_result_free(tbert_fit_result *r);

/* Checkpointing context for tbert_fit (NULL: no checkpoints). */
typedef struct {
    const char *out_dir;
    tbert_recipe recipe;  /* labels/positive filled; threshold set by fit */
    char data_hash[65];
    bool resume;
    uint64_t seed;             /* recorded in the metadata */
    const char *settings_json; /* what must match on --resume (hyper-parameters, split, recipe) */
} tbert_fit_ckpt;

/* Trains from scratch (or resumes, see ckpt) and fills res. Epoch lines / bars on stderr.
 * With hp->cv_folds = K >= 2 (and no validation split): K heads are trained on stratified folds of the training
 * split, each validated on its held-out fold (best epoch by its loss); the threshold is chosen on the
 * out-of-fold probabilities of every training example, and the head that is kept is the ensemble of the K
 * fold heads (the mean of their logits, written as one ordinary head: src/crossfit.c), so that the scores the
 * threshold was chosen on are what the kept model's members give mail they never saw. res->val is then the
 * out-of-fold view, res->epochs_run the epochs each fold ran (the history is the folds' mean) and
 * res->best_epoch the median of their best epochs. The fold heads are deterministic: --resume recomputes
 * them. */
tbert_status tbert_fit(const tbert_fit_data *d, const tbert_hparams *hp, const tbert_fit_ckpt *ckpt, tbert_fit_result *res,
                       tbert_error *err);

/* Stratified split of n items with classes y into train/val/test index lists (each ascending): per class,
 * the indices are shuffled with the seed, round(n_c * test_fraction) go to test, round(n_c * val_fraction) to
 * validation, the rest to training. Arrays malloc'd. */
tbert_status tbert_split_stratified(int n, const int *y, int n_classes, double val_fraction, double test_fraction, uint64_t seed,
                                    int **train, int *n_train, int **val, int *n_val, int **test, int *n_test, tbert_error *err);

/* The whole `tbert train` job. */
typedef struct {
    const char *data;                /* --data FILE (or NULL with ham/spam) */
    tbert_table_opts table;
    const char *const *ham, *const *spam;
    int n_ham, n_spam;
    const char *out_dir;
    const char *model;
    const char *recipe;              /* NULL: text for --data, mail for --ham/--spam */
    /* recipe overrides: < 0 (or NULL) = keep the preset's */
    int pool, max_len, layers, windows, normalize, lexical_dim, lexical_ngrams;
    int evidence_set; /* -1: the preset's; 0 all evidence tokens; 1 the E1 keys */
    int evidence_dim; /* -1: the preset; 0: evidence into the lexical block (when the preset has evidence); > 0: own block */
    int header_dim;   /* -1: the preset's; 0: no header-word block; > 0: its size */
    double header_weight; /* < 0: the preset's (or 1 when the preset has no header block) */
    /* hyper-parameter overrides */
    int hidden, epochs, batch;
    double lr, weight_decay, dropout;
    uint64_t seed;
    double val_fraction, test_fraction;
    int cv_folds;                    /* -1: the recipe's (mail 5, else 0); >= 2: cross-fitting (tbert_fit) */
    bool class_weights_auto;
    const char *positive, *threshold;
    tbert_device device;
    tbert_precision precision;
    int threads;
    bool resume;
    const char *export_features;     /* write the features: F.npz = the rows (rows.h), else a dense .npy matrix */
    bool quiet;
    const char *command_line;        /* shown in report.html (NULL: none) */
    /* tbert learn (src/learn.c): also train on the messages in LEARNED/ham and LEARNED/spam when they hold any;
     * training.json still records only ham/spam above (the run's own training set) */
    const char *learned_dir;
    /* fine-tuning (issue 15, src/finetune.c): the top `finetune` of the layers in use train with the head (0: the
     * frozen encoder, today's path and bits; TBERT_FINETUNE_ALL: every layer and the embeddings) */
#define TBERT_FINETUNE_ALL (-2)
    int finetune;
    double encoder_lr;    /* default 5e-5 */
    int finetune_epochs;  /* default 4 */
    int finetune_dropout; /* 1: hidden and attention dropout 0.1 (default); 0: off */
    int finetune_head;    /* tbert_ft_head_phase: when the head path trains the head (--finetune-head) */
} tbert_train_opts;
/* --finetune-head: joint = the head trains only with the layers (fine-tuning's schedule); first = the head path
 * (its epochs at its constant rate) trains it on the frozen encoder's rows, then the layers train with it (LP-FT);
 * refit = after the layers, the head path trains a new head on the fine-tuned encoder's rows */
typedef enum { TBERT_FT_HEAD_JOINT = 0, TBERT_FT_HEAD_FIRST = 1, TBERT_FT_HEAD_REFIT = 2 } tbert_ft_head_phase;
const char *tbert_ft_head_phase_name(int phase);
/* the phase named s (joint, first, refit) into *phase; false for another name */
bool tbert_ft_head_phase_parse(const char *s, int *phase);
void tbert_train_opts_default(tbert_train_opts *o);

typedef struct {
    tbert_fit_result fit;
    tbert_recipe recipe;
    int n_docs;
    double seconds_total, seconds_features;
    bool cache_hit;   /* no document needed encoding (every dense block came from the row store) */
    int docs_encoded; /* documents encoded by this run (the others came from the store) */
    char report_path[4096];
    /* binary heads with a held-out part: the operating point on the scores the threshold was chosen on
     * (out-of-fold under cross-fitting, else validation), with its intervals; kept in CKPT_DIR/oof.safetensors */
    bool has_op;
    tbert_operating_point op;
    char op_source[16];
} tbert_train_result;
void tbert_train_result_free(tbert_train_result *r);

tbert_status tbert_train_run(const tbert_train_opts *o, tbert_train_result *res, tbert_error *err);

/* metrics as the JSON object `eval --json` prints (accuracy, roc_auc, pr_auc, threshold, confusion,
 * per_class keyed by label). malloc'd string. */
char *tbert_metrics_json(const tbert_metrics *m, const tbert_recipe *r);

/* report.html (src/report.c): self-contained page with inline SVG plots. */
/* What report.html shows beyond the fit: a name per example (indexed like d->y: a message's path, "path @
 * offset" inside an mbox, "FILE:LINE" for a table row; NULL = none) and the command line (NULL = none). */
typedef struct {
    const char *const *names;
    const char *command_line;
} tbert_report_info;
tbert_status tbert_report_write_ex(const char *path, const tbert_fit_result *fit, const tbert_fit_data *d, const tbert_recipe *r,
                                   const char *settings_json, const tbert_report_info *info, tbert_error *err);
tbert_status tbert_report_write(const char *path, const tbert_fit_result *fit, const tbert_fit_data *d, const tbert_recipe *r,
                                const char *settings_json, tbert_error *err);

#ifdef __cplusplus
}
#endif
#endif
