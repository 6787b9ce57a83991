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
/* The X of an "fpr=X..." spec; NAN for any other spec (f1, VALUE, NULL). */
double tbert_threshold_fpr_target(const char *spec);
tbert_status tbert_threshold_choose(const char *spec, int n, const float *score, const bool *is_pos, float *out,
                                    tbert_error *err);

/* ---- binomial intervals (src/binom.c) ----
 * Regularized incomplete beta I_x(a, b) (a, b > 0, x in [0,1]) by its continued fraction (modified Lentz),
 * evaluated on the side where it converges (x < (a+1)/(a+b+2), else 1 - I_{1-x}(b, a)); relative accuracy
 * about 1e-13 for the a, b our counts give. NAN for arguments outside the domain. */
double tbert_beta_inc(double a, double b, double x);
/* The q-quantile of Beta(a, b): the x in [0,1] with I_x(a, b) = q, by bisection to 1e-15 (q in [0,1]). */
double tbert_beta_quantile(double q, double a, double b);
/* Clopper-Pearson interval of k successes in n trials at confidence `conf` (0.95: alpha = 0.05, split evenly
 * between the tails): lo = Beta(k, n-k+1) quantile alpha/2 (0 when k = 0), hi = Beta(k+1, n-k) quantile
 * 1 - alpha/2 (1 when k = n). n = 0: [0, 1]. Returns false for k outside [0, n] or conf outside (0,1). */
bool tbert_clopper_pearson(int64_t k, int64_t n, double conf, double *lo, double *hi);
/* The fewest negatives that can show a false-positive rate of at most `fpr` at confidence `conf`: with 0 false
 * positives among n, the Clopper-Pearson upper bound 1 - ((1-conf)/2)^(1/n) is <= fpr from this n on
 * (about 3.7 / fpr at 95%). 0 for fpr >= 1; INT64_MAX for fpr <= 0. */
int64_t tbert_negatives_needed(double fpr, double conf);

#ifdef __cplusplus
}
#endif
#endif
