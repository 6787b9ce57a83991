/* Classification metrics: accuracy, per-class precision/recall/F1/support, confusion matrix, ROC-AUC and
 * PR-AUC (average precision) with ties handled, ROC/PR curves for reports, and the decision-threshold
 * choice (f1 | fpr=X | VALUE) made on a validation split. */
#ifndef TBERT_METRICS_H
#define TBERT_METRICS_H

#include "tbert/common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TBERT_METRICS_MAX_CLASSES 128

typedef struct {
    int n, n_classes;
    double accuracy;
    double precision[TBERT_METRICS_MAX_CLASSES], recall[TBERT_METRICS_MAX_CLASSES], f1[TBERT_METRICS_MAX_CLASSES];
    int64_t support[TBERT_METRICS_MAX_CLASSES];
    int64_t *confusion; /* n_classes x n_classes, row = true class, column = predicted (malloc'd) */
    double roc_auc, pr_auc; /* binary: of P(positive); multi-class: macro one-vs-rest; NAN when undefined */
    double loss;            /* filled by the caller when known, else NAN */
    float threshold;        /* binary threshold used (NAN for multi-class) */
} tbert_metrics;

/* Predicted class of a row of probabilities: binary (positive >= 0): positive when p[positive] >= threshold;
 * multi-class (positive < 0): argmax (lowest index on ties). */
int tbert_predict_class(int n_classes, const float *probs_row, int positive, float threshold);

/* Metrics of n rows of probabilities (n x C) against true classes y. */
tbert_status tbert_metrics_compute(int n, int n_classes, const float *probs, const int *y, int positive, float threshold,
                                   tbert_metrics *out, tbert_error *err);
void tbert_metrics_free(tbert_metrics *m);

/* ROC-AUC = P(score of a random positive > a random negative) + 0.5 P(equal) (Mann-Whitney with average ranks).
 * NAN when a class is absent. */
double tbert_roc_auc(int n, const float *score, const bool *is_pos);
/* Average precision: sum over distinct thresholds (descending) of (R_k - R_{k-1}) * P_k, tied scores
 * forming one threshold (scikit-learn's average_precision_score). NAN without positives. */
double tbert_pr_auc(int n, const float *score, const bool *is_pos);

/* Curve points at each distinct threshold, starting at (0,0) for ROC (x = FPR, y = TPR) and at
 * (recall 0, precision 1) for PR (x = recall, y = precision). Arrays malloc'd; *npts points. */
tbert_status tbert_roc_curve(int n, const float *score, const bool *is_pos, double **x, double **y, int *npts);
tbert_status tbert_pr_curve(int n, const float *score, const bool *is_pos, double **x, double **y, int *npts);

/* Threshold spec: "f1" (maximise F1 of the positive class; the threshold is the midpoint between the
 * lowest score called positive and the next lower distinct score), "fpr=X" (the lowest threshold whose
 * false-positive rate is <= X, same midpoint rule), "fpr=X,recall=R" (the fpr=X threshold, raised to the
 * (1 - R) quantile of the positives' scores (ascending, linear interpolation) when that is higher: the
 * zero-FP cut that never keeps more than R of the validation positives, a margin for mail unlike the
 * validation mail), "fpr=X,recall=R,margin=M" (the same, but that raise never goes more than M logits
 * above the fpr=X cut: a ceiling for when the positives score far above the negatives), or a number VALUE
 * in [0,1]. */
tbert_status tbert_threshold_parse(const char *spec, tbert_error *err);
tbert_status tbert_threshold_choose(const char *spec, int n, const float *score, const bool *is_pos, float *out,
                                    tbert_error *err);

#ifdef __cplusplus
}
#endif
#endif
