/* all-MiniLM-L6-v2 on the CPU vs transformers (float64 reference): mean-pooled vectors of 64 SMS lines,
 * from the token ids HF tokenizers gave them (tests/data/encoder/minilm_sms_mean.*), so that this checks
 * the encoder alone. Also mean + --normalize vs sentence-transformers' Mean + Normalize modules.
 * Skips (77) when the model is not in the cache ($TBERT_CACHE/models/minilm; CI fetches it).
 * Tolerance: |got - ref| <= 1e-4 + 1e-4 |ref| per element (CONVENTIONS.md). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "encoder_golden.h"
#include "testutil.h"
#include "tbert/encoder.h"
#include "tbert/model.h"

#define ATOL 1e-4
#define RTOL 1e-4

static tbert_model *model;
static eg_golden golden;

static int setup(void **state) {
    (void)state;
    char dir[4096], base[4096];
    tbert_error err;
    if (tbert_resolve_model_dir("minilm", dir, sizeof dir, &err) || !tbert_is_dir(dir)) return -1;
    if (tbert_model_load(dir, &model, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    if (eg_load(tu_tests_path("data/encoder/minilm_sms_mean", base, sizeof base), &golden)) return -1;
    return 0;
}

static int teardown(void **state) {
    (void)state;
    eg_free(&golden);
    tbert_model_free(model);
    return 0;
}

static void check(int threads, int batch, bool normalize, const char *array) {
    tbert_encoder_opts o = tbert_encoder_default_opts();
    o.device.kind = TBERT_DEVICE_CPU;
    o.threads = threads;
    o.batch = batch;
    tbert_encoder *e = NULL;
    tbert_error err;
    if (tbert_encoder_create(model, &o, &e, &err)) fail_msg("%s", err.msg);
    int H = model->cfg.hidden;
    assert_int_equal(H, 384);
    float *out = malloc((size_t)golden.n * H * sizeof *out);
    assert_non_null(out);
    for (size_t i = 0; i < (size_t)golden.n * H; i++) out[i] = NAN;
    if (tbert_encoder_pool(e, golden.n, (const int32_t *const *)golden.ids, golden.lengths, 128, TBERT_POOL_MEAN,
                           normalize, out, &err))
        fail_msg("%s", err.msg);
    size_t n_ref = 0;
    const double *ref = eg_array(&golden, array, &n_ref);
    assert_non_null(ref);
    assert_int_equal(n_ref, (size_t)golden.n * H);
    char what[128];
    snprintf(what, sizeof what, "minilm SMS %s (%d threads, batch %d)", array, threads, batch);
    assert_int_equal(tu_compare_f64(what, out, ref, n_ref, ATOL, RTOL), 0);
    free(out);
    tbert_encoder_free(e);
}

static void test_mean(void **state) {
    (void)state;
    assert_int_equal(golden.n, 64);
    check(2, 32, false, "mean");
    check(1, 7, false, "mean");
}

static void test_mean_normalized(void **state) {
    (void)state;
    check(2, 32, true, "normalized");
}

int main(void) {
    char dir[4096];
    tbert_error err;
    if (tbert_resolve_model_dir("minilm", dir, sizeof dir, &err) || !tbert_is_dir(dir))
        tu_skip_external("test_minilm", "the MiniLM model is not in the cache (models/fetch.sh minilm)");
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_mean), cmocka_unit_test(test_mean_normalized)};
    return cmocka_run_group_tests(tests, setup, teardown);
}
