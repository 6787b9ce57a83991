/* The operating point of a binary head and how it is re-chosen (src/threshold.c, `tbert threshold`).
 *
 * CKPT_DIR/oof.safetensors keeps the held-out scores the threshold was chosen on: the out-of-fold
 * P(positive) of every training example under cross-fitting (--cv), else the validation split's, else (no
 * held-out part) the training split's own (source "train": in-sample, optimistic). Tensors: score (F32 [n]),
 * positive (U8 [n], 1 = the positive class). __metadata__: format "tbert-oof", format_version "1", source
 * ("out-of-fold" | "validation" | "train"), rule (the threshold spec), threshold ("%.9g"), labels (JSON),
 * positive (label). Written atomically like every checkpoint file; older head folders have none. */
#ifndef TBERT_THRESHOLD_H
#define TBERT_THRESHOLD_H

#include "tbert/common.h"
#include "tbert/recipe.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TBERT_OOF_FILE "oof.safetensors"
#define TBERT_CI_LEVEL 0.95

typedef struct {
    int n;
    float *score; /* n */
    bool *is_pos; /* n */
    char source[16];
    char rule[96];
    float threshold;
} tbert_oof;
void tbert_oof_free(tbert_oof *o);

tbert_status tbert_oof_save(const char *dir, const tbert_oof *o, const tbert_recipe *r, tbert_error *err);
/* dir/oof.safetensors; TBERT_E_IO with "has no stored out-of-fold scores" when absent. */
tbert_status tbert_oof_load(const char *dir, tbert_oof *o, tbert_error *err);

/* Counts at a threshold (positive when score >= threshold) with 95% Clopper-Pearson intervals. */
typedef struct {
    float threshold;
    int64_t n_neg, fp, n_pos, tp;
    double fpr, fpr_lo, fpr_hi, recall, recall_lo, recall_hi;
    double fpr_target;      /* the rule's fpr=X, NAN when it has none */
    int64_t neg_needed;     /* negatives needed to show fpr_target at 95% (tbert_negatives_needed), 0 without */
    char warning[256];      /* "" or the one line: too few negatives for fpr_target */
} tbert_operating_point;

void tbert_operating_point_compute(int n, const float *score, const bool *is_pos, float threshold, const char *rule,
                                   tbert_operating_point *op);
/* {"source", "rule", "threshold", "n_negative", "false_positives", "fpr", "fpr_ci95": [lo, hi], "n_positive",
 *  "true_positives", "recall", "recall_ci95": [lo, hi], "confidence": 0.95[, "fpr_target", "negatives_needed",
 *  "warning"]} as a string (malloc'd; NULL on OOM). */
char *tbert_operating_point_json(const tbert_operating_point *op, const char *source, const char *rule);

/* `tbert threshold`: re-chooses the threshold of the head in dir from its stored scores with rule (a
 * --threshold spec), rewrites best.safetensors' threshold (atomically; its recorded held-out metrics too),
 * updates metrics.json ("threshold", the held-out split's metrics, "operating_point") and oof.safetensors'
 * rule and threshold. op receives the new operating point, oof_source its source. */
tbert_status tbert_threshold_repick(const char *dir, const char *rule, tbert_operating_point *op, char *oof_source, size_t cap,
                                    tbert_error *err);

#ifdef __cplusplus
}
#endif
#endif
