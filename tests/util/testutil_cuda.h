/* Shared by the CUDA tests (include only where TBERT_HAVE_CUDA): CK(call) fails the test, naming the call, the
 * CUDA error and the place, when a CUDA call returns nonzero; host bf16 rounding; guarded device buffers. */
#ifndef TBERT_TESTUTIL_CUDA_H
#define TBERT_TESTUTIL_CUDA_H

#include <cuda_runtime.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tbert/cuda_kernels.h"

#define CK(call)                                                                                                 \
    do {                                                                                                         \
        int rc_ = (int)(call);                                                                                   \
        if (rc_) fail_msg("%s failed: %s (%s:%d)", #call, tbert_cuda_error_string(rc_), __FILE__, __LINE__);     \
    } while (0)

/* ---- bf16 on the host (round to nearest even, as __float2bfloat16) ---- */
static inline uint16_t tu_f2bf(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static inline float tu_bf2f(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline size_t tu_dt_size(tbert_cuda_dtype dt) {
    return dt == TBERT_CUDA_BF16 ? 2 : 4;
}
static inline const char *tu_dt_name(tbert_cuda_dtype dt) {
    return dt == TBERT_CUDA_BF16 ? "bf16" : "fp32";
}

/* A device copy of `bytes` host bytes, 4 spare bytes after them (caller cudaFrees). */
static inline void *tu_dev_copy(const void *host, size_t bytes) {
    void *d = NULL;
    CK(cudaMalloc(&d, bytes + 4));
    CK(cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice));
    return d;
}

/* ---- guarded device buffers: `bytes` poisoned with NaN (every byte 0xFF: NaN in float32 and in bf16), framed
 * by TU_GUARD bytes of TU_SENTINEL on each side that tu_gcheck requires intact ---- */
enum { TU_GUARD = 256, TU_SENTINEL = 0xA5 };
typedef struct {
    unsigned char *base;
    size_t bytes;
    void *p;
} tu_gbuf;

static inline tu_gbuf tu_galloc(size_t bytes) {
    tu_gbuf g = {NULL, bytes, NULL};
    CK(cudaMalloc((void **)&g.base, bytes + 2 * TU_GUARD));
    CK(cudaMemset(g.base, TU_SENTINEL, TU_GUARD));
    CK(cudaMemset(g.base + TU_GUARD + bytes, TU_SENTINEL, TU_GUARD));
    CK(cudaMemset(g.base + TU_GUARD, 0xFF, bytes)); /* NaN poison */
    g.p = g.base + TU_GUARD;
    return g;
}
/* Synchronizes, then fails the test naming `what` when a guard byte changed. */
static inline void tu_gcheck(const tu_gbuf *g, const char *what) {
    unsigned char front[TU_GUARD], back[TU_GUARD];
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(front, g->base, TU_GUARD, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(back, g->base + TU_GUARD + g->bytes, TU_GUARD, cudaMemcpyDeviceToHost));
    for (int i = 0; i < TU_GUARD; i++)
        if (front[i] != TU_SENTINEL || back[i] != TU_SENTINEL) fail_msg("%s: write outside the buffer", what);
}
static inline void tu_gfree(tu_gbuf *g) {
    if (g->base) CK(cudaFree(g->base));
    g->base = NULL;
}
/* Uploads n floats as dt; for bf16 the host values are rounded in place so that host references see what the
 * device sees. */
static inline tu_gbuf tu_up_act(float *host, size_t n, tbert_cuda_dtype dt) {
    tu_gbuf g = tu_galloc(n * tu_dt_size(dt));
    if (dt == TBERT_CUDA_BF16) {
        uint16_t *h = malloc(n * 2 + 2);
        assert_non_null(h);
        for (size_t i = 0; i < n; i++) {
            h[i] = tu_f2bf(host[i]);
            host[i] = tu_bf2f(h[i]);
        }
        CK(cudaMemcpy(g.p, h, n * 2, cudaMemcpyHostToDevice));
        free(h);
    } else {
        CK(cudaMemcpy(g.p, host, n * 4, cudaMemcpyHostToDevice));
    }
    return g;
}
static inline tu_gbuf tu_up_bytes(const void *host, size_t bytes) {
    tu_gbuf g = tu_galloc(bytes);
    CK(cudaMemcpy(g.p, host, bytes, cudaMemcpyHostToDevice));
    return g;
}
/* Synchronizes and downloads n elements of dt as float (caller frees); no guard check (tu_gcheck). */
static inline float *tu_down_act(const tu_gbuf *g, size_t n, tbert_cuda_dtype dt) {
    float *out = malloc(n * 4 + 4);
    assert_non_null(out);
    CK(cudaDeviceSynchronize());
    if (dt == TBERT_CUDA_BF16) {
        uint16_t *h = malloc(n * 2 + 2);
        assert_non_null(h);
        CK(cudaMemcpy(h, g->p, n * 2, cudaMemcpyDeviceToHost));
        for (size_t i = 0; i < n; i++) out[i] = tu_bf2f(h[i]);
        free(h);
    } else {
        CK(cudaMemcpy(out, g->p, n * 4, cudaMemcpyDeviceToHost));
    }
    return out;
}

#endif
