/* Internals shared by the learning files (not public API): src/learn.c (corrections, history, the full retrain,
 * rollback, forget) and src/learn_warm.c (the warm-started retrain). */
#ifndef TBERT_LEARN_INTERNAL_H
#define TBERT_LEARN_INTERNAL_H

#include <glib.h>

#include "tbert/learn.h"

/* a correction in force: sha256 of the message bytes, its class ("spam" | "ham"), the bytes in base64 */
typedef struct {
    char sha[65];
    char klass[8];
    char *b64;
} correction;

/* one learn/rollback at a time per head folder: DIR/.learn.lock (flock, released when the process ends) */
tbert_status tbert_learn_lock_head(const char *head, int *fd, tbert_error *err);
void tbert_learn_unlock_head(int fd);
/* finishes a retrain's move-in that a kill interrupted (src/checkpoint_folder.c) */
tbert_status tbert_learn_finish_move(const char *head, tbert_error *err);
/* DIR/learned.jsonl replayed: the corrections in force (correction *), in the order first learned */
tbert_status tbert_learn_corrections_read(const char *head, GPtrArray **out, tbert_error *err);
void tbert_learn_corrections_free(GPtrArray *a);
/* DIR/learned/{ham,spam}/SHA.eml = the corrections in force, nothing else */
tbert_status tbert_learn_materialize(const char *head, GPtrArray *cs, int *n_ham, int *n_spam, tbert_error *err);
/* hard links of DIR's head files in DIR/history/N (*made = N, 0 when the newest entry is already this head) */
tbert_status tbert_learn_history_push(const char *head, int keep, long *made, tbert_error *err);
/* removes a history entry folder and the head files in it */
void tbert_learn_remove_entry(const char *dir);

/* The warm-started retrain (src/learn_warm.c), with DIR locked and any interrupted move finished: from
 * DIR/learn.state, the corrections in force and the current fold heads. *no_state = true (and nothing changed)
 * when DIR has no usable learn.state (the caller then retrains in full). */
tbert_status tbert_learn_warm(const tbert_learn_opts *lo, tbert_learn_result *res, bool *no_state, tbert_error *err);

#endif
