/* The mail part of report.html (src/report_mail.c) against hand-computed values: recall at a fixed
 * false-positive rate (ties counted against the cut), the operating point, the histogram counts, and the
 * list of misclassified messages by name (exact, compared as integers and strings: no tolerance needed). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "train_internal.h"

/* 1,000 negatives scored (i + 0.5) / 1000 * 0.9 for i = 0..999 (all below 0.9, distinct) and 10 positives:
 * three at 0.95, two at 0.8995 (between the two highest negatives 0.89865 and 0.89955), five at 0.5. */
static void corpus(float *s, bool *pos) {
    for (int i = 0; i < 1000; i++) {
        s[i] = (float)((i + 0.5) / 1000 * 0.9);
        pos[i] = false;
    }
    const float p[10] = {0.95f, 0.95f, 0.95f, 0.8995f, 0.8995f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f};
    for (int i = 0; i < 10; i++) {
        s[1000 + i] = p[i];
        pos[1000 + i] = true;
    }
}

static void test_recall_at_fpr(void **state) {
    (void)state;
    float s[1010];
    bool pos[1010];
    corpus(s, pos);
    int k;
    double cut;
    /* 0.1%: 1 false positive allowed, cut = 2nd highest negative (0.89865): 0.95 x3 and 0.8995 x2 above */
    assert_float_equal(tbert_recall_at_fpr(1010, s, pos, 0.001, &k, &cut), 0.5, 1e-12);
    assert_int_equal(k, 1);
    assert_float_equal(cut, (float)(998.5 / 1000 * 0.9), 1e-7);
    /* 0.5%: 5 allowed, cut = 6th highest (994.5/1000*0.9 = 0.89505): the same 5 positives */
    assert_float_equal(tbert_recall_at_fpr(1010, s, pos, 0.005, &k, &cut), 0.5, 1e-12);
    assert_int_equal(k, 5);
    /* 0 allowed: cut = the highest negative 0.89955: only 0.95 x3 */
    assert_float_equal(tbert_recall_at_fpr(1010, s, pos, 0.0, &k, &cut), 0.3, 1e-12);
    assert_int_equal(k, 0);
    /* 50%: 500 allowed, cut = 501st highest = (499.5)/1000*0.9 = 0.44955: all 10 */
    assert_float_equal(tbert_recall_at_fpr(1010, s, pos, 0.5, &k, &cut), 1.0, 1e-12);
    /* a tie at the cut counts against: a positive equal to the cut is not above it */
    float t[3] = {0.7f, 0.7f, 0.2f};
    bool tp[3] = {true, false, false};
    assert_float_equal(tbert_recall_at_fpr(3, t, tp, 0.0, &k, &cut), 0.0, 1e-12);
    /* no positives: NaN */
    assert_true(isnan(tbert_recall_at_fpr(3, t, (bool[3]){false, false, false}, 0.01, NULL, NULL)));
}

static int count(const char *hay, const char *needle) {
    int n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle)) n++;
    return n;
}

static void test_section(void **state) {
    (void)state;
    float s[1010];
    bool pos[1010];
    corpus(s, pos);
    const char *names[1010];
    char buf[1010][24];
    for (int i = 0; i < 1010; i++) {
        snprintf(buf[i], sizeof buf[i], "m%04d<&>", i);
        names[i] = buf[i];
    }
    GString *g = g_string_new("");
    /* threshold 0.899: negatives above it: 0.89955 only (1 FP); positives at or above: 0.95 x3, 0.8995 x2 */
    tbert_report_mail_section(g, 1010, s, pos, names, 0.899, "spam", "ham", "test");
    const char *h = g->str;
    assert_non_null(strstr(h, "Mail view (test split: 10 spam, 1000 ham)"));
    assert_non_null(strstr(h, "operating point: threshold 0.8990</text>"));
    assert_non_null(strstr(h, "FPR 0.10% (1 of 1000), recall 50.0%"));
    /* recall at FPR: 0.1% -> 1 of 1000, 0.5000; 0.5% -> 5 of 1000; 1% -> 10 of 1000: cut 0.89055 -> still 5 */
    assert_non_null(strstr(h, "<tr><td>0.1%</td><td>1 of 1000</td><td>0.5000</td>"));
    assert_non_null(strstr(h, "<tr><td>0.5%</td><td>5 of 1000</td><td>0.5000</td>"));
    assert_non_null(strstr(h, "<tr><td>1%</td><td>10 of 1000</td><td>0.5000</td>"));
    /* misclassified: the negative m0999 (0.89955 >= 0.899) and the five positives at 0.5, names escaped */
    assert_non_null(strstr(h, "Misclassified at threshold 0.8990 (6)"));
    assert_int_equal(count(h, "&lt;&amp;&gt;</td>"), 6);
    assert_non_null(strstr(h, ">m0999&lt;&amp;&gt;</td><td>ham</td><td>0.8996</td>"));
    for (int i = 1005; i < 1010; i++) {
        char want[64];
        snprintf(want, sizeof want, ">m%04d&lt;&amp;&gt;</td><td>spam</td><td>0.5000</td>", i);
        assert_non_null(strstr(h, want));
    }
    /* histograms: 20 bins; ham fills bins 0..17 with 55 or 56 each (1000 scores evenly on [0, 0.9)), spam has
     * 5 in bin 10 (0.5), 2 in bin 17 (0.8995) and 3 in bin 19 (0.95): the <title> of each bar says so */
    assert_non_null(strstr(h, "<title>spam 0.50-0.55: 5</title>"));
    assert_non_null(strstr(h, "<title>spam 0.85-0.90: 2</title>"));
    assert_non_null(strstr(h, "<title>spam 0.95-1.00: 3</title>"));
    assert_non_null(strstr(h, "<title>ham 0.00-0.05: 56</title>"));
    assert_null(strstr(h, "<title>ham 0.90-0.95"));
    assert_int_equal(count(h, "<title>ham "), 18);
    g_string_free(g, TRUE);
    /* 10 negatives: 0.1% of them is under one message: said so */
    g = g_string_new("");
    tbert_report_mail_section(g, 20, s + 990, pos + 990, NULL, 0.5, "spam", "ham", "validation");
    assert_non_null(strstr(g->str, "0 of 10 (under one message: not measurable here)"));
    assert_non_null(strstr(g->str, "(no name)"));
    g_string_free(g, TRUE);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_recall_at_fpr),
        cmocka_unit_test(test_section),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
