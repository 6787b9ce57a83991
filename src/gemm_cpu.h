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
    const float *w; /* row-major (n, k), not owned; must outlive the packed copy (the BLAS path uses it) */
    float *packed;  /* owned; NULL on the BLAS path */
    int n, k;
} tbert_packed_w;

/* Which kernel tbert_gemm_packed uses. AUTO: AVX-512 when the CPU has it, else BLAS. */
typedef enum { TBERT_GEMM_AUTO, TBERT_GEMM_BLAS, TBERT_GEMM_AVX512 } tbert_gemm_kind;

/* true when this CPU (and this build) can run the AVX-512 kernel */
bool tbert_gemm_avx512_supported(void);

/* Packs w (n, k) for the kernel `kind` resolves to. TBERT_GEMM_AVX512 on a CPU without it fails (E_UNSUPPORTED). */
tbert_status tbert_pack_weights(const float *w, int n, int k, tbert_gemm_kind kind, tbert_packed_w *out,
                                tbert_error *err);
void tbert_packed_free(tbert_packed_w *p);

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

/* x[n] = gelu(x + bias) (bias may be NULL), the exact-erf GELU to ~2e-7 absolute */
void tbert_bias_gelu_row(float *x, const float *bias, int n);

#endif
