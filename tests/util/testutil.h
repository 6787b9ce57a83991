/* Helpers shared by the C tests: paths from the ctest environment, seeded RNG, float comparison. */
#ifndef TBERT_TESTUTIL_H
#define TBERT_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "tbert/common.h"

#define TEST_SKIP 77

/* $TBERT_SHARED_DATA/<rel> (or ../shared/data relative to the source tree); NULL when absent. */
const char *tu_shared_path(const char *rel, char *buf, size_t n);
/* $TBERT_TESTS_DIR/<rel> */
const char *tu_tests_path(const char *rel, char *buf, size_t n);

/* splitmix64-based RNG; seed from TBERT_TEST_SEED or time, printed once so failures can be replayed. */
typedef struct { uint64_t s; } tu_rng;
uint64_t tu_seed_from_env(const char *test_name);
uint64_t tu_next(tu_rng *r);
double tu_uniform(tu_rng *r);          /* [0,1) */
float tu_normal(tu_rng *r);            /* N(0,1) */

/* |got-ref| <= atol + rtol*|ref| for every element, no NaN/Inf. Prints the first violation and the
 * relative norm ||got-ref||/||ref||. Returns the number of violations. */
size_t tu_compare(const char *what, const float *got, const float *ref, size_t n, double atol, double rtol);
size_t tu_compare_f64(const char *what, const float *got, const double *ref, size_t n, double atol, double rtol);

/* Rewrites the file in place: no O_TRUNC, no fsync. (ext4 flushes a file that was truncated to zero and
 * rewritten when it is closed, which would make thousands of rewrites wait on a busy disk.) */
void tu_write_bytes(const char *path, const uint8_t *b, size_t len);
/* For the corruption sweeps: unless s is TBERT_OK, the error must be one non-empty line that names `name`
 * and a known status; otherwise prints byte `pos` = `value` and fails the test. */
void tu_check_corrupt_error(const tbert_error *err, tbert_status s, const char *name, size_t pos, int value);

/* For the CUDA tests: true, after printing "<test_name>: skipped (no CUDA device)", when no device is there. */
bool tu_no_cuda_device(const char *test_name);

#endif
