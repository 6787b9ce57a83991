/* The trainable-tensor list (src/params.c): order kept, names copied and pointers borrowed, element counts from
 * the shape, lookup by name, append, zero_grad touching exactly the gradients, and the argument errors. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tbert/params.h"

static void test_params_add_find_append(void **state) {
    (void)state;
    float w1[6] = {1, 2, 3, 4, 5, 6}, g1[6] = {1, 1, 1, 1, 1, 1};
    float w2[3] = {7, 8, 9}, g2[3] = {2, 2, 2};
    float guard[2] = {5, 5};
    int64_t s1[2] = {2, 3}, s2[1] = {3};
    tbert_params a = {0}, b = {0};
    tbert_error err = {0};
    char name[64];
    /* 40 entries: the list grows past its first allocation and keeps the order */
    for (int i = 0; i < 40; i++) {
        snprintf(name, sizeof name, "encoder.layer.%d.output.dense.weight", i);
        assert_int_equal(tbert_params_add(&a, name, w1, g1, 2, s1, TBERT_PGROUP_ENCODER, true, &err), TBERT_OK);
    }
    assert_int_equal(tbert_params_add(&b, "head.fc2.bias", w2, g2, 1, s2, TBERT_PGROUP_HEAD, false, &err), TBERT_OK);
    assert_int_equal(a.n, 40);
    assert_int_equal(a.p[0].n, 6);
    assert_int_equal(a.p[0].shape[0], 2);
    assert_int_equal(a.p[0].shape[1], 3);
    assert_int_equal(b.p[0].shape[1], 1);
    assert_int_equal(tbert_params_numel(&a), 240);
    assert_int_equal(tbert_params_find(&a, "encoder.layer.17.output.dense.weight"), 17);
    assert_int_equal(tbert_params_find(&a, "encoder.layer.17.output.dense"), -1);
    assert_int_equal(tbert_params_append(&b, &a, &err), TBERT_OK);
    assert_int_equal(b.n, 41);
    assert_string_equal(b.p[0].name, "head.fc2.bias");
    assert_string_equal(b.p[40].name, "encoder.layer.39.output.dense.weight");
    assert_ptr_equal(b.p[40].w, w1);
    assert_int_equal(b.p[40].group, TBERT_PGROUP_ENCODER);
    assert_true(b.p[40].decay);
    assert_false(b.p[0].decay);
    assert_int_equal(tbert_params_numel(&b), 243);

    /* errors: duplicate name, bad shape, bad ndim, bad group, over-long name; the list is unchanged */
    assert_int_equal(tbert_params_add(&b, "head.fc2.bias", w2, g2, 1, s2, 0, false, &err), TBERT_E_ARG);
    assert_non_null(strstr(err.msg, "duplicate"));
    int64_t bad[2] = {2, 0};
    assert_int_equal(tbert_params_add(&b, "x", w2, g2, 2, bad, 0, false, &err), TBERT_E_ARG);
    assert_int_equal(tbert_params_add(&b, "x", w2, g2, 3, s1, 0, false, &err), TBERT_E_ARG);
    assert_int_equal(tbert_params_add(&b, "x", w2, g2, 1, s2, TBERT_PGROUP_COUNT, false, &err), TBERT_E_ARG);
    char longname[TBERT_PARAM_NAME_MAX + 1];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    assert_int_equal(tbert_params_add(&b, longname, w2, g2, 1, s2, 0, false, &err), TBERT_E_ARG);
    assert_int_equal(b.n, 41);

    /* zero_grad: every gradient zeroed, values and neighbouring memory untouched */
    float gg[4] = {3, 3, 3, 3};
    int64_t s3[1] = {2};
    tbert_params c = {0};
    assert_int_equal(tbert_params_add(&c, "p", w2, gg + 1, 1, s3, 0, true, &err), TBERT_OK);
    tbert_params_zero_grad(&c);
    assert_true(gg[0] == 3 && gg[1] == 0 && gg[2] == 0 && gg[3] == 3);
    assert_true(w2[0] == 7 && guard[0] == 5);
    tbert_params_free(&a);
    tbert_params_free(&b);
    tbert_params_free(&c);
    assert_null(a.p);
    assert_int_equal(a.n, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_params_add_find_append),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
