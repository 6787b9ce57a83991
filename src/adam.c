/* AdamW exactly as torch.optim.AdamW (single-tensor path): decoupled weight decay, bias correction in
 * double, eps added after dividing sqrt(v) by sqrt(bias_correction2). The element loop is vectorised (TBERT_VEC
 * clones; this file is compiled with -fno-math-errno, without which sqrtf keeps the loop scalar): element-wise IEEE
 * operations in the same order, no contraction (-std=c17), so the same bits as the scalar loop. */
#include "tbert/head.h"

#include <math.h>
#include <stdlib.h>

#include "cpu_math.h"

tbert_status tbert_adam_init(tbert_adam *a, size_t n, tbert_error *err) {
    a->lr = 1e-3;
    a->beta1 = 0.9;
    a->beta2 = 0.999;
    a->eps = 1e-8;
    a->weight_decay = 0.0;
    a->step = 0;
    a->n = n;
    a->m = tbert_calloc_array(n, sizeof(float));
    a->v = tbert_calloc_array(n, sizeof(float));
    if (!a->m || !a->v) {
        tbert_adam_free(a);
        return tbert_fail(err, TBERT_E_NOMEM, "adam: out of memory for %zu moments", n);
    }
    return TBERT_OK;
}

void tbert_adam_free(tbert_adam *a) {
    free(a->m);
    free(a->v);
    a->m = a->v = NULL;
}

/* params, m, v and grad are n floats each, distinct arrays */
TBERT_VEC static void adam_update(size_t n, float *restrict params, float *restrict m, float *restrict v,
                                  const float *restrict grad, bool decayed, float decay, float w1, float b2, float w2,
                                  float step_size, float bc2_sqrt, float eps) {
    for (size_t i = 0; i < n; i++) {
        float g = grad[i];
        float p = decayed ? params[i] * decay : params[i];
        float mi = m[i] + w1 * (g - m[i]);
        float vi = v[i] * b2 + w2 * g * g;
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        params[i] = p - step_size * (mi / denom);
        m[i] = mi;
        v[i] = vi;
    }
}

void tbert_adam_step(tbert_adam *a, float *params, const float *grad) {
    a->step++;
    double bc1 = 1.0 - pow(a->beta1, (double)a->step);
    double bc2 = 1.0 - pow(a->beta2, (double)a->step);
    /* torch passes these as Python floats to float32 tensor ops: they are rounded to float32 there */
    float decay = (float)(1.0 - a->lr * a->weight_decay);
    float w1 = (float)(1.0 - a->beta1);
    float b2 = (float)a->beta2, w2 = (float)(1.0 - a->beta2);
    float step_size = (float)(a->lr / bc1);
    float bc2_sqrt = (float)sqrt(bc2);
    float eps = (float)a->eps;
    adam_update(a->n, params, a->m, a->v, grad, a->weight_decay != 0.0, decay, w1, b2, w2, step_size, bc2_sqrt, eps);
}
