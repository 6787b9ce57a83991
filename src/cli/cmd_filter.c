/* tbert filter: one message on stdin, bogofilter's exit codes (0 spam, 1 ham, 2 unsure, 3 error), so that it
 * drops into procmail / maildrop / sieve setups; --passthrough (-p) writes the message back with our verdict
 * headers (those of an earlier pass, or forged ones, removed first; src/serve_verdict.c does both, for serve
 * too), and -e makes passthrough exit 0 whatever the verdict (bogofilter's -e, for procmail's `:0fw`). */
#include <errno.h>
#include <glib.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "cli.h"
#include "mail_evidence.h"
#include "serve.h"
#include "tbert/fileio.h"
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
            "  -d, --head DIR          head checkpoint folder (required; bogofilter's -d names its database)\n"
            "      --model NAME|DIR    model name in $TBERT_CACHE/models or a model folder (default minilm)\n"
            "  -u, --unsure LOW,HIGH   score < LOW is ham, score >= HIGH is spam, anything between is unsure\n"
            "  -p, --passthrough       write the message to stdout with our headers added at the end of its\n"
            "                          header block (on an error the message is written back unchanged)\n"
            "  -e, --passthrough-exit0 with -p, exit 0 whatever the verdict (errors still exit 3), so that\n"
            "                          procmail's  :0fw  |tbert filter -p -e -d HEAD  keeps the header\n"
            "  -H, --headers STYLE     which headers -p adds:\n"
            "                            tbert (default)  X-TBert-Spam: Yes|No|Unsure, score=0.987\n"
            "                            spamassassin     X-Spam-Flag: YES|NO, X-Spam-Status: Yes, score=7.3\n"
            "                                             required=5.0 tests=TBERT_SPAM ..., X-Spam-Level: *******\n"
            "                            all              both (the four lines tbert serve adds)\n"
            "                          score = 5 + logit(p) - logit(threshold): >= 5.0 exactly when tbert says spam\n"
            "  -n, --header-name NAME  name of the X-TBert-Spam line (e.g. X-TBert-Verdict); it must start with\n"
            "                          X-TBert- or X-Spam- (names that train, score and serve never read)\n"
            "      --max-message-bytes N  classify only the first N bytes of the message (default 33554432)\n"
            "      --device D          auto|cpu|cuda|cuda:N (default auto)\n"
            "      --threads N         CPU encoder threads (default: all cores)\n"
            "  -h, --help              this text\n"
            "\n"
            "Before scoring and before adding ours, -p removes every header named X-TBert-* or the --header-name,\n"
            "and with -H spamassassin|all also X-Spam-Flag, X-Spam-Status and X-Spam-Level: filtering twice adds\n"
            "one set, and a forged verdict does not survive. (With -H tbert an upstream SpamAssassin's X-Spam-*\n"
            "lines are left alone.) Headers named X-Spam* and X-TBert-* are never evidence for the head.\n");
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

/* Which header names -p removes (ours): X-TBert-*, the configured name and, with the SpamAssassin lines,
 * X-Spam-Flag/Status/Level. */
typedef struct {
    const char *name; /* --header-name */
    bool sa;          /* we write the SpamAssassin lines */
} our_names;

static bool is_ours(const char *name, size_t len, const void *ctx) {
    const our_names *o = ctx;
    if (len > 8 && !strncasecmp(name, "X-TBert-", 8)) return true;
    if (len == strlen(o->name) && !strncasecmp(name, o->name, len)) return true;
    return o->sa && serve_is_our_header(name, len);
}

enum { H_TBERT = 1, H_SA = 2 };

/* Our header lines ("Name: value\r\n" each) for the verdict: serve's lines (src/serve_verdict.c), or the
 * short X-TBert-Spam line; the X-TBert-Spam name replaced by --header-name. malloc'd, NULL on OOM. */
static char *our_headers(const serve_result *r, int style, const char *name) {
    char sa[1024];
    if (!serve_our_headers(r, TBERT_VERSION, sa, sizeof sa)) return NULL;
    GString *o = g_string_new("");
    if (style & H_SA) { /* the first three lines of serve's */
        const char *tb = strstr(sa, "X-TBert-Spam:");
        g_string_append_len(o, sa, tb ? tb - sa : (gssize)strlen(sa));
    }
    if (style == H_TBERT) {
        g_string_append_printf(o, "%s: %s, score=%.3f\r\n", name,
                               r->symbol == SERVE_UNSURE ? "Unsure" : r->spam ? "Yes" : "No", r->p);
    } else if (style & H_TBERT) {
        const char *tb = strstr(sa, "X-TBert-Spam:");
        if (tb) g_string_append_printf(o, "%s%s", name, tb + strlen("X-TBert-Spam"));
    }
    return g_string_free(o, FALSE);
}

static void write_all(const char *p, size_t n) {
    fwrite(p, 1, n, stdout);
    fflush(stdout);
}

int cmd_filter(int argc, char **argv) {
    enum { O_MODEL = 256, O_MAXB, O_DEVICE, O_THREADS };
    static const struct option longopts[] = {
        {"head", required_argument, NULL, 'd'},         {"model", required_argument, NULL, O_MODEL},
        {"unsure", required_argument, NULL, 'u'},       {"passthrough", no_argument, NULL, 'p'},
        {"passthrough-exit0", no_argument, NULL, 'e'},  {"headers", required_argument, NULL, 'H'},
        {"header-name", required_argument, NULL, 'n'},  {"max-message-bytes", required_argument, NULL, O_MAXB},
        {"device", required_argument, NULL, O_DEVICE},  {"threads", required_argument, NULL, O_THREADS},
        {"help", no_argument, NULL, 'h'},               {NULL, 0, NULL, 0},
    };
    const char *head = NULL, *model = NULL, *device = NULL;
    bool pass = false, exit0 = false, have_unsure = false;
    int style = H_TBERT;
    our_names names = {"X-TBert-Spam", false};
    double lo = 0, hi = 0;
    size_t cap = (size_t)32 << 20;
    long v, threads = 0;
    int c;
    while ((c = cli_getopt(CMD, argc, argv, "d:u:peH:n:h", longopts)) != -1) {
        switch (c) {
        case 'd': head = optarg; break;
        case O_MODEL: model = optarg; break;
        case 'u': {
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
        case 'p': pass = true; break;
        case 'e': exit0 = true; break;
        case 'H':
            if (!strcmp(optarg, "tbert")) style = H_TBERT;
            else if (!strcmp(optarg, "spamassassin") || !strcmp(optarg, "sa")) style = H_SA;
            else if (!strcmp(optarg, "all")) style = H_TBERT | H_SA;
            else return fail("--headers expects tbert, spamassassin or all, got '%s'", optarg);
            break;
        case 'n': {
            bool ok = *optarg && strlen(optarg) < 64 && tbert_mail_is_verdict_header(optarg) &&
                      (!strncasecmp(optarg, "X-TBert-", 8) || !strncasecmp(optarg, "X-Spam-", 7));
            for (const char *q = optarg; ok && *q; q++) ok = *q > ' ' && *q < 127 && *q != ':';
            if (!ok)
                return fail("--header-name '%s': give a header name starting X-TBert- or X-Spam- (names that train, "
                            "score and serve never read as evidence)", optarg);
            names.name = optarg;
            break;
        }
        case O_MAXB:
            if (!cli_parse_int(CMD, "--max-message-bytes", optarg, 1024, 1L << 34, &v)) return F_ERROR;
            cap = (size_t)v;
            break;
        case O_DEVICE: device = optarg; break;
        case O_THREADS:
            if (!cli_parse_int(CMD, "--threads", optarg, 1, 1024, &threads)) return F_ERROR;
            break;
        case 'h': usage(stdout); return 0;
        default: return F_ERROR;
        }
    }
    if (optind < argc) return fail("unexpected argument '%s' (the message is read from stdin)", argv[optind]);
    if (exit0 && !pass) return fail("%s", "-e/--passthrough-exit0 goes with -p/--passthrough");
    names.sa = (style & H_SA) != 0;
    char *raw;
    size_t len;
    if (!read_stdin(&raw, &len)) return fail("%s", "cannot read the message from stdin");
    if (!head) {
        if (pass) write_all(raw, len);
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
    /* our header names (an earlier pass's, or forged) are never evidence: scored without them */
    size_t clen = 0;
    char *clean = NULL;
    if (!st) {
        clean = serve_rewrite_message_ex(raw, len < cap ? len : cap, "", false, is_ours, &names, &clen);
        if (!clean) st = tbert_fail(&err, TBERT_E_NOMEM, "stdin: out of memory");
    }
    /* only the first --max-message-bytes are classified (as in score); passthrough writes all of it */
    if (!st) st = tbert_message_parse(clean, clen, "stdin", &m, &err);
    free(clean);
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
    serve_result res;
    memset(&res, 0, sizeof res);
    if (!st) {
        const tbert_recipe *r = tbert_classifier_recipe(ctx.clf);
        if (r->n_labels != 2 || r->positive < 0) {
            st = tbert_fail(&err, TBERT_E_MISMATCH, "%s: filter needs a binary head (spam vs ham), this one has %d labels",
                            head, r->n_labels);
        } else {
            if (have_unsure) code = p >= hi ? F_SPAM : p < lo ? F_HAM : F_UNSURE;
            else code = li == r->positive ? F_SPAM : F_HAM;
            res.p = p;
            res.threshold = r->threshold;
            res.spam = code == F_SPAM;
            res.symbol = code == F_SPAM ? SERVE_SPAM : code == F_UNSURE ? SERVE_UNSURE : SERVE_HAM;
            res.score = serve_sa_score(p, r->threshold, res.spam);
            res.truncated = len > cap;
        }
    }
    if (!st && pass && style != H_TBERT) { /* serve's X-TBert-Spam line names the head */
        char path[4096], hex[65];
        snprintf(path, sizeof path, tbert_is_dir(head) ? "%s/best.safetensors" : "%s", head);
        st = tbert_sha256_file(path, hex, &err);
        if (!st) memcpy(res.head_id, hex, 16), res.head_id[16] = '\0';
    }
    if (pass) {
        char *ours = st ? NULL : our_headers(&res, style, names.name);
        size_t olen = 0;
        char *out = ours ? serve_rewrite_message_ex(raw, len, ours, false, is_ours, &names, &olen) : NULL;
        if (!st && !out) st = tbert_fail(&err, TBERT_E_NOMEM, "stdin: out of memory");
        if (out) write_all(out, olen);
        else write_all(raw, len); /* on an error the message goes back unchanged */
        free(out);
        g_free(ours);
    }
    if (st) {
        fprintf(stderr, "tbert: %s\n", err.msg);
        code = F_ERROR;
    } else if (pass && exit0) {
        code = 0;
    }
    tbert_mail_doc_free(&md);
    tbert_message_free(&m);
    if (ctx.model || ctx.clf) tbert_score_ctx_close(&ctx);
    free(raw);
    return code;
}
