/* Progress bars on a terminal, plain log lines otherwise (include/tbert/progress.h). */
#include "tbert/progress.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct tbert_progress {
    char stage[32], unit[16];
    uint64_t total, done;
    tbert_progress_mode mode;
    double t0, last_draw;
    bool drawn;
};

tbert_progress *tbert_progress_start(const char *stage, uint64_t total, const char *unit, tbert_progress_mode mode) {
    tbert_progress *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    snprintf(p->stage, sizeof p->stage, "%s", stage ? stage : "");
    snprintf(p->unit, sizeof p->unit, "%s", unit ? unit : "");
    p->total = total;
    if (mode == TBERT_PROGRESS_AUTO) mode = isatty(STDERR_FILENO) == 1 ? TBERT_PROGRESS_BAR : TBERT_PROGRESS_LOG;
    p->mode = mode;
    p->t0 = p->last_draw = tbert_now();
    return p;
}

static void fmt_duration(double s, char *buf, size_t n) {
    if (s < 0 || s > 1e7) snprintf(buf, n, "--:--");
    else if (s >= 3600) snprintf(buf, n, "%d:%02d:%02d", (int)s / 3600, ((int)s / 60) % 60, (int)s % 60);
    else snprintf(buf, n, "%02d:%02d", (int)s / 60, (int)s % 60);
}

static void draw(tbert_progress *p, const char *note, bool final) {
    double el = tbert_now() - p->t0;
    double rate = el > 0 ? (double)p->done / el : 0;
    char eta[32], elapsed[32];
    fmt_duration(p->total && rate > 0 ? (double)(p->total - (p->done < p->total ? p->done : p->total)) / rate : -1, eta,
                 sizeof eta);
    fmt_duration(el, elapsed, sizeof elapsed);
    if (p->mode == TBERT_PROGRESS_BAR) {
        char bar[32] = "";
        if (p->total) {
            int w = 24, fill = (int)((double)w * (double)(p->done < p->total ? p->done : p->total) / (double)p->total);
            for (int i = 0; i < w; i++) bar[i] = i < fill ? '#' : '.';
            bar[w] = 0;
        }
        fprintf(stderr, "\r\033[K%-8s [%s] %llu/%llu %s  %.1f %s/s  %s %s%s%s", p->stage, bar, (unsigned long long)p->done,
                (unsigned long long)p->total, p->unit, rate, p->unit, final ? "in" : "ETA", final ? elapsed : eta,
                note ? "  " : "", note ? note : "");
        if (final) fputc('\n', stderr);
    } else {
        if (p->total)
            fprintf(stderr, "tbert: %s %llu/%llu %s, %.1f %s/s, %s %s%s%s\n", p->stage, (unsigned long long)p->done,
                    (unsigned long long)p->total, p->unit, rate, p->unit, final ? "elapsed" : "ETA", final ? elapsed : eta,
                    note ? ", " : "", note ? note : "");
        else
            fprintf(stderr, "tbert: %s %llu %s, %.1f %s/s, elapsed %s%s%s\n", p->stage, (unsigned long long)p->done, p->unit,
                    rate, p->unit, elapsed, note ? ", " : "", note ? note : "");
    }
    fflush(stderr);
    p->drawn = true;
}

void tbert_progress_update(tbert_progress *p, uint64_t done, const char *note) {
    if (!p) return;
    p->done = done;
    if (p->mode == TBERT_PROGRESS_OFF) return;
    double now = tbert_now();
    double every = p->mode == TBERT_PROGRESS_BAR ? 0.1 : 10.0;
    if (now - p->last_draw < every) return;
    p->last_draw = now;
    draw(p, note, false);
}

void tbert_progress_finish(tbert_progress *p, const char *note) {
    if (!p) return;
    if (p->mode != TBERT_PROGRESS_OFF) draw(p, note, true);
    free(p);
}
