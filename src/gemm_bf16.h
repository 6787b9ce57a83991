/* bf16 matrix products on the CPU (src/gemm_bf16.c): `--precision bf16` for fine-tuning's trained layers.
 *
 * The same two products as gemm_cpu.h, with both operands rounded to bfloat16 (round to nearest even) and the
 * sums in float32 -- the numerics of torch.autocast(bfloat16) and of the CUDA stack's bf16 mode:
 *
 *   tbert_gemm_bf16:        c[m, n] = bf16(a)[m, k] @ bf16(w)^T (+ c when accumulate) + bias, then GELU when gelu
 *   tbert_gemm_tn_bf16:     dw[o, :] += sum over rows r of bf16(dy)[r, o] bf16(x)[r, :]      for o in [o0, o1)
 *
 * With AMX (Intel Sapphire Rapids and later; checked at run time, and the kernel's permission asked for once per
 * process) the products run on the tile unit: 16 x 16 float32 accumulator tiles, weights packed once per step into
 * the tile unit's pair-interleaved layout, activations converted block by block into per-thread scratch. Without
 * AMX (or with TBERT_CPU_NO_AMX=1 in the environment) the operands are rounded to bf16 values in float32 and
 * multiplied by gemm_cpu.c's float32 kernels: the same function, other summation order (other bits), no faster.
 *
 * Determinism: in tbert_gemm_tn_bf16 every element of dw is one chain of additions over the rows in order (32 rows
 * per tile step), whichever [o0, o1) computes it, so threads splitting the output rows give the same bits. The row
 * products are per row. Not a public header. */
#ifndef TBERT_GEMM_BF16_H
#define TBERT_GEMM_BF16_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gemm_cpu.h"
#include "tbert/common.h"

typedef struct {
    const float *w; /* row-major (n, k) (trans: (k, n)), not owned; must outlive the packed copy */
    int n, k, kp;   /* kp: k rounded up to 32 (AMX) */
    bool trans;     /* w is stored (k, n): the product is a @ w */
    bool amx;
    uint16_t *tiles; /* AMX: per panel of 16 output columns, kp / 32 tiles of 16 k-pairs x 16 columns x 2 (owned) */
    float *wr;       /* no AMX: w rounded to bf16 values (owned), packed for gemm_cpu.c in fp */
    tbert_packed_w fp;
} tbert_packed_bf16;

/* true when the CPU has AMX-BF16 and the kernel lets this process use it (and TBERT_CPU_NO_AMX is unset) */
bool tbert_gemm_amx_supported(void);

/* Packs w (n, k) (trans: w stored (k, n)) for the bf16 products; amx: the tile kernel (the caller checked
 * tbert_gemm_amx_supported), else the float32 fallback. */
tbert_status tbert_pack_bf16(const float *w, int n, int k, bool trans, bool amx, tbert_packed_bf16 *out, tbert_error *err);
/* Packs p->w again (the values changed: an optimiser step). */
void tbert_packed_bf16_refresh(tbert_packed_bf16 *p);
void tbert_packed_bf16_free(tbert_packed_bf16 *p);

/* Scratch bytes one thread needs for tbert_gemm_bf16 with up to max_m rows and k <= max_k, and for
 * tbert_gemm_tn_bf16 with n_out, n_in <= max_n (both paths; 64-byte aligned buffer). */
size_t tbert_gemm_bf16_scratch(bool amx, int max_m, int max_k, int max_n);

/* c[m, n] (ldc >= n) = bf16(a)[m, k] (lda >= k) @ bf16(w)^T (+ c when accumulate) + bias[n] (may be NULL), then the
 * exact-erf GELU when gelu. Single-threaded; scratch as tbert_gemm_bf16_scratch (m <= its max_m, k <= max_k). */
void tbert_gemm_bf16(int m, const float *a, size_t lda, const tbert_packed_bf16 *w, const float *bias, bool accumulate,
                     bool gelu, float *c, size_t ldc, void *scratch);

/* Split by output columns (the CPU encoder's team for a lone sequence): the number of 32-column blocks (0 when the
 * fallback has no packed kernel, i.e. no AVX-512), and the product restricted to blocks [b0, b1), bit for bit the
 * columns tbert_gemm_bf16 writes. */
int tbert_packed_bf16_blocks(const tbert_packed_bf16 *w);
void tbert_gemm_bf16_blocks(int m, const float *a, size_t lda, const tbert_packed_bf16 *w, const float *bias, bool accumulate,
                            bool gelu, float *c, size_t ldc, void *scratch, int b0, int b1);

/* dw[o, i] += sum_r bf16(dy)[r, o] bf16(x)[r, i] for o in [o0, o1), all i < n_in; dy [rows, n_out], x [rows, n_in],
 * dw [n_out, n_in], row-major and dense. Single-threaded; scratch as tbert_gemm_bf16_scratch (n_out, n_in <= max_n).
 * Without AMX: tbert_gemm_tn_chunked on the rounded operands (chunks of `chunk` rows, as its contract). */
void tbert_gemm_tn_bf16(bool amx, size_t rows, int n_out, int n_in, const float *dy, const float *x, float *dw, int chunk,
                        int o0, int o1, void *scratch);

/* float32 -> the nearest bfloat16 value (ties to even; NaN stays NaN), as a float32 */
float tbert_round_bf16(float f);

#endif
