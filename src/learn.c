/* Learning from mistakes: `tbert learn` registers corrections in DIR/learned.jsonl (src/learn_log.c, the same
 * append as spamd TELL and HTTP /learn), then retrains the head with them; --rollback puts the previous head
 * back. The head folder's layout is in include/tbert/learn.h; docs/learn.md tells the story. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "learn_internal.h"
#include "serve.h"
#include "tbert/checkpoint.h"
#include "tbert/fileio.h"
#include "tbert/finetune.h"
#include "tbert/learn.h"
#include "tbert/mail.h"
#include "tbert/recipe.h"
#include "tbert/store.h"
#include "tbert/threshold.h"
#include "tbert/train.h"

#define MAX_MESSAGE ((size_t)64 << 20)
#define MAX_LOG ((size_t)1 << 34)
/* the files of one head, as src/checkpoint_folder.c moves them */
static const char *const HEAD_FILES[] = {"split.tsv", "metrics.json", "report.html", "training.json", "learn.state", "best.safetensors",
                                         "last.safetensors", "oof.safetensors"};
enum { N_HEAD_FILES = sizeof HEAD_FILES / sizeof HEAD_FILES[0], DEFAULT_KEEP = 5 };

static void fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    fsync(fd);
    close(fd);
}

/* one learn/rollback at a time per head folder: DIR/.learn.lock (flock, released when the process ends) */
tbert_status tbert_learn_lock_head(const char *head, int *fd, tbert_error *err) {
    char *p = g_strdup_printf("%s/.learn.lock", head);
    *fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    tbert_status st = TBERT_OK;
    if (*fd < 0) st = tbert_fail(err, TBERT_E_IO, "%s: cannot open: %s", p, strerror(errno));
    else
        while (flock(*fd, LOCK_EX) != 0 && errno == EINTR) {
        }
    g_free(p);
    return st;
}

void tbert_learn_unlock_head(int fd) {
    if (fd >= 0) close(fd);
}

/* A retrain killed while its files moved in (src/checkpoint_folder.c) leaves DIR half-moved, without a
 * loadable head, until the next run finishes the move: learn, rollback and forget finish it first. */
tbert_status tbert_learn_finish_move(const char *head, tbert_error *err) {
    tbert_ckpt_plan p = {0};
    tbert_status st = tbert_ckpt_plan_open(head, false, &p, err);
    if (!st && p.staged) rmdir(p.stage); /* the empty staging folder plan_open made for a run */
    tbert_ckpt_plan_free(&p);
    return st;
}

/* ---- the corrections in force ---- */

/* Replays learned.jsonl: "learn" sets a message's class (a later line wins), "forget" with its class (or
 * "any") takes it out. A line that does not parse (a torn last line) is skipped with a warning. */
tbert_status tbert_learn_corrections_read(const char *head, GPtrArray **out, tbert_error *err) {
    *out = g_ptr_array_new();
    char *path = g_strdup_printf("%s/learned.jsonl", head), *buf = NULL;
    size_t len = 0;
    tbert_status st = TBERT_OK;
    if (access(path, F_OK) == 0) st = tbert_read_file(path, MAX_LOG, &buf, &len, err);
    GHashTable *by_sha = g_hash_table_new(g_str_hash, g_str_equal);
    size_t lineno = 0;
    for (char *line = buf, *nl; !st && line && *line; line = nl ? nl + 1 : NULL) {
        nl = strchr(line, '\n');
        if (nl) *nl = '\0';
        lineno++;
        if (!*line) continue;
        cJSON *j = cJSON_Parse(line);
        const char *action = cJSON_GetStringValue(cJSON_GetObjectItem(j, "action"));
        const char *klass = cJSON_GetStringValue(cJSON_GetObjectItem(j, "class"));
        const char *sha = cJSON_GetStringValue(cJSON_GetObjectItem(j, "sha256"));
        const char *b64 = cJSON_GetStringValue(cJSON_GetObjectItem(j, "message_b64"));
        if (!action || !klass || !sha || strlen(sha) != 64) {
            fprintf(stderr, "tbert: warning: %s:%zu: not a correction, skipped\n", path, lineno);
        } else if (!strcmp(action, "learn") && (!strcmp(klass, "spam") || !strcmp(klass, "ham")) && b64) {
            correction *c = g_hash_table_lookup(by_sha, sha);
            if (!c) {
                c = g_new0(correction, 1);
                snprintf(c->sha, sizeof c->sha, "%s", sha);
                g_ptr_array_add(*out, c);
                g_hash_table_insert(by_sha, c->sha, c);
            }
            g_free(c->b64);
            c->b64 = g_strdup(b64);
            snprintf(c->klass, sizeof c->klass, "%s", klass);
        } else if (!strcmp(action, "forget")) {
            correction *c = g_hash_table_lookup(by_sha, sha);
            if (c && (!strcmp(klass, "any") || !strcmp(klass, c->klass))) {
                g_hash_table_remove(by_sha, sha);
                g_ptr_array_remove(*out, c);
                g_free(c->b64);
                g_free(c);
            }
        }
        cJSON_Delete(j);
    }
    g_hash_table_destroy(by_sha);
    free(buf);
    g_free(path);
    return st;
}

void tbert_learn_corrections_free(GPtrArray *a) {
    if (!a) return;
    for (guint i = 0; i < a->len; i++) {
        correction *c = a->pdata[i];
        g_free(c->b64);
        g_free(c);
    }
    g_ptr_array_free(a, TRUE);
}

/* DIR/learned/{ham,spam}/SHA.eml = the corrections in force, nothing else (files named by content, written
 * atomically, the ones no longer in force removed) */
tbert_status tbert_learn_materialize(const char *head, GPtrArray *cs, int *n_ham, int *n_spam, tbert_error *err) {
    *n_ham = *n_spam = 0;
    tbert_status st = TBERT_OK;
    const char *classes[] = {"ham", "spam"};
    for (int k = 0; !st && k < 2; k++) {
        char *dir = g_strdup_printf("%s/learned/%s", head, classes[k]);
        st = tbert_mkdirs(dir, err);
        GHashTable *want = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
        for (guint i = 0; !st && i < cs->len; i++) {
            correction *c = cs->pdata[i];
            if (strcmp(c->klass, classes[k])) continue;
            char *name = g_strdup_printf("%s.eml", c->sha);
            g_hash_table_add(want, name);
            char *p = g_strdup_printf("%s/%s", dir, name);
            if (access(p, F_OK) != 0) {
                gsize n = 0;
                guchar *raw = g_base64_decode(c->b64, &n);
                st = tbert_write_file_atomic(p, raw, n, err);
                g_free(raw);
            }
            g_free(p);
            (*(k ? n_spam : n_ham))++;
        }
        DIR *d = st ? NULL : opendir(dir);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (e->d_name[0] == '.' || g_hash_table_contains(want, e->d_name)) continue;
            if (unlinkat(dirfd(d), e->d_name, 0) != 0 && errno != ENOENT)
                st = tbert_fail(err, TBERT_E_IO, "%s/%s: cannot remove: %s", dir, e->d_name, strerror(errno));
        }
        if (d) closedir(d);
        g_hash_table_destroy(want);
        g_free(dir);
    }
    return st;
}

/* ---- history ---- */
/* the numbered entries of DIR/history, ascending */
static GArray *history_list(const char *head) {
    GArray *a = g_array_new(FALSE, FALSE, sizeof(long));
    char *h = g_strdup_printf("%s/history", head);
    DIR *d = opendir(h);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char *end;
        long n = strtol(e->d_name, &end, 10);
        if (e->d_name[0] >= '0' && e->d_name[0] <= '9' && !*end && n > 0) g_array_append_val(a, n);
    }
    if (d) closedir(d);
    g_free(h);
    for (guint i = 1; i < a->len; i++) /* insertion sort: a handful of entries */
        for (guint j = i; j > 0 && g_array_index(a, long, j - 1) > g_array_index(a, long, j); j--) {
            long t = g_array_index(a, long, j);
            g_array_index(a, long, j) = g_array_index(a, long, j - 1);
            g_array_index(a, long, j - 1) = t;
        }
    return a;
}

void tbert_learn_remove_entry(const char *dir) {
    for (int k = 0; k < N_HEAD_FILES; k++) {
        char *p = g_strdup_printf("%s/%s", dir, HEAD_FILES[k]);
        unlink(p);
        g_free(p);
    }
    rmdir(dir);
}

/* hard links of DIR's head files in DIR/history/N (N = newest + 1), made under a temp name and renamed;
 * the oldest entries beyond keep go. The links stay valid: every head file is replaced by rename. */
/* whether DIR/history/N's best.safetensors is DIR's (the same file: a retrain killed after its push) */
static bool same_head(const char *head, long n) {
    char *a = g_strdup_printf("%s/best.safetensors", head), *b = g_strdup_printf("%s/history/%ld/best.safetensors", head, n);
    struct stat sa, sb;
    bool same = stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_ino == sb.st_ino && sa.st_dev == sb.st_dev;
    g_free(a);
    g_free(b);
    return same;
}

tbert_status tbert_learn_history_push(const char *head, int keep, long *made, tbert_error *err) {
    *made = 0;
    char *h = g_strdup_printf("%s/history", head);
    tbert_status st = tbert_mkdirs(h, err);
    GArray *a = history_list(head);
    if (!st && a->len && same_head(head, g_array_index(a, long, a->len - 1))) { /* already kept */
        g_array_free(a, TRUE);
        g_free(h);
        return TBERT_OK;
    }
    long n = a->len ? g_array_index(a, long, a->len - 1) + 1 : 1;
    char *tmp = g_strdup_printf("%s/.new.%ld", h, (long)getpid()), *fin = g_strdup_printf("%s/%ld", h, n);
    if (!st) {
        tbert_learn_remove_entry(tmp);
        if (mkdir(tmp, 0700) != 0) st = tbert_fail(err, TBERT_E_IO, "%s: cannot create: %s", tmp, strerror(errno));
    }
    for (int k = 0; !st && k < N_HEAD_FILES; k++) {
        char *from = g_strdup_printf("%s/%s", head, HEAD_FILES[k]), *to = g_strdup_printf("%s/%s", tmp, HEAD_FILES[k]);
        if (link(from, to) != 0 && errno != ENOENT)
            st = tbert_fail(err, TBERT_E_IO, "%s: cannot link into %s: %s", from, tmp, strerror(errno));
        g_free(from);
        g_free(to);
    }
    if (!st) {
        fsync_dir(tmp);
        if (rename(tmp, fin) != 0) st = tbert_fail(err, TBERT_E_IO, "%s: cannot create: %s", fin, strerror(errno));
        else fsync_dir(h);
    }
    if (st) tbert_learn_remove_entry(tmp);
    else *made = n;
    for (guint i = 0; !st && a->len + 1 > (guint)keep && i < a->len + 1 - (guint)keep; i++) {
        char *old = g_strdup_printf("%s/%ld", h, g_array_index(a, long, i));
        tbert_learn_remove_entry(old);
        g_free(old);
    }
    g_array_free(a, TRUE);
    g_free(tmp);
    g_free(fin);
    g_free(h);
    return st;
}

tbert_status tbert_learn_rollback(const char *head, tbert_error *err) {
    int lfd = -1;
    tbert_status st = tbert_learn_lock_head(head, &lfd, err);
    if (!st) st = tbert_learn_finish_move(head, err);
    if (st) {
        tbert_learn_unlock_head(lfd);
        return st;
    }
    GArray *a = history_list(head);
    while (a->len && same_head(head, g_array_index(a, long, a->len - 1))) { /* the current head itself: not a previous one */
        char *e = g_strdup_printf("%s/history/%ld", head, g_array_index(a, long, a->len - 1));
        tbert_learn_remove_entry(e);
        g_free(e);
        g_array_set_size(a, a->len - 1);
    }
    if (!a->len) {
        g_array_free(a, TRUE);
        tbert_learn_unlock_head(lfd);
        return tbert_fail(err, TBERT_E_ARG, "%s: no previous head to roll back to (%s/history is empty)", head, head);
    }
    char *entry = g_strdup_printf("%s/history/%ld", head, g_array_index(a, long, a->len - 1));
    g_array_free(a, TRUE);
    char *best = g_strdup_printf("%s/best.safetensors", entry);
    if (!tbert_is_regular_file(best)) st = tbert_fail(err, TBERT_E_IO, "%s: missing; cannot roll back to it", best);
    g_free(best);
    tbert_ckpt_plan p = {0};
    if (!st) st = tbert_ckpt_plan_open(head, false, &p, err);
    /* the previous head's files, linked into the staging folder, move in as one run (src/checkpoint_folder.c);
     * a file the previous head lacks is removed, so that DIR holds files of one head only */
    for (int k = 0; !st && k < N_HEAD_FILES; k++) {
        char *from = g_strdup_printf("%s/%s", entry, HEAD_FILES[k]), *to = g_strdup_printf("%s/%s", p.work, HEAD_FILES[k]);
        if (link(from, to) != 0) {
            if (errno != ENOENT) st = tbert_fail(err, TBERT_E_IO, "%s: cannot link into %s: %s", from, p.work, strerror(errno));
            else if (p.staged) {
                char *cur = g_strdup_printf("%s/%s", head, HEAD_FILES[k]);
                if (unlink(cur) != 0 && errno != ENOENT) st = tbert_fail(err, TBERT_E_IO, "%s: cannot remove: %s", cur, strerror(errno));
                g_free(cur);
            }
        }
        g_free(from);
        g_free(to);
    }
    if (!st && p.staged) {
        fsync_dir(p.work);
        st = tbert_ckpt_plan_commit(head, &p, err);
    }
    if (!st) tbert_learn_remove_entry(entry);
    tbert_ckpt_plan_free(&p);
    g_free(entry);
    tbert_learn_unlock_head(lfd);
    return st;
}

/* ---- retrain ---- */
static double num(const cJSON *s, const char *name, double dflt) {
    const cJSON *v = cJSON_GetObjectItem(s, name);
    return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

static const char **str_array(const cJSON *a, int *n) {
    *n = cJSON_GetArraySize(a);
    const char **v = g_new0(const char *, (gsize)*n + 1);
    for (int i = 0; i < *n; i++) v[i] = cJSON_GetStringValue(cJSON_GetArrayItem(a, i));
    return v;
}

tbert_status tbert_learn_retrain(const tbert_learn_opts *lo, tbert_learn_result *res, tbert_error *err) {
    double t0 = tbert_now();
    int lfd = -1;
    tbert_status st = tbert_learn_lock_head(lo->head, &lfd, err);
    if (!st) st = tbert_learn_finish_move(lo->head, err);
    if (!st && !lo->full) { /* warm start from the current fold heads and stored rows, when the head has them */
        bool no_state = false;
        st = tbert_learn_warm(lo, res, &no_state, err);
        if (st || !no_state) {
            res->seconds_retrain = tbert_now() - t0;
            tbert_learn_unlock_head(lfd);
            return st;
        }
    }
    if (st) {
        tbert_learn_unlock_head(lfd);
        return st;
    }
    char *mpath = g_strdup_printf("%s/training.json", lo->head), *txt = NULL;
    size_t len;
    cJSON *m = NULL;
    GPtrArray *cs = NULL;
    const char **ham = NULL, **spam = NULL;
    char *learned = g_strdup_printf("%s/learned", lo->head), *rule = NULL;
    if (!tbert_is_regular_file(mpath))
        st = tbert_fail(err, TBERT_E_ARG, "%s: missing: this head does not record what it was trained on (retrain it with tbert train)",
                        mpath);
    if (!st) st = tbert_read_file(mpath, 1 << 24, &txt, &len, err);
    if (!st && !(m = cJSON_Parse(txt))) st = tbert_fail(err, TBERT_E_IO, "%s: not valid JSON", mpath);
    if (!st && cJSON_GetObjectItem(m, "data"))
        st = tbert_fail(err, TBERT_E_ARG, "%s: learn needs a head trained from mail (--ham/--spam), this one came from a table", mpath);
    if (!st) st = tbert_learn_corrections_read(lo->head, &cs, err);
    if (!st) st = tbert_learn_materialize(lo->head, cs, &res->learned_ham, &res->learned_spam, err);
    if (!st) { /* the rule that chose the current cut (a later `tbert threshold` may have changed it) */
        tbert_oof oof;
        tbert_error ignored;
        if (tbert_oof_load(lo->head, &oof, &ignored) == TBERT_OK) {
            if (oof.rule[0]) rule = g_strdup(oof.rule);
            tbert_oof_free(&oof);
        }
    }
    tbert_train_opts o;
    tbert_train_opts_default(&o);
    if (!st) {
        const cJSON *s = cJSON_GetObjectItem(m, "settings");
        o.model = cJSON_GetStringValue(cJSON_GetObjectItem(m, "model"));
        o.recipe = cJSON_GetStringValue(cJSON_GetObjectItem(m, "recipe"));
        ham = str_array(cJSON_GetObjectItem(m, "ham"), &o.n_ham);
        spam = str_array(cJSON_GetObjectItem(m, "spam"), &o.n_spam);
        o.ham = ham;
        o.spam = spam;
        o.pool = (int)num(s, "pool", -1);
        o.max_len = (int)num(s, "max_len", -1);
        o.layers = (int)num(s, "layers", -1);
        o.windows = (int)num(s, "windows", -1);
        o.normalize = (int)num(s, "normalize", -1);
        o.lexical_dim = (int)num(s, "lexical_dim", -1);
        o.lexical_ngrams = (int)num(s, "lexical_ngrams", -1);
        o.evidence_set = (int)num(s, "evidence_set", -1);
        o.evidence_dim = (int)num(s, "evidence_dim", -1);
        o.header_dim = (int)num(s, "header_dim", -1);
        o.header_weight = num(s, "header_weight", -1);
        o.hidden = (int)num(s, "hidden", -1);
        o.epochs = (int)num(s, "epochs", -1);
        o.batch = (int)num(s, "batch", -1);
        o.lr = num(s, "lr", -1);
        o.weight_decay = num(s, "weight_decay", -1);
        o.dropout = num(s, "dropout", -1);
        o.val_fraction = num(s, "val_fraction", -1);
        o.test_fraction = num(s, "test_fraction", -1);
        o.cv_folds = (int)num(s, "cv_folds", -1);
        o.precision = (tbert_precision)num(s, "precision", TBERT_PREC_FP32);
        o.finetune = (int)num(s, "finetune", 0); /* a fine-tuned head retrains fine-tuned (src/finetune.c) */
        o.encoder_lr = num(s, "encoder_lr", o.encoder_lr);
        o.finetune_epochs = (int)num(s, "finetune_epochs", o.finetune_epochs);
        o.finetune_dropout = (int)num(s, "finetune_dropout", o.finetune_dropout);
        o.finetune_head = (int)num(s, "finetune_head", TBERT_FT_HEAD_JOINT); /* heads from before the option: joint */
        const char *seed = cJSON_GetStringValue(cJSON_GetObjectItem(s, "seed"));
        if (seed) o.seed = strtoull(seed, NULL, 10);
        o.class_weights_auto = cJSON_IsTrue(cJSON_GetObjectItem(s, "class_weights_auto"));
        o.positive = cJSON_GetStringValue(cJSON_GetObjectItem(s, "positive"));
        o.threshold = rule ? rule : cJSON_GetStringValue(cJSON_GetObjectItem(s, "threshold"));
        o.device = lo->device;
        o.threads = lo->threads;
        o.quiet = lo->quiet;
        o.out_dir = lo->head;
        o.learned_dir = learned;
        if (!o.model || (!o.n_ham && !o.n_spam)) st = tbert_fail(err, TBERT_E_IO, "%s: no model or no training paths in it", mpath);
    }
    long made = 0;
    if (!st) st = tbert_learn_history_push(lo->head, lo->keep > 0 ? lo->keep : DEFAULT_KEEP, &made, err);
    tbert_train_result tr = {0};
    if (!st) {
        st = tbert_train_run(&o, &tr, err);
        if (st && made) { /* the head is unchanged (staged run): its copy in the history is not a previous head */
            char *e = g_strdup_printf("%s/history/%ld", lo->head, made);
            tbert_learn_remove_entry(e);
            g_free(e);
        } else if (!st) {
            res->retrained = true;
            res->docs = tr.n_docs;
            res->docs_encoded = tr.docs_encoded;
            res->threshold = tr.recipe.threshold;
        }
        tbert_train_result_free(&tr);
    }
    res->seconds_retrain = tbert_now() - t0;
    g_free(rule);
    g_free(learned);
    g_free(ham);
    g_free(spam);
    tbert_learn_corrections_free(cs);
    cJSON_Delete(m);
    free(txt);
    g_free(mpath);
    tbert_learn_unlock_head(lfd);
    return st;
}

tbert_status tbert_learn(const tbert_learn_opts *o, tbert_learn_result *res, tbert_error *err) {
    memset(res, 0, sizeof *res);
    double t0 = tbert_now();
    if (!tbert_is_dir(o->head)) return tbert_fail(err, TBERT_E_ARG, "%s: not a head folder", o->head);
    tbert_status st = TBERT_OK;
    for (int i = 0; !st && i < o->n_files; i++) {
        char *raw = NULL;
        size_t len = 0;
        st = tbert_read_file(o->files[i], MAX_MESSAGE, &raw, &len, err);
        char sha[65];
        if (!st) st = tbert_learn_append(o->head, o->unlearn ? "forget" : "learn", o->klass, raw, len, false, "cli", sha, err);
        if (!st) res->registered++;
        free(raw);
    }
    res->seconds_register = tbert_now() - t0;
    if (st) return st;
    if (o->no_retrain) { /* count what is in force now (the learned/ folder follows at the retrain) */
        GPtrArray *cs = NULL;
        st = tbert_learn_corrections_read(o->head, &cs, err);
        for (guint i = 0; !st && i < cs->len; i++) {
            bool spam = !strcmp(((correction *)cs->pdata[i])->klass, "spam");
            (*(spam ? &res->learned_spam : &res->learned_ham))++;
        }
        tbert_learn_corrections_free(cs);
        return st;
    }
    return tbert_learn_retrain(o, res, err);
}

/* ---- forget ---- */
static bool in_force(GPtrArray *cs, const char *sha) {
    for (guint i = 0; cs && i < cs->len; i++)
        if (!strcmp(((correction *)cs->pdata[i])->sha, sha)) return true;
    return false;
}

tbert_status tbert_forget(const tbert_learn_opts *o, tbert_learn_result *res, int *rows_removed, tbert_error *err) {
    memset(res, 0, sizeof *res);
    *rows_removed = 0;
    double t0 = tbert_now();
    char *best = g_strdup_printf("%s/best.safetensors", o->head);
    tbert_head *h = NULL;
    tbert_ckpt_meta meta = {0};
    int lfd = -1;
    tbert_status st = tbert_learn_lock_head(o->head, &lfd, err);
    if (!st) st = tbert_learn_finish_move(o->head, err);
    tbert_learn_unlock_head(lfd);
    if (!st) st = tbert_checkpoint_load(best, &h, &meta, NULL, NULL, err);
    tbert_head_free(h);
    char key[65], ft[65] = ""; /* a fine-tuned encoder's rows are keyed by its tensors too */
    if (!st && meta.recipe.finetune.layers > 0) st = tbert_finetune_hash(best, ft, err);
    g_free(best);
    if (!st) st = tbert_features_dense_key_ft(&meta.recipe, ft, key, err);
    tbert_ckpt_meta_free(&meta);
    tbert_store *store = NULL;
    if (!st) st = tbert_store_open(NULL, &store, err);
    GPtrArray *cs = NULL;
    if (!st) st = tbert_learn_corrections_read(o->head, &cs, err);
    bool retrain = false;
    for (int i = 0; !st && i < o->n_files; i++) {
        char *raw = NULL, sha[65], content[65];
        size_t len = 0;
        st = tbert_read_file(o->files[i], MAX_MESSAGE, &raw, &len, err);
        tbert_message m;
        if (!st) st = tbert_message_parse(raw, len, o->files[i], &m, err);
        if (!st) {
            tbert_mail_doc doc;
            st = tbert_mail_document(&m, &doc, err);
            tbert_message_free(&m);
            if (!st) {
                bool removed = false;
                tbert_store_content_hash(doc.text ? doc.text : "", doc.text ? doc.len : 0, content);
                st = tbert_store_remove(store, key, content, &removed, err);
                *rows_removed += removed;
                tbert_mail_doc_free(&doc);
            }
        }
        if (!st) st = tbert_learn_append(o->head, "forget", "any", raw, len, false, "cli", sha, err);
        if (!st) {
            res->registered++;
            retrain = retrain || in_force(cs, sha);
        }
        free(raw);
    }
    tbert_learn_corrections_free(cs);
    tbert_store_close(store);
    res->seconds_register = tbert_now() - t0;
    if (st) return st;
    if (!retrain || o->no_retrain) { /* the learned/ folder follows the log either way */
        GPtrArray *now = NULL;
        st = tbert_learn_corrections_read(o->head, &now, err);
        if (!st) st = tbert_learn_materialize(o->head, now, &res->learned_ham, &res->learned_spam, err);
        tbert_learn_corrections_free(now);
        return st;
    }
    return tbert_learn_retrain(o, res, err);
}
