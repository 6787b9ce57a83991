/* tbert train: train a classifier head on frozen-encoder features (src/train_run.c does the work). */
#include <cjson/cJSON.h>
#include <math.h>
#include <glib.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "tbert/train.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: tbert train [--model NAME|DIR] --data FILE --out CKPT_DIR [options]\n"
            "       tbert train [--model NAME|DIR] --ham PATH... --spam PATH... --out CKPT_DIR [options]\n\n"
            "Encodes the texts once with the frozen encoder (features cached under $TBERT_CACHE/features), trains a\n"
            "linear or MLP head with AdamW, keeps the best epoch on the validation split, chooses the decision\n"
            "threshold there, and reports test metrics. Writes CKPT_DIR/best.safetensors, last.safetensors,\n"
            "metrics.json, split.tsv, report.html and oof.safetensors (the held-out scores the threshold was\n"
            "chosen on; metrics.json's operating_point gives their rates with 95%% intervals).\n\n"
            "data:\n"
            "  --data FILE            labelled table (TSV/CSV/JSONL; SMSSpamCollection: label first, text second)\n"
            "  --input-format F       tsv|csv|jsonl|auto (default auto)\n"
            "  --header MODE          auto|yes|no (default auto)\n"
            "  --text-col COL         header name or number from 1 (default 2; JSONL: text)\n"
            "  --label-col COL        header name or number from 1 (default 1; JSONL: label)\n"
            "  --ham PATH..., --spam PATH...  mail (mbox, Maildir, folders, message files); each flag takes one or\n"
            "                         more paths and may be repeated; mail recipe\n"
            "recipe (features):\n"
            "  --recipe NAME          text (default for --data: mean pooling, max_len 128, 1024 hashed WordPiece\n"
            "                         counts, MLP 512, AdamW lr 3e-4, batch 64, 20 epochs),\n"
            "                         seed (the tutorial: flatten, max_len 128, linear sigmoid head, Adam lr 1e-4,\n"
            "                         batch 32, 10 epochs), mail (default for --ham/--spam: normalised mean of\n"
            "                         1 window, 30522 hashed WordPiece counts, header evidence in a block of 1024,\n"
            "                         header words in a block of 16384 weighted 4; linear head, AdamW lr 1e-2,\n"
            "                         batch 32, 30 epochs; 5-fold cross-fitting)\n"
            "  --pool P               mean|cls|flatten|pooler\n"
            "  --max-len N            tokens per window (with [CLS]/[SEP])\n"
            "  --windows N            average the pooled vectors of up to N windows\n"
            "  --layers K             use the first K encoder layers\n"
            "  --normalize            L2-normalise the pooled vector\n"
            "  --lexical-dim N        hashed WordPiece count features (0 = off)\n"
            "  --lexical-ngrams N     1: WordPiece ids; 2: also pairs of adjacent ids (hashed into the same block)\n"
            "  --evidence-set S       all (every header evidence token; mail default) | e1 (from_domain, from_tld,\n"
            "                         mailer, rcvd_hops, ctype, body, attach, charset, has:/no: headers)\n"
            "  --evidence-dim N       mail header evidence in its own hashed block of N (0: inside the lexical block)\n"
            "  --header-dim N         every word of the mail's header values (\"h.from:bob@example.com\", relays,\n"
            "                         list ids; not upstream filters' headers) hashed into a block of N (0 = off)\n"
            "  --header-weight X      scale of that L2-normalised block (mail: 4)\n"
            "head and optimiser:\n"
            "  --hidden N             MLP hidden units (0 = linear head)\n"
            "  --dropout P            dropout before the last layer\n"
            "  --epochs N  --batch N  --lr X  --weight-decay X (AdamW, decoupled; 0 = Adam)\n"
            "  --class-weights auto   weight classes by n / (C * n_c)\n"
            "  --positive LABEL       positive class of a binary head (default spam, else the second label)\n"
            "  --threshold T          f1 | fpr=X | fpr=X,recall=R[,margin=M] | VALUE, chosen on validation (default\n"
            "                         f1; mail fpr=0.003,recall=0.8,margin=5: the cut with at most 1 held-out ham\n"
            "                         in 333 above it, raised to keep at most 80%% of the held-out spam, but not\n"
            "                         more than 5 logits above the ham cut)\n"
            "fine-tuning (the encoder trains too; default: frozen):\n"
            "  --finetune K|all       train the top K of the layers in use (--layers counts from the bottom) with the\n"
            "                         head; all = every layer and the embeddings; 0 = frozen (default, today's run).\n"
            "                         The frozen layers below run once per message (bf16 cache in the feature store);\n"
            "                         AdamW on head (--lr) and encoder (--encoder-lr), linear warm-up over the first\n"
            "                         10%% of the steps then linear decay to 0, gradient clipping at global norm 1\n"
            "  --encoder-lr X         peak learning rate of the encoder tensors (default 5e-5)\n"
            "  --finetune-epochs N    epochs when fine-tuning (default 4; replaces --epochs)\n"
            "  --finetune-dropout on|off  BERT's hidden and attention dropout 0.1 while fine-tuning (default on; off\n"
            "                         measured the same test accuracy on 480 training messages, benchmarks/RESULTS.md)\n"
            "  --finetune-head first|joint|refit  when the head trains as without fine-tuning (--epochs at a constant\n"
            "                         --lr): first = on the frozen encoder, then the layers train with it (default;\n"
            "                         the best of the three on held-out parts of both mail training sets,\n"
            "                         benchmarks/RESULTS.md); joint = only with the layers; refit = a new head on the\n"
            "                         fine-tuned layers' output\n"
            "split and run:\n"
            "  --val-fraction X       (default 0.1; mail 0)   --test-fraction X (default 0.2; mail 0); stratified,\n"
            "                         0 allowed\n"
            "  --cv K                 cross-fitting (mail default 5; 0 = off; needs --val-fraction 0): K heads on\n"
            "                         folds of the training split choose the threshold on every example's\n"
            "                         held-out score; the kept head is their ensemble (mean logit), so\n"
            "                         the cut holds on unseen mail; the scores go to CKPT_DIR/oof.safetensors\n"
            "                         (tbert threshold re-picks the cut from them)\n"
            "  --seed N               (default 42)\n"
            "  --device D             auto|cpu|cuda[:N] (encoder)   --precision fp32|tf32|bf16   --threads N\n"
            "                         (on the CPU only with --finetune: bf16 matrix products in the trained layers,\n"
            "                         fp32 weights and sums; fast where the CPU has AMX, e.g. Xeon Sapphire Rapids)\n"
            "  --resume               continue from CKPT_DIR/last.safetensors (same result as an uninterrupted run);\n"
            "                         a retrain into a folder that holds a run writes to CKPT_DIR/.tbert-staging and\n"
            "                         moves in when done, so a failed retrain leaves the previous run whole\n"
            "  --export-features F    also write the features (row order = input order): F.npz = the rows\n"
            "                         (scipy CSR layout for the sparse blocks, 'dense', 'labels'; docs/store.md),\n"
            "                         any other name = the dense matrix as .npy\n"
            "  --json                 print the final metrics as one JSON object on stdout\n"
            "  --quiet                no progress output\n");
}

enum {
    O_DATA = 256, O_OUT, O_MODEL, O_FMT, O_HEADER, O_TEXT, O_LABEL, O_HAM, O_SPAM, O_RECIPE, O_POOL, O_MAXLEN, O_WINDOWS,
    O_LAYERS, O_NORMALIZE, O_LEX, O_NGRAMS, O_EVDIM, O_EVSET, O_HDRDIM, O_HDRW, O_HIDDEN, O_DROPOUT, O_EPOCHS, O_BATCH, O_LR, O_WD, O_CW, O_POS, O_THR, O_VAL, O_TEST, O_CV,
    O_SEED, O_DEVICE, O_PREC, O_THREADS, O_RESUME, O_EXPORT, O_JSON, O_QUIET, O_HELP,
    O_FINETUNE, O_ENC_LR, O_FT_EPOCHS, O_FT_DROPOUT, O_FT_HEAD
};

static const struct option longopts[] = {
    {"data", required_argument, 0, O_DATA}, {"out", required_argument, 0, O_OUT}, {"model", required_argument, 0, O_MODEL},
    {"input-format", required_argument, 0, O_FMT}, {"header", required_argument, 0, O_HEADER},
    {"text-col", required_argument, 0, O_TEXT}, {"label-col", required_argument, 0, O_LABEL},
    {"ham", required_argument, 0, O_HAM}, {"spam", required_argument, 0, O_SPAM}, {"recipe", required_argument, 0, O_RECIPE},
    {"pool", required_argument, 0, O_POOL}, {"max-len", required_argument, 0, O_MAXLEN},
    {"windows", required_argument, 0, O_WINDOWS}, {"layers", required_argument, 0, O_LAYERS},
    {"normalize", no_argument, 0, O_NORMALIZE}, {"lexical-dim", required_argument, 0, O_LEX},
    {"lexical-ngrams", required_argument, 0, O_NGRAMS}, {"evidence-dim", required_argument, 0, O_EVDIM},
    {"evidence-set", required_argument, 0, O_EVSET}, {"header-dim", required_argument, 0, O_HDRDIM},
    {"header-weight", required_argument, 0, O_HDRW},
    {"hidden", required_argument, 0, O_HIDDEN}, {"dropout", required_argument, 0, O_DROPOUT},
    {"epochs", required_argument, 0, O_EPOCHS}, {"batch", required_argument, 0, O_BATCH}, {"lr", required_argument, 0, O_LR},
    {"weight-decay", required_argument, 0, O_WD}, {"class-weights", required_argument, 0, O_CW},
    {"positive", required_argument, 0, O_POS}, {"threshold", required_argument, 0, O_THR},
    {"val-fraction", required_argument, 0, O_VAL}, {"cv", required_argument, 0, O_CV}, {"test-fraction", required_argument, 0, O_TEST},
    {"seed", required_argument, 0, O_SEED}, {"device", required_argument, 0, O_DEVICE},
    {"precision", required_argument, 0, O_PREC}, {"threads", required_argument, 0, O_THREADS},
    {"resume", no_argument, 0, O_RESUME}, {"export-features", required_argument, 0, O_EXPORT},
    {"json", no_argument, 0, O_JSON}, {"quiet", no_argument, 0, O_QUIET}, {"help", no_argument, 0, O_HELP},
    {"finetune", required_argument, 0, O_FINETUNE}, {"encoder-lr", required_argument, 0, O_ENC_LR},
    {"finetune-epochs", required_argument, 0, O_FT_EPOCHS}, {"finetune-dropout", required_argument, 0, O_FT_DROPOUT},
    {"finetune-head", required_argument, 0, O_FT_HEAD},
    {0, 0, 0, 0}};

static void print_summary(const tbert_train_result *res) {
    const tbert_recipe *r = &res->recipe;
    const tbert_metrics *ms[3] = {&res->fit.train, &res->fit.val, &res->fit.test};
    const char *names[3] = {"train", "val", "test"};
    fprintf(stderr, "\n%-6s %6s %9s %9s %9s", "split", "n", "accuracy", "ROC-AUC", "PR-AUC");
    for (int k = 0; k < r->n_labels; k++) fprintf(stderr, "  F1(%.10s)", r->labels[k]);
    fprintf(stderr, "\n");
    for (int i = 0; i < 3; i++) {
        if (!ms[i]->n) continue;
        fprintf(stderr, "%-6s %6d %9.4f %9.4f %9.4f", names[i], ms[i]->n, ms[i]->accuracy, ms[i]->roc_auc, ms[i]->pr_auc);
        for (int k = 0; k < r->n_labels; k++) fprintf(stderr, "  %*.4f", (int)(strlen(r->labels[k]) > 10 ? 10 : strlen(r->labels[k])) + 4, ms[i]->f1[k]);
        fprintf(stderr, "\n");
    }
    fprintf(stderr, "best epoch %d of %d, threshold %.4f; features %.1f s%s, total %.1f s\nreport: %s\n", res->fit.best_epoch,
            res->fit.epochs_run, (double)res->fit.threshold, res->seconds_features, res->cache_hit ? " (cache)" : "",
            res->seconds_total, res->report_path);
}

static cJSON *parsed(const tbert_metrics *m, const tbert_recipe *r) {
    if (!m->n) return cJSON_CreateNull();
    char *s = tbert_metrics_json(m, r);
    cJSON *o = s ? cJSON_Parse(s) : NULL;
    free(s);
    return o ? o : cJSON_CreateNull();
}

/* top level: the same shape as `eval --json` for the test split (else validation), plus the rest */
static void print_json(const tbert_train_result *res, const char *out_dir) {
    const tbert_fit_result *f = &res->fit;
    const tbert_metrics *main_m = f->test.n ? &f->test : (f->val.n ? &f->val : &f->train);
    cJSON *o = parsed(main_m, &res->recipe);
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        fprintf(stderr, "tbert: out of memory\n");
        return;
    }
    cJSON_AddStringToObject(o, "split", f->test.n ? "test" : (f->val.n ? "val" : "train"));
    cJSON_AddNumberToObject(o, "best_epoch", f->best_epoch);
    cJSON_AddNumberToObject(o, "epochs", f->epochs_run);
    cJSON_AddNumberToObject(o, "seconds", res->seconds_total);
    cJSON_AddNumberToObject(o, "seconds_features", res->seconds_features);
    cJSON_AddBoolToObject(o, "feature_cache_hit", res->cache_hit);
    cJSON_AddNumberToObject(o, "docs_encoded", res->docs_encoded);
    cJSON_AddStringToObject(o, "checkpoint", out_dir);
    cJSON_AddStringToObject(o, "report", res->report_path);
    cJSON_AddItemToObject(o, "train", parsed(&f->train, &res->recipe));
    cJSON_AddItemToObject(o, "val", parsed(&f->val, &res->recipe));
    cJSON_AddItemToObject(o, "test", parsed(&f->test, &res->recipe));
    if (res->has_op) { /* as metrics.json: the held-out operating point with its 95% intervals */
        char *op = tbert_operating_point_json(&res->op, res->op_source, NULL);
        cJSON *v = op ? cJSON_Parse(op) : NULL;
        free(op);
        if (v) {
            cJSON_DeleteItemFromObjectCaseSensitive(v, "rule");
            cJSON_AddItemToObject(o, "operating_point", v);
        }
    }
    char *s = cJSON_PrintUnformatted(o);
    if (s) printf("%s\n", s);
    free(s);
    cJSON_Delete(o);
}

int cmd_train(int argc, char **argv) {
    const char *cmd = "train";
    tbert_train_opts o;
    tbert_train_opts_default(&o);
    const char **ham = calloc((size_t)argc + 1, sizeof(char *)), **spam = calloc((size_t)argc + 1, sizeof(char *));
    if (!ham || !spam) {
        free(ham);
        free(spam);
        fprintf(stderr, "tbert: out of memory\n");
        return CLI_USAGE;
    }
    bool json = false;
    int rc = CLI_OK, c;
    long v;
    double x;
    tbert_error err;
    tbert_error_clear(&err);
    while ((c = cli_getopt(cmd, argc, argv, "h", longopts)) != -1) {
        switch (c) {
        case O_HELP:
        case 'h': usage(stdout); free(ham); free(spam); return CLI_OK;
        case O_DATA: o.data = optarg; break;
        case O_OUT: o.out_dir = optarg; break;
        case O_MODEL: o.model = optarg; break;
        case O_FMT: if (tbert_table_format_parse(optarg, &o.table.format, &err)) rc = cli_report(&err); break;
        case O_HEADER: if (tbert_header_mode_parse(optarg, &o.table.header, &err)) rc = cli_report(&err); break;
        case O_TEXT: o.table.text_col = optarg; break;
        case O_LABEL: o.table.label_col = optarg; break;
        case O_HAM:
        case O_SPAM: {
            /* each flag takes one or more paths: the words after it up to the next option */
            const char **dst = c == O_HAM ? ham : spam;
            int *cnt = c == O_HAM ? &o.n_ham : &o.n_spam;
            dst[(*cnt)++] = optarg;
            while (optind < argc && argv[optind][0] != '-') dst[(*cnt)++] = argv[optind++];
            break;
        }
        case O_RECIPE:
            if (strcmp(optarg, "text") && strcmp(optarg, "seed") && strcmp(optarg, "mail"))
                rc = cli_usage_error(cmd, "--recipe expects text, seed or mail, got '%s'", optarg);
            o.recipe = optarg;
            break;
        case O_POOL: {
            tbert_pool p;
            if (tbert_pool_parse(optarg, &p, &err)) rc = cli_report(&err);
            o.pool = (int)p;
            break;
        }
        case O_MAXLEN: if (!cli_parse_int(cmd, "--max-len", optarg, 3, 8192, &v)) rc = CLI_USAGE; o.max_len = (int)v; break;
        case O_WINDOWS: if (!cli_parse_int(cmd, "--windows", optarg, 1, 1024, &v)) rc = CLI_USAGE; o.windows = (int)v; break;
        case O_LAYERS: if (!cli_parse_int(cmd, "--layers", optarg, 1, 1000, &v)) rc = CLI_USAGE; o.layers = (int)v; break;
        case O_NORMALIZE: o.normalize = 1; break;
        case O_LEX: if (!cli_parse_int(cmd, "--lexical-dim", optarg, 0, 1 << 22, &v)) rc = CLI_USAGE; o.lexical_dim = (int)v; break;
        case O_NGRAMS: if (!cli_parse_int(cmd, "--lexical-ngrams", optarg, 1, 2, &v)) rc = CLI_USAGE; o.lexical_ngrams = (int)v; break;
        case O_EVDIM: if (!cli_parse_int(cmd, "--evidence-dim", optarg, 0, 1 << 22, &v)) rc = CLI_USAGE; o.evidence_dim = (int)v; break;
        case O_EVSET:
            if (strcmp(optarg, "all") && strcmp(optarg, "e1"))
                rc = cli_usage_error(cmd, "--evidence-set expects all or e1, got '%s'", optarg);
            o.evidence_set = !strcmp(optarg, "e1");
            break;
        case O_HDRDIM: if (!cli_parse_int(cmd, "--header-dim", optarg, 0, 1 << 22, &v)) rc = CLI_USAGE; o.header_dim = (int)v; break;
        case O_HDRW: if (!cli_parse_double(cmd, "--header-weight", optarg, 1e-3, 1000, &x)) rc = CLI_USAGE; o.header_weight = x; break;
        case O_HIDDEN: if (!cli_parse_int(cmd, "--hidden", optarg, 0, 65536, &v)) rc = CLI_USAGE; o.hidden = (int)v; break;
        case O_DROPOUT: if (!cli_parse_double(cmd, "--dropout", optarg, 0, 0.99, &x)) rc = CLI_USAGE; o.dropout = x; break;
        case O_EPOCHS: if (!cli_parse_int(cmd, "--epochs", optarg, 1, 1000000, &v)) rc = CLI_USAGE; o.epochs = (int)v; break;
        case O_BATCH: if (!cli_parse_int(cmd, "--batch", optarg, 1, 1 << 20, &v)) rc = CLI_USAGE; o.batch = (int)v; break;
        case O_LR: if (!cli_parse_double(cmd, "--lr", optarg, 1e-12, 100, &x)) rc = CLI_USAGE; o.lr = x; break;
        case O_WD: if (!cli_parse_double(cmd, "--weight-decay", optarg, 0, 100, &x)) rc = CLI_USAGE; o.weight_decay = x; break;
        case O_CW:
            if (strcmp(optarg, "auto") && strcmp(optarg, "none"))
                rc = cli_usage_error(cmd, "--class-weights expects auto or none, got '%s'", optarg);
            o.class_weights_auto = !strcmp(optarg, "auto");
            break;
        case O_POS: o.positive = optarg; break;
        case O_THR: if (tbert_threshold_parse(optarg, &err)) rc = cli_report(&err); o.threshold = optarg; break;
        case O_VAL: if (!cli_parse_double(cmd, "--val-fraction", optarg, 0, 0.9, &x)) rc = CLI_USAGE; o.val_fraction = x; break;
        case O_CV: if (!cli_parse_int(cmd, "--cv", optarg, 0, 100, &v)) rc = CLI_USAGE; o.cv_folds = (int)v; break;
        case O_TEST: if (!cli_parse_double(cmd, "--test-fraction", optarg, 0, 0.9, &x)) rc = CLI_USAGE; o.test_fraction = x; break;
        case O_SEED: {
            char *end;
            o.seed = strtoull(optarg, &end, 10);
            if (!*optarg || *end || *optarg == '-') rc = cli_usage_error(cmd, "--seed expects a whole number, got '%s'", optarg);
            break;
        }
        case O_DEVICE: if (tbert_device_parse(optarg, &o.device, &err)) rc = cli_report(&err); break;
        case O_PREC: if (tbert_precision_parse(optarg, &o.precision, &err)) rc = cli_report(&err); break;
        case O_THREADS: if (!cli_parse_int(cmd, "--threads", optarg, 0, 4096, &v)) rc = CLI_USAGE; o.threads = (int)v; break;
        case O_RESUME: o.resume = true; break;
        case O_EXPORT: o.export_features = optarg; break;
        case O_JSON: json = true; break;
        case O_QUIET: o.quiet = true; break;
        case O_FINETUNE:
            if (!strcmp(optarg, "all")) o.finetune = TBERT_FINETUNE_ALL;
            else if (!cli_parse_int(cmd, "--finetune", optarg, 0, 1000, &v)) rc = CLI_USAGE;
            else o.finetune = (int)v;
            break;
        case O_ENC_LR: if (!cli_parse_double(cmd, "--encoder-lr", optarg, 1e-12, 100, &x)) rc = CLI_USAGE; o.encoder_lr = x; break;
        case O_FT_EPOCHS: if (!cli_parse_int(cmd, "--finetune-epochs", optarg, 1, 100000, &v)) rc = CLI_USAGE; o.finetune_epochs = (int)v; break;
        case O_FT_DROPOUT:
            if (strcmp(optarg, "on") && strcmp(optarg, "off"))
                rc = cli_usage_error(cmd, "--finetune-dropout expects on or off, got '%s'", optarg);
            o.finetune_dropout = !strcmp(optarg, "on");
            break;
        case O_FT_HEAD:
            if (!tbert_ft_head_phase_parse(optarg, &o.finetune_head))
                rc = cli_usage_error(cmd, "--finetune-head expects joint, first or refit, got '%s'", optarg);
            break;
        default: rc = CLI_USAGE; break;
        }
        if (rc) break;
    }
    if (!rc && optind < argc) rc = cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    if (!rc && !o.out_dir) rc = cli_usage_error(cmd, "--out CKPT_DIR is required");
    if (!rc && !o.data && o.n_ham + o.n_spam == 0) rc = cli_usage_error(cmd, "give --data FILE, or --ham PATH and --spam PATH");
    if (!rc && !o.data && (o.n_ham == 0 || o.n_spam == 0)) rc = cli_usage_error(cmd, "--ham and --spam go together");
    if (!rc && o.val_fraction >= 0 && o.test_fraction >= 0 && o.val_fraction + o.test_fraction >= 1) rc = cli_usage_error(cmd, "--val-fraction + --test-fraction must be below 1");
    if (rc) {
        free(ham);
        free(spam);
        return rc;
    }
    o.ham = ham;
    o.spam = spam;
    /* the command line for report.html, quoted as a shell would need it */
    GString *cl = g_string_new("tbert"); /* argv[0] is the subcommand's name */
    for (int i = 0; i < argc; i++) {
        bool plain = argv[i][0] != '\0';
        for (const char *q = argv[i]; *q && plain; q++)
            plain = g_ascii_isalnum(*q) || strchr("-_./=:,@%+", *q) != NULL;
        g_string_append_c(cl, ' ');
        if (plain) {
            g_string_append(cl, argv[i]);
        } else {
            g_string_append_c(cl, '\'');
            for (const char *q = argv[i]; *q; q++)
                if (*q == '\'') g_string_append(cl, "'\\''");
                else g_string_append_c(cl, *q);
            g_string_append_c(cl, '\'');
        }
    }
    o.command_line = cl->str;
    tbert_train_result res;
    if (tbert_train_run(&o, &res, &err)) {
        rc = cli_report(&err);
    } else {
        if (!o.quiet) print_summary(&res);
        if (json) print_json(&res, o.out_dir);
    }
    tbert_train_result_free(&res);
    g_string_free(cl, TRUE);
    free(ham);
    free(spam);
    return rc;
}
