/* The CPU encoder's matrix products with pre-packed weights (see gemm_cpu.h for the contract).
 *
 * Why not OpenBLAS alone: it re-packs the weight matrix on every call (about 10% of the encoder's time),
 * it has no public API to keep a packed copy, and the kernel it picks depends on its CPU detection (machines
 * that set OPENBLAS_CORETYPE=Haswell to work around old builds get the AVX2 kernels at half the AVX-512
 * rate). Here the weights are packed once and an AVX-512 kernel, chosen by a run-time CPU check, multiplies.
 *
 * Blocking (per call, one thread): rows in blocks of MC and k in blocks of KC (the a block, MC x KC floats,
 * stays in L2; copying it k-major first was measured 2.5% slower overall, so a is read in place), and for
 * each panel of NR = 32 output columns (KC x 32 floats of packed weights: L1/L2; while one panel is
 * multiplied its tiles prefetch the next panel into L2) a 12 x 32 register tile (24 zmm accumulators)
 * multiplies, one broadcast of a per row and k. The last k block adds the bias and applies GELU in registers before
 * the store.
 *
 * The plain version (the reference the tests compare against, and the path on CPUs without AVX-512):
 * cblas_sgemm on the unpacked weights, then the same bias/GELU epilogue per row. */
#include "gemm_cpu.h"

#include <cblas.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_math.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TBERT_HAVE_AVX512_KERNEL 1
#include <immintrin.h>
#else
#define TBERT_HAVE_AVX512_KERNEL 0
#endif

enum { NR = 32, MR = 12, KC = 384, MC = 480 };

TBERT_VEC void tbert_bias_gelu_row(float *x, const float *bias, int n) {
    if (bias)
        for (int j = 0; j < n; j++) x[j] += bias[j];
    for (int j = 0; j < n; j++) {
        float v = x[j];
        x[j] = 0.5f * v * (1.0f + tbert_erf_approx(v * 0.70710678118654752f));
    }
}

TBERT_VEC static void bias_row(float *x, const float *bias, int n) {
    for (int j = 0; j < n; j++) x[j] += bias[j];
}

bool tbert_gemm_avx512_supported(void) {
#if TBERT_HAVE_AVX512_KERNEL
    return __builtin_cpu_supports("avx512f");
#else
    return false;
#endif
}

void tbert_packed_free(tbert_packed_w *p) {
    if (!p) return;
    free(p->packed);
    *p = (tbert_packed_w){0};
}

/* panels of NR output columns, each k x NR, zero-padded past n */
static void pack_into(const tbert_packed_w *p) {
    size_t panels = ((size_t)p->n + NR - 1) / NR, n = (size_t)p->n, k = (size_t)p->k;
    for (size_t jp = 0; jp < panels; jp++) {
        float *dst = p->packed + jp * k * NR;
        size_t c0 = jp * NR, nc = n - c0 < NR ? n - c0 : NR;
        for (size_t kk = 0; kk < k; kk++) {
            float *d = dst + kk * NR;
            if (p->trans) /* w (k, n): row kk's columns c0 .. c0 + nc are contiguous */
                memcpy(d, p->w + kk * n + c0, nc * sizeof *d);
            else
                for (size_t j = 0; j < nc; j++) d[j] = p->w[(c0 + j) * k + kk];
            for (size_t j = nc; j < NR; j++) d[j] = 0.0f;
        }
    }
}

void tbert_packed_refresh(tbert_packed_w *p) {
    if (p->packed) pack_into(p);
}

static tbert_status pack(const float *w, int n, int k, bool trans, tbert_gemm_kind kind, tbert_packed_w *out,
                         tbert_error *err) {
    *out = (tbert_packed_w){.w = w, .n = n, .k = k, .trans = trans};
    if (n <= 0 || k <= 0) return tbert_fail(err, TBERT_E_ARG, "gemm: bad weight shape %d x %d", n, k);
    bool avx = tbert_gemm_avx512_supported();
    if (kind == TBERT_GEMM_AVX512 && !avx)
        return tbert_fail(err, TBERT_E_UNSUPPORTED, "gemm: this CPU has no AVX-512");
    if (kind == TBERT_GEMM_BLAS || !avx) return TBERT_OK;
    size_t panels = ((size_t)n + NR - 1) / NR;
    size_t bytes = panels * (size_t)k * NR * sizeof(float); /* a multiple of 64: NR floats are 128 bytes */
    out->packed = aligned_alloc(64, bytes);
    if (!out->packed) return tbert_fail(err, TBERT_E_NOMEM, "gemm: out of memory packing %d x %d weights", n, k);
    pack_into(out);
    return TBERT_OK;
}

tbert_status tbert_pack_weights_t(const float *w, int n, int k, tbert_gemm_kind kind, tbert_packed_w *out,
                                  tbert_error *err) {
    return pack(w, n, k, true, kind, out, err);
}

tbert_status tbert_pack_weights(const float *w, int n, int k, tbert_gemm_kind kind, tbert_packed_w *out,
                                tbert_error *err) {
    return pack(w, n, k, false, kind, out, err);
}

static void gemm_blas(int m, const float *a, size_t lda, const tbert_packed_w *w, const float *bias, bool accumulate,
                      bool gelu, float *c, size_t ldc) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, w->trans ? CblasNoTrans : CblasTrans, m, w->n, w->k, 1.0f, a, (int)lda,
                w->w, w->trans ? w->n : w->k, accumulate ? 1.0f : 0.0f, c, (int)ldc);
    for (int i = 0; i < m; i++) {
        float *r = c + (size_t)i * ldc;
        if (gelu) tbert_bias_gelu_row(r, bias, w->n);
        else if (bias) bias_row(r, bias, w->n);
    }
}

#if TBERT_HAVE_AVX512_KERNEL
#define AVX512 __attribute__((target("avx512f,fma")))
/* the row loops of a tile must unroll completely, or the accumulators go to the stack */
#if defined(__clang__)
#define UNROLL_ROWS _Pragma("unroll")
#define TILE_FN static __attribute__((noinline)) AVX512 void
#else
#define UNROLL_ROWS _Pragma("GCC unroll 12")
/* noclone: a constant-propagated clone once lost the register allocation of the accumulators */
#define TILE_FN static __attribute__((noinline, noclone)) AVX512 void
#endif

/* exp(x) as tbert_exp_approx (cpu_math.h): 2^k p(r), the degree-6 polynomial, 2^k applied by scalef */
static inline __attribute__((always_inline)) AVX512 __m512 exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, k);
}

/* gelu(v) = v/2 (1 + erf(v/sqrt 2)) = (v + |v| e)/2 with e = erf(|v|/sqrt 2) by Abramowitz & Stegun 7.1.26
 * (as tbert_erf_approx; 1/(1 + p z) by rcp14 and one Newton step) */
static inline __attribute__((always_inline)) AVX512 __m512 gelu16(__m512 v) {
    __m512 av = _mm512_abs_ps(v);
    __m512 z = _mm512_mul_ps(av, _mm512_set1_ps(0.70710678118654752f));
    __m512 d = _mm512_fmadd_ps(z, _mm512_set1_ps(0.3275911f), _mm512_set1_ps(1.0f));
    __m512 t = _mm512_rcp14_ps(d);
    t = _mm512_mul_ps(t, _mm512_fnmadd_ps(d, t, _mm512_set1_ps(2.0f)));
    __m512 y = _mm512_set1_ps(1.061405429f);
    y = _mm512_fmadd_ps(y, t, _mm512_set1_ps(-1.453152027f));
    y = _mm512_fmadd_ps(y, t, _mm512_set1_ps(1.421413741f));
    y = _mm512_fmadd_ps(y, t, _mm512_set1_ps(-0.284496736f));
    y = _mm512_fmadd_ps(y, t, _mm512_set1_ps(0.254829592f));
    __m512 ex = exp16(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), z), z));
    __m512 e = _mm512_fnmadd_ps(_mm512_mul_ps(y, t), ex, _mm512_set1_ps(1.0f));
    return _mm512_mul_ps(_mm512_fmadd_ps(av, e, v), _mm512_set1_ps(0.5f));
}

/* c[mr, 32] (+)= a[mr, kc] (element (i, p) at a[i ars + p aks]) @ b[kc, 32] (row stride ldb), + bias when
 * bias != NULL, then GELU when gelu. Columns outside the masks m0/m1 are neither read nor written in c; b is
 * read through them only when mask_b (a packed panel is zero-padded instead). mr, ars, aks and mask_b are
 * constants in every inlined copy, so the accumulators live in registers and the addressing folds. */
static inline __attribute__((always_inline)) AVX512 void tile(const int mr, int kc, const float *a, size_t ars,
                                                              size_t aks, const float *b, size_t ldb, float *c,
                                                              size_t ldc, __mmask16 m0, __mmask16 m1, bool load_c,
                                                              const float *bias, bool gelu, const bool mask_b) {
    __m512 x0[MR], x1[MR];
    UNROLL_ROWS for (int i = 0; i < mr; i++) {
        if (load_c) {
            x0[i] = _mm512_maskz_loadu_ps(m0, c + (size_t)i * ldc);
            x1[i] = _mm512_maskz_loadu_ps(m1, c + (size_t)i * ldc + 16);
        } else {
            x0[i] = _mm512_setzero_ps();
            x1[i] = _mm512_setzero_ps();
        }
    }
    for (int p = 0; p < kc; p++) {
        __m512 b0, b1;
        if (mask_b) {
            b0 = _mm512_maskz_loadu_ps(m0, b + (size_t)p * ldb);
            b1 = _mm512_maskz_loadu_ps(m1, b + (size_t)p * ldb + 16);
        } else { /* a packed panel: aligned, zero-padded to NR columns */
            b0 = _mm512_load_ps(b + (size_t)p * ldb);
            b1 = _mm512_load_ps(b + (size_t)p * ldb + 16);
        }
        UNROLL_ROWS for (int i = 0; i < mr; i++) {
            __m512 ai = _mm512_set1_ps(a[(size_t)i * ars + (size_t)p * aks]);
            x0[i] = _mm512_fmadd_ps(ai, b0, x0[i]);
            x1[i] = _mm512_fmadd_ps(ai, b1, x1[i]);
        }
    }
    if (bias) {
        __m512 c0 = _mm512_maskz_loadu_ps(m0, bias), c1 = _mm512_maskz_loadu_ps(m1, bias + 16);
        UNROLL_ROWS for (int i = 0; i < mr; i++) {
            x0[i] = _mm512_add_ps(x0[i], c0);
            x1[i] = _mm512_add_ps(x1[i], c1);
        }
    }
    if (gelu)
        UNROLL_ROWS for (int i = 0; i < mr; i++) {
            x0[i] = gelu16(x0[i]);
            x1[i] = gelu16(x1[i]);
        }
    UNROLL_ROWS for (int i = 0; i < mr; i++) {
        _mm512_mask_storeu_ps(c + (size_t)i * ldc, m0, x0[i]);
        _mm512_mask_storeu_ps(c + (size_t)i * ldc + 16, m1, x1[i]);
    }
}

#define TILE_CASE(R, ARS, AKS, MASK_B)                                                                               \
    case R: tile(R, kc, a, ARS, AKS, b, ldb, c, ldc, m0, m1, load_c, bias, gelu, MASK_B); break;

/* a tile whose a rows are in place (stride lda) */
TILE_FN tile_rows(int mr, int kc, const float *a, size_t lda, const float *b, size_t ldb, float *c, size_t ldc,
                  __mmask16 m0, __mmask16 m1, bool load_c, const float *bias, bool gelu) {
    switch (mr) {
        TILE_CASE(12, lda, 1, true) TILE_CASE(11, lda, 1, true) TILE_CASE(10, lda, 1, true) TILE_CASE(9, lda, 1, true)
        TILE_CASE(8, lda, 1, true) TILE_CASE(7, lda, 1, true) TILE_CASE(6, lda, 1, true) TILE_CASE(5, lda, 1, true)
        TILE_CASE(4, lda, 1, true) TILE_CASE(3, lda, 1, true) TILE_CASE(2, lda, 1, true) TILE_CASE(1, lda, 1, true)
    default: break;
    }
}

/* a tile of a packed weight panel (aligned, zero-padded to NR columns: loads need no mask); a rows in place */
TILE_FN tile_panel(int mr, int kc, const float *a, size_t lda, const float *b, float *c, size_t ldc, __mmask16 m0,
                   __mmask16 m1, bool load_c, const float *bias, bool gelu) {
    const size_t ldb = NR;
    switch (mr) {
        TILE_CASE(12, lda, 1, false) TILE_CASE(11, lda, 1, false) TILE_CASE(10, lda, 1, false)
        TILE_CASE(9, lda, 1, false) TILE_CASE(8, lda, 1, false) TILE_CASE(7, lda, 1, false)
        TILE_CASE(6, lda, 1, false) TILE_CASE(5, lda, 1, false) TILE_CASE(4, lda, 1, false)
        TILE_CASE(3, lda, 1, false) TILE_CASE(2, lda, 1, false) TILE_CASE(1, lda, 1, false)
    default: break;
    }
}

static inline __mmask16 mask_lo(int nr) {
    return (__mmask16)(nr >= 16 ? 0xffff : (1u << nr) - 1);
}

static inline __mmask16 mask_hi(int nr) {
    return (__mmask16)(nr >= 32 ? 0xffff : nr <= 16 ? 0 : (1u << (nr - 16)) - 1);
}

/* The tile starting at `row` (of the `rows` rows multiplied with one panel) prefetches its share of the next
 * panel's kc x NR block into L2, so that the next panel does not start with a wait on L3. */
static inline void prefetch_share(const float *next, int kc, int rows, int row) {
    size_t lines = (size_t)kc * NR * sizeof(float) / 64, tiles = (size_t)(rows + MR - 1) / MR;
    size_t per = (lines + tiles - 1) / tiles, q0 = (size_t)row / MR * per;
    for (size_t q = q0; q < q0 + per && q < lines; q++) _mm_prefetch((const char *)next + q * 64, _MM_HINT_T1);
}

/* c[m, n] = a[m, k] @ b[k, n], all row-major, b unpacked (small products: attention) */
static AVX512 void gemm_nn_avx512(int m, int n, int k, const float *a, size_t lda, const float *b, size_t ldb, float *c,
                                  size_t ldc) {
    for (int j0 = 0; j0 < n; j0 += NR) {
        int nr = n - j0 < NR ? n - j0 : NR;
        for (int i = 0; i < m; i += MR)
            tile_rows(m - i < MR ? m - i : MR, k, a + (size_t)i * lda, lda, b + j0, ldb, c + (size_t)i * ldc + j0, ldc,
                     mask_lo(nr), mask_hi(nr), false, NULL, false);
    }
}

/* tbert_gemm_tn_chunked's tile: dw[mr, 32] (columns outside m0/m1 untouched) += the chunk partials of rows
 * [0, rows) (0 at a chunk boundary), each summed from zero in 2 x mr accumulators and added to dw in memory at the
 * end of its chunk (keeping a running total in registers as well made GCC spill x's row to the stack: half the
 * speed). dyp holds the tile's dy values packed (row r's mr values at dyp[r TN_MR]), xp its x columns packed (row
 * r at xp[r NR], zero past the masks): read in place, rows thousands of bytes apart thrashed a few L1 sets. */
enum { TN_MR = 12, TN_ROWS = 256, TN_OB = 32 * TN_MR, TN_OB_STACK = 4 * TN_MR };
static inline __attribute__((always_inline)) AVX512 void tn_tile(const int mr, size_t rows, size_t chunk,
                                                                 const float *dyp, const float *xp, float *dw,
                                                                 size_t ldw, __mmask16 m0, __mmask16 m1) {
    for (size_t c0 = 0; c0 < rows; c0 += chunk) {
        size_t c1 = rows - c0 < chunk ? rows : c0 + chunk;
        __m512 p0[TN_MR], p1[TN_MR];
        UNROLL_ROWS for (int i = 0; i < mr; i++) p0[i] = p1[i] = _mm512_setzero_ps();
        for (size_t r = c0; r < c1; r++) {
            __m512 b0 = _mm512_load_ps(xp + r * NR), b1 = _mm512_load_ps(xp + r * NR + 16);
            UNROLL_ROWS for (int i = 0; i < mr; i++) {
                __m512 ai = _mm512_set1_ps(dyp[r * TN_MR + (size_t)i]);
                p0[i] = _mm512_fmadd_ps(ai, b0, p0[i]);
                p1[i] = _mm512_fmadd_ps(ai, b1, p1[i]);
            }
        }
        UNROLL_ROWS for (int i = 0; i < mr; i++) {
            float *d = dw + (size_t)i * ldw;
            _mm512_mask_storeu_ps(d, m0, _mm512_add_ps(_mm512_maskz_loadu_ps(m0, d), p0[i]));
            _mm512_mask_storeu_ps(d + 16, m1, _mm512_add_ps(_mm512_maskz_loadu_ps(m1, d + 16), p1[i]));
        }
    }
}

#define TN_CASE(R)                                                                                                 \
    case R: tn_tile(R, rows, chunk, dyp, xp, dw, ldw, m0, m1); break;
TILE_FN tn_rows(int mr, size_t rows, size_t chunk, const float *dyp, const float *xp, float *dw, size_t ldw,
                __mmask16 m0, __mmask16 m1) {
    switch (mr) {
        TN_CASE(12) TN_CASE(11) TN_CASE(10) TN_CASE(9) TN_CASE(8) TN_CASE(7) TN_CASE(6) TN_CASE(5) TN_CASE(4)
        TN_CASE(3) TN_CASE(2) TN_CASE(1)
    default: break;
    }
}

/* Output rows in groups of ob (TN_OB; TN_OB_STACK when the heap had no room); in each group rows in blocks of rb
 * (about TN_ROWS, whole chunks): the group's dy block packed (rb x ob, L2), then per panel of 32 columns x's block
 * packed (rb x 32, L1) and the tiles of TN_MR output rows. x's block is packed once per group: groups of 48 rows
 * (measured: 107 GFLOP/s on MiniLM's shapes, one core) spent a third of the time packing; 384 rows: 140. The
 * group size and rb change only the order in which independent elements are visited, never an element's sums. */
static AVX512 void tn_blocks(size_t rows, int n_out, int n_in, const float *dy, const float *x, float *dw, size_t chunk,
                             int o0, int o1, size_t rb, int ob, float *dyp, float *xp) {
    size_t ldy = (size_t)n_out, ldx = (size_t)n_in;
    for (int g0 = o0; g0 < o1; g0 += ob) {
        int g1 = o1 - g0 < ob ? o1 : g0 + ob;
        for (size_t r0 = 0; r0 < rows; r0 += rb) {
            size_t nr_rows = rows - r0 < rb ? rows - r0 : rb;
            for (int o = g0; o < g1; o += TN_MR) { /* dyp: per tile of TN_MR output rows, [row][TN_MR] */
                int mr = g1 - o < TN_MR ? g1 - o : TN_MR;
                float *d = dyp + (size_t)(o - g0) / TN_MR * rb * TN_MR;
                __mmask16 k = (__mmask16)((1u << mr) - 1);
                for (size_t r = 0; r < nr_rows; r++)
                    _mm512_mask_storeu_ps(d + r * TN_MR, k, _mm512_maskz_loadu_ps(k, dy + (r0 + r) * ldy + (size_t)o));
            }
            for (int j0 = 0; j0 < n_in; j0 += NR) {
                int nr = n_in - j0 < NR ? n_in - j0 : NR;
                __mmask16 m0 = mask_lo(nr), m1 = mask_hi(nr);
                for (size_t r = 0; r < nr_rows; r++) {
                    const float *src = x + (r0 + r) * ldx + (size_t)j0;
                    _mm512_store_ps(xp + r * NR, _mm512_maskz_loadu_ps(m0, src));
                    _mm512_store_ps(xp + r * NR + 16, _mm512_maskz_loadu_ps(m1, src + 16));
                }
                for (int o = g0; o < g1; o += TN_MR) {
                    int mr = g1 - o < TN_MR ? g1 - o : TN_MR;
                    tn_rows(mr, nr_rows, chunk, dyp + (size_t)(o - g0) / TN_MR * rb * TN_MR, xp,
                            dw + (size_t)o * ldx + (size_t)j0, ldx, mask_lo(nr), mask_hi(nr));
                }
            }
        }
    }
}

static AVX512 void tn_avx512(size_t rows, int n_out, int n_in, const float *dy, const float *x, float *dw, size_t chunk,
                             int o0, int o1) {
    size_t rb = TN_ROWS / chunk * chunk; /* chunk <= TN_ROWS (the caller checked) */
    float *buf = aligned_alloc(64, (rb * TN_OB + rb * NR) * sizeof(float)); /* multiples of 16 floats */
    if (buf) {
        tn_blocks(rows, n_out, n_in, dy, x, dw, chunk, o0, o1, rb, TN_OB, buf, buf + rb * TN_OB);
        free(buf);
        return;
    }
    float dyp[TN_ROWS * TN_OB_STACK] __attribute__((aligned(64))), xp[TN_ROWS * NR] __attribute__((aligned(64)));
    tn_blocks(rows, n_out, n_in, dy, x, dw, chunk, o0, o1, rb, TN_OB_STACK, dyp, xp);
}

/* the output columns of panels [jp0, jp1) only (all of them: 0, panels): every tile is computed exactly as in
 * the whole product, so splitting the panels among threads gives the same bits */
static AVX512 void gemm_avx512(int m, const float *a, size_t lda, const tbert_packed_w *w, const float *bias,
                               bool accumulate, bool gelu, float *c, size_t ldc, int jp0, int jp1) {
    int n = w->n, k = w->k, panels = jp1;
    for (int i0 = 0; i0 < m; i0 += MC) {
        int i1 = m - i0 < MC ? m : i0 + MC;
        for (int p0 = 0; p0 < k; p0 += KC) {
            int kc = k - p0 < KC ? k - p0 : KC;
            bool load_c = p0 > 0 || accumulate, last = p0 + kc == k;
            for (int jp = jp0; jp < panels; jp++) {
                int j0 = jp * NR, nr = n - j0 < NR ? n - j0 : NR;
                __mmask16 m0 = mask_lo(nr), m1 = mask_hi(nr);
                const float *bp = w->packed + (size_t)jp * (size_t)k * NR + (size_t)p0 * NR;
                for (int i = i0; i < i1; i += MR) {
                    int mr = i1 - i < MR ? i1 - i : MR;
                    if (jp + 1 < panels) prefetch_share(bp + (size_t)k * NR, kc, i1 - i0, i - i0);
                    tile_panel(mr, kc, a + (size_t)i * lda + (size_t)p0, lda, bp, c + (size_t)i * ldc + (size_t)j0, ldc,
                               m0, m1, load_c, last && bias ? bias + j0 : NULL, last && gelu);
                }
            }
        }
    }
}
#endif

void tbert_gemm_packed(int m, const float *a, size_t lda, const tbert_packed_w *w, const float *bias, bool accumulate,
                       bool gelu, float *c, size_t ldc) {
    if (m <= 0) return;
#if TBERT_HAVE_AVX512_KERNEL
    if (w->packed) {
        gemm_avx512(m, a, lda, w, bias, accumulate, gelu, c, ldc, 0, (w->n + NR - 1) / NR);
        return;
    }
#endif
    gemm_blas(m, a, lda, w, bias, accumulate, gelu, c, ldc);
}

int tbert_packed_panels(const tbert_packed_w *w) { return w->packed ? (w->n + NR - 1) / NR : 0; }

void tbert_gemm_packed_panels(int m, const float *a, size_t lda, const tbert_packed_w *w, const float *bias, bool accumulate,
                              bool gelu, float *c, size_t ldc, int jp0, int jp1) {
    if (m <= 0 || jp0 >= jp1) return;
#if TBERT_HAVE_AVX512_KERNEL
    if (w->packed) gemm_avx512(m, a, lda, w, bias, accumulate, gelu, c, ldc, jp0, jp1);
#else
    (void)a, (void)lda, (void)w, (void)bias, (void)accumulate, (void)gelu, (void)c, (void)ldc;
#endif
}

void tbert_gemm_nn(bool avx512, int m, int n, int k, const float *a, size_t lda, const float *b, size_t ldb, float *c,
                   size_t ldc) {
    if (m <= 0 || n <= 0) return;
#if TBERT_HAVE_AVX512_KERNEL
    if (avx512) {
        gemm_nn_avx512(m, n, k, a, lda, b, ldb, c, ldc);
        return;
    }
#endif
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, (int)lda, b, (int)ldb, 0.0f, c, (int)ldc);
}

void tbert_gemm_tn_chunked(bool avx512, size_t rows, int n_out, int n_in, const float *dy, const float *x, float *dw,
                           int chunk, int o0, int o1) {
    if (rows == 0 || n_in <= 0 || o0 >= o1 || chunk <= 0) return;
#if TBERT_HAVE_AVX512_KERNEL
    if (avx512 && chunk <= TN_ROWS) {
        tn_avx512(rows, n_out, n_in, dy, x, dw, (size_t)chunk, o0, o1);
        return;
    }
#else
    (void)avx512;
#endif
    /* the plain version: the same sums (each chunk's partial row by row from zero, then added in chunk order) */
    size_t ni = (size_t)n_in, no = (size_t)n_out;
    float part[ni];
    for (int o = o0; o < o1; o++) {
        float *d = dw + (size_t)o * ni;
        for (size_t c0 = 0; c0 < rows; c0 += (size_t)chunk) {
            size_t c1 = rows - c0 < (size_t)chunk ? rows : c0 + (size_t)chunk;
            memset(part, 0, ni * sizeof *part);
            for (size_t r = c0; r < c1; r++) {
                float a = dy[r * no + (size_t)o];
                const float *xr = x + r * ni;
                for (size_t i = 0; i < ni; i++) part[i] += a * xr[i];
            }
            for (size_t i = 0; i < ni; i++) d[i] += part[i];
        }
    }
}
