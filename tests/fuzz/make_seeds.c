/* Writes the seed inputs of the fuzz targets that tbert itself produces (head checkpoints, recipe JSON,
 * small safetensors files) into OUT/<target>/. scripts/fuzz.sh --seeds runs it (with the fixture copies)
 * to refresh tests/fuzz/corpus/. usage: fuzz_make_seeds OUT_DIR */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tbert/checkpoint.h"
#include "tbert/fileio.h"
#include "tbert/recipe.h"
#include "tbert/safetensors.h"

static void die(const tbert_error *err) {
    fprintf(stderr, "fuzz_make_seeds: %s\n", err->msg);
    exit(1);
}

static void put(const char *out, const char *target, const char *name, const void *data, size_t len) {
    char dir[4200], path[4300];
    snprintf(dir, sizeof dir, "%s/%s", out, target);
    tbert_error err;
    if (tbert_mkdirs(dir, &err)) die(&err);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (tbert_write_file_atomic(path, data, len, &err)) die(&err);
}

static void copy_file(const char *out, const char *target, const char *name, const char *src) {
    char *buf;
    size_t len;
    tbert_error err;
    if (tbert_read_file(src, 0, &buf, &len, &err)) die(&err);
    put(out, target, name, buf, len);
    free(buf);
}

static tbert_recipe small_recipe(const char *preset) {
    tbert_recipe r;
    tbert_error err;
    if (tbert_recipe_preset(preset, &r, &err)) die(&err);
    memset(r.model_hash, 'a', 64);
    r.model_hash[64] = '\0';
    memset(r.vocab_hash, 'b', 64);
    r.vocab_hash[64] = '\0';
    r.model_hidden = 4;
    r.model_layers = 1;
    r.layers = 1;
    if (r.lexical_dim) r.lexical_dim = 8;
    if (r.evidence_dim) r.evidence_dim = 4;
    r.n_labels = 2;
    strcpy(r.labels[0], "ham");
    strcpy(r.labels[1], "spam");
    r.positive = 1;
    r.threshold = 0.5f;
    return r;
}

static void checkpoint_seed(const char *out, const char *name, const char *preset, int hidden, bool with_adam) {
    char tmp[4300];
    tbert_error err;
    tbert_recipe r = small_recipe(preset);
    tbert_head_config cfg = {.in_dim = tbert_recipe_dim(&r), .hidden = hidden, .n_classes = 2, .binary = true, .positive = 1};
    tbert_head *h;
    if (tbert_head_create(&cfg, &h, &err)) die(&err);
    tbert_head_init(h, 42);
    tbert_ckpt_meta meta = {0};
    meta.recipe = r;
    memset(meta.data_hash, 'c', 64);
    meta.seed = 42;
    meta.epoch = 1;
    meta.best_epoch = 1;
    meta.metrics_json = "{\"accuracy\":1}";
    meta.train_json = "{\"settings\":{}}";
    tbert_adam adam;
    tbert_rng rng;
    tbert_rng_seed(&rng, 7);
    if (with_adam && tbert_adam_init(&adam, h->n_params, &err)) die(&err);
    snprintf(tmp, sizeof tmp, "%s/%s.tmp", out, name);
    if (tbert_checkpoint_save(tmp, h, &meta, with_adam ? &adam : NULL, with_adam ? &rng : NULL, &err)) die(&err);
    copy_file(out, "checkpoint", name, tmp);
    copy_file(out, "safetensors", name, tmp);
    remove(tmp);
    if (with_adam) tbert_adam_free(&adam);
    tbert_head_free(h);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: fuzz_make_seeds OUT_DIR\n");
        return 2;
    }
    const char *out = argv[1];
    tbert_error err;
    if (tbert_mkdirs(out, &err)) die(&err);
    checkpoint_seed(out, "linear_best.safetensors", "text", 0, false);
    checkpoint_seed(out, "mlp_last.safetensors", "text", 3, true);
    checkpoint_seed(out, "mail_best.safetensors", "mail", 0, false);
    static const char *const presets[] = {"text", "seed", "mail"};
    for (int i = 0; i < 3; i++) {
        tbert_recipe r = small_recipe(presets[i]);
        char *j = tbert_recipe_to_json(&r);
        if (!j) return 1;
        char name[32];
        snprintf(name, sizeof name, "%s.json", presets[i]);
        put(out, "recipe", name, j, strlen(j));
        free(j);
    }
    /* safetensors: a few dtypes and shapes, metadata, an empty file */
    tbert_st_writer *w = tbert_st_writer_new();
    float f[6] = {1, -2, 3.5f, 0, 1e-3f, 65504};
    uint16_t h[4] = {0x3c00, 0x8001, 0x7c00, 0x7e00};
    int64_t i64[2] = {0, 511};
    int64_t s23[2] = {2, 3}, s4[1] = {4}, s2[1] = {2}, s0[1] = {0};
    if (!w || tbert_st_writer_add(w, "a.weight", TBERT_DT_F32, 2, s23, f, &err) ||
        tbert_st_writer_add(w, "b.half", TBERT_DT_F16, 1, s4, h, &err) || tbert_st_writer_add(w, "c.bf16", TBERT_DT_BF16, 1, s4, h, &err) ||
        tbert_st_writer_add(w, "d.ids", TBERT_DT_I64, 1, s2, i64, &err) || tbert_st_writer_add(w, "e.empty", TBERT_DT_F32, 1, s0, f, &err) ||
        tbert_st_writer_meta(w, "format", "pt", &err))
        die(&err);
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s/st.tmp", out);
    if (tbert_st_writer_save(w, tmp, &err)) die(&err);
    tbert_st_writer_free(w);
    copy_file(out, "safetensors", "dtypes.safetensors", tmp);
    remove(tmp);
    w = tbert_st_writer_new();
    if (!w || tbert_st_writer_save(w, tmp, &err)) die(&err);
    tbert_st_writer_free(w);
    copy_file(out, "safetensors", "empty.safetensors", tmp);
    remove(tmp);
    static const char *const thr[] = {"f1", "fpr=0.001", "fpr=0.5", "0.5", "0", "1", "1e-3", "fpr=", "nan", "-0.1"};
    for (int i = 0; i < 10; i++) {
        char name[16];
        snprintf(name, sizeof name, "t%d", i);
        put(out, "threshold", name, thr[i], strlen(thr[i]));
    }
    return 0;
}
