/* tbert predict: one text per line on stdin -> "label<TAB>probability" per line on stdout. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "head_common.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: tbert predict [--model NAME|DIR] --head CKPT_DIR < texts\n\n"
            "Reads one text per line on stdin and writes one line per text: the predicted label, a TAB, and the\n"
            "probability (binary heads: P(positive class); multi-class: the probability of the predicted label).\n"
            "Lines are processed in batches and flushed batch by batch (line by line on a terminal).\n\n"
            "  --model NAME|DIR   encoder (default minilm)\n"
            "  --head CKPT_DIR    folder with best.safetensors\n"
            "  --batch N          lines per batch (default 64)\n"
            "  --device D  --threads N\n");
}

enum {
    O_MODEL = CLI_HEAD_O_MODEL, O_HEAD = CLI_HEAD_O_HEAD, O_DEVICE = CLI_HEAD_O_DEVICE, O_THREADS = CLI_HEAD_O_THREADS,
    O_BATCH = CLI_HEAD_O_OWN, O_HELP
};
static const struct option longopts[] = {{"model", required_argument, 0, O_MODEL}, {"head", required_argument, 0, O_HEAD},
                                         {"batch", required_argument, 0, O_BATCH}, {"device", required_argument, 0, O_DEVICE},
                                         {"threads", required_argument, 0, O_THREADS}, {"help", no_argument, 0, O_HELP},
                                         {0, 0, 0, 0}};

static int flush_batch(cli_head_ctx *ctx, char **lines, size_t *lens, int n, float *X, float *p, int *k) {
    const tbert_recipe *r = tbert_classifier_recipe(ctx->clf);
    tbert_doc docs[1024];
    for (int i = 0; i < n; i++) docs[i] = (tbert_doc){lines[i], lens[i], NULL};
    tbert_error err;
    if (tbert_featurize(ctx->fz, n, docs, X, NULL, &err) || tbert_classifier_predict(ctx->clf, n, X, p, k, &err))
        return cli_report(&err);
    for (int i = 0; i < n; i++) printf("%s\t%.6f\n", r->labels[k[i]], (double)p[i]);
    if (fflush(stdout) != 0) {
        fprintf(stderr, "tbert: writing to stdout failed\n");
        return CLI_USAGE;
    }
    return CLI_OK;
}

int cmd_predict(int argc, char **argv) {
    const char *cmd = "predict";
    cli_head_args ha = {.dev = {TBERT_DEVICE_AUTO, 0}};
    long batch = 64;
    int oc, c;
    tbert_error err;
    while ((c = cli_getopt(cmd, argc, argv, "h", longopts)) != -1) {
        if (cli_head_getopt(cmd, c, &ha, &oc)) {
            if (oc) return oc;
            continue;
        }
        switch (c) {
        case 'h':
        case O_HELP: usage(stdout); return CLI_OK;
        case O_BATCH: if (!cli_parse_int(cmd, "--batch", optarg, 1, 1024, &batch)) return CLI_USAGE; break;
        default: return CLI_USAGE;
        }
    }
    if ((oc = cli_head_args_check(cmd, argc, argv, &ha))) return oc;
    cli_head_ctx ctx;
    if (cli_head_open(ha.model, ha.head, ha.dev, (int)ha.threads, &ctx, &err)) return cli_report(&err);
    if (isatty(STDIN_FILENO)) batch = 1;
    size_t dim = tbert_featurizer_dim(ctx.fz);
    char **lines = calloc((size_t)batch, sizeof(char *));
    size_t *lens = calloc((size_t)batch, sizeof(size_t));
    float *X = tbert_malloc_array((size_t)batch, dim * sizeof(float)), *p = calloc((size_t)batch, sizeof(float));
    int *k = calloc((size_t)batch, sizeof(int));
    int rc = CLI_OK, n = 0;
    if (!lines || !lens || !X || !p || !k) {
        fprintf(stderr, "tbert: out of memory\n");
        rc = CLI_USAGE;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while (!rc && (len = getline(&line, &cap, stdin)) >= 0) {
        if (len > 0 && line[len - 1] == '\n') line[--len] = 0;
        if (len > 0 && line[len - 1] == '\r') line[--len] = 0;
        lines[n] = tbert_strndup(line, (size_t)len);
        if (!lines[n]) {
            fprintf(stderr, "tbert: out of memory\n");
            rc = CLI_USAGE;
            break;
        }
        lens[n++] = (size_t)len;
        if (n == batch) {
            rc = flush_batch(&ctx, lines, lens, n, X, p, k);
            for (int i = 0; i < n; i++) free(lines[i]);
            n = 0;
        }
    }
    if (!rc && n > 0) rc = flush_batch(&ctx, lines, lens, n, X, p, k);
    for (int i = 0; i < n; i++) free(lines[i]);
    free(line);
    free(lines);
    free(lens);
    free(X);
    free(p);
    free(k);
    cli_head_close(&ctx);
    return rc;
}
