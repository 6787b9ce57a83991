/* Batch scoring of mail archives and tables (tbert score): reader -> parse workers -> batcher ->
 * featurizer (encoder) + head -> ordered writer, with bounded queues (memory stays flat whatever the
 * archive size), record-by-record flushed output and --resume by (source, offset). */
#ifndef TBERT_SCORE_H
#define TBERT_SCORE_H

#include "tbert/common.h"
#include "tbert/mail.h"
#include "tbert/encoder.h"
#include "tbert/model.h"
#include "tbert/recipe.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { TBERT_SCORE_JSONL = 0, TBERT_SCORE_CSV } tbert_score_format;

typedef struct {
    const char *out_path;      /* NULL or "-" = stdout */
    tbert_score_format format;
    int threads;               /* parse workers; 0 = all cores */
    int batch;                 /* docs per featurize call; 0 = 64 */
    bool resume;               /* skip (source, offset) pairs already in out_path */
    bool progress;             /* progress bar / log lines on stderr */
    uint64_t kill_at_record;   /* test hook (TBERT_TEST_KILL_AT=record:N): SIGKILL after writing record N; 0 = off */
    tbert_input_opts input;
} tbert_score_opts;

typedef struct {
    uint64_t records;       /* written by this run */
    uint64_t errors;        /* of which error records */
    uint64_t skipped_done;  /* found in the existing output (--resume) */
    uint64_t bytes;         /* input bytes read */
    double seconds;
    /* where the time went (wall seconds on the scoring thread; parse is summed over the parse workers) */
    double featurize_seconds, head_seconds, write_seconds, wait_seconds, parse_seconds;
    bool resumed;           /* an existing output was found and continued */
} tbert_score_stats;

/* Runs the pipeline over the inputs. The classifier's recipe and the featurizer must match (the caller
 * built the featurizer from tbert_classifier_recipe). Returns an error only when the run cannot go on
 * (output not writable, out of memory, encoder failure); unreadable or malformed items become error records. */
tbert_status tbert_score_run(const tbert_classifier *c, tbert_featurizer *fz, const char *const *inputs, int n_inputs,
                             const tbert_score_opts *opts, tbert_score_stats *stats, tbert_error *err);

/* Everything scoring needs, loaded from --model and --head: the model, the classifier, an encoder made
 * with the recipe's layers and precision, and the featurizer. */
typedef struct {
    tbert_model *model;
    tbert_classifier *clf;
    tbert_encoder *enc;
    tbert_featurizer *fz;
} tbert_score_ctx;
/* model: NAME|DIR (NULL = minilm); device: "auto|cpu|cuda[:N]" (NULL = auto); threads/batch 0 = defaults. */
tbert_status tbert_score_ctx_open(const char *model, const char *head, const char *device, int threads, int batch, bool quiet,
                                  tbert_score_ctx *ctx, tbert_error *err);
void tbert_score_ctx_close(tbert_score_ctx *ctx);

/* Parses "record:N" (TBERT_TEST_KILL_AT) into N; 0 when unset or of another kind. */
uint64_t tbert_kill_at_record(void);

#ifdef __cplusplus
}
#endif
#endif
