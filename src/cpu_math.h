/* Element-wise float math shared by the CPU encoder's files (src/encoder_cpu.c, src/gemm_cpu.c, src/encoder_backward.c):
 * branch-free exp and erf, and row reductions by 16 partials, that the compiler vectorises without -ffast-math. Not a
 * public header. */
#ifndef TBERT_CPU_MATH_H
#define TBERT_CPU_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Vectorised clones of the element-wise loops (the build has no -march flag). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define TBERT_VEC __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TBERT_VEC
#endif

/* Sum of a row with 16 independent partial sums, so that the loop vectorises without reassociation. */
static inline float tbert_row_sum(const float *x, int n) {
    float acc[16] = {0};
    int j = 0;
    for (; j + 16 <= n; j += 16)
        for (int k = 0; k < 16; k++) acc[k] += x[j + k];
    float s = 0.0f;
    for (; j < n; j++) s += x[j];
    for (int k = 0; k < 16; k++) s += acc[k];
    return s;
}

/* The largest of x[0..n) (n >= 1; no NaN), 16 partial maxima: the same value as a sequential scan, vectorised. */
static inline float tbert_row_max(const float *x, int n) {
    float acc[16];
    for (int k = 0; k < 16; k++) acc[k] = x[0];
    int j = 0;
    for (; j + 16 <= n; j += 16)
        for (int k = 0; k < 16; k++) acc[k] = x[j + k] > acc[k] ? x[j + k] : acc[k];
    float m = acc[0];
    for (; j < n; j++) m = x[j] > m ? x[j] : m;
    for (int k = 0; k < 16; k++) m = acc[k] > m ? acc[k] : m;
    return m;
}

/* sum of a[j] b[j] in double, 16 independent partial sums (vectorised without reassociation) */
static inline double tbert_row_dot64(const float *a, const float *b, int n) {
    double acc[16] = {0};
    int j = 0;
    for (; j + 16 <= n; j += 16)
        for (int k = 0; k < 16; k++) acc[k] += (double)a[j + k] * b[j + k];
    double s = 0.0;
    for (; j < n; j++) s += (double)a[j] * b[j];
    for (int k = 0; k < 16; k++) s += acc[k];
    return s;
}

/* exp(x) for x <= 88: 2^k * p(r), r = x - k ln2 in [-ln2/2, ln2/2], degree-6 Taylor polynomial
 * (relative error < 2e-7). Branch-free, without floorf/fminf (which block vectorisation without
 * -ffast-math): k is rounded with the 1.5*2^23 trick, 2^k built in the exponent bits. x < -87 gives ~0. */
static inline float tbert_exp_approx(float x) {
    const float log2e = 1.44269504088896341f, ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    const float round_magic = 12582912.0f; /* 1.5 * 2^23 */
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float k = (x * log2e + round_magic) - round_magic;
    float r = x - k * ln2_hi - k * ln2_lo;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* erf(z) for z >= 0 by Abramowitz & Stegun 7.1.26, given e = exp(-z^2) (callers that need that exp anyway,
 * as GELU's backward for the normal density, compute it once) */
static inline float tbert_erf_abs_given_exp(float z, float e) {
    float t = 1.0f / (1.0f + 0.3275911f * z);
    float y = 1.061405429f;
    y = y * t - 1.453152027f;
    y = y * t + 1.421413741f;
    y = y * t - 0.284496736f;
    y = y * t + 0.254829592f;
    return 1.0f - y * t * e;
}

/* erf(x), Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7, exact enough for float GELU). */
static inline float tbert_erf_approx(float x) {
    float ax = fabsf(x);
    return copysignf(tbert_erf_abs_given_exp(ax, tbert_exp_approx(-ax * ax)), x);
}

#endif
