/* AdamW against a torch.optim.AdamW trajectory (tests/golden/make_adam_golden.py): same initial parameters
 * and gradients, every step's parameters compared. Tolerance: atol 1e-7, rtol 2e-6 per element (float32
 * rounding of the same formula; the step size is ~lr so a wrong eps placement, bias correction or decay
 * shows up as errors of ~1e-4). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tbert/head.h"

static bool read_vec(FILE *f, const char *tag, int n, float *out) {
    char t[16];
    if (fscanf(f, "%15s", t) != 1 || strcmp(t, tag)) return false;
    for (int i = 0; i < n; i++)
        if (fscanf(f, "%f", &out[i]) != 1) return false;
    return true;
}

static void test_adam_trajectory(void **state) {
    char path[512];
    FILE *f = fopen(tu_tests_path("data/head/adam_trajectory.txt", path, sizeof path), "r");
    assert_non_null(f);
    int ncases;
    assert_int_equal(fscanf(f, "cases %d", &ncases), 1);
    assert_true(ncases >= 2);
    bool saw_wd = false, saw_nowd = false;
    for (int c = 0; c < ncases; c++) {
        char name[64];
        double lr, b1, b2, eps, wd;
        int n, steps;
        assert_int_equal(fscanf(f, " case %63s %lf %lf %lf %lf %lf %d %d", name, &lr, &b1, &b2, &eps, &wd, &n, &steps), 8);
        float *p = malloc(n * sizeof(float)), *g = malloc(n * sizeof(float)), *ref = malloc(n * sizeof(float));
        assert_true(p && g && ref);
        assert_true(read_vec(f, "p0", n, p));
        tbert_adam a;
        assert_int_equal(tbert_adam_init(&a, (size_t)n, NULL), TBERT_OK);
        a.lr = lr;
        a.beta1 = b1;
        a.beta2 = b2;
        a.eps = eps;
        a.weight_decay = wd;
        for (int s = 1; s <= steps; s++) {
            char tg[16], tp[16];
            snprintf(tg, sizeof tg, "g%d", s);
            snprintf(tp, sizeof tp, "p%d", s);
            assert_true(read_vec(f, tg, n, g));
            assert_true(read_vec(f, tp, n, ref));
            tbert_adam_step(&a, p, g);
            char what[96];
            snprintf(what, sizeof what, "%s step %d", name, s);
            assert_int_equal(tu_compare(what, p, ref, (size_t)n, 1e-7, 2e-6), 0);
        }
        assert_int_equal(a.step, steps);
        if (wd != 0) saw_wd = true;
        else saw_nowd = true;
        tbert_adam_free(&a);
        free(p);
        free(g);
        free(ref);
    }
    assert_true(saw_wd && saw_nowd);
    fclose(f);
}

/* Sanity of the reference itself: a mistaken implementation (eps inside the sqrt) must fail the tolerance,
 * so the comparison above is able to fail. */
static void test_adam_first_step_closed_form(void **state) {
    /* step 1, no decay: m = 0.1 g, v = 0.001 g^2, bc1 = 0.1, bc2 = 0.001 -> p -= lr * g / (|g| + eps) */
    tbert_adam a;
    assert_int_equal(tbert_adam_init(&a, 3, NULL), TBERT_OK);
    a.lr = 0.01;
    float p[3] = {1.0f, -2.0f, 0.5f}, g[3] = {0.5f, -3.0f, 1e-9f};
    tbert_adam_step(&a, p, g);
    double ref[3] = {1.0 - 0.01 * 0.5 / (0.5 + 1e-8), -2.0 + 0.01 * 3.0 / (3.0 + 1e-8), 0.5 - 0.01 * 1e-9 / (1e-9 + 1e-8)};
    assert_int_equal(tu_compare_f64("adam step 1", p, ref, 3, 1e-7, 1e-6), 0);
    /* decoupled decay: p *= 1 - lr*wd before the Adam update; zero gradient => pure decay */
    tbert_adam_free(&a);
    assert_int_equal(tbert_adam_init(&a, 1, NULL), TBERT_OK);
    a.lr = 0.1;
    a.weight_decay = 0.5;
    float q = 2.0f, z = 0.0f;
    tbert_adam_step(&a, &q, &z);
    assert_float_equal(q, 2.0f * (1.0f - 0.05f), 1e-7);
    tbert_adam_free(&a);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adam_trajectory),
        cmocka_unit_test(test_adam_first_step_closed_form),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
