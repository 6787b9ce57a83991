/* Unit tests of the shared basics: overflow-checked sizes, atomic writes, model path resolution. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"
#include "tbert/fileio.h"
#include "tbert/mail.h"

static void test_size_overflow(void **state) {
    size_t out;
    assert_true(tbert_mul_size(1u << 20, 1u << 10, &out));
    assert_int_equal(out, (size_t)1 << 30);
    assert_false(tbert_mul_size(SIZE_MAX / 2 + 1, 2, &out));
    assert_false(tbert_add_size(SIZE_MAX, 1, &out));
    assert_null(tbert_malloc_array(SIZE_MAX / 4, 8));
}

static void test_atomic_write_replaces(void **state) {
    char dir[] = "/tmp/tbert_common_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/f.txt", dir);
    tbert_error err;
    assert_int_equal(tbert_write_file_atomic(path, "one", 3, &err), TBERT_OK);
    assert_int_equal(tbert_write_file_atomic(path, "second", 6, &err), TBERT_OK);
    char *buf;
    size_t len;
    assert_int_equal(tbert_read_file(path, 0, &buf, &len, &err), TBERT_OK);
    assert_int_equal(len, 6);
    assert_string_equal(buf, "second");
    free(buf);
    /* a folder that does not exist: clear error naming the path, old file untouched */
    char bad[300];
    snprintf(bad, sizeof bad, "%s/missing/f.txt", dir);
    assert_int_equal(tbert_write_file_atomic(bad, "x", 1, &err), TBERT_E_IO);
    assert_non_null(strstr(err.msg, "missing"));
    unlink(path);
    rmdir(dir);
}

static void test_sha256(void **state) {
    char hex[65];
    tbert_sha256_hex("abc", 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

static void test_resolve_model(void **state) {
    char dir[] = "/tmp/tbert_cache_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char models[300];
    snprintf(models, sizeof models, "%s/models/minilm", dir);
    tbert_error err;
    assert_int_equal(tbert_mkdirs(models, &err), TBERT_OK);
    setenv("TBERT_CACHE", dir, 1);
    char buf[512];
    assert_int_equal(tbert_resolve_model_dir(NULL, buf, sizeof buf, &err), TBERT_OK);
    assert_string_equal(buf, models);
    assert_int_equal(tbert_resolve_model_dir("nosuchmodel", buf, sizeof buf, &err), TBERT_E_IO);
    assert_non_null(strstr(err.msg, "models/fetch.sh nosuchmodel"));
    rmdir(models);
    snprintf(models, sizeof models, "%s/models", dir);
    rmdir(models);
    rmdir(dir);
}

static void test_shard_parse(void **state) {
    int k = -1, n = -1;
    tbert_error err;
    assert_int_equal(tbert_shard_parse("0/1", &k, &n, &err), TBERT_OK);
    assert_int_equal(k, 0);
    assert_int_equal(n, 1);
    assert_int_equal(tbert_shard_parse("7/8", &k, &n, &err), TBERT_OK);
    assert_int_equal(k, 7);
    assert_int_equal(n, 8);
    const char *bad[] = {"", "1", "1/", "/2", "2/2", "3/2", "-1/2", "1/-2", " 1/2", "1/2 ", "1/0", "0/1000001",
                         "99999999999999999999/3", "1/2/3", "a/b", "0x1/2"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(tbert_shard_parse(bad[i], &k, &n, &err), TBERT_E_ARG);
        assert_non_null(strstr(err.msg, "--shard"));
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_size_overflow),
        cmocka_unit_test(test_atomic_write_replaces),
        cmocka_unit_test(test_sha256),
        cmocka_unit_test(test_resolve_model),
        cmocka_unit_test(test_shard_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
