/* The milter child process of tbert serve (`tbert serve --milter-child`, started and restarted by serve.c).
 * libmilter's smfi_main() owns the process's signals and keeps library-global state (one milter per process),
 * so it runs here, apart from the scoring process: this process loads no model. For each message it gathers
 * the header fields and the body (at most --max-message bytes), asks the scoring process with the spamd-style
 * MILTER command on a private unix socket, then, at end of message, deletes every header field with one of
 * our names (X-Spam-Flag, X-Spam-Status, X-Spam-Level, X-TBert-*) and adds ours; above
 * --milter-reject-above it rejects (550 5.7.1), above --milter-quarantine-above it quarantines (Postfix: the
 * hold queue). When the scoring process cannot answer the message is accepted unchanged (fail open) and the
 * child says so in the log.
 *
 * libmilter's callbacks take no user pointer for the filter as a whole, so the settings live in one
 * file-static struct written once before smfi_main() and only read afterwards. */
#include <errno.h>
#include <libmilter/mfapi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "serve.h"

static struct {
    char upstream[108]; /* sizeof sockaddr_un.sun_path */
    double reject_above, quarantine_above;
    int timeout_s;
    size_t max_message;
} cfg; /* written once before smfi_main(), read-only afterwards */

#define MAX_OURS 64
typedef struct {
    char *buf;
    size_t len, cap;
    bool truncated;
    int n_ours;
    struct {
        char name[64];
        int idx; /* 1-based among the fields of this name */
    } ours[MAX_OURS];
} mctx;

static void msg_reset(mctx *m) {
    m->len = 0;
    m->truncated = false;
    m->n_ours = 0;
}

static void add(mctx *m, const char *p, size_t n) {
    if (m->len + n > cfg.max_message) {
        n = cfg.max_message - m->len;
        m->truncated = true;
    }
    if (!n) return;
    if (m->len + n > m->cap) {
        size_t nc = m->cap ? m->cap : 16384;
        while (nc < m->len + n) nc *= 2;
        char *nb = realloc(m->buf, nc);
        if (!nb) {
            m->truncated = true;
            return;
        }
        m->buf = nb;
        m->cap = nc;
    }
    memcpy(m->buf + m->len, p, n);
    m->len += n;
}

static sfsistat on_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *addr) {
    mctx *m = calloc(1, sizeof *m);
    if (!m) return SMFIS_TEMPFAIL;
    smfi_setpriv(ctx, m);
    return SMFIS_CONTINUE;
}

static sfsistat on_envfrom(SMFICTX *ctx, char **argv) {
    mctx *m = smfi_getpriv(ctx);
    if (m) msg_reset(m);
    return SMFIS_CONTINUE;
}

static sfsistat on_header(SMFICTX *ctx, char *name, char *value) {
    mctx *m = smfi_getpriv(ctx);
    if (!m) return SMFIS_CONTINUE;
    size_t nl = strlen(name);
    if (serve_is_our_header(name, nl)) {
        int idx = 1;
        for (int i = 0; i < m->n_ours; i++)
            if (!strcasecmp(m->ours[i].name, name)) idx++;
        if (m->n_ours < MAX_OURS && nl < sizeof m->ours[0].name) {
            strcpy(m->ours[m->n_ours].name, name);
            m->ours[m->n_ours].idx = idx;
            m->n_ours++;
        }
    }
    add(m, name, nl);
    add(m, ": ", 2);
    add(m, value, strlen(value));
    add(m, "\r\n", 2);
    return SMFIS_CONTINUE;
}

static sfsistat on_eoh(SMFICTX *ctx) {
    mctx *m = smfi_getpriv(ctx);
    if (m) add(m, "\r\n", 2);
    return SMFIS_CONTINUE;
}

static sfsistat on_body(SMFICTX *ctx, unsigned char *b, size_t n) {
    mctx *m = smfi_getpriv(ctx);
    if (m) add(m, (const char *)b, n);
    return SMFIS_CONTINUE;
}

/* Asks the scoring process. Returns the answer (malloc'd, NUL-terminated) or NULL. */
static char *ask(const mctx *m) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return NULL;
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    memcpy(un.sun_path, cfg.upstream, sizeof un.sun_path);
    struct timeval tv = {cfg.timeout_s, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    char hdr[128];
    int hn = snprintf(hdr, sizeof hdr, "MILTER SPAMC/1.5\r\nContent-length: %zu\r\n\r\n", m->len);
    if (connect(fd, (struct sockaddr *)&un, sizeof un) != 0 || !serve_write_all(fd, hdr, (size_t)hn) ||
        (m->len && !serve_write_all(fd, m->buf, m->len))) {
        close(fd);
        return NULL;
    }
    shutdown(fd, SHUT_WR);
    size_t cap = 65536, len = 0;
    char *o = malloc(cap + 1);
    while (o && len < cap) {
        ssize_t r = recv(fd, o + len, cap - len, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            free(o);
            o = NULL;
        }
        if (r <= 0) break;
        len += (size_t)r;
    }
    close(fd);
    if (o) o[len] = '\0';
    return o;
}

static sfsistat on_eom(SMFICTX *ctx) {
    mctx *m = smfi_getpriv(ctx);
    if (!m) return SMFIS_CONTINUE;
    char *a = ask(m);
    int code = -1;
    double p = -1;
    char *body = NULL;
    if (a && sscanf(a, "SPAMD/%*s %d", &code) == 1 && code == 0) {
        const char *pp = strstr(a, "\r\nX-TBert-P: ");
        if (pp) p = strtod(pp + 13, NULL);
        body = strstr(a, "\r\n\r\n");
        if (body) body += 4;
    }
    if (!body || p < 0) {
        fprintf(stderr, "tbert serve: milter: the scoring process did not answer (%s); message accepted unchanged\n",
                a ? "bad answer" : strerror(errno));
        free(a);
        msg_reset(m);
        return SMFIS_ACCEPT;
    }
    for (int i = m->n_ours - 1; i >= 0; i--) smfi_chgheader(ctx, m->ours[i].name, m->ours[i].idx, NULL);
    for (char *line = body; *line;) {
        char *e = strstr(line, "\r\n");
        if (!e) break;
        *e = '\0';
        char *colon = strchr(line, ':');
        if (colon) {
            *colon = '\0';
            char *v = colon + 1;
            while (*v == ' ') v++;
            smfi_addheader(ctx, line, v);
        }
        line = e + 2;
    }
    free(a);
    msg_reset(m);
    if (p > cfg.reject_above) {
        smfi_setreply(ctx, "550", "5.7.1", "Message rejected as spam");
        return SMFIS_REJECT;
    }
    if (p > cfg.quarantine_above) {
        char why[64];
        snprintf(why, sizeof why, "tbert: spam p=%.4f", p);
        smfi_quarantine(ctx, why);
    }
    return SMFIS_CONTINUE;
}

static sfsistat on_abort(SMFICTX *ctx) {
    mctx *m = smfi_getpriv(ctx);
    if (m) msg_reset(m);
    return SMFIS_CONTINUE;
}

static sfsistat on_close(SMFICTX *ctx) {
    mctx *m = smfi_getpriv(ctx);
    if (m) {
        free(m->buf);
        free(m);
        smfi_setpriv(ctx, NULL);
    }
    return SMFIS_CONTINUE;
}

int serve_milter_child(const char *addr, const char *upstream, double reject_above, double quarantine_above, int timeout_s,
                       int socket_mode, const char *socket_owner, size_t max_message) {
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* the scoring process is gone: so are we */
    if (getppid() == 1) return 1;
    if (strlen(upstream) >= sizeof cfg.upstream) {
        fprintf(stderr, "tbert serve: milter: upstream socket path too long: %s\n", upstream);
        return 2;
    }
    strcpy(cfg.upstream, upstream);
    cfg.reject_above = reject_above;
    cfg.quarantine_above = quarantine_above;
    cfg.timeout_s = timeout_s;
    cfg.max_message = max_message;
    /* ADDR in libmilter's words: unix:PATH, inet:PORT@HOST, inet6:PORT@HOST */
    char conn[600];
    if (!strncmp(addr, "unix:", 5)) {
        snprintf(conn, sizeof conn, "%s", addr);
    } else {
        const char *colon = strrchr(addr, ':');
        bool v6 = addr[0] == '[';
        if (!colon || !colon[1] || !strcmp(colon + 1, "0")) {
            fprintf(stderr, "tbert serve: --milter %s: expected HOST:PORT with a fixed port, or unix:PATH\n", addr);
            return 2;
        }
        int hl = (int)(colon - addr);
        const char *h = addr;
        if (v6) h++, hl -= 2;
        if (hl <= 0) h = "127.0.0.1", hl = 9;
        snprintf(conn, sizeof conn, "%s:%s@%.*s", v6 ? "inet6" : "inet", colon + 1, hl, h);
    }
    struct smfiDesc desc = {
        .xxfi_name = "tbert",
        .xxfi_version = SMFI_VERSION,
        .xxfi_flags = SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_QUARANTINE,
        .xxfi_connect = on_connect,
        .xxfi_envfrom = on_envfrom,
        .xxfi_header = on_header,
        .xxfi_eoh = on_eoh,
        .xxfi_body = on_body,
        .xxfi_eom = on_eom,
        .xxfi_abort = on_abort,
        .xxfi_close = on_close,
    };
    if (smfi_setconn(conn) != MI_SUCCESS || smfi_settimeout(timeout_s) != MI_SUCCESS || smfi_register(desc) != MI_SUCCESS) {
        fprintf(stderr, "tbert serve: milter: cannot set up libmilter on %s\n", conn);
        return 2;
    }
    if (smfi_opensocket(true) != MI_SUCCESS) {
        fprintf(stderr, "tbert serve: milter: cannot listen on %s\n", conn);
        return 2;
    }
    if (!strncmp(addr, "unix:", 5)) {
        tbert_error e;
        if (chmod(addr + 5, (mode_t)socket_mode) != 0) {
            fprintf(stderr, "tbert serve: milter: %s: chmod: %s\n", addr + 5, strerror(errno));
            return 2;
        }
        if (serve_chown_socket(addr + 5, socket_owner, &e) != TBERT_OK) {
            fprintf(stderr, "tbert serve: milter: %s\n", e.msg);
            return 2;
        }
    }
    fprintf(stderr, "tbert serve: listening on milter %s\n", addr);
    return smfi_main() == MI_SUCCESS ? 0 : 1;
}
