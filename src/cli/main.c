/* tbert: one binary, one subcommand per concern (src/cli/cmd_NAME.c). */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "tbert/cuda_plugin.h"

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} subcommand;

static const subcommand subcommands[] = {
    {"tokenize", cmd_tokenize, "WordPiece token ids, one line of text in, one line of ids out"},
    {"embed", cmd_embed, "encode texts with the frozen encoder and write the feature matrix"},
    {"info", cmd_info, "show a model's config, parameters, dtypes, tokenizer settings and checksum"},
    {"train", cmd_train, "train a classifier head on frozen-encoder features (texts or mail)"},
    {"eval", cmd_eval, "evaluate a trained head on a labelled data set"},
    {"predict", cmd_predict, "label texts read from stdin with a trained head"},
    {"score", cmd_score, "batch-score mbox / Maildir / message files / tables with a trained head"},
    {"filter", cmd_filter, "classify one message on stdin (bogofilter-compatible exit codes)"},
    {"serve", cmd_serve, "keep the model in memory and answer spamc (spamd protocol), milter and HTTP"},
    {"learn", cmd_learn, "learn from mistakes: add corrections to a head and retrain it (or roll it back)"},
    {"forget", cmd_forget, "forget messages: drop their stored features and their learned corrections"},
    {"threshold", cmd_threshold, "re-pick a trained head's threshold from its stored held-out scores"},
    {"bench", cmd_bench, "measure tokenizer / encoder / head throughput"},
    {"export", cmd_export, "write a head's (fine-tuned) encoder as a Hugging Face BERT model folder"},
};

/* One line on the CUDA backend this binary finds: the plugin and its devices, the emulated device, or why none. */
static void describe_cuda(FILE *f) {
    if (!TBERT_HAVE_CUDA) {
        fprintf(f, "not built (CPU only)");
        return;
    }
    tbert_cuda_probe_info info;
    tbert_cuda_probe(&info);
    if (!info.loaded)
        fprintf(f, "plugin not loaded (%s); --device auto uses the CPU", info.why);
    else if (info.emulated)
        fprintf(f, "EMULATED CUDA device on the CPU (%s; --device cuda runs the kernels emulated, --device auto uses the CPU)",
                 info.path);
    else if (info.devices > 0)
        fprintf(f, "%s, %d device(s)", info.path, info.devices);
    else
        fprintf(f, "%s, no usable device (%s)", info.path, info.why);
}

static void print_usage(FILE *f) {
    fprintf(f, "tbert %s - text classifiers on a frozen BERT encoder (C17 + CUDA)\n\n", TBERT_VERSION);
    fprintf(f, "usage: tbert SUBCOMMAND [options]   (tbert SUBCOMMAND --help for its options)\n\nsubcommands:\n");
    for (size_t i = 0; i < sizeof subcommands / sizeof subcommands[0]; i++)
        fprintf(f, "  %-10s %s\n", subcommands[i].name, subcommands[i].summary);
    fprintf(f, "\nenvironment: TBERT_CACHE (models and the row store; default ~/.cache/tbert)\n");
    fprintf(f, "CUDA backend: ");
    describe_cuda(f);
    fprintf(f, "\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        print_usage(stderr);
        return CLI_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        print_usage(stdout);
        return CLI_OK;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("tbert %s\nCUDA backend: ", TBERT_VERSION);
        describe_cuda(stdout);
        printf("\n");
        return CLI_OK;
    }
    for (size_t i = 0; i < sizeof subcommands / sizeof subcommands[0]; i++) {
        if (!strcmp(argv[1], subcommands[i].name)) {
            cli_getopt_reset();
            return subcommands[i].run(argc - 1, argv + 1);
        }
    }
    fprintf(stderr, "tbert: unknown subcommand '%s' (see 'tbert --help')\n", argv[1]);
    return CLI_USAGE;
}
