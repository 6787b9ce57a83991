/* Progress reporting for long stages: on a terminal a bar redrawn in place (count, rate, ETA, an extra
 * note such as the loss); otherwise plain log lines (at most one every 10 s, plus the final line).
 * Everything goes to stderr. One tbert_progress is used by one thread at a time. */
#ifndef TBERT_PROGRESS_H
#define TBERT_PROGRESS_H

#include <stdint.h>

#include "tbert/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { TBERT_PROGRESS_AUTO = 0, TBERT_PROGRESS_BAR, TBERT_PROGRESS_LOG, TBERT_PROGRESS_OFF } tbert_progress_mode;

typedef struct tbert_progress tbert_progress;
/* stage: short name ("encode"); total: expected count (0 = unknown); unit: "docs", "epochs", ...
 * AUTO = bar when stderr is a TTY, else log lines. Returns NULL only on OOM (all calls accept NULL). */
tbert_progress *tbert_progress_start(const char *stage, uint64_t total, const char *unit, tbert_progress_mode mode);
/* Sets the count done so far; note (may be NULL) is appended, e.g. "loss 0.0312". Redraws at most 10x/s. */
void tbert_progress_update(tbert_progress *p, uint64_t done, const char *note);
/* Prints the final state (count, elapsed time, rate) on its own line and frees p. */
void tbert_progress_finish(tbert_progress *p, const char *note);

#ifdef __cplusplus
}
#endif
#endif
