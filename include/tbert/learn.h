/* Learning from mistakes (src/learn.c): `tbert learn`, `--unlearn`, `--rollback`, `tbert forget`.
 * A head folder DIR learns from:
 *   DIR/training.json   what `tbert train` trained it on (written by src/train_run.c),
 *   DIR/learned.jsonl   the corrections (src/learn_log.c; also spamd TELL and HTTP /learn): the last line for a
 *                       message decides ("learn" adds it with its class, "forget" takes it out),
 *   DIR/learned/{ham,spam}/SHA.eml  the corrections in force, as messages (rebuilt from learned.jsonl),
 *   DIR/history/N/      the heads before each retrain (hard links, the last `keep`), newest = highest N.
 * A retrain is `tbert train` again with the same settings on training.json's paths plus DIR/learned: the row
 * store makes it encode only the messages it has not seen; the checkpoint-folder transaction
 * (src/checkpoint_folder.c) swaps the head in whole, and cross-fitting re-chooses the threshold. */
#ifndef TBERT_LEARN_H
#define TBERT_LEARN_H

#include "tbert/common.h"
#include "tbert/encoder.h"
#include "tbert/head.h"
#include "tbert/rows.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char *head;              /* DIR */
    const char *klass;             /* "spam" | "ham" */
    const char *const *files;      /* one message per file */
    int n_files;
    bool unlearn;                  /* appends removals instead */
    bool no_retrain;
    bool full;                     /* retrain from scratch (tbert train again) instead of warm-starting from DIR/learn.state */
    int keep;                      /* heads kept in DIR/history (<= 0: 5) */
    tbert_device device;
    int threads;
    bool quiet;
} tbert_learn_opts;

typedef struct {
    int registered;                /* lines appended to learned.jsonl */
    int learned_ham, learned_spam; /* corrections in force */
    bool retrained;
    int docs, docs_encoded;        /* of the retrain */
    float threshold;
    double seconds_register, seconds_retrain;
    bool warm;                     /* the retrain warm-started from DIR/learn.state */
    int epochs;                    /* warm: epochs each fold head ran */
} tbert_learn_result;

/* Appends the corrections durably, then (unless no_retrain) retrains DIR. */
tbert_status tbert_learn(const tbert_learn_opts *o, tbert_learn_result *res, tbert_error *err);
/* Retrains DIR from training.json + the corrections in force (keeps the current head in DIR/history). */
tbert_status tbert_learn_retrain(const tbert_learn_opts *o, tbert_learn_result *res, tbert_error *err);
/* `tbert forget`: removes each message's dense block from the row store (the key of the head's recipe) and
 * appends a "forget" for it to learned.jsonl; retrains (unless no_retrain) when one of them was a correction
 * in force. A message in training.json's folders stays in training: take it out of the folder. */
tbert_status tbert_forget(const tbert_learn_opts *o, tbert_learn_result *res, int *rows_removed, tbert_error *err);
/* ---- DIR/learn.state (src/learn_state.c): the training rows and fold heads a warm-started learn continues from ---- */
typedef struct {
    int n, K;
    tbert_rows X;       /* the rows the head was trained on (its training split) */
    int *y, *fold;      /* class and cross-fitting fold of each row */
    uint8_t *origin;    /* n x 32: sha256 of a correction's message bytes; zeros for training.json's mail */
    tbert_head **heads; /* the K fold heads (best.safetensors is their average) */
    char data_hash[65]; /* training.json's data_hash of the run that first wrote the state */
} tbert_learn_state;
void tbert_learn_state_free(tbert_learn_state *s);
/* Writes DIR/learn.state atomically: rows idx[0..n) of X (idx NULL: rows 0..n) with classes y[idx[i]], folds fold[0..n), origins
 * (n x 32 or NULL = all zeros) and the K heads. */
tbert_status tbert_learn_state_save(const char *dir, const tbert_rows *X, const int *y, const int *idx, int n, const int *fold,
                                    const uint8_t *origin, tbert_head *const *heads, int K, const char *data_hash, tbert_error *err);
/* Reads and validates DIR/learn.state (TBERT_E_IO when absent or unreadable, TBERT_E_CORRUPT when damaged). */
tbert_status tbert_learn_state_load(const char *dir, tbert_learn_state *s, tbert_error *err);

/* Puts the newest head of DIR/history back in DIR atomically and drops it from the history. */
tbert_status tbert_learn_rollback(const char *head, tbert_error *err);

#ifdef __cplusplus
}
#endif
#endif
