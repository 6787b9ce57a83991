/* tbert serve: the model and head stay in memory and answer spamc (spamd protocol), MTAs (milter) and HTTP.
 * The service itself is src/serve*.c; this file is its command line. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "serve.h"

static const char *const CMD = "serve";

static void usage(FILE *f) {
    fprintf(f,
            "usage: tbert serve --head DIR [--model M] [--spamd ADDR] [--milter ADDR] [--http ADDR] [options]\n"
            "\n"
            "Loads the model and the head once and answers mail servers until SIGTERM. At least one listener.\n"
            "ADDR is HOST:PORT (PORT 0 picks a free port; ':PORT' means 127.0.0.1) or unix:PATH. Each listener\n"
            "logs 'listening on PROTOCOL ADDR' on stderr once it is ready (with the port it got).\n"
            "\n"
            "listeners:\n"
            "  --spamd ADDR            SpamAssassin's spamd protocol (spamc, Exim spamd_address): CHECK, SYMBOLS,\n"
            "                          REPORT, REPORT_IFSPAM, PROCESS, HEADERS, PING, SKIP, TELL. spamc -u USER is\n"
            "                          accepted and ignored: one global head answers every user\n"
            "  --milter ADDR           milter for Postfix/Sendmail (a child process owns libmilter; unix:PATH, or\n"
            "                          a loopback HOST:PORT with a fixed port: libmilter cannot filter peers)\n"
            "  --http ADDR             HTTP/JSON: POST /score, POST /learn?class=spam|ham, GET /health, GET /metrics\n"
            "\n"
            "model:\n"
            "  --head DIR              head checkpoint folder (required; a binary spam/ham head)\n"
            "  --model NAME|DIR        model name in $TBERT_CACHE/models or a model folder (default minilm)\n"
            "  --device D              auto|cpu|cuda|cuda:N (default auto)\n"
            "  --threads N             encoder threads (default: all cores)\n"
            "  --batch N               most messages per encoder call (default 32)\n"
            "  --batch-window MS       how long a batch waits for requests still being read (default 5; it never\n"
            "                          waits when every request in flight is already queued)\n"
            "\n"
            "verdicts (scores in SpamAssassin's terms: required 5.0, score = 5 + logit(p) - logit(threshold),\n"
            "clamped to +-50, so score >= 5 exactly when the head says spam):\n"
            "  --unsure LOW,HIGH       SYMBOLS/X-Spam-Status say TBERT_UNSURE when LOW <= p < HIGH\n"
            "  --milter-reject-above P milter: reject (550 5.7.1) when p > P (default: never)\n"
            "  --milter-quarantine-above P  milter: quarantine (Postfix: hold queue) when p > P (default: never)\n"
            "\n"
            "limits and access:\n"
            "  --allow CIDR            also accept TCP peers from CIDR (repeatable, or comma-separated); loopback and\n"
            "                          unix sockets are always accepted, everyone else is refused\n"
            "  --max-connections N     open connections per listener (default 256); beyond: a protocol error\n"
            "  --max-message BYTES     bytes of a message that are scored (default 512000, spamc's -s); a larger\n"
            "                          message is scored on its first BYTES and says so (truncated)\n"
            "  --timeout S             read/write timeout per connection in seconds (default 30); a whole request\n"
            "                          must arrive within 4 x S\n"
            "  --socket-mode OCTAL     mode of unix sockets (default 660)\n"
            "  --socket-owner USER[:GROUP]  owner of unix sockets (also USER: for the login group, :GROUP);\n"
            "                          e.g. :postfix with --socket-mode 660 lets Postfix's smtpd connect\n"
            "  --syslog                log to syslog (facility mail) too\n"
            "  --user NAME             once the listeners are bound, run as NAME (the head folder must be\n"
            "                          readable by NAME for reloads, writable for learned.jsonl)\n"
            "\n"
            "signals: SIGHUP reloads the model and the head (new connections are never dropped; requests in\n"
            "flight finish on the old head); SIGTERM or SIGINT stops accepting, drains and exits 0.\n"
            "Learning: spamc -L spam|ham (TELL) and POST /learn append the message to DIR/learned.jsonl.\n"
            "  --retrain-after S       once learned.jsonl has had no new correction for S seconds, retrain in the\n"
            "                          background (`tbert learn --retrain --warm` as a child process; the new head\n"
            "                          is picked up as on SIGHUP); default 60, 0 = never (retrain yourself)\n"
            "Logs: one line per message (verdict, score, p, milliseconds; never subjects or addresses).\n"
            "See docs/mail.md.\n");
}

static bool parse_allow(serve_opts *o, const char *arg) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", arg);
    char *save = NULL;
    for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (o->n_allow >= SERVE_MAX_ALLOW) {
            cli_usage_error(CMD, "--allow: at most %d entries", SERVE_MAX_ALLOW);
            return false;
        }
        if (!serve_parse_cidr(t, &o->allow[o->n_allow])) {
            cli_usage_error(CMD, "--allow expects an address or CIDR (10.0.0.0/8, 2001:db8::/32), got '%s'", t);
            return false;
        }
        o->n_allow++;
    }
    return true;
}

int cmd_serve(int argc, char **argv) {
    enum {
        O_HEAD = 256, O_MODEL, O_DEVICE, O_THREADS, O_SPAMD, O_MILTER, O_HTTP, O_ALLOW, O_MAXCONN, O_MAXMSG, O_TIMEOUT,
        O_BATCH, O_WINDOW, O_UNSURE, O_REJECT, O_QUAR, O_SOCKMODE, O_SOCKOWNER, O_SYSLOG, O_USER, O_HELP, O_CHILD,
        O_UPSTREAM, O_RETRAIN_AFTER
    };
    static const struct option longopts[] = {
        {"head", required_argument, NULL, O_HEAD},
        {"model", required_argument, NULL, O_MODEL},
        {"device", required_argument, NULL, O_DEVICE},
        {"threads", required_argument, NULL, O_THREADS},
        {"spamd", required_argument, NULL, O_SPAMD},
        {"milter", required_argument, NULL, O_MILTER},
        {"http", required_argument, NULL, O_HTTP},
        {"allow", required_argument, NULL, O_ALLOW},
        {"max-connections", required_argument, NULL, O_MAXCONN},
        {"max-message", required_argument, NULL, O_MAXMSG},
        {"timeout", required_argument, NULL, O_TIMEOUT},
        {"batch", required_argument, NULL, O_BATCH},
        {"batch-window", required_argument, NULL, O_WINDOW},
        {"unsure", required_argument, NULL, O_UNSURE},
        {"milter-reject-above", required_argument, NULL, O_REJECT},
        {"milter-quarantine-above", required_argument, NULL, O_QUAR},
        {"socket-mode", required_argument, NULL, O_SOCKMODE},
        {"socket-owner", required_argument, NULL, O_SOCKOWNER},
        {"syslog", no_argument, NULL, O_SYSLOG},
        {"user", required_argument, NULL, O_USER},
        {"help", no_argument, NULL, O_HELP},
        {"retrain-after", required_argument, NULL, O_RETRAIN_AFTER},
        {"milter-child", required_argument, NULL, O_CHILD},       /* internal: serve.c starts it */
        {"milter-upstream", required_argument, NULL, O_UPSTREAM}, /* internal */
        {NULL, 0, NULL, 0},
    };
    serve_opts o;
    memset(&o, 0, sizeof o);
    o.batch = 32;
    o.window_ms = 5;
    o.max_connections = SERVE_DEFAULT_MAX_CONNECTIONS;
    o.max_message = SERVE_DEFAULT_MAX_MESSAGE;
    o.timeout_s = SERVE_DEFAULT_TIMEOUT;
    o.reject_above = o.quarantine_above = 2; /* off */
    o.socket_mode = 0660;
    o.retrain_after = 60;
    const char *child = NULL, *upstream = NULL;
    long v;
    double d;
    int c;
    while ((c = cli_getopt(CMD, argc, argv, "", longopts)) != -1) {
        switch (c) {
        case O_HEAD: o.head = optarg; break;
        case O_MODEL: o.model = optarg; break;
        case O_DEVICE: o.device = optarg; break;
        case O_THREADS:
            if (!cli_parse_int(CMD, "--threads", optarg, 0, 4096, &v)) return CLI_USAGE;
            o.threads = (int)v;
            break;
        case O_SPAMD: o.spamd = optarg; break;
        case O_MILTER: o.milter = optarg; break;
        case O_HTTP: o.http = optarg; break;
        case O_ALLOW:
            if (!parse_allow(&o, optarg)) return CLI_USAGE;
            break;
        case O_MAXCONN:
            if (!cli_parse_int(CMD, "--max-connections", optarg, 1, 100000, &v)) return CLI_USAGE;
            o.max_connections = (int)v;
            break;
        case O_MAXMSG:
            if (!cli_parse_int(CMD, "--max-message", optarg, 1024, 1L << 30, &v)) return CLI_USAGE;
            o.max_message = (size_t)v;
            break;
        case O_TIMEOUT:
            if (!cli_parse_int(CMD, "--timeout", optarg, 1, 3600, &v)) return CLI_USAGE;
            o.timeout_s = (int)v;
            break;
        case O_BATCH:
            if (!cli_parse_int(CMD, "--batch", optarg, 1, 1024, &v)) return CLI_USAGE;
            o.batch = (int)v;
            break;
        case O_WINDOW:
            if (!cli_parse_double(CMD, "--batch-window", optarg, 0, 1000, &o.window_ms)) return CLI_USAGE;
            break;
        case O_UNSURE: {
            char *end;
            o.unsure_lo = strtod(optarg, &end);
            if (end == optarg || *end != ',') return cli_usage_error(CMD, "--unsure expects LOW,HIGH (e.g. 0.3,0.7), got '%s'", optarg);
            const char *q = end + 1;
            o.unsure_hi = strtod(q, &end);
            if (end == q || *end || !(o.unsure_lo >= 0 && o.unsure_lo <= o.unsure_hi && o.unsure_hi <= 1))
                return cli_usage_error(CMD, "--unsure expects LOW,HIGH with 0 <= LOW <= HIGH <= 1, got '%s'", optarg);
            o.have_unsure = true;
            break;
        }
        case O_REJECT:
            if (!cli_parse_double(CMD, "--milter-reject-above", optarg, 0, 2, &d)) return CLI_USAGE;
            o.reject_above = d;
            break;
        case O_QUAR:
            if (!cli_parse_double(CMD, "--milter-quarantine-above", optarg, 0, 2, &d)) return CLI_USAGE;
            o.quarantine_above = d;
            break;
        case O_SOCKMODE: {
            char *end;
            long m = strtol(optarg, &end, 8);
            if (end == optarg || *end || m < 0 || m > 0777) return cli_usage_error(CMD, "--socket-mode expects an octal mode like 660, got '%s'", optarg);
            o.socket_mode = (int)m;
            break;
        }
        case O_SOCKOWNER: {
            uid_t u;
            gid_t g;
            tbert_error e;
            if (serve_parse_owner(optarg, &u, &g, &e) != TBERT_OK)
                return cli_usage_error(CMD, "%s", e.msg + (strncmp(e.msg, "serve: ", 7) ? 0 : 7));
            o.socket_owner = optarg;
            break;
        }
        case O_SYSLOG: o.syslog = true; break;
        case O_USER: o.user = optarg; break;
        case O_HELP: usage(stdout); return CLI_OK;
        case O_RETRAIN_AFTER:
            if (!cli_parse_double(CMD, "--retrain-after", optarg, 0, 86400 * 7, &o.retrain_after)) return CLI_USAGE;
            break;
        case O_CHILD: child = optarg; break;
        case O_UPSTREAM: upstream = optarg; break;
        default: return CLI_USAGE;
        }
    }
    if (optind < argc) return cli_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
    if (child) {
        if (!upstream) return cli_usage_error(CMD, "--milter-child needs --milter-upstream");
        return serve_milter_child(child, upstream, o.reject_above, o.quarantine_above, o.timeout_s, o.socket_mode,
                                  o.socket_owner, o.max_message);
    }
    if (!o.head) return cli_usage_error(CMD, "--head CKPT_DIR is required (see 'tbert serve --help')");
    if (!o.spamd && !o.milter && !o.http) return cli_usage_error(CMD, "give at least one listener: --spamd, --milter or --http");
    if (o.milter && strncmp(o.milter, "unix:", 5)) {
        const char *colon = strrchr(o.milter, ':');
        if (!colon || !colon[1] || !strcmp(colon + 1, "0"))
            return cli_usage_error(CMD, "--milter %s: needs HOST:PORT with a fixed port, or unix:PATH", o.milter);
        size_t hl = (size_t)(colon - o.milter);
        bool loop = hl == 0 || (hl == 9 && !strncmp(o.milter, "localhost", 9)) || !strncmp(o.milter, "127.", 4) ||
                    (hl == 5 && !strncmp(o.milter, "[::1]", 5));
        if (!loop)
            return cli_usage_error(CMD, "--milter %s: libmilter accepts any peer, so a TCP milter listens on loopback only "
                                        "(127.0.0.1:PORT, [::1]:PORT) or use unix:PATH", o.milter);
    }
    tbert_error err;
    if (serve_run(&o, &err) != TBERT_OK) return cli_report(&err);
    return CLI_OK;
}
