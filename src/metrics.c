/* Classification metrics, ranking metrics with ties, curves and threshold choice (include/tbert/metrics.h). */
#include "tbert/metrics.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int tbert_predict_class(int n_classes, const float *p, int positive, float threshold) {
    if (positive >= 0 && n_classes == 2) return p[positive] >= threshold ? positive : 1 - positive;
    int best = 0;
    for (int k = 1; k < n_classes; k++)
        if (p[k] > p[best]) best = k;
    return best;
}

void tbert_metrics_free(tbert_metrics *m) {
    if (!m) return;
    free(m->confusion);
    m->confusion = NULL;
}

/* ---- ranking ---- */
typedef struct {
    float s;
    bool pos;
} scored;

static int by_score_desc(const void *a, const void *b) {
    float x = ((const scored *)a)->s, y = ((const scored *)b)->s;
    return (x < y) - (x > y);
}

static scored *sorted_desc(int n, const float *score, const bool *is_pos) {
    scored *v = tbert_malloc_array((size_t)(n > 0 ? n : 1), sizeof *v);
    if (!v) return NULL;
    for (int i = 0; i < n; i++) v[i] = (scored){score[i], is_pos[i]};
    qsort(v, (size_t)n, sizeof *v, by_score_desc);
    return v;
}

double tbert_roc_auc(int n, const float *score, const bool *is_pos) {
    scored *v = sorted_desc(n, score, is_pos);
    if (!v) return NAN;
    /* walk groups of tied scores from the top: each negative in a group beats-or-ties the positives above */
    double npos = 0, nneg = 0, pairs = 0;
    for (int i = 0; i < n;) {
        int j = i;
        double gp = 0, gn = 0;
        while (j < n && v[j].s == v[i].s) {
            if (v[j].pos) gp++;
            else gn++;
            j++;
        }
        pairs += gn * npos + 0.5 * gn * gp; /* positives above this group outrank its negatives; ties count half */
        npos += gp;
        nneg += gn;
        i = j;
    }
    free(v);
    if (npos == 0 || nneg == 0) return NAN;
    return pairs / (npos * nneg);
}

/* Walks distinct thresholds from the top; calls emit(tp, fp) after each group. */
typedef struct {
    int n;
    double *tp, *fp;
    double P, N;
} sweep;

static bool sweep_make(int n, const float *score, const bool *is_pos, sweep *sw) {
    scored *v = sorted_desc(n, score, is_pos);
    memset(sw, 0, sizeof *sw);
    if (!v) return false;
    sw->tp = tbert_malloc_array((size_t)n + 1, sizeof(double));
    sw->fp = tbert_malloc_array((size_t)n + 1, sizeof(double));
    if (!sw->tp || !sw->fp) {
        free(v);
        free(sw->tp);
        free(sw->fp);
        return false;
    }
    double tp = 0, fp = 0;
    for (int i = 0; i < n;) {
        int j = i;
        while (j < n && v[j].s == v[i].s) {
            if (v[j].pos) tp++;
            else fp++;
            j++;
        }
        sw->tp[sw->n] = tp;
        sw->fp[sw->n] = fp;
        sw->n++;
        i = j;
    }
    sw->P = tp;
    sw->N = fp;
    free(v);
    return true;
}

static void sweep_free(sweep *sw) {
    free(sw->tp);
    free(sw->fp);
}

double tbert_pr_auc(int n, const float *score, const bool *is_pos) {
    sweep sw;
    if (!sweep_make(n, score, is_pos, &sw)) return NAN;
    double ap = NAN;
    if (sw.P > 0) {
        ap = 0;
        double prev_r = 0;
        for (int k = 0; k < sw.n; k++) {
            double r = sw.tp[k] / sw.P, p = sw.tp[k] / (sw.tp[k] + sw.fp[k]);
            ap += (r - prev_r) * p;
            prev_r = r;
        }
    }
    sweep_free(&sw);
    return ap;
}

static tbert_status curve(int n, const float *score, const bool *is_pos, bool roc, double **x, double **y, int *npts) {
    sweep sw;
    *x = *y = NULL;
    *npts = 0;
    if (!sweep_make(n, score, is_pos, &sw)) return TBERT_E_NOMEM;
    *x = tbert_malloc_array((size_t)sw.n + 1, sizeof(double));
    *y = tbert_malloc_array((size_t)sw.n + 1, sizeof(double));
    if (!*x || !*y) {
        free(*x);
        free(*y);
        *x = *y = NULL;
        sweep_free(&sw);
        return TBERT_E_NOMEM;
    }
    (*x)[0] = 0;
    (*y)[0] = roc ? 0 : 1;
    for (int k = 0; k < sw.n; k++) {
        if (roc) {
            (*x)[k + 1] = sw.N > 0 ? sw.fp[k] / sw.N : 0;
            (*y)[k + 1] = sw.P > 0 ? sw.tp[k] / sw.P : 0;
        } else {
            (*x)[k + 1] = sw.P > 0 ? sw.tp[k] / sw.P : 0;
            (*y)[k + 1] = sw.tp[k] / (sw.tp[k] + sw.fp[k]);
        }
    }
    *npts = sw.n + 1;
    sweep_free(&sw);
    return TBERT_OK;
}

tbert_status tbert_roc_curve(int n, const float *score, const bool *is_pos, double **x, double **y, int *npts) {
    return curve(n, score, is_pos, true, x, y, npts);
}
tbert_status tbert_pr_curve(int n, const float *score, const bool *is_pos, double **x, double **y, int *npts) {
    return curve(n, score, is_pos, false, x, y, npts);
}

/* ---- classification metrics ---- */
tbert_status tbert_metrics_compute(int n, int C, const float *probs, const int *y, int positive, float threshold,
                                   tbert_metrics *m, tbert_error *err) {
    memset(m, 0, sizeof *m);
    if (C < 2 || C > TBERT_METRICS_MAX_CLASSES) return tbert_fail(err, TBERT_E_ARG, "metrics: %d classes out of range", C);
    m->confusion = tbert_calloc_array((size_t)C * (size_t)C, sizeof(int64_t));
    bool *is_pos = tbert_malloc_array((size_t)(n > 0 ? n : 1), sizeof(bool));
    float *col = tbert_malloc_array((size_t)(n > 0 ? n : 1), sizeof(float));
    if (!m->confusion || !is_pos || !col) {
        free(is_pos);
        free(col);
        tbert_metrics_free(m);
        return tbert_fail(err, TBERT_E_NOMEM, "metrics: out of memory");
    }
    m->n = n;
    m->n_classes = C;
    m->loss = NAN;
    bool binary = positive >= 0 && C == 2;
    m->threshold = binary ? threshold : NAN;
    int64_t correct = 0;
    for (int i = 0; i < n; i++) {
        int pred = tbert_predict_class(C, probs + (size_t)i * C, binary ? positive : -1, threshold);
        m->confusion[(size_t)y[i] * C + pred]++;
        correct += pred == y[i];
    }
    m->accuracy = n > 0 ? (double)correct / n : NAN;
    for (int k = 0; k < C; k++) {
        int64_t tp = m->confusion[(size_t)k * C + k], col_sum = 0, row_sum = 0;
        for (int j = 0; j < C; j++) {
            col_sum += m->confusion[(size_t)j * C + k];
            row_sum += m->confusion[(size_t)k * C + j];
        }
        m->support[k] = row_sum;
        m->precision[k] = col_sum ? (double)tp / col_sum : 0.0; /* scikit-learn's zero_division=0 */
        m->recall[k] = row_sum ? (double)tp / row_sum : 0.0;
        double ps = m->precision[k] + m->recall[k];
        m->f1[k] = ps > 0 ? 2 * m->precision[k] * m->recall[k] / ps : 0.0;
    }
    /* ranking metrics: binary on P(positive); multi-class macro one-vs-rest over classes present */
    int first = binary ? positive : 0, last = binary ? positive : C - 1;
    double roc = 0, pr = 0;
    int used = 0;
    for (int k = first; k <= last; k++) {
        for (int i = 0; i < n; i++) {
            col[i] = probs[(size_t)i * C + k];
            is_pos[i] = y[i] == k;
        }
        double r = tbert_roc_auc(n, col, is_pos), p = tbert_pr_auc(n, col, is_pos);
        if (isnan(r) || isnan(p)) continue;
        roc += r;
        pr += p;
        used++;
    }
    m->roc_auc = used ? roc / used : NAN;
    m->pr_auc = used ? pr / used : NAN;
    free(is_pos);
    free(col);
    return TBERT_OK;
}

/* ---- threshold ---- */
/* the whole of s is a number in [lo, hi] */
static bool parse_in(const char *s, double lo, double hi, double *out) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !isfinite(v) || v < lo || v > hi) return false;
    *out = v;
    return true;
}

static bool parse_unit(const char *s, double *out) { return parse_in(s, 0, 1, out); }

/* "fpr=X", "fpr=X,recall=R" or "fpr=X,recall=R,margin=M" (R, M = -1 when absent; M in logits, 0..50) */
static bool parse_fpr_spec(const char *spec, double *fpr, double *recall, double *margin) {
    if (strncmp(spec, "fpr=", 4)) return false;
    char buf[96];
    if (strlen(spec) >= sizeof buf) return false;
    snprintf(buf, sizeof buf, "%s", spec + 4);
    *recall = *margin = -1;
    char *comma = strchr(buf, ',');
    if (comma) {
        *comma = 0;
        char *next = strchr(comma + 1, ',');
        if (next) {
            *next = 0;
            if (strncmp(next + 1, "margin=", 7) || !parse_in(next + 8, 0, 50, margin)) return false;
        }
        if (strncmp(comma + 1, "recall=", 7) || !parse_unit(comma + 8, recall)) return false;
    }
    return parse_unit(buf, fpr);
}

tbert_status tbert_threshold_parse(const char *spec, tbert_error *err) {
    double v = 0, r = 0;
    if (!spec || !strcmp(spec, "f1")) return TBERT_OK;
    double m = 0;
    if (parse_fpr_spec(spec, &v, &r, &m)) return TBERT_OK;
    if (parse_unit(spec, &v)) return TBERT_OK;
    return tbert_fail(err, TBERT_E_ARG,
                      "--threshold expects f1, fpr=X, fpr=X,recall=R, fpr=X,recall=R,margin=M or a number in [0,1], got '%s'",
                      spec ? spec : "");
}

double tbert_threshold_fpr_target(const char *spec) {
    double v, r, m;
    return spec && parse_fpr_spec(spec, &v, &r, &m) ? v : NAN;
}

static int cmp_float_asc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* midpoint between the lowest score called positive (group k) and the next lower distinct score */
static float cut_below(const scored *v, int n, int end_of_group) {
    float hi = v[end_of_group - 1].s;
    if (end_of_group >= n) return hi;
    float lo = v[end_of_group].s;
    float mid = (float)(0.5 * ((double)hi + (double)lo));
    return mid > lo ? mid : hi; /* adjacent floats: keep the group's own score (>= includes it) */
}

tbert_status tbert_threshold_choose(const char *spec, int n, const float *score, const bool *is_pos, float *out,
                                    tbert_error *err) {
    tbert_status st = tbert_threshold_parse(spec, err);
    if (st) return st;
    double v = 0.5;
    if (spec && strcmp(spec, "f1") && strncmp(spec, "fpr=", 4)) {
        parse_unit(spec, &v);
        *out = (float)v;
        return TBERT_OK;
    }
    bool f1 = !spec || !strcmp(spec, "f1");
    double max_fpr = 0, min_recall = -1, margin = -1;
    if (!f1) parse_fpr_spec(spec, &max_fpr, &min_recall, &margin);
    *out = 0.5f;
    if (n <= 0) return TBERT_OK;
    scored *s = sorted_desc(n, score, is_pos);
    if (!s) return tbert_fail(err, TBERT_E_NOMEM, "threshold: out of memory");
    double P = 0, N = 0;
    for (int i = 0; i < n; i++) {
        if (s[i].pos) P += 1;
        else N += 1;
    }
    if (P == 0 || N == 0) {
        free(s);
        return TBERT_OK; /* nothing to separate on this split: keep 0.5 */
    }
    double tp = 0, fp = 0, best = -1;
    float best_t = 0.5f;
    bool found = false;
    for (int i = 0; i < n;) {
        int j = i;
        while (j < n && s[j].s == s[i].s) {
            if (s[j].pos) tp++;
            else fp++;
            j++;
        }
        if (f1) {
            double f = 2 * tp / (2 * tp + fp + (P - tp));
            if (f > best) {
                best = f;
                best_t = cut_below(s, n, j);
                found = true;
            }
        } else if (fp / N <= max_fpr) {
            best_t = cut_below(s, n, j);
            found = true;
        } else {
            break;
        }
        i = j;
    }
    if (!found) best_t = nextafterf(s[0].s, INFINITY); /* even the top score exceeds the FPR: call nothing positive */
    if (!f1 && min_recall >= 0) {
        /* never keep more than min_recall of the validation positives: the (1 - R) quantile of their scores
         * (ascending, linear interpolation, numpy's default) is a floor for the threshold */
        float *ps = malloc((size_t)P * sizeof *ps);
        if (!ps) {
            free(s);
            return tbert_fail(err, TBERT_E_NOMEM, "threshold: out of memory");
        }
        int np = 0;
        for (int i = 0; i < n; i++)
            if (s[i].pos) ps[np++] = s[i].s;
        qsort(ps, (size_t)np, sizeof *ps, cmp_float_asc);
        double h = (1.0 - min_recall) * (np - 1);
        int lo = (int)floor(h);
        double q = lo + 1 < np ? ps[lo] + (h - lo) * ((double)ps[lo + 1] - ps[lo]) : ps[np - 1];
        if (margin >= 0) {
            /* but never more than `margin` logits above the fpr cut itself: when the positives score far above
             * the negatives here, new positives that score lower (mail from another time or source) are
             * still caught while they stay well clear of the negatives. Anchored at the fpr cut, not at the
             * single highest negative, which one odd example can move by logits. */
            double pc = fmin(fmax((double)best_t, 1e-12), 1 - 1e-12);
            double ceiling = 1.0 / (1.0 + exp(-(log(pc / (1 - pc)) + margin)));
            if (ceiling < q) q = ceiling;
        }
        if ((float)q > best_t) best_t = (float)q;
        free(ps);
    }
    *out = best_t;
    free(s);
    return TBERT_OK;
}
