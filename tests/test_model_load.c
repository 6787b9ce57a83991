/* Model folder loading: small random model folders are built here from code (config.json, vocab.txt and a
 * model.safetensors written with the safetensors writer) and loaded. Checks: every weight lands where the
 * encoder reads it, bit-exact (F32, and F16/BF16 values chosen to be exactly representable, encoded by this
 * test's own half/bfloat16 encoder); the `bert.` prefix, missing pooler, old LayerNorm.gamma/beta names and
 * unused tensors of other dtypes; and one clear error per failure mode. The committed tests/models folders
 * load too. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"
#include "tbert/fileio.h"
#include "tbert/model.h"
#include "tbert/safetensors.h"

typedef struct {
    int V, H, L, heads, I, P, TV;
    tbert_dtype dtype;
    bool prefix, pooler, old_ln_names, extras;
    const char *act;
    int cfg_vocab, cfg_layers, cfg_hidden; /* config values when they must differ from the weights (0 = same) */
    const char *skip;                      /* a tensor left out (name without prefix) */
    const char *transpose;                 /* a 2-D tensor written with its dimensions swapped */
    const char *int_tensor;                /* a needed tensor written as I32 */
    const char *nan_tensor;                /* a tensor holding one NaN */
    bool extra_layer;                      /* weights for one more layer than the config says */
    bool no_vocab, no_config, no_weights, pytorch_bin;
    int vocab_lines;                       /* 0 = V */
} spec;

static spec base_spec(void) {
    return (spec){.V = 40, .H = 16, .L = 2, .heads = 4, .I = 24, .P = 12, .TV = 2, .dtype = TBERT_DT_F32, .pooler = true, .act = "gelu"};
}

/* Generated weights, kept to compare with what the loader produced. */
typedef struct {
    char name[128];
    float *v;
    size_t n;
} gen_tensor;

typedef struct {
    gen_tensor t[256];
    int n;
} gen_set;

static const float *gen_find(const gen_set *g, const char *name) {
    for (int i = 0; i < g->n; i++)
        if (!strcmp(g->t[i].name, name)) return g->t[i].v;
    return NULL;
}

static void gen_free(gen_set *g) {
    for (int i = 0; i < g->n; i++) free(g->t[i].v);
    g->n = 0;
}

/* IEEE binary16 bits of a value that is exactly representable as a normal half (asserted). */
static uint16_t f16_bits(float v) {
    if (v == 0.0f) return signbit(v) ? 0x8000 : 0;
    int ex;
    float f = frexpf(fabsf(v), &ex); /* |v| = f * 2^ex, f in [0.5, 1) */
    int e = ex - 1 + 15;
    float mant = (f * 2.0f - 1.0f) * 1024.0f;
    assert_true(e >= 1 && e <= 30 && mant == floorf(mant));
    return (uint16_t)((v < 0 ? 0x8000 : 0) | (e << 10) | (int)mant);
}

static uint16_t bf16_bits(float v) {
    uint32_t b;
    memcpy(&b, &v, 4);
    assert_int_equal(b & 0xFFFF, 0);
    return (uint16_t)(b >> 16);
}

/* Values exactly representable in the dtype: F16 k/1024 (|k| <= 1024), BF16 k/256 (|k| <= 256). */
static float draw(tu_rng *r, tbert_dtype dt) {
    if (dt == TBERT_DT_F16) return (float)((int)(tu_next(r) % 2049) - 1024) / 1024.0f;
    if (dt == TBERT_DT_BF16) return (float)((int)(tu_next(r) % 513) - 256) / 256.0f;
    return 0.05f * tu_normal(r);
}

static void add_tensor(tbert_st_writer *w, gen_set *g, tu_rng *r, const spec *s, const char *name, int64_t d0, int64_t d1) {
    if (s->skip && !strcmp(s->skip, name)) return;
    bool transposed = s->transpose && !strcmp(s->transpose, name) && d1 > 0;
    int64_t shape[2] = {transposed ? d1 : d0, transposed ? d0 : d1};
    int nd = d1 > 0 ? 2 : 1;
    size_t n = (size_t)d0 * (size_t)(d1 > 0 ? d1 : 1);
    float *v = malloc(n * sizeof *v);
    assert_non_null(v);
    for (size_t i = 0; i < n; i++) v[i] = draw(r, s->dtype);
    if (s->nan_tensor && !strcmp(s->nan_tensor, name)) v[n / 2] = NAN;
    char full[176]; /* "bert." + a name of up to 159 bytes */
    const char *stored = name;
    char alt[160];
    if (s->old_ln_names && strstr(name, "LayerNorm.")) { /* TF-era spelling */
        snprintf(alt, sizeof alt, "%s", name);
        char *p = strstr(alt, "LayerNorm.");
        snprintf(p + 10, sizeof alt - (size_t)(p + 10 - alt), "%s", strstr(name, ".weight") ? "gamma" : "beta");
        stored = alt;
    }
    snprintf(full, sizeof full, "%s%s", s->prefix ? "bert." : "", stored);
    tbert_error err;
    tbert_dtype dt = s->dtype;
    void *data = v;
    uint16_t *h = NULL;
    int32_t *ints = NULL;
    if (s->int_tensor && !strcmp(s->int_tensor, name)) {
        ints = calloc(n, sizeof *ints);
        assert_non_null(ints);
        data = ints;
        dt = TBERT_DT_I32;
    } else if (dt == TBERT_DT_F16 || dt == TBERT_DT_BF16) {
        h = malloc(n * sizeof *h);
        assert_non_null(h);
        for (size_t i = 0; i < n; i++) h[i] = dt == TBERT_DT_F16 ? f16_bits(v[i]) : bf16_bits(v[i]);
        data = h;
    }
    assert_int_equal(tbert_st_writer_add(w, full, dt, nd, shape, data, &err), TBERT_OK);
    free(h);
    free(ints);
    assert_true(g->n < 256);
    gen_tensor *gt = &g->t[g->n++];
    snprintf(gt->name, sizeof gt->name, "%s", name);
    gt->v = v;
    gt->n = n;
}

static const char *layer_parts[16] = {
    "attention.self.query.weight",     "attention.self.query.bias",     "attention.self.key.weight",
    "attention.self.key.bias",         "attention.self.value.weight",   "attention.self.value.bias",
    "attention.output.dense.weight",   "attention.output.dense.bias",   "attention.output.LayerNorm.weight",
    "attention.output.LayerNorm.bias", "intermediate.dense.weight",     "intermediate.dense.bias",
    "output.dense.weight",             "output.dense.bias",             "output.LayerNorm.weight",
    "output.LayerNorm.bias",
};

static void layer_shape(const spec *s, int k, int64_t *d0, int64_t *d1) {
    int64_t H = s->H, I = s->I;
    bool w = strstr(layer_parts[k], ".weight") && !strstr(layer_parts[k], "LayerNorm");
    if (k == 10) *d0 = I, *d1 = w ? H : 0;
    else if (k == 11) *d0 = I, *d1 = 0;
    else if (k == 12) *d0 = H, *d1 = I;
    else *d0 = H, *d1 = w ? H : 0;
}

static void write_text(const char *dir, const char *file, const char *text) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    tbert_error err;
    assert_int_equal(tbert_write_file_atomic(path, text, strlen(text), &err), TBERT_OK);
}

static void write_config(const char *dir, const spec *s) {
    char cfg[1024];
    snprintf(cfg, sizeof cfg,
             "{\"architectures\": [\"BertModel\"], \"model_type\": \"bert\", \"vocab_size\": %d, \"hidden_size\": %d,\n"
             " \"num_hidden_layers\": %d, \"num_attention_heads\": %d, \"intermediate_size\": %d,\n"
             " \"max_position_embeddings\": %d, \"type_vocab_size\": %d, \"layer_norm_eps\": 1e-12,\n"
             " \"hidden_act\": \"%s\", \"pad_token_id\": 0, \"position_embedding_type\": \"absolute\"}\n",
             s->cfg_vocab ? s->cfg_vocab : s->V, s->cfg_hidden ? s->cfg_hidden : s->H, s->cfg_layers ? s->cfg_layers : s->L,
             s->heads, s->I, s->P, s->TV, s->act);
    write_text(dir, "config.json", cfg);
}

static void write_vocab(const char *dir, const spec *s) {
    int n = s->vocab_lines ? s->vocab_lines : s->V;
    static const char *specials[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
    size_t cap = (size_t)n * 16 + 64, pos = 0;
    char *text = malloc(cap);
    assert_non_null(text);
    for (int i = 0; i < n; i++)
        pos += i < 5 ? (size_t)snprintf(text + pos, cap - pos, "%s\n", specials[i]) : (size_t)snprintf(text + pos, cap - pos, "w%d\n", i);
    write_text(dir, "vocab.txt", text);
    free(text);
}

/* Writes a whole model folder into a fresh temp folder (path in dir). */
static void make_model(char dir[64], const spec *s, gen_set *g, uint64_t seed) {
    snprintf(dir, 64, "/tmp/tbert_model_XXXXXX");
    assert_non_null(mkdtemp(dir));
    tu_rng r = {seed};
    if (!s->no_config) write_config(dir, s);
    if (!s->no_vocab) write_vocab(dir, s);
    if (s->no_weights) return;
    tbert_st_writer *w = tbert_st_writer_new();
    assert_non_null(w);
    g->n = 0;
    if (s->extras) { /* tensors a BertModel does not use, in other dtypes: ignored (but validated) */
        int64_t pid_shape[2] = {1, s->P};
        int64_t *pid = malloc((size_t)s->P * sizeof *pid);
        assert_non_null(pid);
        for (int i = 0; i < s->P; i++) pid[i] = i;
        tbert_error err;
        char name[64];
        snprintf(name, sizeof name, "%sembeddings.position_ids", s->prefix ? "bert." : "");
        assert_int_equal(tbert_st_writer_add(w, name, TBERT_DT_I64, 2, pid_shape, pid, &err), TBERT_OK);
        free(pid);
        int64_t cls_shape[2] = {2, s->H};
        float *cls = calloc((size_t)(2 * s->H), sizeof *cls);
        assert_non_null(cls);
        assert_int_equal(tbert_st_writer_add(w, "classifier.weight", TBERT_DT_F32, 2, cls_shape, cls, &err), TBERT_OK);
        free(cls);
    }
    add_tensor(w, g, &r, s, "embeddings.word_embeddings.weight", s->V, s->H);
    add_tensor(w, g, &r, s, "embeddings.position_embeddings.weight", s->P, s->H);
    add_tensor(w, g, &r, s, "embeddings.token_type_embeddings.weight", s->TV, s->H);
    add_tensor(w, g, &r, s, "embeddings.LayerNorm.weight", s->H, 0);
    add_tensor(w, g, &r, s, "embeddings.LayerNorm.bias", s->H, 0);
    for (int l = 0; l < s->L + (s->extra_layer ? 1 : 0); l++) {
        for (int k = 0; k < 16; k++) {
            char name[128];
            snprintf(name, sizeof name, "encoder.layer.%d.%s", l, layer_parts[k]);
            int64_t d0, d1;
            layer_shape(s, k, &d0, &d1);
            add_tensor(w, g, &r, s, name, d0, d1);
        }
    }
    if (s->pooler) {
        add_tensor(w, g, &r, s, "pooler.dense.weight", s->H, s->H);
        add_tensor(w, g, &r, s, "pooler.dense.bias", s->H, 0);
    }
    char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, s->pytorch_bin ? "pytorch_model.bin" : "model.safetensors");
    tbert_error err;
    assert_int_equal(tbert_st_writer_save(w, path, &err), TBERT_OK);
    tbert_st_writer_free(w);
}

static void remove_model(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char path[512];
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

/* Every pointer the encoder reads holds exactly the generated values. */
static void check_weights(const tbert_model *m, const spec *s, const gen_set *g) {
    const tbert_config *c = &m->cfg;
    assert_int_equal(c->vocab_size, s->V);
    assert_int_equal(c->hidden, s->H);
    assert_int_equal(c->layers, s->L);
    assert_int_equal(c->heads, s->heads);
    assert_int_equal(c->intermediate, s->I);
    assert_int_equal(c->max_position, s->P);
    assert_int_equal(c->type_vocab_size, s->TV);
    assert_true(c->layer_norm_eps == 1e-12f);
    struct {
        const float *p;
        const char *name;
        size_t n;
    } top[] = {
        {m->word_emb, "embeddings.word_embeddings.weight", (size_t)s->V * s->H},
        {m->pos_emb, "embeddings.position_embeddings.weight", (size_t)s->P * s->H},
        {m->type_emb, "embeddings.token_type_embeddings.weight", (size_t)s->TV * s->H},
        {m->emb_ln_g, "embeddings.LayerNorm.weight", (size_t)s->H},
        {m->emb_ln_b, "embeddings.LayerNorm.bias", (size_t)s->H},
        {m->pooler_w, "pooler.dense.weight", (size_t)s->H * s->H},
        {m->pooler_b, "pooler.dense.bias", (size_t)s->H},
    };
    size_t params = 0;
    for (size_t i = 0; i < sizeof top / sizeof top[0]; i++) {
        if (i >= 5 && !s->pooler) {
            assert_null(top[i].p);
            continue;
        }
        assert_non_null(top[i].p);
        assert_true(((uintptr_t)top[i].p & 63) == 0);
        assert_memory_equal(top[i].p, gen_find(g, top[i].name), top[i].n * sizeof(float));
        params += top[i].n;
    }
    for (int l = 0; l < s->L; l++) {
        const float *ptrs[16];
        _Static_assert(sizeof(tbert_layer_weights) == 16 * sizeof(const float *), "16 weight pointers per layer");
        memcpy(ptrs, &m->layer[l], sizeof ptrs);
        for (int k = 0; k < 16; k++) {
            char name[128];
            snprintf(name, sizeof name, "encoder.layer.%d.%s", l, layer_parts[k]);
            int64_t d0, d1;
            layer_shape(s, k, &d0, &d1);
            size_t n = (size_t)d0 * (size_t)(d1 ? d1 : 1);
            const float *want = gen_find(g, name);
            assert_non_null(want);
            if (memcmp(ptrs[k], want, n * sizeof(float)) != 0) {
                fprintf(stderr, "weights of %s differ\n", name);
                fail();
            }
            params += n;
        }
    }
    assert_int_equal(tbert_model_param_count(m), params);
    assert_string_equal(m->weights_dtype, tbert_dtype_name(s->dtype));
    char sha[65], path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", m->dir);
    tbert_error err;
    assert_int_equal(tbert_sha256_file(path, sha, &err), TBERT_OK);
    assert_string_equal(m->weights_sha256, sha);
    assert_non_null(m->vocab);
}

static void load_ok(const spec *s, uint64_t seed) {
    char dir[64];
    gen_set *g = calloc(1, sizeof *g);
    assert_non_null(g);
    make_model(dir, s, g, seed);
    tbert_model *m = NULL;
    tbert_error err = {0};
    tbert_status st = tbert_model_load(dir, &m, &err);
    if (st != TBERT_OK) fprintf(stderr, "load failed: %s\n", err.msg);
    assert_int_equal(st, TBERT_OK);
    check_weights(m, s, g);
    tbert_model_free(m);
    gen_free(g);
    free(g);
    remove_model(dir);
}

static uint64_t seed_of(void) {
    static const char *name = "test_model_load";
    return tu_seed_from_env(name);
}

static void test_loads_f32_plain(void **state) {
    spec s = base_spec();
    load_ok(&s, seed_of());
}

static void test_loads_bert_prefix_and_extras(void **state) {
    spec s = base_spec();
    s.prefix = true;
    s.extras = true;
    load_ok(&s, seed_of());
}

static void test_loads_without_pooler(void **state) {
    spec s = base_spec();
    s.pooler = false;
    load_ok(&s, seed_of());
}

static void test_loads_f16_exact(void **state) {
    spec s = base_spec();
    s.dtype = TBERT_DT_F16;
    s.prefix = true;
    load_ok(&s, seed_of());
}

static void test_loads_bf16_exact(void **state) {
    spec s = base_spec();
    s.dtype = TBERT_DT_BF16;
    s.pooler = false;
    load_ok(&s, seed_of());
}

static void test_loads_old_layernorm_names(void **state) {
    spec s = base_spec();
    s.old_ln_names = true;
    load_ok(&s, seed_of());
}

static void test_loads_tiny_bert_shape(void **state) {
    spec s = base_spec(); /* google/bert_uncased_L-2_H-128_A-2, with a small vocabulary and position table */
    s.H = 128, s.heads = 2, s.I = 512, s.L = 2, s.V = 64, s.P = 16;
    load_ok(&s, seed_of());
}

/* Builds a folder from s, expects load to fail with `code` and a one-line message containing both needles. */
static void load_fails(const spec *s, tbert_status code, const char *needle1, const char *needle2) {
    char dir[64];
    gen_set *g = calloc(1, sizeof *g);
    assert_non_null(g);
    make_model(dir, s, g, 1234);
    tbert_model *m = (tbert_model *)1;
    tbert_error err = {0};
    tbert_status st = tbert_model_load(dir, &m, &err);
    bool ok = st == code && m == NULL && strstr(err.msg, needle1) && (!needle2 || strstr(err.msg, needle2)) &&
              strstr(err.msg, dir) && !strchr(err.msg, '\n');
    if (!ok) {
        fprintf(stderr, "got %s '%s'; want %s with '%s' and '%s' naming %s\n", tbert_status_name(st), err.msg,
                tbert_status_name(code), needle1, needle2 ? needle2 : "", dir);
        fail();
    }
    gen_free(g);
    free(g);
    remove_model(dir);
}

static void test_missing_tensor(void **state) {
    spec s = base_spec();
    s.skip = "encoder.layer.1.output.dense.bias";
    load_fails(&s, TBERT_E_FORMAT, "model.safetensors: missing tensor 'encoder.layer.1.output.dense.bias'", NULL);
    s.prefix = true;
    load_fails(&s, TBERT_E_FORMAT, "missing tensor 'bert.encoder.layer.1.output.dense.bias'", NULL);
    s = base_spec();
    s.skip = "pooler.dense.bias";
    load_fails(&s, TBERT_E_FORMAT, "has 'pooler.dense.weight' without 'pooler.dense.bias'", NULL);
}

static void test_wrong_shape(void **state) {
    spec s = base_spec();
    s.transpose = "encoder.layer.0.intermediate.dense.weight";
    load_fails(&s, TBERT_E_MISMATCH, "tensor 'encoder.layer.0.intermediate.dense.weight' has shape [16, 24]",
               "config.json implies [24, 16]");
}

static void test_config_weights_mismatch(void **state) {
    spec s = base_spec();
    s.cfg_hidden = 32, s.heads = 4; /* config says 32, weights are 16 wide */
    load_fails(&s, TBERT_E_MISMATCH, "'embeddings.word_embeddings.weight' has shape [40, 16]", "implies [40, 32]");
    s = base_spec();
    s.cfg_vocab = 50; /* more rows in config than the embedding has */
    load_fails(&s, TBERT_E_MISMATCH, "has shape [40, 16] but config.json implies [50, 16]", NULL);
    s = base_spec();
    s.cfg_layers = 3;
    load_fails(&s, TBERT_E_FORMAT, "missing tensor 'encoder.layer.2.attention.self.query.weight'", NULL);
    s = base_spec();
    s.extra_layer = true; /* weights for 3 layers, config says 2 */
    load_fails(&s, TBERT_E_MISMATCH, "holds tensor 'encoder.layer.2.attention.self.query.weight'", "num_hidden_layers = 2");
    s = base_spec();
    s.vocab_lines = 41; /* vocab.txt larger than the embedding table: ids would index past it */
    load_fails(&s, TBERT_E_MISMATCH, "vocab.txt: has 41 tokens but config.json says vocab_size = 40", NULL);
}

static void test_bad_weights(void **state) {
    spec s = base_spec();
    s.int_tensor = "embeddings.LayerNorm.bias";
    load_fails(&s, TBERT_E_UNSUPPORTED, "tensor 'embeddings.LayerNorm.bias' has dtype I32", NULL);
    s = base_spec();
    s.nan_tensor = "encoder.layer.1.attention.self.key.weight";
    load_fails(&s, TBERT_E_FORMAT, "tensor 'encoder.layer.1.attention.self.key.weight' holds a non-finite value", NULL);
    s = base_spec();
    s.no_weights = true;
    load_fails(&s, TBERT_E_IO, "model.safetensors: not found", NULL);
    s = base_spec();
    s.pytorch_bin = true;
    load_fails(&s, TBERT_E_IO, "the folder has pytorch_model.bin", "convert_to_safetensors.py");
}

static void test_missing_files(void **state) {
    spec s = base_spec();
    s.no_vocab = true;
    load_fails(&s, TBERT_E_IO, "vocab.txt", NULL);
    s = base_spec();
    s.no_config = true;
    load_fails(&s, TBERT_E_IO, "config.json", "cannot open");
    tbert_model *m;
    tbert_error err;
    assert_int_equal(tbert_model_load("/nonexistent/tbert/model", &m, &err), TBERT_E_IO);
    assert_non_null(strstr(err.msg, "/nonexistent/tbert/model: model folder not found"));
}

static void test_unsupported_config(void **state) {
    spec s = base_spec();
    s.act = "gelu_new";
    load_fails(&s, TBERT_E_UNSUPPORTED, "config.json: hidden_act 'gelu_new' is not supported", NULL);
    s.act = "relu";
    load_fails(&s, TBERT_E_UNSUPPORTED, "hidden_act 'relu'", NULL);
    s = base_spec();
    s.heads = 5;
    load_fails(&s, TBERT_E_FORMAT, "num_attention_heads (5) does not divide hidden_size (16)", NULL);
}

/* config.json problems, each written by hand. */
static void test_config_errors(void **state) {
    static const struct {
        const char *text;
        tbert_status code;
        const char *needle;
    } cases[] = {
        {"{\"vocab_size\": 10", TBERT_E_FORMAT, "not valid JSON"},
        {"[1]", TBERT_E_FORMAT, "not a JSON object"},
        {"{} {}", TBERT_E_FORMAT, "extra bytes after the JSON object"},
        {"{\"hidden_size\": 8}", TBERT_E_FORMAT, "missing field 'vocab_size'"},
        {"{\"vocab_size\": 10, \"hidden_size\": 0, \"num_hidden_layers\": 1, \"num_attention_heads\": 1,"
         " \"intermediate_size\": 4, \"max_position_embeddings\": 8}",
         TBERT_E_FORMAT, "'hidden_size' must be an integer in [1, 65536] (got 0)"},
        {"{\"vocab_size\": 10, \"hidden_size\": 8, \"num_hidden_layers\": -1, \"num_attention_heads\": 1,"
         " \"intermediate_size\": 4, \"max_position_embeddings\": 8}",
         TBERT_E_FORMAT, "'num_hidden_layers' must be an integer"},
        {"{\"vocab_size\": 1e300, \"hidden_size\": 8, \"num_hidden_layers\": 1, \"num_attention_heads\": 1,"
         " \"intermediate_size\": 4, \"max_position_embeddings\": 8}",
         TBERT_E_FORMAT, "'vocab_size' must be an integer in [1, 4000000]"},
        {"{\"vocab_size\": 10, \"hidden_size\": 8.5, \"num_hidden_layers\": 1, \"num_attention_heads\": 1,"
         " \"intermediate_size\": 4, \"max_position_embeddings\": 8}",
         TBERT_E_FORMAT, "'hidden_size' must be an integer"},
        {"{\"vocab_size\": 10, \"hidden_size\": \"8\", \"num_hidden_layers\": 1, \"num_attention_heads\": 1,"
         " \"intermediate_size\": 4, \"max_position_embeddings\": 8}",
         TBERT_E_FORMAT, "'hidden_size' must be an integer"},
        {"{\"vocab_size\": 10, \"hidden_size\": 8, \"num_hidden_layers\": 1, \"num_attention_heads\": 1,"
         " \"intermediate_size\": 4, \"max_position_embeddings\": 8, \"layer_norm_eps\": -1}",
         TBERT_E_FORMAT, "'layer_norm_eps' must be a number in (0, 1)"},
        {"{\"vocab_size\": 10, \"hidden_size\": 8, \"num_hidden_layers\": 1, \"num_attention_heads\": 1,"
         " \"intermediate_size\": 4, \"max_position_embeddings\": 8, \"pad_token_id\": 10}",
         TBERT_E_FORMAT, "pad_token_id (10) is not below vocab_size (10)"},
        {"{\"model_type\": \"roberta\", \"vocab_size\": 10}", TBERT_E_UNSUPPORTED, "model_type 'roberta' is not supported"},
        {"{\"position_embedding_type\": \"relative_key\", \"vocab_size\": 10}", TBERT_E_UNSUPPORTED,
         "position_embedding_type 'relative_key'"},
        {"{\"hidden_act\": 1}", TBERT_E_FORMAT, "'hidden_act' is not a string"},
    };
    char dir[] = "/tmp/tbert_cfg_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof path, "%s/config.json", dir);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_text(dir, "config.json", cases[i].text);
        tbert_config c;
        tbert_error err = {0};
        tbert_status st = tbert_config_load(path, &c, &err);
        if (st != cases[i].code || !strstr(err.msg, cases[i].needle) || strncmp(err.msg, path, strlen(path)) != 0) {
            fprintf(stderr, "config '%s': got %s '%s', want %s '%s'\n", cases[i].text, tbert_status_name(st), err.msg,
                    tbert_status_name(cases[i].code), cases[i].needle);
            fail();
        }
    }
    /* defaults of the optional fields (transformers' BertConfig) */
    write_text(dir, "config.json",
               "{\"vocab_size\": 10, \"hidden_size\": 8, \"num_hidden_layers\": 1, \"num_attention_heads\": 2,"
               " \"intermediate_size\": 4, \"max_position_embeddings\": 8, \"pad_token_id\": null}");
    tbert_config c;
    tbert_error err;
    assert_int_equal(tbert_config_load(path, &c, &err), TBERT_OK);
    assert_int_equal(c.type_vocab_size, 2);
    assert_int_equal(c.pad_token_id, 0);
    assert_true(c.layer_norm_eps == 1e-12f);
    /* the in-memory form reads exactly len bytes (the rest of the buffer is not JSON) */
    const char *mem = "{\"vocab_size\": 10, \"hidden_size\": 8, \"num_hidden_layers\": 1, \"num_attention_heads\": 2,"
                      " \"intermediate_size\": 4, \"max_position_embeddings\": 8}GARBAGE";
    assert_int_equal(tbert_config_parse(mem, strlen(mem) - 7, "mem.json", &c, &err), TBERT_OK);
    assert_int_equal(c.hidden, 8);
    assert_int_equal(tbert_config_parse(mem, strlen(mem), "mem.json", &c, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "mem.json: extra bytes after the JSON object"));
    /* an oversized file is refused before it is read */
    size_t big = (1u << 20) + 1;
    char *text = malloc(big + 1);
    assert_non_null(text);
    memset(text, ' ', big);
    text[0] = '{';
    text[big - 1] = '}';
    text[big] = '\0';
    write_text(dir, "config.json", text);
    free(text);
    assert_int_equal(tbert_config_load(path, &c, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "more than the limit"));
    unlink(path);
    rmdir(dir);
}

/* weights_sha256 of a large file (>= 16 MB) comes from $TBERT_CACHE/hashes when the file is unchanged, and is
 * recomputed when the file is rewritten (or the cache entry is stale or garbage). */
static void test_sha256_cache(void **state) {
    char cache[] = "/tmp/tbert_hcache_XXXXXX";
    assert_non_null(mkdtemp(cache));
    const char *old = getenv("TBERT_CACHE");
    char *saved = old ? strdup(old) : NULL;
    setenv("TBERT_CACHE", cache, 1);
    spec s = base_spec();
    s.V = 16384, s.H = 256, s.heads = 4, s.I = 8, s.L = 1, s.P = 4; /* a 16.8 MB file */
    char dir[64];
    gen_set *g = calloc(1, sizeof *g);
    assert_non_null(g);
    make_model(dir, &s, g, 99);
    char path[128], want[65];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    tbert_error err;
    assert_int_equal(tbert_sha256_file(path, want, &err), TBERT_OK);
    tbert_model *m;
    for (int round = 0; round < 2; round++) { /* computed and stored, then read back */
        assert_int_equal(tbert_model_load(dir, &m, &err), TBERT_OK);
        assert_string_equal(m->weights_sha256, want);
        tbert_model_free(m);
    }
    char hdir[300];
    snprintf(hdir, sizeof hdir, "%s/hashes", cache);
    DIR *d = opendir(hdir);
    assert_non_null(d);
    struct dirent *e;
    char entry[600] = "";
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') snprintf(entry, sizeof entry, "%s/%s", hdir, e->d_name);
    closedir(d);
    assert_true(entry[0]);
    /* the entry is really used: a planted digest with the right file identity comes back as it is */
    char *line;
    size_t line_len;
    assert_int_equal(tbert_read_file(entry, 0, &line, &line_len, &err), TBERT_OK);
    assert_true(line_len > 65);
    memset(line + line_len - 65, '0', 64);
    assert_int_equal(tbert_write_file_atomic(entry, line, line_len, &err), TBERT_OK);
    free(line);
    assert_int_equal(tbert_model_load(dir, &m, &err), TBERT_OK);
    assert_string_equal(m->weights_sha256, "0000000000000000000000000000000000000000000000000000000000000000");
    tbert_model_free(m);
    /* rewrite the weights with one value changed: the cached digest must not be used */
    char *bytes;
    size_t len;
    assert_int_equal(tbert_read_file(path, 0, &bytes, &len, &err), TBERT_OK);
    bytes[len - 1] ^= 0x01;
    assert_int_equal(tbert_write_file_atomic(path, bytes, len, &err), TBERT_OK);
    char want2[65];
    assert_int_equal(tbert_sha256_file(path, want2, &err), TBERT_OK);
    assert_string_not_equal(want, want2);
    assert_int_equal(tbert_model_load(dir, &m, &err), TBERT_OK);
    assert_string_equal(m->weights_sha256, want2);
    tbert_model_free(m);
    /* a garbage cache entry is ignored */
    assert_int_equal(tbert_write_file_atomic(entry, "v1 0 0 0 x\n", 11, &err), TBERT_OK);
    assert_int_equal(tbert_model_load(dir, &m, &err), TBERT_OK);
    assert_string_equal(m->weights_sha256, want2);
    tbert_model_free(m);
    free(bytes);
    unlink(entry);
    rmdir(hdir);
    rmdir(cache);
    if (saved) setenv("TBERT_CACHE", saved, 1);
    else unsetenv("TBERT_CACHE");
    free(saved);
    gen_free(g);
    free(g);
    remove_model(dir);
}

/* The small committed model folders (tests/models, made by tests/golden/make_encoder_golden.py) load, with
 * the dtype and pooler their config and file declare. */
static void test_committed_models_load(void **state) {
    char root[512];
    tu_fixture("models", root, sizeof root);
    DIR *d = opendir(root);
    assert_non_null(d);
    struct dirent *e;
    int loaded = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char dir[1024], path[1100];
        snprintf(dir, sizeof dir, "%s/%s", root, e->d_name);
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        if (!tbert_is_regular_file(path)) continue;
        tbert_model *m;
        tbert_error err = {0};
        tbert_status st = tbert_model_load(dir, &m, &err);
        if (st != TBERT_OK) fprintf(stderr, "%s: %s\n", dir, err.msg);
        assert_int_equal(st, TBERT_OK);
        tbert_safetensors *sf;
        assert_int_equal(tbert_st_open(path, &sf, &err), TBERT_OK);
        const tbert_st_tensor *we = tbert_st_find(sf, "embeddings.word_embeddings.weight");
        if (!we) we = tbert_st_find(sf, "bert.embeddings.word_embeddings.weight");
        assert_non_null(we);
        assert_string_equal(m->weights_dtype, tbert_dtype_name(we->dtype));
        bool has_pooler = tbert_st_find(sf, "pooler.dense.weight") || tbert_st_find(sf, "bert.pooler.dense.weight");
        assert_int_equal(m->pooler_w != NULL, has_pooler);
        assert_int_equal(we->shape[0], m->cfg.vocab_size);
        assert_int_equal(we->shape[1], m->cfg.hidden);
        tbert_st_close(sf);
        tbert_model_free(m);
        loaded++;
    }
    closedir(d);
    fprintf(stderr, "loaded %d committed model folders\n", loaded);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loads_f32_plain),
        cmocka_unit_test(test_loads_bert_prefix_and_extras),
        cmocka_unit_test(test_loads_without_pooler),
        cmocka_unit_test(test_loads_f16_exact),
        cmocka_unit_test(test_loads_bf16_exact),
        cmocka_unit_test(test_loads_old_layernorm_names),
        cmocka_unit_test(test_loads_tiny_bert_shape),
        cmocka_unit_test(test_missing_tensor),
        cmocka_unit_test(test_wrong_shape),
        cmocka_unit_test(test_config_weights_mismatch),
        cmocka_unit_test(test_bad_weights),
        cmocka_unit_test(test_missing_files),
        cmocka_unit_test(test_unsupported_config),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_sha256_cache),
        cmocka_unit_test(test_committed_models_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
