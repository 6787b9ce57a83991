/* spamd_load: a load generator for spamd servers (tbert serve --spamd, SpamAssassin's spamd), as an MTA
 * drives them (Exim's spamd_address, a milter: no process per message). benchmarks/bench_serve.sh runs it.
 *
 * Direct mode (default): C client threads share the messages (read into memory first); each request is one
 * connection, as spamc makes it: "CHECK SPAMC/1.5\r\nContent-length: N\r\n\r\n" + the message, our write side
 * shut, the answer read to EOF. An answer counts when its first line is "SPAMD/1.x 0 EX_OK" and it has a
 * "Spam: True|False ; S / R" header line; anything else (refused, reset, another code, no Spam: line) is an
 * error. Verdicts: spam (True) and ham (False).
 * --exec CMD: each request is CMD (split at spaces, no quoting; the first word is looked up on PATH) started
 * with posix_spawnp, stdin from the message's file, stdout and stderr to /dev/null, timed from the spawn to
 * its exit (what the old bash + date loop timed, without its three extra processes per message). Exit statuses
 * 0, 1 and 2 are counted (spamc -c -x: 0 ham, 1 spam; bogofilter: 0 spam, 1 ham, 2 unsure); a higher status
 * or a signal is an error.
 *
 * Latency: per request (failed ones included), from connect (or spawn) to the end of the answer (or the exit),
 * CLOCK_MONOTONIC.
 * Throughput: requests / wall time from the first start to the last end. Percentiles: the sorted latencies'
 * element floor((n - 1) * q) (the same rule as bench_serve.sh's awk). client_cpu_s: this process's user+sys
 * CPU time, with its children's in --exec mode (the cost of the client itself on the cores it shares).
 *
 * Output (stdout), one line of key=value pairs:
 *   requests=N concurrency=C wall_s=W msg_per_s=X p50_ms=A p99_ms=B max_ms=M spam=S ham=H errors=E client_cpu_s=U
 * (--exec: exit0=.. exit1=.. exit2=.. in place of spam= and ham=). Exit status: 0 all requests answered,
 * 1 some failed (the first few are named on stderr), 2 bad usage or an unreadable file. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tbert/common.h"
#include "tbert/fileio.h"

extern char **environ;

#define MAX_CONCURRENCY 4096
#define MAX_REPORTED_ERRORS 5
#define MAX_ANSWER ((size_t)64 << 10) /* a CHECK answer is a few hundred bytes; more is an error */

typedef struct {
    /* what to send (read-only once the threads run) */
    const char *host, *port, *unix_path;
    char **argv; /* --exec: the command's words, NULL-terminated; NULL: direct mode */
    char **paths;
    char **msgs;
    size_t *lens;
    size_t n_files, n_requests;
    double timeout_s;
    /* shared progress */
    atomic_size_t next;
    double *lat_ms; /* per request */
    pthread_mutex_t mu; /* the counters below and the error lines */
    size_t spam, ham, exits[3], errors, reported;
} load;

typedef struct {
    load *L;
    struct addrinfo *ai; /* direct mode over TCP: resolved once */
} worker;

static double now_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void count_error(load *L, size_t i, const char *what) {
    pthread_mutex_lock(&L->mu);
    L->errors++;
    if (L->reported++ < MAX_REPORTED_ERRORS) fprintf(stderr, "spamd_load: %s: %s\n", L->paths[i % L->n_files], what);
    pthread_mutex_unlock(&L->mu);
}

static int connect_to(const load *L, const struct addrinfo *ai) {
    int fd;
    if (L->unix_path) {
        struct sockaddr_un un = {.sun_family = AF_UNIX};
        snprintf(un.sun_path, sizeof un.sun_path, "%s", L->unix_path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&un, sizeof un) != 0) {
            close(fd);
            fd = -1;
        }
    } else {
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
            close(fd);
            fd = -1;
        }
    }
    if (fd >= 0 && L->timeout_s > 0) {
        struct timeval tv = {(time_t)L->timeout_s, (suseconds_t)((L->timeout_s - (double)(time_t)L->timeout_s) * 1e6)};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    return fd;
}

static bool send_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* The verdict of a spamd answer: 1 spam, 0 ham, -1 not an EX_OK answer with a Spam: line (*why says why). */
static int parse_answer(const char *a, size_t n, const char **why) {
    int maj, min, code;
    char text[16];
    if (n == 0) {
        *why = "empty answer (connection closed)";
        return -1;
    }
    if (sscanf(a, "SPAMD/%d.%d %d %15s", &maj, &min, &code, text) != 4 || maj != 1) {
        *why = "answer does not start with SPAMD/1.x";
        return -1;
    }
    if (code != 0 || strcmp(text, "EX_OK")) {
        *why = "answer is not 0 EX_OK";
        return -1;
    }
    /* header lines up to the blank line: one of them "Spam: True|False ; S / R" */
    const char *p = memchr(a, '\n', n), *end = a + n;
    while (p && p + 1 < end) {
        const char *line = p + 1;
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        size_t len = (size_t)((eol ? eol : end) - line);
        if (len > 0 && line[len - 1] == '\r') len--;
        if (len == 0) break;
        if (len > 5 && !strncasecmp(line, "Spam:", 5)) {
            const char *v = line + 5;
            while (*v == ' ') v++;
            double s, r;
            char tf[8];
            if (sscanf(v, "%7[A-Za-z] ; %lf / %lf", tf, &s, &r) == 3) {
                if (!strcasecmp(tf, "True") || !strcasecmp(tf, "Yes")) return 1;
                if (!strcasecmp(tf, "False") || !strcasecmp(tf, "No")) return 0;
            }
            *why = "malformed Spam: line";
            return -1;
        }
        p = eol;
    }
    *why = "answer has no Spam: line";
    return -1;
}

/* One CHECK request on its own connection: 1 spam, 0 ham, -1 error (counted). buf: MAX_ANSWER + 1 bytes. */
static int direct_request(load *L, const struct addrinfo *ai, size_t i, char *buf) {
    size_t f = i % L->n_files;
    int fd = connect_to(L, ai);
    if (fd < 0) {
        char why[128];
        snprintf(why, sizeof why, "cannot connect: %s", strerror(errno));
        count_error(L, i, why);
        return -1;
    }
    char head[96];
    int hn = snprintf(head, sizeof head, "CHECK SPAMC/1.5\r\nContent-length: %zu\r\n\r\n", L->lens[f]);
    bool ok = send_all(fd, head, (size_t)hn) && send_all(fd, L->msgs[f], L->lens[f]);
    if (ok) shutdown(fd, SHUT_WR); /* as spamc: the whole request is sent */
    size_t got = 0;
    while (ok) {
        if (got == MAX_ANSWER) {
            close(fd);
            count_error(L, i, "answer over 64 KiB");
            return -1;
        }
        ssize_t r = recv(fd, buf + got, MAX_ANSWER - got, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) ok = false;
        if (r <= 0) break;
        got += (size_t)r;
    }
    int e = errno;
    close(fd);
    if (!ok) {
        char why[128];
        snprintf(why, sizeof why, "request failed: %s", strerror(e));
        count_error(L, i, why);
        return -1;
    }
    buf[got] = '\0';
    const char *why = NULL;
    int v = parse_answer(buf, got, &why);
    if (v < 0) count_error(L, i, why);
    return v;
}

/* --exec: CMD < file; its exit status 0..2, or -1 (error, counted). */
static int exec_request(load *L, size_t i) {
    const char *path = L->paths[i % L->n_files];
    posix_spawn_file_actions_t fa;
    if (posix_spawn_file_actions_init(&fa) != 0) {
        count_error(L, i, "out of memory");
        return -1;
    }
    posix_spawn_file_actions_addopen(&fa, 0, path, O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    int r = posix_spawnp(&pid, L->argv[0], &fa, NULL, L->argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (r != 0) {
        char why[160];
        snprintf(why, sizeof why, "cannot start %s: %s", L->argv[0], strerror(r));
        count_error(L, i, why);
        return -1;
    }
    int ws;
    while (waitpid(pid, &ws, 0) < 0)
        if (errno != EINTR) {
            count_error(L, i, "waitpid failed");
            return -1;
        }
    if (WIFEXITED(ws) && WEXITSTATUS(ws) <= 2) return WEXITSTATUS(ws);
    char why[160];
    if (WIFSIGNALED(ws)) snprintf(why, sizeof why, "%s died of signal %d", L->argv[0], WTERMSIG(ws));
    else snprintf(why, sizeof why, "%s exited with status %d", L->argv[0], WEXITSTATUS(ws));
    count_error(L, i, why);
    return -1;
}

static void *worker_main(void *arg) {
    worker *w = arg;
    load *L = w->L;
    char *buf = L->argv ? NULL : malloc(MAX_ANSWER + 1);
    if (!L->argv && !buf) {
        fprintf(stderr, "spamd_load: out of memory\n");
        return NULL; /* its requests stay with the other threads */
    }
    for (;;) {
        size_t i = atomic_fetch_add(&L->next, 1);
        if (i >= L->n_requests) break;
        double t0 = now_mono();
        int v = L->argv ? exec_request(L, i) : direct_request(L, w->ai, i, buf);
        L->lat_ms[i] = (now_mono() - t0) * 1e3;
        if (v < 0) continue;
        pthread_mutex_lock(&L->mu);
        if (L->argv) L->exits[v]++;
        else if (v) L->spam++;
        else L->ham++;
        pthread_mutex_unlock(&L->mu);
    }
    free(buf);
    return NULL;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: spamd_load [--port PORT [--host HOST] | --unix PATH | --exec CMD] [--concurrency C] [--requests N]\n"
            "                  [--timeout S] [--files LIST] [FILE...]\n"
            "Sends every message (FILE..., or the paths in LIST, one per line) to a spamd server as CHECK SPAMC/1.5,\n"
            "one connection per request, C requests at a time, and prints one line: requests, wall time, messages/s,\n"
            "latency p50/p99/max in ms, verdicts (spam, ham), errors, the client's own CPU seconds.\n"
            "  --host HOST        server address (default 127.0.0.1)\n"
            "  --port PORT        server TCP port\n"
            "  --unix PATH        server unix socket instead of TCP\n"
            "  --exec CMD         run CMD per message instead (stdin: the file; words split at spaces, no quoting),\n"
            "                     e.g. --exec 'spamc -x -c -p 783'; counts exit statuses 0, 1, 2; others are errors\n"
            "  --concurrency C    clients at a time (default 1, at most %d)\n"
            "  --requests N       requests in all (default: one per message; more cycle through the messages)\n"
            "  --timeout S        per read/write in direct mode, seconds (default 60)\n"
            "  --files LIST       a file with one message path per line ('-': standard input)\n"
            "Exit status: 0 every request answered, 1 some failed (the first %d are named on stderr), 2 bad usage.\n",
            MAX_CONCURRENCY, MAX_REPORTED_ERRORS);
}

static int bad_usage(const char *fmt, const char *what) {
    fprintf(stderr, "spamd_load: ");
    fprintf(stderr, fmt, what);
    fprintf(stderr, " (see spamd_load --help)\n");
    return 2;
}

static bool parse_size(const char *s, size_t lo, size_t hi, size_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || *end || errno || s[0] == '-' || v < lo || v > hi) return false;
    *out = (size_t)v;
    return true;
}

/* --files LIST: appends its lines (empty ones skipped) to paths. 0 ok, 2 unreadable (said on stderr). */
static int read_list(const char *list, char ***paths, size_t *n, size_t *cap) {
    FILE *f = strcmp(list, "-") ? fopen(list, "r") : stdin;
    if (!f) {
        fprintf(stderr, "spamd_load: %s: cannot open: %s\n", list, strerror(errno));
        return 2;
    }
    char *line = NULL;
    size_t lcap = 0;
    ssize_t k;
    int rc = 0;
    while ((k = getline(&line, &lcap, f)) >= 0) {
        while (k > 0 && (line[k - 1] == '\n' || line[k - 1] == '\r')) line[--k] = '\0';
        if (k == 0) continue;
        if (*n == *cap) {
            size_t nc = *cap ? *cap * 2 : 256;
            char **np = realloc(*paths, nc * sizeof *np);
            if (!np) {
                rc = 2;
                break;
            }
            *paths = np;
            *cap = nc;
        }
        if (!((*paths)[*n] = strdup(line))) {
            rc = 2;
            break;
        }
        (*n)++;
    }
    if (rc) fprintf(stderr, "spamd_load: %s: out of memory\n", list);
    else if (ferror(f)) {
        fprintf(stderr, "spamd_load: %s: read error\n", list);
        rc = 2;
    }
    free(line);
    if (f != stdin) fclose(f);
    return rc;
}

/* CMD into its words (at spaces and tabs). NULL on an empty command or out of memory. */
static char **split_words(char *cmd) {
    size_t n = 0, cap = 8;
    char **v = malloc(cap * sizeof *v);
    for (char *save = NULL, *t = strtok_r(cmd, " \t", &save); v && t; t = strtok_r(NULL, " \t", &save)) {
        if (n + 1 == cap) {
            char **nv = realloc(v, (cap *= 2) * sizeof *nv);
            if (!nv) {
                free(v);
                return NULL;
            }
            v = nv;
        }
        v[n++] = t;
    }
    if (v) v[n] = NULL;
    if (v && n == 0) {
        free(v);
        v = NULL;
    }
    return v;
}

int main(int argc, char **argv) {
    load L = {.host = "127.0.0.1", .timeout_s = 60};
    size_t conc = 1, n_req = 0, cap = 0;
    char *exec_cmd = NULL;
    const char *list = NULL;
    enum { O_HOST = 1, O_PORT, O_UNIX, O_EXEC, O_CONC, O_REQ, O_TIMEOUT, O_FILES, O_HELP };
    static const struct option opts[] = {{"host", required_argument, NULL, O_HOST},
                                         {"port", required_argument, NULL, O_PORT},
                                         {"unix", required_argument, NULL, O_UNIX},
                                         {"exec", required_argument, NULL, O_EXEC},
                                         {"concurrency", required_argument, NULL, O_CONC},
                                         {"requests", required_argument, NULL, O_REQ},
                                         {"timeout", required_argument, NULL, O_TIMEOUT},
                                         {"files", required_argument, NULL, O_FILES},
                                         {"help", no_argument, NULL, O_HELP},
                                         {NULL, 0, NULL, 0}};
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case O_HOST: L.host = optarg; break;
        case O_PORT: {
            size_t p;
            if (!parse_size(optarg, 1, 65535, &p)) return bad_usage("--port expects 1..65535, got '%s'", optarg);
            L.port = optarg;
            break;
        }
        case O_UNIX: L.unix_path = optarg; break;
        case O_EXEC: exec_cmd = optarg; break;
        case O_CONC:
            if (!parse_size(optarg, 1, MAX_CONCURRENCY, &conc)) return bad_usage("--concurrency expects 1..4096, got '%s'", optarg);
            break;
        case O_REQ:
            if (!parse_size(optarg, 1, (size_t)1 << 30, &n_req)) return bad_usage("--requests expects a positive count, got '%s'", optarg);
            break;
        case O_TIMEOUT: {
            char *end;
            L.timeout_s = strtod(optarg, &end);
            if (end == optarg || *end || !(L.timeout_s > 0 && L.timeout_s <= 86400))
                return bad_usage("--timeout expects seconds in (0, 86400], got '%s'", optarg);
            break;
        }
        case O_FILES: list = optarg; break;
        case O_HELP: usage(stdout); return 0;
        default:
            return bad_usage("unknown option or missing argument '%s'", argv[optind - 1]);
        }
    }
    int modes = (L.port != NULL) + (L.unix_path != NULL) + (exec_cmd != NULL);
    if (modes != 1) return bad_usage("%s", "give exactly one of --port, --unix and --exec");
    if (L.unix_path && strlen(L.unix_path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return bad_usage("--unix path too long: '%s'", L.unix_path);
    if (exec_cmd && !(L.argv = split_words(exec_cmd))) return bad_usage("--exec expects a command, got '%s'", exec_cmd);
    int rc = list ? read_list(list, &L.paths, &L.n_files, &cap) : 0;
    for (int i = optind; i < argc && !rc; i++) {
        if (L.n_files == cap) {
            size_t nc = cap ? cap * 2 : 256;
            char **np = realloc(L.paths, nc * sizeof *np);
            if (!np) {
                fprintf(stderr, "spamd_load: out of memory\n");
                rc = 2;
                break;
            }
            L.paths = np;
            cap = nc;
        }
        if (!(L.paths[L.n_files] = strdup(argv[i]))) {
            fprintf(stderr, "spamd_load: out of memory\n");
            rc = 2;
            break;
        }
        L.n_files++;
    }
    if (!rc && L.n_files == 0) rc = bad_usage("%s", "no messages (give FILE... or --files LIST)");
    L.n_requests = n_req ? n_req : L.n_files;

    /* every message in memory before the clock starts (direct mode); --exec only checks they can be read */
    if (!rc) {
        L.msgs = calloc(L.n_files, sizeof *L.msgs);
        L.lens = calloc(L.n_files, sizeof *L.lens);
        L.lat_ms = calloc(L.n_requests, sizeof *L.lat_ms);
        if (!L.msgs || !L.lens || !L.lat_ms) {
            fprintf(stderr, "spamd_load: out of memory for %zu messages\n", L.n_files);
            rc = 2;
        }
    }
    for (size_t i = 0; i < L.n_files && !rc; i++) {
        tbert_error err;
        if (L.argv) {
            if (access(L.paths[i], R_OK) != 0) {
                fprintf(stderr, "spamd_load: %s: cannot read: %s\n", L.paths[i], strerror(errno));
                rc = 2;
            }
        } else if (tbert_read_file(L.paths[i], 0, &L.msgs[i], &L.lens[i], &err)) {
            fprintf(stderr, "spamd_load: %s\n", err.msg);
            rc = 2;
        }
    }
    struct addrinfo *ai = NULL;
    if (!rc && L.port) {
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
        int g = getaddrinfo(L.host, L.port, &hints, &ai);
        if (g != 0 || !ai) {
            fprintf(stderr, "spamd_load: %s:%s: cannot resolve: %s\n", L.host, L.port, gai_strerror(g));
            rc = 2;
        }
    }
    worker *ws = NULL;
    pthread_t *tid = NULL;
    size_t started = 0;
    double wall = 0;
    if (!rc) {
        if (conc > L.n_requests) conc = L.n_requests;
        ws = calloc(conc, sizeof *ws);
        tid = calloc(conc, sizeof *tid);
        if (!ws || !tid) {
            fprintf(stderr, "spamd_load: out of memory for %zu clients\n", conc);
            rc = 2;
        }
    }
    if (!rc) {
        pthread_mutex_init(&L.mu, NULL);
        atomic_init(&L.next, 0);
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, (size_t)256 << 10);
        double t0 = now_mono();
        for (; started < conc; started++) {
            ws[started] = (worker){&L, ai};
            if (pthread_create(&tid[started], &attr, worker_main, &ws[started]) != 0) break;
        }
        pthread_attr_destroy(&attr);
        if (started == 0) worker_main(&(worker){&L, ai}); /* no thread at all: run them here */
        for (size_t t = 0; t < started; t++) pthread_join(tid[t], NULL);
        wall = now_mono() - t0;
        if (started < conc) fprintf(stderr, "spamd_load: started %zu of %zu client threads\n", started, conc);
        pthread_mutex_destroy(&L.mu);
    }
    if (!rc) {
        size_t done = L.argv ? L.exits[0] + L.exits[1] + L.exits[2] : L.spam + L.ham;
        if (done + L.errors != L.n_requests) { /* a thread that could not start its buffer left requests undone */
            L.errors = L.n_requests - done;
        }
        qsort(L.lat_ms, L.n_requests, sizeof *L.lat_ms, cmp_double);
        size_t n = L.n_requests;
        struct rusage self, kids;
        getrusage(RUSAGE_SELF, &self);
        getrusage(RUSAGE_CHILDREN, &kids);
        double cpu = (double)self.ru_utime.tv_sec + self.ru_utime.tv_usec * 1e-6 + (double)self.ru_stime.tv_sec +
                     self.ru_stime.tv_usec * 1e-6 + (double)kids.ru_utime.tv_sec + kids.ru_utime.tv_usec * 1e-6 +
                     (double)kids.ru_stime.tv_sec + kids.ru_stime.tv_usec * 1e-6;
        printf("requests=%zu concurrency=%zu wall_s=%.6f msg_per_s=%.1f p50_ms=%.1f p99_ms=%.1f max_ms=%.1f ", n, conc, wall,
               (double)n / wall, L.lat_ms[(size_t)((double)(n - 1) * 0.50)], L.lat_ms[(size_t)((double)(n - 1) * 0.99)],
               L.lat_ms[n - 1]);
        if (L.argv) printf("exit0=%zu exit1=%zu exit2=%zu", L.exits[0], L.exits[1], L.exits[2]);
        else printf("spam=%zu ham=%zu", L.spam, L.ham);
        printf(" errors=%zu client_cpu_s=%.2f\n", L.errors, cpu);
        if (fflush(stdout) != 0) {
            fprintf(stderr, "spamd_load: standard output: %s\n", strerror(errno));
            rc = 2;
        } else if (L.errors) {
            rc = 1;
        }
    }
    if (ai) freeaddrinfo(ai);
    for (size_t i = 0; i < L.n_files; i++) {
        free(L.paths[i]);
        if (L.msgs) free(L.msgs[i]);
    }
    free(L.paths);
    free(L.msgs);
    free(L.lens);
    free(L.lat_ms);
    free(L.argv);
    free(ws);
    free(tid);
    return rc;
}
