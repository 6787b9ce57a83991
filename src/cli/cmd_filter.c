/* tbert filter: one message on stdin, bogofilter's exit codes (0 spam, 1 ham, 2 unsure, 3 error), so that it
 * drops into procmail / maildrop / sieve setups; --passthrough writes the message back with a verdict header. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "tbert/score.h"

static const char *const CMD = "filter";
enum { F_SPAM = 0, F_HAM = 1, F_UNSURE = 2, F_ERROR = 3 };

static void usage(FILE *f) {
    fprintf(f,
            "usage: tbert filter [options] --head CKPT_DIR < message\n"
            "\n"
            "Classifies one message read from stdin. Exit status as bogofilter's: 0 spam, 1 ham, 2 unsure,\n"
            "3 error. Without --unsure the head's stored threshold decides (score >= threshold is spam).\n"
            "\n"
            "options:\n"
            "  --head DIR              head checkpoint folder (required)\n"
            "  --model NAME|DIR        model name in $TBERT_CACHE/models or a model folder (default minilm)\n"
            "  --unsure LOW,HIGH       score < LOW is ham, score >= HIGH is spam, anything between is unsure\n"
            "  --passthrough           write the message to stdout with a header added:\n"
            "                          X-TBert-Spam: Yes|No|Unsure, score=0.987\n"
            "                          (on an error the message is written back unchanged)\n"
            "  --max-message-bytes N   classify only the first N bytes of the message (default 33554432)\n"
            "  --device D              auto|cpu|cuda|cuda:N (default auto)\n"
            "  --threads N             CPU encoder threads (default: all cores)\n"
            "  --help                  this text\n");
}

static int fail(const char *fmt, const char *a) {
    fprintf(stderr, "tbert filter: ");
    fprintf(stderr, fmt, a);
    fputc('\n', stderr);
    return F_ERROR;
}

/* The whole message (passthrough must give back every byte, however large). */
static bool read_stdin(char **out, size_t *len) {
    size_t n = 0, sz = 1 << 16;
    char *b = malloc(sz + 1);
    if (!b) return false;
    for (;;) {
        if (n == sz) {
            char *nb = sz > SIZE_MAX / 4 ? NULL : realloc(b, sz * 2 + 1);
            if (!nb) {
                free(b);
                return false;
            }
            b = nb;
            sz *= 2;
        }
        ssize_t r = read(STDIN_FILENO, b + n, sz - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            free(b);
            return false;
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    b[n] = '\0';
    *out = b;
    *len = n;
    return true;
}

/* The message with the verdict header added at the end of its header block, in the message's own line
 * ending style. */
static void write_passthrough(const char *raw, size_t len, const char *header) {
    const char *end = NULL;
    bool crlf = false;
    for (size_t i = 0; i + 1 < len; i++) {
        if (raw[i] == '\n' && raw[i + 1] == '\n') {
            end = raw + i + 1;
            break;
        }
        if (i + 3 < len && !memcmp(raw + i, "\r\n\r\n", 4)) {
            end = raw + i + 2;
            crlf = true;
            break;
        }
    }
    if (!header) {
        fwrite(raw, 1, len, stdout);
    } else if (end) {
        fwrite(raw, 1, (size_t)(end - raw), stdout);
        fputs(header, stdout);
        fputs(crlf ? "\r\n" : "\n", stdout);
        fwrite(end, 1, len - (size_t)(end - raw), stdout);
    } else { /* headers only, no body */
        fwrite(raw, 1, len, stdout);
        if (len && raw[len - 1] != '\n') fputc('\n', stdout);
        fputs(header, stdout);
        fputc('\n', stdout);
    }
    fflush(stdout);
}

int cmd_filter(int argc, char **argv) {
    enum { O_HEAD = 256, O_MODEL, O_UNSURE, O_PASS, O_MAXB, O_DEVICE, O_THREADS, O_HELP };
    static const struct option longopts[] = {
        {"head", required_argument, NULL, O_HEAD},     {"model", required_argument, NULL, O_MODEL},
        {"unsure", required_argument, NULL, O_UNSURE}, {"passthrough", no_argument, NULL, O_PASS},
        {"max-message-bytes", required_argument, NULL, O_MAXB}, {"device", required_argument, NULL, O_DEVICE},
        {"threads", required_argument, NULL, O_THREADS}, {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *head = NULL, *model = NULL, *device = NULL;
    bool pass = false, have_unsure = false;
    double lo = 0, hi = 0;
    size_t cap = (size_t)32 << 20;
    long v, threads = 0;
    int c;
    while ((c = cli_getopt(CMD, argc, argv, "", longopts)) != -1) {
        switch (c) {
        case O_HEAD: head = optarg; break;
        case O_MODEL: model = optarg; break;
        case O_UNSURE: {
            char *end;
            lo = strtod(optarg, &end);
            if (end == optarg || *end != ',') return fail("--unsure expects LOW,HIGH (e.g. 0.3,0.7), got '%s'", optarg);
            const char *q = end + 1;
            hi = strtod(q, &end);
            if (end == q || *end || !(lo >= 0 && lo <= hi && hi <= 1))
                return fail("--unsure expects LOW,HIGH with 0 <= LOW <= HIGH <= 1, got '%s'", optarg);
            have_unsure = true;
            break;
        }
        case O_PASS: pass = true; break;
        case O_MAXB:
            if (!cli_parse_int(CMD, "--max-message-bytes", optarg, 1024, 1L << 34, &v)) return F_ERROR;
            cap = (size_t)v;
            break;
        case O_DEVICE: device = optarg; break;
        case O_THREADS:
            if (!cli_parse_int(CMD, "--threads", optarg, 1, 1024, &threads)) return F_ERROR;
            break;
        case O_HELP: usage(stdout); return 0;
        default: return F_ERROR;
        }
    }
    if (optind < argc) return fail("unexpected argument '%s' (the message is read from stdin)", argv[optind]);
    char *raw;
    size_t len;
    if (!read_stdin(&raw, &len)) return fail("%s", "cannot read the message from stdin");
    if (!head) {
        if (pass) write_passthrough(raw, len, NULL);
        free(raw);
        return fail("%s", "--head CKPT_DIR is required (see 'tbert filter --help')");
    }

    tbert_error err;
    tbert_score_ctx ctx;
    tbert_status st = tbert_score_ctx_open(model, head, device, (int)threads, 0, true, &ctx, &err);
    tbert_message m = {0};
    tbert_mail_doc md = {0};
    float p = 0;
    int li = -1, toks = 0;
    /* only the first --max-message-bytes are classified (as in score); passthrough writes all of it */
    if (!st) st = tbert_message_parse(raw, len < cap ? len : cap, "stdin", &m, &err);
    if (!st && tbert_mail_document(&m, &md, &err)) st = tbert_fail(&err, TBERT_E_NOMEM, "stdin: out of memory");
    if (!st) {
        size_t dim = tbert_featurizer_dim(ctx.fz);
        float *feats = malloc(dim * sizeof *feats);
        tbert_doc doc = {md.text, md.len, md.evidence};
        if (!feats) st = tbert_fail(&err, TBERT_E_NOMEM, "out of memory");
        if (!st) st = tbert_featurize(ctx.fz, 1, &doc, feats, &toks, &err);
        if (!st) st = tbert_classifier_predict(ctx.clf, 1, feats, &p, &li, &err);
        free(feats);
    }
    int code = F_ERROR;
    if (!st) {
        const tbert_recipe *r = tbert_classifier_recipe(ctx.clf);
        bool positive = r->positive >= 0 ? li == r->positive : false;
        if (r->n_labels != 2 || r->positive < 0) {
            st = tbert_fail(&err, TBERT_E_MISMATCH, "%s: filter needs a binary head (spam vs ham), this one has %d labels",
                            head, r->n_labels);
        } else if (have_unsure) {
            code = p >= hi ? F_SPAM : p < lo ? F_HAM : F_UNSURE;
        } else {
            code = positive ? F_SPAM : F_HAM;
        }
    }
    if (pass) {
        char hdr[96];
        if (!st) {
            snprintf(hdr, sizeof hdr, "X-TBert-Spam: %s, score=%.3f", code == F_SPAM ? "Yes" : code == F_HAM ? "No" : "Unsure", p);
            write_passthrough(raw, len, hdr);
        } else {
            write_passthrough(raw, len, NULL);
        }
    }
    if (st) {
        fprintf(stderr, "tbert: %s\n", err.msg);
        code = F_ERROR;
    }
    tbert_mail_doc_free(&md);
    tbert_message_free(&m);
    if (ctx.model || ctx.clf) tbert_score_ctx_close(&ctx);
    free(raw);
    return code;
}
