/* The trainable-tensor list (src/params.c): order kept, names copied and pointers borrowed, element counts from
 * the shape, lookup by name, append, zero_grad touching exactly the gradients, and the argument errors. The fixed
 * chunks (test_chunks): their pieces cover every element of the flat concatenation once, in order, each piece
 * inside one entry and one chunk; the threaded zeroing clears exactly the gradients with 1..5 threads. */
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

/* bookkeeping of the pieces visited: the next flat element expected, the chunk being visited */
typedef struct {
    const tbert_params *ps;
    size_t next;
    int chunk, pieces;
    bool ok;
} piece_log;

static void log_piece(void *ctx, int entry, size_t lo, size_t hi) {
    piece_log *l = ctx;
    size_t at = 0;
    for (int i = 0; i < entry; i++) at += l->ps->p[i].n;
    size_t a = (size_t)l->chunk * TBERT_PARAMS_CHUNK;
    l->ok = l->ok && entry >= 0 && entry < l->ps->n && lo < hi && hi <= l->ps->p[entry].n && at + lo == l->next &&
            at + lo >= a && at + hi <= a + TBERT_PARAMS_CHUNK;
    l->next = at + hi;
    l->pieces++;
}

static void test_chunks(void **state) {
    (void)state;
    /* entries of 1, 32768, 70001, 5, 32767 and 2 x 16384 elements: an entry inside a chunk, entries on a boundary, one
     * spanning three chunks, a chunk holding pieces of three entries */
    static const int64_t shapes[][2] = {{1, 1}, {32768, 1}, {70001, 1}, {5, 1}, {32767, 1}, {2, 16384}};
    enum { NT = 6 };
    size_t n = 0, off[NT + 1] = {0};
    for (int t = 0; t < NT; t++) off[t + 1] = n += (size_t)(shapes[t][0] * shapes[t][1]);
    float *w = tu_xmalloc(n * sizeof(float)), *g = tu_xmalloc((n + 2) * sizeof(float)); /* g[0], g[n+1]: guards */
    tbert_params ps = {0};
    char name[16];
    for (int t = 0; t < NT; t++) {
        snprintf(name, sizeof name, "t%d", t);
        int ndim = shapes[t][1] > 1 ? 2 : 1;
        float *wt = w + off[t], *gt = g + 1 + off[t];
        assert_int_equal(tbert_params_add(&ps, name, wt, gt, ndim, shapes[t], 0, true, NULL), TBERT_OK);
    }
    int nc = tbert_params_chunks(&ps);
    assert_int_equal(nc, (int)((n + TBERT_PARAMS_CHUNK - 1) / TBERT_PARAMS_CHUNK));
    assert_int_equal(nc, 6); /* 168310 elements */
    piece_log l = {&ps, 0, 0, 0, true};
    for (l.chunk = 0; l.chunk < nc; l.chunk++) tbert_params_chunk_pieces(&ps, l.chunk, log_piece, &l);
    assert_true(l.ok);
    assert_int_equal(l.next, n);
    assert_int_equal(l.pieces, 11); /* per chunk 2, 2, 1, 3, 2, 1 */
    for (int threads = 1; threads <= 5; threads++) {
        for (size_t i = 0; i < n + 2; i++) g[i] = (float)(i % 7) + 1.0f;
        for (size_t i = 0; i < n; i++) w[i] = 2.0f;
        tbert_params_zero_grad_threads(&ps, threads);
        bool ok = g[0] == 1.0f && g[n + 1] == (float)((n + 1) % 7) + 1.0f;
        for (size_t i = 0; i < n; i++) ok = ok && g[1 + i] == 0.0f && w[i] == 2.0f;
        if (!ok) fail_msg("zero_grad with %d threads: a gradient left or a neighbour touched", threads);
    }
    tbert_params empty = {0};
    assert_int_equal(tbert_params_chunks(&empty), 0);
    tbert_params_zero_grad_threads(&empty, 3);
    tbert_params_free(&ps);
    free(w);
    free(g);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_params_add_find_append),
        cmocka_unit_test(test_chunks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
