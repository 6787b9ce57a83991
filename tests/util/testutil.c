#include "testutil.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tbert/encoder.h"
#include "tbert/fileio.h"

const char *tu_shared_path(const char *rel, char *buf, size_t n) {
    const char *root = getenv("TBERT_SHARED_DATA");
    if (root && *root) snprintf(buf, n, "%s/%s", root, rel);
    else snprintf(buf, n, "../../shared/data/%s", rel);
    struct stat st;
    return stat(buf, &st) == 0 ? buf : NULL;
}

const char *tu_minilm_path(const char *file, char *buf, size_t n) {
    char cache[1024];
    tbert_cache_dir(cache, sizeof cache);
    snprintf(buf, n, "%s/models/minilm/%s", cache, file);
    struct stat st;
    return stat(buf, &st) == 0 ? buf : NULL;
}

const char *tu_fixture(const char *rel, char *buf, size_t n) {
    tu_tests_path(rel, buf, n);
    struct stat st;
    if (stat(buf, &st) != 0) {
        fprintf(stderr, "committed fixture %s is missing: a failure, not a skip\n", buf);
        fail_msg("committed fixture %s is missing", buf);
    }
    return buf;
}

_Noreturn void tu_skip_external(const char *test_name, const char *why) {
    fprintf(stderr, "%s: skipped: %s (external prerequisite absent)\n", test_name, why);
    fflush(NULL);
    exit(TEST_SKIP);
}

int tu_exit_status(int failures, bool skipped_part) {
    if (failures) return 1;
    if (skipped_part) fprintf(stderr, "a part of this test was skipped (above): exit 77\n");
    return skipped_part ? TEST_SKIP : 0;
}

const char *tu_tests_path(const char *rel, char *buf, size_t n) {
    const char *root = getenv("TBERT_TESTS_DIR");
    snprintf(buf, n, "%s/%s", root && *root ? root : ".", rel);
    return buf;
}

uint64_t tu_seed_from_env(const char *test_name) {
    const char *s = getenv("TBERT_TEST_SEED");
    uint64_t seed = s && *s ? strtoull(s, NULL, 10) : (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
    fprintf(stderr, "%s: seed %llu (replay with TBERT_TEST_SEED=%llu)\n", test_name, (unsigned long long)seed,
            (unsigned long long)seed);
    return seed;
}

uint64_t tu_next(tu_rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

double tu_uniform(tu_rng *r) { return (double)(tu_next(r) >> 11) * (1.0 / 9007199254740992.0); }

float tu_normal(tu_rng *r) {
    double u1 = tu_uniform(r), u2 = tu_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

int tu_rand_int(tu_rng *r, int lo, int hi) { return lo + (int)(tu_next(r) % (uint64_t)(hi - lo + 1)); }

float *tu_rand_floats(tu_rng *r, size_t n, float scale) {
    float *v = tu_xmalloc(n * sizeof *v + 4);
    for (size_t i = 0; i < n; i++) v[i] = scale * tu_normal(r);
    return v;
}

void *tu_xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    assert_non_null(p);
    return p;
}

void *tu_xcalloc(size_t n, size_t sz) {
    void *p = calloc(n ? n : 1, sz ? sz : 1);
    assert_non_null(p);
    return p;
}

double tu_norm_ratio(const float *got, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

void tu_dump(const char *case_name, const void *p, size_t bytes) {
    const char *dir = getenv("TBERT_TEST_DUMP_DIR"), *test = getenv("TBERT_TEST_NAME");
    if (!dir || !*dir) return;
    if (!test || !*test) test = "unnamed";
    char path[4096];
    int k = snprintf(path, sizeof path, "%s/%s", dir, test);
    assert_true(k > 0 && (size_t)k < sizeof path - 260);
    if (mkdir(path, 0755) != 0 && errno != EEXIST) fail_msg("tu_dump: cannot make %s: %s", path, strerror(errno));
    size_t at = (size_t)k;
    path[at++] = '/';
    for (const char *c = case_name; *c && at < sizeof path - 5; c++)
        path[at++] = (isalnum((unsigned char)*c) || strchr(".=+-", *c)) ? *c : '_';
    memcpy(path + at, ".bin", 5);
    FILE *f = fopen(path, "ab");
    if (!f || fwrite(p, 1, bytes, f) != bytes || fclose(f) != 0) fail_msg("tu_dump: cannot write %s", path);
}

static size_t compare_impl(const char *what, const float *got, const float *ref32, const double *ref64, size_t n,
                           double atol, double rtol) {
    tu_dump(what, got, n * sizeof *got);
    size_t bad = 0;
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double g = got[i], r = ref64 ? ref64[i] : ref32[i];
        double d = g - r;
        num += d * d;
        den += r * r;
        bool ok = isfinite(g) && isfinite(r) && fabs(d) <= atol + rtol * fabs(r);
        if (!ok && bad++ == 0)
            fprintf(stderr, "%s: first mismatch at %zu: got %.9g ref %.9g (atol %g rtol %g)\n", what, i, g, r, atol, rtol);
    }
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    fprintf(stderr, "%s: %zu elements, %zu outside tolerance, ||got-ref||/||ref|| = %.3g\n", what, n, bad, rel);
    return bad;
}

size_t tu_compare(const char *what, const float *got, const float *ref, size_t n, double atol, double rtol) {
    return compare_impl(what, got, ref, NULL, n, atol, rtol);
}

size_t tu_compare_f64(const char *what, const float *got, const double *ref, size_t n, double atol, double rtol) {
    return compare_impl(what, got, NULL, ref, n, atol, rtol);
}

void tu_write_bytes(const char *path, const uint8_t *b, size_t len) {
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, b, len, 0), (ssize_t)len);
    assert_int_equal(ftruncate(fd, (off_t)len), 0);
    assert_int_equal(close(fd), 0);
}

void tu_check_corrupt_error(const tbert_error *err, tbert_status s, const char *name, size_t pos, int value) {
    if (s == TBERT_OK) return;
    if (!err->msg[0] || strchr(err->msg, '\n') || !strstr(err->msg, name) || s >= TBERT_STATUS_COUNT) {
        fprintf(stderr, "byte %zu = 0x%02x: unclear error %s '%s' (must name %s)\n", pos, value, tbert_status_name(s), err->msg,
                name);
        fail();
    }
}

void tu_require_cuda_device(const char *test_name) {
#if !TBERT_HAVE_CUDA
    tu_skip_external(test_name, "built without the CUDA backend (-DTBERT_CUDA=OFF)");
#else
    if (tbert_cuda_device_count() <= 0) tu_skip_external(test_name, "no CUDA device");
#endif
}
