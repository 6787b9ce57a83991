/* Float64 reference layers shared by the tests that check the encoder's backward and the fine-tuning stack. */
#ifndef TBERT_TEST_REF64_H
#define TBERT_TEST_REF64_H

#include <stddef.h>

/* y[N x out] = x[N x in] W^T (W is out x in, row-major, as the model stores it) + b (b may be NULL) */
void tu_ref_linear64(size_t N, int in, int out, const double *x, const double *W, const double *b, double *y);
/* y[N x H] = LayerNorm(z) * g + b over each row (biased variance); y may be z (in place) */
void tu_ref_layernorm64(size_t N, int H, const double *z, const double *g, const double *b, double eps, double *y);

#endif
