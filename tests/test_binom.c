/* Binomial intervals (src/binom.c) against tests/data/binom/golden.tsv, made by tests/golden/make_binom_golden.py
 * from exact binomial tails in 60-digit decimals (a method independent of the continued fraction here):
 * I_x(a,b) rtol 1e-11; Clopper-Pearson bounds rtol 1e-9 (bisection to 1e-15 relative, on a function with
 * ~1e-13 relative error); the quantile is the inverse of I; the negatives-needed count is the exact edge. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tbert/metrics.h"

static bool close_to(double got, double ref, double atol, double rtol) { return fabs(got - ref) <= atol + rtol * fabs(ref); }

static void test_golden(void **state) {
    (void)state;
    char path[4096];
    FILE *f = fopen(tu_tests_path("data/binom/golden.tsv", path, sizeof path), "r");
    assert_non_null(f); /* a committed fixture: missing is a failure */
    char line[512];
    int n_beta = 0, n_cp = 0, bad = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        char kind[16];
        double a, b, c, d;
        if (sscanf(line, "%15s %lf %lf %lf %lf", kind, &a, &b, &c, &d) < 4) continue;
        if (!strcmp(kind, "beta_inc")) {
            double got = tbert_beta_inc(a, b, c);
            if (!close_to(got, d, 1e-300, 1e-11)) {
                printf("I_%g(%g, %g) = %.17g, expected %.17g\n", c, a, b, got, d);
                bad++;
            }
            /* the quantile inverts it (away from the flat ends) */
            if (d > 1e-6 && d < 1 - 1e-6) {
                double x = tbert_beta_quantile(d, a, b);
                if (!close_to(x, c, 1e-12, 1e-9)) {
                    printf("quantile %.17g of Beta(%g, %g) = %.17g, expected %g\n", d, a, b, x, c);
                    bad++;
                }
            }
            n_beta++;
        } else if (!strcmp(kind, "cp95")) {
            double lo, hi;
            assert_true(tbert_clopper_pearson((int64_t)a, (int64_t)b, 0.95, &lo, &hi));
            if (!close_to(lo, c, 1e-15, 1e-9) || !close_to(hi, d, 1e-15, 1e-9)) {
                printf("CP95(%g of %g) = [%.17g, %.17g], expected [%.17g, %.17g]\n", a, b, lo, hi, c, d);
                bad++;
            }
            n_cp++;
        }
    }
    fclose(f);
    printf("binom golden: %d I_x(a,b) and %d Clopper-Pearson rows\n", n_beta, n_cp);
    assert_true(n_beta >= 10 && n_cp >= 15);
    assert_int_equal(bad, 0);
}

static void test_edges(void **state) {
    (void)state;
    double lo, hi;
    assert_true(tbert_clopper_pearson(0, 0, 0.95, &lo, &hi));
    assert_true(lo == 0 && hi == 1);
    assert_false(tbert_clopper_pearson(5, 4, 0.95, &lo, &hi));
    assert_false(tbert_clopper_pearson(-1, 4, 0.95, &lo, &hi));
    assert_false(tbert_clopper_pearson(1, 4, 1.0, &lo, &hi));
    /* k = 0 and k = n have closed forms: hi = 1 - (alpha/2)^(1/n), lo = (alpha/2)^(1/n) */
    for (int n = 1; n <= 5000; n = n * 3 + 1) {
        assert_true(tbert_clopper_pearson(0, n, 0.95, &lo, &hi));
        assert_true(lo == 0 && close_to(hi, 1 - pow(0.025, 1.0 / n), 1e-15, 1e-9));
        assert_true(tbert_clopper_pearson(n, n, 0.95, &lo, &hi));
        assert_true(hi == 1 && close_to(lo, pow(0.025, 1.0 / n), 1e-15, 1e-9));
    }
    assert_true(isnan(tbert_beta_inc(0, 1, 0.5)));
    assert_true(isnan(tbert_beta_inc(1, 1, 1.5)));
    assert_true(tbert_beta_inc(2, 3, 0) == 0 && tbert_beta_inc(2, 3, 1) == 1);
    /* symmetry I_x(a,b) = 1 - I_{1-x}(b,a) on both sides of the switch point */
    for (double x = 0.05; x < 1; x += 0.1) assert_true(close_to(tbert_beta_inc(3.5, 7.25, x), 1 - tbert_beta_inc(7.25, 3.5, 1 - x), 1e-14, 1e-12));
}

static void test_negatives_needed(void **state) {
    (void)state;
    const double targets[] = {0.1, 0.01, 0.003, 0.001, 0.0001};
    for (size_t i = 0; i < sizeof targets / sizeof targets[0]; i++) {
        int64_t n = tbert_negatives_needed(targets[i], 0.95);
        double lo, hi_n, hi_m;
        tbert_clopper_pearson(0, n, 0.95, &lo, &hi_n);
        tbert_clopper_pearson(0, n - 1, 0.95, &lo, &hi_m);
        printf("fpr %g: %lld negatives (0 of n: upper %.6g; of n-1: %.6g)\n", targets[i], (long long)n, hi_n, hi_m);
        assert_true(hi_n <= targets[i] * (1 + 1e-9) && hi_m > targets[i]);
    }
    assert_int_equal(tbert_negatives_needed(0.003, 0.95), 1228); /* ceil(ln 0.025 / ln 0.997) */
    assert_int_equal(tbert_negatives_needed(1, 0.95), 0);
    assert_true(tbert_negatives_needed(0, 0.95) == INT64_MAX);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_golden), cmocka_unit_test(test_edges), cmocka_unit_test(test_negatives_needed)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
