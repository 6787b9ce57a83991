/* The classifier head trained on frozen-encoder features: Linear (D->C) or MLP (D->hidden->GELU->C) with
 * optional dropout, binary (1 logit, sigmoid + BCE) or multi-class (softmax + cross-entropy), a hand-written
 * backward pass and AdamW exactly as PyTorch defines it. CPU reference implementation in src/head.c and
 * src/adam.c; kernels/head.cu implements the same semantics on CUDA.
 *
 * Parameters live in ONE float32 allocation (params), laid out tensor after tensor in this order:
 *   linear head (hidden == 0): w2 (O, D), b2 (O)
 *   MLP head   (hidden  > 0): w1 (Hd, D), b1 (Hd), w2 (O, Hd), b2 (O)
 * with O = 1 for a binary head, O = C (n_classes) otherwise. HF nn.Linear layout: y = x @ W^T + b.
 * Gradients and Adam moments use the same layout (same offsets).
 *
 * Forward (rows are samples, x is n x D row-major):
 *   MLP:    a = x @ w1^T + b1;  h = gelu(a) = 0.5 a (1 + erf(a / sqrt 2));  h' = dropout(h);  z = h' @ w2^T + b2
 *   linear: x' = dropout(x);   z = x' @ w2^T + b2
 * Dropout (training only, p = cfg.dropout > 0) is inverted dropout on the input of the last linear layer:
 * one uniform u = tbert_rng_uniform() per element, drawn in row-major order over the n x K block (K = Hd or
 * D); kept when u >= p and scaled by 1/(1-p), else 0.
 * Loss (mean over the batch of per-sample weighted losses, weights w_i = class_weight[y_i] or 1):
 *   binary:      t_i = (y_i == positive); l_i = max(z,0) - z t + log1p(exp(-|z|));   dz = w_i (sigmoid(z) - t) / n
 *   multi-class: l_i = logsumexp(z) - z[y_i];                                      dz = w_i (softmax(z) - onehot) / n
 *   loss = sum_i w_i l_i / n       (sums in double)
 * Probabilities: binary p(positive) = sigmoid(z), p(other) = 1 - p; multi-class softmax(z).
 * Binary heads exist only for n_classes == 2; class `positive` is the one the logit speaks for. */
#ifndef TBERT_HEAD_H
#define TBERT_HEAD_H

#include "tbert/common.h"
#include "tbert/rows.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- deterministic RNG (xoshiro256**, seeded through splitmix64); its state is saved in checkpoints ---- */
typedef struct {
    uint64_t s[4];
} tbert_rng;
void tbert_rng_seed(tbert_rng *r, uint64_t seed);
uint64_t tbert_rng_next(tbert_rng *r);
double tbert_rng_uniform(tbert_rng *r);          /* [0,1), 53 bits */
double tbert_rng_normal(tbert_rng *r);           /* N(0,1), Box-Muller, consumes 2 draws */
uint64_t tbert_rng_below(tbert_rng *r, uint64_t n); /* uniform integer in [0,n), unbiased */
/* Fisher-Yates shuffle of idx[0..n) (i from n-1 down to 1, j = below(i+1)). */
void tbert_rng_shuffle(tbert_rng *r, int *idx, int n);

/* ---- head configuration and parameters ---- */
typedef struct {
    int in_dim;    /* D: feature dimension */
    int hidden;    /* Hd: 0 = linear head */
    int n_classes; /* C >= 2 */
    bool binary;   /* one logit + sigmoid (requires n_classes == 2); else softmax over C logits */
    int positive;  /* binary: index of the positive class (the logit's class) in [0, C) */
    float dropout; /* [0, 1): 0 = off */
} tbert_head_config;

/* Number of logits: 1 for a binary head, else n_classes. */
int tbert_head_out_dim(const tbert_head_config *c);

/* A named tensor inside the parameter block. */
typedef struct {
    const char *name; /* "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias" (linear head: only fc2.*) */
    int ndim;
    int64_t shape[2];
    size_t offset; /* in floats from the start of params */
    size_t numel;
} tbert_head_tensor;

typedef struct {
    tbert_head_config cfg;
    size_t n_params;
    float *params; /* one allocation of n_params floats */
    float *w1, *b1, *w2, *b2; /* pointers into params (w1, b1 NULL for a linear head) */
    int n_tensors;
    tbert_head_tensor tensors[4];
} tbert_head;

/* Validates cfg (TBERT_E_ARG with a one-line message) and allocates a zeroed head. */
tbert_status tbert_head_create(const tbert_head_config *cfg, tbert_head **out, tbert_error *err);
void tbert_head_free(tbert_head *h);
/* Deterministic init like PyTorch's nn.Linear default: W and b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn
 * in parameter-block order from an RNG seeded with `seed`. */
void tbert_head_init(tbert_head *h, uint64_t seed);

/* Activations kept for the backward pass, sized for batches of up to max_n rows. */
typedef struct tbert_head_ws tbert_head_ws;
tbert_status tbert_head_ws_create(const tbert_head_config *cfg, int max_n, tbert_head_ws **out, tbert_error *err);
void tbert_head_ws_free(tbert_head_ws *ws);

/* z (n x O) = head(x) for n <= max_n rows. train = true applies dropout with rng (rng may be NULL when
 * dropout is 0 or train is false). Stores what backward needs in ws. */
tbert_status tbert_head_forward(const tbert_head *h, tbert_head_ws *ws, int n, const float *x, bool train, tbert_rng *rng,
                                float *z, tbert_error *err);

/* Loss of logits z (n x O) against class indices y (n, each in [0, C)); class_weight: C floats or NULL.
 * Returns the mean weighted loss (double) in *loss and writes dL/dz (n x O) to dz (may be NULL). */
tbert_status tbert_head_loss(const tbert_head_config *cfg, int n, const float *z, const int *y, const float *class_weight,
                             double *loss, float *dz, tbert_error *err);

/* Backward from dz (n x O) through the last forward call on ws: writes dL/dparams into grad (n_params
 * floats, same layout as params; overwritten, not accumulated). x must be the forward's input. */
tbert_status tbert_head_backward(const tbert_head *h, tbert_head_ws *ws, int n, const float *x, const float *dz, float *grad,
                                 tbert_error *err);

/* probs (n x C) from logits (n x O). */
void tbert_head_probs(const tbert_head_config *cfg, int n, const float *z, float *probs);

/* Convenience: inference over any n (internally chunked, no dropout, thread-safe: own workspace). */
tbert_status tbert_head_predict(const tbert_head *h, int n, const float *x, float *probs, tbert_error *err);

/* ---- sparse input: the same head on tbert_rows (dense block + CSR; src/rows.c) ----
 * Same semantics as the dense functions on the densified rows (x->n rows, in_dim = dense_dim + sparse_dim):
 * forward = one GEMM over the dense block + a sparse x dense product over the CSR part; backward = GEMM dW
 * for the dense columns + a scatter-add into the sparse columns present (the others get 0). Results equal
 * the dense path's within float rounding (the sums run in another order), except a linear head with
 * dropout in training, which drops zeros too (one draw per element of n x in_dim) and so runs the dense
 * path on the densified batch: bit for bit the same. Deterministic (fixed order), so --resume keeps its
 * bits. backward_rows needs the x of the last forward_rows. */
tbert_status tbert_head_forward_rows(const tbert_head *h, tbert_head_ws *ws, const tbert_rows *x, bool train, tbert_rng *rng,
                                     float *z, tbert_error *err);
tbert_status tbert_head_backward_rows(const tbert_head *h, tbert_head_ws *ws, const tbert_rows *x, const float *dz, float *grad,
                                      tbert_error *err);
/* Fine-tuning (issue 15, src/finetune.c): d loss / d input for the first x->dense_dim columns (the dense block the
 * encoder produced), dx (x->n x dense_dim), after tbert_head_backward_rows on the same ws, x and dz (it reuses the
 * hidden-layer gradient that call left in ws). linear: dx = dz @ w2[:, :dd] (through the dropout mask when the
 * forward dropped); MLP: dx = da @ w1[:, :dd]. Changes nothing else. */
tbert_status tbert_head_backward_input_rows(const tbert_head *h, tbert_head_ws *ws, const tbert_rows *x, const float *dz, float *dx,
                                            tbert_error *err);
/* Inference on rows: densifies 256 rows at a time and runs tbert_head_predict on them, so a head scores
 * exactly (bit for bit) as it did on dense feature vectors. */
tbert_status tbert_head_predict_rows(const tbert_head *h, const tbert_rows *x, float *probs, tbert_error *err);

/* ---- AdamW (torch.optim.AdamW, foreach=False semantics) ----
 * step t += 1;  p *= (1 - lr*wd);  m = lerp(m, g, 1-b1);  v = b2 v + (1-b2) g^2;
 * bc1 = 1 - b1^t; bc2 = 1 - b2^t (double);  p -= (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps).
 * With weight_decay = 0 this is exactly torch.optim.Adam. */
typedef struct {
    double lr, beta1, beta2, eps, weight_decay;
    int64_t step;
    size_t n;
    float *m, *v; /* n floats each, zero at step 0 */
} tbert_adam;

/* Defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 0 (caller sets the fields after init). */
tbert_status tbert_adam_init(tbert_adam *a, size_t n, tbert_error *err);
void tbert_adam_free(tbert_adam *a);
/* One update of params (n floats) with grad. */
void tbert_adam_step(tbert_adam *a, float *params, const float *grad);

#ifdef __cplusplus
}
#endif
#endif
