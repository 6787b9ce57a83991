/* bf16 matrix products on the CPU (see gemm_bf16.h for the contract).
 *
 * AMX: 8 tile registers of 16 rows x 64 bytes, configured identically: tiles 0-3 accumulate a 32 x 32 float32
 * block of the output (2 x 2 tiles), tiles 4-5 hold 32 rows x 32 k of the left operand (bf16, row-major), tiles
 * 6-7 two panels of 16 output columns x 32 k of the right operand in the tile unit's pair-interleaved layout
 * (row p of a tile = for each of its 16 columns the bf16 pair k = 2p, 2p + 1). Each step of 32 k is 4 tile loads
 * and 4 TDPBF16PS (16 x 16 x 32 multiply-adds each).
 *   - forward (c = a w^T): w packed once per step into panels of 16 output columns, each kp / 32 tiles of 1 KB;
 *     a converted 256 rows at a time into scratch (kp bf16 per row, zero past k); per pair of panels and pair of
 *     row tiles the 4 accumulators run over all of k, then go through a 4 KB buffer for the bias / accumulate /
 *     GELU epilogue.
 *   - weight gradient (dw += dy^T x): 256 rows at a time, dy's columns [o0, o1) transposed into rows of bf16
 *     (the left operand: one row per output row, the data rows along k) and x interleaved by pairs of rows per
 *     panel of 16 columns (the right operand); each 32 x 32 block of dw is loaded into the accumulators, runs over
 *     the 256 rows, and is stored back: one chain of additions per element over all rows, in order.
 * Without AMX: the operands rounded to bf16 values in float32 scratch, then gemm_cpu.c's float32 kernels. */
#include "gemm_bf16.h"

#include "tbert/safetensors.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define TBERT_HAVE_AMX_KERNEL 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#define TBERT_HAVE_AMX_KERNEL 0
#endif

enum { TR = 16, TC = 16, KB = 32, RB = 256 }; /* tile rows, tile columns (float32), k per tile step, rows per block */

static size_t round_up(size_t x, size_t m) {
    return (x + m - 1) / m * m;
}

float tbert_round_bf16(float f) {
    return tbert_bf16_to_f32(tbert_f32_to_bf16(f));
}

bool tbert_gemm_amx_supported(void) {
#if TBERT_HAVE_AMX_KERNEL
    const char *off = getenv("TBERT_CPU_NO_AMX");
    if (off && *off && strcmp(off, "0")) return false;
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    bool avx512 = (b >> 16) & 1u, avx512bw = (b >> 30) & 1u, amx_bf16 = (d >> 22) & 1u, amx_tile = (d >> 24) & 1u;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
    bool avx512_bf16 = (a >> 5) & 1u;
    if (!(avx512 && avx512bw && amx_bf16 && amx_tile && avx512_bf16)) return false;
    /* Linux gives a process the tile registers' state only on request (ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA);
     * asking again once granted is a no-op. */
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#else
    return false;
#endif
}

/* ---- packing ---------------------------------------------------------------------------------------------- */

static float w_at(const tbert_packed_bf16 *p, size_t j, size_t kk) { /* w^T's element: output column j, k index kk */
    return p->trans ? p->w[kk * (size_t)p->n + j] : p->w[j * (size_t)p->k + kk];
}

/* one 1 KB tile: panel jp (output columns jp 16 ..), k block kb (k = kb 32 ..), zero outside w */
static void pack_tile_scalar(const tbert_packed_bf16 *p, size_t jp, size_t kb, uint16_t *t) {
    size_t n = (size_t)p->n, k = (size_t)p->k;
    for (size_t q = 0; q < KB / 2; q++)
        for (size_t j = 0; j < TC; j++)
            for (size_t h = 0; h < 2; h++) {
                size_t col = jp * TC + j, kk = kb * KB + 2 * q + h;
                t[q * 2 * TC + 2 * j + h] = col < n && kk < k ? tbert_f32_to_bf16(w_at(p, col, kk)) : 0;
            }
}

static bool pack_tile_fast(const tbert_packed_bf16 *p, size_t jp, size_t kb, uint16_t *t);

static void pack_tiles(const tbert_packed_bf16 *p) {
    size_t n = (size_t)p->n, kp = (size_t)p->kp, panels = round_up(n, 2 * TC) / TC;
    for (size_t jp = 0; jp < panels; jp++)
        for (size_t kb = 0; kb < kp / KB; kb++) {
            uint16_t *t = p->tiles + (jp * (kp / KB) + kb) * (KB * TC);
            if (!pack_tile_fast(p, jp, kb, t)) pack_tile_scalar(p, jp, kb, t);
        }
}

void tbert_packed_bf16_refresh(tbert_packed_bf16 *p) {
    if (p->tiles) pack_tiles(p);
    if (p->wr) {
        size_t nk = (size_t)p->n * (size_t)p->k;
        for (size_t i = 0; i < nk; i++) p->wr[i] = tbert_round_bf16(p->w[i]);
        tbert_packed_refresh(&p->fp);
    }
}

void tbert_packed_bf16_free(tbert_packed_bf16 *p) {
    if (!p) return;
    free(p->tiles);
    free(p->wr);
    tbert_packed_free(&p->fp);
    *p = (tbert_packed_bf16){0};
}

tbert_status tbert_pack_bf16(const float *w, int n, int k, bool trans, bool amx, tbert_packed_bf16 *out, tbert_error *err) {
    *out = (tbert_packed_bf16){.w = w, .n = n, .k = k, .kp = (int)round_up((size_t)(k > 0 ? k : 1), KB), .trans = trans};
    if (n <= 0 || k <= 0) return tbert_fail(err, TBERT_E_ARG, "gemm bf16: bad weight shape %d x %d", n, k);
    /* (the check also asks for the tile registers: a process that has not cannot execute an AMX instruction) */
    if (amx && !tbert_gemm_amx_supported())
        return tbert_fail(err, TBERT_E_UNSUPPORTED, "gemm bf16: AMX is not available (CPU, kernel or TBERT_CPU_NO_AMX)");
    out->amx = amx;
    if (amx) {
        size_t bytes = round_up((size_t)n, 2 * TC) * (size_t)out->kp * sizeof(uint16_t);
        out->tiles = aligned_alloc(64, bytes);
        if (!out->tiles) return tbert_fail(err, TBERT_E_NOMEM, "gemm bf16: out of memory packing %d x %d weights", n, k);
        pack_tiles(out);
        return TBERT_OK;
    }
    size_t nk = (size_t)n * (size_t)k;
    out->wr = malloc(nk * sizeof *out->wr);
    if (!out->wr) return tbert_fail(err, TBERT_E_NOMEM, "gemm bf16: out of memory rounding %d x %d weights", n, k);
    for (size_t i = 0; i < nk; i++) out->wr[i] = tbert_round_bf16(w[i]);
    tbert_status st = trans ? tbert_pack_weights_t(out->wr, n, k, TBERT_GEMM_AUTO, &out->fp, err)
                            : tbert_pack_weights(out->wr, n, k, TBERT_GEMM_AUTO, &out->fp, err);
    if (st) tbert_packed_bf16_free(out);
    return st;
}

size_t tbert_gemm_bf16_scratch(bool amx, int max_m, int max_k, int max_n) {
    size_t m = (size_t)(max_m > RB ? RB : max_m > 0 ? max_m : 1), k = (size_t)(max_k > 0 ? max_k : 1),
           n = (size_t)(max_n > 0 ? max_n : 1);
    size_t fwd, tn;
    if (amx) {
        fwd = round_up(m, 2 * TR) * round_up(k, KB) * sizeof(uint16_t);
        tn = 2 * round_up(n, 2 * TC) * RB * sizeof(uint16_t);
    } else {
        fwd = m * k * sizeof(float);
        tn = 2 * (size_t)RB * n * sizeof(float);
    }
    return round_up((fwd > tn ? fwd : tn) + (size_t)(2 * TR) * (2 * TC) * sizeof(float), 64);
}

/* ---- the fallback: rounded operands through gemm_cpu.c --------------------------------------------------- */

static void round_rows(size_t m, size_t cols, const float *src, size_t ld, float *dst) {
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < cols; j++) dst[i * cols + j] = tbert_round_bf16(src[i * ld + j]);
}

/* panels [p0, p1) of gemm_cpu.c's packed copy, or (p0 < 0) the whole product */
static void gemm_fallback(int m, const float *a, size_t lda, const tbert_packed_bf16 *w, const float *bias, bool accumulate,
                          bool gelu, float *c, size_t ldc, float *ar, int p0, int p1) {
    size_t k = (size_t)w->k;
    for (int i0 = 0; i0 < m; i0 += RB) {
        int mb = m - i0 < RB ? m - i0 : RB;
        round_rows((size_t)mb, k, a + (size_t)i0 * lda, lda, ar);
        if (p0 < 0) tbert_gemm_packed(mb, ar, k, &w->fp, bias, accumulate, gelu, c + (size_t)i0 * ldc, ldc);
        else tbert_gemm_packed_panels(mb, ar, k, &w->fp, bias, accumulate, gelu, c + (size_t)i0 * ldc, ldc, p0, p1);
    }
}

static void tn_fallback(size_t rows, int n_out, int n_in, const float *dy, const float *x, float *dw, int chunk, int o0,
                        int o1, float *buf) {
    size_t rb = chunk >= RB ? (size_t)chunk : (size_t)(RB / chunk * chunk);
    float *dyr = buf, *xr = buf + RB * (size_t)n_out;
    bool avx = tbert_gemm_avx512_supported();
    for (size_t r0 = 0; r0 < rows; r0 += rb) {
        size_t nr = rows - r0 < rb ? rows - r0 : rb;
        round_rows(nr, (size_t)n_out, dy + r0 * (size_t)n_out, (size_t)n_out, dyr);
        round_rows(nr, (size_t)n_in, x + r0 * (size_t)n_in, (size_t)n_in, xr);
        tbert_gemm_tn_chunked(avx, nr, n_out, n_in, dyr, xr, dw, chunk, o0, o1);
    }
}

/* ---- AMX -------------------------------------------------------------------------------------------------- */

#if TBERT_HAVE_AMX_KERNEL
#define AMX __attribute__((target("avx512f,avx512bw,avx512bf16,amx-tile,amx-bf16")))

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_cfg;

static AMX void tiles_start(void) {
    tile_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) cfg.rows[t] = TR, cfg.colsb[t] = 64;
    _tile_loadconfig(&cfg);
}

/* The accumulators 0-3 as a 32 x 32 float32 block at c (row stride ldc floats): tile 2 i + j at c + 16 (i ldc + j). */
static inline AMX void acc_load(const float *c, size_t ldc) {
    _tile_loadd(0, c, ldc * sizeof(float));
    _tile_loadd(1, c + TC, ldc * sizeof(float));
    _tile_loadd(2, c + TR * ldc, ldc * sizeof(float));
    _tile_loadd(3, c + TR * ldc + TC, ldc * sizeof(float));
}

static inline AMX void acc_store(float *c, size_t ldc) {
    _tile_stored(0, c, ldc * sizeof(float));
    _tile_stored(1, c + TC, ldc * sizeof(float));
    _tile_stored(2, c + TR * ldc, ldc * sizeof(float));
    _tile_stored(3, c + TR * ldc + TC, ldc * sizeof(float));
}

/* steps of 32 k: the left operand's 32 rows at a (row stride lda elements; rows 16.. at a + 16 lda), a_step elements
 * further each step; the right operand's two tiles at b0 and b1, b_step elements further each step */
static inline AMX void acc_dot(const uint16_t *a, size_t lda, size_t a_step, const uint16_t *b0, const uint16_t *b1,
                               size_t b_step, int steps) {
    const uint16_t *a1 = a + TR * lda;
    for (int s = 0; s < steps; s++) {
        _tile_loadd(4, a + (size_t)s * a_step, lda * sizeof(uint16_t));
        _tile_loadd(5, a1 + (size_t)s * a_step, lda * sizeof(uint16_t));
        _tile_loadd(6, b0 + (size_t)s * b_step, 64);
        _tile_loadd(7, b1 + (size_t)s * b_step, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
}

static inline __mmask16 lanes(int n) { /* the first n (0..16) of 16 lanes */
    return (__mmask16)(n >= 16 ? 0xffffu : n <= 0 ? 0u : (1u << n) - 1u);
}

/* 32 bf16 of src[0 .. n) (zero past n), in order */
static inline AMX __m512i cvt32(const float *src, int n) {
    __m512 lo = _mm512_maskz_loadu_ps(lanes(n), src), hi = _mm512_maskz_loadu_ps(lanes(n - 16), src + 16);
    return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}

/* 16 pairs (p[j], q[j]) as bf16, j < n (zero past n): the tile unit's pair-interleaved row */
static inline AMX __m512i pairs16(const float *p, const float *q, int n, __m512i idx) {
    __m512 lo = p ? _mm512_maskz_loadu_ps(lanes(n), p) : _mm512_setzero_ps();
    __m512 hi = q ? _mm512_maskz_loadu_ps(lanes(n), q) : _mm512_setzero_ps();
    return _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}

/* the same for 16 whole columns of two rows (no masks) */
static inline AMX __m512i pairs16_full(const float *p, const float *q, __m512i idx) {
    return _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(q), _mm512_loadu_ps(p)));
}

/* r[16] as a 16 x 16 matrix of 32-bit words, transposed in place */
static inline AMX void transpose16(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int g = 0; g < 16; g += 4) { /* u[g + c], lane L: rows g .. g + 3 of column 4 L + c */
        u[g] = _mm512_unpacklo_epi64(t[g], t[g + 2]);
        u[g + 1] = _mm512_unpackhi_epi64(t[g], t[g + 2]);
        u[g + 2] = _mm512_unpacklo_epi64(t[g + 1], t[g + 3]);
        u[g + 3] = _mm512_unpackhi_epi64(t[g + 1], t[g + 3]);
    }
    for (int c = 0; c < 4; c++) {
        __m512i v0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88), v1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xdd);
        __m512i w0 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88), w1 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xdd);
        r[c] = _mm512_shuffle_i32x4(v0, w0, 0x88);
        r[c + 8] = _mm512_shuffle_i32x4(v0, w0, 0xdd);
        r[c + 4] = _mm512_shuffle_i32x4(v1, w1, 0x88);
        r[c + 12] = _mm512_shuffle_i32x4(v1, w1, 0xdd);
    }
}

static inline AMX __m512i pair_index(void) { /* lane 2j <- j, lane 2j + 1 <- 16 + j */
    uint16_t ix[32];
    for (int j = 0; j < 16; j++) ix[2 * j] = (uint16_t)j, ix[2 * j + 1] = (uint16_t)(16 + j);
    return _mm512_loadu_si512(ix);
}

/* a tile wholly inside w with the vector unit (false: leave it to pack_tile_scalar). Stored (n, k): its 16 rows of
 * 32 k as bf16 pairs are a 16 x 16 matrix of 32-bit words whose transpose is the tile; stored (k, n): each tile row
 * is two rows of w interleaved. */
static AMX bool pack_tile_fast(const tbert_packed_bf16 *p, size_t jp, size_t kb, uint16_t *t) {
    size_t n = (size_t)p->n, k = (size_t)p->k, c0 = jp * TC, k0 = kb * KB;
    if (c0 + TC > n || k0 + KB > k) return false;
    if (p->trans) {
        const __m512i idx = pair_index();
        for (size_t q = 0; q < KB / 2; q++) {
            const float *r0 = p->w + (k0 + 2 * q) * n + c0;
            _mm512_storeu_si512(t + q * 2 * TC, pairs16_full(r0, r0 + n, idx));
        }
        return true;
    }
    __m512i v[16];
    for (size_t j = 0; j < TC; j++) v[j] = cvt32(p->w + (c0 + j) * k + k0, KB);
    transpose16(v);
    for (size_t q = 0; q < KB / 2; q++) _mm512_storeu_si512(t + q * 2 * TC, v[q]);
    return true;
}

/* the output columns of 32-column blocks [jq0, jq1) only: every block is computed the same way whichever call does it */
static AMX void gemm_amx(int m, const float *a, size_t lda, const tbert_packed_bf16 *w, const float *bias, bool accumulate,
                         bool gelu, float *c, size_t ldc, uint16_t *ab, float *cb, int jq0, int jq1) {
    const int n = w->n, k = w->k, kp = w->kp, ktiles = kp / KB;
    const size_t tile_elems = KB * TC;
    tiles_start();
    for (int i0 = 0; i0 < m; i0 += RB) {
        int mb = m - i0 < RB ? m - i0 : RB, mp = (int)round_up((size_t)mb, 2 * TR);
        for (int i = 0; i < mp; i++) { /* rows past mb: zeros */
            uint16_t *dst = ab + (size_t)i * (size_t)kp;
            const float *src = a + (size_t)(i0 + i) * lda;
            for (int kk = 0; kk < kp; kk += KB)
                _mm512_storeu_si512(dst + kk, i < mb ? cvt32(src + kk, k - kk) : _mm512_setzero_si512());
        }
        for (int jq = jq0; jq < jq1; jq++) {
            const uint16_t *b0 = w->tiles + (size_t)(2 * jq) * (size_t)ktiles * tile_elems, *b1 = b0 + (size_t)ktiles * tile_elems;
            int j0 = jq * 2 * TC, nc = n - j0 < 2 * TC ? n - j0 : 2 * TC;
            for (int r = 0; r < mb; r += 2 * TR) {
                const uint16_t *a0 = ab + (size_t)r * (size_t)kp;
                /* Every output element is computed the same way wherever its block lies (so a row's result does not
                 * depend on how the rows were batched): the accumulator starts from c (accumulate), else the bias,
                 * else 0; runs over k; then + the bias when both accumulate and bias; then GELU. A whole 32 x 32 block
                 * without GELU loads its start straight from c or the bias (each tile row the same 16 values: stride
                 * 0) and stores straight into c; other blocks go through the 4 KB buffer cb. */
                bool direct = r + 2 * TR <= mb && nc == 2 * TC && !gelu;
                float *cd = c + (size_t)(i0 + r) * ldc + (size_t)j0;
                int rows = mb - r < 2 * TR ? mb - r : 2 * TR;
                __mmask16 m0 = lanes(nc), m1 = lanes(nc - 16);
                if (direct && accumulate) {
                    acc_load(cd, ldc);
                } else if (direct && bias) {
                    _tile_loadd(0, bias + j0, 0);
                    _tile_loadd(1, bias + j0 + TC, 0);
                    _tile_loadd(2, bias + j0, 0);
                    _tile_loadd(3, bias + j0 + TC, 0);
                } else if (direct || (!accumulate && !bias)) {
                    _tile_zero(0);
                    _tile_zero(1);
                    _tile_zero(2);
                    _tile_zero(3);
                } else {
                    for (int i = 0; i < 2 * TR; i++) {
                        const float *src = accumulate ? c + (size_t)(i0 + r + i) * ldc + (size_t)j0 : bias + j0;
                        bool in = i < rows;
                        _mm512_storeu_ps(cb + i * 2 * TC, in ? _mm512_maskz_loadu_ps(m0, src) : _mm512_setzero_ps());
                        _mm512_storeu_ps(cb + i * 2 * TC + 16, in ? _mm512_maskz_loadu_ps(m1, src + 16) : _mm512_setzero_ps());
                    }
                    acc_load(cb, 2 * TC);
                }
                acc_dot(a0, (size_t)kp, KB, b0, b1, tile_elems, ktiles);
                bool post_bias = accumulate && bias;
                __m512 bb0 = post_bias ? _mm512_maskz_loadu_ps(m0, bias + j0) : _mm512_setzero_ps();
                __m512 bb1 = post_bias ? _mm512_maskz_loadu_ps(m1, bias + j0 + 16) : _mm512_setzero_ps();
                if (direct) {
                    acc_store(cd, ldc);
                    if (post_bias)
                        for (int i = 0; i < 2 * TR; i++) {
                            float *dst = cd + (size_t)i * ldc;
                            _mm512_storeu_ps(dst, _mm512_add_ps(_mm512_loadu_ps(dst), bb0));
                            _mm512_storeu_ps(dst + 16, _mm512_add_ps(_mm512_loadu_ps(dst + 16), bb1));
                        }
                    continue;
                }
                acc_store(cb, 2 * TC);
                for (int i = 0; i < rows; i++) {
                    float *dst = c + (size_t)(i0 + r + i) * ldc + (size_t)j0;
                    __m512 v0 = _mm512_loadu_ps(cb + i * 2 * TC), v1 = _mm512_loadu_ps(cb + i * 2 * TC + 16);
                    if (post_bias) v0 = _mm512_add_ps(v0, bb0), v1 = _mm512_add_ps(v1, bb1);
                    _mm512_mask_storeu_ps(dst, m0, v0);
                    _mm512_mask_storeu_ps(dst + 16, m1, v1);
                    if (gelu) tbert_bias_gelu_row(dst, NULL, nc);
                }
            }
        }
    }
    _tile_release();
}

/* dw[o0 .. o1, :] += dy[:, o0 .. o1]^T x, 256 rows at a time (see the top of the file) */
static AMX void tn_amx(size_t rows, int n_out, int n_in, const float *dy, const float *x, float *dw, int o0, int o1,
                       uint16_t *buf, float *cb) {
    const int no = o1 - o0, nop = (int)round_up((size_t)no, 2 * TR), nip = (int)round_up((size_t)n_in, 2 * TC);
    uint16_t *dyt = buf, *xv = buf + (size_t)nop * RB; /* dyt [nop][RB]; xv per panel of 16 columns [RB / 2][16][2] */
    const __m512i idx = pair_index();
    const size_t ldw = (size_t)n_in;
    tiles_start();
    for (size_t r0 = 0; r0 < rows; r0 += RB) {
        int nr = rows - r0 < RB ? (int)(rows - r0) : RB, nrp = (int)round_up((size_t)nr, KB);
        /* dyt: row o - o0 = dy's column o over the block's rows: per 32 rows x 16 columns, the 16 row pairs as
         * vectors of 16 32-bit words (one bf16 pair per column), transposed into 16 rows of 32 bf16 */
        for (int o = 0; o < no; o += TC) {
            int oc = no - o < TC ? no - o : TC;
            for (int r = 0; r < nrp; r += KB) {
                __m512i v[16];
                for (int pr = 0; pr < 16; pr++) {
                    int rr = r + 2 * pr;
                    const float *p = rr < nr ? dy + (r0 + (size_t)rr) * (size_t)n_out + (size_t)(o0 + o) : NULL;
                    const float *q = rr + 1 < nr ? p + n_out : NULL;
                    v[pr] = q && oc == TC ? pairs16_full(p, q, idx) : pairs16(p, q, oc, idx);
                }
                transpose16(v);
                for (int j = 0; j < oc; j++) _mm512_storeu_si512(dyt + (size_t)(o + j) * RB + (size_t)r, v[j]);
            }
        }
        for (int o = no; o < nop; o++) memset(dyt + (size_t)o * RB, 0, (size_t)nrp * sizeof(uint16_t));
        /* xv: per panel of 16 columns, row pairs interleaved */
        for (int ip = 0; ip < nip / TC; ip++) {
            uint16_t *t = xv + (size_t)ip * RB * TC;
            int ic = n_in - ip * TC < TC ? n_in - ip * TC : TC;
            for (int r = 0; r < nrp; r += 2) {
                const float *p = r < nr ? x + (r0 + (size_t)r) * ldw + (size_t)ip * TC : NULL;
                const float *q = r + 1 < nr ? p + ldw : NULL;
                _mm512_storeu_si512(t + (size_t)r * TC, q && ic == TC ? pairs16_full(p, q, idx) : pairs16(p, q, ic, idx));
            }
        }
        for (int ob = 0; ob < no; ob += 2 * TR)
            for (int ib = 0; ib < n_in; ib += 2 * TC) {
                float *d = dw + (size_t)(o0 + ob) * ldw + (size_t)ib;
                bool full = ob + 2 * TR <= no && ib + 2 * TC <= n_in;
                int orows = no - ob < 2 * TR ? no - ob : 2 * TR, icols = n_in - ib < 2 * TC ? n_in - ib : 2 * TC;
                if (full) {
                    acc_load(d, ldw);
                } else {
                    memset(cb, 0, (size_t)(2 * TR * 2 * TC) * sizeof(float));
                    for (int i = 0; i < orows; i++) memcpy(cb + i * 2 * TC, d + (size_t)i * ldw, (size_t)icols * sizeof(float));
                    acc_load(cb, 2 * TC);
                }
                const uint16_t *b0 = xv + (size_t)(ib / TC) * RB * TC, *b1 = b0 + (size_t)RB * TC;
                acc_dot(dyt + (size_t)ob * RB, RB, KB, b0, b1, (size_t)KB * TC, nrp / KB);
                if (full) {
                    acc_store(d, ldw);
                } else {
                    acc_store(cb, 2 * TC);
                    for (int i = 0; i < orows; i++) memcpy(d + (size_t)i * ldw, cb + i * 2 * TC, (size_t)icols * sizeof(float));
                }
            }
    }
    _tile_release();
}
#endif

#if !TBERT_HAVE_AMX_KERNEL
static bool pack_tile_fast(const tbert_packed_bf16 *p, size_t jp, size_t kb, uint16_t *t) {
    (void)p, (void)jp, (void)kb, (void)t;
    return false;
}
#endif

int tbert_packed_bf16_blocks(const tbert_packed_bf16 *w) {
    return w->amx ? (int)(round_up((size_t)w->n, 2 * TC) / (2 * TC)) : tbert_packed_panels(&w->fp);
}

void tbert_gemm_bf16_blocks(int m, const float *a, size_t lda, const tbert_packed_bf16 *w, const float *bias, bool accumulate,
                            bool gelu, float *c, size_t ldc, void *scratch, int b0, int b1) {
    if (m <= 0 || b0 >= b1) return;
#if TBERT_HAVE_AMX_KERNEL
    if (w->amx) {
        size_t ab = round_up((size_t)(m > RB ? RB : m), 2 * TR) * (size_t)w->kp * sizeof(uint16_t);
        gemm_amx(m, a, lda, w, bias, accumulate, gelu, c, ldc, scratch, (float *)((char *)scratch + round_up(ab, 64)), b0, b1);
        return;
    }
#endif
    gemm_fallback(m, a, lda, w, bias, accumulate, gelu, c, ldc, scratch, b0, b1);
}

void tbert_gemm_bf16(int m, const float *a, size_t lda, const tbert_packed_bf16 *w, const float *bias, bool accumulate,
                     bool gelu, float *c, size_t ldc, void *scratch) {
    int blocks = tbert_packed_bf16_blocks(w);
    if (!w->amx && blocks == 0) { /* the fallback on the BLAS path: no blocks */
        gemm_fallback(m, a, lda, w, bias, accumulate, gelu, c, ldc, scratch, -1, -1);
        return;
    }
    tbert_gemm_bf16_blocks(m, a, lda, w, bias, accumulate, gelu, c, ldc, scratch, 0, blocks);
}

void tbert_gemm_tn_bf16(bool amx, size_t rows, int n_out, int n_in, const float *dy, const float *x, float *dw, int chunk,
                        int o0, int o1, void *scratch) {
    if (rows == 0 || n_in <= 0 || o0 >= o1) return;
#if TBERT_HAVE_AMX_KERNEL
    if (amx) {
        size_t nop = round_up((size_t)(o1 - o0), 2 * TR), nip = round_up((size_t)n_in, 2 * TC);
        size_t bytes = round_up((nop + nip) * RB * sizeof(uint16_t), 64);
        tn_amx(rows, n_out, n_in, dy, x, dw, o0, o1, scratch, (float *)((char *)scratch + bytes));
        return;
    }
#else
    (void)amx;
#endif
    tn_fallback(rows, n_out, n_in, dy, x, dw, chunk, o0, o1, scratch);
}
