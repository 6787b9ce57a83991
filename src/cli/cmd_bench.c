/* tbert bench: encoder forward throughput (sequences/s, tokens/s, GFLOP/s, peak RSS), on a real corpus
 * (length-sorted batches, as tbert embed runs them) or on synthetic fixed-length batches; weights from a
 * model folder or random weights for any config.json (benchmark shapes without a weights file). */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "cli.h"
#include "encoder_common.h"
#include "tbert/dataset.h"
#include "tbert/encoder.h"
#include "tbert/fileio.h"
#include "tbert/model.h"

static const char *const CMD = "bench";

static void usage(FILE *f) {
    fprintf(f,
            "usage: tbert bench [options]\n"
            "\n"
            "Times the encoder forward pass plus pooling (tokenization excluded) and prints sequences/s,\n"
            "tokens/s (real tokens, padding not counted), GFLOP/s (matrix products and attention of the real\n"
            "tokens) and peak RSS; on the CPU also the sgemm GFLOP/s of the same threads, measured in the same run.\n"
            "\n"
            "weights:\n"
            "  --model NAME|DIR          model folder or name (default minilm)\n"
            "  --random-weights CONFIG   random weights for a config.json instead (no weights file needed)\n"
            "  --seed N                  seed of the random weights and ids (default 42)\n"
            "workload (synthetic unless --data):\n"
            "  --batch N                 sequences per batch (default 32)\n"
            "  --seq-len T               synthetic: every sequence has T tokens (default 128)\n"
            "  --iters N                 synthetic: timed batches (default 20); corpus: timed passes (default 1)\n"
            "  --warmup N                untimed batches first (default 2)\n"
            "  --data FILE               corpus: texts of a table (TSV/CSV/JSONL), tokenized with the model's\n"
            "                            vocabulary, truncated to --max-len, sorted by length, batched\n"
            "  --text-col COL            text column (default: 2 for TSV/CSV, \"text\" for JSONL)\n"
            "  --limit N                 corpus: only the first N texts\n"
            "  --max-len N               corpus: tokens per text incl. [CLS]/[SEP] (default 128)\n"
            "  --fixed-padding           corpus: pad every batch to --max-len (default: to its longest text)\n"
            "  --pool P                  mean|cls|flatten|pooler (default mean)\n"
            "encoder:\n"
            "  --device D                auto|cpu|cuda|cuda:N (default auto)\n"
            "  --precision P             fp32|tf32|bf16 (default fp32; tf32 CUDA only; bf16 on the CPU: AMX where present)\n"
            "  --threads N               CPU threads (default: all cores)\n"
            "  --layers K                first K layers only\n"
            "output:\n"
            "  --no-sgemm                skip the sgemm reference measurement\n"
            "  --json                    one JSON object on stdout\n"
            "  --help                    this text\n");
}

typedef struct {
    const char *model, *random_cfg, *data, *text_col, *device, *precision;
    long batch, seq_len, iters, warmup, limit, max_len, threads, layers, seed;
    tbert_pool pool;
    bool fixed_padding, no_sgemm, json, iters_set;
} bench_args;

typedef struct {
    int n;             /* sequences */
    int32_t **ids;     /* n rows */
    int *len;          /* n */
} workload;

static void workload_free(workload *w) {
    for (int i = 0; w->ids && i < w->n; i++) free(w->ids[i]);
    free(w->ids);
    free(w->len);
}

static int parse_args(int argc, char **argv, bench_args *a) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},   {"random-weights", required_argument, 0, 'r'},
        {"seed", required_argument, 0, 'S'},    {"batch", required_argument, 0, 'b'},
        {"seq-len", required_argument, 0, 's'}, {"iters", required_argument, 0, 'i'},
        {"warmup", required_argument, 0, 'w'},  {"data", required_argument, 0, 'd'},
        {"text-col", required_argument, 0, 'c'}, {"limit", required_argument, 0, 'l'},
        {"max-len", required_argument, 0, 'L'}, {"fixed-padding", no_argument, 0, 'x'},
        {"pool", required_argument, 0, 'p'},    {"device", required_argument, 0, 'D'},
        {"precision", required_argument, 0, 'P'}, {"threads", required_argument, 0, 't'},
        {"layers", required_argument, 0, 'k'},  {"no-sgemm", no_argument, 0, 'n'},
        {"json", no_argument, 0, 'j'},          {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    *a = (bench_args){.device = "auto", .precision = "fp32", .batch = 32, .seq_len = 128, .iters = 20, .warmup = 2,
                      .max_len = 128, .seed = 42};
    tbert_error err;
    int c;
    while ((c = cli_getopt(CMD, argc, argv, "", opts)) != -1) {
        long *num = NULL;
        const char *name = NULL;
        long lo = 1, hi = 1L << 30;
        switch (c) {
        case 'm': a->model = optarg; break;
        case 'r': a->random_cfg = optarg; break;
        case 'd': a->data = optarg; break;
        case 'c': a->text_col = optarg; break;
        case 'D': a->device = optarg; break;
        case 'P': a->precision = optarg; break;
        case 'x': a->fixed_padding = true; break;
        case 'n': a->no_sgemm = true; break;
        case 'j': a->json = true; break;
        case 'p':
            if (tbert_pool_parse(optarg, &a->pool, &err)) return cli_usage_error(CMD, "%s", err.msg);
            break;
        case 'S': num = &a->seed, name = "--seed", lo = 0; break;
        case 'b': num = &a->batch, name = "--batch", hi = 1 << 16; break;
        case 's': num = &a->seq_len, name = "--seq-len", hi = 1 << 16; break;
        case 'i': num = &a->iters, name = "--iters", a->iters_set = true; break;
        case 'w': num = &a->warmup, name = "--warmup", lo = 0; break;
        case 'l': num = &a->limit, name = "--limit"; break;
        case 'L': num = &a->max_len, name = "--max-len", lo = 2, hi = 1 << 16; break;
        case 't': num = &a->threads, name = "--threads", hi = 1024; break;
        case 'k': num = &a->layers, name = "--layers", hi = 1 << 16; break;
        case 'h': usage(stdout); return -1;
        default: return CLI_USAGE;
        }
        if (num && !cli_parse_int(CMD, name, optarg, lo, hi, num)) return CLI_USAGE;
    }
    if (optind < argc) return cli_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
    if (a->model && a->random_cfg) return cli_usage_error(CMD, "--model and --random-weights exclude each other");
    if (a->data && a->random_cfg) return cli_usage_error(CMD, "--data needs a model folder (its vocabulary), not --random-weights");
    if (!a->data && (a->text_col || a->limit || a->fixed_padding))
        return cli_usage_error(CMD, "--text-col, --limit and --fixed-padding need --data FILE");
    if (a->data && !a->iters_set) a->iters = 1;
    return CLI_OK;
}

static tbert_status synthetic_workload(const bench_args *a, const tbert_model *m, workload *w, tbert_error *err) {
    if (a->seq_len > m->cfg.max_position)
        return tbert_fail(err, TBERT_E_ARG, "--seq-len %ld: the model allows %d positions", a->seq_len,
                          m->cfg.max_position);
    w->n = (int)a->batch;
    w->ids = calloc((size_t)w->n, sizeof *w->ids);
    w->len = calloc((size_t)w->n, sizeof *w->len);
    if (!w->ids || !w->len) return tbert_fail(err, TBERT_E_NOMEM, "bench: out of memory");
    uint64_t s = (uint64_t)a->seed * 0x9e3779b97f4a7c15ULL + 1;
    for (int i = 0; i < w->n; i++) {
        w->len[i] = (int)a->seq_len;
        if (!(w->ids[i] = malloc((size_t)a->seq_len * sizeof *w->ids[i])))
            return tbert_fail(err, TBERT_E_NOMEM, "bench: out of memory");
        for (long t = 0; t < a->seq_len; t++) {
            s = s * 6364136223846793005ULL + 1442695040888963407ULL;
            w->ids[i][t] = (int32_t)((s >> 33) % (uint64_t)m->cfg.vocab_size);
        }
    }
    return TBERT_OK;
}

static tbert_status corpus_workload(const bench_args *a, const tbert_model *m, workload *w, tbert_error *err) {
    if (a->max_len > m->cfg.max_position)
        return tbert_fail(err, TBERT_E_ARG, "--max-len %ld: the model allows %d positions", a->max_len,
                          m->cfg.max_position);
    tbert_table tab;
    tbert_table_opts to = {.text_col = a->text_col, .label_col = "none"};
    tbert_status st = tbert_table_read(a->data, &to, &tab, err);
    if (st) return st;
    w->n = a->limit && a->limit < tab.n ? (int)a->limit : tab.n;
    w->ids = calloc((size_t)(w->n ? w->n : 1), sizeof *w->ids);
    w->len = calloc((size_t)(w->n ? w->n : 1), sizeof *w->len);
    if (!w->ids || !w->len) st = tbert_fail(err, TBERT_E_NOMEM, "bench: out of memory");
    tbert_i32vec v = {0};
    for (int i = 0; !st && i < w->n; i++) {
        st = tbert_encode(m->vocab, tab.text[i], tab.text_len[i], (int)a->max_len, &v, err);
        if (st) break;
        w->len[i] = (int)v.n;
        if (!(w->ids[i] = malloc(v.n * sizeof *v.v))) st = tbert_fail(err, TBERT_E_NOMEM, "bench: out of memory");
        else memcpy(w->ids[i], v.v, v.n * sizeof *v.v);
    }
    tbert_i32vec_free(&v);
    tbert_table_free(&tab);
    if (!st && w->n == 0) st = tbert_fail(err, TBERT_E_ARG, "%s: no texts", a->data);
    return st;
}

typedef struct {
    int len, idx;
} len_idx;

static int cmp_len_idx(const void *x, const void *y) {
    const len_idx *p = x, *q = y;
    return p->len != q->len ? (p->len < q->len ? -1 : 1) : (p->idx > q->idx) - (p->idx < q->idx);
}

typedef struct {
    double seconds, cpu_seconds, tokens, padded_tokens, flops;
    long sequences, batches;
} bench_result;

static double cpu_seconds(void);

/* Runs the batches of the workload (sorted by length, as tbert_encoder_pool does) `passes` times (or
 * `max_batches` batches when > 0) and times them. */
static tbert_status run_batches(tbert_encoder *enc, const bench_args *a, const workload *w, long passes,
                                long max_batches, bench_result *res, tbert_error *err) {
    const tbert_model *m = tbert_encoder_model(enc);
    int B = (int)a->batch, out_T = a->data ? (int)a->max_len : (int)a->seq_len;
    size_t dim = tbert_pool_dim(m, a->pool, out_T);
    len_idx *order = tbert_malloc_array((size_t)w->n, sizeof *order);
    int32_t *ids = tbert_malloc_array((size_t)B * (size_t)out_T, sizeof *ids);
    int32_t *lens = tbert_malloc_array((size_t)B, sizeof *lens);
    float *out = tbert_malloc_array((size_t)B, dim * sizeof *out);
    tbert_status st = TBERT_OK;
    if (!order || !ids || !lens || !out) st = tbert_fail(err, TBERT_E_NOMEM, "bench: out of memory");
    for (int i = 0; !st && i < w->n; i++) order[i] = (len_idx){w->len[i], i};
    if (!st) qsort(order, (size_t)w->n, sizeof *order, cmp_len_idx);
    int layers = tbert_encoder_get_opts(enc).layers;
    *res = (bench_result){0};
    double t0 = tbert_now(), c0 = cpu_seconds();
    long done = 0;
    for (long p = 0; !st && p < passes; p++) {
        for (int start = 0; !st && start < w->n; start += B) {
            if (max_batches > 0 && done >= max_batches) break;
            int nb = w->n - start < B ? w->n - start : B;
            int T = a->fixed_padding || !a->data ? out_T : order[start + nb - 1].len;
            for (int b = 0; b < nb; b++) {
                const len_idx *s = &order[start + b];
                memcpy(ids + (size_t)b * T, w->ids[s->idx], (size_t)s->len * sizeof *ids);
                for (int t = s->len; t < T; t++) ids[(size_t)b * T + t] = m->cfg.pad_token_id;
                lens[b] = s->len;
                res->tokens += s->len;
                res->flops += tbert_encoder_flops(&m->cfg, layers, s->len);
            }
            res->padded_tokens += (double)nb * T;
            st = tbert_encoder_pool_batch(enc, nb, T, ids, lens, a->pool, out_T, false, out, err);
            res->sequences += nb;
            done++;
        }
        if (max_batches > 0 && done >= max_batches) break;
    }
    res->seconds = tbert_now() - t0;
    res->cpu_seconds = cpu_seconds() - c0;
    res->batches = done;
    free(order), free(ids), free(lens), free(out);
    return st;
}

/* GFLOP/s of C[M,N] = A[M,K] B[N,K]^T with `threads` OpenBLAS threads, over about `secs` seconds. */
static double sgemm_gflops(int M, int N, int K, int threads, double secs) {
    float *A = malloc((size_t)M * K * sizeof *A), *Bm = malloc((size_t)N * K * sizeof *Bm);
    float *C = malloc((size_t)M * N * sizeof *C);
    double g = 0.0;
    if (A && Bm && C) {
        for (size_t i = 0; i < (size_t)M * K; i++) A[i] = (float)(i % 13) * 0.01f;
        for (size_t i = 0; i < (size_t)N * K; i++) Bm[i] = (float)(i % 7) * 0.01f;
        openblas_set_num_threads(threads);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, A, K, Bm, K, 0.0f, C, N);
        double t0 = tbert_now(), t;
        long it = 0;
        do {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, A, K, Bm, K, 0.0f, C, N);
            it++;
        } while ((t = tbert_now() - t0) < secs);
        g = 2.0 * M * N * K * it / t / 1e9;
    }
    free(A), free(Bm), free(C);
    return g;
}

static double cpu_seconds(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0.0;
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec * 1e-6;
}

static double peak_rss_mb(void) {
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? (double)ru.ru_maxrss / 1024.0 : 0.0;
}

int cmd_bench(int argc, char **argv) {
    bench_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc < 0 ? CLI_OK : rc;
    tbert_encoder_opts eo;
    if ((rc = cli_encoder_opts(CMD, a.device, a.precision, a.threads, a.layers, a.batch, a.json, &eo))) return rc;
    tbert_error err = {0};

    char dir[4096];
    tbert_model *m = NULL;
    tbert_encoder *enc = NULL;
    workload w = {0};
    tbert_status st;
    if (a.random_cfg) {
        tbert_config cfg;
        st = tbert_config_load(a.random_cfg, &cfg, &err);
        if (!st) st = tbert_model_random(&cfg, true, (uint64_t)a.seed, &m, &err);
        snprintf(dir, sizeof dir, "random weights for %s", a.random_cfg);
    } else {
        st = tbert_resolve_model_dir(a.model, dir, sizeof dir, &err);
        if (!st) st = tbert_model_load(dir, &m, &err);
    }
    if (!st) st = cli_check_pooler(m, a.pool, dir, &err);
    if (!st) st = tbert_encoder_create(m, &eo, &enc, &err);
    if (!st) st = a.data ? corpus_workload(&a, m, &w, &err) : synthetic_workload(&a, m, &w, &err);
    bench_result warm, res = {0};
    if (!st && a.warmup > 0) st = run_batches(enc, &a, &w, a.warmup, a.warmup, &warm, &err);
    /* synthetic: one batch per pass; corpus: all texts per pass */
    if (!st) st = run_batches(enc, &a, &w, a.iters, 0, &res, &err);
    if (st) {
        workload_free(&w);
        tbert_encoder_free(enc);
        tbert_model_free(m);
        return cli_report(&err);
    }
    tbert_encoder_opts used = tbert_encoder_get_opts(enc);
    bool cuda = tbert_encoder_is_cuda(enc);
    double sg_peak = 0, sg_ffn = 0;
    if (!cuda && !a.no_sgemm) {
        sg_peak = sgemm_gflops(2048, 2048, 2048, used.threads, 1.5);
        sg_ffn = sgemm_gflops(4096, m->cfg.intermediate, m->cfg.hidden, used.threads, 1.0);
    }
    double sps = res.sequences / res.seconds, tps = res.tokens / res.seconds, gf = res.flops / res.seconds / 1e9;
    const char *devname = cuda ? "cuda" : "cpu";
    const char *mode = a.data ? "corpus" : "synthetic";
    const char *padding = a.data ? (a.fixed_padding ? "fixed" : "dynamic") : "none";
    if (a.json) {
        printf("{\"engine\": \"tbert\", \"device\": \"%s\", \"precision\": \"%s\", \"threads\": %d, \"model\": \"%s\", "
               "\"layers\": %d, \"hidden\": %d, \"mode\": \"%s\", \"pool\": \"%s\", \"padding\": \"%s\", \"batch\": %ld, "
               "\"max_len\": %ld, \"sequences\": %ld, \"batches\": %ld, \"tokens\": %.0f, \"padded_tokens\": %.0f, "
               "\"gflop\": %.9g, \"seconds\": %.4f, \"cpu_seconds\": %.4f, \"sequences_per_s\": %.2f, \"tokens_per_s\": %.1f, \"gflops_per_s\": %.2f, "
               "\"sgemm_peak_gflops_per_s\": %.2f, \"sgemm_ffn_gflops_per_s\": %.2f, \"peak_rss_mb\": %.1f}\n",
               devname, tbert_precision_name(used.precision), cuda ? 0 : used.threads, dir, used.layers,
               m->cfg.hidden, mode, tbert_pool_name(a.pool), padding, a.batch, a.data ? a.max_len : a.seq_len,
               res.sequences, res.batches, res.tokens, res.padded_tokens, res.flops / 1e9, res.seconds, res.cpu_seconds, sps, tps, gf, sg_peak, sg_ffn,
               peak_rss_mb());
    } else {
        printf("model     %s (L%d H%d A%d I%d, %d layers used)\n", dir, m->cfg.layers, m->cfg.hidden, m->cfg.heads,
               m->cfg.intermediate, used.layers);
        if (cuda) printf("device    cuda:%d, precision %s\n", used.device.index, tbert_precision_name(used.precision));
        else printf("device    cpu, %d threads, fp32\n", used.threads);
        printf("workload  %s, %ld sequences in %ld batches of <= %ld, pool %s, padding %s, max_len %ld\n", mode,
               res.sequences, res.batches, a.batch, tbert_pool_name(a.pool), padding, a.data ? a.max_len : a.seq_len);
        printf("time      %.3f s (%.2f ms per batch), %.3f s of CPU time\n", res.seconds,
               1e3 * res.seconds / (double)res.batches, res.cpu_seconds);
        printf("throughput %.1f sequences/s, %.0f tokens/s (%.0f real of %.0f padded tokens)\n", sps, tps, res.tokens,
               res.padded_tokens);
        printf("compute   %.1f GFLOP/s", gf);
        if (sg_peak > 0)
            printf(" (sgemm 2048^3: %.1f GFLOP/s, %.0f%% of it; sgemm 4096x%dx%d: %.1f)", sg_peak, 100.0 * gf / sg_peak,
                   m->cfg.intermediate, m->cfg.hidden, sg_ffn);
        printf("\npeak RSS  %.1f MB\n", peak_rss_mb());
    }
    workload_free(&w);
    tbert_encoder_free(enc);
    tbert_model_free(m);
    return CLI_OK;
}
