/* The checkpoint folder as one transaction: a run into a folder that holds another run's files is staged
 * beside it and moved in whole (stage, commit, roll forward after a kill). Declared in tbert/checkpoint.h. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tbert/checkpoint.h"
#include "tbert/fileio.h"

/* ---- the checkpoint folder holds one run at a time ----
 * A fresh run into a folder that already holds a run's files (RUN_FILES below) writes into
 * DIR/.tbert-staging and moves its files into DIR only once all of them are written. Staging rather than
 * deleting the old files up front: a run that fails (full disk, a kill, a bad setting) then leaves the previous
 * checkpoint whole and loadable, where deleting first would lose a good head to a failed retrain. Each file is
 * written atomically (src/fileio.c); staging makes the set atomic as `--head DIR` and `--resume` see it:
 * - the move first removes the old run's files (last and best first), then brings split, metrics, report,
 *   best and last in (best and last last), so at every instant DIR holds files of one run only, and a
 *   best.safetensors only beside all of its run's other files but last. A marker written before the move lets
 *   the next `tbert train --out DIR` finish a move that was killed part-way (each step is idempotent);
 * - a staged run that dies keeps its files in the staging folder: `--resume` continues it there (bit for bit
 *   as in DIR) and moves it in at the end; a fresh run clears it.
 * A fresh run into a folder without such files writes in place, as before, and --resume of a run in DIR is
 * unchanged. Only these names and their temp files are ever removed or moved: anything else is the user's. */
#define STAGE_NAME ".tbert-staging"
#define STAGE_MARKER ".complete"
/* in the order they move in; the old ones go in the reverse order */
static const char *const RUN_FILES[] = {"split.tsv", "metrics.json", "report.html", "training.json", "learn.state", "best.safetensors",
                                        "last.safetensors", "oof.safetensors"};
enum { N_RUN_FILES = sizeof RUN_FILES / sizeof RUN_FILES[0] };

static bool path_exists(const char *p) {
    struct stat s;
    return lstat(p, &s) == 0;
}

static bool exists_in(const char *dir, const char *name) {
    char *p = g_strdup_printf("%s/%s", dir, name);
    bool e = path_exists(p);
    g_free(p);
    return e;
}

static bool is_regular_in(const char *dir, const char *name) {
    char *p = g_strdup_printf("%s/%s", dir, name);
    bool r = tbert_is_regular_file(p);
    g_free(p);
    return r;
}

/* a run file, the marker, or one of their temp files (NAME.tmp.PID, src/fileio.c) */
static bool is_ours(const char *name) {
    for (int k = 0; k <= N_RUN_FILES; k++) {
        const char *f = k < N_RUN_FILES ? RUN_FILES[k] : STAGE_MARKER;
        size_t n = strlen(f);
        if (strncmp(name, f, n)) continue;
        if (!name[n]) return true;
        if (strncmp(name + n, ".tmp.", 5) || !name[n + 5]) continue;
        if (strspn(name + n + 5, "0123456789") == strlen(name + n + 5)) return true;
    }
    return false;
}

/* removes what tbert wrote into the staging folder, then the folder unless the user put something there */
static tbert_status stage_clear(const char *stage, tbert_error *err) {
    struct stat s;
    if (lstat(stage, &s) != 0) return TBERT_OK;
    if (!S_ISDIR(s.st_mode)) return tbert_fail(err, TBERT_E_IO, "%s: exists and is not a folder (tbert keeps a staged run there)", stage);
    DIR *d = opendir(stage);
    if (!d) return tbert_fail(err, TBERT_E_IO, "%s: cannot open: %s", stage, strerror(errno));
    tbert_status st = TBERT_OK;
    struct dirent *e;
    while (!st && (e = readdir(d))) {
        if (!is_ours(e->d_name)) continue;
        if (unlinkat(dirfd(d), e->d_name, 0) != 0 && errno != ENOENT)
            st = tbert_fail(err, TBERT_E_IO, "%s/%s: cannot remove: %s", stage, e->d_name, strerror(errno));
    }
    closedir(d);
    if (!st) rmdir(stage); /* fails, harmlessly, when other files are in it */
    return st;
}

static void fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    fsync(fd);
    close(fd);
}

/* moves a complete staged run into DIR (see above); safe to repeat after a kill at any point */
static tbert_status stage_commit(const char *dir, const char *stage, tbert_error *err) {
    char *marker = g_strdup_printf("%s/%s", stage, STAGE_MARKER);
    tbert_status st = path_exists(marker) ? TBERT_OK : tbert_write_file_atomic(marker, "", 0, err);
    if (!st) fsync_dir(stage);
    for (int k = N_RUN_FILES - 1; !st && k >= 0; k--) { /* the old run's files: gone first */
        if (!exists_in(stage, RUN_FILES[k])) continue; /* already moved in */
        char *p = g_strdup_printf("%s/%s", dir, RUN_FILES[k]);
        if (unlink(p) != 0 && errno != ENOENT) st = tbert_fail(err, TBERT_E_IO, "%s: cannot remove: %s", p, strerror(errno));
        g_free(p);
    }
    if (!st) fsync_dir(dir);
    for (int k = 0; !st && k < N_RUN_FILES; k++) {
        if (!exists_in(stage, RUN_FILES[k])) continue;
        char *from = g_strdup_printf("%s/%s", stage, RUN_FILES[k]), *to = g_strdup_printf("%s/%s", dir, RUN_FILES[k]);
        if (rename(from, to) != 0) st = tbert_fail(err, TBERT_E_IO, "%s: cannot move in from %s: %s", to, stage, strerror(errno));
        g_free(from);
        g_free(to);
    }
    if (!st) {
        fsync_dir(dir);
        if (unlink(marker) != 0 && errno != ENOENT) st = tbert_fail(err, TBERT_E_IO, "%s: cannot remove: %s", marker, strerror(errno));
    }
    if (!st) st = stage_clear(stage, err);
    g_free(marker);
    return st;
}

static bool holds_run_files(const char *dir) {
    for (int k = 0; k < N_RUN_FILES; k++)
        if (exists_in(dir, RUN_FILES[k])) return true;
    return false;
}

/* where this run writes (called once the data and model are known good, before the first file is written) */
tbert_status tbert_ckpt_plan_open(const char *dir, bool resume, tbert_ckpt_plan *p, tbert_error *err) {
    p->stage = g_strdup_printf("%s/%s", dir, STAGE_NAME);
    p->work = dir;
    p->staged = false;
    p->resume = resume;
    tbert_status st = TBERT_OK;
    if (exists_in(p->stage, STAGE_MARKER)) { /* an earlier run finished but was killed while moving in */
        st = stage_commit(dir, p->stage, err);
        if (st) return st;
        fprintf(stderr, "tbert: %s: finished moving in the run staged in %s\n", dir, p->stage);
    }
    if (resume && is_regular_in(p->stage, "last.safetensors")) { /* an interrupted fresh run beside an old one */
        p->work = p->stage;
        p->staged = true;
        return TBERT_OK;
    }
    st = stage_clear(p->stage, err); /* nothing to resume in it: only a dead run's first files */
    if (st || (resume && is_regular_in(dir, "last.safetensors"))) return st;
    if (resume) {
        fprintf(stderr, "tbert: nothing to resume in %s, starting fresh\n", dir);
        p->resume = false;
    }
    if (!holds_run_files(dir)) return TBERT_OK;
    if (mkdir(p->stage, 0755) != 0 && errno != EEXIST)
        return tbert_fail(err, TBERT_E_IO, "%s: cannot create folder: %s", p->stage, strerror(errno));
    p->work = p->stage;
    p->staged = true;
    return TBERT_OK;
}

/* a failed run: say in its one line what the folder holds now. Write errors in the staging folder name the
 * file the user asked for, as src/fileio.c's errors name the destination, not the temp file. */
void tbert_ckpt_plan_failed(const char *dir, const tbert_ckpt_plan *p, tbert_error *err) {
    if (!err || err->code == TBERT_E_MISMATCH || (!p->staged && p->resume)) return;
    char msg[sizeof err->msg];
    size_t n = 0;
    const char *m = err->msg;
    size_t sl = strlen(p->stage);
    while (*m && n + 1 < sizeof msg) {
        if (p->staged && err->code == TBERT_E_IO && !strncmp(m, p->stage, sl) && m[sl] == '/') {
            n += (size_t)snprintf(msg + n, sizeof msg - n, "%s", dir);
            m += sl;
        } else {
            msg[n++] = *m++;
        }
    }
    msg[n < sizeof msg ? n : sizeof msg - 1] = '\0';
    n = strlen(msg);
    bool resumable = is_regular_in(p->work, "last.safetensors");
    if (p->staged && exists_in(p->stage, STAGE_MARKER)) {
        snprintf(msg + n, sizeof msg - n, "; moving this run in from %s stopped part-way: the next train --out %s finishes it",
                 p->stage, dir);
        memcpy(err->msg, msg, sizeof msg);
        return;
    }
    if (p->staged && resumable)
        snprintf(msg + n, sizeof msg - n, "; %s still holds the previous run, this one waits in %s (--resume finishes it)", dir, p->stage);
    else if (p->staged)
        snprintf(msg + n, sizeof msg - n, "; %s still holds the previous run, unchanged", dir);
    else if (resumable)
        snprintf(msg + n, sizeof msg - n, "; %s holds this run up to its last finished epoch (--resume continues it)", dir);
    else
        snprintf(msg + n, sizeof msg - n, "; no checkpoint was written to %s", dir);
    if (!resumable) { /* a run without a finished epoch leaves nothing behind */
        if (p->staged) {
            tbert_error ignored;
            stage_clear(p->stage, &ignored);
        } else {
            for (int k = 0; k < N_RUN_FILES; k++) { /* the folder held none of them when this run began */
                char *f = g_strdup_printf("%s/%s", dir, RUN_FILES[k]);
                unlink(f);
                g_free(f);
            }
        }
    }
    memcpy(err->msg, msg, sizeof msg);
}
tbert_status tbert_ckpt_plan_commit(const char *dir, const tbert_ckpt_plan *p, tbert_error *err) {
    return p->staged ? stage_commit(dir, p->stage, err) : TBERT_OK;
}

void tbert_ckpt_plan_free(tbert_ckpt_plan *p) {
    g_free(p->stage);
    p->stage = NULL;
}
