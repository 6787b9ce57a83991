/* tbert threshold: re-chooses a trained head's operating point from the held-out scores kept at train time
 * (CKPT_DIR/oof.safetensors), without retraining (src/threshold.c). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "tbert/metrics.h"
#include "tbert/threshold.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: tbert threshold --head CKPT_DIR (--fpr X | --threshold f1|fpr=X[,recall=R[,margin=M]]|VALUE) [--json]\n\n"
            "Re-picks the decision threshold of a trained binary head from the held-out scores its training kept\n"
            "(CKPT_DIR/oof.safetensors: the out-of-fold scores of every training example under cross-fitting, else\n"
            "the validation split's), without retraining. Rewrites the threshold in best.safetensors and metrics.json\n"
            "(atomically) and prints the new operating point: false-positive rate and recall on those scores with\n"
            "95%% Clopper-Pearson intervals. Warns when the held-out ham are too few to show the --fpr asked for.\n\n"
            "  --head CKPT_DIR        folder from tbert train (best.safetensors, oof.safetensors)\n"
            "  --fpr X                the lowest threshold with a held-out false-positive rate <= X (same as\n"
            "                         --threshold fpr=X)\n"
            "  --threshold T          any rule train's --threshold takes, or a VALUE in [0,1] kept as is\n"
            "  --json                 one JSON object on stdout: the operating point (source, rule, threshold,\n"
            "                         false_positives/n_negative, fpr, fpr_ci95, true_positives/n_positive,\n"
            "                         recall, recall_ci95, confidence[, fpr_target, negatives_needed, warning])\n\n"
            "exit status: 0 done; 2 bad usage, or a head without stored scores (trained by an older tbert: retrain\n"
            "it), or one that is not binary.\n");
}

enum { O_HEAD = 256, O_FPR, O_THRESHOLD, O_JSON, O_HELP };
static const struct option longopts[] = {{"head", required_argument, 0, O_HEAD},
                                          {"fpr", required_argument, 0, O_FPR},
                                          {"threshold", required_argument, 0, O_THRESHOLD},
                                          {"json", no_argument, 0, O_JSON},
                                          {"help", no_argument, 0, O_HELP},
                                          {0, 0, 0, 0}};

int cmd_threshold(int argc, char **argv) {
    const char *cmd = "threshold", *head = NULL, *spec = NULL;
    char fpr_spec[64];
    bool json = false;
    int c, n_rules = 0;
    double fpr;
    tbert_error err;
    while ((c = cli_getopt(cmd, argc, argv, "h", longopts)) != -1) {
        switch (c) {
        case 'h':
        case O_HELP: usage(stdout); return CLI_OK;
        case O_HEAD: head = optarg; break;
        case O_FPR:
            if (!cli_parse_double(cmd, "--fpr", optarg, 0, 1, &fpr)) return CLI_USAGE;
            snprintf(fpr_spec, sizeof fpr_spec, "fpr=%.10g", fpr);
            spec = fpr_spec;
            n_rules++;
            break;
        case O_THRESHOLD:
            spec = optarg;
            n_rules++;
            break;
        case O_JSON: json = true; break;
        default: return CLI_USAGE;
        }
    }
    if (optind < argc) return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    if (!head) return cli_usage_error(cmd, "--head CKPT_DIR is required");
    if (n_rules != 1) return cli_usage_error(cmd, "give exactly one of --fpr X or --threshold T");
    if (tbert_threshold_parse(spec, &err)) return cli_report(&err);
    tbert_operating_point op;
    char source[16] = "";
    if (tbert_threshold_repick(head, spec, &op, source, sizeof source, &err)) return cli_report(&err);
    if (op.warning[0]) fprintf(stderr, "tbert: warning: %s\n", op.warning);
    if (json) {
        char *s = tbert_operating_point_json(&op, source, spec);
        if (!s) return cli_report(&(tbert_error){TBERT_E_NOMEM, "out of memory"});
        printf("%s\n", s);
        free(s);
        return CLI_OK;
    }
    printf("threshold       %.6g  (%s, on %lld %s scores)\n", (double)op.threshold, spec, (long long)(op.n_neg + op.n_pos), source);
    printf("false positives %lld of %lld  rate %.4g  95%% interval [%.4g, %.4g]\n", (long long)op.fp, (long long)op.n_neg, op.fpr,
           op.fpr_lo, op.fpr_hi);
    printf("recall          %lld of %lld  rate %.4g  95%% interval [%.4g, %.4g]\n", (long long)op.tp, (long long)op.n_pos, op.recall,
           op.recall_lo, op.recall_hi);
    return CLI_OK;
}
