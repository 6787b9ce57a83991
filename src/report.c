/* report.html: one self-contained page (inline SVG and CSS, no scripts, no external resources) with the
 * loss and accuracy per epoch, ROC and PR curves, the confusion matrix, the metrics and the run's settings;
 * for a binary head also src/report_mail.c's part (log-FPR ROC, histograms, recall at FPR, mistakes). */
#include <cjson/cJSON.h>
#include <glib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tbert/fileio.h"
#include "tbert/train.h"
#include "train_internal.h"

typedef struct {
    const char *name, *color;
    const double *x, *y;
    int n;
} series;

void tbert_html_escape(GString *s, const char *t) {
    for (; *t; t++) {
        switch (*t) {
        case '<': g_string_append(s, "&lt;"); break;
        case '>': g_string_append(s, "&gt;"); break;
        case '&': g_string_append(s, "&amp;"); break;
        case '"': g_string_append(s, "&quot;"); break;
        case '\'': g_string_append(s, "&#39;"); break;
        default: g_string_append_c(s, *t);
        }
    }
}

/* a line chart 520x340 with axes, ticks, grid and legend */
/* legend_low: legend in the lower right (curves that rise to the top); int_x: whole-number x ticks (epochs) */
static void chart(GString *s, const char *title, const char *xl, const char *yl, const series *sv, int ns, double x0, double x1,
                  double y0, double y1, bool diagonal, bool legend_low, bool int_x, double mark_x) {
    const double W = 520, H = 340, L = 60, R = 20, T = 34, B = 48;
    double pw = W - L - R, ph = H - T - B;
    if (!(x1 > x0)) x1 = x0 + 1;
    if (!(y1 > y0)) y1 = y0 + 1;
#define PX(v) (L + ((v) - x0) / (x1 - x0) * pw)
#define PY(v) (T + ph - ((v) - y0) / (y1 - y0) * ph)
    g_string_append_printf(s, "<svg xmlns='http://www.w3.org/2000/svg' width='%g' height='%g' viewBox='0 0 %g %g'>", W, H, W, H);
    g_string_append_printf(s, "<rect x='0' y='0' width='%g' height='%g' fill='#fff'/>", W, H);
    g_string_append_printf(s, "<text x='%g' y='20' font-size='15' font-weight='bold' text-anchor='middle'>", W / 2);
    tbert_html_escape(s, title);
    g_string_append(s, "</text>");
    int xt = int_x && x1 - x0 < 5 ? (int)(x1 - x0) : 5;
    for (int i = 0; i <= 5; i++) {
        double fx = x0 + (x1 - x0) * i / xt, fy = y0 + (y1 - y0) * i / 5;
        if (int_x) fx = round(fx);
        if (i <= xt)
            g_string_append_printf(s, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#e5e5e5'/>", PX(fx), T, PX(fx), T + ph);
        g_string_append_printf(s, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#e5e5e5'/>", L, PY(fy), L + pw, PY(fy));
        if (i <= xt)
            g_string_append_printf(s, "<text x='%.1f' y='%.1f' font-size='11' text-anchor='middle'>%.3g</text>", PX(fx), T + ph + 16,
                                   fx);
        g_string_append_printf(s, "<text x='%.1f' y='%.1f' font-size='11' text-anchor='end'>%.3g</text>", L - 6, PY(fy) + 4, fy);
    }
    g_string_append_printf(s, "<rect x='%g' y='%g' width='%g' height='%g' fill='none' stroke='#333'/>", L, T, pw, ph);
    g_string_append_printf(s, "<text x='%g' y='%g' font-size='12' text-anchor='middle'>", L + pw / 2, H - 10);
    tbert_html_escape(s, xl);
    g_string_append_printf(s, "</text><text x='14' y='%g' font-size='12' text-anchor='middle' transform='rotate(-90 14 %g)'>",
                           T + ph / 2, T + ph / 2);
    tbert_html_escape(s, yl);
    g_string_append(s, "</text>");
    if (isfinite(mark_x) && mark_x >= x0 && mark_x <= x1) /* the best epoch */
        g_string_append_printf(s, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#2ca02c' stroke-dasharray='5 3'/>"
                                  "<text x='%.1f' y='%.1f' font-size='11' fill='#2ca02c' text-anchor='%s'>best</text>",
                               PX(mark_x), T, PX(mark_x), T + ph, PX(mark_x) + (PX(mark_x) > L + pw - 40 ? -3 : 3), T + 12,
                               PX(mark_x) > L + pw - 40 ? "end" : "start");
    if (diagonal)
        g_string_append_printf(s, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#aaa' stroke-dasharray='4 4'/>", PX(x0),
                               PY(y0), PX(x1), PY(y1));
    for (int k = 0; k < ns; k++) {
        const series *v = &sv[k];
        GString *pts = g_string_new("");
        int shown = 0;
        for (int i = 0; i < v->n; i++) {
            if (!isfinite(v->x[i]) || !isfinite(v->y[i])) continue;
            double yv = fmin(fmax(v->y[i], y0), y1);
            g_string_append_printf(pts, "%.2f,%.2f ", PX(v->x[i]), PY(yv));
            shown++;
        }
        if (shown)
            g_string_append_printf(s, "<polyline fill='none' stroke='%s' stroke-width='2' points='%s'/>", v->color, pts->str);
        if (shown && shown <= 60)
            for (int i = 0; i < v->n; i++)
                if (isfinite(v->x[i]) && isfinite(v->y[i]) && v->n <= 60)
                    g_string_append_printf(s, "<circle cx='%.2f' cy='%.2f' r='2.5' fill='%s'/>", PX(v->x[i]),
                                           PY(fmin(fmax(v->y[i], y0), y1)), v->color);
        g_string_free(pts, TRUE);
        double ly = legend_low ? T + ph - 10 - 16 * (ns - 1 - k) : T + 14 + 16 * k;
        g_string_append_printf(s, "<rect x='%g' y='%g' width='150' height='16' fill='#fff' fill-opacity='0.85'/>", L + pw - 156,
                               ly - 12);
        g_string_append_printf(s, "<rect x='%g' y='%g' width='14' height='3' fill='%s'/>", L + pw - 150, ly - 4, v->color);
        g_string_append_printf(s, "<text x='%g' y='%g' font-size='12'>", L + pw - 130, ly);
        tbert_html_escape(s, v->name);
        g_string_append(s, "</text>");
    }
    g_string_append(s, "</svg>");
#undef PX
#undef PY
}

static void range(const double *a, const double *b, int n, double *lo, double *hi) {
    *lo = INFINITY;
    *hi = -INFINITY;
    for (int i = 0; i < n; i++) {
        if (isfinite(a[i])) *lo = fmin(*lo, a[i]), *hi = fmax(*hi, a[i]);
        if (b && isfinite(b[i])) *lo = fmin(*lo, b[i]), *hi = fmax(*hi, b[i]);
    }
    if (!isfinite(*lo)) *lo = 0, *hi = 1;
    double pad = (*hi - *lo) * 0.05 + 1e-9;
    *lo -= pad;
    *hi += pad;
}

static void confusion_table(GString *s, const tbert_metrics *m, const tbert_recipe *r) {
    int64_t mx = 1;
    for (int i = 0; i < m->n_classes * m->n_classes; i++) mx = m->confusion[i] > mx ? m->confusion[i] : mx;
    g_string_append(s, "<table class='conf'><tr><th>true \\ predicted</th>");
    for (int j = 0; j < m->n_classes; j++) {
        g_string_append(s, "<th>");
        tbert_html_escape(s, r->labels[j]);
        g_string_append(s, "</th>");
    }
    g_string_append(s, "</tr>");
    for (int i = 0; i < m->n_classes; i++) {
        g_string_append(s, "<tr><th>");
        tbert_html_escape(s, r->labels[i]);
        g_string_append(s, "</th>");
        for (int j = 0; j < m->n_classes; j++) {
            int64_t v = m->confusion[(size_t)i * m->n_classes + j];
            double a = 0.08 + 0.85 * (double)v / (double)mx;
            g_string_append_printf(s, "<td style='background:rgba(%s,%.2f);color:%s'>%lld</td>",
                                   i == j ? "31,119,180" : "214,39,40", a, a > 0.5 ? "#fff" : "#000", (long long)v);
        }
        g_string_append(s, "</tr>");
    }
    g_string_append(s, "</table>");
}

static void metrics_table(GString *s, const tbert_fit_result *f, const tbert_recipe *r) {
    const tbert_metrics *ms[3] = {&f->train, &f->val, &f->test};
    const char *names[3] = {"train", f->n_oof ? "out-of-fold" : "validation", "test"};
    g_string_append(s, "<table class='m'><tr><th>split</th><th>n</th><th>accuracy</th><th>ROC-AUC</th><th>PR-AUC</th>");
    for (int k = 0; k < r->n_labels; k++) {
        g_string_append(s, "<th>F1 ");
        tbert_html_escape(s, r->labels[k]);
        g_string_append(s, "</th>");
    }
    g_string_append(s, "</tr>");
    for (int i = 0; i < 3; i++) {
        if (!ms[i]->n) continue;
        g_string_append_printf(s, "<tr><td>%s</td><td>%d</td><td>%.4f</td><td>%.4f</td><td>%.4f</td>", names[i], ms[i]->n,
                               ms[i]->accuracy, ms[i]->roc_auc, ms[i]->pr_auc);
        for (int k = 0; k < r->n_labels; k++) g_string_append_printf(s, "<td>%.4f</td>", ms[i]->f1[k]);
        g_string_append(s, "</tr>");
    }
    g_string_append(s, "</table>");
}

tbert_status tbert_report_write(const char *path, const tbert_fit_result *f, const tbert_fit_data *d, const tbert_recipe *r,
                                const char *settings_json, tbert_error *err) {
    return tbert_report_write_ex(path, f, d, r, settings_json, NULL, err);
}

tbert_status tbert_report_write_ex(const char *path, const tbert_fit_result *f, const tbert_fit_data *d, const tbert_recipe *r,
                                   const char *settings_json, const tbert_report_info *info, tbert_error *err) {
    GString *s = g_string_new("<!DOCTYPE html><html><head><meta charset='utf-8'><title>tbert training report</title><style>"
                              "body{font-family:sans-serif;margin:24px;color:#222;max-width:1120px}"
                              "h1{font-size:22px}h2{font-size:17px;margin-top:28px}"
                              ".row{display:flex;flex-wrap:wrap;gap:16px}"
                              "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:5px 10px;text-align:right}"
                              "table.conf td{min-width:70px;text-align:center;font-size:15px}"
                              "pre{background:#f6f6f6;padding:10px;white-space:pre-wrap;word-break:break-all;font-size:12px}"
                              "</style></head><body><h1>tbert training report</h1>");
    int E = f->epochs_run;
    double *ep = tbert_malloc_array((size_t)E + 1, sizeof(double));
    if (!ep) {
        g_string_free(s, TRUE);
        return tbert_fail(err, TBERT_E_NOMEM, "report: out of memory");
    }
    for (int i = 0; i < E; i++) ep[i] = i + 1;
    g_string_append_printf(s, "<p>%d epochs, best epoch %d; threshold %.4f on P(%s); recipe <b>", E, f->best_epoch,
                           (double)f->threshold, r->positive >= 0 ? r->labels[r->positive] : "argmax");
    tbert_html_escape(s, r->name);
    g_string_append_printf(s, "</b>, %zu features; training took %.1f s.</p>", d->dim, f->seconds);
    metrics_table(s, f, r);
    g_string_append(s, "<h2>Training curves</h2><div class='row'>");
    double lo, hi;
    range(f->train_loss, f->val_loss, E, &lo, &hi);
    series ls[2] = {{"train loss", "#1f77b4", ep, f->train_loss, E}, {"validation loss", "#ff7f0e", ep, f->val_loss, E}};
    int nser = d->n_val && !f->n_oof ? 2 : 1; /* cross-fitting: no per-epoch validation */
    chart(s, "Loss per epoch", "epoch", "loss", ls, nser, 1, E > 1 ? E : 2, fmax(lo, 0), hi, false, false, true, f->best_epoch);
    range(f->train_acc, f->val_acc, E, &lo, &hi);
    series as[2] = {{"train accuracy", "#1f77b4", ep, f->train_acc, E}, {"validation accuracy", "#ff7f0e", ep, f->val_acc, E}};
    chart(s, "Accuracy per epoch", "epoch", "accuracy", as, nser, 1, E > 1 ? E : 2, lo, fmin(hi, 1.0), false, true, true, f->best_epoch);
    g_string_append(s, "</div>");
    /* curves and confusion on test, else validation */
    const tbert_metrics *cm = f->test.n ? &f->test : (f->val.n ? &f->val : &f->train);
    const float *probs = f->test.n ? f->test_probs : f->val_probs;
    const int *idx = f->test.n ? d->test_idx : d->val_idx;
    int n = f->test.n ? d->n_test : d->n_val;
    const char *which = f->test.n ? "test" : (f->val.n ? (f->n_oof ? "out-of-fold (cross-fitting)" : "validation") : "training");
    if (r->positive >= 0 && probs && n > 0) {
        float *sc = tbert_malloc_array((size_t)n, sizeof(float));
        bool *pos = tbert_malloc_array((size_t)n, sizeof(bool));
        double *rx = NULL, *ry = NULL, *px = NULL, *py = NULL;
        int rn = 0, pn = 0;
        if (sc && pos) {
            for (int i = 0; i < n; i++) {
                sc[i] = probs[(size_t)i * 2 + r->positive];
                pos[i] = d->y[idx[i]] == r->positive;
            }
            tbert_roc_curve(n, sc, pos, &rx, &ry, &rn);
            tbert_pr_curve(n, sc, pos, &px, &py, &pn);
        }
        g_string_append_printf(s, "<h2>ROC and precision-recall curves (%s split, positive class ", which);
        tbert_html_escape(s, r->labels[r->positive]);
        g_string_append(s, ")</h2><div class='row'>");
        char t1[96], t2[96];
        snprintf(t1, sizeof t1, "ROC curve (AUC %.4f)", cm->roc_auc);
        snprintf(t2, sizeof t2, "Precision-recall (AP %.4f)", cm->pr_auc);
        series rs = {"ROC", "#2ca02c", rx, ry, rn}, ps = {"PR", "#9467bd", px, py, pn};
        chart(s, t1, "false-positive rate", "true-positive rate", &rs, rx ? 1 : 0, 0, 1, 0, 1, true, true, false, NAN);
        chart(s, t2, "recall", "precision", &ps, px ? 1 : 0, 0, 1, 0, 1, false, true, false, NAN);
        g_string_append(s, "</div>");
        if (sc && pos && r->n_labels == 2) { /* ROC on a log FPR axis, histograms, recall at FPR, the mistakes */
            const char **names = info && info->names ? tbert_malloc_array((size_t)n, sizeof *names) : NULL;
            for (int i = 0; names && i < n; i++) names[i] = info->names[idx[i]];
            tbert_report_mail_section(s, n, sc, pos, names, (double)f->threshold, r->labels[r->positive],
                                      r->labels[1 - r->positive], which);
            free(names);
        }
        free(sc);
        free(pos);
        free(rx);
        free(ry);
        free(px);
        free(py);
    }
    g_string_append_printf(s, "<h2>Confusion matrix (%s split, threshold %.4f)</h2>", which, (double)f->threshold);
    if (cm->confusion) confusion_table(s, cm, r);
    if (info && info->command_line) {
        g_string_append(s, "<h2>Command line</h2><pre id='command-line'>");
        tbert_html_escape(s, info->command_line);
        g_string_append(s, "</pre>");
    }
    g_string_append(s, "<h2>Settings</h2><pre>");
    cJSON *sj = settings_json ? cJSON_Parse(settings_json) : NULL;
    char *pretty = sj ? cJSON_Print(sj) : NULL;
    tbert_html_escape(s, pretty ? pretty : (settings_json ? settings_json : "{}"));
    free(pretty);
    cJSON_Delete(sj);
    g_string_append_printf(s, "</pre><p style='color:#888'>tbert %s</p></body></html>\n", TBERT_VERSION);
    tbert_status st = tbert_write_file_atomic(path, s->str, s->len, err);
    g_string_free(s, TRUE);
    free(ep);
    return st;
}
