/* SpamAssassin's spamd protocol (SPAMC/1.x, spamd/PROTOCOL in SpamAssassin's tree) on one connection:
 *
 *   client: VERB SPAMC/1.5\r\n  headers (Content-length, User, Compress, Message-class, Set, Remove)  \r\n  message
 *   server: SPAMD/1.1 CODE TEXT\r\n  headers (Spam: True ; 7.3 / 5.0, Content-length, DidSet, ...)  \r\n  body
 *
 * Verbs: CHECK, SYMBOLS, REPORT, REPORT_IFSPAM, PROCESS, HEADERS, PING, SKIP, TELL; MILTER only on the milter
 * child's private socket (the headers to add as the body). Codes are sysexits.h values (76 EX_PROTOCOL for a
 * malformed request, 65 EX_DATAERR for a message that cannot be scored). The User header is accepted and
 * ignored: one global head serves every user.
 *
 * Bounds: request and header lines of at most 8 KB, at most 64 header lines, the message scored on its first
 * --max-message bytes; the rest of a larger message is read and dropped (CHECK, SYMBOLS, REPORT, TELL,
 * HEADERS) or, for PROCESS, which must give every byte back, spooled to an unlinked temporary file of at most
 * 64 MiB and streamed back from there, so that memory per client stays at --max-message. Every read and write
 * has the --timeout, and a whole request must arrive within 4 x --timeout. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <zlib.h>

#include "serve.h"
#include "tbert/common.h"

#define SPOOL_CAP ((size_t)64 << 20)

enum {
    EX_OK_ = 0,
    EX_USAGE_ = 64,
    EX_DATAERR_ = 65,
    EX_SOFTWARE_ = 70,
    EX_IOERR_ = 74,
    EX_TEMPFAIL_ = 75,
    EX_PROTOCOL_ = 76,
    EX_TOOBIG_ = 98
};

typedef struct {
    int fd;               /* -1: read from mem (serve_spamd_parse, the fuzz target) */
    const char *mem;
    size_t mem_len;
    double deadline;
    char buf[16384];
    size_t pos, len;
    bool failed; /* timeout, reset, or end of input */
} reader;

static bool fill(reader *r) {
    if (r->failed) return false;
    if (r->fd < 0) {
        size_t k = r->mem_len < sizeof r->buf ? r->mem_len : sizeof r->buf;
        if (!k) {
            r->failed = true;
            return false;
        }
        memcpy(r->buf, r->mem, k);
        r->mem += k;
        r->mem_len -= k;
        r->pos = 0;
        r->len = k;
        return true;
    }
    if (tbert_now() > r->deadline) {
        r->failed = true;
        return false;
    }
    for (;;) {
        ssize_t n = recv(r->fd, r->buf, sizeof r->buf, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            r->failed = true;
            return false;
        }
        r->pos = 0;
        r->len = (size_t)n;
        return true;
    }
}

/* One line without its "\r\n"/"\n". 1 = got one, 0 = too long, -1 = input ended / timed out. */
static int read_line(reader *r, char *out, size_t cap, size_t *n) {
    size_t k = 0;
    for (;;) {
        if (r->pos == r->len && !fill(r)) return -1;
        char c = r->buf[r->pos++];
        if (c == '\n') break;
        if (k + 1 >= cap) return 0;
        out[k++] = c;
    }
    if (k > 0 && out[k - 1] == '\r') k--;
    out[k] = '\0';
    *n = k;
    return 1;
}

/* Exactly n bytes into dst (dst NULL: dropped; fd >= 0: written there). */
static bool read_bytes(reader *r, char *dst, size_t n, int spool_fd) {
    while (n > 0) {
        if (r->pos == r->len && !fill(r)) return false;
        size_t k = r->len - r->pos < n ? r->len - r->pos : n;
        if (dst) {
            memcpy(dst, r->buf + r->pos, k);
            dst += k;
        }
        if (spool_fd >= 0) {
            const char *p = r->buf + r->pos;
            size_t left = k;
            while (left) {
                ssize_t w = write(spool_fd, p, left);
                if (w < 0 && errno == EINTR) continue;
                if (w <= 0) return false;
                p += w;
                left -= (size_t)w;
            }
        }
        r->pos += k;
        n -= k;
    }
    return true;
}

static void reply_error(int fd, int code, const char *text) {
    char line[512];
    int n = snprintf(line, sizeof line, "SPAMD/1.1 %d %s\r\n", code, text);
    serve_write_all(fd, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

static bool header_is(const char *line, const char *name, const char **value) {
    size_t l = strlen(name);
    if (strncasecmp(line, name, l) || line[l] != ':') return false;
    const char *v = line + l + 1;
    while (*v == ' ' || *v == '\t') v++;
    *value = v;
    return true;
}

/* zlib-compressed body (spamc -z): inflate at most cap bytes; *more: there was more than that. */
static char *inflate_body(const char *z, size_t zlen, size_t cap, size_t *out_len, bool *more, bool *bad) {
    char *o = malloc(cap + 1);
    *bad = false;
    *more = false;
    if (!o) return NULL;
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (inflateInit(&zs) != Z_OK) {
        free(o);
        return NULL;
    }
    zs.next_in = (Bytef *)z;
    zs.avail_in = (uInt)zlen;
    zs.next_out = (Bytef *)o;
    zs.avail_out = (uInt)cap;
    int r = inflate(&zs, Z_FINISH);
    if (r == Z_BUF_ERROR && zs.avail_out == 0) *more = true;
    else if (r != Z_STREAM_END) *bad = true;
    *out_len = cap - zs.avail_out;
    inflateEnd(&zs);
    return o;
}


enum { V_CHECK, V_SYMBOLS, V_REPORT, V_REPORT_IFSPAM, V_PROCESS, V_HEADERS, V_PING, V_SKIP, V_TELL, V_MILTER, V_N };
static const char *const VERBS[V_N] = {"CHECK", "SYMBOLS", "REPORT", "REPORT_IFSPAM", "PROCESS",
                                       "HEADERS", "PING", "SKIP", "TELL", "MILTER"};

/* The request line and headers. 0: a request (q filled; PING and SKIP stop after the request line);
 * > 0: the sysexits code to answer with, *why says what was wrong; -1: the input ended or timed out before
 * a request line (*why: NULL when nothing at all came). line: a buffer of SERVE_MAX_HEADER_LINE bytes. */
static int parse_head(reader *r, char *line, spamd_request *q, const char **why) {
    memset(q, 0, sizeof *q);
    q->clen = -1;
    size_t n = 0;
    int lr = read_line(r, line, SERVE_MAX_HEADER_LINE, &n);
    if (lr == 0) {
        *why = "request line too long";
        return EX_PROTOCOL_;
    }
    if (lr < 0) {
        *why = n > 0 ? "no request line" : NULL;
        return -1;
    }
    char verb[32];
    if (sscanf(line, "%31s SPAMC/%d.%d", verb, &q->vmaj, &q->vmin) != 3 || q->vmaj != 1) {
        *why = "bad request line (expected VERB SPAMC/1.x)";
        return EX_PROTOCOL_;
    }
    q->verb = 0;
    while (q->verb < V_N && strcmp(verb, VERBS[q->verb])) q->verb++;
    if (q->verb == V_N) {
        *why = "unknown command";
        return EX_PROTOCOL_;
    }
    if (q->verb == V_PING || q->verb == V_SKIP) return 0;
    int nh = 0;
    for (;;) {
        lr = read_line(r, line, SERVE_MAX_HEADER_LINE, &n);
        if (lr == 0) {
            *why = "header line too long";
            return EX_PROTOCOL_;
        }
        if (lr < 0) {
            *why = "request ended inside its headers";
            return -1;
        }
        if (n == 0) break;
        if (++nh > SERVE_MAX_HEADERS) {
            *why = "too many headers";
            return EX_PROTOCOL_;
        }
        const char *val;
        if (header_is(line, "Content-length", &val)) {
            char *end;
            errno = 0;
            long long x = strtoll(val, &end, 10);
            while (*end == ' ' || *end == '\t') end++;
            if (end == val || *end || errno || x < 0) {
                *why = "bad Content-length";
                return EX_PROTOCOL_;
            }
            q->clen = x;
        } else if (header_is(line, "Compress", &val)) {
            if (strcasecmp(val, "zlib")) {
                *why = "unknown Compress value";
                return EX_PROTOCOL_;
            }
            q->zlib = true;
        } else if (header_is(line, "Message-class", &val)) {
            if (!strcasecmp(val, "spam")) strcpy(q->klass, "spam");
            else if (!strcasecmp(val, "ham")) strcpy(q->klass, "ham");
            else {
                *why = "Message-class must be spam or ham";
                return EX_PROTOCOL_;
            }
        } else if (header_is(line, "Set", &val)) {
            q->set_local = strstr(val, "local") != NULL;
        } else if (header_is(line, "Remove", &val)) {
            q->remove_local = strstr(val, "local") != NULL;
        } /* User and anything else: ignored (one global head) */
    }
    if (q->clen < 0) {
        *why = "missing Content-length";
        return EX_PROTOCOL_;
    }
    if (q->verb == V_TELL && (!(q->set_local || q->remove_local) || (q->set_local && !q->klass[0]))) {
        *why = "TELL needs Message-class and Set: local, or Remove: local";
        return EX_PROTOCOL_;
    }
    return 0;
}

int serve_spamd_parse(const char *buf, size_t n, spamd_request *q, const char **why) {
    reader *r = calloc(1, sizeof *r);
    char *line = malloc(SERVE_MAX_HEADER_LINE);
    int code = -2;
    if (r && line) {
        r->fd = -1;
        r->mem = buf;
        r->mem_len = n;
        code = parse_head(r, line, q, why);
    }
    free(line);
    free(r);
    return code;
}

/* The status line and headers of an answer, in the order and with the headers spamd itself sends
 * (Mail::SpamAssassin::Spamd::send_response): a client of protocol 1.3 or later gets Content-length, then
 * Spam:; an older one gets Spam: alone for CHECK/SYMBOLS/REPORT (the body runs to the end of the connection)
 * and Content-length alone for PROCESS. Exim asks "REPORT SPAMC/1.2" and parses exactly
 * "SPAMD/1.1 0 EX_OK\r\nSpam: ... ; S / T\r\n\r\n" followed by the report (src/spam.c): with a Content-length
 * line after Spam: that line became the start of its $spam_report. The blank line is the caller's. */
static int spamd_response_head(char *out, size_t cap, const spamd_request *q, bool message_body, const char *spam_hdr,
                               size_t content_length) {
    bool v13 = q->vmaj > 1 || (q->vmaj == 1 && q->vmin >= 3);
    if (v13)
        return snprintf(out, cap, "SPAMD/1.1 0 EX_OK\r\nContent-length: %zu\r\n%s", content_length, spam_hdr);
    if (message_body) return snprintf(out, cap, "SPAMD/1.1 0 EX_OK\r\nContent-length: %zu\r\n", content_length);
    return snprintf(out, cap, "SPAMD/1.1 0 EX_OK\r\n%s", spam_hdr);
}

void serve_spamd_conn(serve_ctx *s, int fd, bool internal) {
    const serve_opts *o = serve_options(s);
    const char *proto = internal ? "milter" : "spamd";
    reader *r = calloc(1, sizeof *r);
    char *line = malloc(SERVE_MAX_HEADER_LINE);
    char *msg = NULL, *body = NULL, *out = NULL;
    int spool = -1;
    if (!r || !line) {
        reply_error(fd, 71, "EX_OSERR out of memory");
        goto done;
    }
    r->fd = fd;
    r->deadline = tbert_now() + 4.0 * o->timeout_s;

    spamd_request q;
    const char *why = NULL;
    int code = parse_head(r, line, &q, &why);
    if (code < 0) { /* the client sent nothing at all, or left: nothing to answer */
        if (why) serve_protocol_error(s, proto, why);
        goto done;
    }
    if (code > 0 || (q.verb == V_MILTER && !internal)) {
        char text[160];
        snprintf(text, sizeof text, "%s %s", code == EX_TOOBIG_ ? "EX_TOOBIG" : "EX_PROTOCOL",
                 why ? why : "unknown command");
        reply_error(fd, code > 0 ? code : EX_PROTOCOL_, text);
        serve_protocol_error(s, proto, why ? why : "unknown command");
        goto done;
    }
    if (q.verb == V_PING) { /* no body; spamc >= 1.5 sends a blank line, older ones nothing: answer at once */
        serve_write_all(fd, "SPAMD/1.5 0 PONG\r\n", 18);
        goto done;
    }
    if (q.verb == V_SKIP) goto done;
    int v = q.verb;
    long long clen = q.clen;
    bool zlib = q.zlib, set_local = q.set_local, remove_local = q.remove_local;
    char *klass = q.klass;
    const char *verb = VERBS[v];

    /* the message: the first max_message bytes in memory */
    size_t cap = o->max_message, got, len;
    bool truncated = false;
    size_t rest = 0;
    if (zlib) {
        size_t zcap = cap + cap / 2 + 65536; /* compressed input is bounded too */
        if ((unsigned long long)clen > zcap) {
            reply_error(fd, EX_TOOBIG_, "EX_TOOBIG compressed message too large");
            serve_protocol_error(s, proto, "compressed message over the limit");
            goto done;
        }
        char *z = malloc((size_t)clen + 1);
        if (!z || !read_bytes(r, z, (size_t)clen, -1)) {
            free(z);
            serve_protocol_error(s, proto, "client vanished or timed out inside the message");
            goto done;
        }
        bool bad;
        msg = inflate_body(z, (size_t)clen, cap, &len, &truncated, &bad);
        free(z);
        if (!msg || bad) {
            reply_error(fd, EX_DATAERR_, "EX_DATAERR cannot decompress the message");
            serve_protocol_error(s, proto, "bad zlib data");
            goto done;
        }
        if (truncated && v == V_PROCESS) {
            reply_error(fd, EX_TOOBIG_, "EX_TOOBIG compressed message over --max-message");
            serve_protocol_error(s, proto, "compressed PROCESS over --max-message");
            goto done;
        }
        got = len;
    } else {
        got = (unsigned long long)clen > cap ? cap : (size_t)clen;
        truncated = (unsigned long long)clen > cap;
        rest = (size_t)clen - got;
        msg = malloc(got + 1);
        if (!msg) {
            reply_error(fd, 71, "EX_OSERR out of memory");
            goto done;
        }
        if (!read_bytes(r, msg, got, -1)) {
            serve_protocol_error(s, proto, "client vanished or timed out inside the message");
            goto done;
        }
        len = got;
        if (rest > 0) { /* the rest: spooled for PROCESS, else dropped (it must be read before we answer) */
            if (v == V_PROCESS) {
                if (rest > SPOOL_CAP) {
                    reply_error(fd, EX_TOOBIG_, "EX_TOOBIG message too large");
                    serve_protocol_error(s, proto, "PROCESS message over 64 MiB");
                    goto done;
                }
                const char *tmp = getenv("TMPDIR");
                spool = open(tmp && *tmp ? tmp : "/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
                if (spool < 0) {
                    reply_error(fd, EX_IOERR_, "EX_IOERR cannot spool the message");
                    serve_protocol_error(s, proto, "cannot open a spool file");
                    goto done;
                }
            }
            if (!read_bytes(r, NULL, rest, spool)) {
                serve_protocol_error(s, proto, "client vanished or timed out inside the message");
                goto done;
            }
        }
    }
    msg[len] = '\0';

    if (v == V_TELL) {
        tbert_error e;
        tbert_status st = serve_learn(s, set_local ? "learn" : "forget", klass[0] ? klass : "any", msg, len, truncated, proto,
                                      NULL, &e);
        if (st) {
            reply_error(fd, EX_IOERR_, "EX_IOERR cannot record the correction");
            goto done;
        }
        char hdr[128];
        int hn = snprintf(hdr, sizeof hdr, "SPAMD/1.1 0 EX_OK\r\n%s%s\r\n", set_local ? "DidSet: local\r\n" : "",
                          remove_local ? "DidRemove: local\r\n" : "");
        serve_write_all(fd, hdr, (size_t)hn);
        goto done;
    }

    char vname[40];
    snprintf(vname, sizeof vname, internal ? "milter" : "spamd %s", verb);
    serve_result res;
    tbert_error e;
    if (serve_score(s, msg, len, truncated, vname, &res, &e) != TBERT_OK) {
        bool data = e.code == TBERT_E_FORMAT || e.code == TBERT_E_ARG;
        reply_error(fd, data ? EX_DATAERR_ : EX_SOFTWARE_, data ? "EX_DATAERR message could not be scored" : "EX_SOFTWARE scoring failed");
        goto done;
    }
    char sc[16], spam_hdr[96], ours[1024];
    serve_format_score(res.score, res.spam, sc);
    snprintf(spam_hdr, sizeof spam_hdr, "Spam: %s ; %s / %.1f\r\n", res.spam ? "True" : "False", sc, SERVE_REQUIRED);
    if (!serve_our_headers(&res, TBERT_VERSION, ours, sizeof ours)) ours[0] = '\0';

    size_t body_len = 0, stream_len = 0;
    switch (v) {
    case V_CHECK: break;
    case V_SYMBOLS:
        body = tbert_strdup(serve_symbol_name(res.symbol));
        body_len = body ? strlen(body) : 0;
        break;
    case V_REPORT:
    case V_REPORT_IFSPAM:
        if (v == V_REPORT || res.spam) {
            body = malloc(256);
            if (body)
                body_len = (size_t)snprintf(body, 256, "tbert: %s p=%.6f threshold=%.6f head=%s%s\r\n",
                                            res.symbol == SERVE_UNSURE ? "unsure" : res.spam ? "spam" : "ham", res.p,
                                            res.threshold, res.head_id, truncated ? " (scored the first part only)" : "");
        }
        break;
    case V_PROCESS:
    case V_HEADERS:
    case V_MILTER:
        if (v == V_MILTER) {
            body = tbert_strdup(ours);
            body_len = body ? strlen(body) : 0;
        } else {
            body = serve_rewrite_message(msg, len, ours, v == V_HEADERS, &body_len);
        }
        if (!body) {
            reply_error(fd, 71, "EX_OSERR out of memory");
            goto done;
        }
        if (v == V_PROCESS) stream_len = rest;
        break;
    }
    char hdr[512];
    int hn = spamd_response_head(hdr, sizeof hdr, &q, v == V_PROCESS || v == V_HEADERS, spam_hdr, body_len + stream_len);
    if (v == V_MILTER) hn += snprintf(hdr + hn, sizeof hdr - (size_t)hn, "X-TBert-P: %.9g\r\n", res.p);
    hn += snprintf(hdr + hn, sizeof hdr - (size_t)hn, "\r\n");
    if (!serve_write_all(fd, hdr, (size_t)hn) || (body_len && !serve_write_all(fd, body, body_len))) {
        serve_protocol_error(s, proto, "client vanished or timed out before the answer was written");
        goto done;
    }
    if (stream_len) { /* the spooled rest of a PROCESS message */
        char buf[65536];
        lseek(spool, 0, SEEK_SET);
        size_t left = stream_len;
        while (left) {
            ssize_t k = read(spool, buf, left < sizeof buf ? left : sizeof buf);
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0 || !serve_write_all(fd, buf, (size_t)k)) {
                serve_protocol_error(s, proto, "client vanished or timed out while the message was written back");
                break;
            }
            left -= (size_t)k;
        }
    }
done:
    if (spool >= 0) close(spool);
    free(out);
    free(body);
    free(msg);
    free(line);
    free(r);
}
