/* Replays every file under tests/fuzz/regressions/<target>/ (inputs that once crashed or hung a fuzz
 * target) and tests/fuzz/corpus/<target>/ (the seed corpora) through the same entry functions the
 * libFuzzer targets use (tests/fuzz/targets.c), in the normal build: under the ASan+UBSan configuration
 * this catches any regression; everywhere it checks the targets' invariants. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz/targets.c"
#include "tbert/fileio.h"
#include "testutil.h"

static int replay_dir(const fuzz_target *t, const char *kind, size_t *files) {
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/fuzz/%s/%s", tests_dir(), kind, t->name);
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[PATH_MAX + 256];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (!tbert_is_regular_file(path)) continue;
        char *buf;
        size_t len;
        tbert_error err;
        if (tbert_read_file(path, 0, &buf, &len, &err)) {
            fprintf(stderr, "%s\n", err.msg);
            closedir(d);
            return -1;
        }
        /* an exact-size copy, so that a read past the end shows under ASan */
        uint8_t *exact = malloc(len ? len : 1);
        memcpy(exact, buf, len);
        free(buf);
        t->fn(exact, len);
        free(exact);
        (*files)++;
    }
    closedir(d);
    return 0;
}

static void test_replay_all(void **state) {
    size_t regress = 0, corpus = 0;
    for (const fuzz_target *t = fuzz_targets; t->name; t++) {
        size_t r = 0, c = 0;
        assert_int_equal(replay_dir(t, "regressions", &r), 0);
        assert_int_equal(replay_dir(t, "corpus", &c), 0);
        fprintf(stderr, "%-12s %3zu regression inputs, %3zu seed inputs\n", t->name, r, c);
        regress += r;
        corpus += c;
    }
    assert_true(corpus > 0); /* the seed corpora are committed: an empty walk means a wrong folder */
    fprintf(stderr, "replayed %zu regression and %zu seed inputs\n", regress, corpus);
}

/* A few fixed inputs per target, so each entry function runs even without corpora. */
static void test_fixed_inputs(void **state) {
    static const char *const inputs[] = {"", "\x00", "\xff\xff\xff\xff\xff\xff\xff\xff", "{}", "[", "{\"a\":",
                                         "From x\n\nbody\n", "text\tlabel\n", "\x08\x00\x00\x00\x00\x00\x00\x00{}      "};
    for (const fuzz_target *t = fuzz_targets; t->name; t++)
        for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
            size_t n = i == 1 ? 1 : (i == 8 ? 16 : strlen(inputs[i]));
            uint8_t *b = malloc(n ? n : 1);
            memcpy(b, inputs[i], n);
            t->fn(b, n);
            free(b);
        }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixed_inputs),
        cmocka_unit_test(test_replay_all),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
