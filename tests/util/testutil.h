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

/* ---- skips: one place decides (CONVENTIONS "Skips"; the shell twin is tests/util/testlib.sh) ----
 * A committed fixture (anything under tests/) that is missing FAILS the test. Only an absent EXTERNAL
 * prerequisite skips (exit 77): a CUDA device (real or emulated), the shared corpus ../shared/data, the MiniLM
 * model in $TBERT_CACHE (scripts/test.sh fetches it; under CI=true any skip outside tests/skips-allowed.txt
 * fails the run). A program that ran its other parts but had to leave one out for want of an external
 * prerequisite ends in 77 too (tu_exit_status), so that the left-out part shows as a skip, never as a pass. */

/* $TBERT_TESTS_DIR/<rel>, a committed fixture: fails the running cmocka test (or, outside one, exits 1)
 * naming it when it does not exist. */
const char *tu_fixture(const char *rel, char *buf, size_t n);
/* Prints "<test>: skipped: <why>" and exits 77. For an absent external prerequisite only. */
_Noreturn void tu_skip_external(const char *test_name, const char *why);
/* Inside a cmocka test: prints that this part is skipped and why, and skips the test case (cmocka skip()).
 * The program must then end with tu_exit_status(..., true). */
#define TU_SKIP_PART(why)                                                                                        \
    do {                                                                                                         \
        print_message("skipped part: %s (external prerequisite absent)\n", (why));                              \
        skip();                                                                                                  \
    } while (0)
/* The exit status of a test program: 1 when any check failed; otherwise 77 when a part was skipped for want
 * of an external prerequisite; otherwise 0. */
int tu_exit_status(int failures, bool skipped_part);

/* $TBERT_SHARED_DATA/<rel> (or ../shared/data relative to the source tree); NULL when absent (external). */
const char *tu_shared_path(const char *rel, char *buf, size_t n);
/* $TBERT_CACHE/models/minilm/<file>; NULL when absent (external: models/fetch.sh minilm). */
const char *tu_minilm_path(const char *file, char *buf, size_t n);
/* $TBERT_TESTS_DIR/<rel> (no existence check; committed fixtures go through tu_fixture) */
const char *tu_tests_path(const char *rel, char *buf, size_t n);

/* splitmix64-based RNG; seed from TBERT_TEST_SEED or time, printed once so failures can be replayed. */
typedef struct { uint64_t s; } tu_rng;
uint64_t tu_seed_from_env(const char *test_name);
uint64_t tu_next(tu_rng *r);
double tu_uniform(tu_rng *r);          /* [0,1) */
float tu_normal(tu_rng *r);            /* N(0,1) */

int tu_rand_int(tu_rng *r, int lo, int hi); /* [lo, hi], both inclusive */
/* n draws of scale * N(0,1), in order (caller frees; 4 spare bytes) */
float *tu_rand_floats(tu_rng *r, size_t n, float scale);

/* malloc / calloc that fail the running cmocka test when they return NULL (a size of 0 allocates 1) */
void *tu_xmalloc(size_t n);
void *tu_xcalloc(size_t n, size_t sz);

/* ||got-ref|| / ||ref|| in float64 (||got-ref|| when ref is all zeros) */
double tu_norm_ratio(const float *got, const float *ref, size_t n);

/* |got-ref| <= atol + rtol*|ref| for every element, no NaN/Inf. Prints the first violation and the
 * relative norm ||got-ref||/||ref||. Returns the number of violations. */
size_t tu_compare(const char *what, const float *got, const float *ref, size_t n, double atol, double rtol);
size_t tu_compare_f64(const char *what, const float *got, const double *ref, size_t n, double atol, double rtol);

/* With TBERT_TEST_DUMP_DIR set (scripts/test.sh, emu configuration): appends the bytes to
 * $TBERT_TEST_DUMP_DIR/$TBERT_TEST_NAME/<case>.bin (every byte of the case name outside [A-Za-z0-9.=+-] becomes
 * '_'), so that the outputs of the three emulator schedules can be compared bit for bit. tu_compare and
 * tu_compare_f64 dump `got` under `what`: every compared result is dumped without an edit to the test. */
void tu_dump(const char *case_name, const void *p, size_t bytes);

/* Rewrites the file in place: no O_TRUNC, no fsync. (ext4 flushes a file that was truncated to zero and
 * rewritten when it is closed, which would make thousands of rewrites wait on a busy disk.) */
void tu_write_bytes(const char *path, const uint8_t *b, size_t len);
/* For the corruption sweeps: unless s is TBERT_OK, the error must be one non-empty line that names `name`
 * and a known status; otherwise prints byte `pos` = `value` and fails the test. */
void tu_check_corrupt_error(const tbert_error *err, tbert_status s, const char *name, size_t pos, int value);

/* For the CUDA tests: exits 77 (tu_skip_external) when the build has no CUDA backend or no device (real or
 * emulated) is there; returns otherwise. */
void tu_require_cuda_device(const char *test_name);

#endif
