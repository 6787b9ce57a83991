/* Host side of the CUDA classifier head (interface and semantics: src/head_cuda.h; kernels: kernels/head.cu).
 * Part of the CUDA plugin (libtbert_cuda.so): tbert reaches these functions through the plugin's table
 * (src/cuda_plugin_api.c); the dropout mask is drawn on tbert's side (src/cuda_plugin.c). */
#include "head_cuda.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "tbert/cuda_kernels.h"

_Static_assert(sizeof(int) == sizeof(int32_t), "labels are uploaded as int32");

struct tbert_cuda_head {
    tbert_head_config cfg;
    int device, max_n, D, Hd, O, K;
    size_t n_params;
    size_t off_w1, off_b1, off_w2, off_b2; /* offsets in floats (w1, b1 unused for a linear head) */
    cublasHandle_t blas;
    cudaStream_t s;
    /* device */
    float *params, *grad, *m, *v;
    float *x, *a, *h, *z, *dz, *dh, *mask, *cw;
    int32_t *y;
    double *row_loss, *loss_sum;
};

void tbert_cuda_head_free(tbert_cuda_head *g) {
    if (!g) return;
    cudaSetDevice(g->device);
    if (g->s) cudaStreamSynchronize(g->s);
    void *bufs[] = {g->params, g->grad, g->m, g->v, g->x, g->a, g->h, g->z, g->dz, g->dh, g->mask, g->cw, g->y,
                    g->row_loss, g->loss_sum};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        if (bufs[i]) cudaFree(bufs[i]);
    if (g->blas) cublasDestroy(g->blas);
    if (g->s) cudaStreamDestroy(g->s);
    free(g);
}

static tbert_status dev_alloc(void **p, size_t n, size_t size, tbert_error *err) {
    size_t bytes;
    if (!tbert_mul_size(n ? n : 1, size, &bytes)) return tbert_fail(err, TBERT_E_NOMEM, "CUDA head: size overflow");
    TBERT_CUDA_CHECK(err, cudaMalloc(p, bytes));
    return TBERT_OK;
}

static tbert_status head_setup(tbert_cuda_head *g, const tbert_head *h, const tbert_adam *a, tbert_error *err) {
    TBERT_CUDA_CHECK(err, cudaSetDevice(g->device));
    TBERT_CUDA_CHECK(err, cudaStreamCreateWithFlags(&g->s, cudaStreamNonBlocking));
    TBERT_CUBLAS_CHECK(err, cublasCreate(&g->blas));
    TBERT_CUBLAS_CHECK(err, cublasSetStream(g->blas, g->s));
    const size_t P = g->n_params, N = (size_t)g->max_n;
    tbert_status st;
#define ALLOC(ptr, n, size)                                                                                        \
    if ((st = dev_alloc((void **)&(ptr), (n), (size), err)) != TBERT_OK) return st
    ALLOC(g->params, P, sizeof(float));
    ALLOC(g->grad, P, sizeof(float));
    ALLOC(g->m, P, sizeof(float));
    ALLOC(g->v, P, sizeof(float));
    ALLOC(g->x, N * g->D, sizeof(float));
    ALLOC(g->a, N * (g->Hd ? g->Hd : 1), sizeof(float));
    ALLOC(g->h, N * g->K, sizeof(float));
    ALLOC(g->dh, N * (g->Hd ? g->Hd : 1), sizeof(float));
    ALLOC(g->z, N * g->O, sizeof(float));
    ALLOC(g->dz, N * g->O, sizeof(float));
    ALLOC(g->mask, N * g->K, sizeof(float));
    ALLOC(g->cw, (size_t)g->cfg.n_classes, sizeof(float));
    ALLOC(g->y, N, sizeof(int32_t));
    ALLOC(g->row_loss, N, sizeof(double));
    ALLOC(g->loss_sum, 1, sizeof(double));
#undef ALLOC
    /* On the head's own stream: g->s is non-blocking, so copies on the legacy stream (cudaMemcpy, cudaMemset) would
     * not be ordered before the kernels that read them (found by the emulated device, docs/cuda.md). The sync
     * lets the caller free or change h and a at once. */
    TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->params, h->params, P * sizeof(float), cudaMemcpyHostToDevice, g->s));
    if (a && a->m && a->v && a->n == P) {
        TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->m, a->m, P * sizeof(float), cudaMemcpyHostToDevice, g->s));
        TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->v, a->v, P * sizeof(float), cudaMemcpyHostToDevice, g->s));
    } else {
        TBERT_CUDA_CHECK(err, cudaMemsetAsync(g->m, 0, P * sizeof(float), g->s));
        TBERT_CUDA_CHECK(err, cudaMemsetAsync(g->v, 0, P * sizeof(float), g->s));
    }
    TBERT_CUDA_CHECK(err, cudaStreamSynchronize(g->s));
    return TBERT_OK;
}

tbert_status tbert_cuda_head_create(const tbert_head *h, const tbert_adam *a, int max_n, int device, tbert_cuda_head **out,
                                    tbert_error *err) {
    *out = NULL;
    int count = tbert_cuda_device_count_impl();
    if (count <= 0) return tbert_fail(err, TBERT_E_NODEV, "--device cuda: no CUDA device is present");
    if (device < 0 || device >= count)
        return tbert_fail(err, TBERT_E_NODEV, "--device cuda:%d: no such CUDA device (%d present)", device, count);
    if (max_n < 1) return tbert_fail(err, TBERT_E_ARG, "CUDA head: batch capacity %d < 1", max_n);
    if (a && a->n != h->n_params) return tbert_fail(err, TBERT_E_ARG, "CUDA head: Adam state has %zu values, head %zu", a->n, h->n_params);
    tbert_cuda_head *g = calloc(1, sizeof *g);
    if (!g) return tbert_fail(err, TBERT_E_NOMEM, "CUDA head: out of host memory");
    g->cfg = h->cfg;
    g->device = device;
    g->max_n = max_n;
    g->D = h->cfg.in_dim;
    g->Hd = h->cfg.hidden;
    g->O = h->cfg.binary ? 1 : h->cfg.n_classes; /* tbert_head_out_dim (src/head.c is not part of the plugin) */
    g->K = g->Hd > 0 ? g->Hd : g->D;
    g->n_params = h->n_params;
    g->off_w2 = (size_t)(h->w2 - h->params);
    g->off_b2 = (size_t)(h->b2 - h->params);
    if (g->Hd > 0) {
        g->off_w1 = (size_t)(h->w1 - h->params);
        g->off_b1 = (size_t)(h->b1 - h->params);
    }
    tbert_status st = head_setup(g, h, a, err);
    if (st != TBERT_OK) {
        tbert_cuda_head_free(g);
        return st;
    }
    *out = g;
    return TBERT_OK;
}

/* Logits of n rows already in g->x into g->z (with bias); hidden activations kept in g->a / g->h. mask: device
 * dropout factors or NULL. */
static tbert_status forward_device(tbert_cuda_head *g, int n, const float *mask, tbert_error *err) {
    const float *last_in = g->x;
    if (g->Hd > 0) {
        TBERT_CUDA_CHECK(err, tbert_cuda_linear(g->blas, TBERT_CUDA_GEMM_FP32, g->a, g->x, g->params + g->off_w1, n, g->D, g->Hd));
        TBERT_CUDA_CHECK(err, tbert_cuda_head_bias_gelu(g->a, g->h, g->params + g->off_b1, n, g->Hd, g->s));
        if (mask) TBERT_CUDA_CHECK(err, tbert_cuda_mul(g->h, mask, (size_t)n * g->Hd, g->s));
        last_in = g->h;
    } else if (mask) {
        TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->h, g->x, (size_t)n * g->D * sizeof(float), cudaMemcpyDeviceToDevice, g->s));
        TBERT_CUDA_CHECK(err, tbert_cuda_mul(g->h, mask, (size_t)n * g->D, g->s));
        last_in = g->h;
    }
    TBERT_CUDA_CHECK(err, tbert_cuda_linear(g->blas, TBERT_CUDA_GEMM_FP32, g->z, last_in, g->params + g->off_w2, n, g->K, g->O));
    return TBERT_OK;
}

tbert_status tbert_cuda_head_forward(tbert_cuda_head *g, int n, const float *x, float *z, tbert_error *err) {
    TBERT_CUDA_CHECK(err, cudaSetDevice(g->device));
    for (int r0 = 0; r0 < n; r0 += g->max_n) {
        int rows = n - r0 < g->max_n ? n - r0 : g->max_n;
        TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->x, x + (size_t)r0 * g->D, (size_t)rows * g->D * sizeof(float),
                                              cudaMemcpyHostToDevice, g->s));
        tbert_status st = forward_device(g, rows, NULL, err);
        if (st != TBERT_OK) return st;
        TBERT_CUDA_CHECK(err, tbert_cuda_bias_add(g->z, g->params + g->off_b2, TBERT_CUDA_F32, rows, g->O, g->s));
        TBERT_CUDA_CHECK(err, cudaMemcpyAsync(z + (size_t)r0 * g->O, g->z, (size_t)rows * g->O * sizeof(float),
                                              cudaMemcpyDeviceToHost, g->s));
        TBERT_CUDA_CHECK(err, cudaStreamSynchronize(g->s));
    }
    return TBERT_OK;
}

tbert_status tbert_cuda_head_train_step(tbert_cuda_head *g, tbert_adam *a, int n, const float *x, const int *y,
                                        const float *class_weight, const float *mask, double *loss, tbert_error *err) {
    if (n < 1 || n > g->max_n) return tbert_fail(err, TBERT_E_ARG, "CUDA head: batch of %d rows outside [1, %d]", n, g->max_n);
    if (a->n != g->n_params) return tbert_fail(err, TBERT_E_ARG, "CUDA head: Adam state does not fit the head");
    for (int i = 0; i < n; i++)
        if (y[i] < 0 || y[i] >= g->cfg.n_classes)
            return tbert_fail(err, TBERT_E_ARG, "head: class index %d of row %d out of range", y[i], i);
    TBERT_CUDA_CHECK(err, cudaSetDevice(g->device));
    cudaStream_t s = g->s;
    TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->x, x, (size_t)n * g->D * sizeof(float), cudaMemcpyHostToDevice, s));
    TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->y, y, (size_t)n * sizeof(int32_t), cudaMemcpyHostToDevice, s));
    if (class_weight)
        TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->cw, class_weight, (size_t)g->cfg.n_classes * sizeof(float),
                                              cudaMemcpyHostToDevice, s));
    if (mask)
        TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->mask, mask, (size_t)n * g->K * sizeof(float), cudaMemcpyHostToDevice, s));
    const float *dmask = mask ? g->mask : NULL;
    tbert_status st = forward_device(g, n, dmask, err);
    if (st != TBERT_OK) return st;
    TBERT_CUDA_CHECK(err, tbert_cuda_head_logits_loss(g->z, g->dz, g->row_loss, g->params + g->off_b2, g->y,
                                                      class_weight ? g->cw : NULL, g->cfg.binary, g->cfg.positive, n,
                                                      g->O, g->cfg.n_classes, s));
    TBERT_CUDA_CHECK(err, tbert_cuda_sum_f64(g->loss_sum, g->row_loss, n, s));
    /* backward: the last layer's input is h (MLP, or the dropped-out features) or x */
    const float *last_in = (g->Hd > 0 || mask) ? g->h : g->x;
    TBERT_CUDA_CHECK(err, tbert_cuda_gemm_dw(g->blas, g->grad + g->off_w2, g->dz, last_in, n, g->K, g->O));
    TBERT_CUDA_CHECK(err, tbert_cuda_bias_grad(g->grad + g->off_b2, g->dz, n, g->O, s));
    if (g->Hd > 0) {
        TBERT_CUDA_CHECK(err, tbert_cuda_gemm_dx(g->blas, g->dh, g->dz, g->params + g->off_w2, n, g->Hd, g->O));
        TBERT_CUDA_CHECK(err, tbert_cuda_gelu_backward(g->dh, g->dh, g->a, dmask, (size_t)n * g->Hd, s));
        TBERT_CUDA_CHECK(err, tbert_cuda_gemm_dw(g->blas, g->grad + g->off_w1, g->dh, g->x, n, g->D, g->Hd));
        TBERT_CUDA_CHECK(err, tbert_cuda_bias_grad(g->grad + g->off_b1, g->dh, n, g->Hd, s));
    }
    /* AdamW: the scalars exactly as tbert_adam_step computes them */
    a->step++;
    double bc1 = 1.0 - pow(a->beta1, (double)a->step), bc2 = 1.0 - pow(a->beta2, (double)a->step);
    float decay = a->weight_decay != 0.0 ? (float)(1.0 - a->lr * a->weight_decay) : 1.0f;
    TBERT_CUDA_CHECK(err, tbert_cuda_adamw(g->params, g->m, g->v, g->grad, g->n_params, (float)(1.0 - a->beta1),
                                           (float)a->beta2, (float)(1.0 - a->beta2), (float)a->eps, decay,
                                           (float)(a->lr / bc1), (float)sqrt(bc2), s));
    double total = 0.0;
    TBERT_CUDA_CHECK(err, cudaMemcpyAsync(&total, g->loss_sum, sizeof total, cudaMemcpyDeviceToHost, s));
    TBERT_CUDA_CHECK(err, cudaStreamSynchronize(s));
    if (loss) *loss = total / n;
    return TBERT_OK;
}

tbert_status tbert_cuda_head_download(tbert_cuda_head *g, tbert_head *h, tbert_adam *a, tbert_error *err) {
    if (h->n_params != g->n_params) return tbert_fail(err, TBERT_E_ARG, "CUDA head: download into a different head");
    TBERT_CUDA_CHECK(err, cudaSetDevice(g->device));
    TBERT_CUDA_CHECK(err, cudaStreamSynchronize(g->s));
    TBERT_CUDA_CHECK(err, cudaMemcpy(h->params, g->params, g->n_params * sizeof(float), cudaMemcpyDeviceToHost));
    if (a && a->m && a->v && a->n == g->n_params) {
        TBERT_CUDA_CHECK(err, cudaMemcpy(a->m, g->m, g->n_params * sizeof(float), cudaMemcpyDeviceToHost));
        TBERT_CUDA_CHECK(err, cudaMemcpy(a->v, g->v, g->n_params * sizeof(float), cudaMemcpyDeviceToHost));
    }
    return TBERT_OK;
}

tbert_status tbert_cuda_head_last_grad(tbert_cuda_head *g, float *grad, tbert_error *err) {
    TBERT_CUDA_CHECK(err, cudaSetDevice(g->device));
    TBERT_CUDA_CHECK(err, cudaStreamSynchronize(g->s));
    TBERT_CUDA_CHECK(err, cudaMemcpy(grad, g->grad, g->n_params * sizeof(float), cudaMemcpyDeviceToHost));
    return TBERT_OK;
}
