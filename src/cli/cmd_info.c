/* tbert info: loads a model folder exactly as the encoder would (so it doubles as a validator) and shows
 * its config, parameter count, dtypes, tokenizer settings and the sha256 of its weights. */
#include <cjson/cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "tbert/cuda_plugin.h"
#include "tbert/fileio.h"
#include "tbert/model.h"
#include "tbert/safetensors.h"

static void usage(FILE *f) {
    fprintf(f, "usage: tbert info [--model NAME|DIR] [--json] [--backend]\n\n"
               "Loads and validates a Hugging Face BERT model folder (config.json, vocab.txt, model.safetensors)\n"
               "and prints its config, parameter count, dtypes, tokenizer settings and the sha256 of its weights,\n"
               "and which CUDA backend this tbert finds (the plugin libtbert_cuda.so, emulated or not, devices).\n\n"
               "  --model NAME|DIR  a name in $TBERT_CACHE/models (default: minilm) or a model folder\n"
               "  --json            print one JSON object on stdout\n"
               "  --backend         print only the CUDA backend (no model needed)\n"
               "  --help            this text\n");
}

#define MAX_LISTED 16

typedef struct {
    int count[TBERT_DT_COUNT];
    int total, unused;
    size_t file_bytes;
    char listed[MAX_LISTED][160]; /* the first unused tensors: "name (DTYPE [shape])" */
} file_summary;

static const char *const layer_parts[] = {
    "attention.self.query.weight", "attention.self.query.bias", "attention.self.key.weight", "attention.self.key.bias",
    "attention.self.value.weight", "attention.self.value.bias", "attention.output.dense.weight",
    "attention.output.dense.bias", "attention.output.LayerNorm.weight", "attention.output.LayerNorm.bias",
    "attention.output.LayerNorm.gamma", "attention.output.LayerNorm.beta", "intermediate.dense.weight",
    "intermediate.dense.bias", "output.dense.weight", "output.dense.bias", "output.LayerNorm.weight", "output.LayerNorm.bias",
    "output.LayerNorm.gamma", "output.LayerNorm.beta",
};

/* Whether the encoder reads this tensor (the names src/model.c looks up). */
static bool tensor_used(const tbert_model *m, const char *name, const char *prefix) {
    size_t pl = strlen(prefix);
    if (strncmp(name, prefix, pl) != 0) return false;
    name += pl;
    static const char *const top[] = {"embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
                                      "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight",
                                      "embeddings.LayerNorm.bias", "embeddings.LayerNorm.gamma", "embeddings.LayerNorm.beta"};
    for (size_t i = 0; i < sizeof top / sizeof top[0]; i++)
        if (!strcmp(name, top[i])) return true;
    if (m->pooler_w && (!strcmp(name, "pooler.dense.weight") || !strcmp(name, "pooler.dense.bias"))) return true;
    int layer, n = 0;
    if (sscanf(name, "encoder.layer.%d.%n", &layer, &n) != 1 || n == 0 || layer < 0 || layer >= m->cfg.layers) return false;
    for (size_t i = 0; i < sizeof layer_parts / sizeof layer_parts[0]; i++)
        if (!strcmp(name + n, layer_parts[i])) return true;
    return false;
}

static tbert_status summarize_file(const tbert_model *m, file_summary *fs, tbert_error *err) {
    memset(fs, 0, sizeof *fs);
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/model.safetensors", m->dir);
    tbert_safetensors *st;
    tbert_status s = tbert_st_open(path, &st, err);
    if (s) return s;
    const char *prefix = tbert_st_find(st, "bert.embeddings.word_embeddings.weight") ? "bert." : "";
    fs->total = tbert_st_count(st);
    for (int i = 0; i < fs->total; i++) {
        const tbert_st_tensor *t = tbert_st_at(st, i);
        fs->count[t->dtype]++;
        if (tensor_used(m, t->name, prefix)) continue;
        if (fs->unused < MAX_LISTED) {
            char *b = fs->listed[fs->unused];
            size_t cap = sizeof fs->listed[0];
            int pos = snprintf(b, cap, "%.100s (%s [", t->name, tbert_dtype_name(t->dtype));
            for (int d = 0; d < t->ndim && pos > 0 && (size_t)pos < cap; d++)
                pos += snprintf(b + pos, cap - (size_t)pos, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
            if (pos > 0 && (size_t)pos < cap) snprintf(b + pos, cap - (size_t)pos, "])");
        }
        fs->unused++;
    }
    tbert_st_bytes(st, &fs->file_bytes);
    tbert_st_close(st);
    return TBERT_OK;
}

/* "cuda: plugin PATH: NAME[, emulated], N device(s)[: REASON]" or "cuda: none (REASON); --device auto uses the CPU" */
static void print_backend_text(const tbert_cuda_probe_info *b) {
    if (!b->loaded) printf("cuda:         none (%s); --device auto uses the CPU\n", b->why);
    else
        printf("cuda:         plugin %s: %s%s, %d device(s)%s%s\n", b->path, b->name, b->emulated ? ", emulated" : "",
               b->devices, b->why[0] ? ": " : "", b->why);
}

static cJSON *backend_json(const tbert_cuda_probe_info *b) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "backend", !b->loaded ? "none" : b->emulated ? "emulated" : "cuda");
    if (b->loaded) cJSON_AddStringToObject(o, "plugin", b->path);
    else cJSON_AddNullToObject(o, "plugin");
    if (b->loaded) cJSON_AddStringToObject(o, "name", b->name);
    cJSON_AddBoolToObject(o, "emulated", b->emulated);
    cJSON_AddNumberToObject(o, "devices", b->devices);
    if (b->why[0]) cJSON_AddStringToObject(o, "reason", b->why);
    return o;
}

static const char *strip_name(int v) { return v < 0 ? "follows lowercase" : v ? "yes" : "no"; }

static void print_text(const tbert_model *m, const file_summary *fs) {
    const tbert_config *c = &m->cfg;
    printf("model:        %s\n", m->dir);
    printf("config:       vocab_size %d, hidden_size %d, num_hidden_layers %d, num_attention_heads %d (head size %d),\n"
           "              intermediate_size %d, max_position_embeddings %d, type_vocab_size %d, layer_norm_eps %g,\n"
           "              hidden_act gelu, pad_token_id %d\n",
           c->vocab_size, c->hidden, c->layers, c->heads, c->hidden / c->heads, c->intermediate, c->max_position,
           c->type_vocab_size, (double)c->layer_norm_eps, c->pad_token_id);
    printf("parameters:   %zu (%.1f M; pooler %s)\n", tbert_model_param_count(m), tbert_model_param_count(m) / 1e6,
           m->pooler_w ? "present" : "absent");
    printf("weights:      model.safetensors, %zu bytes, encoder weights %s, %d tensors (", fs->file_bytes, m->weights_dtype,
           fs->total);
    bool first = true;
    for (int d = 0; d < TBERT_DT_COUNT; d++) {
        if (!fs->count[d]) continue;
        printf("%s%d %s", first ? "" : ", ", fs->count[d], tbert_dtype_name((tbert_dtype)d));
        first = false;
    }
    printf("), %d unused by the encoder\n", fs->unused);
    for (int i = 0; i < fs->unused && i < MAX_LISTED; i++) printf("  unused:     %s\n", fs->listed[i]);
    if (fs->unused > MAX_LISTED) printf("  unused:     ... and %d more\n", fs->unused - MAX_LISTED);
    printf("sha256:       %s\n", m->weights_sha256);
    const tbert_tokenizer_opts *o = tbert_vocab_opts(m->vocab);
    printf("tokenizer:    vocab.txt %d tokens, lowercase %s, strip_accents %s, chinese chars %s, clean_text %s\n",
           (int)tbert_vocab_size(m->vocab), o->lowercase ? "yes" : "no", strip_name(o->strip_accents),
           o->handle_chinese_chars ? "yes" : "no", o->clean_text ? "yes" : "no");
    printf("specials:     [CLS] %d, [SEP] %d, [PAD] %d, [UNK] %d\n", (int)tbert_vocab_cls(m->vocab), (int)tbert_vocab_sep(m->vocab),
           (int)tbert_vocab_pad(m->vocab), (int)tbert_vocab_unk(m->vocab));
    printf("vocab sha256: %s\n", tbert_vocab_hash(m->vocab));
}

static int print_json(const tbert_model *m, const file_summary *fs, const tbert_cuda_probe_info *b) {
    const tbert_config *c = &m->cfg;
    const tbert_tokenizer_opts *o = tbert_vocab_opts(m->vocab);
    cJSON *r = cJSON_CreateObject(), *cfg = cJSON_CreateObject(), *tok = cJSON_CreateObject(), *dts = cJSON_CreateObject();
    if (!r || !cfg || !tok || !dts) goto oom;
    cJSON_AddItemToObject(r, "model", cJSON_CreateString(m->dir));
    cJSON_AddItemToObject(r, "config", cfg);
    cJSON_AddNumberToObject(cfg, "vocab_size", c->vocab_size);
    cJSON_AddNumberToObject(cfg, "hidden_size", c->hidden);
    cJSON_AddNumberToObject(cfg, "num_hidden_layers", c->layers);
    cJSON_AddNumberToObject(cfg, "num_attention_heads", c->heads);
    cJSON_AddNumberToObject(cfg, "intermediate_size", c->intermediate);
    cJSON_AddNumberToObject(cfg, "max_position_embeddings", c->max_position);
    cJSON_AddNumberToObject(cfg, "type_vocab_size", c->type_vocab_size);
    char eps[32]; /* the float's shortest decimal form (1e-12, not 9.99999996e-13) */
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(eps, sizeof eps, "%.*g", prec, (double)c->layer_norm_eps);
        if ((float)strtod(eps, NULL) == c->layer_norm_eps) break;
    }
    cJSON_AddRawToObject(cfg, "layer_norm_eps", eps);
    cJSON_AddStringToObject(cfg, "hidden_act", "gelu");
    cJSON_AddNumberToObject(cfg, "pad_token_id", c->pad_token_id);
    cJSON_AddNumberToObject(r, "parameters", (double)tbert_model_param_count(m));
    cJSON_AddBoolToObject(r, "pooler", m->pooler_w != NULL);
    cJSON_AddStringToObject(r, "weights_dtype", m->weights_dtype);
    cJSON_AddNumberToObject(r, "weights_bytes", (double)fs->file_bytes);
    cJSON_AddStringToObject(r, "weights_sha256", m->weights_sha256);
    cJSON_AddNumberToObject(r, "tensors", fs->total);
    cJSON_AddNumberToObject(r, "unused_tensors", fs->unused);
    cJSON *ul = cJSON_AddArrayToObject(r, "unused_listed");
    for (int i = 0; ul && i < fs->unused && i < MAX_LISTED; i++) cJSON_AddItemToArray(ul, cJSON_CreateString(fs->listed[i]));
    cJSON_AddItemToObject(r, "tensor_dtypes", dts);
    for (int d = 0; d < TBERT_DT_COUNT; d++)
        if (fs->count[d]) cJSON_AddNumberToObject(dts, tbert_dtype_name((tbert_dtype)d), fs->count[d]);
    cJSON_AddItemToObject(r, "tokenizer", tok);
    cJSON_AddNumberToObject(tok, "vocab_size", tbert_vocab_size(m->vocab));
    cJSON_AddBoolToObject(tok, "lowercase", o->lowercase);
    if (o->strip_accents < 0) cJSON_AddNullToObject(tok, "strip_accents");
    else cJSON_AddBoolToObject(tok, "strip_accents", o->strip_accents);
    cJSON_AddBoolToObject(tok, "tokenize_chinese_chars", o->handle_chinese_chars);
    cJSON_AddBoolToObject(tok, "clean_text", o->clean_text);
    cJSON_AddNumberToObject(tok, "cls_id", tbert_vocab_cls(m->vocab));
    cJSON_AddNumberToObject(tok, "sep_id", tbert_vocab_sep(m->vocab));
    cJSON_AddNumberToObject(tok, "pad_id", tbert_vocab_pad(m->vocab));
    cJSON_AddNumberToObject(tok, "unk_id", tbert_vocab_unk(m->vocab));
    cJSON_AddStringToObject(tok, "vocab_sha256", tbert_vocab_hash(m->vocab));
    cJSON *cu = backend_json(b);
    if (!cu) goto oom_done_r;
    cJSON_AddItemToObject(r, "cuda", cu);
    char *text = cJSON_PrintUnformatted(r);
    cJSON_Delete(r);
    if (!text) goto oom_done;
    printf("%s\n", text);
    free(text);
    return CLI_OK;
oom_done_r:
    cJSON_Delete(r);
    goto oom_done;
oom:
    cJSON_Delete(r);
    cJSON_Delete(cfg);
    cJSON_Delete(tok);
    cJSON_Delete(dts);
oom_done:
    fprintf(stderr, "tbert info: out of memory\n");
    return CLI_USAGE;
}

int cmd_info(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"json", no_argument, 0, 'j'}, {"backend", no_argument, 0, 'b'},
        {"help", no_argument, 0, 'h'},     {0, 0, 0, 0}};
    const char *model = NULL;
    bool json = false, backend_only = false;
    int c;
    while ((c = cli_getopt("info", argc, argv, "m:jbh", opts)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'j': json = true; break;
        case 'b': backend_only = true; break;
        case 'h': usage(stdout); return CLI_OK;
        default: return CLI_USAGE;
        }
    }
    if (optind < argc) return cli_usage_error("info", "unexpected argument '%s'", argv[optind]);
    tbert_cuda_probe_info backend;
    tbert_cuda_probe(&backend);
    if (backend_only) {
        if (json) {
            cJSON *o = backend_json(&backend);
            char *text = o ? cJSON_PrintUnformatted(o) : NULL;
            cJSON_Delete(o);
            if (!text) {
                fprintf(stderr, "tbert info: out of memory\n");
                return CLI_USAGE;
            }
            printf("%s\n", text);
            free(text);
        } else {
            print_backend_text(&backend);
        }
        if (fflush(stdout) == 0) return CLI_OK;
        fprintf(stderr, "tbert info: cannot write to stdout\n");
        return CLI_USAGE;
    }
    char dir[PATH_MAX];
    tbert_error err = {0};
    if (tbert_resolve_model_dir(model, dir, sizeof dir, &err)) return cli_report(&err);
    tbert_model *m;
    if (tbert_model_load(dir, &m, &err)) return cli_report(&err);
    file_summary fs;
    if (summarize_file(m, &fs, &err)) {
        tbert_model_free(m);
        return cli_report(&err);
    }
    int rc = CLI_OK;
    if (json) {
        rc = print_json(m, &fs, &backend);
    } else {
        print_text(m, &fs);
        print_backend_text(&backend);
    }
    tbert_model_free(m);
    if (fflush(stdout) != 0) {
        fprintf(stderr, "tbert info: cannot write to stdout\n");
        rc = CLI_USAGE;
    }
    return rc;
}
