/* tbert score: batch-score mbox / Maildir / message files / tables with a trained head (src/score.c). */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "tbert/score.h"

static const char *const CMD = "score";

static void usage(FILE *f) {
    fprintf(f,
            "usage: tbert score [options] --head CKPT_DIR INPUT...\n"
            "\n"
            "Scores every message (or table row) of the inputs with a trained head and writes one record per\n"
            "item, in input order: source, offset, id (Message-ID), score (P(positive)), label, tokens (what\n"
            "the head saw), and error for an item that could not be read (score and label are then null);\n"
            "\"truncated\": true (CSV: a truncated column) marks a message cut at --max-message-bytes. Records\n"
            "are appended and flushed one by one; after a crash, --resume continues where the output stops.\n"
            "\n"
            "inputs (in the order given; folders are read recursively in byte-sorted path order):\n"
            "  mbox files (mboxo/mboxrd, \">From \" unescaped; .gz read transparently), Maildir folders (cur/ and\n"
            "  new/), folders of one-message files, single message files, '-' for one message on stdin, and\n"
            "  TSV/CSV/JSONL tables (by extension or --input-format). A file named here is an mbox when it\n"
            "  starts with \"From \", else one message.\n"
            "\n"
            "options:\n"
            "  --head DIR              head checkpoint folder (best.safetensors) from tbert train (required)\n"
            "  --model NAME|DIR        model name in $TBERT_CACHE/models or a model folder (default minilm)\n"
            "  --out FILE              output file (default: stdout)\n"
            "  --format F              jsonl (default) or csv\n"
            "  --resume                keep the records already in --out (a partly written last line is\n"
            "                          dropped) and score only the items that are not there (by resolved\n"
            "                          path and offset: ./x.mbox and x.mbox are the same input). Refused when\n"
            "                          OUT.tbert.json says another head, model, recipe or label rule wrote it\n"
            "  (--out FILE also writes FILE.tbert.json: the head, model and recipe of the run, atomically)\n"
            "  --shard K/N             score only items whose input-order index i has i %% N == K (0 <= K < N);\n"
            "                          N machines running K = 0..N-1 together cover the input exactly once\n"
            "  --max-message-bytes N   cap on one message's size; larger ones are cut and marked truncated\n"
            "                          (default 33554432)\n"
            "  --threads N             parse threads and CPU encoder threads (default: all cores)\n"
            "  --batch N               texts per encoder batch (default 64)\n"
            "  --device D              auto|cpu|cuda|cuda:N (default auto)\n"
            "  --input-format F        tsv|csv|jsonl|auto (default auto: a named file is a table by its\n"
            "                          extension); tsv, csv or jsonl reads every named file as that table\n"
            "  --text-col COL          table text column: header name or number from 1 (default 2 / \"text\")\n"
            "  --header H              auto|yes|no for TSV/CSV tables (default auto)\n"
            "  --threshold VALUE       the label column says the positive label when P >= VALUE (0..1) instead\n"
            "                          of at the head's stored threshold (binary heads; the rules f1 and fpr=X\n"
            "                          of train need validation data: use tbert threshold / train for those)\n"
            "  --unsure LOW,HIGH       P < LOW the other label, P >= HIGH the positive one, between: \"unsure\"\n"
            "                          (as tbert filter --unsure)\n"
            "  --export-features F.npz also write the feature rows of the scored items (in record order;\n"
            "                          error records have none): scipy's CSR layout (data, indices, indptr,\n"
            "                          shape, format) for the sparse blocks, 'dense' for the encoder block\n"
            "  --json                  print the run's totals as one JSON object on stdout (needs --out)\n"
            "  --quiet                 no progress on stderr\n"
            "  --help                  this text\n"
            "\n"
            "exit status: 0 when all inputs were gone through (items that could not be read are error records,\n"
            "and their count is printed on stderr); 2 when the run cannot go on (missing input, bad head, output\n"
            "not writable). See docs/distributed.md for sharding over machines and merging the results.\n");
}

int cmd_score(int argc, char **argv) {
    enum { O_HEAD = 256, O_MODEL, O_OUT, O_FORMAT, O_RESUME, O_SHARD, O_MAXB, O_THREADS, O_BATCH, O_DEVICE, O_INFMT,
           O_TEXTCOL, O_HEADER, O_QUIET, O_JSON, O_EXPORT, O_HELP, O_THRESH, O_UNSURE };
    static const struct option longopts[] = {
        {"head", required_argument, NULL, O_HEAD},       {"model", required_argument, NULL, O_MODEL},
        {"out", required_argument, NULL, O_OUT},         {"format", required_argument, NULL, O_FORMAT},
        {"resume", no_argument, NULL, O_RESUME},         {"shard", required_argument, NULL, O_SHARD},
        {"max-message-bytes", required_argument, NULL, O_MAXB}, {"threads", required_argument, NULL, O_THREADS},
        {"batch", required_argument, NULL, O_BATCH},     {"device", required_argument, NULL, O_DEVICE},
        {"input-format", required_argument, NULL, O_INFMT}, {"text-col", required_argument, NULL, O_TEXTCOL},
        {"header", required_argument, NULL, O_HEADER},   {"quiet", no_argument, NULL, O_QUIET},
        {"json", no_argument, NULL, O_JSON},             {"export-features", required_argument, NULL, O_EXPORT},
        {"threshold", required_argument, NULL, O_THRESH}, {"unsure", required_argument, NULL, O_UNSURE},
        {"help", no_argument, NULL, O_HELP},             {NULL, 0, NULL, 0},
    };
    const char *head = NULL, *model = NULL, *device = NULL;
    bool json = false;
    tbert_score_opts o = {0};
    o.progress = true;
    o.input.table.label_optional = true; /* tables to score need no labels */
    long v;
    tbert_error err;
    int c;
    while ((c = cli_getopt(CMD, argc, argv, "", longopts)) != -1) {
        switch (c) {
        case O_HEAD: head = optarg; break;
        case O_MODEL: model = optarg; break;
        case O_OUT: o.out_path = optarg; break;
        case O_FORMAT:
            if (!strcmp(optarg, "jsonl")) o.format = TBERT_SCORE_JSONL;
            else if (!strcmp(optarg, "csv")) o.format = TBERT_SCORE_CSV;
            else return cli_usage_error(CMD, "--format expects jsonl or csv, got '%s'", optarg);
            break;
        case O_RESUME: o.resume = true; break;
        case O_SHARD:
            if (tbert_shard_parse(optarg, &o.input.shard_k, &o.input.shard_n, &err))
                return cli_usage_error(CMD, "%s", err.msg);
            break;
        case O_MAXB:
            if (!cli_parse_int(CMD, "--max-message-bytes", optarg, 1024, 1L << 34, &v)) return CLI_USAGE;
            o.input.max_message_bytes = (size_t)v;
            break;
        case O_THREADS:
            if (!cli_parse_int(CMD, "--threads", optarg, 1, 1024, &v)) return CLI_USAGE;
            o.threads = (int)v;
            break;
        case O_BATCH:
            if (!cli_parse_int(CMD, "--batch", optarg, 1, 65536, &v)) return CLI_USAGE;
            o.batch = (int)v;
            break;
        case O_DEVICE: device = optarg; break;
        case O_INFMT:
            if (tbert_table_format_parse(optarg, &o.input.table.format, &err)) return cli_report(&err);
            break;
        case O_TEXTCOL: o.input.table.text_col = optarg; break;
        case O_HEADER:
            if (tbert_header_mode_parse(optarg, &o.input.table.header, &err)) return cli_report(&err);
            break;
        case O_QUIET: o.progress = false; break;
        case O_JSON: json = true; break;
        case O_THRESH: {
            char *end;
            double t = strtod(optarg, &end);
            if (end == optarg || *end || !(t >= 0 && t <= 1))
                return cli_usage_error(CMD, "--threshold takes a VALUE from 0 to 1 here, got '%s' (the rules f1 and fpr=X "
                                            "need validation data: choose them in tbert train)", optarg);
            o.have_threshold = true;
            o.threshold = t;
            break;
        }
        case O_UNSURE: {
            char *end;
            double lo = strtod(optarg, &end), hi = 0;
            bool ok = end != optarg && *end == ',';
            if (ok) {
                const char *q = end + 1;
                hi = strtod(q, &end);
                ok = end != q && !*end && lo >= 0 && lo <= hi && hi <= 1;
            }
            if (!ok) return cli_usage_error(CMD, "--unsure expects LOW,HIGH with 0 <= LOW <= HIGH <= 1, got '%s'", optarg);
            o.have_unsure = true;
            o.unsure_lo = lo;
            o.unsure_hi = hi;
            break;
        }
        case O_EXPORT: o.export_features = optarg; break;
        case O_HELP: usage(stdout); return CLI_OK;
        default: return CLI_USAGE;
        }
    }
    if (!head) return cli_usage_error(CMD, "--head CKPT_DIR is required");
    if (optind >= argc) return cli_usage_error(CMD, "no INPUT given (mbox, Maildir, folder, message file, table or -)");
    if (json && (!o.out_path || !strcmp(o.out_path, "-")))
        return cli_usage_error(CMD, "--json prints on stdout, so the records need --out FILE");
    if (o.export_features && o.resume)
        return cli_usage_error(CMD, "--export-features writes the rows of one whole run; it cannot --resume");
    if (o.export_features) {
        size_t el = strlen(o.export_features);
        if (el < 5 || strcmp(o.export_features + el - 4, ".npz"))
            return cli_usage_error(CMD, "--export-features expects a FILE.npz, got '%s'", o.export_features);
    }
    o.kill_at_record = tbert_kill_at_record();

    tbert_score_ctx ctx;
    if (tbert_score_ctx_open(model, head, device, o.threads, 0, !o.progress, &ctx, &err)) return cli_report(&err);
    const tbert_recipe *rec = tbert_classifier_recipe(ctx.clf);
    if ((o.have_threshold || o.have_unsure) && (rec->n_labels != 2 || rec->positive < 0)) {
        tbert_score_ctx_close(&ctx);
        return cli_usage_error(CMD, "--threshold and --unsure need a binary head; %s has %d labels", head, rec->n_labels);
    }
    if (tbert_score_sidecar(head, ctx.clf, &o, &err)) {
        tbert_score_ctx_close(&ctx);
        return cli_report(&err);
    }
    tbert_score_stats stats;
    tbert_status st = tbert_score_run(ctx.clf, ctx.fz, (const char *const *)argv + optind, argc - optind, &o, &stats, &err);
    tbert_score_ctx_close(&ctx);
    if (st) return cli_report(&err);
    fprintf(stderr, "tbert score: %llu records (%llu with errors)%s in %.1f s, %.1f records/s, %.1f MB/s\n",
            (unsigned long long)stats.records, (unsigned long long)stats.errors,
            stats.skipped_done ? ", the others already done" : "", stats.seconds,
            stats.seconds > 0 ? (double)stats.records / stats.seconds : 0.0,
            stats.seconds > 0 ? (double)stats.bytes / 1e6 / stats.seconds : 0.0);
    if (o.progress)
        fprintf(stderr,
                "tbert score: time on the scoring thread: featurize (tokenize + encode) %.2f s, head %.2f s, write %.2f s, "
                "waiting for input %.2f s; MIME parsing %.2f s summed over %d thread%s\n",
                stats.featurize_seconds, stats.head_seconds, stats.write_seconds, stats.wait_seconds, stats.parse_seconds,
                o.threads > 0 ? o.threads : tbert_num_cores(), (o.threads > 0 ? o.threads : tbert_num_cores()) == 1 ? "" : "s");
    if (stats.records == 0 && stats.skipped_done == 0)
        fprintf(stderr, "tbert score: the inputs hold no messages or rows (empty folder or file?)\n");
    if (stats.skipped_done)
        fprintf(stderr, "tbert score: --resume skipped %llu items already in the output\n", (unsigned long long)stats.skipped_done);
    if (json) {
        double sec = stats.seconds > 0 ? stats.seconds : 1e-9;
        printf("{\"records\": %llu, \"errors\": %llu, \"skipped_done\": %llu, \"input_bytes\": %llu, \"seconds\": %.3f, "
               "\"records_per_s\": %.2f, \"mb_per_s\": %.3f, \"featurize_seconds\": %.3f, \"head_seconds\": %.3f, "
               "\"write_seconds\": %.3f, \"wait_seconds\": %.3f, \"parse_seconds\": %.3f}\n",
               (unsigned long long)stats.records, (unsigned long long)stats.errors, (unsigned long long)stats.skipped_done,
               (unsigned long long)stats.bytes, stats.seconds, (double)stats.records / sec, (double)stats.bytes / 1e6 / sec,
               stats.featurize_seconds, stats.head_seconds, stats.write_seconds, stats.wait_seconds, stats.parse_seconds);
        fflush(stdout);
    }
    return CLI_OK;
}
