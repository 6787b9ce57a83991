/* HTTP/JSON for tbert serve through libmicrohttpd (Debian's libmicrohttpd-dev), on a socket serve.c opened:
 *   POST /score               raw message as the body -> {"p":..,"verdict":"spam|ham|unsure","score":..,
 *                             "required":5.0,"threshold":..,"head":"..","truncated":false,"ms":..}
 *   POST /learn?class=spam|ham (&action=forget)  the same durable append as spamd TELL -> {"learned":true,...}
 *   GET  /health              {"status":"ok","head":".."}
 *   GET  /metrics             Prometheus text (requests, verdicts, latency and batch-size histograms, ...)
 * One thread per connection (libmicrohttpd's), at most --max-connections, --timeout idle seconds; a body is
 * kept up to --max-message bytes, the rest is read and dropped ("truncated":true). Peers outside loopback
 * need --allow. */
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serve.h"

struct serve_http {
    struct MHD_Daemon *d;
    serve_ctx *s;
};

typedef struct {
    char *buf;
    size_t len, cap;
    bool truncated;
} upload;

static enum MHD_Result allow_peer(void *cls, const struct sockaddr *addr, socklen_t addrlen) {
    serve_http *h = cls;
    if (!addr || addrlen == 0) return MHD_YES; /* unix socket peers carry no address */
    if (serve_peer_allowed(serve_options(h->s), addr)) return MHD_YES;
    serve_protocol_error(h->s, "http", "peer not on the allow-list (--allow)");
    return MHD_NO;
}

static enum MHD_Result answer(struct MHD_Connection *c, unsigned code, const char *type, char *text) {
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", type);
    enum MHD_Result ret = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result answer_error(struct MHD_Connection *c, unsigned code, const char *msg) {
    char *t = malloc(strlen(msg) + 32);
    if (!t) return MHD_NO;
    sprintf(t, "{\"error\":\"%s\"}\n", msg); /* msg: our own fixed texts, nothing to escape */
    return answer(c, code, "application/json", t);
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    upload *u = *con_cls;
    if (u) {
        free(u->buf);
        free(u);
        *con_cls = NULL;
    }
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url, const char *method, const char *version,
                              const char *data, size_t *data_size, void **con_cls) {
    serve_http *h = cls;
    serve_ctx *s = h->s;
    bool post = !strcmp(method, "POST"), get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    bool is_score = !strcmp(url, "/score"), is_learn = !strcmp(url, "/learn");
    if (!*con_cls) { /* the first call: headers only */
        if (!strcmp(url, "/health") || !strcmp(url, "/metrics")) {
            if (!get) return answer_error(c, 405, "use GET");
        } else if (is_score || is_learn) {
            if (!post) return answer_error(c, 405, "use POST");
        } else {
            return answer_error(c, 404, "unknown path (POST /score, POST /learn?class=spam|ham, GET /health, GET /metrics)");
        }
        upload *u = calloc(1, sizeof *u);
        if (!u) return MHD_NO;
        *con_cls = u;
        return MHD_YES;
    }
    upload *u = *con_cls;
    if (*data_size) { /* a piece of the body */
        size_t cap = serve_options(s)->max_message;
        size_t take = *data_size;
        if (u->len + take > cap) {
            take = cap - u->len;
            u->truncated = true;
        }
        if (take) {
            if (u->len + take > u->cap) {
                size_t nc = u->cap ? u->cap * 2 : 65536;
                while (nc < u->len + take) nc *= 2;
                if (nc > cap + 1) nc = cap + 1;
                char *nb = realloc(u->buf, nc);
                if (!nb) return MHD_NO;
                u->buf = nb;
                u->cap = nc;
            }
            memcpy(u->buf + u->len, data, take);
            u->len += take;
        }
        *data_size = 0;
        return MHD_YES;
    }
    /* the whole request is here */
    if (!strcmp(url, "/health")) {
        char id[17], *t = malloc(96);
        serve_head_id(s, id);
        if (!t) return MHD_NO;
        snprintf(t, 96, "{\"status\":\"ok\",\"head\":\"%s\"}\n", id);
        return answer(c, 200, "application/json", t);
    }
    if (!strcmp(url, "/metrics")) {
        char *t = serve_metrics_text(s);
        return t ? answer(c, 200, "text/plain; version=0.0.4", t) : MHD_NO;
    }
    if (is_learn) {
        const char *k = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "class");
        const char *act = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "action");
        bool forget = act && !strcmp(act, "forget");
        if (act && !forget && strcmp(act, "learn")) return answer_error(c, 400, "action must be learn or forget");
        if (!k || (strcmp(k, "spam") && strcmp(k, "ham"))) return answer_error(c, 400, "class must be spam or ham");
        char sha[65];
        tbert_error e;
        if (serve_learn(s, forget ? "forget" : "learn", k, u->buf ? u->buf : "", u->len, u->truncated, "http", sha, &e))
            return answer_error(c, 500, "cannot record the correction");
        char *t = malloc(200);
        if (!t) return MHD_NO;
        snprintf(t, 200, "{\"learned\":true,\"action\":\"%s\",\"class\":\"%s\",\"sha256\":\"%s\",\"truncated\":%s}\n",
                 forget ? "forget" : "learn", k, sha, u->truncated ? "true" : "false");
        return answer(c, 200, "application/json", t);
    }
    serve_result r;
    tbert_error e;
    if (u->len == 0) return answer_error(c, 400, "empty body: POST the raw message");
    if (serve_score(s, u->buf, u->len, u->truncated, "http score", &r, &e)) {
        bool bad_msg = e.code == TBERT_E_FORMAT || e.code == TBERT_E_ARG;
        return answer_error(c, bad_msg ? 422 : 500, bad_msg ? "message could not be scored" : "scoring failed");
    }
    char sc[16];
    serve_format_score(r.score, r.spam, sc);
    char *t = malloc(320);
    if (!t) return MHD_NO;
    snprintf(t, 320,
             "{\"p\":%.6f,\"verdict\":\"%s\",\"score\":%s,\"required\":%.1f,\"threshold\":%.6f,\"symbol\":\"%s\","
             "\"head\":\"%s\",\"truncated\":%s,\"ms\":%.3f}\n",
             r.p, r.symbol == SERVE_UNSURE ? "unsure" : r.spam ? "spam" : "ham", sc, SERVE_REQUIRED, r.threshold,
             serve_symbol_name(r.symbol), r.head_id, r.truncated ? "true" : "false", r.ms);
    return answer(c, 200, "application/json", t);
}

tbert_status serve_http_start(serve_ctx *s, int listen_fd, serve_http **out, tbert_error *err) {
    serve_http *h = calloc(1, sizeof *h);
    if (!h) return tbert_fail(err, TBERT_E_NOMEM, "serve: out of memory");
    h->s = s;
    const serve_opts *o = serve_options(s);
    h->d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL, 0, allow_peer, h,
                            handle, h, MHD_OPTION_LISTEN_SOCKET, listen_fd, MHD_OPTION_CONNECTION_LIMIT,
                            (unsigned)o->max_connections, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)o->timeout_s,
                            MHD_OPTION_NOTIFY_COMPLETED, completed, h, MHD_OPTION_THREAD_STACK_SIZE, (size_t)1 << 20,
                            MHD_OPTION_END);
    if (!h->d) {
        free(h);
        return tbert_fail(err, TBERT_E_IO, "serve: libmicrohttpd could not start on the HTTP socket");
    }
    *out = h;
    return TBERT_OK;
}

void serve_http_stop(serve_http *h) {
    if (!h) return;
    MHD_stop_daemon(h->d);
    free(h);
}
