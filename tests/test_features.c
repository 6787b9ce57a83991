/* The featurizer on a small committed model: the dense block is the mean of the windows' pooled vectors
 * (computed here independently through tbert_make_windows + tbert_encoder_pool), the lexical and evidence
 * blocks are the documented hashed log1p counts, L2-normalised; the featurizer's two stages (tokenize, then
 * the token ids) give the same rows; the row store returns the same bytes; the recipe JSON round-trips and refuses unknown versions and bad fields. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"
#include "tbert/fileio.h"
#include "tbert/recipe.h"
#include "tbert/tokenizer.h"

static uint64_t fmix64(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ull;
    k ^= k >> 33;
    return k;
}
static uint64_t fnv1a64(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    return h;
}
static void log1p_l2_ref(double *v, int n) {
    double ss = 0;
    for (int i = 0; i < n; i++) {
        v[i] = log1p(v[i]);
        ss += v[i] * v[i];
    }
    for (int i = 0; i < n && ss > 0; i++) v[i] /= sqrt(ss);
}

static tbert_model *load_model(void) {
    char dir[512];
    tu_fixture("models/bert_tiny_shape", dir, sizeof dir);
    tbert_model *m = NULL;
    tbert_error err;
    if (tbert_model_load(dir, &m, &err)) fail_msg("committed model: %s", err.msg);
    return m;
}

static void test_featurizer_blocks(void **state) {
    tbert_model *m = load_model();
    tbert_error err;
    tbert_recipe r;
    assert_int_equal(tbert_recipe_preset("text", &r, &err), TBERT_OK);
    r.max_len = 8; /* 6 content tokens per window: the longer texts need several windows */
    r.windows = 3;
    r.normalize = true;
    r.lexical_dim = 64;
    r.evidence = TBERT_EVIDENCE_BLOCK;
    r.evidence_dim = 16;
    r.header_dim = 32;
    r.header_weight = 2.5f;
    assert_int_equal(tbert_recipe_bind_model(&r, m, &err), TBERT_OK);
    tbert_encoder_opts eo = tbert_encoder_default_opts();
    eo.device.kind = TBERT_DEVICE_CPU;
    eo.quiet = true;
    tbert_encoder *enc;
    assert_int_equal(tbert_encoder_create(m, &eo, &enc, &err), TBERT_OK);
    tbert_featurizer *fz;
    assert_int_equal(tbert_featurizer_create(&r, m, enc, &fz, &err), TBERT_OK);
    const int H = m->cfg.hidden, D = (int)tbert_featurizer_dim(fz);
    assert_int_equal(D, H + 64 + 16 + 32);
    const char *texts[4] = {"win a free prize now call to claim your cash today", "", "see you at lunch",
                            "free free free free prize prize cash claim claim claim claim now now now now now now now"};
    /* "h." words go to the header block only; the evidence block takes the rest */
    const char *ev[4] = {"from_domain:example.com rcvd_hops:3 h.from:bob@example.com h.received:mx.example.com", NULL, "",
                         "mailer:x h.x-mailer:x mailer:x from_domain:a.b h.x-mailer:x"};
    tbert_doc docs[4];
    for (int i = 0; i < 4; i++) docs[i] = (tbert_doc){texts[i], strlen(texts[i]), ev[i]};
    float *X = malloc(sizeof(float) * 4 * D);
    int seen[4];
    assert_int_equal(tbert_featurize(fz, 4, docs, X, seen, &err), TBERT_OK);
    for (int i = 0; i < 4; i++) {
        tbert_i32vec ids = {0}, win = {0};
        assert_int_equal(tbert_tokenize(m->vocab, texts[i], strlen(texts[i]), &ids, &err), TBERT_OK);
        assert_int_equal(seen[i], (int)ids.n);
        size_t starts[3];
        int lens[3], nw;
        assert_int_equal(tbert_make_windows(m->vocab, ids.v, ids.n, 8, 3, &win, starts, lens, &nw, &err), TBERT_OK);
        if (i == 0 || i == 3) assert_true(nw >= 2);
        const int32_t *seqs[3];
        for (int w = 0; w < nw; w++) seqs[w] = win.v + starts[w];
        float pooled[3 * 256];
        assert_int_equal(tbert_encoder_pool(enc, nw, seqs, lens, 8, TBERT_POOL_MEAN, false, pooled, &err), TBERT_OK);
        double ref[256], ss = 0;
        for (int h = 0; h < H; h++) {
            ref[h] = 0;
            for (int w = 0; w < nw; w++) ref[h] += pooled[w * H + h];
            ref[h] /= nw;
            ss += ref[h] * ref[h];
        }
        for (int h = 0; h < H; h++) ref[h] /= sqrt(ss); /* normalize: after averaging */
        char what[64];
        snprintf(what, sizeof what, "dense block doc %d", i);
        assert_int_equal(tu_compare_f64(what, X + (size_t)i * D, ref, (size_t)H, 1e-6, 1e-5), 0);
        double lex[64] = {0}, evb[16] = {0}, hdb[32] = {0};
        for (size_t k = 0; k < ids.n; k++) lex[fmix64((uint64_t)ids.v[k] + 1) % 64] += 1;
        log1p_l2_ref(lex, 64);
        snprintf(what, sizeof what, "lexical block doc %d", i);
        assert_int_equal(tu_compare_f64(what, X + (size_t)i * D + H, lex, 64, 1e-7, 1e-6), 0);
        const char *e = ev[i] ? ev[i] : "";
        for (const char *p = e; *p;) {
            while (*p == ' ') p++;
            const char *s = p;
            while (*p && *p != ' ') p++;
            bool word = p - s > 2 && !strncmp(s, "h.", 2);
            if (p > s && !word) evb[fmix64(fnv1a64(s, (size_t)(p - s))) % 16] += 1;
            if (word) hdb[fmix64(fnv1a64(s, (size_t)(p - s))) % 32] += 1;
        }
        log1p_l2_ref(evb, 16);
        log1p_l2_ref(hdb, 32);
        for (int k = 0; k < 32; k++) hdb[k] *= 2.5;
        snprintf(what, sizeof what, "header block doc %d", i);
        assert_int_equal(tu_compare_f64(what, X + (size_t)i * D + H + 64 + 16, hdb, 32, 1e-7, 1e-6), 0);
        snprintf(what, sizeof what, "evidence block doc %d", i);
        assert_int_equal(tu_compare_f64(what, X + (size_t)i * D + H + 64, evb, 16, 1e-7, 1e-6), 0);
        tbert_i32vec_free(&ids);
        tbert_i32vec_free(&win);
    }
    /* the featurizer in two stages (score's workers tokenize, its scoring thread encodes): the same rows */
    {
        tbert_i32vec tok[4] = {{0}};
        for (int i = 3; i >= 0; i--) /* any order: the stage has no state */
            assert_int_equal(tbert_featurizer_tokenize(fz, &docs[i], &tok[i], &err), TBERT_OK);
        tbert_i32vec ref_ids = {0};
        assert_int_equal(tbert_tokenize(m->vocab, texts[0], strlen(texts[0]), &ref_ids, &err), TBERT_OK);
        assert_int_equal(tok[0].n, ref_ids.n);
        assert_memory_equal(tok[0].v, ref_ids.v, ref_ids.n * sizeof(int32_t));
        tbert_doc no_text[4]; /* the second stage must not read the text */
        for (int i = 0; i < 4; i++) no_text[i] = (tbert_doc){NULL, 0, ev[i]};
        tbert_rows two;
        int seen2[4];
        assert_int_equal(tbert_featurizer_rows_init(fz, &two, &err), TBERT_OK);
        assert_int_equal(tbert_featurize_rows_ids(fz, 4, no_text, tok, &two, seen2, &err), TBERT_OK);
        float *X2 = malloc(sizeof(float) * 4 * D);
        memset(X2, 0xff, sizeof(float) * 4 * D);
        tbert_rows_densify(&two, 0, 4, X2, (size_t)D);
        assert_memory_equal(X, X2, sizeof(float) * 4 * D);
        assert_memory_equal(seen, seen2, sizeof seen);
        free(X2);
        tbert_rows_free(&two);
        tbert_i32vec_free(&ref_ids);
        for (int i = 0; i < 4; i++) tbert_i32vec_free(&tok[i]);
    }
    /* the row store: a miss encodes and stores, a hit returns the same bytes; a recipe that differs only in its
     * sparse blocks (lexical_dim) reuses the stored dense blocks; another text misses */
    char cache[] = "/tmp/tbert_featcache_XXXXXX";
    assert_non_null(mkdtemp(cache));
    tbert_store_opts so = {.dir = cache};
    tbert_store *store;
    assert_int_equal(tbert_store_open(&so, &store, &err), TBERT_OK);
    float *Y = malloc(sizeof(float) * 4 * D), *Z = malloc(sizeof(float) * 4 * D);
    tbert_rows rows;
    tbert_feature_stats fs;
    assert_int_equal(tbert_featurizer_rows_init(fz, &rows, &err), TBERT_OK);
    assert_int_equal(tbert_featurize_stored(fz, store, 4, docs, NULL, &rows, &fs, &err), TBERT_OK);
    assert_int_equal(fs.encoded, 4);
    tbert_rows_densify(&rows, 0, 4, Y, (size_t)D);
    assert_memory_equal(X, Y, sizeof(float) * 4 * D);
    tbert_rows_clear(&rows);
    assert_int_equal(tbert_featurize_stored(fz, store, 4, docs, NULL, &rows, &fs, &err), TBERT_OK);
    assert_int_equal(fs.encoded, 0);
    assert_int_equal(fs.from_store, 4);
    memset(Z, 0xff, sizeof(float) * 4 * D);
    tbert_rows_densify(&rows, 0, 4, Z, (size_t)D);
    assert_memory_equal(X, Z, sizeof(float) * 4 * D);
    tbert_recipe r2 = r;
    r2.lexical_dim = 32;
    tbert_featurizer *fz2;
    tbert_rows rows2;
    assert_int_equal(tbert_featurizer_create(&r2, m, enc, &fz2, &err), TBERT_OK);
    assert_int_equal(tbert_featurizer_rows_init(fz2, &rows2, &err), TBERT_OK);
    assert_int_equal(tbert_featurize_stored(fz2, store, 4, docs, NULL, &rows2, &fs, &err), TBERT_OK);
    assert_int_equal(fs.encoded, 0);
    assert_memory_equal(rows2.dense, rows.dense, sizeof(float) * 4 * (size_t)H);
    tbert_doc other = {"other", 5, NULL};
    tbert_rows_clear(&rows);
    assert_int_equal(tbert_featurize_stored(fz, store, 1, &other, NULL, &rows, &fs, &err), TBERT_OK);
    assert_int_equal(fs.encoded, 1);
    tbert_rows_free(&rows);
    tbert_rows_free(&rows2);
    tbert_featurizer_free(fz2);
    tbert_store_close(store);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", cache);
    assert_int_equal(system(cmd), 0);
    free(X);
    free(Y);
    free(Z);
    tbert_featurizer_free(fz);
    tbert_encoder_free(enc);
    tbert_model_free(m);
}

/* JSON of r, which must read back to r field for field (the float threshold bit for bit); caller frees */
static char *json_round_trip(const tbert_recipe *r) {
    tbert_recipe back;
    tbert_error err;
    char *j = tbert_recipe_to_json(r);
    assert_non_null(j);
    if (tbert_recipe_from_json(j, "t", &back, &err)) fail_msg("%s: %s", j, err.msg);
    assert_memory_equal(r, &back, sizeof *r);
    return j;
}

static void test_recipe_json(void **state) {
    tbert_recipe r, back;
    tbert_error err;
    assert_int_equal(tbert_recipe_preset("mail", &r, &err), TBERT_OK);
    snprintf(r.model_hash, sizeof r.model_hash, "%064d", 7);
    snprintf(r.vocab_hash, sizeof r.vocab_hash, "%064d", 9);
    r.model_hidden = 384;
    r.model_layers = 6;
    r.layers = 4;
    r.n_labels = 2;
    snprintf(r.labels[0], TBERT_MAX_LABEL_LEN, "ham");
    snprintf(r.labels[1], TBERT_MAX_LABEL_LEN, "spam \"quoted\"");
    r.positive = 1;
    r.threshold = 0.123456789f;
    char *j = tbert_recipe_to_json(&r);
    assert_non_null(j);
    assert_int_equal(tbert_recipe_from_json(j, "t", &back, &err), TBERT_OK);
    assert_memory_equal(&r, &back, sizeof r); /* every field, the float threshold bit for bit */
    /* mail: lexical 30522 + evidence block 1024 + header words 16384 */
    assert_int_equal(tbert_recipe_dim(&back), 384 + 30522 + 1024 + 16384);
    assert_non_null(strstr(j, "\"header_dim\":16384,\"header_weight\":4"));
    assert_null(strstr(j, "lexical_ngrams")); /* the default (1) is not written: older recipes and cache keys stay */
    free(j);
    r.lexical_ngrams = 2;
    j = json_round_trip(&r);
    assert_non_null(strstr(j, "\"lexical_ngrams\":2"));
    free(j);
    r.lexical_ngrams = 1;
    /* recipe_version 2: "finetune" only for a fine-tuned encoder; version 1 (no key) still loads */
    assert_int_equal(r.recipe_version, 2);
    r.finetune.layers = 2;
    r.finetune.embeddings = true;
    snprintf(r.finetune.base_model_sha256, sizeof r.finetune.base_model_sha256, "%064x", 0xabcu);
    j = json_round_trip(&r);
    assert_non_null(strstr(j, ",\"finetune\":{\"layers\":2,\"embeddings\":true,\"base_model_sha256\":\"000"));
    char *v = strstr(j, "\"recipe_version\":2");
    assert_non_null(v);
    v[17] = '1'; /* a version 1 recipe cannot say "finetune" */
    assert_int_equal(tbert_recipe_from_json(j, "t", &back, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "'finetune'"));
    free(j);
    r.finetune.layers = 5; /* more than the 4 layers in use */
    j = tbert_recipe_to_json(&r);
    assert_int_equal(tbert_recipe_from_json(j, "t", &back, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "finetune layers 5"));
    free(j);
    r.finetune.layers = 2;
    r.finetune.base_model_sha256[3] = 'X';
    j = tbert_recipe_to_json(&r);
    assert_int_equal(tbert_recipe_from_json(j, "t", &back, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "base_model_sha256"));
    free(j);
    memset(&r.finetune, 0, sizeof r.finetune);
    j = json_round_trip(&r);
    assert_null(strstr(j, "finetune"));
    free(j);
    r.recipe_version = 1;
    free(json_round_trip(&r));
    r.recipe_version = 2;
    /* no header block: no header keys (recipes written before it read back the same) */
    tbert_recipe t;
    assert_int_equal(tbert_recipe_preset("text", &t, &err), TBERT_OK);
    memcpy(t.model_hash, r.model_hash, sizeof t.model_hash);
    memcpy(t.vocab_hash, r.vocab_hash, sizeof t.vocab_hash);
    t.model_hidden = 384;
    t.model_layers = 6;
    t.layers = 6;
    j = json_round_trip(&t);
    assert_null(strstr(j, "header_"));
    free(j);
    /* a header block without its weight, or with a weight out of range: refused, naming the field */
    j = tbert_recipe_to_json(&r);
    char *w = strstr(j, ",\"header_weight\":4");
    assert_non_null(w);
    memmove(w, w + strlen(",\"header_weight\":4"), strlen(w + strlen(",\"header_weight\":4")) + 1);
    assert_int_equal(tbert_recipe_from_json(j, "t", &back, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "header_weight"));
    free(j);
    r.header_weight = -1;
    j = tbert_recipe_to_json(&r);
    assert_int_equal(tbert_recipe_from_json(j, "t", &back, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "header_weight"));
    free(j);
    r.header_weight = 4;
    const char *bad[][2] = {
        {"{\"recipe_version\":3}", "recipe_version 3"},
        {"{\"recipe_version\":0}", "recipe_version 0"},
        {"[1,2]", "not a JSON object"},
        {"{\"recipe_version\":1,\"name\":\"x\"}", "model_hash"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_not_equal(tbert_recipe_from_json(bad[i][0], "t", &back, &err), TBERT_OK);
        if (!strstr(err.msg, bad[i][1])) fail_msg("'%s': message '%s' lacks '%s'", bad[i][0], err.msg, bad[i][1]);
    }
    /* a field with a bad value: pooling */
    r.positive = 1;
    j = tbert_recipe_to_json(&r);
    char *p = strstr(j, "\"mean\"");
    assert_non_null(p);
    memcpy(p, "\"mode\"", 6);
    assert_int_equal(tbert_recipe_from_json(j, "t", &back, &err), TBERT_E_FORMAT);
    assert_non_null(strstr(err.msg, "pooling"));
    free(j);
    assert_int_equal(tbert_recipe_preset("bogus", &r, &err), TBERT_E_ARG);
}

/* The dense-block store key: recipe version 2 keeps the keys version 1 gave a frozen encoder (the old rule,
 * written out here: the dense-shaping fields of a version 1 recipe), and a fine-tuned overlay's hash moves it. */
static void test_dense_key(void **state) {
    (void)state;
    tbert_recipe r;
    tbert_error err;
    assert_int_equal(tbert_recipe_preset("mail", &r, &err), TBERT_OK);
    snprintf(r.model_hash, sizeof r.model_hash, "%064d", 7);
    snprintf(r.vocab_hash, sizeof r.vocab_hash, "%064d", 9);
    r.model_hidden = 384, r.model_layers = 6, r.layers = 6;
    r.n_labels = 2, r.positive = 1, r.threshold = 0.25f;
    snprintf(r.labels[0], TBERT_MAX_LABEL_LEN, "ham");
    snprintf(r.labels[1], TBERT_MAX_LABEL_LEN, "spam");
    tbert_recipe k = r;
    k.recipe_version = 1;
    memset(k.name, 0, sizeof k.name);
    k.n_labels = 0, k.positive = -1, k.threshold = 0, k.lexical_dim = 0, k.lexical_ngrams = 1, k.evidence_set = 0;
    k.evidence = TBERT_EVIDENCE_NONE, k.evidence_dim = 0, k.header_dim = 0, k.header_weight = 0;
    char *json = tbert_recipe_to_json(&k);
    assert_non_null(json);
    tbert_store_field f[3] = {{"kind", "dense-block"}, {"dtype", "f32"}, {"recipe", json}};
    char want[65], got[65], ft1[65], ft2[65];
    assert_int_equal(tbert_store_key(3, f, want, &err), TBERT_OK);
    free(json);
    assert_int_equal(r.recipe_version, 2);
    assert_int_equal(tbert_features_dense_key(&r, got, &err), TBERT_OK);
    assert_string_equal(got, want);
    assert_int_equal(tbert_features_dense_key_ft(&r, NULL, got, &err), TBERT_OK);
    assert_string_equal(got, want);
    r.finetune.layers = 2;
    snprintf(r.finetune.base_model_sha256, sizeof r.finetune.base_model_sha256, "%064d", 7);
    char h1[65], h2[65];
    snprintf(h1, sizeof h1, "%064x", 1u);
    snprintf(h2, sizeof h2, "%064x", 2u);
    assert_int_equal(tbert_features_dense_key_ft(&r, h1, ft1, &err), TBERT_OK);
    assert_int_equal(tbert_features_dense_key_ft(&r, h2, ft2, &err), TBERT_OK);
    assert_string_not_equal(ft1, want);
    assert_string_not_equal(ft2, ft1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_featurizer_blocks),
        cmocka_unit_test(test_recipe_json),
        cmocka_unit_test(test_dense_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
