/* tbert eval: metrics of a trained head on a labelled table or on --ham/--spam mail (read as train reads it,
 * src/train_data.c), at the checkpoint's threshold. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "head_common.h"
#include "tbert/dataset.h"
#include "tbert/metrics.h"
#include "tbert/train.h"
#include "train_internal.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: tbert eval [--model NAME|DIR] --head CKPT_DIR --data FILE [options]\n"
            "       tbert eval [--model NAME|DIR] --head CKPT_DIR --ham PATH... --spam PATH... [options]\n\n"
            "Accuracy, precision/recall/F1 per class, ROC-AUC, PR-AUC and the confusion matrix of a trained head on a\n"
            "labelled table or on mail, at the threshold stored in the checkpoint. The head's recipe must fit the model.\n\n"
            "  --model NAME|DIR       encoder (default minilm); must be the one the head was trained on\n"
            "  --head CKPT_DIR        folder with best.safetensors (or the .safetensors file)\n"
            "  --data FILE            labelled table; --input-format, --header, --text-col, --label-col as in train\n"
            "  --ham PATH..., --spam PATH...  mail (mbox, Maildir, folders, message files) labelled ham / spam, read\n"
            "                         as tbert train reads it (items that cannot be read are skipped with a line)\n"
            "  --min-accuracy X       exit 1 when the accuracy is below X\n"
            "  --device D  --threads N\n"
            "  --json                 one JSON object: accuracy, roc_auc, pr_auc, threshold, confusion, per_class\n");
}

enum {
    O_MODEL = CLI_HEAD_O_MODEL, O_HEAD = CLI_HEAD_O_HEAD, O_DEVICE = CLI_HEAD_O_DEVICE, O_THREADS = CLI_HEAD_O_THREADS,
    O_DATA = CLI_HEAD_O_OWN, O_FMT, O_HEADER, O_TEXT, O_LABEL, O_MINACC, O_JSON, O_HELP, O_HAM, O_SPAM
};
static const struct option longopts[] = {
    {"model", required_argument, 0, O_MODEL}, {"head", required_argument, 0, O_HEAD}, {"data", required_argument, 0, O_DATA},
    {"input-format", required_argument, 0, O_FMT}, {"header", required_argument, 0, O_HEADER},
    {"text-col", required_argument, 0, O_TEXT}, {"label-col", required_argument, 0, O_LABEL},
    {"min-accuracy", required_argument, 0, O_MINACC}, {"device", required_argument, 0, O_DEVICE},
    {"threads", required_argument, 0, O_THREADS}, {"json", no_argument, 0, O_JSON}, {"help", no_argument, 0, O_HELP},
    {"ham", required_argument, 0, O_HAM}, {"spam", required_argument, 0, O_SPAM},
    {0, 0, 0, 0}};

static void print_table(const tbert_metrics *m, const tbert_recipe *r) {
    printf("examples   %d\naccuracy   %.4f\nROC-AUC    %.4f\nPR-AUC     %.4f\n", m->n, m->accuracy, m->roc_auc, m->pr_auc);
    if (r->positive >= 0) printf("threshold  %.4f on P(%s)\n", (double)m->threshold, r->labels[r->positive]);
    printf("\n%-16s %9s %9s %9s %9s\n", "class", "precision", "recall", "F1", "support");
    for (int k = 0; k < m->n_classes; k++)
        printf("%-16.16s %9.4f %9.4f %9.4f %9lld\n", r->labels[k], m->precision[k], m->recall[k], m->f1[k],
               (long long)m->support[k]);
    printf("\nconfusion (rows true, columns predicted)\n%-16s", "");
    for (int k = 0; k < m->n_classes; k++) printf(" %9.9s", r->labels[k]);
    printf("\n");
    for (int i = 0; i < m->n_classes; i++) {
        printf("%-16.16s", r->labels[i]);
        for (int j = 0; j < m->n_classes; j++) printf(" %9lld", (long long)m->confusion[(size_t)i * m->n_classes + j]);
        printf("\n");
    }
}

static int eval_main(const char *cmd, int argc, char **argv, const char **ham, int *n_ham, const char **spam, int *n_spam);

int cmd_eval(int argc, char **argv) {
    const char *cmd = "eval";
    int rc;
    const char **ham = calloc((size_t)argc + 1, sizeof(char *)), **spam = calloc((size_t)argc + 1, sizeof(char *));
    int n_ham = 0, n_spam = 0;
    if (!ham || !spam) {
        free(ham);
        free(spam);
        return cli_report(&(tbert_error){TBERT_E_NOMEM, "out of memory"});
    }
    rc = eval_main(cmd, argc, argv, ham, &n_ham, spam, &n_spam);
    free(ham);
    free(spam);
    return rc;
}

static int eval_main(const char *cmd, int argc, char **argv, const char **ham, int *n_ham, const char **spam, int *n_spam) {
    const char *data = NULL;
    cli_head_args ha = {.dev = {TBERT_DEVICE_AUTO, 0}};
    tbert_table_opts topt = {0};
    double min_acc = -1;
    bool json = false;
    int rc = CLI_OK, oc, c;
    tbert_error err;
    while ((c = cli_getopt(cmd, argc, argv, "h", longopts)) != -1) {
        if (cli_head_getopt(cmd, c, &ha, &oc)) {
            if (oc) return oc;
            continue;
        }
        switch (c) {
        case 'h':
        case O_HELP: usage(stdout); return CLI_OK;
        case O_DATA: data = optarg; break;
        case O_FMT: if (tbert_table_format_parse(optarg, &topt.format, &err)) return cli_report(&err); break;
        case O_HEADER: if (tbert_header_mode_parse(optarg, &topt.header, &err)) return cli_report(&err); break;
        case O_TEXT: topt.text_col = optarg; break;
        case O_LABEL: topt.label_col = optarg; break;
        case O_MINACC: if (!cli_parse_double(cmd, "--min-accuracy", optarg, 0, 1, &min_acc)) return CLI_USAGE; break;
        case O_JSON: json = true; break;
        case O_HAM:
        case O_SPAM: {
            /* each flag takes one or more paths: the words after it up to the next option (as train's) */
            const char **dst = c == O_HAM ? ham : spam;
            int *cnt = c == O_HAM ? n_ham : n_spam;
            dst[(*cnt)++] = optarg;
            while (optind < argc && argv[optind][0] != '-') dst[(*cnt)++] = argv[optind++];
            break;
        }
        default: return CLI_USAGE;
        }
    }
    if ((oc = cli_head_args_check(cmd, argc, argv, &ha))) return oc;
    if (data && *n_ham + *n_spam > 0) return cli_usage_error(cmd, "--data and --ham/--spam exclude each other");
    if (!data && *n_ham + *n_spam == 0) return cli_usage_error(cmd, "give --data FILE, or --ham PATH and --spam PATH");
    /* the labelled documents: the table's rows, or the mail through train's reader */
    tbert_labelled L = {0};
    int skipped = 0;
    tbert_status lst;
    if (data) {
        tbert_train_opts to = {0};
        to.data = data;
        to.table = topt;
        lst = tbert_labelled_read_table(&to, &L, &err);
    } else {
        lst = tbert_labelled_read_mail(ham, *n_ham, "ham", &L, &skipped, &err);
        if (!lst) lst = tbert_labelled_read_mail(spam, *n_spam, "spam", &L, &skipped, &err);
    }
    if (lst) {
        tbert_labelled_free(&L);
        return cli_report(&err);
    }
    if (skipped) fprintf(stderr, "tbert eval: %d item%s could not be read (skipped)\n", skipped, skipped == 1 ? "" : "s");
    if (L.n == 0) {
        tbert_labelled_free(&L);
        return cli_usage_error(cmd, "%s: no messages to evaluate", data ? data : "--ham/--spam");
    }
    cli_head_ctx ctx;
    if (cli_head_open(ha.model, ha.head, ha.dev, (int)ha.threads, &ctx, &err)) {
        tbert_labelled_free(&L);
        return cli_report(&err);
    }
    const tbert_recipe *r = tbert_classifier_recipe(ctx.clf);
    const tbert_head *h = tbert_classifier_head(ctx.clf);
    int C = r->n_labels, n = L.n;
    tbert_doc *docs = tbert_malloc_array((size_t)n + 1, sizeof *docs);
    int *y = tbert_malloc_array((size_t)n + 1, sizeof(int));
    tbert_rows X = {0};
    tbert_store *store = NULL;
    float *P = tbert_malloc_array((size_t)n + 1, (size_t)C * sizeof(float));
    tbert_metrics m = {0};
    if (!docs || !y || !P) {
        rc = cli_report(&(tbert_error){TBERT_E_NOMEM, "out of memory"});
        goto done;
    }
    for (int i = 0; i < n; i++) {
        docs[i] = L.docs[i];
        y[i] = tbert_recipe_label_index(r, L.label[i]);
        if (y[i] < 0) {
            if (data) fprintf(stderr, "tbert: %s:%lld: label '%s' is not one the head knows\n", data, (long long)L.line[i], L.label[i]);
            else fprintf(stderr, "tbert: the head has no label '%s' (its labels are not ham/spam)\n", L.label[i]);
            rc = CLI_USAGE;
            goto done;
        }
    }
    tbert_error serr; /* the row store saves re-encoding; without one the run only takes longer */
    if (tbert_store_open(NULL, &store, &serr)) fprintf(stderr, "tbert: warning: no feature store: %s\n", serr.msg);
    if (tbert_featurizer_rows_init(ctx.fz, &X, &err) ||
        tbert_featurize_stored(ctx.fz, store, n, docs, json ? NULL : "encode", &X, NULL, &err) ||
        tbert_head_predict_rows(h, &X, P, &err) ||
        tbert_metrics_compute(n, C, P, y, r->positive, r->threshold, &m, &err)) {
        rc = cli_report(&err);
        goto done;
    }
    if (json) {
        char *s = tbert_metrics_json(&m, r);
        if (s) printf("%s\n", s);
        free(s);
    } else {
        print_table(&m, r);
    }
    if (min_acc >= 0 && !(m.accuracy >= min_acc)) {
        fprintf(stderr, "tbert: accuracy %.4f is below --min-accuracy %.4f\n", m.accuracy, min_acc);
        rc = CLI_CHECK_FAILED;
    }
done:
    tbert_metrics_free(&m);
    free(docs);
    free(y);
    tbert_rows_free(&X);
    tbert_store_close(store);
    free(P);
    cli_head_close(&ctx);
    tbert_labelled_free(&L);
    return rc;
}
