/* tbert serve's debounced background retrain (issue 14 "Learning"): TELL and POST /learn only append to
 * DIR/learned.jsonl (src/learn_log.c, durable before the client hears back); this file notices the log grew,
 * waits until it has been quiet for --retrain-after seconds (a burst of corrections gives one retrain), then
 * runs `tbert learn --head DIR --retrain --warm` as a child process (src/learn_warm.c: seconds; the full
 * retrain when the head has no learn.state). The child swaps the new head in atomically (its own lock, the
 * checkpoint-folder transaction); serve's head watcher (src/serve.c) sees best.safetensors change and reloads
 * as on SIGHUP, between two batches, so no request or connection is dropped.
 * Why a child process and not a thread: the retrain loads its own encoder only for new messages, takes the
 * head folder's flock, and a crash or a kill in it cannot take the server down; serve's own memory stays
 * what it was (the child's is reported in its log line). Corrections appended while serve was down (learned.jsonl
 * newer than best.safetensors at start) are retrained after the first quiet period too.
 * Everything here runs on serve's main (signal) thread: no locks. */
#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "serve.h"

struct serve_retrainer {
    char dir[4096], log[4200], best[4200], exe[4096];
    double quiet_s;
    struct stat seen; /* learned.jsonl as last seen (st_size 0 and st_ino 0: absent) */
    bool pending;     /* corrections since the last retrain started */
    double changed_at, child_started;
    pid_t child;
};

static bool same_file(const struct stat *a, const struct stat *b) {
    return a->st_ino == b->st_ino && a->st_dev == b->st_dev && a->st_size == b->st_size && a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
           a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

serve_retrainer *serve_retrainer_new(const char *head, const char *exe, double quiet_s) {
    if (!(quiet_s > 0)) return NULL;
    serve_retrainer *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    snprintf(r->dir, sizeof r->dir, "%s", head);
    struct stat hs;
    if (stat(head, &hs) == 0 && !S_ISDIR(hs.st_mode)) { /* --head FILE.safetensors: its folder */
        char *sl = strrchr(r->dir, '/');
        if (sl) *sl = '\0';
        else snprintf(r->dir, sizeof r->dir, ".");
    }
    snprintf(r->log, sizeof r->log, "%s/learned.jsonl", r->dir);
    snprintf(r->best, sizeof r->best, "%s/best.safetensors", r->dir);
    snprintf(r->exe, sizeof r->exe, "%s", exe ? exe : "/proc/self/exe");
    r->quiet_s = quiet_s;
    r->child = -1;
    struct stat bs;
    if (stat(r->log, &r->seen) == 0 && stat(r->best, &bs) == 0 &&
        (r->seen.st_mtim.tv_sec > bs.st_mtim.tv_sec ||
         (r->seen.st_mtim.tv_sec == bs.st_mtim.tv_sec && r->seen.st_mtim.tv_nsec > bs.st_mtim.tv_nsec))) {
        r->pending = true; /* corrections the current head has not learned yet */
        r->changed_at = tbert_now();
    }
    return r;
}

static pid_t spawn_learn(serve_retrainer *r, serve_log_fn log, serve_ctx *ctx) {
    char *argv[] = {"tbert", "learn", "--head", r->dir, "--retrain", "--warm", "--device", "cpu", "--threads", "1", NULL};
    posix_spawn_file_actions_t fa;
    pid_t pid = -1;
    int e = posix_spawn_file_actions_init(&fa);
    if (e == 0) {
        e = posix_spawn_file_actions_adddup2(&fa, 2, 1); /* its one result line goes to serve's log, not to stdout */
        if (e == 0) e = serve_spawn(&pid, r->exe, &fa, argv);
        posix_spawn_file_actions_destroy(&fa);
    }
    if (e != 0) {
        log(ctx, "retrain: cannot start tbert learn: %s", strerror(e));
        return -1;
    }
    return pid;
}

void serve_retrainer_tick(serve_retrainer *r, serve_log_fn log, serve_ctx *ctx) {
    if (!r) return;
    double now = tbert_now();
    struct stat st;
    if (stat(r->log, &st) != 0) memset(&st, 0, sizeof st);
    if (!same_file(&st, &r->seen)) { /* a correction arrived (TELL, POST /learn, or tbert learn --no-retrain) */
        r->seen = st;
        r->pending = st.st_size > 0;
        r->changed_at = now;
    }
    if (r->child > 0) {
        int ws;
        pid_t w = waitpid(r->child, &ws, WNOHANG);
        if (w == r->child) {
            if (WIFEXITED(ws) && WEXITSTATUS(ws) == 0)
                log(ctx, "retrain: done in %.2f s (the head watcher reloads the new head)", now - r->child_started);
            else if (WIFSIGNALED(ws))
                log(ctx, "retrain: tbert learn died of signal %d; the head is unchanged", WTERMSIG(ws));
            else
                log(ctx, "retrain: tbert learn failed (exit %d; its line above says why); the head is unchanged", WEXITSTATUS(ws));
            r->child = -1;
        }
    }
    if (r->pending && r->child < 0 && now - r->changed_at >= r->quiet_s) {
        r->pending = false; /* corrections after this start give another retrain */
        r->child = spawn_learn(r, log, ctx);
        r->child_started = now;
        if (r->child > 0)
            log(ctx, "retrain: %.0f s without new corrections: tbert learn --retrain --warm started (pid %ld)", r->quiet_s,
                (long)r->child);
    }
}

void serve_retrainer_free(serve_retrainer *r, serve_log_fn log, serve_ctx *ctx) {
    if (!r) return;
    if (r->child > 0) { /* a retrain is atomic: stopping it leaves the current head */
        kill(r->child, SIGTERM);
        int ws;
        while (waitpid(r->child, &ws, 0) < 0 && errno == EINTR) {
        }
        log(ctx, "retrain: stopped the running retrain (the head is unchanged)");
    }
    free(r);
}
