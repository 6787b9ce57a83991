/* The mail part of report.html (issue 14): for a binary head, the ROC with a logarithmic false-positive axis
 * and the operating point marked, the per-class score histograms with the threshold line, recall at a
 * false-positive rate of 0.1%, 0.5% and 1%, and the misclassified items by name. Called by src/report.c
 * with the scores of the split its curves use (test, else validation or out-of-fold). */
#include <glib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tbert/train.h"
#include "train_internal.h"

static int cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* Best recall with at most floor(target * n_neg) false positives: every positive scored strictly above the
 * (k+1)-th highest negative score (ties counted against, as a cut between equal scores cannot be made). */
double tbert_recall_at_fpr(int n, const float *score, const bool *pos, double target, int *k_out, double *cut_out) {
    int nn = 0, np = 0;
    for (int i = 0; i < n; i++) *(pos[i] ? &np : &nn) += 1;
    float *neg = malloc(((size_t)nn + 1) * sizeof *neg);
    if (!neg || np == 0) {
        free(neg);
        return NAN;
    }
    nn = 0;
    for (int i = 0; i < n; i++)
        if (!pos[i]) neg[nn++] = score[i];
    qsort(neg, (size_t)nn, sizeof *neg, cmp_desc);
    int k = (int)floor(target * nn + 1e-9);
    double cut = k < nn ? neg[k] : -INFINITY;
    int hit = 0;
    for (int i = 0; i < n; i++) hit += pos[i] && score[i] > cut;
    free(neg);
    if (k_out) *k_out = k;
    if (cut_out) *cut_out = cut;
    return (double)hit / np;
}

/* ROC on log10(FPR) from xmin to 1; FPR 0 is drawn at the left edge. */
static void roc_log(GString *s, int n, const float *score, const bool *pos, double thr) {
    const double W = 520, H = 340, L = 60, R = 20, T = 34, B = 48;
    double pw = W - L - R, ph = H - T - B;
    int nn = 0, np = 0;
    for (int i = 0; i < n; i++) *(pos[i] ? &np : &nn) += 1;
    int dec = (int)ceil(log10(fmax(nn, 1) * 2.0)); /* decades: the left edge is below one negative */
    if (dec < 2) dec = 2;
    double lx0 = -dec;
#define PX(fpr) (L + ((fpr) > 0 ? fmax(log10(fpr), lx0) - lx0 : 0) / -lx0 * pw)
#define PY(tpr) (T + ph - (tpr) * ph)
    g_string_append_printf(s, "<svg xmlns='http://www.w3.org/2000/svg' width='%g' height='%g' viewBox='0 0 %g %g'>", W, H, W, H);
    g_string_append_printf(s, "<rect x='0' y='0' width='%g' height='%g' fill='#fff'/>", W, H);
    g_string_append_printf(s, "<text x='%g' y='20' font-size='15' font-weight='bold' text-anchor='middle'>ROC, logarithmic "
                              "false-positive axis</text>", W / 2);
    for (int e = 0; e <= dec; e++) {
        double f = pow(10, -e), x = PX(f);
        g_string_append_printf(s, "<line x1='%.1f' y1='%g' x2='%.1f' y2='%g' stroke='#e5e5e5'/>", x, T, x, T + ph);
        g_string_append_printf(s, "<text x='%.1f' y='%g' font-size='11' text-anchor='middle'>%g%%</text>", x, T + ph + 16, f * 100);
    }
    for (int i = 0; i <= 5; i++) {
        double v = i / 5.0;
        g_string_append_printf(s, "<line x1='%g' y1='%.1f' x2='%g' y2='%.1f' stroke='#e5e5e5'/>", L, PY(v), L + pw, PY(v));
        g_string_append_printf(s, "<text x='%g' y='%.1f' font-size='11' text-anchor='end'>%.1f</text>", L - 6, PY(v) + 4, v);
    }
    g_string_append_printf(s, "<rect x='%g' y='%g' width='%g' height='%g' fill='none' stroke='#333'/>", L, T, pw, ph);
    g_string_append_printf(s, "<text x='%g' y='%g' font-size='12' text-anchor='middle'>false-positive rate (%d negatives; "
                              "0 drawn at the left edge)</text>", L + pw / 2, H - 10, nn);
    g_string_append_printf(s, "<text x='14' y='%g' font-size='12' text-anchor='middle' transform='rotate(-90 14 %g)'>recall "
                              "(true-positive rate, %d positives)</text>", T + ph / 2, T + ph / 2, np);
    /* the curve: thresholds at every distinct score, from the highest down (a step per example) */
    int *ord = malloc((size_t)(n > 0 ? n : 1) * sizeof *ord);
    if (ord && nn > 0 && np > 0) {
        for (int i = 0; i < n; i++) ord[i] = i;
        /* insertion-free sort by score descending */
        for (int gap = n / 2; gap > 0; gap /= 2)
            for (int i = gap; i < n; i++)
                for (int j = i; j >= gap && score[ord[j - gap]] < score[ord[j]]; j -= gap) {
                    int t = ord[j];
                    ord[j] = ord[j - gap];
                    ord[j - gap] = t;
                }
        GString *pts = g_string_new("");
        int fp = 0, tp = 0;
        g_string_append_printf(pts, "%.2f,%.2f ", PX(0), PY(0));
        for (int i = 0; i < n;) {
            int j = i;
            while (j < n && score[ord[j]] == score[ord[i]]) {
                if (pos[ord[j]]) tp++;
                else fp++;
                j++;
            }
            g_string_append_printf(pts, "%.2f,%.2f ", PX((double)fp / nn), PY((double)tp / np));
            i = j;
        }
        g_string_append_printf(s, "<polyline fill='none' stroke='#2ca02c' stroke-width='2' points='%s'/>", pts->str);
        g_string_free(pts, TRUE);
        /* the operating point: P >= threshold is positive */
        int ofp = 0, otp = 0;
        for (int i = 0; i < n; i++)
            if (score[i] >= thr) *(pos[i] ? &otp : &ofp) += 1;
        double ox = PX((double)ofp / nn), oy = PY((double)otp / np);
        g_string_append_printf(s, "<circle cx='%.2f' cy='%.2f' r='5' fill='#d62728'/>", ox, oy);
        /* its legend in the lower right, clear of the curve (which rises to the top left) */
        g_string_append_printf(s, "<rect x='%g' y='%g' width='300' height='34' fill='#fff' fill-opacity='0.9'/>"
                                  "<circle cx='%g' cy='%g' r='5' fill='#d62728'/>"
                                  "<text x='%g' y='%g' font-size='11' fill='#d62728'>operating point: threshold %.4f</text>"
                                  "<text x='%g' y='%g' font-size='11' fill='#d62728'>FPR %.2f%% (%d of %d), recall %.1f%%</text>",
                               L + pw - 306, T + ph - 42, L + pw - 294, T + ph - 30, L + pw - 284, T + ph - 26, thr,
                               L + pw - 284, T + ph - 12, 100.0 * ofp / nn, ofp, nn, 100.0 * otp / np);
    }
    free(ord);
    g_string_append(s, "</svg>");
#undef PX
#undef PY
}

/* Histograms of P per class (20 bins), counts on a square-root axis so that the tails stay visible. */
static void histograms(GString *s, int n, const float *score, const bool *pos, double thr, const char *pos_name,
                       const char *neg_name) {
    enum { NB = 20 };
    int c[2][NB] = {{0}};
    for (int i = 0; i < n; i++) {
        int b = (int)(score[i] * NB);
        if (b < 0) b = 0;
        if (b >= NB) b = NB - 1;
        c[pos[i]][b]++;
    }
    int mx = 1;
    for (int k = 0; k < 2; k++)
        for (int b = 0; b < NB; b++) mx = c[k][b] > mx ? c[k][b] : mx;
    const double W = 520, H = 340, L = 60, R = 20, T = 34, B = 48;
    double pw = W - L - R, ph = H - T - B, bw = pw / NB;
    g_string_append_printf(s, "<svg xmlns='http://www.w3.org/2000/svg' width='%g' height='%g' viewBox='0 0 %g %g'>", W, H, W, H);
    g_string_append_printf(s, "<rect x='0' y='0' width='%g' height='%g' fill='#fff'/>", W, H);
    g_string_append_printf(s, "<text x='%g' y='20' font-size='15' font-weight='bold' text-anchor='middle'>Scores per class</text>",
                           W / 2);
    double smx = sqrt((double)mx);
    for (int i = 0; i <= 4; i++) {
        double v = round(pow(smx * i / 4, 2)), y = T + ph - sqrt(v) / smx * ph;
        g_string_append_printf(s, "<line x1='%g' y1='%.1f' x2='%g' y2='%.1f' stroke='#e5e5e5'/>", L, y, L + pw, y);
        g_string_append_printf(s, "<text x='%g' y='%.1f' font-size='11' text-anchor='end'>%.0f</text>", L - 6, y + 4, v);
    }
    for (int i = 0; i <= 5; i++)
        g_string_append_printf(s, "<text x='%.1f' y='%g' font-size='11' text-anchor='middle'>%.1f</text>", L + pw * i / 5,
                               T + ph + 16, i / 5.0);
    const char *col[2] = {"#1f77b4", "#d62728"};
    for (int k = 0; k < 2; k++)
        for (int b = 0; b < NB; b++) {
            if (!c[k][b]) continue;
            double h = sqrt((double)c[k][b]) / smx * ph;
            g_string_append_printf(s, "<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f' fill='%s' fill-opacity='0.55'>"
                                      "<title>%s %.2f-%.2f: %d</title></rect>",
                                   L + b * bw + 1, T + ph - h, bw - 2, h, col[k], k ? pos_name : neg_name, (double)b / NB,
                                   (double)(b + 1) / NB, c[k][b]);
        }
    double tx = L + thr * pw;
    g_string_append_printf(s, "<line x1='%.1f' y1='%g' x2='%.1f' y2='%g' stroke='#000' stroke-dasharray='5 3'/>"
                              "<text x='%.1f' y='%g' font-size='11' text-anchor='%s'>threshold %.4f</text>",
                           tx, T, tx, T + ph, tx + (thr > 0.5 ? -4 : 4), T + 12, thr > 0.5 ? "end" : "start", thr);
    g_string_append_printf(s, "<rect x='%g' y='%g' width='%g' height='%g' fill='none' stroke='#333'/>", L, T, pw, ph);
    for (int k = 0; k < 2; k++) {
        double ly = T + 16 + 16 * k, lx = thr > 0.5 ? L + 10 : L + pw - 150;
        g_string_append_printf(s, "<rect x='%g' y='%g' width='14' height='10' fill='%s' fill-opacity='0.55'/>"
                                  "<text x='%g' y='%g' font-size='12'>",
                               lx, ly - 9, col[1 - k], lx + 20, ly);
        tbert_html_escape(s, k ? neg_name : pos_name);
        g_string_append(s, "</text>");
    }
    g_string_append_printf(s, "<text x='%g' y='%g' font-size='12' text-anchor='middle'>P(%s)</text>", L + pw / 2, H - 10, pos_name);
    g_string_append_printf(s, "<text x='14' y='%g' font-size='12' text-anchor='middle' transform='rotate(-90 14 %g)'>messages "
                              "(square-root axis)</text></svg>", T + ph / 2, T + ph / 2);
}

void tbert_report_mail_section(GString *s, int n, const float *score, const bool *pos, const char *const *names, double thr,
                               const char *pos_name, const char *neg_name, const char *which) {
    int nn = 0, np = 0;
    for (int i = 0; i < n; i++) *(pos[i] ? &np : &nn) += 1;
    g_string_append_printf(s, "<h2>Mail view (%s split: %d ", which, np);
    tbert_html_escape(s, pos_name);
    g_string_append_printf(s, ", %d ", nn);
    tbert_html_escape(s, neg_name);
    g_string_append(s, ")</h2><div class='row'>");
    roc_log(s, n, score, pos, thr);
    histograms(s, n, score, pos, thr, pos_name, neg_name);
    g_string_append(s, "</div>");
    /* recall at fixed false-positive rates */
    g_string_append(s, "<table class='m' id='recall-at-fpr'><tr><th>false-positive rate at most</th><th>false positives allowed"
                       "</th><th>recall</th><th>cut (P above)</th></tr>");
    const double targets[] = {0.001, 0.005, 0.01};
    for (int t = 0; t < 3; t++) {
        int k = 0;
        double cut = 0, rec = tbert_recall_at_fpr(n, score, pos, targets[t], &k, &cut);
        g_string_append_printf(s, "<tr><td>%g%%</td><td>%d of %d%s</td>", targets[t] * 100, k, nn,
                               targets[t] * nn < 1 ? " (under one message: not measurable here)" : "");
        if (isnan(rec)) g_string_append(s, "<td>-</td><td>-</td></tr>");
        else if (isinf(cut)) g_string_append_printf(s, "<td>%.4f</td><td>any</td></tr>", rec);
        else g_string_append_printf(s, "<td>%.4f</td><td>%.6f</td></tr>", rec, cut);
    }
    g_string_append(s, "</table>");
    /* the misclassified items at the threshold */
    int wrong = 0;
    for (int i = 0; i < n; i++) wrong += (score[i] >= thr) != pos[i];
    g_string_append_printf(s, "<h2>Misclassified at threshold %.4f (%d)</h2>", thr, wrong);
    if (wrong) {
        g_string_append(s, "<table class='m' id='misclassified'><tr><th>message</th><th>true</th><th>P</th></tr>");
        int shown = 0;
        for (int i = 0; i < n && shown < 500; i++) {
            if ((score[i] >= thr) == pos[i]) continue;
            g_string_append(s, "<tr><td style='text-align:left'>");
            tbert_html_escape(s, names && names[i] ? names[i] : "(no name)");
            g_string_append(s, "</td><td>");
            tbert_html_escape(s, pos[i] ? pos_name : neg_name);
            g_string_append_printf(s, "</td><td>%.4f</td></tr>", score[i]);
            shown++;
        }
        g_string_append(s, "</table>");
        if (shown < wrong) g_string_append_printf(s, "<p>(the first %d of %d)</p>", shown, wrong);
    }
}
