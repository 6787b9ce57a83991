/* Metrics against hand-computed values (ties included); multi-class ranking values from scikit-learn
 * 1.9.1 (roc_auc_score ovr macro, mean of average_precision_score), rounded to 1e-12. */
#include <math.h>
#include <stdlib.h>

#include "testutil.h"
#include "tbert/metrics.h"

static const float S[7] = {0.9f, 0.8f, 0.8f, 0.7f, 0.6f, 0.6f, 0.3f};
static const bool Y[7] = {1, 0, 1, 0, 1, 0, 0};

static void test_auc_with_ties(void **state) {
    /* pairs: 0.9 beats 4 negatives; 0.8 ties one (0.5) beats 3; 0.6 ties one (0.5) beats 1 -> 9/12 */
    assert_float_equal(tbert_roc_auc(7, S, Y), 0.75, 1e-12);
    /* AP: R steps 1/3 at P=1, 1/3 at P=2/3, 1/3 at P=1/2 -> 13/18 */
    assert_float_equal(tbert_pr_auc(7, S, Y), 13.0 / 18.0, 1e-12);
    /* perfect and inverted rankings, all-tied scores, one class only */
    float s2[4] = {0.1f, 0.2f, 0.3f, 0.4f};
    bool y2[4] = {0, 0, 1, 1}, y3[4] = {1, 1, 0, 0}, y4[4] = {1, 1, 1, 1};
    assert_float_equal(tbert_roc_auc(4, s2, y2), 1.0, 1e-12);
    assert_float_equal(tbert_roc_auc(4, s2, y3), 0.0, 1e-12);
    float tied[4] = {0.5f, 0.5f, 0.5f, 0.5f};
    assert_float_equal(tbert_roc_auc(4, tied, y2), 0.5, 1e-12);
    assert_float_equal(tbert_pr_auc(4, tied, y2), 0.5, 1e-12);
    assert_true(isnan(tbert_roc_auc(4, s2, y4)));
}

static void test_threshold_choice(void **state) {
    float t;
    /* F1 by group: 0.5, 2/3 (0.8), 4/7, 2/3 (0.6, not better), 0.6 -> cut between 0.8 and 0.7 */
    assert_int_equal(tbert_threshold_choose("f1", 7, S, Y, &t, NULL), TBERT_OK);
    assert_float_equal(t, 0.75f, 1e-6);
    assert_int_equal(tbert_threshold_choose("fpr=0.25", 7, S, Y, &t, NULL), TBERT_OK);
    assert_float_equal(t, 0.75f, 1e-6);
    assert_int_equal(tbert_threshold_choose("fpr=0", 7, S, Y, &t, NULL), TBERT_OK);
    assert_float_equal(t, 0.85f, 1e-6);
    /* fpr=X,recall=R: max(fpr cut, (1-R) quantile of the positives {0.6, 0.8, 0.9}, linear interpolation):
     * R 0.4 -> h = 0.6 * 2 = 1.2 -> 0.8 + 0.2 * 0.1 = 0.82 (raises 0.75); R 0.9 -> 0.64 (keeps 0.75) */
    assert_int_equal(tbert_threshold_choose("fpr=0.25,recall=0.4", 7, S, Y, &t, NULL), TBERT_OK);
    assert_float_equal(t, 0.82f, 1e-6);
    assert_int_equal(tbert_threshold_choose("fpr=0.25,recall=0.9", 7, S, Y, &t, NULL), TBERT_OK);
    assert_float_equal(t, 0.75f, 1e-6);
    assert_int_equal(tbert_threshold_choose("fpr=0,recall=0.5", 7, S, Y, &t, NULL), TBERT_OK);
    assert_float_equal(t, 0.85f, 1e-6);
    assert_int_equal(tbert_threshold_choose("fpr=0,recall=1", 7, S, Y, &t, NULL), TBERT_OK);
    assert_float_equal(t, 0.85f, 1e-6);
    assert_int_equal(tbert_threshold_choose("fpr=0,recall=0", 7, S, Y, &t, NULL), TBERT_OK);
    assert_float_equal(t, 0.9f, 1e-6);
    /* margin=M: the recall raise never goes more than M logits above the fpr cut. Separable: negatives
     * {0.1, 0.2}, positives {0.97, 0.98, 0.99}; fpr=0 cut = 0.585 (midpoint of 0.97 and 0.2); R 0.5 ->
     * median 0.98; the ceiling sigmoid(logit(0.585) + 3) = 0.9659 caps it */
    {
        float s6[5] = {0.99f, 0.98f, 0.97f, 0.2f, 0.1f};
        bool y6[5] = {1, 1, 1, 0, 0};
        double ceil3 = 1.0 / (1.0 + exp(-(log(0.585 / 0.415) + 3.0)));
        assert_int_equal(tbert_threshold_choose("fpr=0,recall=0.5", 5, s6, y6, &t, NULL), TBERT_OK);
        assert_float_equal(t, 0.98f, 1e-6);
        assert_int_equal(tbert_threshold_choose("fpr=0,recall=0.5,margin=3", 5, s6, y6, &t, NULL), TBERT_OK);
        assert_float_equal(t, (float)ceil3, 1e-5);
        /* margin 0: the ceiling is the cut itself */
        assert_int_equal(tbert_threshold_choose("fpr=0,recall=0.5,margin=0", 5, s6, y6, &t, NULL), TBERT_OK);
        assert_float_equal(t, 0.585f, 1e-6);
        /* a ceiling above the quantile changes nothing: margin 10 */
        assert_int_equal(tbert_threshold_choose("fpr=0,recall=0.5,margin=10", 5, s6, y6, &t, NULL), TBERT_OK);
        assert_float_equal(t, 0.98f, 1e-6);
        tbert_error e3;
        assert_int_equal(tbert_threshold_parse("fpr=0,recall=0.5,margin=-1", &e3), TBERT_E_ARG);
        assert_int_equal(tbert_threshold_parse("fpr=0,recall=0.5,margin=x", &e3), TBERT_E_ARG);
        assert_int_equal(tbert_threshold_parse("fpr=0,recall=0.5,marg=1", &e3), TBERT_E_ARG);
        assert_int_equal(tbert_threshold_parse("fpr=0,recall=0.5,margin=3,", &e3), TBERT_E_ARG);
        assert_int_equal(tbert_threshold_parse("fpr=0.003,recall=0.8,margin=3", &e3), TBERT_OK);
    }
    {
        tbert_error e2;
        assert_int_equal(tbert_threshold_parse("fpr=0,recall=2", &e2), TBERT_E_ARG);
        assert_int_equal(tbert_threshold_parse("fpr=0,recal=0.9", &e2), TBERT_E_ARG);
        assert_int_equal(tbert_threshold_parse("fpr=0,", &e2), TBERT_E_ARG);
        assert_int_equal(tbert_threshold_parse("fpr=0.003,recall=0.9", &e2), TBERT_OK);
    }
    assert_int_equal(tbert_threshold_choose("0.3", 7, S, Y, &t, NULL), TBERT_OK);
    assert_float_equal(t, 0.3f, 1e-7);
    tbert_error err;
    assert_int_equal(tbert_threshold_choose("fpr=2", 7, S, Y, &t, &err), TBERT_E_ARG);
    assert_int_equal(tbert_threshold_parse("best", &err), TBERT_E_ARG);
    /* when even the top score is a negative, fpr=0 calls nothing positive */
    float s5[3] = {0.9f, 0.5f, 0.1f};
    bool y5[3] = {0, 1, 0};
    assert_int_equal(tbert_threshold_choose("fpr=0", 3, s5, y5, &t, NULL), TBERT_OK);
    assert_true(t > 0.9f);
}

static void test_binary_metrics(void **state) {
    float probs[14];
    int y[7];
    for (int i = 0; i < 7; i++) {
        probs[2 * i] = 1.0f - S[i];
        probs[2 * i + 1] = S[i];
        y[i] = Y[i];
    }
    tbert_metrics m;
    assert_int_equal(tbert_metrics_compute(7, 2, probs, y, 1, 0.75f, &m, NULL), TBERT_OK);
    /* TP 2 (0.9, 0.8), FP 1 (0.8), FN 1 (0.6), TN 3 */
    assert_int_equal(m.confusion[1 * 2 + 1], 2);
    assert_int_equal(m.confusion[0 * 2 + 1], 1);
    assert_int_equal(m.confusion[1 * 2 + 0], 1);
    assert_int_equal(m.confusion[0], 3);
    assert_float_equal(m.accuracy, 5.0 / 7.0, 1e-12);
    assert_float_equal(m.precision[1], 2.0 / 3.0, 1e-12);
    assert_float_equal(m.recall[1], 2.0 / 3.0, 1e-12);
    assert_float_equal(m.f1[1], 2.0 / 3.0, 1e-12);
    assert_float_equal(m.precision[0], 0.75, 1e-12);
    assert_float_equal(m.recall[0], 0.75, 1e-12);
    assert_int_equal(m.support[0], 4);
    assert_int_equal(m.support[1], 3);
    assert_float_equal(m.roc_auc, 0.75, 1e-7);
    assert_float_equal(m.pr_auc, 13.0 / 18.0, 1e-7);
    tbert_metrics_free(&m);
}

static void test_multiclass_metrics(void **state) {
    float P[18] = {0.7f, 0.2f, 0.1f, 0.2f, 0.5f, 0.3f, 0.4f, 0.4f, 0.2f, 0.1f, 0.3f, 0.6f, 0.3f, 0.3f, 0.4f, 0.5f, 0.1f, 0.4f};
    int y[6] = {0, 1, 1, 2, 0, 2};
    tbert_metrics m;
    assert_int_equal(tbert_metrics_compute(6, 3, P, y, -1, 0.5f, &m, NULL), TBERT_OK);
    /* argmax with ties to the lowest index: predictions 0 1 0 2 2 0 */
    assert_float_equal(m.accuracy, 0.5, 1e-12);
    int64_t conf[9] = {1, 0, 1, 1, 1, 0, 1, 0, 1};
    for (int i = 0; i < 9; i++) assert_int_equal(m.confusion[i], conf[i]);
    assert_float_equal(m.precision[0], 1.0 / 3.0, 1e-12);
    assert_float_equal(m.recall[0], 0.5, 1e-12);
    assert_float_equal(m.f1[0], 0.4, 1e-12);
    assert_float_equal(m.precision[1], 1.0, 1e-12);
    assert_float_equal(m.roc_auc, 0.8958333333333334, 1e-7);
    assert_float_equal(m.pr_auc, 0.861111111111111, 1e-7);
    tbert_metrics_free(&m);
}

static void test_curves(void **state) {
    double *x, *y;
    int n;
    assert_int_equal(tbert_roc_curve(7, S, Y, &x, &y, &n), TBERT_OK);
    assert_int_equal(n, 6); /* origin + 5 distinct scores */
    assert_float_equal(x[0], 0, 0);
    assert_float_equal(x[2], 0.25, 1e-12); /* after the 0.8 group: FP 1 of 4 */
    assert_float_equal(y[2], 2.0 / 3.0, 1e-12);
    assert_float_equal(x[5], 1, 1e-12);
    assert_float_equal(y[5], 1, 1e-12);
    free(x);
    free(y);
    assert_int_equal(tbert_pr_curve(7, S, Y, &x, &y, &n), TBERT_OK);
    assert_float_equal(y[0], 1, 0);
    assert_float_equal(x[4], 1, 1e-12);
    assert_float_equal(y[4], 0.5, 1e-12);
    free(x);
    free(y);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_auc_with_ties),
        cmocka_unit_test(test_threshold_choice),
        cmocka_unit_test(test_binary_metrics),
        cmocka_unit_test(test_multiclass_metrics),
        cmocka_unit_test(test_curves),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
