/* Input enumeration for train --ham/--spam and score: the named paths are expanded once into a list of
 * sources (folders walked recursively, every file path sorted bytewise), then items are produced one at a
 * time so that memory stays flat whatever the archive size. An mbox is streamed line by line through zlib
 * (gzread reads plain files too, so .gz is transparent). Item index counts every item in input order and is
 * the basis of --shard K/N. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "tbert/mail.h"

#define DEFAULT_MAX_MESSAGE ((size_t)32 << 20)
#define LINE_CHUNK ((size_t)1 << 20) /* longer lines are handed on in pieces */

typedef enum { SRC_FOLDER_FILE, SRC_NAMED_FILE, SRC_TABLE, SRC_STDIN } src_kind;

typedef struct {
    char *path;
    src_kind kind;
    uint64_t size;
} input_source;

typedef struct {
    gzFile gz;
    char *buf;
    size_t cap, start, end;
    uint64_t off; /* uncompressed offset of buf[start] */
    bool eof, failed;
    bool at_line_start; /* the next piece begins a line */
    char errmsg[160];
} line_reader;

struct tbert_inputs {
    tbert_input_opts opts;
    size_t cap_bytes;
    input_source *src;
    size_t n_src, cur;
    uint64_t index; /* items seen so far (shard basis) */
    uint64_t bytes_done_sources, bytes_total;
    /* state of the source being read */
    bool open;
    enum { ST_NONE, ST_MBOX, ST_TABLE } state;
    line_reader lr;
    bool have_from;        /* lr holds a pending "From " line (start of the next message) */
    uint64_t from_off;
    tbert_table table;
    int table_row;
    uint64_t cur_consumed; /* bytes of the current source consumed (compressed position for .gz) */
};

/* ---- source list --------------------------------------------------------- */

typedef struct {
    input_source *v;
    size_t n, cap;
} srcvec;

static bool src_push(srcvec *sv, const char *path, src_kind kind, uint64_t size) {
    if (sv->n == sv->cap) {
        size_t nc = sv->cap ? sv->cap * 2 : 64;
        input_source *nv = tbert_realloc_array(sv->v, nc, sizeof *nv);
        if (!nv) return false;
        sv->v = nv;
        sv->cap = nc;
    }
    char *p = tbert_strdup(path);
    if (!p) return false;
    sv->v[sv->n++] = (input_source){p, kind, size};
    return true;
}

static int cmp_source_path(const void *a, const void *b) {
    return strcmp(((const input_source *)a)->path, ((const input_source *)b)->path);
}

static bool is_dir_at(const char *dir, const char *name) {
    char p[4096];
    if ((size_t)snprintf(p, sizeof p, "%s/%s", dir, name) >= sizeof p) return false;
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Collects the files under `dir`. Hidden files are skipped (.DS_Store, .mh_sequences, Dovecot indexes);
 * hidden folders are walked (Maildir++ keeps subfolders as .Name); tmp/ of a Maildir holds mail still being
 * delivered and is skipped. Errors reading a folder become error items later (kind FOLDER_FILE, size 0). */
/* The folders on the path from the walk's root to the current one: a symlink back to any of them would
 * make the walk loop (or, with two such links, grow exponentially), so such a folder is not entered again. */
typedef struct dir_chain {
    dev_t dev;
    ino_t ino;
    const struct dir_chain *up;
} dir_chain;

static bool on_chain(const dir_chain *c, const struct stat *st) {
    for (; c; c = c->up)
        if (c->dev == st->st_dev && c->ino == st->st_ino) return true;
    return false;
}

static tbert_status walk_dir(const char *dir, srcvec *sv, int depth, const dir_chain *up, tbert_error *err) {
    if (depth > 64) return TBERT_OK;
    struct stat self = {0};
    if (stat(dir, &self) == 0 && on_chain(up, &self)) return TBERT_OK;
    dir_chain here = {self.st_dev, self.st_ino, up};
    DIR *d = opendir(dir);
    if (!d) return src_push(sv, dir, SRC_FOLDER_FILE, 0) ? TBERT_OK : tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", dir);
    bool maildir = is_dir_at(dir, "cur") && is_dir_at(dir, "new");
    struct dirent *e;
    tbert_status st = TBERT_OK;
    while (st == TBERT_OK && (e = readdir(d)) != NULL) {
        const char *name = e->d_name;
        if (!strcmp(name, ".") || !strcmp(name, "..")) continue;
        char p[4096];
        if ((size_t)snprintf(p, sizeof p, "%s/%s", dir, name) >= sizeof p) continue;
        struct stat stt;
        if (stat(p, &stt) != 0) continue; /* dangling link */
        if (S_ISDIR(stt.st_mode)) {
            if (maildir && !strcmp(name, "tmp")) continue;
            st = walk_dir(p, sv, depth + 1, &here, err);
        } else if (S_ISREG(stt.st_mode)) {
            if (name[0] == '.') continue;
            if (!src_push(sv, p, SRC_FOLDER_FILE, (uint64_t)stt.st_size)) st = tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", dir);
        }
    }
    closedir(d);
    return st;
}

static bool is_table_name(const char *p) {
    static const char *const ext[] = {".tsv", ".tab", ".csv", ".jsonl", ".ndjson"};
    size_t n = strlen(p);
    for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++) {
        size_t m = strlen(ext[i]);
        if (n >= m && !strcasecmp(p + n - m, ext[i])) return true;
    }
    return false;
}

tbert_status tbert_inputs_open(const char *const *paths, int n_paths, const tbert_input_opts *opts, tbert_inputs **out,
                               tbert_error *err) {
    *out = NULL;
    tbert_inputs *in = calloc(1, sizeof *in);
    if (!in) return tbert_fail(err, TBERT_E_NOMEM, "out of memory opening the inputs");
    if (opts) in->opts = *opts;
    in->cap_bytes = in->opts.max_message_bytes ? in->opts.max_message_bytes : DEFAULT_MAX_MESSAGE;
    if (in->opts.shard_n < 0 || (in->opts.shard_n > 0 && (in->opts.shard_k < 0 || in->opts.shard_k >= in->opts.shard_n))) {
        int k = in->opts.shard_k, n = in->opts.shard_n;
        free(in);
        return tbert_fail(err, TBERT_E_ARG, "--shard K/N needs 0 <= K < N, got %d/%d", k, n);
    }
    srcvec sv = {0};
    tbert_status st = TBERT_OK;
    for (int i = 0; i < n_paths && st == TBERT_OK; i++) {
        const char *p = paths[i];
        if (!strcmp(p, "-")) {
            if (!src_push(&sv, "-", SRC_STDIN, 0)) st = tbert_fail(err, TBERT_E_NOMEM, "out of memory");
            continue;
        }
        struct stat stt;
        if (stat(p, &stt) != 0) {
            st = tbert_fail(err, TBERT_E_IO, "%s: cannot open: %s", p, strerror(errno));
        } else if (S_ISDIR(stt.st_mode)) {
            size_t first = sv.n;
            st = walk_dir(p, &sv, 0, NULL, err);
            if (st == TBERT_OK && sv.n > first) qsort(sv.v + first, sv.n - first, sizeof *sv.v, cmp_source_path);
        } else {
            if (access(p, R_OK) != 0) {
                st = tbert_fail(err, TBERT_E_IO, "%s: cannot open: %s", p, strerror(errno));
                break;
            }
            bool table = in->opts.table.format != TBERT_TABLE_AUTO || is_table_name(p);
            if (!src_push(&sv, p, table ? SRC_TABLE : SRC_NAMED_FILE, (uint64_t)stt.st_size))
                st = tbert_fail(err, TBERT_E_NOMEM, "out of memory");
        }
    }
    in->src = sv.v;
    in->n_src = sv.n;
    for (size_t i = 0; i < sv.n; i++) in->bytes_total += sv.v[i].size;
    if (st != TBERT_OK) {
        tbert_inputs_close(in);
        return st;
    }
    *out = in;
    return TBERT_OK;
}

/* ---- line reader over zlib ----------------------------------------------- */

static bool lr_open(line_reader *lr, const char *path) {
    memset(lr, 0, sizeof *lr);
    lr->gz = !strcmp(path, "-") ? gzdopen(dup(STDIN_FILENO), "rb") : gzopen(path, "rb");
    if (!lr->gz) return false;
    gzbuffer(lr->gz, 1 << 17);
    lr->cap = 1 << 16;
    lr->buf = malloc(lr->cap);
    lr->at_line_start = true;
    if (!lr->buf) {
        gzclose(lr->gz);
        lr->gz = NULL;
        return false;
    }
    return true;
}

static void lr_close(line_reader *lr) {
    if (lr->gz) gzclose(lr->gz);
    free(lr->buf);
    memset(lr, 0, sizeof *lr);
}

/* Next piece: a whole line with its '\n', or LINE_CHUNK bytes of a longer one. Returns false at the end
 * (or on a read error: lr->failed with lr->errmsg). *starts_line says whether the piece begins a line. */
static bool lr_next(line_reader *lr, const char **s, size_t *n, uint64_t *off, bool *starts_line) {
    for (;;) {
        char *nl = lr->end > lr->start ? memchr(lr->buf + lr->start, '\n', lr->end - lr->start) : NULL;
        size_t avail = lr->end - lr->start;
        if (nl || avail >= LINE_CHUNK || (lr->eof && avail > 0)) {
            size_t len = nl ? (size_t)(nl - (lr->buf + lr->start)) + 1 : (avail >= LINE_CHUNK ? LINE_CHUNK : avail);
            *s = lr->buf + lr->start;
            *n = len;
            *off = lr->off;
            *starts_line = lr->at_line_start;
            lr->at_line_start = nl != NULL && len == (size_t)(nl - (lr->buf + lr->start)) + 1;
            lr->start += len;
            lr->off += len;
            return true;
        }
        if (lr->eof) return false;
        if (lr->start > 0) {
            memmove(lr->buf, lr->buf + lr->start, avail);
            lr->start = 0;
            lr->end = avail;
        }
        if (lr->end == lr->cap) {
            size_t nc = lr->cap * 2;
            char *nb = realloc(lr->buf, nc);
            if (!nb) {
                lr->failed = true;
                snprintf(lr->errmsg, sizeof lr->errmsg, "out of memory");
                lr->eof = true;
                continue;
            }
            lr->buf = nb;
            lr->cap = nc;
        }
        int r = gzread(lr->gz, lr->buf + lr->end, (unsigned)(lr->cap - lr->end));
        if (r < 0) {
            int e;
            const char *m = gzerror(lr->gz, &e);
            lr->failed = true;
            snprintf(lr->errmsg, sizeof lr->errmsg, "%s", e == Z_ERRNO ? strerror(errno) : m);
            lr->eof = true;
        } else if (r == 0) {
            lr->eof = true;
        } else {
            lr->end += (size_t)r;
        }
    }
}

/* ---- mbox ---------------------------------------------------------------- */

static bool is_weekday(const char *p) {
    static const char *const days[] = {"Mon ", "Tue ", "Wed ", "Thu ", "Fri ", "Sat ", "Sun "};
    for (int i = 0; i < 7; i++)
        if (!strncmp(p, days[i], 4)) return true;
    return false;
}

/* "From sender Tue Sep  3 10:00:00 2002" (strict: a weekday follows the sender) or, after a blank line,
 * any "From x ..." line that holds a digit (loose). */
static bool is_from_line(const char *s, size_t n, bool after_blank) {
    if (n < 5 || memcmp(s, "From ", 5)) return false;
    size_t i = 5;
    while (i < n && s[i] != ' ' && s[i] != '\n') i++;
    while (i < n && s[i] == ' ') i++;
    if (i + 4 < n && is_weekday(s + i)) return true;
    if (!after_blank) return false;
    for (size_t j = 5; j < n; j++)
        if (s[j] >= '0' && s[j] <= '9') return true;
    return false;
}

static bool is_blank_line(const char *s, size_t n) {
    return (n == 1 && s[0] == '\n') || (n == 2 && s[0] == '\r' && s[1] == '\n');
}

/* ---- items --------------------------------------------------------------- */

static bool shard_keep(const tbert_inputs *in, uint64_t index) {
    return in->opts.shard_n <= 0 || index % (uint64_t)in->opts.shard_n == (uint64_t)in->opts.shard_k;
}

static bool skipped(const tbert_inputs *in, const char *source, uint64_t offset) {
    return in->opts.skip && in->opts.skip(in->opts.skip_ctx, source, offset);
}

static int item_error(tbert_input_item *item, const char *source, uint64_t off, const char *fmt, const char *a,
                      tbert_error *err) {
    char msg[512];
    snprintf(msg, sizeof msg, fmt, a);
    item->source = tbert_strdup(source);
    item->offset = off;
    item->is_message = true;
    item->error = tbert_strdup(msg);
    if (!item->source || !item->error) {
        tbert_input_item_free(item);
        tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", source);
        return -1;
    }
    return 1;
}

typedef struct {
    char *p;
    size_t n, cap;
    bool oom;
} bytebuf;

static void bb_put(bytebuf *b, const char *s, size_t n, size_t limit, bool *truncated) {
    if (b->n + n > limit) {
        *truncated = true;
        n = limit > b->n ? limit - b->n : 0;
    }
    if (!n || b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 4096;
        while (nc < b->n + n + 1) nc *= 2;
        char *np = realloc(b->p, nc);
        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

/* Hands b (taken over) on as the message at source/offset, or an error item when reading it ran out of memory. */
static int message_item(tbert_input_item *item, const char *source, uint64_t offset, bytebuf *b, bool trunc, tbert_error *err) {
    if (b->oom) {
        free(b->p);
        return item_error(item, source, offset, "%s", "out of memory reading the message", err);
    }
    item->source = tbert_strdup(source);
    item->offset = offset;
    item->is_message = true;
    item->raw = b->p ? b->p : tbert_strdup("");
    item->raw_len = b->n;
    item->truncated = trunc;
    if (!item->source || !item->raw) {
        tbert_input_item_free(item);
        return tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", source), -1;
    }
    return 1;
}

/* Reads the rest of lr as one message (a file that is not an mbox, or stdin). */
static int read_whole(tbert_inputs *in, const char *source, const char *first, size_t first_n, bool keep,
                      tbert_input_item *item, tbert_error *err) {
    bytebuf b = {0};
    bool trunc = false;
    if (keep) bb_put(&b, first, first_n, in->cap_bytes, &trunc);
    const char *s;
    size_t n;
    uint64_t off;
    bool sl;
    while (lr_next(&in->lr, &s, &n, &off, &sl))
        if (keep) bb_put(&b, s, n, in->cap_bytes, &trunc);
    if (!keep) return 0;
    if (in->lr.failed) {
        free(b.p);
        return item_error(item, source, 0, "read failed: %s", in->lr.errmsg, err);
    }
    return message_item(item, source, 0, &b, trunc, err);
}

/* Next message of the mbox in lr (lr holds a pending From line at from_off). 1 item, 0 end of the mbox. */
static int mbox_next(tbert_inputs *in, const char *source, tbert_input_item *item, tbert_error *err) {
    for (;;) {
        if (!in->have_from) return 0;
        uint64_t msg_off = in->from_off;
        in->have_from = false;
        bool keep = shard_keep(in, in->index) && !skipped(in, source, msg_off);
        in->index++;
        bytebuf b = {0};
        bool trunc = false, prev_blank = true;
        const char *s;
        size_t n;
        uint64_t off;
        bool sl;
        while (lr_next(&in->lr, &s, &n, &off, &sl)) {
            if (sl && is_from_line(s, n, prev_blank)) {
                in->have_from = true;
                in->from_off = off;
                break;
            }
            prev_blank = sl && is_blank_line(s, n);
            if (!keep) continue;
            /* mboxrd: ">From ", ">>From ", ... lose one '>' (mboxo's ">From " is covered by the same rule) */
            if (sl && n > 5 && s[0] == '>') {
                size_t q = 0;
                while (q < n && s[q] == '>') q++;
                if (n - q >= 5 && !memcmp(s + q, "From ", 5)) {
                    s++;
                    n--;
                }
            }
            bb_put(&b, s, n, in->cap_bytes, &trunc);
        }
        in->cur_consumed = (uint64_t)gzoffset(in->lr.gz);
        if (!keep) {
            free(b.p);
            if (in->lr.failed) return 0;
            continue;
        }
        if (in->lr.failed && !in->have_from) {
            free(b.p);
            return item_error(item, source, msg_off, "read failed: %s", in->lr.errmsg, err);
        }
        /* the blank line that ends each mbox message (before the next "From " line or the end) is not part of it */
        if (!trunc && !b.oom) {
            if (b.n >= 2 && b.p[b.n - 1] == '\n' && b.p[b.n - 2] == '\n') b.p[--b.n] = '\0';
            else if (b.n >= 4 && !memcmp(b.p + b.n - 4, "\r\n\r\n", 4)) b.p[b.n -= 2] = '\0';
        }
        return message_item(item, source, msg_off, &b, trunc, err);
    }
}

static void close_current(tbert_inputs *in) {
    if (in->state == ST_MBOX || in->lr.gz) lr_close(&in->lr);
    if (in->state == ST_TABLE) tbert_table_free(&in->table);
    in->state = ST_NONE;
    in->open = false;
    in->have_from = false;
}

static void finish_source(tbert_inputs *in) {
    close_current(in);
    in->bytes_done_sources += in->src[in->cur].size;
    in->cur_consumed = 0;
    in->cur++;
}

/* Opens a named file or stdin: mbox when it starts with "From ", else one message. */
static int open_stream(tbert_inputs *in, const input_source *src, tbert_input_item *item, tbert_error *err) {
    if (!lr_open(&in->lr, src->path)) {
        int e = errno ? errno : EIO;
        bool keep = shard_keep(in, in->index++);
        char *path = tbert_strdup(src->path);
        finish_source(in);
        if (!path) return tbert_fail(err, TBERT_E_NOMEM, "out of memory"), -1;
        int r = keep ? item_error(item, path, 0, "cannot open: %s", strerror(e), err) : 0;
        free(path);
        return r;
    }
    const char *s;
    size_t n;
    uint64_t off;
    bool sl;
    if (!lr_next(&in->lr, &s, &n, &off, &sl)) {
        /* empty file (or unreadable): one message with an error */
        bool keep = shard_keep(in, in->index++);
        char msg[200];
        snprintf(msg, sizeof msg, "%s", in->lr.failed ? in->lr.errmsg : "empty file");
        finish_source(in);
        if (!keep) return 0;
        return item_error(item, src->path, 0, "%s", msg, err);
    }
    if (src->kind == SRC_NAMED_FILE && n >= 5 && !memcmp(s, "From ", 5)) {
        in->state = ST_MBOX;
        in->open = true;
        in->have_from = true;
        in->from_off = off;
        return 0; /* the caller goes on with mbox_next */
    }
    bool keep = shard_keep(in, in->index++) && !skipped(in, src->path, 0);
    /* copy the first piece: lr_next's pointer is invalidated by the next read */
    char *first = tbert_strndup(s, n);
    if (!first) return tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", src->path), -1;
    int r = read_whole(in, src->path, first, n, keep, item, err);
    free(first);
    finish_source(in);
    return r;
}

static int table_next(tbert_inputs *in, const input_source *src, tbert_input_item *item, tbert_error *err) {
    while (in->table_row < in->table.n) {
        int i = in->table_row++;
        if (!shard_keep(in, in->index++)) continue;
        if (skipped(in, src->path, in->table.offset ? in->table.offset[i] : 0)) continue;
        item->source = tbert_strdup(src->path);
        item->offset = in->table.offset ? in->table.offset[i] : 0;
        item->is_message = false;
        item->text = in->table.text[i];
        item->text_len = in->table.text_len[i];
        in->table.text[i] = NULL;
        if (in->table.label) {
            item->label = in->table.label[i];
            in->table.label[i] = NULL;
        }
        if (!item->source) {
            tbert_input_item_free(item);
            return tbert_fail(err, TBERT_E_NOMEM, "%s: out of memory", src->path), -1;
        }
        return 1;
    }
    return 0;
}

int tbert_inputs_next(tbert_inputs *in, tbert_input_item *item, tbert_error *err) {
    memset(item, 0, sizeof *item);
    while (in->cur < in->n_src) {
        const input_source *src = &in->src[in->cur];
        if (in->state == ST_MBOX) {
            int r = mbox_next(in, src->path, item, err);
            if (r != 0) return r;
            finish_source(in);
            continue;
        }
        if (in->state == ST_TABLE) {
            int r = table_next(in, src, item, err);
            if (r != 0) return r;
            finish_source(in);
            continue;
        }
        switch (src->kind) {
        case SRC_FOLDER_FILE: {
            bool keep = shard_keep(in, in->index++) && !skipped(in, src->path, 0);
            if (!keep) {
                finish_source(in);
                continue;
            }
            /* a file inside a folder is one message, read through zlib so that a gzip'd message works too */
            if (!lr_open(&in->lr, src->path)) {
                int e = errno;
                finish_source(in);
                return item_error(item, src->path, 0, "cannot open: %s", strerror(e ? e : EIO), err);
            }
            int r = read_whole(in, src->path, "", 0, true, item, err);
            finish_source(in);
            return r;
        }
        case SRC_NAMED_FILE:
        case SRC_STDIN: {
            int r = open_stream(in, src, item, err);
            if (r != 0) return r;
            continue; /* mbox opened (state ST_MBOX) or a skipped message */
        }
        case SRC_TABLE: {
            tbert_error terr;
            tbert_status st = tbert_table_read(src->path, &in->opts.table, &in->table, &terr);
            if (st == TBERT_E_NOMEM) return tbert_fail(err, st, "%s", terr.msg), -1;
            if (st != TBERT_OK) {
                bool keep = shard_keep(in, in->index++);
                finish_source(in);
                if (!keep) continue;
                return item_error(item, src->path, 0, "%s", terr.msg, err);
            }
            in->state = ST_TABLE;
            in->open = true;
            in->table_row = 0;
            continue;
        }
        }
    }
    return 0;
}

void tbert_inputs_progress(const tbert_inputs *in, uint64_t *done, uint64_t *total) {
    uint64_t d = in->bytes_done_sources;
    if (in->cur < in->n_src && in->state == ST_MBOX) {
        uint64_t c = in->cur_consumed, sz = in->src[in->cur].size;
        d += c < sz ? c : sz;
    }
    if (done) *done = d;
    if (total) *total = in->bytes_total;
}

void tbert_inputs_close(tbert_inputs *in) {
    if (!in) return;
    close_current(in);
    for (size_t i = 0; i < in->n_src; i++) free(in->src[i].path);
    free(in->src);
    free(in);
}

void tbert_input_item_free(tbert_input_item *item) {
    if (!item) return;
    free(item->source);
    free(item->raw);
    free(item->text);
    free(item->label);
    free(item->error);
    memset(item, 0, sizeof *item);
}

static bool parse_decimal(const char *s, const char **end, long max, long *out) {
    long v = 0;
    const char *p = s;
    for (; *p >= '0' && *p <= '9'; p++) {
        v = v * 10 + (*p - '0');
        if (v > max) return false;
    }
    *end = p;
    *out = v;
    return p != s;
}

tbert_status tbert_shard_parse(const char *s, int *k, int *n, tbert_error *err) {
    const long max_n = 1000000;
    const char *p;
    long a, b;
    if (!parse_decimal(s, &p, max_n, &a) || *p != '/' || !parse_decimal(p + 1, &p, max_n, &b) || *p || b < 1 || a >= b)
        return tbert_fail(err, TBERT_E_ARG, "--shard expects K/N with 0 <= K < N <= %ld, got '%.64s'", max_n, s);
    *k = (int)a;
    *n = (int)b;
    return TBERT_OK;
}
