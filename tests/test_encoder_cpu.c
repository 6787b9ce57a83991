/* CPU encoder vs transformers (float64 reference from tests/golden/make_encoder_golden.py) on the random
 * model folders in tests/models/, plus padding, pooling, --layers and error-path properties, and --precision bf16
 * (bf16 products) against the same goldens within the bf16 tolerance.
 * Tolerance (CONVENTIONS.md, encoder vs transformers): |got - ref| <= 1e-4 + 1e-4 |ref| per element. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "encoder_backend.h"
#include "encoder_golden.h"
#include "gemm_bf16.h"
#include "testutil.h"
#include "tbert/encoder.h"
#include "tbert/model.h"

#define ATOL 1e-4
#define RTOL 1e-4

static const char *const models[] = {"bert_tiny_shape", "cased_f16_noprefix", "bf16_nopooler", "minilm_like_f16",
                                     "deep4_f32"};
#define N_MODELS (sizeof models / sizeof models[0])

typedef struct {
    tbert_model *m;
    eg_golden g;
} fixture;

static void load_fixture(const char *name, fixture *f) {
    char dir[4096], base[4096], rel[512];
    tbert_error err;
    snprintf(rel, sizeof rel, "models/%s", name);
    tu_tests_path(rel, dir, sizeof dir);
    if (tbert_model_load(dir, &f->m, &err) != TBERT_OK) fail_msg("%s", err.msg);
    snprintf(rel, sizeof rel, "data/encoder/%s", name);
    tu_tests_path(rel, base, sizeof base);
    if (eg_load(base, &f->g) != 0) fail_msg("cannot read golden %s", base);
}

static void free_fixture(fixture *f) {
    eg_free(&f->g);
    tbert_model_free(f->m);
}

static tbert_encoder *cpu_encoder_prec(const tbert_model *m, int threads, int layers, tbert_precision prec) {
    tbert_encoder_opts o = tbert_encoder_default_opts();
    o.device.kind = TBERT_DEVICE_CPU;
    o.threads = threads;
    o.layers = layers;
    o.precision = prec;
    tbert_encoder *e = NULL;
    tbert_error err;
    if (tbert_encoder_create(m, &o, &e, &err) != TBERT_OK) fail_msg("%s", err.msg);
    return e;
}

static tbert_encoder *cpu_encoder(const tbert_model *m, int threads, int layers) {
    return cpu_encoder_prec(m, threads, layers, TBERT_PREC_FP32);
}

static float *poisoned(size_t n) {
    float *p = malloc(n * sizeof *p);
    assert_non_null(p);
    for (size_t i = 0; i < n; i++) p[i] = NAN;
    return p;
}

/* Runs the golden batch through forward and compares every real row; padded rows must be zero. */
static void check_hidden(const fixture *f, tbert_encoder *e, const char *array, const char *what) {
    const eg_golden *g = &f->g;
    int H = f->m->cfg.hidden, T = eg_max_len(g) + 3; /* extra padding on every row */
    if (T > f->m->cfg.max_position) T = f->m->cfg.max_position;
    int32_t *ids = eg_padded(g, T, f->m->cfg.pad_token_id);
    float *hidden = poisoned((size_t)g->n * T * H);
    tbert_error err;
    if (tbert_encoder_forward(e, g->n, T, ids, g->lengths, hidden, &err)) fail_msg("%s", err.msg);
    size_t n_ref = 0;
    const double *ref = eg_array(g, array, &n_ref);
    assert_non_null(ref);
    /* pack the real rows like the golden file */
    float *packed = malloc(n_ref * sizeof *packed);
    assert_non_null(packed);
    size_t k = 0, nonzero_pad = 0;
    for (int b = 0; b < g->n; b++) {
        memcpy(packed + k, hidden + (size_t)b * T * H, (size_t)g->lengths[b] * H * sizeof *packed);
        k += (size_t)g->lengths[b] * H;
        for (size_t i = (size_t)g->lengths[b] * H; i < (size_t)T * H; i++)
            nonzero_pad += hidden[(size_t)b * T * H + i] != 0.0f;
    }
    assert_int_equal(k, n_ref);
    assert_int_equal(tu_compare_f64(what, packed, ref, n_ref, ATOL, RTOL), 0);
    assert_int_equal(nonzero_pad, 0);
    free(packed);
    free(hidden);
    free(ids);
}

static void test_golden_hidden(void **state) {
    (void)state;
    for (size_t i = 0; i < N_MODELS; i++) {
        fixture f;
        load_fixture(models[i], &f);
        for (int threads = 1; threads <= 3; threads += 2) {
            tbert_encoder *e = cpu_encoder(f.m, threads, 0);
            char what[256];
            snprintf(what, sizeof what, "%s last_hidden_state (%d threads)", models[i], threads);
            check_hidden(&f, e, "hidden", what);
            tbert_encoder_free(e);
        }
        free_fixture(&f);
    }
}

static void test_golden_pooler(void **state) {
    (void)state;
    int checked = 0;
    for (size_t i = 0; i < N_MODELS; i++) {
        fixture f;
        load_fixture(models[i], &f);
        size_t n_ref = 0;
        const double *ref = eg_array(&f.g, "pooler", &n_ref);
        tbert_encoder *e = cpu_encoder(f.m, 2, 0);
        int H = f.m->cfg.hidden, T = eg_max_len(&f.g);
        int32_t *ids = eg_padded(&f.g, T, 0);
        float *out = poisoned((size_t)f.g.n * H);
        tbert_error err;
        tbert_status st = tbert_encoder_pool_batch(e, f.g.n, T, ids, f.g.lengths, TBERT_POOL_POOLER, T, false, out, &err);
        if (ref) {
            assert_null(f.m->pooler_w == NULL ? "model lost its pooler" : NULL);
            if (st) fail_msg("%s", err.msg);
            assert_int_equal(n_ref, (size_t)f.g.n * H);
            char what[256];
            snprintf(what, sizeof what, "%s pooler_output", models[i]);
            assert_int_equal(tu_compare_f64(what, out, ref, n_ref, ATOL, RTOL), 0);
            checked++;
        } else {
            /* no pooler in the checkpoint: a clear error, not garbage */
            assert_null(f.m->pooler_w);
            assert_int_equal(st, TBERT_E_ARG);
            assert_non_null(strstr(err.msg, "pooler"));
        }
        free(out);
        free(ids);
        tbert_encoder_free(e);
        free_fixture(&f);
    }
    assert_true(checked >= 3);
}

static void test_layers_k(void **state) {
    (void)state;
    fixture f;
    load_fixture("deep4_f32", &f);
    const cJSON *k = cJSON_GetObjectItem(f.g.json, "layers_k");
    assert_non_null(k);
    tbert_encoder *e = cpu_encoder(f.m, 2, k->valueint);
    check_hidden(&f, e, "hidden_k", "deep4_f32 --layers 2");
    tbert_encoder_free(e);
    /* and the K-layer result is really different from the full model's */
    size_t n = 0;
    const double *full = eg_array(&f.g, "hidden", &n), *part = eg_array(&f.g, "hidden_k", NULL);
    double diff = 0;
    for (size_t i = 0; i < n; i++) diff += fabs(full[i] - part[i]);
    assert_true(diff / (double)n > 1e-2);
    /* K beyond the model's depth is refused */
    tbert_encoder_opts o = tbert_encoder_default_opts();
    o.device.kind = TBERT_DEVICE_CPU;
    o.layers = f.m->cfg.layers + 1;
    tbert_error err;
    assert_int_equal(tbert_encoder_create(f.m, &o, &e, &err), TBERT_E_ARG);
    free_fixture(&f);
}

/* mean / cls / pooler of each sequence on its own (B=1, no padding) equal the values inside a padded,
 * mixed-length batch, and dynamic batching (tbert_encoder_pool) equals one batch padded to max_len. */
static void test_padding_invariance(void **state) {
    (void)state;
    fixture f;
    load_fixture("minilm_like_f16", &f);
    const eg_golden *g = &f.g;
    int H = f.m->cfg.hidden, P = f.m->cfg.max_position;
    tbert_encoder *e = cpu_encoder(f.m, 2, 0);
    tbert_error err;
    int32_t *ids = eg_padded(g, P, 0);
    const tbert_pool pools[] = {TBERT_POOL_MEAN, TBERT_POOL_CLS, TBERT_POOL_POOLER};
    for (size_t p = 0; p < sizeof pools / sizeof pools[0]; p++) {
        float *fixed = poisoned((size_t)g->n * H), *single = poisoned((size_t)g->n * H), *dyn = poisoned((size_t)g->n * H);
        if (tbert_encoder_pool_batch(e, g->n, P, ids, g->lengths, pools[p], P, false, fixed, &err)) fail_msg("%s", err.msg);
        for (int b = 0; b < g->n; b++)
            if (tbert_encoder_pool_batch(e, 1, g->lengths[b], g->ids[b], &g->lengths[b], pools[p], g->lengths[b], false,
                                         single + (size_t)b * H, &err))
                fail_msg("%s", err.msg);
        /* dynamic: batches of 5 sorted by length */
        tbert_encoder_opts o = tbert_encoder_default_opts();
        o.device.kind = TBERT_DEVICE_CPU;
        o.batch = 5;
        tbert_encoder *e5 = NULL;
        if (tbert_encoder_create(f.m, &o, &e5, &err)) fail_msg("%s", err.msg);
        if (tbert_encoder_pool(e5, g->n, (const int32_t *const *)g->ids, g->lengths, P, pools[p], false, dyn, &err))
            fail_msg("%s", err.msg);
        char what[128];
        snprintf(what, sizeof what, "%s: padded to %d vs alone", tbert_pool_name(pools[p]), P);
        assert_int_equal(tu_compare(what, fixed, single, (size_t)g->n * H, 1e-5, 1e-5), 0);
        snprintf(what, sizeof what, "%s: dynamic batches of 5 vs fixed padding", tbert_pool_name(pools[p]));
        assert_int_equal(tu_compare(what, dyn, fixed, (size_t)g->n * H, 1e-5, 1e-5), 0);
        tbert_encoder_free(e5);
        free(fixed);
        free(single);
        free(dyn);
    }
    free(ids);
    tbert_encoder_free(e);
    free_fixture(&f);
}

/* mean pooling against the golden hidden states (masked mean in float64) */
static void test_mean_cls_vs_golden(void **state) {
    (void)state;
    fixture f;
    load_fixture("bert_tiny_shape", &f);
    const eg_golden *g = &f.g;
    int H = f.m->cfg.hidden;
    const double *hid = eg_array(g, "hidden", NULL);
    double *mean = calloc((size_t)g->n * H, sizeof *mean), *cls = calloc((size_t)g->n * H, sizeof *cls);
    assert_non_null(mean);
    assert_non_null(cls);
    size_t row = 0;
    for (int b = 0; b < g->n; b++) {
        for (int t = 0; t < g->lengths[b]; t++, row++)
            for (int j = 0; j < H; j++) {
                mean[(size_t)b * H + j] += hid[row * H + j] / g->lengths[b];
                if (t == 0) cls[(size_t)b * H + j] = hid[row * H + j];
            }
    }
    tbert_encoder *e = cpu_encoder(f.m, 2, 0);
    float *out = poisoned((size_t)g->n * H);
    tbert_error err;
    if (tbert_encoder_pool(e, g->n, (const int32_t *const *)g->ids, g->lengths, f.m->cfg.max_position,
                           TBERT_POOL_MEAN, false, out, &err))
        fail_msg("%s", err.msg);
    assert_int_equal(tu_compare_f64("bert_tiny_shape mean", out, mean, (size_t)g->n * H, ATOL, RTOL), 0);
    if (tbert_encoder_pool(e, g->n, (const int32_t *const *)g->ids, g->lengths, f.m->cfg.max_position, TBERT_POOL_CLS,
                           false, out, &err))
        fail_msg("%s", err.msg);
    assert_int_equal(tu_compare_f64("bert_tiny_shape cls", out, cls, (size_t)g->n * H, ATOL, RTOL), 0);
    free(out);
    free(mean);
    free(cls);
    tbert_encoder_free(e);
    free_fixture(&f);
}

static void test_flatten_and_normalize(void **state) {
    (void)state;
    fixture f;
    load_fixture("cased_f16_noprefix", &f);
    const eg_golden *g = &f.g;
    int H = f.m->cfg.hidden, P = f.m->cfg.max_position;
    size_t dim = tbert_pool_dim(f.m, TBERT_POOL_FLATTEN, P);
    assert_int_equal(dim, (size_t)P * H);
    tbert_encoder *e = cpu_encoder(f.m, 2, 0);
    float *out = poisoned((size_t)g->n * dim);
    tbert_error err;
    if (tbert_encoder_pool(e, g->n, (const int32_t *const *)g->ids, g->lengths, P, TBERT_POOL_FLATTEN, false, out, &err))
        fail_msg("%s", err.msg);
    /* real rows equal the golden hidden state, everything beyond a length is exactly zero */
    const double *hid = eg_array(g, "hidden", NULL);
    size_t row = 0, bad_zero = 0;
    for (int b = 0; b < g->n; b++) {
        const float *o = out + (size_t)b * dim;
        size_t real = (size_t)g->lengths[b] * H;
        assert_int_equal(tu_compare_f64("flatten real rows", o, hid + row * H, real, ATOL, RTOL), 0);
        for (size_t i = real; i < dim; i++) bad_zero += o[i] != 0.0f;
        row += (size_t)g->lengths[b];
    }
    assert_int_equal(bad_zero, 0);
    /* --normalize: unit L2 norm per row, same direction */
    float *nrm = poisoned((size_t)g->n * dim);
    if (tbert_encoder_pool(e, g->n, (const int32_t *const *)g->ids, g->lengths, P, TBERT_POOL_FLATTEN, true, nrm, &err))
        fail_msg("%s", err.msg);
    for (int b = 0; b < g->n; b++) {
        double ss = 0, dot = 0, s0 = 0;
        for (size_t i = 0; i < dim; i++) {
            ss += (double)nrm[b * dim + i] * nrm[b * dim + i];
            dot += (double)nrm[b * dim + i] * out[b * dim + i];
            s0 += (double)out[b * dim + i] * out[b * dim + i];
        }
        assert_true(fabs(sqrt(ss) - 1.0) < 1e-5);
        assert_true(fabs(dot - sqrt(s0)) < 1e-4 * sqrt(s0));
    }
    float *mean = poisoned((size_t)g->n * H);
    if (tbert_encoder_pool(e, g->n, (const int32_t *const *)g->ids, g->lengths, P, TBERT_POOL_MEAN, true, mean, &err))
        fail_msg("%s", err.msg);
    for (int b = 0; b < g->n; b++) {
        double ss = 0;
        for (int j = 0; j < H; j++) ss += (double)mean[(size_t)b * H + j] * mean[(size_t)b * H + j];
        assert_true(fabs(sqrt(ss) - 1.0) < 1e-5);
    }
    free(mean);
    free(nrm);
    free(out);
    tbert_encoder_free(e);
    free_fixture(&f);
}

/* The backend pools straight from its packed activations; tbert_pool_hidden (the host reference the CUDA
 * backend is held to) pools the [B,T,H] hidden state. Both must agree for every pooling. */
static void test_direct_pooling_matches_reference(void **state) {
    (void)state;
    fixture f;
    load_fixture("minilm_like_f16", &f);
    const eg_golden *g = &f.g;
    int H = f.m->cfg.hidden, T = eg_max_len(g), outT = T + 5;
    tbert_encoder *e = cpu_encoder(f.m, 2, 0);
    int32_t *ids = eg_padded(g, T, 0);
    float *hidden = poisoned((size_t)g->n * T * H);
    tbert_error err;
    if (tbert_encoder_forward(e, g->n, T, ids, g->lengths, hidden, &err)) fail_msg("%s", err.msg);
    for (int p = 0; p < TBERT_POOL_COUNT; p++) {
        size_t dim = tbert_pool_dim(f.m, (tbert_pool)p, outT);
        float *ref = poisoned((size_t)g->n * dim), *got = poisoned((size_t)g->n * dim);
        if (tbert_pool_hidden(f.m, (tbert_pool)p, g->n, T, hidden, g->lengths, p == TBERT_POOL_FLATTEN ? outT : T, ref,
                              &err))
            fail_msg("%s", err.msg);
        if (tbert_encoder_pool_batch(e, g->n, T, ids, g->lengths, (tbert_pool)p, outT, false, got, &err))
            fail_msg("%s", err.msg);
        char what[128];
        snprintf(what, sizeof what, "%s: backend pooling vs tbert_pool_hidden", tbert_pool_name((tbert_pool)p));
        assert_int_equal(tu_compare(what, got, ref, (size_t)g->n * dim, 1e-6, 1e-6), 0);
        free(ref);
        free(got);
    }
    free(hidden);
    free(ids);
    tbert_encoder_free(e);
    free_fixture(&f);
}

static void test_errors(void **state) {
    (void)state;
    fixture f;
    load_fixture("bf16_nopooler", &f);
    tbert_error err;
    tbert_encoder *e = NULL;
    tbert_encoder_opts o = tbert_encoder_default_opts();
    o.device.kind = TBERT_DEVICE_CPU;
    o.precision = TBERT_PREC_TF32; /* tensor-core float32: CUDA only (bf16 runs on the CPU: test_bf16_vs_golden) */
    assert_int_equal(tbert_encoder_create(f.m, &o, &e, &err), TBERT_E_UNSUPPORTED);
    assert_null(e);
#if !TBERT_HAVE_CUDA
    o = tbert_encoder_default_opts();
    o.device.kind = TBERT_DEVICE_CUDA;
    assert_int_equal(tbert_encoder_create(f.m, &o, &e, &err), TBERT_E_NODEV);
    assert_null(e);
#endif
    e = cpu_encoder(f.m, 2, 0);
    int32_t ids[4] = {2, 9999, 5, 3}, len = 4, zero = 0;
    float out[4 * 64];
    assert_int_equal(tbert_encoder_forward(e, 1, 4, ids, &len, out, &err), TBERT_E_ARG); /* id >= vocab */
    ids[1] = -1;
    assert_int_equal(tbert_encoder_forward(e, 1, 4, ids, &len, out, &err), TBERT_E_ARG);
    ids[1] = 7;
    assert_int_equal(tbert_encoder_forward(e, 1, 4, ids, &zero, out, &err), TBERT_E_ARG); /* empty row */
    int too_long = f.m->cfg.max_position + 1;
    const int32_t *seqs[1] = {ids};
    assert_int_equal(tbert_encoder_pool(e, 1, seqs, &too_long, too_long, TBERT_POOL_MEAN, false, out, &err), TBERT_E_ARG);
    assert_int_equal(tbert_encoder_forward(e, 1, 4, ids, &len, out, &err), TBERT_OK);
    tbert_pool p;
    assert_int_equal(tbert_pool_parse("max", &p, &err), TBERT_E_ARG);
    assert_int_equal(tbert_pool_parse("flatten", &p, &err), TBERT_OK);
    assert_int_equal(p, TBERT_POOL_FLATTEN);
    tbert_precision pr;
    assert_int_equal(tbert_precision_parse("fp16", &pr, &err), TBERT_E_ARG);
    assert_int_equal(tbert_precision_parse("tf32", &pr, &err), TBERT_OK);
    tbert_encoder_free(e);
    free_fixture(&f);
}

/* --precision bf16 on the CPU (src/gemm_bf16.c: bf16 operands, float32 sums; AMX where the CPU has it, and always the
 * float32 fallback, TBERT_CPU_NO_AMX=1): every model's last_hidden_state against transformers' float64 within
 * CONVENTIONS' bf16 tolerance (norm ratio < 2e-2) and not equal to the float32 result (the products ran in bf16);
 * 1 and 3 threads the same bits; a lone sequence on 3 threads (the team, split by 32-column blocks) the same bits as
 * on one. */
static void bf16_model(const fixture *f, const char *name, const char *path) {
    const eg_golden *g = &f->g;
    int H = f->m->cfg.hidden, T = eg_max_len(g);
    int32_t *ids = eg_padded(g, T, f->m->cfg.pad_token_id);
    size_t n_ref = 0, k = 0;
    const double *ref = eg_array(g, "hidden", &n_ref);
    assert_non_null(ref);
    float *hid[3], *packed[3];
    tbert_error err;
    const int threads[3] = {1, 3, 1};
    for (int v = 0; v < 3; v++) { /* bf16 on 1 and 3 threads, float32 */
        tbert_encoder *e = cpu_encoder_prec(f->m, threads[v], 0, v < 2 ? TBERT_PREC_BF16 : TBERT_PREC_FP32);
        hid[v] = poisoned((size_t)g->n * T * H);
        packed[v] = malloc(n_ref * sizeof(float));
        assert_non_null(packed[v]);
        if (tbert_encoder_forward(e, g->n, T, ids, g->lengths, hid[v], &err)) fail_msg("%s", err.msg);
        k = 0;
        for (int b = 0; b < g->n; b++) {
            memcpy(packed[v] + k, hid[v] + (size_t)b * T * H, (size_t)g->lengths[b] * H * sizeof(float));
            k += (size_t)g->lengths[b] * H;
        }
        assert_int_equal(k, n_ref);
        tbert_encoder_free(e);
    }
    double sq = 0.0, nr = 0.0, sq32 = 0.0;
    for (size_t i = 0; i < n_ref; i++) {
        double d = packed[0][i] - ref[i], d32 = packed[2][i] - ref[i];
        sq += d * d, nr += ref[i] * ref[i], sq32 += d32 * d32;
    }
    double ratio = sqrt(sq / nr), ratio32 = sqrt(sq32 / nr);
    bool same_threads = !memcmp(packed[0], packed[1], n_ref * sizeof(float));
    /* a lone sequence (the golden batch's longest) on a team of 3 against one thread */
    int b0 = 0;
    for (int b = 1; b < g->n; b++)
        if (g->lengths[b] > g->lengths[b0]) b0 = b;
    int32_t len = g->lengths[b0];
    float *l1 = poisoned((size_t)len * H), *l3 = poisoned((size_t)len * H);
    tbert_encoder *e1 = cpu_encoder_prec(f->m, 1, 0, TBERT_PREC_BF16), *e3 = cpu_encoder_prec(f->m, 3, 0, TBERT_PREC_BF16);
    if (tbert_encoder_forward(e1, 1, len, ids + (size_t)b0 * T, &len, l1, &err) ||
        tbert_encoder_forward(e3, 1, len, ids + (size_t)b0 * T, &len, l3, &err))
        fail_msg("%s", err.msg);
    bool same_team = !memcmp(l1, l3, (size_t)len * H * sizeof(float));
    printf("bf16 (%s) %s: last_hidden_state vs transformers norm ratio %.2e (float32 %.2e); 3 threads %s; lone sequence "
           "of %d on a team of 3 %s\n", path, name, ratio, ratio32, same_threads ? "same bits" : "DIFFERENT BITS", (int)len,
           same_team ? "same bits" : "DIFFERENT BITS");
    assert_true(ratio < 2e-2);
    assert_true(ratio > 10 * ratio32); /* the products ran in bf16 */
    assert_true(same_threads);
    assert_true(same_team);
    tbert_encoder_free(e1), tbert_encoder_free(e3);
    free(l1), free(l3);
    for (int v = 0; v < 3; v++) free(hid[v]), free(packed[v]);
    free(ids);
}

static void test_bf16_vs_golden(void **state) {
    (void)state;
    bool amx = tbert_gemm_amx_supported();
    for (int path = amx ? 0 : 1; path < 2; path++) {
        if (path) setenv("TBERT_CPU_NO_AMX", "1", 1);
        for (size_t i = 0; i < N_MODELS; i++) {
            fixture f;
            load_fixture(models[i], &f);
            bf16_model(&f, models[i], path ? "fallback" : "AMX");
            free_fixture(&f);
        }
        unsetenv("TBERT_CPU_NO_AMX");
    }
}

/* A lone sequence (a batch of one) is split across the encoder's threads (src/encoder_cpu.c "a lone sequence on
 * all threads": matrix products by column panels, attention by heads, layernorms by rows): its hidden states
 * must be bit for bit those of one thread, for every thread count, length and model; and pooled the same. */
static void test_lone_sequence_threads(void **state) {
    (void)state;
    const int lens[] = {16, 37, 100};
    uint64_t seed = 0x6c6f6e65ull; /* "lone" */
    printf("lone-sequence ids seed %llu\n", (unsigned long long)seed);
    for (size_t i = 0; i < N_MODELS; i++) {
        fixture f;
        load_fixture(models[i], &f);
        const tbert_config *c = &f.m->cfg;
        tbert_encoder *e1 = cpu_encoder(f.m, 1, 0);
        for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
            int L = lens[li] < c->max_position ? lens[li] : c->max_position, H = c->hidden;
            int32_t *ids = malloc((size_t)L * sizeof *ids), len = L;
            assert_non_null(ids);
            for (int t = 0; t < L; t++) {
                seed = seed * 6364136223846793005ull + 1442695040888963407ull;
                ids[t] = (int32_t)(1 + (seed >> 33) % (uint64_t)(c->vocab_size - 1));
            }
            float *ref = poisoned((size_t)L * H), *got = poisoned((size_t)L * H);
            float *pref = poisoned((size_t)H), *pgot = poisoned((size_t)H);
            tbert_error err;
            if (tbert_encoder_forward(e1, 1, L, ids, &len, ref, &err)) fail_msg("%s", err.msg);
            if (tbert_encoder_pool_batch(e1, 1, L, ids, &len, TBERT_POOL_MEAN, L, false, pref, &err)) fail_msg("%s", err.msg);
            for (int threads = 2; threads <= 5; threads++) {
                tbert_encoder *e = cpu_encoder(f.m, threads, 0);
                if (tbert_encoder_forward(e, 1, L, ids, &len, got, &err)) fail_msg("%s", err.msg);
                if (tbert_encoder_pool_batch(e, 1, L, ids, &len, TBERT_POOL_MEAN, L, false, pgot, &err)) fail_msg("%s", err.msg);
                if (memcmp(ref, got, (size_t)L * H * sizeof *ref) || memcmp(pref, pgot, (size_t)H * sizeof *pref))
                    fail_msg("%s: a lone sequence of %d tokens on %d threads differs from one thread", models[i], L, threads);
                tbert_encoder_free(e);
            }
            free(ids);
            free(ref);
            free(got);
            free(pref);
            free(pgot);
        }
        tbert_encoder_free(e1);
        free_fixture(&f);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_hidden),      cmocka_unit_test(test_golden_pooler),
        cmocka_unit_test(test_lone_sequence_threads), cmocka_unit_test(test_bf16_vs_golden),
        cmocka_unit_test(test_layers_k),           cmocka_unit_test(test_padding_invariance),
        cmocka_unit_test(test_mean_cls_vs_golden), cmocka_unit_test(test_flatten_and_normalize),
        cmocka_unit_test(test_direct_pooling_matches_reference), cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
