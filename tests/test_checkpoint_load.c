/* Head checkpoints: save/load round trip (weights, Adam state, RNG, metadata bit for bit), and a table of
 * corrupt checkpoints, each refused with its own error code and a message naming the problem. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"
#include "tbert/checkpoint.h"
#include "tbert/safetensors.h"

static tbert_recipe make_recipe(void) {
    tbert_recipe r;
    tbert_recipe_preset("text", &r, NULL);
    snprintf(r.model_hash, sizeof r.model_hash, "%064d", 1);
    snprintf(r.vocab_hash, sizeof r.vocab_hash, "%064d", 2);
    r.model_hidden = 6;
    r.model_layers = 2;
    r.layers = 2;
    r.lexical_dim = 2;
    r.n_labels = 2;
    snprintf(r.labels[0], TBERT_MAX_LABEL_LEN, "ham");
    snprintf(r.labels[1], TBERT_MAX_LABEL_LEN, "spam");
    r.positive = 1;
    r.threshold = 0.375f;
    return r;
}

static void test_round_trip(void **state) {
    tbert_recipe r = make_recipe();
    tbert_head_config cfg = {.in_dim = 8, .hidden = 3, .n_classes = 2, .binary = true, .positive = 1, .dropout = 0.25f};
    tbert_head *h;
    assert_int_equal(tbert_head_create(&cfg, &h, NULL), TBERT_OK);
    tbert_head_init(h, 3);
    tbert_adam a;
    assert_int_equal(tbert_adam_init(&a, h->n_params, NULL), TBERT_OK);
    for (size_t i = 0; i < h->n_params; i++) a.m[i] = (float)i * 0.5f, a.v[i] = (float)i * 0.25f;
    a.step = 123456789012LL;
    tbert_rng rng;
    tbert_rng_seed(&rng, 99);
    rng.s[2] = UINT64_MAX; /* the top bit survives the I64 round trip */
    tbert_ckpt_meta meta = {.recipe = r, .seed = 18446744073709551615ull, .epoch = 7, .best_epoch = 5,
                            .metrics_json = "{\"test\":{\"accuracy\":1}}", .train_json = "{\"x\":1}"};
    snprintf(meta.data_hash, sizeof meta.data_hash, "%064d", 3);
    char dir[] = "/tmp/tbert_ckpt_XXXXXX", path[300];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/last.safetensors", dir);
    tbert_error err;
    assert_int_equal(tbert_checkpoint_save(path, h, &meta, &a, &rng, &err), TBERT_OK);
    tbert_head *h2;
    tbert_ckpt_meta m2;
    tbert_adam a2;
    tbert_rng rng2;
    assert_int_equal(tbert_checkpoint_load(path, &h2, &m2, &a2, &rng2, &err), TBERT_OK);
    assert_memory_equal(h->params, h2->params, h->n_params * sizeof(float));
    assert_int_equal(h2->cfg.in_dim, 8);
    assert_int_equal(h2->cfg.hidden, 3);
    assert_true(h2->cfg.binary && h2->cfg.positive == 1 && h2->cfg.dropout == 0.25f);
    assert_memory_equal(a.m, a2.m, h->n_params * sizeof(float));
    assert_memory_equal(a.v, a2.v, h->n_params * sizeof(float));
    assert_true(a2.step == a.step);
    assert_memory_equal(&rng, &rng2, sizeof rng);
    assert_memory_equal(&r, &m2.recipe, sizeof r);
    assert_true(m2.seed == meta.seed);
    assert_int_equal(m2.epoch, 7);
    assert_int_equal(m2.best_epoch, 5);
    assert_string_equal(m2.metrics_json, meta.metrics_json);
    assert_string_equal(m2.data_hash, meta.data_hash);
    /* the classifier reads the same file; predictions follow the stored threshold */
    tbert_classifier *c;
    assert_int_equal(tbert_classifier_load(path, NULL, &c, &err), TBERT_OK);
    float x[2 * 8] = {0}, p[2], probs[4];
    int k[2];
    for (int i = 0; i < 16; i++) x[i] = (float)(i % 5) - 2.0f;
    assert_int_equal(tbert_classifier_predict(c, 2, x, p, k, &err), TBERT_OK);
    assert_int_equal(tbert_head_predict(h, 2, x, probs, &err), TBERT_OK);
    for (int i = 0; i < 2; i++) {
        assert_float_equal(p[i], probs[2 * i + 1], 0);
        assert_int_equal(k[i], p[i] >= 0.375f ? 1 : 0);
    }
    tbert_adam_free(&a2);
    /* a best.safetensors (no optimizer state) cannot be resumed from */
    snprintf(path, sizeof path, "%s/best.safetensors", dir);
    assert_int_equal(tbert_checkpoint_save(path, h, &meta, NULL, NULL, &err), TBERT_OK);
    tbert_head *h3;
    tbert_ckpt_meta m3;
    assert_int_equal(tbert_checkpoint_load(path, &h3, &m3, &a2, NULL, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "adam."));
    /* the classifier takes a folder */
    tbert_classifier *c2;
    assert_int_equal(tbert_classifier_load(dir, NULL, &c2, &err), TBERT_OK);
    tbert_classifier_free(c2);
    tbert_classifier_free(c);
    tbert_head_free(h2);
    tbert_ckpt_meta_free(&m2);
    tbert_adam_free(&a);
    tbert_head_free(h);
    unlink(path);
    snprintf(path, sizeof path, "%s/last.safetensors", dir);
    unlink(path);
    rmdir(dir);
}

/* ---- corrupt checkpoints ---- */
typedef struct {
    const char *name;
    const char *meta_key, *meta_value; /* override (value NULL: drop the key) */
    const char *tensor;                /* tensor to damage */
    int damage;                        /* 1 wrong shape, 2 NaN, 3 drop, 4 extra tensor, 5 F16 dtype */
    tbert_status code;
    const char *msg;
} corrupt_case;

static void write_variant(const char *path, const corrupt_case *cc) {
    tbert_recipe r = make_recipe();
    char *rj = tbert_recipe_to_json(&r);
    const char *keys[] = {"format", "format_version", "tbert_version", "recipe", "head", "labels", "positive", "threshold",
                          "seed", "data_hash", "epoch", "best_epoch", "metrics", "train"};
    char dh[65];
    snprintf(dh, sizeof dh, "%064d", 4);
    const char *vals[] = {"tbert-head", "1", "0", rj, "{\"in_dim\":8,\"hidden\":0,\"n_classes\":2,\"binary\":true,\"dropout\":0}",
                          "[\"ham\",\"spam\"]", "spam", "0.375", "42", dh, "1", "1", "{}", "{}"};
    tbert_st_writer *w = tbert_st_writer_new();
    float wt[8] = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f, 0.8f}, b[1] = {0.5f};
    int64_t ws[2] = {1, 8}, bs[1] = {1};
    if (cc->damage == 1 && !strcmp(cc->tensor, "fc2.weight")) ws[1] = 7;
    if (cc->damage == 2) wt[3] = 0.0f / 0.0f;
    if (!(cc->damage == 3 && !strcmp(cc->tensor, "fc2.weight")))
        assert_int_equal(tbert_st_writer_add(w, "fc2.weight", cc->damage == 5 ? TBERT_DT_F16 : TBERT_DT_F32, 2, ws, wt, NULL),
                         TBERT_OK);
    if (!(cc->damage == 3 && !strcmp(cc->tensor, "fc2.bias")))
        assert_int_equal(tbert_st_writer_add(w, "fc2.bias", TBERT_DT_F32, 1, bs, b, NULL), TBERT_OK);
    if (cc->damage == 4) assert_int_equal(tbert_st_writer_add(w, cc->tensor, TBERT_DT_F32, 1, bs, b, NULL), TBERT_OK);
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const char *v = vals[i];
        if (cc->meta_key && !strcmp(cc->meta_key, keys[i])) v = cc->meta_value;
        if (v) assert_int_equal(tbert_st_writer_meta(w, keys[i], v, NULL), TBERT_OK);
    }
    assert_int_equal(tbert_st_writer_save(w, path, NULL), TBERT_OK);
    tbert_st_writer_free(w);
    free(rj);
}

static void test_corrupt_table(void **state) {
    static const corrupt_case cases[] = {
        {"valid", NULL, NULL, NULL, 0, TBERT_OK, ""},
        {"no format", "format", NULL, NULL, 0, TBERT_E_FORMAT, "not a tbert head"},
        {"other format", "format", "pytorch", NULL, 0, TBERT_E_FORMAT, "not a tbert head"},
        {"future format_version", "format_version", "2", NULL, 0, TBERT_E_UNSUPPORTED, "format_version 2"},
        {"recipe not JSON", "recipe", "{oops", NULL, 0, TBERT_E_FORMAT, "not a JSON object"},
        {"future recipe_version", "recipe", "{\"recipe_version\":5}", NULL, 0, TBERT_E_UNSUPPORTED, "recipe_version 5"},
        {"labels disagree", "labels", "[\"a\",\"b\"]", NULL, 0, TBERT_E_FORMAT, "disagree"},
        {"threshold disagrees", "threshold", "0.5", NULL, 0, TBERT_E_FORMAT, "disagree"},
        {"positive disagrees", "positive", "ham", NULL, 0, TBERT_E_FORMAT, "disagree"},
        {"no head", "head", NULL, NULL, 0, TBERT_E_FORMAT, "'head'"},
        {"head wider than recipe", "head", "{\"in_dim\":9,\"hidden\":0,\"n_classes\":2,\"binary\":true,\"dropout\":0}", NULL, 0,
         TBERT_E_FORMAT, "feature size"},
        {"head classes", "head", "{\"in_dim\":8,\"hidden\":0,\"n_classes\":3,\"binary\":false,\"dropout\":0}", NULL, 0,
         TBERT_E_FORMAT, "labels"},
        {"hidden 1e300", "head", "{\"in_dim\":8,\"hidden\":1e300,\"n_classes\":2,\"binary\":true,\"dropout\":0}", NULL, 0,
         TBERT_E_FORMAT, "'head'"},
        {"in_dim -1e300", "head", "{\"in_dim\":-1e300,\"hidden\":0,\"n_classes\":2,\"binary\":true,\"dropout\":0}", NULL, 0,
         TBERT_E_FORMAT, "'head'"},
        {"hidden fractional", "head", "{\"in_dim\":8,\"hidden\":2.5,\"n_classes\":2,\"binary\":true,\"dropout\":0}", NULL,
         0, TBERT_E_FORMAT, "'head'"},
        {"classes 1e10", "head", "{\"in_dim\":8,\"hidden\":0,\"n_classes\":1e10,\"binary\":true,\"dropout\":0}", NULL, 0,
         TBERT_E_FORMAT, "'head'"},
        {"dropout NaN-ish", "head", "{\"in_dim\":8,\"hidden\":0,\"n_classes\":2,\"binary\":true,\"dropout\":5}", NULL, 0,
         TBERT_E_FORMAT, "'head'"},
        /* a 4 KB file claiming a 65536-unit MLP is refused by its tensor shapes before anything is allocated */
        {"hidden 65536, tensors of a linear head", "head",
         "{\"in_dim\":8,\"hidden\":65536,\"n_classes\":2,\"binary\":true,\"dropout\":0}", NULL, 0, TBERT_E_FORMAT,
         "'fc2.weight' should be F32 of shape (1,65536) for the head in its metadata"},
        {"bad data hash", "data_hash", "xyz", NULL, 0, TBERT_E_FORMAT, "data_hash"},
        {"bad seed", "seed", "4x2", NULL, 0, TBERT_E_FORMAT, "seed"},
        {"bad epoch", "epoch", "-1", NULL, 0, TBERT_E_FORMAT, "epoch"},
        {"weight shape", NULL, NULL, "fc2.weight", 1, TBERT_E_FORMAT, "'fc2.weight' should be F32 of shape (1,8)"},
        {"weight NaN", NULL, NULL, "fc2.weight", 2, TBERT_E_FORMAT, "NaN"},
        {"weight missing", NULL, NULL, "fc2.weight", 3, TBERT_E_FORMAT, "'fc2.weight' is missing"},
        {"bias missing", NULL, NULL, "fc2.bias", 3, TBERT_E_FORMAT, "'fc2.bias' is missing"},
        {"extra tensor", NULL, NULL, "fc3.bias", 4, TBERT_E_FORMAT, "tensors where"},
        {"weight F16", NULL, NULL, "fc2.weight", 5, TBERT_E_FORMAT, "should be F32"},
    };
    char dir[] = "/tmp/tbert_ckbad_XXXXXX", path[300];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/best.safetensors", dir);
    int failures = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const corrupt_case *cc = &cases[i];
        write_variant(path, cc);
        tbert_head *h = NULL;
        tbert_ckpt_meta meta;
        tbert_error err = {0};
        tbert_status st = tbert_checkpoint_load(path, &h, &meta, NULL, NULL, &err);
        bool ok = st == cc->code && (st == TBERT_OK ? h != NULL : h == NULL && strstr(err.msg, cc->msg) && strstr(err.msg, path));
        if (!ok) {
            print_error("case '%s': got %s '%s', expected %s with '%s'\n", cc->name, tbert_status_name(st), err.msg,
                        tbert_status_name(cc->code), cc->msg);
            failures++;
        }
        if (st == TBERT_OK) {
            tbert_head_free(h);
            tbert_ckpt_meta_free(&meta);
        }
    }
    unlink(path);
    rmdir(dir);
    assert_int_equal(failures, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_corrupt_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
