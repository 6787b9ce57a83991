/* tbert serve's core: the loaded model, the batcher, listeners, connection threads, signals.
 *
 * Threads: the main thread waits for signals (SIGHUP reload, SIGTERM/SIGINT drain, SIGCHLD milter child);
 * one acceptor thread polls the spamd listener and the milter child's internal socket and starts one
 * detached thread per connection (at most --max-connections at a time on each; beyond that the client gets
 * a protocol error); libmicrohttpd runs its own threads. A connection thread reads its request, parses the
 * message (MIME, the document) itself, and queues the document for the batcher, the only thread that uses
 * the encoder: it takes what is queued, waits up to --batch-window ms for requests still being parsed to
 * join (never when everyone in flight is already queued, so a lone client waits for nobody), and featurizes
 * and classifies them in one call. Reload builds the new model completely on the main thread, then hands it
 * to the batcher, which swaps it in between two batches; requests in flight finish on the old one. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <fcntl.h>
#include <glib.h>
#include <math.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "serve.h"
#include "tbert/fileio.h"
#include "tbert/score.h"

extern char **environ;

/* ---- the model being served ------------------------------------------------------------------- */

typedef struct {
    tbert_score_ctx ctx;
    double threshold;
    int positive;
    char head_id[17];
    size_t dim;
    int batch;
    float *feats, *prob;
    int *label, *tokens;
    tbert_doc *docs;
    int *idx;
} serve_model;

static void model_free(serve_model *m) {
    if (!m) return;
    tbert_score_ctx_close(&m->ctx);
    free(m->feats);
    free(m->prob);
    free(m->label);
    free(m->tokens);
    free(m->docs);
    free(m->idx);
    free(m);
}

static tbert_status model_load(const serve_opts *o, serve_model **out, tbert_error *err) {
    serve_model *m = calloc(1, sizeof *m);
    if (!m) return tbert_fail(err, TBERT_E_NOMEM, "serve: out of memory");
    tbert_status st = tbert_score_ctx_open(o->model, o->head, o->device, o->threads, o->batch, true, &m->ctx, err);
    if (st) {
        free(m);
        return st;
    }
    const tbert_recipe *r = tbert_classifier_recipe(m->ctx.clf);
    if (r->n_labels != 2 || r->positive < 0) {
        st = tbert_fail(err, TBERT_E_MISMATCH, "%s: serve needs a binary head (spam vs ham), this one has %d labels", o->head,
                        r->n_labels);
    } else {
        m->threshold = r->threshold;
        m->positive = r->positive;
        char path[4096], hex[65];
        snprintf(path, sizeof path, tbert_is_dir(o->head) ? "%s/best.safetensors" : "%s", o->head);
        st = tbert_sha256_file(path, hex, err);
        if (!st) memcpy(m->head_id, hex, 16), m->head_id[16] = '\0';
    }
    if (!st) {
        m->dim = tbert_featurizer_dim(m->ctx.fz);
        m->batch = o->batch;
        m->feats = tbert_malloc_array((size_t)o->batch * m->dim, sizeof *m->feats);
        m->prob = tbert_malloc_array((size_t)o->batch, sizeof *m->prob);
        m->label = tbert_malloc_array((size_t)o->batch, sizeof *m->label);
        m->tokens = tbert_malloc_array((size_t)o->batch, sizeof *m->tokens);
        m->docs = tbert_malloc_array((size_t)o->batch, sizeof *m->docs);
        m->idx = tbert_malloc_array((size_t)o->batch, sizeof *m->idx);
        if (!m->feats || !m->prob || !m->label || !m->tokens || !m->docs || !m->idx)
            st = tbert_fail(err, TBERT_E_NOMEM, "serve: out of memory for batches of %d", o->batch);
    }
    if (st) {
        model_free(m);
        return st;
    }
    *out = m;
    return TBERT_OK;
}

/* ---- state -------------------------------------------------------------------------------------- */

typedef struct request {
    tbert_doc doc;
    struct request *next;
    pthread_cond_t cv;
    bool done;
    tbert_status st;
    tbert_error err;
    float p;
    int label;
    double threshold;
    int positive;
    char head_id[17];
} request;

enum { PROTO_SPAMD = 0, PROTO_HTTP, PROTO_MILTER, PROTO_COUNT };
static const char *const PROTO_NAMES[PROTO_COUNT] = {"spamd", "http", "milter"};
static const double LAT_BUCKETS[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
#define N_LAT (sizeof LAT_BUCKETS / sizeof LAT_BUCKETS[0])
static const int BATCH_BUCKETS[] = {1, 2, 4, 8, 16, 32, 64, 128};
#define N_BATCH (sizeof BATCH_BUCKETS / sizeof BATCH_BUCKETS[0])

struct serve_ctx {
    serve_opts o;
    pthread_mutex_t mu;
    pthread_cond_t batch_cv; /* the batcher waits here */
    pthread_cond_t conn_cv;  /* drain waits here for connections to end */
    request *q_head, *q_tail;
    int q_n, in_flight;
    serve_model *cur, *pending;
    bool stop_batcher, draining;
    int conns[2]; /* active connections: spamd, internal (milter child) */
    /* metrics (under mu) */
    uint64_t requests[PROTO_COUNT], verdicts[3], truncated, errors, protocol_errors, refused, learned, reloads_ok,
        reloads_failed, milter_restarts;
    uint64_t lat_hist[N_LAT + 1], batch_hist[N_BATCH + 1], batches, batch_docs;
    double lat_sum;
    double busy_s;   /* the batcher in the encoder and classifier (run_batch) */
    double window_s; /* the batcher waiting in the batching window for requests still being read */
    /* listeners */
    request **batch_rq; /* the batcher's list of the requests in its batch */
    int spamd_fd, internal_fd, wake[2];
    char spamd_name[512], internal_path[256], tmpdir[128];
    char unix_spamd_path[512];
};

static void slog(serve_ctx *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void slog(serve_ctx *s, const char *fmt, ...) {
    char line[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "tbert serve: %s\n", line);
    if (s && s->o.syslog) syslog(LOG_INFO, "%s", line);
}

const serve_opts *serve_options(const serve_ctx *s) { return &s->o; }

void serve_head_id(serve_ctx *s, char out[17]) {
    pthread_mutex_lock(&s->mu);
    memcpy(out, s->cur ? s->cur->head_id : "", s->cur ? 17 : 1);
    pthread_mutex_unlock(&s->mu);
}

void serve_protocol_error(serve_ctx *s, const char *proto, const char *what) {
    pthread_mutex_lock(&s->mu);
    s->protocol_errors++;
    pthread_mutex_unlock(&s->mu);
    slog(s, "%s: protocol error: %s", proto, what);
}

/* ---- the batcher -------------------------------------------------------------------------------- */

static void run_batch(serve_model *m, request **rq, int k) {
    tbert_error e;
    for (int i = 0; i < k; i++) m->docs[i] = rq[i]->doc;
    tbert_status st = tbert_featurize(m->ctx.fz, k, m->docs, m->feats, m->tokens, &e);
    if (!st) st = tbert_classifier_predict(m->ctx.clf, k, m->feats, m->prob, m->label, &e);
    if (st && k > 1) { /* one bad document must not fail the others: retry one by one */
        for (int i = 0; i < k; i++) {
            tbert_status s1 = tbert_featurize(m->ctx.fz, 1, &m->docs[i], m->feats, m->tokens, &rq[i]->err);
            if (!s1) s1 = tbert_classifier_predict(m->ctx.clf, 1, m->feats, &m->prob[i], &m->label[i], &rq[i]->err);
            rq[i]->st = s1;
        }
    } else {
        for (int i = 0; i < k; i++) {
            rq[i]->st = st;
            if (st) rq[i]->err = e;
        }
    }
    for (int i = 0; i < k; i++) {
        rq[i]->p = m->prob[i];
        rq[i]->label = m->label[i];
        rq[i]->threshold = m->threshold;
        rq[i]->positive = m->positive;
        memcpy(rq[i]->head_id, m->head_id, sizeof m->head_id);
    }
}

static void *batcher_main(void *arg) {
    serve_ctx *s = arg;
    request **rq = s->batch_rq;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        if (s->pending) { /* reload: swap between two batches */
            serve_model *old = s->cur;
            s->cur = s->pending;
            s->pending = NULL;
            pthread_mutex_unlock(&s->mu);
            model_free(old);
            pthread_mutex_lock(&s->mu);
            continue;
        }
        if (s->q_n == 0) {
            if (s->stop_batcher) break;
            pthread_cond_wait(&s->batch_cv, &s->mu);
            continue;
        }
        /* the window: wait for requests still being parsed, never longer than window_ms after the oldest */
        if (s->q_n < s->o.batch && s->q_n < s->in_flight && s->o.window_ms > 0) {
            double w0 = tbert_now();
            struct timespec dl;
            clock_gettime(CLOCK_REALTIME, &dl);
            long ns = (long)(s->o.window_ms * 1e6);
            dl.tv_sec += ns / 1000000000L;
            dl.tv_nsec += ns % 1000000000L;
            if (dl.tv_nsec >= 1000000000L) dl.tv_sec++, dl.tv_nsec -= 1000000000L;
            while (s->q_n < s->o.batch && s->q_n < s->in_flight && !s->stop_batcher && !s->pending)
                if (pthread_cond_timedwait(&s->batch_cv, &s->mu, &dl) == ETIMEDOUT) break;
            s->window_s += tbert_now() - w0;
        }
        int k = 0;
        while (s->q_head && k < s->o.batch) {
            rq[k++] = s->q_head;
            s->q_head = s->q_head->next;
            s->q_n--;
        }
        if (!s->q_head) s->q_tail = NULL;
        serve_model *m = s->cur;
        pthread_mutex_unlock(&s->mu);
        double b0 = tbert_now();
        run_batch(m, rq, k);
        double b1 = tbert_now();
        pthread_mutex_lock(&s->mu);
        s->busy_s += b1 - b0;
        s->batches++;
        s->batch_docs += (uint64_t)k;
        size_t b = 0;
        while (b < N_BATCH && k > BATCH_BUCKETS[b]) b++;
        s->batch_hist[b]++;
        for (int i = 0; i < k; i++) {
            rq[i]->done = true;
            pthread_cond_signal(&rq[i]->cv);
        }
    }
    /* anything still queued when stopping fails */
    for (request *r = s->q_head; r; r = r->next) {
        r->st = tbert_fail(&r->err, TBERT_E_INTERNAL, "serve: shutting down");
        r->done = true;
        pthread_cond_signal(&r->cv);
    }
    s->q_head = s->q_tail = NULL;
    s->q_n = 0;
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static int proto_of(const char *verb) {
    for (int i = 0; i < PROTO_COUNT; i++)
        if (!strncmp(verb, PROTO_NAMES[i], strlen(PROTO_NAMES[i]))) return i;
    return PROTO_SPAMD;
}

tbert_status serve_score(serve_ctx *s, const char *raw, size_t len, bool truncated, const char *verb, serve_result *r,
                         tbert_error *err) {
    double t0 = tbert_now();
    memset(r, 0, sizeof *r);
    pthread_mutex_lock(&s->mu);
    s->in_flight++;
    pthread_mutex_unlock(&s->mu);

    /* our own header names (forged, or from an earlier pass) are never evidence */
    size_t clen = 0;
    char *clean = serve_rewrite_message(raw, len, "", false, &clen);
    tbert_message m;
    tbert_mail_doc md = {0};
    tbert_status st = clean ? tbert_message_parse(clean, clen, "message", &m, err)
                            : tbert_fail(err, TBERT_E_NOMEM, "serve: out of memory");
    free(clean);
    if (!st) {
        st = tbert_mail_document(&m, &md, err);
        tbert_message_free(&m);
    }
    request rq;
    memset(&rq, 0, sizeof rq);
    if (!st) {
        rq.doc = (tbert_doc){md.text, md.len, md.evidence};
        pthread_cond_init(&rq.cv, NULL);
        pthread_mutex_lock(&s->mu);
        if (s->q_tail) s->q_tail->next = &rq;
        else s->q_head = &rq;
        s->q_tail = &rq;
        s->q_n++;
        pthread_cond_signal(&s->batch_cv);
        while (!rq.done) pthread_cond_wait(&rq.cv, &s->mu);
        pthread_mutex_unlock(&s->mu);
        pthread_cond_destroy(&rq.cv);
        st = rq.st;
        if (st) *err = rq.err;
    }
    tbert_mail_doc_free(&md);

    int proto = proto_of(verb);
    pthread_mutex_lock(&s->mu);
    s->in_flight--;
    if (s->q_n > 0 && s->q_n >= s->in_flight) pthread_cond_signal(&s->batch_cv); /* nobody else to wait for */
    if (!st) {
        r->p = rq.p;
        r->threshold = rq.threshold;
        r->spam = rq.label == rq.positive;
        r->score = serve_sa_score(r->p, r->threshold, r->spam);
        r->symbol = r->spam ? SERVE_SPAM : SERVE_HAM;
        if (s->o.have_unsure && r->p >= s->o.unsure_lo && r->p < s->o.unsure_hi) r->symbol = SERVE_UNSURE;
        r->truncated = truncated;
        memcpy(r->head_id, rq.head_id, sizeof r->head_id);
        r->ms = (tbert_now() - t0) * 1000;
        s->requests[proto]++;
        s->verdicts[r->symbol]++;
        s->truncated += truncated;
        double sec = r->ms / 1000;
        size_t b = 0;
        while (b < N_LAT && sec > LAT_BUCKETS[b]) b++;
        s->lat_hist[b]++;
        s->lat_sum += sec;
    } else {
        s->errors++;
    }
    pthread_mutex_unlock(&s->mu);
    if (!st) {
        char sc[16];
        serve_format_score(r->score, r->spam, sc);
        slog(s, "%s %s score=%s p=%.4f %.1f ms%s", verb, r->symbol == SERVE_UNSURE ? "unsure" : r->spam ? "spam" : "ham", sc,
             r->p, r->ms, truncated ? " (scored the first part only: message over --max-message)" : "");
    } else {
        slog(s, "%s error: %s", verb, err->msg);
    }
    return st;
}

tbert_status serve_learn(serve_ctx *s, const char *action, const char *klass, const char *raw, size_t len, bool truncated,
                         const char *via, char *sha, tbert_error *err) {
    char dir[4096];
    if (tbert_is_dir(s->o.head)) {
        snprintf(dir, sizeof dir, "%s", s->o.head);
    } else { /* a .safetensors file: its folder */
        snprintf(dir, sizeof dir, "%s", s->o.head);
        char *sl = strrchr(dir, '/');
        if (sl) *sl = '\0';
        else snprintf(dir, sizeof dir, ".");
    }
    tbert_status st = tbert_learn_append(dir, action, klass, raw, len, truncated, via, sha, err);
    pthread_mutex_lock(&s->mu);
    if (!st) s->learned++;
    pthread_mutex_unlock(&s->mu);
    if (!st) slog(s, "%s %s %s: appended to %s/learned.jsonl", via, action, klass, dir);
    else slog(s, "%s %s failed: %s", via, action, err->msg);
    return st;
}

char *serve_metrics_text(serve_ctx *s) {
    GString *o = g_string_new("");
    pthread_mutex_lock(&s->mu);
    g_string_append(o, "# HELP tbert_requests_total Messages scored, by protocol.\n# TYPE tbert_requests_total counter\n");
    for (int i = 0; i < PROTO_COUNT; i++)
        g_string_append_printf(o, "tbert_requests_total{protocol=\"%s\"} %llu\n", PROTO_NAMES[i], (unsigned long long)s->requests[i]);
    g_string_append(o, "# HELP tbert_verdicts_total Messages scored, by verdict.\n# TYPE tbert_verdicts_total counter\n");
    static const char *const vn[3] = {"ham", "spam", "unsure"};
    for (int i = 0; i < 3; i++)
        g_string_append_printf(o, "tbert_verdicts_total{verdict=\"%s\"} %llu\n", vn[i], (unsigned long long)s->verdicts[i]);
    g_string_append_printf(o,
                           "# HELP tbert_truncated_total Messages scored on their first --max-message bytes only.\n"
                           "# TYPE tbert_truncated_total counter\ntbert_truncated_total %llu\n"
                           "# HELP tbert_errors_total Messages that could not be scored.\n"
                           "# TYPE tbert_errors_total counter\ntbert_errors_total %llu\n"
                           "# HELP tbert_protocol_errors_total Requests refused as malformed, oversize or timed out.\n"
                           "# TYPE tbert_protocol_errors_total counter\ntbert_protocol_errors_total %llu\n"
                           "# HELP tbert_connections_refused_total Connections refused (over --max-connections or not allowed).\n"
                           "# TYPE tbert_connections_refused_total counter\ntbert_connections_refused_total %llu\n"
                           "# HELP tbert_learned_total Corrections appended to learned.jsonl.\n"
                           "# TYPE tbert_learned_total counter\ntbert_learned_total %llu\n"
                           "# HELP tbert_reloads_total Reloads (SIGHUP), by result.\n# TYPE tbert_reloads_total counter\n"
                           "tbert_reloads_total{result=\"ok\"} %llu\ntbert_reloads_total{result=\"failed\"} %llu\n"
                           "# HELP tbert_milter_restarts_total Restarts of the milter child process.\n"
                           "# TYPE tbert_milter_restarts_total counter\ntbert_milter_restarts_total %llu\n"
                           "# HELP tbert_connections_active Open spamd and milter connections.\n"
                           "# TYPE tbert_connections_active gauge\ntbert_connections_active %d\n",
                           (unsigned long long)s->truncated, (unsigned long long)s->errors,
                           (unsigned long long)s->protocol_errors, (unsigned long long)s->refused,
                           (unsigned long long)s->learned, (unsigned long long)s->reloads_ok,
                           (unsigned long long)s->reloads_failed, (unsigned long long)s->milter_restarts,
                           s->conns[0] + s->conns[1]);
    g_string_append(o, "# HELP tbert_latency_seconds Time from a message's arrival to its verdict in the server.\n"
                       "# TYPE tbert_latency_seconds histogram\n");
    uint64_t cum = 0, total = 0;
    for (size_t i = 0; i <= N_LAT; i++) total += s->lat_hist[i];
    for (size_t i = 0; i < N_LAT; i++) {
        cum += s->lat_hist[i];
        g_string_append_printf(o, "tbert_latency_seconds_bucket{le=\"%g\"} %llu\n", LAT_BUCKETS[i], (unsigned long long)cum);
    }
    g_string_append_printf(o, "tbert_latency_seconds_bucket{le=\"+Inf\"} %llu\ntbert_latency_seconds_sum %.6f\n"
                              "tbert_latency_seconds_count %llu\n",
                           (unsigned long long)total, s->lat_sum, (unsigned long long)total);
    g_string_append(o, "# HELP tbert_batch_size Messages per encoder call.\n# TYPE tbert_batch_size histogram\n");
    cum = 0;
    for (size_t i = 0; i < N_BATCH; i++) {
        cum += s->batch_hist[i];
        g_string_append_printf(o, "tbert_batch_size_bucket{le=\"%d\"} %llu\n", BATCH_BUCKETS[i], (unsigned long long)cum);
    }
    g_string_append_printf(o, "tbert_batch_size_bucket{le=\"+Inf\"} %llu\ntbert_batch_size_sum %llu\ntbert_batch_size_count %llu\n",
                           (unsigned long long)s->batches, (unsigned long long)s->batch_docs, (unsigned long long)s->batches);
    g_string_append_printf(o, "# HELP tbert_batcher_busy_seconds_total Time the batcher spent encoding and classifying.\n"
                              "# TYPE tbert_batcher_busy_seconds_total counter\ntbert_batcher_busy_seconds_total %.6f\n"
                              "# HELP tbert_batch_window_seconds_total Time the batcher waited in the batching window.\n"
                              "# TYPE tbert_batch_window_seconds_total counter\ntbert_batch_window_seconds_total %.6f\n",
                           s->busy_s, s->window_s);
    pthread_mutex_unlock(&s->mu);
    return g_string_free(o, FALSE);
}

/* ---- addresses ---------------------------------------------------------------------------------- */

bool serve_parse_cidr(const char *str, serve_cidr *c) {
    char buf[128];
    if (strlen(str) >= sizeof buf) return false;
    strcpy(buf, str);
    char *sl = strchr(buf, '/');
    int prefix = -1;
    if (sl) {
        *sl = '\0';
        char *end;
        long v = strtol(sl + 1, &end, 10);
        if (end == sl + 1 || *end || v < 0 || v > 128) return false;
        prefix = (int)v;
    }
    memset(c, 0, sizeof *c);
    if (inet_pton(AF_INET, buf, c->addr) == 1) {
        c->family = AF_INET;
        if (prefix > 32) return false;
        c->prefix = prefix < 0 ? 32 : prefix;
        return true;
    }
    if (inet_pton(AF_INET6, buf, c->addr) == 1) {
        c->family = AF_INET6;
        c->prefix = prefix < 0 ? 128 : prefix;
        return true;
    }
    return false;
}

static bool prefix_match(const uint8_t *a, const uint8_t *b, int bits) {
    int full = bits / 8, rest = bits % 8;
    if (memcmp(a, b, (size_t)full)) return false;
    if (!rest) return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[full] & mask) == (b[full] & mask);
}

bool serve_peer_allowed(const serve_opts *o, const struct sockaddr *sa) {
    uint8_t a[16];
    int fam;
    if (sa->sa_family == AF_UNIX) return true;
    if (sa->sa_family == AF_INET) {
        memcpy(a, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        fam = AF_INET;
    } else if (sa->sa_family == AF_INET6) {
        const uint8_t *b = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        static const uint8_t loop6[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
        if (!memcmp(b, mapped, 12)) {
            memcpy(a, b + 12, 4);
            fam = AF_INET;
        } else {
            if (!memcmp(b, loop6, 16)) return true;
            memcpy(a, b, 16);
            fam = AF_INET6;
        }
    } else {
        return false;
    }
    if (fam == AF_INET && a[0] == 127) return true;
    for (int i = 0; i < o->n_allow; i++)
        if (o->allow[i].family == fam && prefix_match(a, o->allow[i].addr, o->allow[i].prefix)) return true;
    return false;
}

tbert_status serve_listen(const char *addr, int mode, int backlog, int *fd_out, char *bound_name, size_t n, tbert_error *err) {
    if (!strncmp(addr, "unix:", 5)) {
        const char *path = addr + 5;
        struct sockaddr_un un = {.sun_family = AF_UNIX};
        if (!*path || strlen(path) >= sizeof un.sun_path)
            return tbert_fail(err, TBERT_E_ARG, "%s: a unix socket path must have 1 to %zu bytes", addr, sizeof un.sun_path - 1);
        strcpy(un.sun_path, path);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return tbert_fail(err, TBERT_E_IO, "%s: socket: %s", addr, strerror(errno));
        struct stat sb;
        if (lstat(path, &sb) == 0) { /* a stale socket of an earlier run goes; a live one or a file stays */
            if (!S_ISSOCK(sb.st_mode)) {
                close(fd);
                return tbert_fail(err, TBERT_E_ARG, "%s: exists and is not a socket", addr);
            }
            int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
            bool live = probe >= 0 && connect(probe, (struct sockaddr *)&un, sizeof un) == 0;
            if (probe >= 0) close(probe);
            if (live) {
                close(fd);
                return tbert_fail(err, TBERT_E_ARG, "%s: another server is listening there", addr);
            }
            unlink(path);
        }
        mode_t old = umask(0177); /* no window in which the socket is open to all */
        int r = bind(fd, (struct sockaddr *)&un, sizeof un);
        umask(old);
        if (r != 0 || chmod(path, (mode_t)mode) != 0 || listen(fd, backlog) != 0) {
            int e = errno;
            close(fd);
            return tbert_fail(err, TBERT_E_IO, "%s: cannot listen: %s", addr, strerror(e));
        }
        snprintf(bound_name, n, "unix:%s", path);
        *fd_out = fd;
        return TBERT_OK;
    }
    char host[256], port[32];
    const char *colon;
    if (addr[0] == '[') {
        const char *rb = strchr(addr, ']');
        if (!rb || rb[1] != ':' || (size_t)(rb - addr - 1) >= sizeof host)
            return tbert_fail(err, TBERT_E_ARG, "%s: expected [IPV6]:PORT", addr);
        memcpy(host, addr + 1, (size_t)(rb - addr - 1));
        host[rb - addr - 1] = '\0';
        colon = rb + 1;
    } else {
        colon = strrchr(addr, ':');
        if (!colon) colon = addr - 1; /* PORT alone */
        size_t hl = colon >= addr ? (size_t)(colon - addr) : 0;
        if (hl >= sizeof host) return tbert_fail(err, TBERT_E_ARG, "%s: host name too long", addr);
        memcpy(host, addr, hl);
        host[hl] = '\0';
    }
    if (!*host) strcpy(host, "127.0.0.1");
    const char *ps = colon + 1;
    char *end;
    long pv = strtol(ps, &end, 10);
    if (!*ps || *end || pv < 0 || pv > 65535) return tbert_fail(err, TBERT_E_ARG, "%s: expected HOST:PORT or unix:PATH", addr);
    snprintf(port, sizeof port, "%ld", pv);
    struct addrinfo hints = {.ai_flags = AI_PASSIVE | AI_NUMERICSERV, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int g = getaddrinfo(host, port, &hints, &res);
    if (g != 0 || !res) return tbert_fail(err, TBERT_E_ARG, "%s: cannot resolve '%s': %s", addr, host, gai_strerror(g));
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, backlog) != 0) {
        int e = errno;
        if (fd >= 0) close(fd);
        freeaddrinfo(res);
        return tbert_fail(err, TBERT_E_IO, "%s: cannot listen: %s", addr, strerror(e));
    }
    freeaddrinfo(res);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    char h[INET6_ADDRSTRLEN] = "?";
    int bport = 0;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET) {
            inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, h, sizeof h);
            bport = ntohs(((struct sockaddr_in *)&ss)->sin_port);
            snprintf(bound_name, n, "%s:%d", h, bport);
        } else {
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, h, sizeof h);
            bport = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
            snprintf(bound_name, n, "[%s]:%d", h, bport);
        }
    }
    *fd_out = fd;
    return TBERT_OK;
}

bool serve_write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* ---- connections -------------------------------------------------------------------------------- */

typedef struct {
    serve_ctx *s;
    int fd;
    int kind; /* 0 spamd, 1 internal (milter child) */
} conn_arg;

/* Ends a connection politely: our side is done, read what the client still sends (briefly), then close, so
 * that unread input does not turn our last answer into a reset. */
static void conn_close(int fd) {
    shutdown(fd, SHUT_WR);
    struct timeval tv = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[4096];
    size_t total = 0;
    double until = tbert_now() + 2;
    for (;;) {
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        total += (size_t)r;
        if (total > 65536 || tbert_now() > until) break; /* at most 64 KB and 2 s */
    }
    close(fd);
}

static void *conn_main(void *arg) {
    conn_arg a = *(conn_arg *)arg;
    free(arg);
    serve_spamd_conn(a.s, a.fd, a.kind == 1);
    conn_close(a.fd);
    pthread_mutex_lock(&a.s->mu);
    a.s->conns[a.kind]--;
    pthread_cond_broadcast(&a.s->conn_cv);
    pthread_mutex_unlock(&a.s->mu);
    return NULL;
}

static void refuse(serve_ctx *s, int fd, const char *why, const char *line) {
    pthread_mutex_lock(&s->mu);
    s->refused++;
    pthread_mutex_unlock(&s->mu);
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    ssize_t w = send(fd, line, strlen(line), MSG_NOSIGNAL);
    (void)w;
    close(fd);
    slog(s, "refused a connection: %s", why);
}

static void accept_one(serve_ctx *s, int lfd, int kind, pthread_attr_t *attr) {
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC);
    if (fd < 0) {
        if (errno == EMFILE || errno == ENFILE) { /* out of descriptors: back off instead of spinning */
            slog(s, "accept: %s", strerror(errno));
            usleep(100000);
        }
        return;
    }
    if (kind == 0 && !serve_peer_allowed(&s->o, (struct sockaddr *)&ss)) {
        refuse(s, fd, "peer not on the allow-list (--allow)", "SPAMD/1.5 77 EX_NOPERM peer not allowed\r\n");
        return;
    }
    pthread_mutex_lock(&s->mu);
    bool over = s->conns[kind] >= s->o.max_connections;
    if (!over) s->conns[kind]++;
    pthread_mutex_unlock(&s->mu);
    if (over) {
        refuse(s, fd, "over --max-connections", "SPAMD/1.5 75 EX_TEMPFAIL too many connections\r\n");
        return;
    }
    struct timeval tv = {s->o.timeout_s, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    conn_arg *a = malloc(sizeof *a);
    if (a) *a = (conn_arg){s, fd, kind};
    pthread_t t;
    if (!a || pthread_create(&t, attr, conn_main, a) != 0) {
        free(a);
        pthread_mutex_lock(&s->mu);
        s->conns[kind]--;
        pthread_mutex_unlock(&s->mu);
        refuse(s, fd, "cannot start a thread", "SPAMD/1.5 71 EX_OSERR cannot start a thread\r\n");
        return;
    }
}

static void *acceptor_main(void *arg) {
    serve_ctx *s = arg;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, (size_t)1 << 20);
    for (;;) {
        struct pollfd p[3] = {{s->wake[0], POLLIN, 0}, {s->spamd_fd, POLLIN, 0}, {s->internal_fd, POLLIN, 0}};
        int r = poll(p, 3, -1);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 || (p[0].revents & POLLIN)) break;
        if (p[1].revents & POLLIN) accept_one(s, s->spamd_fd, 0, &attr);
        if (p[2].revents & POLLIN) accept_one(s, s->internal_fd, 1, &attr);
    }
    pthread_attr_destroy(&attr);
    return NULL;
}

/* ---- the milter child --------------------------------------------------------------------------- */

int serve_spawn(pid_t *pid, const char *exe, const posix_spawn_file_actions_t *fa, char *const argv[]) {
    posix_spawnattr_t at;
    int r = posix_spawnattr_init(&at);
    if (r != 0) return r;
    sigset_t none, def;
    sigemptyset(&none);
    sigemptyset(&def);
    sigaddset(&def, SIGPIPE);
    sigaddset(&def, SIGHUP);
    sigaddset(&def, SIGTERM);
    sigaddset(&def, SIGINT);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &def);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    r = posix_spawn(pid, exe, fa, &at, argv, environ);
    posix_spawnattr_destroy(&at);
    return r;
}

static pid_t spawn_milter(serve_ctx *s) {
    char reject[32], quar[32], tmo[16], mode[16], maxm[32];
    snprintf(maxm, sizeof maxm, "%zu", s->o.max_message);
    snprintf(reject, sizeof reject, "%.17g", s->o.reject_above);
    snprintf(quar, sizeof quar, "%.17g", s->o.quarantine_above);
    snprintf(tmo, sizeof tmo, "%d", s->o.timeout_s);
    snprintf(mode, sizeof mode, "%o", (unsigned)s->o.socket_mode);
    char *argv[] = {"tbert", "serve", "--milter-child", (char *)s->o.milter, "--milter-upstream", s->internal_path,
                    "--milter-reject-above", reject, "--milter-quarantine-above", quar, "--timeout", tmo,
                    "--socket-mode", mode, "--max-message", maxm, NULL, NULL, NULL};
    if (s->o.socket_owner) { /* the child gives its socket the owner */
        size_t n = sizeof argv / sizeof argv[0];
        argv[n - 3] = "--socket-owner";
        argv[n - 2] = (char *)s->o.socket_owner;
    }
    pid_t pid = -1;
    int r = serve_spawn(&pid, s->o.exe ? s->o.exe : "/proc/self/exe", NULL, argv);
    if (r != 0) {
        slog(s, "cannot start the milter child: %s", strerror(r));
        return -1;
    }
    return pid;
}

/* ---- run ---------------------------------------------------------------------------------------- */

static void raise_nofile(serve_ctx *s, rlim_t need) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= need) return;
    rlim_t want = need;
    if (rl.rlim_max != RLIM_INFINITY && want > rl.rlim_max) want = rl.rlim_max;
    rl.rlim_cur = want;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0 || want < need)
        slog(s, "warning: open-file limit %llu is below the %llu that --max-connections needs",
             (unsigned long long)want, (unsigned long long)need);
}

/* VmRSS and VmHWM (peak) of this process in MiB, from /proc/self/status; -1 when unknown. */
static void memory_mib(long *rss, long *hwm) {
    *rss = *hwm = -1;
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return;
    char line[256];
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "VmRSS:", 6)) *rss = strtol(line + 6, NULL, 10) / 1024;
        if (!strncmp(line, "VmHWM:", 6)) *hwm = strtol(line + 6, NULL, 10) / 1024;
    }
    fclose(f);
}

static void do_reload(serve_ctx *s) {
    double t0 = tbert_now();
    slog(s, "reloading the model and the head");
    serve_model *nm = NULL;
    tbert_error e;
    if (model_load(&s->o, &nm, &e) != TBERT_OK) {
        char id[17];
        serve_head_id(s, id);
        pthread_mutex_lock(&s->mu);
        s->reloads_failed++;
        pthread_mutex_unlock(&s->mu);
        slog(s, "reload failed, still serving head %s: %s", id, e.msg);
        return;
    }
    pthread_mutex_lock(&s->mu);
    serve_model *stale = s->pending;
    s->pending = nm;
    s->reloads_ok++;
    pthread_cond_broadcast(&s->batch_cv);
    pthread_mutex_unlock(&s->mu);
    model_free(stale);
    long rss, hwm;
    memory_mib(&rss, &hwm);
    slog(s, "reloaded: head %s (%.2f s; resident %ld MiB, peak so far %ld MiB: old and new model side by side)",
         nm->head_id, tbert_now() - t0, rss, hwm);
}

/* ---- unix-socket ownership (--socket-owner) ------------------------------------------------------ */

/* "USER[:GROUP]", "USER:" (the user's login group) or ":GROUP", names or numbers, as chown(1) takes them,
 * into the uid and gid to give a socket ((uid_t)-1 / (gid_t)-1: leave as it is). */
tbert_status serve_parse_owner(const char *spec, uid_t *uid, gid_t *gid, tbert_error *err) {
    *uid = (uid_t)-1;
    *gid = (gid_t)-1;
    char user[256], group[256];
    const char *colon = strchr(spec, ':');
    size_t ul = colon ? (size_t)(colon - spec) : strlen(spec);
    if (ul >= sizeof user || (colon && strlen(colon + 1) >= sizeof group) || (!ul && !(colon && colon[1])))
        return tbert_fail(err, TBERT_E_ARG, "serve: --socket-owner expects USER[:GROUP] or :GROUP, got '%s'", spec);
    memcpy(user, spec, ul);
    user[ul] = '\0';
    snprintf(group, sizeof group, "%s", colon ? colon + 1 : "");
    char *end;
    if (*user) {
        struct passwd *pw = getpwnam(user);
        unsigned long n = strtoul(user, &end, 10);
        if (pw) *uid = pw->pw_uid;
        else if (!*end && isdigit((unsigned char)user[0]) && n < (unsigned long)(uid_t)-1) *uid = (uid_t)n;
        else return tbert_fail(err, TBERT_E_ARG, "serve: --socket-owner %s: no such user '%s'", spec, user);
        if (colon && !*group) { /* "USER:": the user's login group */
            if (!pw)
                return tbert_fail(err, TBERT_E_ARG, "serve: --socket-owner %s: a numeric user has no login group",
                                  spec);
            *gid = pw->pw_gid;
        }
    }
    if (*group) {
        struct group *gr = getgrnam(group);
        unsigned long n = strtoul(group, &end, 10);
        if (gr) *gid = gr->gr_gid;
        else if (!*end && isdigit((unsigned char)group[0]) && n < (unsigned long)(gid_t)-1) *gid = (gid_t)n;
        else return tbert_fail(err, TBERT_E_ARG, "serve: --socket-owner %s: no such group '%s'", spec, group);
    }
    return TBERT_OK;
}

/* Gives the unix socket at path the owner --socket-owner names (nothing when spec is NULL). */
tbert_status serve_chown_socket(const char *path, const char *spec, tbert_error *err) {
    if (!spec) return TBERT_OK;
    uid_t uid;
    gid_t gid;
    tbert_status st = serve_parse_owner(spec, &uid, &gid, err);
    if (st) return st;
    if (chown(path, uid, gid) != 0)
        return tbert_fail(err, TBERT_E_IO, "%s: --socket-owner %s: chown: %s", path, spec, strerror(errno));
    return TBERT_OK;
}

/* With --user the milter child runs as that user when it makes its socket, and an unprivileged process may
 * only give a file its own uid and one of its groups: say so at startup rather than in a child that keeps
 * dying. */
static tbert_status check_owner_for_user(const serve_opts *o, tbert_error *err) {
    if (!o->socket_owner || !o->user || !o->milter || strncmp(o->milter, "unix:", 5)) return TBERT_OK;
    uid_t uid;
    gid_t gid;
    tbert_status st = serve_parse_owner(o->socket_owner, &uid, &gid, err);
    if (st) return st;
    struct passwd *pw = getpwnam(o->user);
    if (!pw) return tbert_fail(err, TBERT_E_ARG, "serve: --user %s: no such user", o->user);
    if (uid != (uid_t)-1 && uid != pw->pw_uid)
        return tbert_fail(err, TBERT_E_ARG,
                          "serve: --socket-owner %s: the milter socket is made by --user %s, who cannot give it "
                          "to another user", o->socket_owner, o->user);
    gid_t groups[256];
    int ng = (int)(sizeof groups / sizeof groups[0]);
    bool member = gid == (gid_t)-1 || gid == pw->pw_gid;
    if (!member && getgrouplist(pw->pw_name, pw->pw_gid, groups, &ng) >= 0)
        for (int i = 0; i < ng; i++) member = member || groups[i] == gid;
    if (!member)
        return tbert_fail(err, TBERT_E_ARG, "serve: --socket-owner %s: --user %s is not in that group, so the milter "
                          "socket cannot be given to it (add the user to the group)", o->socket_owner, o->user);
    return TBERT_OK;
}

/* --user: the listeners are bound (ports below 1024 need root), the model is loaded; from here on the
 * process (all its threads: glibc applies setuid to every thread) and the milter child run as the user. The
 * unix sockets and the private folder become the user's so that it can remove them at exit. */
static tbert_status drop_privileges(serve_ctx *s, const char *user, const char *http_path, tbert_error *err) {
    struct passwd *pw = getpwnam(user);
    if (!pw) return tbert_fail(err, TBERT_E_ARG, "serve: --user %s: no such user", user);
    const char *paths[] = {s->unix_spamd_path[0] && !s->o.socket_owner ? s->unix_spamd_path : NULL,
                           s->o.socket_owner ? NULL : http_path,
                           s->internal_path[0] ? s->internal_path : NULL, s->tmpdir[0] ? s->tmpdir : NULL};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++)
        if (paths[i] && chown(paths[i], pw->pw_uid, pw->pw_gid) != 0)
            return tbert_fail(err, TBERT_E_IO, "serve: --user %s: cannot hand %s over: %s", user, paths[i], strerror(errno));
    if (initgroups(pw->pw_name, pw->pw_gid) != 0 || setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0)
        return tbert_fail(err, TBERT_E_IO, "serve: --user %s: cannot switch to it: %s", user, strerror(errno));
    if (pw->pw_uid != 0 && (setuid(0) == 0 || geteuid() == 0))
        return tbert_fail(err, TBERT_E_INTERNAL, "serve: --user %s: root privileges could be regained", user);
    slog(s, "running as user %s (uid %d)", pw->pw_name, (int)pw->pw_uid);
    return TBERT_OK;
}

tbert_status serve_run(const serve_opts *o, tbert_error *err) {
    /* signals first: every thread started from here on (encoder threads too) inherits the mask */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGCHLD);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    serve_ctx *s = calloc(1, sizeof *s);
    if (!s) return tbert_fail(err, TBERT_E_NOMEM, "serve: out of memory");
    s->o = *o;
    s->spamd_fd = s->internal_fd = s->wake[0] = s->wake[1] = -1;
    if (s->o.syslog) openlog("tbert", LOG_PID, LOG_MAIL);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->batch_cv, NULL);
    pthread_cond_init(&s->conn_cv, NULL);
    raise_nofile(s, (rlim_t)o->max_connections * 3 + 64);

    double t0 = tbert_now();
    tbert_status st = check_owner_for_user(o, err);
    if (!st) st = model_load(&s->o, &s->cur, err);
    if (!st) {
        long rss, hwm;
        memory_mib(&rss, &hwm);
        slog(s, "loaded head %s (threshold %.4f) in %.2f s; resident %ld MiB", s->cur->head_id, s->cur->threshold,
             tbert_now() - t0, rss);
    }
    serve_http *http = NULL;
    int http_fd = -1;
    char name[512];
    pthread_t batcher, acceptor;
    bool batcher_on = false, acceptor_on = false;
    if (!st && !(s->batch_rq = tbert_malloc_array((size_t)o->batch, sizeof *s->batch_rq)))
        st = tbert_fail(err, TBERT_E_NOMEM, "serve: out of memory");
    if (!st && pipe2(s->wake, O_CLOEXEC) != 0) st = tbert_fail(err, TBERT_E_IO, "serve: pipe: %s", strerror(errno));
    if (!st && o->spamd) {
        st = serve_listen(o->spamd, o->socket_mode, 512, &s->spamd_fd, s->spamd_name, sizeof s->spamd_name, err);
        if (!st && !strncmp(o->spamd, "unix:", 5)) snprintf(s->unix_spamd_path, sizeof s->unix_spamd_path, "%s", o->spamd + 5);
        if (!st && !strncmp(o->spamd, "unix:", 5)) st = serve_chown_socket(o->spamd + 5, o->socket_owner, err);
    }
    if (!st && o->milter) { /* the private socket the milter child asks on */
        const char *tmp = getenv("TMPDIR");
        snprintf(s->tmpdir, sizeof s->tmpdir, "%s/tbert-serve.XXXXXX", tmp && *tmp && strlen(tmp) < 80 ? tmp : "/tmp");
        if (!mkdtemp(s->tmpdir)) {
            st = tbert_fail(err, TBERT_E_IO, "serve: cannot make a private folder for the milter socket: %s", strerror(errno));
            s->tmpdir[0] = '\0';
        } else {
            snprintf(s->internal_path, sizeof s->internal_path, "%s/milter.sock", s->tmpdir);
            char a[300];
            snprintf(a, sizeof a, "unix:%s", s->internal_path);
            st = serve_listen(a, 0600, 512, &s->internal_fd, name, sizeof name, err);
        }
    }
    if (!st && o->http) st = serve_listen(o->http, o->socket_mode, 512, &http_fd, name, sizeof name, err);
    if (!st && o->http && !strncmp(o->http, "unix:", 5)) st = serve_chown_socket(o->http + 5, o->socket_owner, err);
    if (!st && o->user) st = drop_privileges(s, o->user, http_fd >= 0 && o->http && !strncmp(o->http, "unix:", 5) ? o->http + 5 : NULL, err);
    if (!st) {
        if (pthread_create(&batcher, NULL, batcher_main, s) != 0) st = tbert_fail(err, TBERT_E_NOMEM, "serve: cannot start the batcher");
        else batcher_on = true;
    }
    if (!st) {
        if (pthread_create(&acceptor, NULL, acceptor_main, s) != 0) st = tbert_fail(err, TBERT_E_NOMEM, "serve: cannot start the acceptor");
        else acceptor_on = true;
    }
    if (!st && s->spamd_fd >= 0) slog(s, "listening on spamd %s", s->spamd_name);
    if (!st && http_fd >= 0) {
        st = serve_http_start(s, http_fd, &http, err);
        if (!st) slog(s, "listening on http %s", name);
    }
    pid_t child = -1;
    double child_started = 0, restart_at = 0, backoff = 1;
    if (!st && o->milter) {
        child = spawn_milter(s);
        child_started = tbert_now();
        if (child < 0) st = tbert_fail(err, TBERT_E_IO, "serve: cannot start the milter child process");
    }

    /* the signal loop; once a second it also looks at the head file: when `tbert learn`, `tbert threshold` or
     * a retrain moved a new one in (another inode, size or mtime), it reloads as on SIGHUP (src/learn.c) */
    char head_file[4200];
    snprintf(head_file, sizeof head_file, tbert_is_dir(o->head) ? "%s/best.safetensors" : "%s", o->head);
    struct stat head_seen = {0};
    bool head_known = stat(head_file, &head_seen) == 0;
    serve_retrainer *retrainer = st ? NULL : serve_retrainer_new(o->head, o->exe, o->retrain_after);
    if (!st && !retrainer && o->retrain_after > 0) /* asked for, but out of memory: not silently off */
        st = tbert_fail(err, TBERT_E_NOMEM, "serve: out of memory for the background retrain");
    while (!st) {
        serve_retrainer_tick(retrainer, slog, s);
        siginfo_t si;
        struct timespec ts = {1, 0};
        int sig = sigtimedwait(&set, &si, &ts);
        struct stat now;
        bool head_changed = false;
        if (stat(head_file, &now) == 0) { /* absent for an instant while a new head moves in: wait */
            head_changed = head_known && (now.st_ino != head_seen.st_ino || now.st_dev != head_seen.st_dev ||
                                          now.st_size != head_seen.st_size || now.st_mtim.tv_sec != head_seen.st_mtim.tv_sec ||
                                          now.st_mtim.tv_nsec != head_seen.st_mtim.tv_nsec);
            head_seen = now;
            head_known = true;
        }
        if (head_changed && sig != SIGHUP) slog(s, "%s changed", head_file);
        if (sig == SIGHUP || head_changed) do_reload(s);
        if (sig == SIGTERM || sig == SIGINT) {
            slog(s, "%s: draining", sig == SIGTERM ? "SIGTERM" : "SIGINT");
            break;
        }
        if (child > 0) {
            int ws;
            pid_t w = waitpid(child, &ws, WNOHANG);
            if (w == child) {
                if (WIFSIGNALED(ws)) slog(s, "milter child died of signal %d; restarting it", WTERMSIG(ws));
                else slog(s, "milter child exited with status %d; restarting it", WEXITSTATUS(ws));
                child = -1;
                /* a child that dies young is restarted more and more slowly (up to 30 s) */
                backoff = tbert_now() - child_started < 10 ? (backoff * 2 > 30 ? 30 : backoff * 2) : 1;
                restart_at = tbert_now() + backoff;
            }
        }
        if (child < 0 && o->milter && tbert_now() >= restart_at) {
            child = spawn_milter(s);
            child_started = tbert_now();
            pthread_mutex_lock(&s->mu);
            s->milter_restarts++;
            pthread_mutex_unlock(&s->mu);
            if (child < 0) restart_at = tbert_now() + 30;
        }
    }

    serve_retrainer_free(retrainer, slog, s);
    /* drain: stop accepting, let the connections in flight finish, then stop */
    if (acceptor_on) {
        ssize_t w = write(s->wake[1], "x", 1);
        (void)w;
        pthread_join(acceptor, NULL);
    }
    if (s->spamd_fd >= 0) close(s->spamd_fd);
    if (s->unix_spamd_path[0]) unlink(s->unix_spamd_path);
    if (http) serve_http_stop(http); /* waits for its requests; closes the socket */
    else if (http_fd >= 0) close(http_fd);
    if (o->http && !strncmp(o->http, "unix:", 5) && http_fd >= 0) unlink(o->http + 5);
    if (child > 0) {
        kill(child, SIGTERM);
        double until = tbert_now() + 10;
        int ws;
        while (waitpid(child, &ws, WNOHANG) == 0) {
            if (tbert_now() > until) {
                kill(child, SIGKILL);
                waitpid(child, &ws, 0);
                break;
            }
            usleep(20000);
        }
    }
    if (o->milter && !strncmp(o->milter, "unix:", 5)) unlink(o->milter + 5);
    bool quiet_conns = true;
    pthread_mutex_lock(&s->mu);
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += o->timeout_s + 5;
    while (s->conns[0] + s->conns[1] > 0)
        if (pthread_cond_timedwait(&s->conn_cv, &s->mu, &dl) == ETIMEDOUT) break;
    quiet_conns = s->conns[0] + s->conns[1] == 0;
    s->stop_batcher = true;
    pthread_cond_broadcast(&s->batch_cv);
    pthread_mutex_unlock(&s->mu);
    if (batcher_on) pthread_join(batcher, NULL);
    if (s->internal_fd >= 0) close(s->internal_fd);
    if (s->internal_path[0]) unlink(s->internal_path);
    if (s->tmpdir[0]) rmdir(s->tmpdir);
    if (s->wake[0] >= 0) close(s->wake[0]), close(s->wake[1]);
    if (!st) slog(s, "drained%s; exiting", quiet_conns ? "" : " (some connections did not end in time)");
    if (quiet_conns) { /* threads still blocked on a socket may touch s: then the process exit frees it */
        model_free(s->cur);
        model_free(s->pending);
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->batch_cv);
        pthread_cond_destroy(&s->conn_cv);
        free(s->batch_rq);
        free(s);
    }
    return st;
}
