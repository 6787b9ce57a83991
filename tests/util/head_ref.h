/* The float64 reference loss of a classification head (tests on the CPU head and the CUDA head). */
#ifndef TBERT_TEST_HEAD_REF_H
#define TBERT_TEST_HEAD_REF_H

#include "tbert/head.h"

/* Mean loss (eval mode, unweighted) of head h with its parameters replaced by P (float64, h's layout) on n dense
 * rows x (n x in_dim), labels y, written from head.h's formulas: [GELU(W1 x + b1)], W2 . + b2, then logistic loss
 * on logit 0 against y == positive (binary) or softmax cross-entropy. Fails the running test when memory runs out. */
double tu_head_ref_loss(const tbert_head *h, const double *P, const float *x, int n, const int *y);

#endif
