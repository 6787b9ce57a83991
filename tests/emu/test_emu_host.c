/* The emulated CUDA device's host half (kernels/emu/host.cpp): memory, streams, events, copies, errors.
 *
 * Each check of the emulator is shown to fire: a program with the bug gets the wrong answer (poison, an error,
 * a report) and the same program without the bug gets the right one. "Kernels" here are plain C functions queued
 * through tbert_emu_enqueue, the entry the execution half uses for real kernels, so these tests need nothing but
 * the host half. Values are exact (small integers in float), so comparisons are exact; NaN is the poison. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cuda_bf16.h"
#include "cuda_runtime.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define HAVE_ASAN 1
#endif

_Static_assert(sizeof(__nv_bfloat16) == 2, "bf16 storage is 16 bits in C");

#define CK(call)                                                                                                 \
    do {                                                                                                         \
        cudaError_t e_ = (call);                                                                                 \
        if (e_ != cudaSuccess) fail_msg("%s: %s (%s:%d)", #call, cudaGetErrorName(e_), __FILE__, __LINE__);      \
    } while (0)

/* ---- fake kernels ---- */

typedef struct {
    float *y;
    const float *x; /* NULL: y = b */
    int n;
    float a, b;
} axpb_ctx; /* y = a x + b */

static void axpb_run(void *p) {
    axpb_ctx *c = p;
    for (int i = 0; i < c->n; i++) c->y[i] = c->x ? c->a * c->x[i] + c->b : c->b;
}

static void launch_axpb(cudaStream_t s, float *y, const float *x, int n, float a, float b) {
    axpb_ctx *c = malloc(sizeof *c);
    assert_non_null(c);
    *c = (axpb_ctx){y, x, n, a, b};
    CK(tbert_emu_enqueue(s, axpb_run, c, free, "axpb"));
}

typedef struct {
    int *log, *len, tag;
} tag_ctx;

static void tag_run(void *p) {
    tag_ctx *c = p;
    c->log[(*c->len)++] = c->tag;
}

static void launch_tag(cudaStream_t s, int *log, int *len, int tag) {
    tag_ctx *c = malloc(sizeof *c);
    assert_non_null(c);
    *c = (tag_ctx){log, len, tag};
    CK(tbert_emu_enqueue(s, tag_run, c, free, "tag"));
}

static float *dev_floats(int n) {
    float *d = NULL;
    CK(cudaMalloc((void **)&d, (size_t)n * sizeof(float)));
    return d;
}

static void upload(float *d, const float *h, int n) { CK(cudaMemcpy(d, h, (size_t)n * sizeof(float), cudaMemcpyHostToDevice)); }

/* cudaMemcpy device-to-host: blocking, but on the legacy stream only. */
static void download(float *h, const float *d, int n) { CK(cudaMemcpy(h, d, (size_t)n * sizeof(float), cudaMemcpyDeviceToHost)); }

static int all_nan(const float *v, int n) {
    for (int i = 0; i < n; i++)
        if (!isnan(v[i])) return 0;
    return 1;
}

static void expect_values(const float *v, int n, float a, float b) { /* v[i] == a*i + b */
    for (int i = 0; i < n; i++)
        if (v[i] != a * (float)i + b) fail_msg("element %d: %g, expected %g", i, v[i], a * (float)i + b);
}

static void iota(float *v, int n) {
    for (int i = 0; i < n; i++) v[i] = (float)i;
}

static int setup(void **state) {
    (void)state;
    tbert_emu_reset_faults();
    return 0;
}

static int teardown(void **state) {
    (void)state;
    cudaDeviceSynchronize();
    assert_int_equal(tbert_emu_pending_work(), 0);
    tbert_emu_reset_faults();
    return 0;
}

/* ---- memory ---- */

static void test_malloc_is_poisoned(void **state) {
    (void)state;
    enum { N = 37 };
    float *d = dev_floats(N), h[N];
    int32_t *di = NULL, hi[N];
    CK(cudaMalloc((void **)&di, sizeof hi));
    download(h, d, N);
    CK(cudaMemcpy(hi, di, sizeof hi, cudaMemcpyDeviceToHost));
    assert_true(all_nan(h, N));
    for (int i = 0; i < N; i++) assert_int_equal(hi[i], -1);
    /* exactly the size asked: the block ends where the allocation ends */
    const void *base;
    size_t size;
    int is_dev;
    assert_int_equal(tbert_emu_find_allocation(d + 5, 4 * sizeof(float), &base, &size, &is_dev), 1);
    assert_ptr_equal(base, d);
    assert_int_equal(size, N * sizeof(float));
    assert_int_equal(is_dev, 1);
    assert_int_equal(tbert_emu_find_allocation(d + 5, (N - 5) * sizeof(float), NULL, NULL, NULL), 1);
    assert_int_equal(tbert_emu_find_allocation(d + 5, (N - 4) * sizeof(float), NULL, NULL, NULL), 0);
    assert_int_equal(tbert_emu_find_allocation(h, 4, NULL, NULL, NULL), 0);
    assert_int_equal((uintptr_t)d % 256, 0);
    CK(cudaFree(d));
    CK(cudaFree(di));
    assert_int_equal(tbert_emu_find_allocation(d, 4, NULL, NULL, NULL), 0);
    assert_true(tbert_emu_is_freed(d + 3));
}

static void test_freed_memory_is_poisoned(void **state) {
    (void)state;
    enum { N = 64 };
    float *d = dev_floats(N);
    CK(cudaMemset(d, 0, N * sizeof(float)));
    CK(cudaDeviceSynchronize());
    assert_true(d[0] == 0.0f && d[N - 1] == 0.0f); /* emulated device memory is host memory */
    CK(cudaFree(d));
#ifdef HAVE_ASAN
    assert_true(__asan_address_is_poisoned(d));
    assert_true(__asan_address_is_poisoned(d + N - 1));
#else
    assert_true(isnan(d[0]) && isnan(d[N - 1]));
#endif
}

static void test_free_errors(void **state) {
    (void)state;
    float *d = dev_floats(4), host[4];
    void *pinned = NULL;
    CK(cudaMallocHost(&pinned, 16));
    CK(cudaFree(d));
    assert_int_equal(cudaFree(d), cudaErrorInvalidDevicePointer); /* double free */
    assert_non_null(strstr(tbert_emu_last_fault(), "FREED"));
    assert_int_equal(cudaFree(host), cudaErrorInvalidDevicePointer); /* not ours */
    assert_int_equal(cudaFree(pinned), cudaErrorInvalidDevicePointer); /* pinned is not device memory */
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidDevicePointer);
    assert_int_equal(cudaGetLastError(), cudaSuccess); /* not sticky */
    float *d2 = dev_floats(4);
    assert_int_equal(cudaFreeHost(d2), cudaErrorInvalidValue);
    CK(cudaFreeHost(pinned));
    assert_int_equal(cudaFreeHost(pinned), cudaErrorInvalidValue);
    CK(cudaFree(d2));
    CK(cudaFree(NULL));
    cudaGetLastError();
}

static void test_device_queries(void **state) {
    (void)state;
    int n = 0, dev = -1;
    CK(cudaGetDeviceCount(&n));
    assert_int_equal(n, 1);
    CK(cudaSetDevice(0));
    assert_int_equal(cudaSetDevice(1), cudaErrorInvalidDevice);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidDevice);
    CK(cudaGetDevice(&dev));
    assert_int_equal(dev, 0);
    struct cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    assert_string_equal(p.name, "tbert emulated device");
    assert_int_equal(p.warpSize, 32);
    assert_int_equal(p.maxThreadsPerBlock, 1024);
    assert_int_equal(p.major, 9);
    size_t fr0, tot0, fr1, tot1;
    CK(cudaMemGetInfo(&fr0, &tot0));
    float *d = dev_floats(1000);
    CK(cudaMemGetInfo(&fr1, &tot1));
    assert_int_equal(tot0, tot1);
    assert_int_equal(fr0 - fr1, 4000);
    CK(cudaFree(d));
    void *big = NULL;
    assert_int_equal(cudaMalloc(&big, tot0 + 1), cudaErrorMemoryAllocation);
    assert_null(big);
    assert_int_equal(cudaGetLastError(), cudaErrorMemoryAllocation);
    assert_int_equal(cudaGetLastError(), cudaSuccess);
    assert_string_equal(cudaGetErrorString(cudaErrorMemoryAllocation), "out of memory");
    assert_string_equal(cudaGetErrorName(cudaErrorIllegalAddress), "cudaErrorIllegalAddress");
}

/* ---- the queue: nothing runs before CUDA says it must have ---- */

/* A kernel's result read back without synchronizing its (non-blocking) stream: the blocking cudaMemcpy is on
 * the legacy stream, which does not wait for non-blocking streams, so the host sees the poison. */
static void test_missing_stream_sync(void **state) {
    (void)state;
    enum { N = 50 };
    float h[N], out[N];
    iota(h, N);
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    float *x = dev_floats(N), *y = dev_floats(N);
    CK(cudaMemcpyAsync(x, h, sizeof h, cudaMemcpyHostToDevice, s));
    launch_axpb(s, y, x, N, 2.0f, 1.0f);
    assert_int_equal(tbert_emu_pending_work(), 2); /* queued, not run */
    download(out, y, N);                          /* BUG: no cudaStreamSynchronize(s) */
    assert_true(all_nan(out, N));
    CK(cudaStreamSynchronize(s)); /* the fix */
    download(out, y, N);
    expect_values(out, N, 2.0f, 1.0f);
    CK(cudaStreamDestroy(s));
    CK(cudaFree(x));
    CK(cudaFree(y));
}

/* Two non-blocking streams: the consumer must wait for the producer's event. */
static void test_missing_event(void **state) {
    (void)state;
    enum { N = 40 };
    float h[N], out[N];
    iota(h, N);
    cudaStream_t s1, s2;
    cudaEvent_t ev;
    CK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
    CK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
    CK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    for (int with_event = 0; with_event < 2; with_event++) {
        float *x = dev_floats(N), *mid = dev_floats(N), *y = dev_floats(N);
        CK(cudaMemcpyAsync(x, h, sizeof h, cudaMemcpyHostToDevice, s1));
        launch_axpb(s1, mid, x, N, 1.0f, 3.0f); /* producer on s1 */
        if (with_event) {
            CK(cudaEventRecord(ev, s1));
            CK(cudaStreamWaitEvent(s2, ev, 0));
        }
        launch_axpb(s2, y, mid, N, 2.0f, 0.0f); /* consumer on s2 */
        CK(cudaDeviceSynchronize()); /* everything runs, in the order the program established, and no other */
        download(out, y, N);
        if (with_event) expect_values(out, N, 2.0f, 6.0f);
        else assert_true(all_nan(out, N)); /* the consumer (queued last, ready) ran first */
        CK(cudaFree(x));
        CK(cudaFree(mid));
        CK(cudaFree(y));
    }
    /* the event's position is where it was recorded: work queued on s1 after the record is not waited for */
    float *a = dev_floats(N), *b = dev_floats(N), *c = dev_floats(N);
    launch_axpb(s1, a, NULL, N, 0.0f, 5.0f);
    CK(cudaEventRecord(ev, s1));
    launch_axpb(s1, b, NULL, N, 0.0f, 7.0f); /* after the record */
    CK(cudaStreamWaitEvent(s2, ev, 0));
    launch_axpb(s2, c, a, N, 1.0f, 0.0f);
    CK(cudaStreamSynchronize(s2));
    download(out, c, N);
    for (int i = 0; i < N; i++) assert_true(out[i] == 5.0f);
    download(out, b, N);
    assert_true(all_nan(out, N)); /* s1's later work has not run: nothing required it */
    CK(cudaEventSynchronize(ev));
    assert_int_equal(tbert_emu_pending_work(), 1);
    CK(cudaStreamSynchronize(s1));
    download(out, b, N);
    for (int i = 0; i < N; i++) assert_true(out[i] == 7.0f);
    CK(cudaFree(a));
    CK(cudaFree(b));
    CK(cudaFree(c));
    CK(cudaEventDestroy(ev));
    CK(cudaStreamDestroy(s1));
    CK(cudaStreamDestroy(s2));
}

/* The legacy stream waits for blocking streams and they wait for it; non-blocking streams are not ordered
 * with it in either direction. */
static void test_legacy_blocking_nonblocking(void **state) {
    (void)state;
    enum { N = 33 };
    float out[N];
    cudaStream_t blocking, nonblocking;
    CK(cudaStreamCreate(&blocking));
    CK(cudaStreamCreateWithFlags(&nonblocking, cudaStreamNonBlocking));
    unsigned flags = 7;
    CK(cudaStreamGetFlags(nonblocking, &flags));
    assert_int_equal(flags, cudaStreamNonBlocking);
    CK(cudaStreamGetFlags(blocking, &flags));
    assert_int_equal(flags, cudaStreamDefault);

    /* stream -> legacy: a blocking cudaMemcpy (legacy) after a kernel on the stream */
    float *y = dev_floats(N);
    launch_axpb(blocking, y, NULL, N, 0.0f, 4.0f);
    download(out, y, N);
    for (int i = 0; i < N; i++) assert_true(out[i] == 4.0f); /* waited for the blocking stream */
    float *z = dev_floats(N);
    launch_axpb(nonblocking, z, NULL, N, 0.0f, 4.0f);
    download(out, z, N);
    assert_true(all_nan(out, N)); /* did not wait for the non-blocking stream */
    CK(cudaStreamSynchronize(nonblocking));

    /* legacy -> stream: cudaMemset (queued on the legacy stream), then a kernel on the stream reads it */
    for (int nb = 0; nb < 2; nb++) {
        cudaStream_t s = nb ? nonblocking : blocking;
        float *m = dev_floats(N), *r = dev_floats(N);
        CK(cudaMemset(m, 0, N * sizeof(float)));
        launch_axpb(s, r, m, N, 1.0f, 1.0f);
        CK(cudaStreamSynchronize(s));
        download(out, r, N);
        if (nb) assert_true(all_nan(out, N)); /* the memset was not ordered before the non-blocking kernel */
        else for (int i = 0; i < N; i++) assert_true(out[i] == 1.0f);
        CK(cudaDeviceSynchronize());
        CK(cudaFree(m));
        CK(cudaFree(r));
    }
    /* the same through pageable host-to-device cudaMemcpy: read at the call, written on the legacy stream */
    float h[N];
    iota(h, N);
    for (int nb = 0; nb < 2; nb++) {
        cudaStream_t s = nb ? nonblocking : blocking;
        float *m = dev_floats(N), *r = dev_floats(N);
        upload(m, h, N);
        iota(h, N); /* (unchanged: the source was already read) */
        launch_axpb(s, r, m, N, 3.0f, 0.0f);
        CK(cudaStreamSynchronize(s));
        download(out, r, N);
        if (nb) assert_true(all_nan(out, N));
        else expect_values(out, N, 3.0f, 0.0f);
        CK(cudaDeviceSynchronize());
        CK(cudaFree(m));
        CK(cudaFree(r));
    }
    /* a destroyed blocking stream's queued work still orders the legacy stream */
    cudaStream_t gone;
    CK(cudaStreamCreate(&gone));
    float *g = dev_floats(N);
    launch_axpb(gone, g, NULL, N, 0.0f, 6.0f);
    CK(cudaStreamDestroy(gone));
    download(out, g, N);
    for (int i = 0; i < N; i++) assert_true(out[i] == 6.0f);
    CK(cudaFree(g));
    /* cudaStreamLegacy is the legacy stream */
    float *w = dev_floats(N);
    launch_axpb(cudaStreamLegacy, w, NULL, N, 0.0f, 9.0f);
    download(out, w, N);
    for (int i = 0; i < N; i++) assert_true(out[i] == 9.0f);
    CK(cudaFree(y));
    CK(cudaFree(z));
    CK(cudaFree(w));
    CK(cudaStreamDestroy(blocking));
    CK(cudaStreamDestroy(nonblocking));
}

/* Among ready work, the most recently queued runs first; each stream stays in order. */
static void test_most_recent_first(void **state) {
    (void)state;
    int log[8], len = 0;
    cudaStream_t a, b;
    CK(cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking));
    CK(cudaStreamCreateWithFlags(&b, cudaStreamNonBlocking));
    launch_tag(a, log, &len, 1);
    launch_tag(b, log, &len, 2);
    launch_tag(a, log, &len, 3);
    launch_tag(b, log, &len, 4);
    CK(cudaDeviceSynchronize());
    assert_int_equal(len, 4);
    /* ready at first: 1 (a) and 2 (b); 2 is newer. Then 4 (b, newest ready), then 1, then 3. */
    int expect[4] = {2, 4, 1, 3};
    for (int i = 0; i < 4; i++) assert_int_equal(log[i], expect[i]);
    CK(cudaStreamDestroy(a));
    CK(cudaStreamDestroy(b));
}

/* cudaMemcpyAsync from pinned memory reads the host buffer when the copy runs; from pageable memory, at the
 * call. A host write to the pinned buffer before synchronizing therefore changes what arrives. */
static void test_pinned_source_read_when_run(void **state) {
    (void)state;
    enum { N = 16 };
    float *pinned = NULL, pageable[N], out[N];
    CK(cudaMallocHost((void **)&pinned, N * sizeof(float)));
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    float *d1 = dev_floats(N), *d2 = dev_floats(N);
    for (int i = 0; i < N; i++) pinned[i] = pageable[i] = 1.0f;
    CK(cudaMemcpyAsync(d1, pinned, N * sizeof(float), cudaMemcpyHostToDevice, s));
    CK(cudaMemcpyAsync(d2, pageable, N * sizeof(float), cudaMemcpyHostToDevice, s));
    for (int i = 0; i < N; i++) pinned[i] = pageable[i] = 2.0f; /* BUG for the pinned one: the copy has not run */
    CK(cudaStreamSynchronize(s));
    download(out, d1, N);
    for (int i = 0; i < N; i++) assert_true(out[i] == 2.0f);
    download(out, d2, N);
    for (int i = 0; i < N; i++) assert_true(out[i] == 1.0f);
    /* device to pinned host, async: written when it runs */
    launch_axpb(s, d1, NULL, N, 0.0f, 8.0f);
    CK(cudaMemcpyAsync(pinned, d1, N * sizeof(float), cudaMemcpyDeviceToHost, s));
    assert_true(pinned[0] == 2.0f); /* not yet */
    CK(cudaStreamSynchronize(s));
    for (int i = 0; i < N; i++) assert_true(pinned[i] == 8.0f);
    /* cudaMemcpy from pinned memory is synchronous: the source is read before it returns */
    for (int i = 0; i < N; i++) pinned[i] = 3.0f;
    CK(cudaMemcpy(d2, pinned, N * sizeof(float), cudaMemcpyHostToDevice));
    for (int i = 0; i < N; i++) pinned[i] = 4.0f;
    download(out, d2, N);
    for (int i = 0; i < N; i++) assert_true(out[i] == 3.0f);
    /* cudaMemcpyDefault infers the kinds from the pointers */
    CK(cudaMemcpy(out, d2, N * sizeof(float), cudaMemcpyDefault));
    for (int i = 0; i < N; i++) assert_true(out[i] == 3.0f);
    CK(cudaFree(d1));
    CK(cudaFree(d2));
    CK(cudaFreeHost(pinned));
    CK(cudaStreamDestroy(s));
}

/* Copies are checked against their allocations at the call. */
static void test_copy_bounds(void **state) {
    (void)state;
    enum { N = 10 };
    float h[N + 4] = {0}, *d = dev_floats(N);
    void *pinned = NULL;
    CK(cudaMallocHost(&pinned, N * sizeof(float)));
    assert_int_equal(cudaMemcpy(d, h, (N + 1) * sizeof(float), cudaMemcpyHostToDevice), cudaErrorInvalidValue);
    assert_non_null(strstr(tbert_emu_last_fault(), "runs past its end"));
    assert_int_equal(cudaMemcpy(h, d + 3, N * sizeof(float), cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
    assert_int_equal(cudaMemcpy(h, d + N, 4, cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
    assert_non_null(strstr(tbert_emu_last_fault(), "past its end"));
    assert_int_equal(cudaMemcpy(d, h, 4, cudaMemcpyDeviceToHost), cudaErrorInvalidValue); /* wrong kind */
    assert_int_equal(cudaMemcpy(h, h + 1, 4, cudaMemcpyDeviceToDevice), cudaErrorInvalidValue);
    assert_non_null(strstr(tbert_emu_last_fault(), "not in any device"));
    float *big = dev_floats(2 * N);
    assert_int_equal(cudaMemcpyAsync(big, pinned, (N + 1) * sizeof(float), cudaMemcpyHostToDevice, NULL),
                     cudaErrorInvalidValue); /* pinned source overrun */
    assert_non_null(strstr(tbert_emu_last_fault(), "source"));
    assert_non_null(strstr(tbert_emu_last_fault(), "pinned host block"));
    CK(cudaFree(big));
    assert_int_equal(cudaMemset(d + 2, 0, N * sizeof(float)), cudaErrorInvalidValue);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidValue);
    assert_int_equal(cudaGetLastError(), cudaSuccess); /* call errors are not sticky */
    CK(cudaMemcpy(d + 2, h, (N - 2) * sizeof(float), cudaMemcpyHostToDevice)); /* exactly to the end: fine */
    CK(cudaDeviceSynchronize());
    CK(cudaFree(d));
    CK(cudaFreeHost(pinned));
}

/* Use after free: at the call (an error), and of a copy queued before the free (a sticky fault when it runs). */
static void test_use_after_free(void **state) {
    (void)state;
    enum { N = 12 };
    float h[N] = {0};
    float *d = dev_floats(N);
    CK(cudaFree(d));
    assert_int_equal(cudaMemcpy(d, h, sizeof h, cudaMemcpyHostToDevice), cudaErrorInvalidValue);
    assert_non_null(strstr(tbert_emu_last_fault(), "use after free"));
    cudaGetLastError();

    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    float *a = dev_floats(N), *b = dev_floats(N);
    CK(cudaMemcpyAsync(b, a, sizeof h, cudaMemcpyDeviceToDevice, s));
    CK(cudaFree(a)); /* BUG: the copy reading a has not run */
    assert_int_equal(cudaStreamSynchronize(s), cudaErrorIllegalAddress);
    assert_non_null(strstr(tbert_emu_last_fault(), "when it ran"));
    assert_non_null(strstr(tbert_emu_last_fault(), "use after free"));
    /* sticky: every later call fails, cudaGetLastError does not clear it */
    void *p = NULL;
    assert_int_equal(cudaMalloc(&p, 4), cudaErrorIllegalAddress);
    assert_int_equal(cudaGetLastError(), cudaErrorIllegalAddress);
    assert_int_equal(cudaGetLastError(), cudaErrorIllegalAddress);
    tbert_emu_reset_faults();
    CK(cudaStreamDestroy(s));
    CK(cudaFree(b));
    /* the fix: synchronize before freeing */
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    a = dev_floats(N), b = dev_floats(N);
    CK(cudaMemcpyAsync(b, a, sizeof h, cudaMemcpyDeviceToDevice, s));
    CK(cudaStreamSynchronize(s));
    CK(cudaFree(a));
    CK(cudaFree(b));
    CK(cudaStreamDestroy(s));
}

/* A fault while work runs is sticky and the device runs nothing more; launch errors are not sticky. */
typedef struct {
    int ran, dropped;
} count_ctx;
static void count_run(void *p) { ((count_ctx *)p)->ran++; }
static void count_drop(void *p) { ((count_ctx *)p)->dropped++; }
static void fault_run(void *p) {
    (void)p;
    tbert_emu_fault(cudaErrorLaunchFailure, "kernel fake (test.cu:1) block (0,0,0): deliberate");
}

static void test_faults(void **state) {
    (void)state;
    count_ctx before = {0, 0}, after = {0, 0}, elsewhere = {0, 0};
    cudaStream_t s, other;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CK(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking));
    CK(tbert_emu_enqueue(other, count_run, &elsewhere, count_drop, "elsewhere")); /* not waited for below */
    CK(tbert_emu_enqueue(s, count_run, &before, count_drop, "before"));
    CK(tbert_emu_enqueue(s, fault_run, NULL, NULL, "faulting kernel"));
    CK(tbert_emu_enqueue(s, count_run, &after, count_drop, "after"));
    assert_int_equal(cudaStreamSynchronize(s), cudaErrorLaunchFailure);
    assert_int_equal(before.ran, 1);
    assert_int_equal(before.dropped, 1);
    assert_int_equal(after.ran, 0); /* dropped, not run */
    assert_int_equal(after.dropped, 1);
    assert_string_equal(tbert_emu_last_fault(), "kernel fake (test.cu:1) block (0,0,0): deliberate");
    assert_int_equal(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
    count_ctx late = {0, 0};
    assert_int_equal(tbert_emu_enqueue(s, count_run, &late, count_drop, "late"), cudaErrorLaunchFailure);
    assert_int_equal(late.dropped, 1);
    assert_int_equal(cudaPeekAtLastError(), cudaErrorLaunchFailure);
    assert_int_equal(tbert_emu_pending_work(), 1); /* "elsewhere" */
    tbert_emu_reset_faults(); /* discards it: a faulted device never runs it */
    assert_int_equal(elsewhere.ran, 0);
    assert_int_equal(elsewhere.dropped, 1);
    assert_int_equal(tbert_emu_pending_work(), 0);
    CK(cudaStreamDestroy(other));
    assert_string_equal(tbert_emu_last_fault(), "");
    assert_int_equal(cudaGetLastError(), cudaSuccess);

    tbert_emu_set_launch_error(cudaErrorInvalidConfiguration);
    assert_int_equal(cudaPeekAtLastError(), cudaErrorInvalidConfiguration);
    assert_int_equal(cudaPeekAtLastError(), cudaErrorInvalidConfiguration);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidConfiguration);
    assert_int_equal(cudaGetLastError(), cudaSuccess);
    CK(cudaStreamDestroy(s));
    /* a destroyed stream takes no work */
    count_ctx gone = {0, 0};
    assert_int_equal(tbert_emu_enqueue(s, count_run, &gone, count_drop, "gone"), cudaErrorInvalidResourceHandle);
    assert_int_equal(gone.dropped, 1);
    assert_int_equal(cudaStreamSynchronize(s), cudaErrorInvalidResourceHandle);
    cudaGetLastError();
}

/* Events: query, synchronize, elapsed time, flags. */
static void test_events(void **state) {
    (void)state;
    cudaStream_t s;
    cudaEvent_t t0, t1, nt;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CK(cudaEventCreate(&t0));
    CK(cudaEventCreate(&t1));
    CK(cudaEventCreateWithFlags(&nt, cudaEventDisableTiming));
    CK(cudaEventQuery(t0)); /* never recorded: complete */
    CK(cudaEventSynchronize(t0));
    float *d = dev_floats(8), out[8];
    CK(cudaEventRecord(t0, s));
    launch_axpb(s, d, NULL, 8, 0.0f, 1.0f);
    CK(cudaEventRecord(t1, s));
    CK(cudaEventRecord(nt, s));
    float ms = -1.0f;
    assert_int_equal(cudaEventElapsedTime(&ms, t0, t1), cudaErrorNotReady);
    cudaGetLastError();
    assert_int_equal(cudaEventQuery(t1), cudaErrorNotReady); /* pending; the query lets it run */
    CK(cudaEventQuery(t1));
    download(out, d, 8);
    assert_true(out[0] == 1.0f);
    CK(cudaEventElapsedTime(&ms, t0, t1));
    assert_true(ms >= 0.0f);
    CK(cudaEventSynchronize(nt));
    assert_int_equal(cudaEventElapsedTime(&ms, t0, nt), cudaErrorInvalidResourceHandle);
    cudaGetLastError();
    assert_int_equal(cudaStreamQuery(s), cudaSuccess);
    CK(cudaEventDestroy(t0));
    CK(cudaEventDestroy(t1));
    CK(cudaEventDestroy(nt));
    assert_int_equal(cudaEventDestroy(nt), cudaErrorInvalidResourceHandle);
    cudaGetLastError();
    CK(cudaStreamDestroy(s));
    CK(cudaFree(d));
}

/* The head_cuda.c pattern in miniature: parameters set with cudaMemcpy/cudaMemset (legacy stream) and used by
 * kernels on a non-blocking stream need an explicit order. */
static void test_legacy_init_then_nonblocking_use(void **state) {
    (void)state;
    enum { N = 20 };
    float h[N], out[N];
    iota(h, N);
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    for (int fixed = 0; fixed < 2; fixed++) {
        float *params = dev_floats(N), *moments = dev_floats(N), *y = dev_floats(N);
        CK(cudaMemcpy(params, h, sizeof h, cudaMemcpyHostToDevice));
        CK(cudaMemset(moments, 0, sizeof h));
        if (fixed) CK(cudaStreamSynchronize(NULL)); /* one way to order it */
        launch_axpb(s, y, params, N, 1.0f, 0.0f);
        launch_axpb(s, moments, moments, N, 1.0f, 1.0f); /* m = m + 1 */
        CK(cudaStreamSynchronize(s));
        download(out, y, N);
        if (fixed) expect_values(out, N, 1.0f, 0.0f);
        else assert_true(all_nan(out, N));
        download(out, moments, N);
        /* unfixed: m + 1 read the poison, and the memset, which this blocking copy waits for, ran after it */
        expect_values(out, N, 0.0f, fixed ? 1.0f : 0.0f);
        CK(cudaDeviceSynchronize());
        CK(cudaFree(params));
        CK(cudaFree(moments));
        CK(cudaFree(y));
    }
    CK(cudaStreamDestroy(s));
}

/* Several host threads use the device at once (one lock; each thread's work is its own). */
typedef struct {
    int id, ok;
} thread_arg;

static void *worker(void *p) {
    thread_arg *t = p;
    enum { N = 64 };
    float h[N], out[N];
    iota(h, N);
    cudaStream_t s;
    t->ok = 1;
    if (cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess) return t->ok = 0, NULL;
    for (int round = 0; round < 50; round++) {
        float *x = NULL, *y = NULL;
        if (cudaMalloc((void **)&x, sizeof h) || cudaMalloc((void **)&y, sizeof h)) return t->ok = 0, NULL;
        cudaMemcpyAsync(x, h, sizeof h, cudaMemcpyHostToDevice, s);
        axpb_ctx *c = malloc(sizeof *c);
        *c = (axpb_ctx){y, x, N, (float)t->id, (float)round};
        tbert_emu_enqueue(s, axpb_run, c, free, "axpb");
        cudaMemcpyAsync(out, y, sizeof h, cudaMemcpyDeviceToHost, s);
        if (cudaStreamSynchronize(s) != cudaSuccess) t->ok = 0;
        for (int i = 0; i < N; i++)
            if (out[i] != (float)t->id * (float)i + (float)round) t->ok = 0;
        cudaFree(x);
        cudaFree(y);
    }
    cudaStreamDestroy(s);
    return NULL;
}

static void test_threads(void **state) {
    (void)state;
    pthread_t th[4];
    thread_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (thread_arg){i + 1, 0};
        assert_int_equal(pthread_create(&th[i], NULL, worker, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].ok, 1);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_malloc_is_poisoned, setup, teardown),
        cmocka_unit_test_setup_teardown(test_freed_memory_is_poisoned, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_device_queries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_stream_sync, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_event, setup, teardown),
        cmocka_unit_test_setup_teardown(test_legacy_blocking_nonblocking, setup, teardown),
        cmocka_unit_test_setup_teardown(test_most_recent_first, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pinned_source_read_when_run, setup, teardown),
        cmocka_unit_test_setup_teardown(test_copy_bounds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_use_after_free, setup, teardown),
        cmocka_unit_test_setup_teardown(test_faults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_events, setup, teardown),
        cmocka_unit_test_setup_teardown(test_legacy_init_then_nonblocking_use, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
