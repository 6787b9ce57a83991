/* tbert embed: texts (stdin lines or a table's text column) -> feature matrix (.npy or raw float32).
 * Exactly one row per input line (empty lines included), in input order. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "encoder_common.h"
#include "tbert/dataset.h"
#include "tbert/encoder.h"
#include "tbert/fileio.h"
#include "tbert/finetune.h"
#include "tbert/model.h"
#include "tbert/progress.h"

static const char *const CMD = "embed";

static void usage(FILE *f) {
    fprintf(f,
            "usage: tbert embed [options] < texts.txt > features.npy\n"
            "\n"
            "Encodes texts with the frozen encoder and writes the feature matrix: one row per input line\n"
            "(empty lines included), in input order. Sequences are sorted by length and batched with dynamic\n"
            "padding internally; results come back in input order.\n"
            "\n"
            "input (one of):\n"
            "  (stdin)                 one text per line\n"
            "  --data FILE             a table (TSV/CSV/JSONL); texts from its text column\n"
            "  --text-col COL          header name or number from 1 (default: 2 for TSV/CSV, \"text\" for JSONL)\n"
            "  --label-col COL|none    the label column (default 1 for TSV/CSV, none for JSONL); it is not read, but\n"
            "                          --header auto looks at it (as train/eval do); give none for a table of\n"
            "                          texts only\n"
            "  --input-format F        tsv|csv|jsonl|auto (default auto)\n"
            "  --header H              auto|yes|no (default auto)\n"
            "\n"
            "encoder:\n"
            "  --model NAME|DIR        model name in $TBERT_CACHE/models or a model folder (default minilm)\n"
            "  --head CKPT_DIR         encode with the encoder a head fine-tuned (tbert train --finetune K): its\n"
            "                          tensors laid over --model, the base it was fine-tuned from (a head with a\n"
            "                          frozen encoder changes nothing)\n"
            "  --pool P                mean|cls|flatten|pooler (default mean); flatten gives max_len x hidden\n"
            "                          values per row, zero beyond the text's length\n"
            "  --normalize             L2-normalise each row (mean + --normalize = sentence-transformers)\n"
            "  --max-len N             tokens per text incl. [CLS]/[SEP]; longer texts are truncated\n"
            "                          (default 128, or the model's maximum when smaller)\n"
            "  --layers K              use only the first K encoder layers (default: all)\n"
            "  --batch N               sequences per forward batch (default: 16 per CPU thread, at least 32;\n"
            "                          256 on CUDA)\n"
            "  --device D              auto|cpu|cuda|cuda:N (default auto)\n"
            "  --precision P           fp32|tf32|bf16 (default fp32; tf32 CUDA only; bf16 on the CPU: AMX where present)\n"
            "  --threads N             CPU threads (default: all cores)\n"
            "\n"
            "output:\n"
            "  --format F              npy (NumPy .npy v1.0, float32, C order, shape (rows, dim); default)\n"
            "                          or f32 (raw little-endian float32, rows back to back)\n"
            "  --out FILE              output file, written atomically (default: stdout)\n"
            "  --quiet                 no progress or info lines on stderr\n"
            "  --help                  this text\n");
}

typedef struct {
    const char *model, *head, *data, *text_col, *label_col, *input_format, *header, *out, *device, *precision;
    tbert_pool pool;
    bool normalize, npy, quiet;
    long max_len, layers, batch, threads;
} embed_args;

/* Output sink: an atomic temp file for a regular --out, else direct writes (stdout, pipe, /dev/null). */
typedef struct {
    tbert_atomic_file *af;
    FILE *fp;
    const char *name;
} sink;

static tbert_status sink_write(sink *s, const void *p, size_t n, tbert_error *err) {
    if (s->af) return tbert_atomic_write(s->af, p, n, err);
    if (n && fwrite(p, 1, n, s->fp) != n) return tbert_fail(err, TBERT_E_IO, "%s: write failed", s->name);
    return TBERT_OK;
}

static tbert_status sink_close(sink *s, bool ok, tbert_error *err) {
    if (s->af) {
        if (ok) return tbert_atomic_commit(s->af, err);
        tbert_atomic_abort(s->af);
        return TBERT_OK;
    }
    if (fflush(s->fp) != 0 && ok) return tbert_fail(err, TBERT_E_IO, "%s: write failed", s->name);
    return TBERT_OK;
}

/* NumPy format 1.0: magic, version, header length (LE u16), a dict padded with spaces to a 64-byte
 * boundary and ended by '\n'. */
static tbert_status write_npy_header(sink *s, size_t rows, size_t cols, tbert_error *err) {
    char dict[256];
    int n = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (%zu, %zu), }", rows, cols);
    size_t total = 10 + (size_t)n + 1;
    size_t padded = (total + 63) / 64 * 64;
    size_t hlen = padded - 10;
    unsigned char hdr[10 + 256];
    memcpy(hdr, "\x93NUMPY\x01\x00", 8);
    hdr[8] = (unsigned char)(hlen & 0xff);
    hdr[9] = (unsigned char)(hlen >> 8);
    memcpy(hdr + 10, dict, (size_t)n);
    memset(hdr + 10 + n, ' ', hlen - (size_t)n - 1);
    hdr[padded - 1] = '\n';
    return sink_write(s, hdr, padded, err);
}

/* Splits stdin into lines: a final line without '\n' counts; a trailing '\r' is kept (whitespace to
 * the tokenizer). */
static tbert_status read_stdin_lines(char **buf_out, char ***text, size_t **len, int *n, tbert_error *err) {
    size_t cap = 1 << 16, used = 0;
    char *buf = malloc(cap);
    if (!buf) return tbert_fail(err, TBERT_E_NOMEM, "stdin: out of memory");
    for (;;) {
        if (used == cap) {
            char *nb = cap > SIZE_MAX / 2 ? NULL : realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                return tbert_fail(err, TBERT_E_NOMEM, "stdin: out of memory");
            }
            buf = nb, cap *= 2;
        }
        ssize_t r = read(STDIN_FILENO, buf + used, cap - used);
        if (r < 0) {
            free(buf);
            return tbert_fail(err, TBERT_E_IO, "stdin: read failed");
        }
        if (r == 0) break;
        used += (size_t)r;
    }
    size_t lines = 0;
    for (size_t i = 0; i < used; i++) lines += buf[i] == '\n';
    if (used && buf[used - 1] != '\n') lines++;
    if (lines > (size_t)INT32_MAX) {
        free(buf);
        return tbert_fail(err, TBERT_E_ARG, "stdin: too many lines");
    }
    char **t = tbert_malloc_array(lines ? lines : 1, sizeof *t);
    size_t *l = tbert_malloc_array(lines ? lines : 1, sizeof *l);
    if (!t || !l) {
        free(buf), free(t), free(l);
        return tbert_fail(err, TBERT_E_NOMEM, "stdin: out of memory");
    }
    size_t k = 0, start = 0;
    for (size_t i = 0; i < used; i++)
        if (buf[i] == '\n') {
            t[k] = buf + start, l[k] = i - start, k++;
            start = i + 1;
        }
    if (start < used) t[k] = buf + start, l[k] = used - start, k++;
    *buf_out = buf, *text = t, *len = l, *n = (int)k;
    return TBERT_OK;
}

enum { CHUNK = 4096 }; /* texts tokenized and encoded per round; bounds memory for big inputs */

static tbert_status embed_all(const embed_args *a, tbert_model *m, tbert_encoder *enc, char **text, size_t *len,
                              int n, sink *out, tbert_error *err) {
    size_t dim = tbert_pool_dim(m, a->pool, (int)a->max_len);
    tbert_status st = TBERT_OK;
    if (a->npy) st = write_npy_header(out, (size_t)n, dim, err);
    int chunk = n < CHUNK ? (n > 0 ? n : 1) : CHUNK;
    tbert_i32vec *ids = calloc((size_t)chunk, sizeof *ids);
    const int32_t **seqs = tbert_malloc_array((size_t)chunk, sizeof *seqs);
    int *lens = tbert_malloc_array((size_t)chunk, sizeof *lens);
    float *feat = tbert_malloc_array((size_t)chunk, dim * sizeof *feat);
    if (!ids || !seqs || !lens || !feat) st = st ? st : tbert_fail(err, TBERT_E_NOMEM, "embed: out of memory");
    tbert_progress *prog = a->quiet ? NULL : tbert_progress_start("embed", (uint64_t)n, "texts", TBERT_PROGRESS_AUTO);
    for (int start = 0; !st && start < n; start += chunk) {
        int c = n - start < chunk ? n - start : chunk;
        for (int i = 0; !st && i < c; i++) {
            st = tbert_encode(m->vocab, text[start + i], len[start + i], (int)a->max_len, &ids[i], err);
            seqs[i] = ids[i].v, lens[i] = (int)ids[i].n;
        }
        if (!st) st = tbert_encoder_pool(enc, c, seqs, lens, (int)a->max_len, a->pool, a->normalize, feat, err);
        if (!st) st = sink_write(out, feat, (size_t)c * dim * sizeof *feat, err);
        tbert_progress_update(prog, (uint64_t)(start + c), NULL);
    }
    if (prog) tbert_progress_finish(prog, NULL);
    for (int i = 0; ids && i < chunk; i++) tbert_i32vec_free(&ids[i]);
    free(ids), free(seqs), free(lens), free(feat);
    return st;
}

/* The format a table will be read as (for the default label column): --input-format, else the extension
 * or the first line. An unreadable file is left to tbert_table_read to report. */
static tbert_table_format table_format(const char *path, tbert_table_format given) {
    if (given != TBERT_TABLE_AUTO) return given;
    char line[4096];
    size_t n = 0;
    FILE *f = fopen(path, "rb");
    if (f) {
        n = fread(line, 1, sizeof line, f);
        fclose(f);
    }
    const char *nl = memchr(line, '\n', n);
    return tbert_table_detect(path, line, nl ? (size_t)(nl - line) : n);
}

static int parse_args(int argc, char **argv, embed_args *a) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},     {"data", required_argument, 0, 'd'},
        {"text-col", required_argument, 0, 'c'},  {"input-format", required_argument, 0, 'F'},
        {"label-col", required_argument, 0, 'l'},
        {"header", required_argument, 0, 'H'},    {"pool", required_argument, 0, 'p'},
        {"normalize", no_argument, 0, 'n'},       {"max-len", required_argument, 0, 'L'},
        {"layers", required_argument, 0, 'k'},    {"batch", required_argument, 0, 'b'},
        {"device", required_argument, 0, 'D'},    {"precision", required_argument, 0, 'P'},
        {"threads", required_argument, 0, 't'},   {"format", required_argument, 0, 'f'},
        {"out", required_argument, 0, 'o'},       {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},            {"head", required_argument, 0, 'E'},
        {0, 0, 0, 0},
    };
    *a = (embed_args){.device = "auto", .precision = "fp32", .npy = true};
    tbert_error err;
    int c;
    while ((c = cli_getopt(CMD, argc, argv, "", opts)) != -1) {
        switch (c) {
        case 'm': a->model = optarg; break;
        case 'E': a->head = optarg; break;
        case 'd': a->data = optarg; break;
        case 'c': a->text_col = optarg; break;
        case 'l': a->label_col = optarg; break;
        case 'F': a->input_format = optarg; break;
        case 'H': a->header = optarg; break;
        case 'p':
            if (tbert_pool_parse(optarg, &a->pool, &err)) return cli_usage_error(CMD, "%s", err.msg);
            break;
        case 'n': a->normalize = true; break;
        case 'L':
            if (!cli_parse_int(CMD, "--max-len", optarg, 2, 1 << 20, &a->max_len)) return CLI_USAGE;
            break;
        case 'k':
            if (!cli_parse_int(CMD, "--layers", optarg, 1, 1 << 16, &a->layers)) return CLI_USAGE;
            break;
        case 'b':
            if (!cli_parse_int(CMD, "--batch", optarg, 1, 1 << 16, &a->batch)) return CLI_USAGE;
            break;
        case 'D': a->device = optarg; break;
        case 'P': a->precision = optarg; break;
        case 't':
            if (!cli_parse_int(CMD, "--threads", optarg, 1, 1024, &a->threads)) return CLI_USAGE;
            break;
        case 'f':
            if (!strcmp(optarg, "npy")) a->npy = true;
            else if (!strcmp(optarg, "f32")) a->npy = false;
            else return cli_usage_error(CMD, "--format: expected npy or f32, got '%s'", optarg);
            break;
        case 'o': a->out = optarg; break;
        case 'q': a->quiet = true; break;
        case 'h': usage(stdout); return -1;
        default: return CLI_USAGE;
        }
    }
    if (optind < argc) return cli_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
    if (!a->data && (a->text_col || a->label_col || a->input_format || a->header))
        return cli_usage_error(CMD, "--text-col, --label-col, --input-format and --header need --data FILE");
    return CLI_OK;
}

int cmd_embed(int argc, char **argv) {
    embed_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc < 0 ? CLI_OK : rc;

    tbert_encoder_opts eo;
    if ((rc = cli_encoder_opts(CMD, a.device, a.precision, a.threads, a.layers, a.batch, a.quiet, &eo))) return rc;
    tbert_error err = {0};
    tbert_table_opts to = {.text_col = a.text_col, .label_col = a.label_col};
    if (a.input_format && tbert_table_format_parse(a.input_format, &to.format, &err))
        return cli_usage_error(CMD, "%s", err.msg);
    if (a.data && !a.label_col && table_format(a.data, to.format) == TBERT_TABLE_JSONL) to.label_col = "none";
    if (a.header && tbert_header_mode_parse(a.header, &to.header, &err)) return cli_usage_error(CMD, "%s", err.msg);

    char dir[4096];
    tbert_model *m = NULL;
    tbert_encoder *enc = NULL;
    tbert_table tab = {0};
    char *stdin_buf = NULL, **text = NULL;
    size_t *len = NULL;
    int n = 0;
    bool from_table = false;
    sink out = {.fp = stdout, .name = a.out ? a.out : "stdout"};
    tbert_status st = tbert_resolve_model_dir(a.model, dir, sizeof dir, &err);
    if (!st) st = tbert_model_load(dir, &m, &err);
    if (!st && a.head) { /* a fine-tuned head's encoder: its tensors over the base model */
        tbert_classifier *clf = NULL;
        st = tbert_classifier_load(a.head, m, &clf, &err);
        if (!st) st = tbert_model_apply_finetune(m, a.head, tbert_classifier_recipe(clf), &err);
        tbert_classifier_free(clf);
    }
    if (!st && a.max_len == 0) a.max_len = m->cfg.max_position < 128 ? m->cfg.max_position : 128;
    if (!st && a.max_len > m->cfg.max_position)
        st = tbert_fail(&err, TBERT_E_ARG, "--max-len %ld: %s allows at most %d positions", a.max_len, dir,
                        m->cfg.max_position);
    if (!st) st = cli_check_pooler(m, a.pool, dir, &err);
    if (!st) st = tbert_encoder_create(m, &eo, &enc, &err);
    if (!st && a.data) {
        st = tbert_table_read(a.data, &to, &tab, &err);
        if (!st) text = tab.text, len = tab.text_len, n = tab.n, from_table = true;
        size_t used = strlen(err.msg);
        if (st == TBERT_E_FORMAT && !a.label_col && used + 64 < sizeof err.msg)
            snprintf(err.msg + used, sizeof err.msg - used, " (a table of texts only? add --label-col none)");
    } else if (!st) {
        if (isatty(STDIN_FILENO) && !a.quiet) fprintf(stderr, "tbert embed: reading texts from the terminal (one per line, end with Ctrl-D)\n");
        st = read_stdin_lines(&stdin_buf, &text, &len, &n, &err);
    }
    if (!st && a.out && strcmp(a.out, "-")) {
        if (tbert_is_regular_file(a.out) || access(a.out, F_OK) != 0) {
            st = tbert_atomic_open(a.out, &out.af, &err);
        } else {
            out.fp = fopen(a.out, "wb");
            if (!out.fp) st = tbert_fail(&err, TBERT_E_IO, "%s: cannot open for writing", a.out);
        }
    }
    if (!st) st = embed_all(&a, m, enc, text, len, n, &out, &err);
    if (out.fp || out.af) {
        tbert_status cs = sink_close(&out, st == TBERT_OK, &err);
        if (!st) st = cs;
        if (out.fp && out.fp != stdout) fclose(out.fp);
    }
    if (!st && !a.quiet)
        fprintf(stderr, "tbert embed: %d rows x %zu (%s%s) -> %s\n", n, tbert_pool_dim(m, a.pool, (int)a.max_len),
                tbert_pool_name(a.pool), a.normalize ? ", normalized" : "", out.name);
    if (from_table) tbert_table_free(&tab);
    else free(text), free(len), free(stdin_buf);
    tbert_encoder_free(enc);
    tbert_model_free(m);
    return st ? cli_report(&err) : CLI_OK;
}
