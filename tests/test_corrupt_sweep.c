/* Corrupted files (issue 8): every byte of the first 512 bytes of a small model's model.safetensors set to
 * 0x00, 0xFF and byte+1, in-process. Each variant must either load (a valid file) or fail with a one-line
 * message naming the file; never crash or read outside the buffer (the parse also runs on an exactly-sized
 * heap copy, so ASan in CI sees any overread). The same over every byte of config.json. Plus every
 * truncation of the file, and resource limits: a
 * config claiming huge sizes and a safetensors claiming a huge header are refused without a large
 * allocation (ASan aborts on one). */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"
#include "tbert/fileio.h"
#include "tbert/model.h"
#include "tbert/safetensors.h"

#define SWEEP_BYTES 512

typedef struct {
    char dir[64];
    char path[128]; /* dir/model.safetensors */
    uint8_t *bytes; /* the original file */
    size_t len;
} tiny_model;

static void write_text(const char *dir, const char *file, const char *text) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
}

static void add_random(tbert_st_writer *w, tu_rng *r, const char *prefix, const char *name, tbert_dtype dt, int64_t d0,
                       int64_t d1) {
    size_t n = (size_t)d0 * (size_t)(d1 ? d1 : 1);
    uint16_t *h = malloc(n * 4);
    float *f = (float *)(void *)h;
    assert_non_null(h);
    for (size_t i = 0; i < n; i++) {
        float v = 0.05f * tu_normal(r);
        if (dt == TBERT_DT_BF16) {
            uint32_t b;
            memcpy(&b, &v, 4);
            h[i] = (uint16_t)(b >> 16);
        } else {
            f[i] = v;
        }
    }
    int64_t shape[2] = {d0, d1};
    char full[160];
    snprintf(full, sizeof full, "%s%s", prefix, name);
    tbert_error err;
    assert_int_equal(tbert_st_writer_add(w, full, dt, d1 ? 2 : 1, shape, h, &err), TBERT_OK);
    free(h);
}

/* V=24, H=8, 1 layer, 2 heads, I=16, P=8: a few KB, header well over 512 bytes. */
static void make_tiny(tiny_model *m, tbert_dtype dt, bool prefix, bool pooler, uint64_t seed) {
    const int V = 24, H = 8, I = 16, P = 8;
    snprintf(m->dir, sizeof m->dir, "/tmp/tbert_sweep_XXXXXX");
    assert_non_null(mkdtemp(m->dir));
    write_text(m->dir, "config.json",
               "{\"model_type\": \"bert\", \"vocab_size\": 24, \"hidden_size\": 8, \"num_hidden_layers\": 1,"
               " \"num_attention_heads\": 2, \"intermediate_size\": 16, \"max_position_embeddings\": 8,"
               " \"type_vocab_size\": 2, \"layer_norm_eps\": 1e-12, \"hidden_act\": \"gelu\", \"pad_token_id\": 0}");
    char vocab[512] = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n";
    for (int i = 5; i < V; i++) snprintf(vocab + strlen(vocab), sizeof vocab - strlen(vocab), "t%d\n", i);
    write_text(m->dir, "vocab.txt", vocab);
    tu_rng r = {seed};
    tbert_st_writer *w = tbert_st_writer_new();
    assert_non_null(w);
    const char *p = prefix ? "bert." : "";
    tbert_error err;
    if (prefix) { /* an unused I64 tensor, as MiniLM has */
        int64_t ids[8] = {0, 1, 2, 3, 4, 5, 6, 7}, shape[2] = {1, 8};
        assert_int_equal(tbert_st_writer_add(w, "bert.embeddings.position_ids", TBERT_DT_I64, 2, shape, ids, &err), TBERT_OK);
    }
    add_random(w, &r, p, "embeddings.word_embeddings.weight", dt, V, H);
    add_random(w, &r, p, "embeddings.position_embeddings.weight", dt, P, H);
    add_random(w, &r, p, "embeddings.token_type_embeddings.weight", dt, 2, H);
    add_random(w, &r, p, "embeddings.LayerNorm.weight", dt, H, 0);
    add_random(w, &r, p, "embeddings.LayerNorm.bias", dt, H, 0);
    static const char *parts[] = {"attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"};
    for (int k = 0; k < 4; k++) {
        char n[128];
        snprintf(n, sizeof n, "encoder.layer.0.%s.weight", parts[k]);
        add_random(w, &r, p, n, dt, H, H);
        snprintf(n, sizeof n, "encoder.layer.0.%s.bias", parts[k]);
        add_random(w, &r, p, n, dt, H, 0);
    }
    add_random(w, &r, p, "encoder.layer.0.attention.output.LayerNorm.weight", dt, H, 0);
    add_random(w, &r, p, "encoder.layer.0.attention.output.LayerNorm.bias", dt, H, 0);
    add_random(w, &r, p, "encoder.layer.0.intermediate.dense.weight", dt, I, H);
    add_random(w, &r, p, "encoder.layer.0.intermediate.dense.bias", dt, I, 0);
    add_random(w, &r, p, "encoder.layer.0.output.dense.weight", dt, H, I);
    add_random(w, &r, p, "encoder.layer.0.output.dense.bias", dt, H, 0);
    add_random(w, &r, p, "encoder.layer.0.output.LayerNorm.weight", dt, H, 0);
    add_random(w, &r, p, "encoder.layer.0.output.LayerNorm.bias", dt, H, 0);
    if (pooler) {
        add_random(w, &r, p, "pooler.dense.weight", dt, H, H);
        add_random(w, &r, p, "pooler.dense.bias", dt, H, 0);
    }
    assert_int_equal(tbert_st_writer_meta(w, "format", "pt", &err), TBERT_OK);
    snprintf(m->path, sizeof m->path, "%s/model.safetensors", m->dir);
    assert_int_equal(tbert_st_writer_save(w, m->path, &err), TBERT_OK);
    tbert_st_writer_free(w);
    char *buf;
    assert_int_equal(tbert_read_file(m->path, 0, &buf, &m->len, &err), TBERT_OK);
    m->bytes = (uint8_t *)buf;
    assert_true(m->len > SWEEP_BYTES);
}

static void free_tiny(tiny_model *m) {
    const char *files[] = {"config.json", "vocab.txt", "model.safetensors"};
    char path[256];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", m->dir, files[i]);
        unlink(path);
    }
    rmdir(m->dir);
    free(m->bytes);
}

static void sweep(tiny_model *m, const char *what) {
    uint8_t *work = malloc(m->len);
    assert_non_null(work);
    int loaded = 0, refused = 0;
    for (size_t pos = 0; pos < SWEEP_BYTES; pos++) {
        int values[3] = {0x00, 0xFF, (m->bytes[pos] + 1) & 0xFF};
        for (int k = 0; k < 3; k++) {
            if (values[k] == m->bytes[pos]) continue; /* not a change */
            memcpy(work, m->bytes, m->len);
            work[pos] = (uint8_t)values[k];
            /* 1: the parser over an exactly-sized heap buffer */
            tbert_safetensors *st = NULL;
            tbert_error err = {0};
            tbert_status s = tbert_st_parse(work, m->len, "sweep.safetensors", &st, &err);
            tu_check_corrupt_error(&err, s, "sweep.safetensors", pos, values[k]);
            if (s == TBERT_OK) {
                for (int i = 0; i < tbert_st_count(st); i++) { /* every tensor lies inside the buffer */
                    const tbert_st_tensor *t = tbert_st_at(st, i);
                    assert_true((const uint8_t *)t->data >= work && (const uint8_t *)t->data + t->nbytes <= work + m->len);
                }
                tbert_st_close(st);
            }
            /* 2: the whole model load from the folder */
            tu_write_bytes(m->path, work, m->len);
            tbert_model *model = NULL;
            tbert_error err2 = {0};
            tbert_status s2 = tbert_model_load(m->dir, &model, &err2);
            tu_check_corrupt_error(&err2, s2, m->path, pos, values[k]);
            if (s2 == TBERT_OK) {
                assert_int_equal(s, TBERT_OK); /* the loader cannot accept what the parser refuses */
                loaded++;
                tbert_model_free(model);
            } else {
                assert_null(model);
                refused++;
            }
        }
    }
    tu_write_bytes(m->path, m->bytes, m->len);
    fprintf(stderr, "%s: %d corrupted variants loaded (still valid), %d refused with a clear error\n", what, loaded, refused);
    assert_true(refused > 0);
    free(work);
}

static void test_sweep_f32_pooler(void **state) {
    tiny_model m;
    make_tiny(&m, TBERT_DT_F32, false, true, 42);
    /* the unmodified folder loads */
    tbert_model *model;
    tbert_error err;
    assert_int_equal(tbert_model_load(m.dir, &model, &err), TBERT_OK);
    tbert_model_free(model);
    sweep(&m, "F32 model");
    free_tiny(&m);
}

static void test_sweep_bf16_prefix(void **state) {
    tiny_model m;
    make_tiny(&m, TBERT_DT_BF16, true, false, 7);
    tbert_model *model;
    tbert_error err;
    assert_int_equal(tbert_model_load(m.dir, &model, &err), TBERT_OK);
    assert_string_equal(model->weights_dtype, "BF16");
    tbert_model_free(model);
    sweep(&m, "BF16 model with bert. prefix");
    free_tiny(&m);
}

/* config.json gets the same treatment over all its bytes (it is short): load or a clear error naming it. */
static void test_sweep_config(void **state) {
    tiny_model m;
    make_tiny(&m, TBERT_DT_F32, false, true, 11);
    char path[128];
    snprintf(path, sizeof path, "%s/config.json", m.dir);
    char *orig;
    size_t len;
    tbert_error err;
    assert_int_equal(tbert_read_file(path, 0, &orig, &len, &err), TBERT_OK);
    uint8_t *work = malloc(len);
    assert_non_null(work);
    int loaded = 0, refused = 0;
    for (size_t pos = 0; pos < len; pos++) {
        int values[3] = {0x00, 0xFF, ((uint8_t)orig[pos] + 1) & 0xFF};
        for (int k = 0; k < 3; k++) {
            if (values[k] == (uint8_t)orig[pos]) continue;
            memcpy(work, orig, len);
            work[pos] = (uint8_t)values[k];
            tu_write_bytes(path, work, len);
            tbert_model *model = NULL;
            tbert_error e = {0};
            tbert_status s = tbert_model_load(m.dir, &model, &e);
            tu_check_corrupt_error(&e, s, m.dir, pos, values[k]);
            if (s == TBERT_OK) {
                loaded++;
                tbert_model_free(model);
            } else {
                refused++;
            }
        }
    }
    fprintf(stderr, "config.json: %d corrupted variants loaded, %d refused with a clear error\n", loaded, refused);
    assert_true(refused > 0);
    free(work);
    free(orig);
    free_tiny(&m);
}

/* Every truncation: only the full length parses; each shorter one is a clear error. */
static void test_every_truncation(void **state) {
    tiny_model m;
    make_tiny(&m, TBERT_DT_F32, true, true, 3);
    for (size_t len = 0; len < m.len; len++) {
        uint8_t *b = malloc(len ? len : 1);
        assert_non_null(b);
        memcpy(b, m.bytes, len);
        tbert_safetensors *st = NULL;
        tbert_error err = {0};
        tbert_status s = tbert_st_parse(b, len, "cut.safetensors", &st, &err);
        if (s == TBERT_OK) {
            fprintf(stderr, "truncated to %zu of %zu bytes and still accepted\n", len, m.len);
            fail();
        }
        tu_check_corrupt_error(&err, s, "cut.safetensors", len, -1);
        free(b);
    }
    /* extra bytes at the end are refused as well */
    uint8_t *b = malloc(m.len + 1);
    assert_non_null(b);
    memcpy(b, m.bytes, m.len);
    b[m.len] = 0;
    tbert_safetensors *st;
    tbert_error err;
    assert_int_equal(tbert_st_parse(b, m.len + 1, "long.safetensors", &st, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "1 trailing bytes"));
    free(b);
    free_tiny(&m);
}

/* Resource limits: sizes claimed by a file are checked against what the file holds before allocating. */
static void test_resource_limits(void **state) {
    tiny_model m;
    make_tiny(&m, TBERT_DT_F32, false, true, 5);
    tbert_model *model;
    tbert_error err;
    /* a config at the caps (vocab 4e6 x hidden 65536 would be a 1 TB embedding): refused by the shape check
     * against the tiny weights, before any weight allocation */
    write_text(m.dir, "config.json",
               "{\"vocab_size\": 4000000, \"hidden_size\": 65536, \"num_hidden_layers\": 512, \"num_attention_heads\": 64,"
               " \"intermediate_size\": 1048576, \"max_position_embeddings\": 1048576, \"type_vocab_size\": 1024}");
    assert_int_equal(tbert_model_load(m.dir, &model, &err), TBERT_E_MISMATCH);
    assert_non_null(strstr(err.msg, "embeddings.word_embeddings.weight' has shape [24, 8] but config.json implies [4000000, 65536]"));
    /* beyond the caps: refused by the config reader */
    write_text(m.dir, "config.json",
               "{\"vocab_size\": 24, \"hidden_size\": 8, \"num_hidden_layers\": 100000000, \"num_attention_heads\": 2,"
               " \"intermediate_size\": 16, \"max_position_embeddings\": 8}");
    assert_int_equal(tbert_model_load(m.dir, &model, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "'num_hidden_layers' must be an integer in [1, 512]"));
    /* a 12-byte model.safetensors claiming a 2^63-byte header */
    uint8_t twelve[12] = {0, 0, 0, 0, 0, 0, 0, 0x80, '{', '}', ' ', ' '};
    tu_write_bytes(m.path, twelve, sizeof twelve);
    write_text(m.dir, "config.json",
               "{\"vocab_size\": 24, \"hidden_size\": 8, \"num_hidden_layers\": 1, \"num_attention_heads\": 2,"
               " \"intermediate_size\": 16, \"max_position_embeddings\": 8}");
    assert_int_equal(tbert_model_load(m.dir, &model, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "header length 9223372036854775808 is over the limit"));
    /* a header that declares a tensor far larger than the file */
    const char *h = "{\"x\":{\"dtype\":\"F32\",\"shape\":[1000000000,1000],\"data_offsets\":[0,4000000000000]}}";
    size_t hl = strlen(h);
    uint8_t *b = calloc(1, 8 + hl);
    assert_non_null(b);
    b[0] = (uint8_t)hl;
    memcpy(b + 8, h, hl);
    tu_write_bytes(m.path, b, 8 + hl);
    assert_int_equal(tbert_model_load(m.dir, &model, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "outside the data area (0 bytes)"));
    free(b);
    free_tiny(&m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sweep_f32_pooler),
        cmocka_unit_test(test_sweep_bf16_prefix),
        cmocka_unit_test(test_sweep_config),
        cmocka_unit_test(test_every_truncation),
        cmocka_unit_test(test_resource_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
