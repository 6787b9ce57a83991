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
    float *x, *a, *h, *z, *dz, *dh, *mask, *cw; /* x, and h and mask of a linear head (max_n x D): dense calls only */
    int32_t *y;
    double *row_loss, *loss_sum;
    /* sparse rows: the batch on the device (dense block, CSR, CSC) and its host staging */
    struct {
        float *dense;                  /* max_n x dd */
        int32_t *indptr;               /* max_n + 1 */
        int32_t *idx, *colptr, *ccol, *crow; /* cap_nnz each (colptr cap_nnz + 1) */
        float *val, *cval;             /* cap_nnz */
        size_t cap_dense, cap_nnz;     /* in elements */
        int32_t *h_indptr, *h_colptr, *h_ccol, *h_crow, *h_fill, *h_slot; /* host; h_slot: sparse_dim, -1 = absent */
        float *h_cval;
        size_t h_cap_nnz, h_cap_slot;
        int n, U;                      /* rows and present columns of the batch on the device */
        size_t dd, nnz;
    } r;
};

void tbert_cuda_head_free(tbert_cuda_head *g) {
    if (!g) return;
    cudaSetDevice(g->device);
    if (g->s) cudaStreamSynchronize(g->s);
    void *bufs[] = {g->params, g->grad, g->m, g->v, g->x, g->a, g->h, g->z, g->dz, g->dh, g->mask, g->cw, g->y,
                    g->row_loss, g->loss_sum, g->r.dense, g->r.indptr, g->r.idx, g->r.colptr, g->r.ccol, g->r.crow,
                    g->r.val, g->r.cval};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        if (bufs[i]) cudaFree(bufs[i]);
    void *host[] = {g->r.h_indptr, g->r.h_colptr, g->r.h_ccol, g->r.h_crow, g->r.h_fill, g->r.h_slot, g->r.h_cval};
    for (size_t i = 0; i < sizeof host / sizeof *host; i++) free(host[i]);
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
    ALLOC(g->a, N * (g->Hd ? g->Hd : 1), sizeof(float));
    if (g->Hd > 0) { /* a linear head's h and mask are max_n x D: made by the first dense call (ensure_dense) */
        ALLOC(g->h, N * g->K, sizeof(float));
        ALLOC(g->mask, N * g->K, sizeof(float));
    }
    ALLOC(g->dh, N * (g->Hd ? g->Hd : 1), sizeof(float));
    ALLOC(g->z, N * g->O, sizeof(float));
    ALLOC(g->dz, N * g->O, sizeof(float));
    ALLOC(g->r.indptr, N + 1, sizeof(int32_t));
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

/* The dense calls' max_n x D buffers (x; a linear head's h and mask), made on first use: a head trained on rows
 * never holds a dense batch on the device. */
static tbert_status ensure_dense(tbert_cuda_head *g, tbert_error *err) {
    const size_t N = (size_t)g->max_n;
    tbert_status st;
#define ALLOC(ptr, n, size)                                                                                        \
    if (!(ptr) && (st = dev_alloc((void **)&(ptr), (n), (size), err)) != TBERT_OK) return st
    ALLOC(g->x, N * g->D, sizeof(float));
    ALLOC(g->h, N * g->K, sizeof(float));
    ALLOC(g->mask, N * g->K, sizeof(float));
#undef ALLOC
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
    tbert_status st0 = ensure_dense(g, err);
    if (st0 != TBERT_OK) return st0;
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

/* The end of a training step (dense or rows): one AdamW update with the scalars exactly as tbert_adam_step computes
 * them, then the loss (and the logits z, n x O, when z != NULL) to the host. */
static tbert_status adamw_finish(tbert_cuda_head *g, tbert_adam *a, int n, float *z, double *loss, tbert_error *err) {
    cudaStream_t s = g->s;
    a->step++;
    double bc1 = 1.0 - pow(a->beta1, (double)a->step), bc2 = 1.0 - pow(a->beta2, (double)a->step);
    float decay = a->weight_decay != 0.0 ? (float)(1.0 - a->lr * a->weight_decay) : 1.0f;
    TBERT_CUDA_CHECK(err, tbert_cuda_adamw(g->params, g->m, g->v, g->grad, g->n_params, (float)(1.0 - a->beta1),
                                           (float)a->beta2, (float)(1.0 - a->beta2), (float)a->eps, decay,
                                           (float)(a->lr / bc1), (float)sqrt(bc2), s));
    double total = 0.0;
    TBERT_CUDA_CHECK(err, cudaMemcpyAsync(&total, g->loss_sum, sizeof total, cudaMemcpyDeviceToHost, s));
    if (z) TBERT_CUDA_CHECK(err, cudaMemcpyAsync(z, g->z, (size_t)n * g->O * sizeof(float), cudaMemcpyDeviceToHost, s));
    TBERT_CUDA_CHECK(err, cudaStreamSynchronize(s));
    if (loss) *loss = total / n;
    return TBERT_OK;
}

/* Labels and batch size of a training step, checked before anything runs. */
static tbert_status check_step(const tbert_cuda_head *g, const tbert_adam *a, int n, const int *y, tbert_error *err) {
    if (n < 1 || n > g->max_n) return tbert_fail(err, TBERT_E_ARG, "CUDA head: batch of %d rows outside [1, %d]", n, g->max_n);
    if (a->n != g->n_params) return tbert_fail(err, TBERT_E_ARG, "CUDA head: Adam state does not fit the head");
    for (int i = 0; i < n; i++)
        if (y[i] < 0 || y[i] >= g->cfg.n_classes)
            return tbert_fail(err, TBERT_E_ARG, "head: class index %d of row %d out of range", y[i], i);
    return TBERT_OK;
}

tbert_status tbert_cuda_head_train_step(tbert_cuda_head *g, tbert_adam *a, int n, const float *x, const int *y,
                                        const float *class_weight, const float *mask, double *loss, tbert_error *err) {
    tbert_status st0 = check_step(g, a, n, y, err);
    if (st0 != TBERT_OK) return st0;
    TBERT_CUDA_CHECK(err, cudaSetDevice(g->device));
    st0 = ensure_dense(g, err);
    if (st0 != TBERT_OK) return st0;
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
    return adamw_finish(g, a, n, NULL, loss, err);
}

/* ---- sparse rows ---- */

/* Device workspace for a batch of nnz entries and a dense block of dd columns (grows, never shrinks; the stream is
 * drained first: cudaFree does not wait for queued work that still reads the old blocks). */
static tbert_status rows_reserve(tbert_cuda_head *g, size_t dd, size_t nnz, tbert_error *err) {
    size_t dense = (size_t)g->max_n * dd;
    if (dense <= g->r.cap_dense && nnz <= g->r.cap_nnz) return TBERT_OK;
    TBERT_CUDA_CHECK(err, cudaStreamSynchronize(g->s));
    tbert_status st;
    if (dense > g->r.cap_dense) {
        if (g->r.dense) TBERT_CUDA_CHECK(err, cudaFree(g->r.dense));
        g->r.dense = NULL;
        g->r.cap_dense = 0;
        if ((st = dev_alloc((void **)&g->r.dense, dense, sizeof(float), err)) != TBERT_OK) return st;
        g->r.cap_dense = dense;
    }
    if (nnz > g->r.cap_nnz) {
        size_t cap = g->r.cap_nnz + g->r.cap_nnz / 2; /* amortised growth: batches' nnz vary */
        if (cap < nnz) cap = nnz;
        if (cap < 1024) cap = 1024;
        if (cap > (size_t)INT32_MAX - 1) cap = (size_t)INT32_MAX - 1;
        void **bufs[] = {(void **)&g->r.idx, (void **)&g->r.colptr, (void **)&g->r.ccol, (void **)&g->r.crow,
                         (void **)&g->r.val, (void **)&g->r.cval};
        for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) {
            if (*bufs[i]) TBERT_CUDA_CHECK(err, cudaFree(*bufs[i]));
            *bufs[i] = NULL;
        }
        g->r.cap_nnz = 0;
        for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
            if ((st = dev_alloc(bufs[i], cap + 1, sizeof(int32_t), err)) != TBERT_OK) return st;
        g->r.cap_nnz = cap;
    }
    return TBERT_OK;
}

/* Host staging: indptr (max_n + 1), the CSC of nnz entries and the column map over sparse_dim columns. */
static tbert_status rows_host_reserve(tbert_cuda_head *g, size_t nnz, size_t sparse_dim, bool csc, tbert_error *err) {
    if (!g->r.h_indptr) {
        g->r.h_indptr = tbert_malloc_array((size_t)g->max_n + 1, sizeof(int32_t));
        if (!g->r.h_indptr) return tbert_fail(err, TBERT_E_NOMEM, "CUDA head: out of host memory");
    }
    if (!csc) return TBERT_OK;
    if (nnz > g->r.h_cap_nnz || !g->r.h_colptr) {
        size_t cap = nnz + nnz / 2 > 1024 ? nnz + nnz / 2 : 1024;
        free(g->r.h_colptr), free(g->r.h_ccol), free(g->r.h_crow), free(g->r.h_fill), free(g->r.h_cval);
        g->r.h_colptr = tbert_malloc_array(cap + 1, sizeof(int32_t));
        g->r.h_ccol = tbert_malloc_array(cap, sizeof(int32_t));
        g->r.h_crow = tbert_malloc_array(cap, sizeof(int32_t));
        g->r.h_fill = tbert_malloc_array(cap, sizeof(int32_t));
        g->r.h_cval = tbert_malloc_array(cap, sizeof(float));
        g->r.h_cap_nnz = 0;
        if (!g->r.h_colptr || !g->r.h_ccol || !g->r.h_crow || !g->r.h_fill || !g->r.h_cval)
            return tbert_fail(err, TBERT_E_NOMEM, "CUDA head: out of host memory for a batch of %zu entries", nnz);
        g->r.h_cap_nnz = cap;
    }
    if (sparse_dim > g->r.h_cap_slot) {
        free(g->r.h_slot);
        g->r.h_cap_slot = 0;
        g->r.h_slot = tbert_malloc_array(sparse_dim, sizeof(int32_t));
        if (!g->r.h_slot) return tbert_fail(err, TBERT_E_NOMEM, "CUDA head: out of host memory for %zu columns", sparse_dim);
        for (size_t j = 0; j < sparse_dim; j++) g->r.h_slot[j] = -1;
        g->r.h_cap_slot = sparse_dim;
    }
    return TBERT_OK;
}

/* Rows r0 .. r0+n-1 of x onto the device (dense block, indptr rebased to int32, indices, values), and with csc
 * their transpose: the columns present in order of first appearance (ccol, U of them), colptr, and per column its
 * entries' rows and values in row order (a counting sort; h_slot maps a column to its slot and is reset after). */
static tbert_status rows_upload(tbert_cuda_head *g, const tbert_rows *x, int r0, int n, bool csc, tbert_error *err) {
    const size_t dd = x->dense_dim, sd = x->sparse_dim;
    if (dd + sd != (size_t)g->D)
        return tbert_fail(err, TBERT_E_ARG, "CUDA head: rows of %zu features for a head of %d", dd + sd, g->D);
    if (n < 1 || n > g->max_n) return tbert_fail(err, TBERT_E_ARG, "CUDA head: batch of %d rows outside [1, %d]", n, g->max_n);
    if (sd > (size_t)INT32_MAX) return tbert_fail(err, TBERT_E_ARG, "CUDA head: sparse width %zu over 2^31", sd);
    const int64_t base = x->indptr[r0];
    for (int i = 0; i < n; i++)
        if (x->indptr[r0 + i + 1] < x->indptr[r0 + i])
            return tbert_fail(err, TBERT_E_ARG, "CUDA head: row %d's CSR offsets decrease", r0 + i);
    const int64_t nnz64 = x->indptr[r0 + n] - base;
    if (nnz64 > INT32_MAX - 1)
        return tbert_fail(err, TBERT_E_ARG, "CUDA head: a batch of %lld entries (at most 2^31 - 2)", (long long)nnz64);
    const size_t nnz = (size_t)nnz64;
    tbert_status st = rows_host_reserve(g, nnz, sd, csc, err);
    if (st == TBERT_OK) st = rows_reserve(g, dd, nnz, err);
    if (st != TBERT_OK) return st;
    const int32_t *idx = x->indices + base;
    const float *val = x->values + base;
    for (size_t e = 0; e < nnz; e++)
        if (idx[e] < 0 || (size_t)idx[e] >= sd)
            return tbert_fail(err, TBERT_E_ARG, "CUDA head: sparse column %d outside [0, %zu)", idx[e], sd);
    int32_t *ip = g->r.h_indptr;
    for (int i = 0; i <= n; i++) ip[i] = (int32_t)(x->indptr[r0 + i] - base);
    cudaStream_t s = g->s;
    if (dd > 0)
        TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->r.dense, x->dense + (size_t)r0 * dd, (size_t)n * dd * sizeof(float),
                                              cudaMemcpyHostToDevice, s));
    TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->r.indptr, ip, ((size_t)n + 1) * sizeof(int32_t), cudaMemcpyHostToDevice, s));
    if (nnz > 0) {
        TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->r.idx, idx, nnz * sizeof(int32_t), cudaMemcpyHostToDevice, s));
        TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->r.val, val, nnz * sizeof(float), cudaMemcpyHostToDevice, s));
    }
    int U = 0;
    if (csc && nnz > 0) {
        int32_t *slot = g->r.h_slot, *cnt = g->r.h_fill, *colptr = g->r.h_colptr, *ccol = g->r.h_ccol;
        for (size_t e = 0; e < nnz; e++) {
            int32_t c = idx[e];
            if (slot[c] < 0) {
                slot[c] = U;
                ccol[U] = c;
                cnt[U++] = 0;
            }
            cnt[slot[c]]++;
        }
        colptr[0] = 0;
        for (int u = 0; u < U; u++) {
            colptr[u + 1] = colptr[u] + cnt[u];
            cnt[u] = colptr[u]; /* now the next free position of column u */
        }
        for (int i = 0; i < n; i++) /* rows ascending: each column's entries end up in row order */
            for (int32_t e = ip[i]; e < ip[i + 1]; e++) {
                int32_t p = cnt[slot[idx[e]]]++;
                g->r.h_crow[p] = i;
                g->r.h_cval[p] = val[e];
            }
        for (int u = 0; u < U; u++) slot[ccol[u]] = -1;
        TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->r.colptr, colptr, ((size_t)U + 1) * sizeof(int32_t),
                                              cudaMemcpyHostToDevice, s));
        TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->r.ccol, ccol, (size_t)U * sizeof(int32_t), cudaMemcpyHostToDevice, s));
        TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->r.crow, g->r.h_crow, nnz * sizeof(int32_t), cudaMemcpyHostToDevice, s));
        TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->r.cval, g->r.h_cval, nnz * sizeof(float), cudaMemcpyHostToDevice, s));
    }
    g->r.n = n;
    g->r.dd = dd;
    g->r.nnz = nnz;
    g->r.U = U;
    return TBERT_OK;
}

/* y (n x out, device) = rows @ W^T for the batch on the device (no bias): GEMM over the dense block, then the
 * CSR part (which writes y when there is no dense block). */
static tbert_status rows_linear(tbert_cuda_head *g, float *y, const float *W, int out, tbert_error *err) {
    const int n = g->r.n, dd = (int)g->r.dd;
    if (dd > 0) TBERT_CUDA_CHECK(err, tbert_cuda_gemm_rows_fwd(g->blas, y, g->r.dense, W, n, dd, g->D, out));
    if (g->r.nnz > 0 || dd == 0)
        TBERT_CUDA_CHECK(err, tbert_cuda_csr_linear(y, g->r.indptr, g->r.idx, g->r.val, W + dd, (size_t)g->D, n, out,
                                                    dd > 0, g->s));
    return TBERT_OK;
}

/* dW (out x D, device) = dy^T @ rows: zeroed, GEMM into the dense columns, scatter into the columns present. */
static tbert_status rows_dw(tbert_cuda_head *g, float *dW, const float *dy, int out, tbert_error *err) {
    const int n = g->r.n, dd = (int)g->r.dd;
    if (dd < g->D) TBERT_CUDA_CHECK(err, cudaMemsetAsync(dW, 0, (size_t)out * g->D * sizeof(float), g->s));
    if (dd > 0) TBERT_CUDA_CHECK(err, tbert_cuda_gemm_rows_dw(g->blas, dW, dy, g->r.dense, n, dd, g->D, out));
    if (g->r.U > 0)
        TBERT_CUDA_CHECK(err, tbert_cuda_csc_scatter_dw(dW + dd, (size_t)g->D, g->r.colptr, g->r.ccol, g->r.crow,
                                                        g->r.cval, dy, g->r.U, out, g->s));
    return TBERT_OK;
}

/* Logits (no bias) of the batch on the device into g->z; an MLP keeps a and h (mask: device factors or NULL). */
static tbert_status rows_forward_device(tbert_cuda_head *g, const float *mask, tbert_error *err) {
    const int n = g->r.n;
    if (g->Hd == 0) return rows_linear(g, g->z, g->params + g->off_w2, g->O, err);
    tbert_status st = rows_linear(g, g->a, g->params + g->off_w1, g->Hd, err);
    if (st != TBERT_OK) return st;
    TBERT_CUDA_CHECK(err, tbert_cuda_head_bias_gelu(g->a, g->h, g->params + g->off_b1, n, g->Hd, g->s));
    if (mask) TBERT_CUDA_CHECK(err, tbert_cuda_mul(g->h, mask, (size_t)n * g->Hd, g->s));
    TBERT_CUDA_CHECK(err, tbert_cuda_linear(g->blas, TBERT_CUDA_GEMM_FP32, g->z, g->h, g->params + g->off_w2, n, g->Hd,
                                            g->O));
    return TBERT_OK;
}

tbert_status tbert_cuda_head_forward_rows(tbert_cuda_head *g, const tbert_rows *x, float *z, tbert_error *err) {
    if ((size_t)x->dense_dim + x->sparse_dim != (size_t)g->D)
        return tbert_fail(err, TBERT_E_ARG, "CUDA head: rows of %zu features for a head of %d",
                          x->dense_dim + x->sparse_dim, g->D);
    TBERT_CUDA_CHECK(err, cudaSetDevice(g->device));
    for (int r0 = 0; r0 < x->n; r0 += g->max_n) {
        int rows = x->n - r0 < g->max_n ? x->n - r0 : g->max_n;
        tbert_status st = rows_upload(g, x, r0, rows, false, err);
        if (st == TBERT_OK) st = rows_forward_device(g, NULL, err);
        if (st != TBERT_OK) return st;
        TBERT_CUDA_CHECK(err, tbert_cuda_bias_add(g->z, g->params + g->off_b2, TBERT_CUDA_F32, rows, g->O, g->s));
        TBERT_CUDA_CHECK(err, cudaMemcpyAsync(z + (size_t)r0 * g->O, g->z, (size_t)rows * g->O * sizeof(float),
                                              cudaMemcpyDeviceToHost, g->s));
        TBERT_CUDA_CHECK(err, cudaStreamSynchronize(g->s));
    }
    return TBERT_OK;
}

tbert_status tbert_cuda_head_train_step_rows(tbert_cuda_head *g, tbert_adam *a, const tbert_rows *x, const int *y,
                                             const float *class_weight, const float *mask, double *loss, float *z,
                                             tbert_error *err) {
    const int n = x->n;
    tbert_status st = check_step(g, a, n, y, err);
    if (st != TBERT_OK) return st;
    if (mask && g->Hd == 0)
        return tbert_fail(err, TBERT_E_ARG,
                          "CUDA head: a linear head's dropout applies to its rows (tbert_cuda_head_dropout_rows), not a mask");
    TBERT_CUDA_CHECK(err, cudaSetDevice(g->device));
    cudaStream_t s = g->s;
    st = rows_upload(g, x, 0, n, true, err);
    if (st != TBERT_OK) return st;
    TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->y, y, (size_t)n * sizeof(int32_t), cudaMemcpyHostToDevice, s));
    if (class_weight)
        TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->cw, class_weight, (size_t)g->cfg.n_classes * sizeof(float),
                                              cudaMemcpyHostToDevice, s));
    if (mask)
        TBERT_CUDA_CHECK(err, cudaMemcpyAsync(g->mask, mask, (size_t)n * g->Hd * sizeof(float), cudaMemcpyHostToDevice, s));
    const float *dmask = mask ? g->mask : NULL;
    st = rows_forward_device(g, dmask, err);
    if (st != TBERT_OK) return st;
    TBERT_CUDA_CHECK(err, tbert_cuda_head_logits_loss(g->z, g->dz, g->row_loss, g->params + g->off_b2, g->y,
                                                      class_weight ? g->cw : NULL, g->cfg.binary, g->cfg.positive, n,
                                                      g->O, g->cfg.n_classes, s));
    TBERT_CUDA_CHECK(err, tbert_cuda_sum_f64(g->loss_sum, g->row_loss, n, s));
    if (g->Hd == 0) {
        st = rows_dw(g, g->grad + g->off_w2, g->dz, g->O, err);
        if (st != TBERT_OK) return st;
        TBERT_CUDA_CHECK(err, tbert_cuda_bias_grad(g->grad + g->off_b2, g->dz, n, g->O, s));
    } else {
        TBERT_CUDA_CHECK(err, tbert_cuda_gemm_dw(g->blas, g->grad + g->off_w2, g->dz, g->h, n, g->Hd, g->O));
        TBERT_CUDA_CHECK(err, tbert_cuda_bias_grad(g->grad + g->off_b2, g->dz, n, g->O, s));
        TBERT_CUDA_CHECK(err, tbert_cuda_gemm_dx(g->blas, g->dh, g->dz, g->params + g->off_w2, n, g->Hd, g->O));
        TBERT_CUDA_CHECK(err, tbert_cuda_gelu_backward(g->dh, g->dh, g->a, dmask, (size_t)n * g->Hd, s));
        st = rows_dw(g, g->grad + g->off_w1, g->dh, g->Hd, err);
        if (st != TBERT_OK) return st;
        TBERT_CUDA_CHECK(err, tbert_cuda_bias_grad(g->grad + g->off_b1, g->dh, n, g->Hd, s));
    }
    return adamw_finish(g, a, n, z, loss, err);
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
