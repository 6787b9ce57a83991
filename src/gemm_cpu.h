/* The CPU encoder's matrix products with weights packed once at load time (src/gemm_cpu.c).
 *
 *   c[m, n] = a[m, k] @ w^T (+ c when accumulate) + bias, then GELU when gelu      (w is HF's (out=n, in=k))
 *
 * With AVX-512 (checked at run time) w is copied into panels of 32 output columns, each k x 32 contiguous
 * and 64-byte aligned, and an own register-blocked kernel (12 rows x 32 columns per tile) multiplies
 * straight from the row-major activations; bias and GELU are applied to each finished tile while it is in
 * cache. Without AVX-512 the product goes to cblas_sgemm on the unpacked w, followed by the same epilogue.
 * Not a public header. */
#ifndef TBERT_GEMM_CPU_H
#define TBERT_GEMM_CPU_H

#include <stdbool.h>
#include <stddef.h>

#include "tbert/common.h"

typedef struct {
    const float *w; /* row-major (n, k) (trans: (k, n)), not owned; must outlive the packed copy (the BLAS path uses it) */
    float *packed;  /* owned; NULL on the BLAS path */
    int n, k;
    bool trans; /* w is stored (k, n): the product is a @ w (tbert_pack_weights_t) */
} tbert_packed_w;

/* Which kernel tbert_gemm_packed uses. AUTO: AVX-512 when the CPU has it, else BLAS. */
typedef enum { TBERT_GEMM_AUTO, TBERT_GEMM_BLAS, TBERT_GEMM_AVX512 } tbert_gemm_kind;

/* true when this CPU (and this build) can run the AVX-512 kernel */
bool tbert_gemm_avx512_supported(void);

/* Packs w (n, k) for the kernel `kind` resolves to. TBERT_GEMM_AVX512 on a CPU without it fails (E_UNSUPPORTED). */
tbert_status tbert_pack_weights(const float *w, int n, int k, tbert_gemm_kind kind, tbert_packed_w *out,
                                tbert_error *err);
void tbert_packed_free(tbert_packed_w *p);
/* The same for w stored (k, n) row-major, c = a @ w (fine-tuning's dx = dy W, W being HF's (out, in)). */
tbert_status tbert_pack_weights_t(const float *w, int n, int k, tbert_gemm_kind kind, tbert_packed_w *out,
                                  tbert_error *err);
/* Packs p->w again into p's buffer (the values changed: a trained weight after an optimiser step). */
void tbert_packed_refresh(tbert_packed_w *p);

/* c[m, n] (ldc >= n) = a[m, k] (lda >= k) @ w^T, plus c itself when accumulate, plus bias[n] (may be NULL),
 * then the exact-erf GELU when gelu. Single-threaded (the encoder's workers call it concurrently). */
void tbert_gemm_packed(int m, const float *a, size_t lda, const tbert_packed_w *w, const float *bias, bool accumulate,
                       bool gelu, float *c, size_t ldc);

/* The AVX-512 path split by output columns (the encoder's team for a lone sequence, src/encoder_cpu.c): the
 * number of 32-column panels of a packed w (0 on the BLAS path, which has none), and the product restricted
 * to panels [jp0, jp1), bit for bit the columns tbert_gemm_packed writes. Does nothing on the BLAS path. */
int tbert_packed_panels(const tbert_packed_w *w);
void tbert_gemm_packed_panels(int m, const float *a, size_t lda, const tbert_packed_w *w, const float *bias, bool accumulate,
                              bool gelu, float *c, size_t ldc, int jp0, int jp1);

/* c[m, n] = a[m, k] @ b[k, n] (row-major, b not packed: the attention's small products); the AVX-512 kernel
 * when avx512 (the caller checked tbert_gemm_avx512_supported), else cblas_sgemm. k >= 1. */
void tbert_gemm_nn(bool avx512, int m, int n, int k, const float *a, size_t lda, const float *b, size_t ldb, float *c,
                   size_t ldc);

/* A linear layer's weight gradient over rows in fixed chunks (fine-tuning, include/tbert/encoder_backward.h's
 * determinism): for output rows o in [o0, o1),
 *   dw[o, :] += P_0 + P_1 + ... (in chunk order),  P_c[o, i] = sum over the rows r of chunk c (in order, from zero)
 *   of dy[r, o] x[r, i],
 * chunks of `chunk` rows (the last may be shorter). dy is [rows, n_out], x [rows, n_in], dw [n_out, n_in], all
 * row-major and dense. Every element is computed the same way whatever [o0, o1) is, so threads splitting the
 * output rows give the same bits. AVX-512 when avx512 (the caller checked) and chunk <= 256, else plain loops
 * (other bits). */
void tbert_gemm_tn_chunked(bool avx512, size_t rows, int n_out, int n_in, const float *dy, const float *x, float *dw,
                           int chunk, int o0, int o1);

/* x[n] = gelu(x + bias) (bias may be NULL), the exact-erf GELU to ~2e-7 absolute */
void tbert_bias_gelu_row(float *x, const float *bias, int n);

#endif
