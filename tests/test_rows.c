/* The feature row format (src/rows.c): dense <-> rows round trips bit for bit, gather keeps rows intact,
 * the CSR invariants are enforced, memory is what the format promises. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tbert/rows.h"

/* n x dim dense vectors: dense block random, each sparse column non-zero with probability `fill` */
static float *random_dense(tu_rng *r, int n, size_t dd, size_t dim, double fill) {
    float *x = calloc((size_t)n * dim, sizeof(float));
    for (int i = 0; i < n; i++)
        for (size_t j = 0; j < dim; j++)
            if (j < dd || tu_uniform(r) < fill) x[(size_t)i * dim + j] = j < dd ? tu_normal(r) : (float)(tu_uniform(r) + 0.01);
    return x;
}

static void test_round_trip(void **state) {
    (void)state;
    tu_rng r = {tu_seed_from_env("test_rows")};
    size_t widths[3] = {37, 5, 1};
    const size_t dds[2] = {0, 7};
    for (int t = 0; t < 2; t++) {
        size_t dd = dds[t], dim = dd + 43;
        int n = 13;
        float *x = random_dense(&r, n, dd, dim, 0.2);
        memset(x + 4 * dim + dd, 0, (dim - dd) * sizeof(float)); /* a row without sparse entries */
        tbert_rows rows;
        assert_int_equal(tbert_rows_init(&rows, dd, 3, widths, NULL), TBERT_OK);
        assert_int_equal(tbert_rows_dim(&rows), dim);
        assert_int_equal(rows.block_start[1], 37);
        assert_int_equal(rows.block_start[3], 43);
        assert_int_equal(tbert_rows_append_dense(&rows, n, x, NULL), TBERT_OK);
        assert_int_equal(rows.n, n);
        size_t nz = 0;
        for (int i = 0; i < n; i++)
            for (size_t j = dd; j < dim; j++) nz += x[(size_t)i * dim + j] != 0;
        assert_int_equal(tbert_rows_nnz(&rows), nz);
        assert_int_equal(rows.indptr[5], rows.indptr[4]);
        /* densify into a wider stride leaves the extra columns alone */
        size_t stride = dim + 3;
        float *back = malloc((size_t)n * stride * sizeof(float));
        for (size_t i = 0; i < (size_t)n * stride; i++) back[i] = -7.0f;
        tbert_rows_densify(&rows, 0, n, back, stride);
        for (int i = 0; i < n; i++) {
            assert_memory_equal(back + (size_t)i * stride, x + (size_t)i * dim, dim * sizeof(float));
            for (size_t j = dim; j < stride; j++) assert_true(back[(size_t)i * stride + j] == -7.0f);
        }
        /* gather rows in another order, some twice */
        int idx[5] = {12, 0, 4, 12, 3};
        tbert_rows g;
        assert_int_equal(tbert_rows_init(&g, dd, 3, widths, NULL), TBERT_OK);
        assert_int_equal(tbert_rows_gather(&g, &rows, idx, 5, NULL), TBERT_OK);
        float *one = malloc(dim * sizeof(float));
        for (int k = 0; k < 5; k++) {
            tbert_rows_densify(&g, k, 1, one, dim);
            assert_memory_equal(one, x + (size_t)idx[k] * dim, dim * sizeof(float));
        }
        /* clear keeps the shape; appending again gives the same rows */
        tbert_rows_clear(&g);
        assert_int_equal(g.n, 0);
        assert_int_equal(tbert_rows_nnz(&g), 0);
        assert_int_equal(tbert_rows_append_row(&g, &rows, 7, NULL), TBERT_OK);
        tbert_rows_densify(&g, 0, 1, one, dim);
        assert_memory_equal(one, x + 7 * dim, dim * sizeof(float));
        /* memory: dense block + 8 bytes per entry + 8 per row, within the growth factor */
        size_t need = (size_t)n * dd * 4 + nz * 8 + (size_t)(n + 1) * 8;
        assert_true(tbert_rows_bytes(&rows) >= need && tbert_rows_bytes(&rows) <= 2 * need + 16 * (dd * 4 + 8) + 16 * 8);
        free(one);
        free(back);
        free(x);
        tbert_rows_free(&g);
        tbert_rows_free(&rows);
    }
}

static void test_invariants(void **state) {
    (void)state;
    size_t w = 10;
    tbert_rows rows;
    tbert_error err;
    assert_int_equal(tbert_rows_init(&rows, 2, 1, &w, NULL), TBERT_OK);
    float d[2] = {1, 2}, v[3] = {1, 2, 3};
    int32_t up[3] = {1, 4, 9}, dup[3] = {1, 4, 4}, out[3] = {1, 4, 10}, neg[1] = {-1};
    assert_int_equal(tbert_rows_append(&rows, d, 3, up, v, NULL), TBERT_OK);
    assert_int_equal(tbert_rows_append(&rows, d, 3, dup, v, &err), TBERT_E_ARG);
    assert_int_equal(tbert_rows_append(&rows, d, 3, out, v, &err), TBERT_E_ARG);
    assert_int_equal(tbert_rows_append(&rows, d, 1, neg, v, &err), TBERT_E_ARG);
    float zero[1] = {0};
    assert_int_equal(tbert_rows_append(&rows, d, 1, up, zero, &err), TBERT_E_ARG);
    assert_non_null(strstr(err.msg, "zero"));
    assert_int_equal(tbert_rows_append(&rows, NULL, 0, NULL, NULL, NULL), TBERT_OK); /* dense NULL = zeros */
    assert_int_equal(rows.n, 2);
    assert_true(rows.dense[2] == 0 && rows.dense[3] == 0);
    tbert_rows other;
    size_t w2 = 11;
    assert_int_equal(tbert_rows_init(&other, 2, 1, &w2, NULL), TBERT_OK);
    assert_int_equal(tbert_rows_append_row(&other, &rows, 0, &err), TBERT_E_ARG);
    int bad = 2;
    assert_int_equal(tbert_rows_gather(&other, &rows, &bad, 1, &err), TBERT_E_ARG);
    size_t many[5] = {1, 1, 1, 1, 1};
    assert_int_equal(tbert_rows_init(&other, 2, 5, many, &err), TBERT_E_ARG);
    tbert_rows_free(&other);
    tbert_rows_free(&rows);
}

/* .npz export: numpy reads back the exact arrays (checked by the venv's Python against raw dumps) */
static void test_npz(void **state) {
    (void)state;
    assert_int_equal(tbert_crc32(0, "123456789", 9), 0xCBF43926u); /* the CRC-32 check value */
    const char *py = getenv("TBERT_PYTHON");
    if (!py) py = "python3";
    tu_rng r = {tu_seed_from_env("test_rows_npz")};
    size_t widths[2] = {30, 9}, dd = 6, dim = dd + 39;
    int n = 11;
    float *x = random_dense(&r, n, dd, dim, 0.3);
    tbert_rows rows;
    assert_int_equal(tbert_rows_init(&rows, dd, 2, widths, NULL), TBERT_OK);
    assert_int_equal(tbert_rows_append_dense(&rows, n, x, NULL), TBERT_OK);
    char dir[] = "/tmp/tbert_npz_XXXXXX", npz[128], raw[128], cmd[4096];
    assert_non_null(mkdtemp(dir));
    snprintf(npz, sizeof npz, "%s/rows.npz", dir);
    snprintf(raw, sizeof raw, "%s/dense.f32", dir);
    int32_t labels[11] = {0, 1, 2, 1, 0, 1, 1, 1, 0, 0, 7};
    assert_int_equal(tbert_rows_write_npz(npz, &rows, labels, NULL), TBERT_OK);
    FILE *f = fopen(raw, "wb");
    fwrite(x, sizeof(float), (size_t)n * dim, f);
    fclose(f);
    snprintf(cmd, sizeof cmd,
             "'%s' -c \"import numpy as np, zipfile, sys\n"
             "z = np.load('%s')\n"
             "assert zipfile.ZipFile('%s').testzip() is None\n"
             "x = np.fromfile('%s', '<f4').reshape(%d, %zu)\n"
             "assert bytes(z['format']) == b'csr' and list(z['shape']) == [%d, 39], (z['format'], z['shape'])\n"
             "assert z['data'].dtype == np.float32 and z['indices'].dtype == np.int32 and z['indptr'].dtype == np.int64\n"
             "assert list(z['block_start']) == [0, 30, 39]\n"
             "assert list(z['labels']) == [0, 1, 2, 1, 0, 1, 1, 1, 0, 0, 7] and z['labels'].dtype == np.int32\n"
             "s = np.zeros((%d, 39), np.float32)\n"
             "for i in range(%d):\n"
             "    a, b = z['indptr'][i], z['indptr'][i + 1]\n"
             "    s[i, z['indices'][a:b]] = z['data'][a:b]\n"
             "assert np.array_equal(np.hstack([z['dense'], s]).view(np.uint32), x.view(np.uint32))\n"
             "print('npz ok', len(z['data']))\"",
             py, npz, npz, raw, n, dim, n, n, n);
    assert_int_equal(system(cmd), 0);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    tbert_rows_free(&rows);
    free(x);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_round_trip), cmocka_unit_test(test_invariants),
                                       cmocka_unit_test(test_npz)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
