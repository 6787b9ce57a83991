/* The dropout generator (include/tbert/dropout_rng.h): Philox-4x32-10 against Random123's published known-answer
 * vectors (its tests/kat_vectors, the same three tuples TensorFlow's test_philox checks), the counter layout of the
 * convention written out by hand, and the keep rate of tbert_dropout_scale (binomial bounds). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "testutil.h"
#include "tbert/dropout_rng.h"
#include "tbert/encoder_backward.h"

static void test_philox_known_answers(void **state) {
    (void)state;
    static const uint32_t kat[3][10] = {
        /* counter[4], key[2], expected[4] */
        {0, 0, 0, 0, 0, 0, 0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u},
        {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0x408f276du, 0x41c83b0eu,
         0xa20bc7c6u, 0x6d5451fdu},
        {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u, 0xd16cfe09u, 0x94fdccebu,
         0x5001e420u, 0x24126ea1u},
    };
    for (int i = 0; i < 3; i++) {
        uint32_t out[4];
        tbert_philox4x32_10(kat[i], kat[i] + 4, out);
        for (int j = 0; j < 4; j++) {
            if (out[j] != kat[i][6 + j])
                print_error("KAT %d word %d: got %08x want %08x\n", i, j, out[j], kat[i][6 + j]);
            assert_true(out[j] == kat[i][6 + j]);
        }
    }
}

/* tbert_dropout_u32 of element i is word i % 4 of Philox of counter (i/4 lo, i/4 hi, step, site) under key
 * (seed lo, seed hi): the four elements of a block share one draw, one word each. */
static void test_dropout_counter_layout(void **state) {
    (void)state;
    uint64_t seed = 0x0123456789abcdefull, step = 0x1122334455ull, index = 0xfedcba9876ull;
    uint32_t site = tbert_dropout_site(5, TBERT_DROP_FFN_OUT);
    assert_int_equal(site, 43);
    /* block 0xfedcba9876 / 4 = 0x3fb72ea61d, and index % 4 = 2 */
    uint32_t ctr[4] = {0xb72ea61du, 0x3fu, 0x22334455u, 43}, key[2] = {0x89abcdefu, 0x01234567u}, out[4];
    tbert_philox4x32_10(ctr, key, out);
    assert_true(tbert_dropout_u32(seed, step, site, index) == out[2]);
    for (uint64_t w = 0; w < 4; w++) assert_true(tbert_dropout_u32(seed, step, site, 0xfedcba9874ull + w) == out[w]);
    assert_true(tbert_dropout_u32(seed, step, site, 0xfedcba9878ull) != out[0]); /* the next block: another draw */
    /* each coordinate changes the draw */
    uint32_t base = tbert_dropout_u32(seed, step, site, index);
    assert_true(tbert_dropout_u32(seed + 1, step, site, index) != base);
    assert_true(tbert_dropout_u32(seed, step + 1, site, index) != base);
    assert_true(tbert_dropout_u32(seed, step, site + 1, index) != base);
    assert_true(tbert_dropout_u32(seed, step, site, index + 1) != base);
    assert_true(tbert_dropout_u32(seed, step, site, index + (1ull << 32)) != base);
}

/* keep rate of p = 0.1 and 0.5 over 200,000 elements within 5 binomial standard deviations; the scale of a kept
 * element is 1/(1-p); p = 0 keeps all; the rule is u >= p with u = (word >> 8) 2^-24 */
static void test_dropout_rate(void **state) {
    (void)state;
    const float ps[2] = {0.1f, 0.5f};
    const int n = 200000;
    for (int k = 0; k < 2; k++) {
        float p = ps[k];
        int kept = 0;
        for (int i = 0; i < n; i++) {
            float s = tbert_dropout_scale(42, 7, tbert_dropout_site(1, TBERT_DROP_ATTN_PROBS), (uint64_t)i, p);
            float u =
                (float)(tbert_dropout_u32(42, 7, tbert_dropout_site(1, TBERT_DROP_ATTN_PROBS), (uint64_t)i) >> 8) /
                16777216.0f;
            assert_true(s == (u >= p ? 1.0f / (1.0f - p) : 0.0f));
            kept += s != 0.0f;
        }
        double mean = n * (1.0 - p), sd = sqrt(n * p * (1.0 - p));
        print_message("p=%.2f: kept %d of %d (expected %.0f +- %.0f)\n", p, kept, n, mean, sd);
        assert_true(fabs(kept - mean) < 5 * sd);
    }
    for (int i = 0; i < 1000; i++) assert_true(tbert_dropout_scale(1, 2, 3, (uint64_t)i, 0.0f) == 1.0f);
}

/* tbert_dropout_apply (blocks of 256 elements, 64 draws) multiplies by exactly tbert_dropout_scale of each
 * element: a start inside a block of four, a tail shorter than a block, and (base_hi) across the 2^32 boundary of
 * the block number (the counter's second word) */
static void check_apply(uint64_t base) {
    enum { n = 1000 };
    float x[n];
    tbert_dropout d = {0.3f, 0x1234567890abcdefull, 99, tbert_dropout_site(4, TBERT_DROP_ATTN_PROBS), base};
    for (int i = 0; i < n; i++) x[i] = 1.0f + (float)i * 0.25f;
    tbert_dropout_apply(n - 3, x + 3, &d, 7); /* x[3 + i] is element base + 7 + i */
    int dropped = 0;
    for (int i = 0; i < n - 3; i++) {
        float w = (1.0f + (float)(3 + i) * 0.25f) *
                  tbert_dropout_scale(d.seed, d.step, d.site, d.base + 7 + (uint64_t)i, d.p);
        assert_memory_equal(&x[3 + i], &w, sizeof w);
        dropped += w == 0.0f;
    }
    assert_true(dropped > 200 && dropped < 400); /* p = 0.3 of 997 */
    assert_true(x[0] == 1.0f && x[2] == 1.5f);   /* before the range: untouched */
    d.p = 0.0f;
    tbert_dropout_apply(n, x, &d, 0); /* p = 0: nothing changes */
    assert_true(x[0] == 1.0f && x[1] == 1.25f);
}

static void test_dropout_apply_matches_scale(void **state) {
    (void)state;
    check_apply(0);
    check_apply(12345);
    check_apply((1ull << 32) - 500);
    check_apply((1ull << 34) - 501); /* blocks 2^32 - 126 .. 2^32 + 124 */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_philox_known_answers),
        cmocka_unit_test(test_dropout_counter_layout),
        cmocka_unit_test(test_dropout_rate),
        cmocka_unit_test(test_dropout_apply_matches_scale),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
