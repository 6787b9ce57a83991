/* tbert serve: the model stays in memory and answers mail servers. Internal to src/serve*.c and
 * src/cli/cmd_serve.c (not public API). docs/mail.md describes the service; who does what:
 *   src/serve.c          listeners, allow-list, connection limits, connection threads, the batcher (requests
 *                        that arrive together share one encoder call), reload (SIGHUP) and drain (SIGTERM),
 *                        metrics, the per-message log line, the milter child's supervision
 *   src/serve_verdict.c  a probability in SpamAssassin's terms (score, stars, symbols) and our headers
 *                        (strip any with our names, add ours)
 *   src/serve_spamd.c    SpamAssassin's SPAMC/1.x protocol on one connection
 *   src/serve_http.c     HTTP/JSON through libmicrohttpd
 *   src/serve_milter.c   the milter child process (owns libmilter), which asks the parent over a unix socket
 *   src/learn_log.c      the durable learned.jsonl append (TELL, POST /learn)
 *   src/serve_retrain.c  the debounced background retrain after corrections (a `tbert learn` child) */
#ifndef TBERT_SERVE_H
#define TBERT_SERVE_H

#include <netinet/in.h>
#include <spawn.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "tbert/common.h"

#define SERVE_MAX_ALLOW 64
#define SERVE_DEFAULT_MAX_MESSAGE (500u * 1024u) /* spamc's default -s */
#define SERVE_DEFAULT_MAX_CONNECTIONS 256
#define SERVE_DEFAULT_TIMEOUT 30 /* seconds, read and write */
#define SERVE_MAX_HEADER_LINE 8192
#define SERVE_MAX_HEADERS 64

/* One allow-list entry: an address family, address bytes and prefix length. */
typedef struct {
    int family; /* AF_INET or AF_INET6 */
    uint8_t addr[16];
    int prefix;
} serve_cidr;

typedef struct {
    const char *head, *model, *device;
    const char *spamd, *milter, *http; /* ADDR (HOST:PORT or unix:PATH) or NULL */
    int threads;                       /* encoder threads (0: all cores) */
    int batch;                         /* most messages per encoder call (default 32) */
    double window_ms;                  /* batching window (default 5) */
    int max_connections;               /* per listener (default 256) */
    size_t max_message;                /* bytes scored per message (default 500 KB) */
    int timeout_s;                     /* read/write timeout per connection */
    serve_cidr allow[SERVE_MAX_ALLOW];
    int n_allow;
    bool have_unsure;
    double unsure_lo, unsure_hi;
    double reject_above, quarantine_above; /* milter: P above which to reject / quarantine; > 1 = off */
    int socket_mode;                       /* unix sockets' mode (default 0660) */
    const char *socket_owner;              /* --socket-owner USER[:GROUP] for unix sockets, or NULL */
    bool syslog;                           /* log to syslog (facility mail) as well as stderr */
    const char *user;                      /* --user: drop to this user once the listeners are bound */
    const char *exe;                       /* this binary, for the milter child (default /proc/self/exe) */
    double retrain_after;                  /* seconds without new corrections before a background retrain; 0: never */
} serve_opts;

/* ---- serve_verdict.c ---------------------------------------------------------------------------- */
enum { SERVE_HAM = 0, SERVE_SPAM = 1, SERVE_UNSURE = 2 };
#define SERVE_REQUIRED 5.0
#define SERVE_SCORE_CAP 50.0

typedef struct {
    double p;         /* P(spam) */
    double threshold; /* the head's decision threshold */
    double score;     /* SpamAssassin points: 5 + logit(p) - logit(threshold), clamped to +-50 */
    bool spam;        /* p >= threshold (the head's label) */
    int symbol;       /* SERVE_HAM / SERVE_SPAM / SERVE_UNSURE (unsure only with --unsure) */
    bool truncated;   /* only the first max_message bytes were scored */
    char head_id[17]; /* first 16 hex digits of sha256(best.safetensors) */
    double ms;        /* wall time of this message in the server */
} serve_result;

/* score = 5 + logit(p) - logit(t), clamped to [-50, 50]; forced below 5 when !spam and to >= 5 when spam,
 * so that score >= 5 exactly when the head says spam. */
double serve_sa_score(double p, double t, bool spam);
/* The score as spamd prints it: one decimal, rounded, but never "5.0" or more for a ham. */
void serve_format_score(double score, bool spam, char out[16]);
const char *serve_symbol_name(int symbol); /* TBERT_SPAM / TBERT_HAM / TBERT_UNSURE */
/* Our header lines (each "Name: value\r\n", in order): X-Spam-Flag, X-Spam-Status, X-Spam-Level,
 * X-TBert-Spam. Returns the bytes written (NUL-terminated) or 0 when it does not fit. */
size_t serve_our_headers(const serve_result *r, const char *version, char *out, size_t cap);
/* True for a header name we own: X-Spam-Flag, X-Spam-Status, X-Spam-Level, X-TBert-* (case-insensitive). */
bool serve_is_our_header(const char *name, size_t len);
/* The message with every header field of ours removed (continuation lines included) and `ours` (header lines
 * ending in "\r\n") inserted at the end of its header block, in the message's own line ending.
 * head_only: stop after the blank line that ends the header block (spamd HEADERS). malloc'd; NULL on OOM. */
char *serve_rewrite_message(const char *raw, size_t len, const char *ours, bool head_only, size_t *out_len);
/* The same with the caller's idea of "ours" (tbert filter: its configured header names). */
char *serve_rewrite_message_ex(const char *raw, size_t len, const char *ours, bool head_only,
                               bool (*is_ours)(const char *name, size_t len, const void *ctx), const void *ctx,
                               size_t *out_len);

/* ---- learn_log.c -------------------------------------------------------------------------------- */
/* Appends one correction to DIR/learned.jsonl under an exclusive flock and fsyncs it before returning:
 * {"time":UNIX,"action":"learn"|"forget","class":"spam"|"ham","sha256":HEX,"bytes":N,"via":VIA,
 *  "truncated":BOOL,"message_b64":BASE64}. *sha (65 bytes, may be NULL) receives the message's sha256. */
tbert_status tbert_learn_append(const char *head_dir, const char *action, const char *klass, const char *raw, size_t len,
                                bool truncated, const char *via, char *sha, tbert_error *err);

/* ---- serve.c ------------------------------------------------------------------------------------ */
typedef struct serve_ctx serve_ctx;
/* posix_spawn of exe (argv, this environment; fa may be NULL) with no signal blocked in the child and SIGPIPE,
 * SIGHUP, SIGTERM, SIGINT at their default action (serve blocks or catches them): the milter child and the
 * background retrain. 0 or the error number. */
int serve_spawn(pid_t *pid, const char *exe, const posix_spawn_file_actions_t *fa, char *const argv[]);

/* ---- serve_retrain.c: the debounced background retrain (serve's main thread only) ------------------ */
typedef void (*serve_log_fn)(serve_ctx *s, const char *fmt, ...);
typedef struct serve_retrainer serve_retrainer;
/* NULL (off) when quiet_s <= 0 or out of memory. head: serve's --head (a folder or its best.safetensors). */
serve_retrainer *serve_retrainer_new(const char *head, const char *exe, double quiet_s);
/* Once a second: notices learned.jsonl changed, reaps a finished retrain (one log line), and starts
 * `tbert learn --retrain --warm` once the log has been quiet for quiet_s seconds. NULL: nothing. */
void serve_retrainer_tick(serve_retrainer *r, serve_log_fn log, serve_ctx *ctx);
/* Stops a running retrain (the head stays as it is) and frees. */
void serve_retrainer_free(serve_retrainer *r, serve_log_fn log, serve_ctx *ctx);

/* Runs the service until SIGTERM/SIGINT (drained) or a fatal error. Prints "listening on ..." per listener. */
tbert_status serve_run(const serve_opts *o, tbert_error *err);

/* For the protocol handlers (any thread): scores one message (the first len bytes of it; truncated says the
 * client sent more), waiting for the batch it joins. verb names the request in the log line. */
tbert_status serve_score(serve_ctx *s, const char *raw, size_t len, bool truncated, const char *verb, serve_result *r,
                         tbert_error *err);
const serve_opts *serve_options(const serve_ctx *s);
/* Counts a request that ended in a protocol error (metrics) and logs it in one line (no message content). */
void serve_protocol_error(serve_ctx *s, const char *proto, const char *what);
/* Learned-correction log of the served head (DIR/learned.jsonl); counts it. */
tbert_status serve_learn(serve_ctx *s, const char *action, const char *klass, const char *raw, size_t len, bool truncated,
                         const char *via, char *sha, tbert_error *err);
/* Prometheus text of the counters (malloc'd). */
char *serve_metrics_text(serve_ctx *s);
/* Head id of the model being served now (copied into out, 17 bytes). */
void serve_head_id(serve_ctx *s, char out[17]);
/* Whether a peer address may talk to us: unix sockets and loopback always, others only on the allow-list. */
bool serve_peer_allowed(const serve_opts *o, const struct sockaddr *sa);
/* "unix:PATH", "HOST:PORT", "[V6]:PORT" or ":PORT" (= 127.0.0.1) into a bound, listening socket.
 * bound_name receives what to print ("127.0.0.1:34567", "unix:/run/x.sock"). */
tbert_status serve_listen(const char *addr, int mode, int backlog, int *fd_out, char *bound_name, size_t n,
                          tbert_error *err);
/* Parses "A.B.C.D/N" or "V6/N" (N optional) into c. */
bool serve_parse_cidr(const char *s, serve_cidr *c);
/* Writes all of buf to fd (EINTR retried; a send timeout or a gone peer gives false). */
bool serve_write_all(int fd, const void *buf, size_t n);

/* ---- protocols ---------------------------------------------------------------------------------- */
/* A spamd request's line and headers. */
typedef struct {
    int verb; /* index into CHECK SYMBOLS REPORT REPORT_IFSPAM PROCESS HEADERS PING SKIP TELL MILTER */
    int vmaj, vmin;
    long long clen; /* Content-length (>= 0 after a successful parse, except PING/SKIP: -1) */
    bool zlib, set_local, remove_local;
    char klass[8]; /* TELL Message-class: "spam", "ham" or "" */
} spamd_request;
/* Parses the head of a spamd request held in memory (what serve_spamd_conn reads from a socket; the fuzz
 * target): 0 = a request, > 0 = the sysexits code of the protocol error (*why names it), -1 = the input ended
 * first, -2 = out of memory. */
int serve_spamd_parse(const char *buf, size_t n, spamd_request *q, const char **why);
/* One spamd connection, from its first byte to its close (the caller closes fd). internal: the milter child's
 * connection on the private socket (it may use the MILTER command). */
void serve_spamd_conn(serve_ctx *s, int fd, bool internal);
/* HTTP: start / stop a libmicrohttpd daemon on an already listening socket. */
typedef struct serve_http serve_http;
tbert_status serve_http_start(serve_ctx *s, int listen_fd, serve_http **out, tbert_error *err);
void serve_http_stop(serve_http *h);
/* The milter child process (tbert serve --milter-child): runs libmilter on addr and asks the scoring process
 * on the unix socket `upstream`. Returns the process's exit status. */
int serve_milter_child(const char *addr, const char *upstream, double reject_above, double quarantine_above, int timeout_s,
                       int socket_mode, const char *socket_owner, size_t max_message);
/* --socket-owner: "USER[:GROUP]", "USER:" (login group) or ":GROUP" into a uid and gid ((uid_t)-1 / (gid_t)-1
 * = unchanged), and the chown of one socket by it (no-op for a NULL spec). */
tbert_status serve_parse_owner(const char *spec, uid_t *uid, gid_t *gid, tbert_error *err);
tbert_status serve_chown_socket(const char *path, const char *spec, tbert_error *err);

#endif
