/* tbert tokenize: one text per stdin line (LF ends a line, CR is text) -> one line of token ids
 * ([CLS] ... [SEP], truncated to --max-len, unpadded), in input order. Lines are tokenized in chunks by
 * --threads threads, each into its own output buffer, written in order. */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "tbert/fileio.h"
#include "tbert/tokenizer.h"

#define CHUNK_BYTES ((size_t)4 << 20)

static void usage(FILE *f) {
    fprintf(f,
            "usage: tbert tokenize (--vocab PATH | --model NAME|DIR) [--max-len N] [--threads N] < texts > ids\n\n"
            "Reads one text per line from stdin (LF ends a line; a CR inside a line is text; bytes that are not\n"
            "valid UTF-8 are read as U+FFFD, as Python's errors=\"replace\" does) and writes, per line, the WordPiece\n"
            "token ids including [CLS] and [SEP], space-separated, truncated to --max-len, in input order.\n"
            "Output is identical to Hugging Face `tokenizers` (BertWordPiece).\n\n"
            "options:\n"
            "  --vocab PATH      vocab.txt (uncased BERT normalization: lowercase, strip accents)\n"
            "  --model NAME|DIR  a model folder (vocab.txt + tokenizer_config.json); NAME resolves to\n"
            "                    $TBERT_CACHE/models/NAME (default when neither is given: minilm)\n"
            "  --max-len N       tokens per line including [CLS] and [SEP], >= 2 (default 128)\n"
            "  --threads N       worker threads (default: all cores)\n"
            "  --help            this text\n");
}

typedef struct {
    char *p;
    size_t n, cap;
    bool oom;
} outbuf;

static bool ob_reserve(outbuf *o, size_t extra) {
    if (o->n + extra <= o->cap) return true;
    size_t cap = o->cap ? o->cap : 1 << 16;
    while (cap < o->n + extra) cap *= 2;
    char *p = realloc(o->p, cap);
    if (!p) return (o->oom = true), false;
    o->p = p;
    o->cap = cap;
    return true;
}

static char *put_int(char *d, int32_t x) {
    char tmp[12];
    int k = 0;
    uint32_t u = x < 0 ? (uint32_t)(-(int64_t)x) : (uint32_t)x;
    if (x < 0) *d++ = '-';
    do {
        tmp[k++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    while (k) *d++ = tmp[--k];
    return d;
}

typedef struct {
    const tbert_vocab *v;
    const char *buf;
    const size_t *starts; /* line i: buf[starts[i] .. starts[i+1]-1), the byte before starts[i+1] is LF (or end) */
    size_t a, b;
    int max_len;
    outbuf out;
    tbert_error err;
    tbert_status status;
} tok_job;

static void *tok_worker(void *arg) {
    tok_job *j = arg;
    tbert_i32vec ids = {0};
    j->status = TBERT_OK;
    for (size_t i = j->a; i < j->b; i++) {
        size_t s = j->starts[i], e = j->starts[i + 1] - 1; /* drop the LF */
        j->status = tbert_encode(j->v, j->buf + s, e - s, j->max_len, &ids, &j->err);
        if (j->status) break;
        if (!ob_reserve(&j->out, ids.n * 12 + 1)) {
            j->status = tbert_fail(&j->err, TBERT_E_NOMEM, "out of memory");
            break;
        }
        char *d = j->out.p + j->out.n;
        for (size_t k = 0; k < ids.n; k++) {
            if (k) *d++ = ' ';
            d = put_int(d, ids.v[k]);
        }
        *d++ = '\n';
        j->out.n = (size_t)(d - j->out.p);
    }
    tbert_i32vec_free(&ids);
    return NULL;
}

static bool write_all(const char *p, size_t n) {
    while (n) {
        ssize_t w = write(STDOUT_FILENO, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* Tokenizes the complete lines of buf[0..len) (each ending with LF, the last one may be the input's
 * unterminated final line, which the caller terminated) and writes their ids. */
static int process_lines(const tbert_vocab *v, const char *buf, size_t len, int max_len, int threads, tok_job *jobs,
                         size_t **starts, size_t *starts_cap) {
    size_t nl = 0;
    for (const char *p = buf; (p = memchr(p, '\n', (size_t)(buf + len - p))); p++) nl++;
    if (nl + 1 > *starts_cap) {
        size_t *s = tbert_realloc_array(*starts, nl + 1, sizeof *s);
        if (!s) return fprintf(stderr, "tbert tokenize: out of memory\n"), CLI_USAGE;
        *starts = s;
        *starts_cap = nl + 1;
    }
    size_t k = 0;
    (*starts)[k++] = 0;
    for (const char *p = buf; (p = memchr(p, '\n', (size_t)(buf + len - p))); p++) (*starts)[k++] = (size_t)(p - buf) + 1;
    int nt = threads;
    if ((size_t)nt > nl) nt = nl ? (int)nl : 1;
    pthread_t tids[256];
    bool started[256] = {false};
    for (int t = 0; t < nt; t++) {
        tok_job *j = &jobs[t];
        j->v = v;
        j->buf = buf;
        j->starts = *starts;
        j->a = nl * (size_t)t / (size_t)nt;
        j->b = nl * (size_t)(t + 1) / (size_t)nt;
        j->max_len = max_len;
        j->out.n = 0;
        if (t > 0 && pthread_create(&tids[t], NULL, tok_worker, j) == 0) started[t] = true;
    }
    for (int t = 0; t < nt; t++)
        if (!started[t]) tok_worker(&jobs[t]);
    for (int t = 0; t < nt; t++)
        if (started[t]) pthread_join(tids[t], NULL);
    for (int t = 0; t < nt; t++) {
        if (jobs[t].status) return cli_report(&jobs[t].err);
        if (!write_all(jobs[t].out.p, jobs[t].out.n)) {
            fprintf(stderr, "tbert tokenize: writing to stdout failed: %s\n", strerror(errno));
            return CLI_USAGE;
        }
    }
    return CLI_OK;
}

/* true when stdin has bytes that read() returns at once: keep filling the chunk. A producer that waits for
 * our answer (a co-process writing one line at a time) gets it at once. */
static bool more_input_ready(void) {
    struct pollfd p = {.fd = STDIN_FILENO, .events = POLLIN};
    return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

static int run_stream(const tbert_vocab *v, int max_len, int threads) {
    size_t cap = CHUNK_BYTES, have = 0;
    char *buf = malloc(cap + 1);
    tok_job *jobs = calloc((size_t)threads, sizeof *jobs);
    size_t *starts = NULL, starts_cap = 0;
    int rc = CLI_OK;
    if (!buf || !jobs) {
        rc = (fprintf(stderr, "tbert tokenize: out of memory\n"), CLI_USAGE);
        goto done;
    }
    for (bool eof = false; !eof && rc == CLI_OK;) {
        if (have == cap) { /* one line longer than the buffer: grow it */
            char *nb = cap < SIZE_MAX / 4 ? realloc(buf, cap * 2 + 1) : NULL;
            if (!nb) {
                rc = (fprintf(stderr, "tbert tokenize: out of memory for a line of %zu bytes\n", have), CLI_USAGE);
                break;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t r = read(STDIN_FILENO, buf + have, cap - have);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            rc = (fprintf(stderr, "tbert tokenize: reading stdin failed: %s\n", strerror(errno)), CLI_USAGE);
            break;
        }
        size_t old = have;
        have += (size_t)r;
        if (r == 0) {
            eof = true;
            if (have == 0) break;
            if (buf[have - 1] != '\n') buf[have++] = '\n'; /* the final unterminated line (cap+1 allocated) */
        } else if (have < cap && (!memchr(buf + old, '\n', (size_t)r) || more_input_ready())) {
            continue; /* no complete line yet, or more input already waiting: make bigger chunks */
        }
        size_t full = have;
        while (full > 0 && buf[full - 1] != '\n') full--;
        if (full == 0) continue;
        rc = process_lines(v, buf, full, max_len, threads, jobs, &starts, &starts_cap);
        memmove(buf, buf + full, have - full);
        have -= full;
    }
done:
    if (jobs)
        for (int t = 0; t < threads; t++) free(jobs[t].out.p);
    free(jobs);
    free(starts);
    free(buf);
    return rc;
}

int cmd_tokenize(int argc, char **argv) {
    static const struct option opts[] = {{"vocab", required_argument, NULL, 'v'},   {"model", required_argument, NULL, 'm'},
                                         {"max-len", required_argument, NULL, 'l'}, {"threads", required_argument, NULL, 't'},
                                         {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0}};
    const char *vocab_path = NULL, *model = NULL;
    long max_len = 128, threads = tbert_num_cores();
    int c;
    while ((c = cli_getopt("tokenize", argc, argv, "h", opts)) != -1) {
        switch (c) {
        case 'v': vocab_path = optarg; break;
        case 'm': model = optarg; break;
        case 'l':
            if (!cli_parse_int("tokenize", "--max-len", optarg, 2, 1 << 20, &max_len)) return CLI_USAGE;
            break;
        case 't':
            if (!cli_parse_int("tokenize", "--threads", optarg, 1, 256, &threads)) return CLI_USAGE;
            break;
        case 'h': usage(stdout); return CLI_OK;
        default: return CLI_USAGE;
        }
    }
    if (optind < argc) return cli_usage_error("tokenize", "unexpected argument '%s'", argv[optind]);
    if (vocab_path && model) return cli_usage_error("tokenize", "give --vocab or --model, not both");
    tbert_error err;
    tbert_vocab *v = NULL;
    tbert_status s;
    if (vocab_path) {
        s = tbert_vocab_load(vocab_path, NULL, &v, &err);
    } else {
        char dir[PATH_MAX];
        s = tbert_resolve_model_dir(model, dir, sizeof dir, &err);
        if (!s) s = tbert_vocab_load_model_dir(dir, &v, &err);
    }
    if (s) return cli_report(&err);
    signal(SIGPIPE, SIG_IGN); /* a closed stdout is a write error (exit 2), not a death by signal */
    int rc = run_stream(v, (int)max_len, (int)threads);
    tbert_vocab_free(v);
    return rc;
}
