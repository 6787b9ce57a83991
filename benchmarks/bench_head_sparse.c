/* Head training time per epoch, sparse rows against the dense feature matrix, on the same features.
 *
 * usage: bench_head_sparse ROWS.npz [--epochs E] [--batch B] [--hidden H] [--lr LR]
 * ROWS.npz: written by `tbert train --export-features F.npz` (src/npz.c: data, indices, indptr, shape, dense,
 * labels). Both sides run the loop of src/train.c: shuffle (same seed), gather a batch, forward, loss,
 * backward, AdamW over the full parameter vector; dense gathers rows of the densified n x dim matrix (what
 * train did before the row format), sparse gathers rows (tbert_rows_gather) and uses tbert_head_*_rows.
 * Epochs alternate dense, sparse, dense, ... so that the machine's load hits both alike. Prints per side the
 * median wall and CPU (user + sys, this process) seconds per epoch, the ratio, and the relative distance of
 * the two sides' final parameters (they see the same batches: it must be small). Exit 1 when it is not. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tbert/head.h"
#include "tbert/rows.h"

static double cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}
static double wall_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ---- a reader for the uncompressed .npz that src/npz.c writes ---- */
typedef struct {
    char name[64];
    const unsigned char *data; /* after the .npy header */
    size_t len;
} member;

static unsigned rd16(const unsigned char *p) { return (unsigned)p[0] | (unsigned)p[1] << 8; }
static uint32_t rd32(const unsigned char *p) { return rd16(p) | (uint32_t)rd16(p + 2) << 16; }

static int read_npz(const char *path, unsigned char **buf, member *m, int max) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    *buf = malloc((size_t)sz);
    if (!*buf || fread(*buf, 1, (size_t)sz, f) != (size_t)sz) {
        fclose(f);
        return -1;
    }
    fclose(f);
    int k = 0;
    size_t off = 0;
    while (off + 30 <= (size_t)sz && rd32(*buf + off) == 0x04034b50 && k < max) {
        const unsigned char *h = *buf + off;
        if (rd16(h + 8) != 0) return -1; /* stored only */
        uint32_t size = rd32(h + 18);
        unsigned nl = rd16(h + 26), xl = rd16(h + 28);
        const unsigned char *d = h + 30 + nl + xl;
        snprintf(m[k].name, sizeof m[k].name, "%.*s", (int)nl, (const char *)h + 30);
        unsigned hl = rd16(d + 8);
        m[k].data = d + 10 + hl;
        m[k].len = size - 10 - hl;
        k++;
        off = (size_t)(d - *buf) + size;
    }
    return k;
}

static const member *find(const member *m, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(m[i].name, name)) return &m[i];
    fprintf(stderr, "bench_head_sparse: %s missing in the .npz\n", name);
    exit(2);
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct {
    tbert_head *h;
    tbert_adam adam;
    tbert_head_ws *ws;
    tbert_rng rng;
    float *z, *dz, *grad, *xb;
    int *yb, *idx;
    tbert_rows rb;
} side;

static void side_init(side *s, const tbert_head_config *cfg, int batch, size_t dim, const tbert_rows *shape, double lr, int n) {
    tbert_error err;
    if (tbert_head_create(cfg, &s->h, &err) || tbert_head_ws_create(cfg, batch, &s->ws, &err) ||
        tbert_adam_init(&s->adam, s->h->n_params, &err)) {
        fprintf(stderr, "bench_head_sparse: %s\n", err.msg);
        exit(2);
    }
    tbert_head_init(s->h, 42);
    s->adam.lr = lr;
    tbert_rng_seed(&s->rng, 42);
    int O = tbert_head_out_dim(cfg);
    s->z = malloc(sizeof(float) * (size_t)batch * (size_t)O);
    s->dz = malloc(sizeof(float) * (size_t)batch * (size_t)O);
    s->grad = malloc(sizeof(float) * s->h->n_params);
    s->xb = dim ? malloc(sizeof(float) * (size_t)batch * dim) : NULL;
    s->yb = malloc(sizeof(int) * (size_t)batch);
    s->idx = malloc(sizeof(int) * (size_t)n);
    for (int i = 0; i < n; i++) s->idx[i] = i;
    size_t w = shape->sparse_dim;
    tbert_rows_init(&s->rb, shape->dense_dim, 1, &w, NULL);
    if (!s->z || !s->dz || !s->grad || (dim && !s->xb) || !s->yb || !s->idx) {
        fprintf(stderr, "bench_head_sparse: out of memory\n");
        exit(2);
    }
}

/* one epoch; X dense (n x dim) or NULL for the sparse side */
static double epoch(side *s, const tbert_rows *rows, const float *X, size_t dim, const int *y, int n, int batch) {
    tbert_error err;
    const tbert_head_config *c = &s->h->cfg;
    tbert_rng_shuffle(&s->rng, s->idx, n);
    double lsum = 0;
    for (int i = 0; i < n; i += batch) {
        int m = n - i < batch ? n - i : batch;
        for (int k = 0; k < m; k++) s->yb[k] = y[s->idx[i + k]];
        tbert_status st;
        double l;
        if (X) {
            for (int k = 0; k < m; k++) memcpy(s->xb + (size_t)k * dim, X + (size_t)s->idx[i + k] * dim, dim * sizeof(float));
            st = tbert_head_forward(s->h, s->ws, m, s->xb, true, &s->rng, s->z, &err);
            if (!st) st = tbert_head_loss(c, m, s->z, s->yb, NULL, &l, s->dz, &err);
            if (!st) st = tbert_head_backward(s->h, s->ws, m, s->xb, s->dz, s->grad, &err);
        } else {
            tbert_rows_clear(&s->rb);
            st = tbert_rows_gather(&s->rb, rows, s->idx + i, m, &err);
            if (!st) st = tbert_head_forward_rows(s->h, s->ws, &s->rb, true, &s->rng, s->z, &err);
            if (!st) st = tbert_head_loss(c, m, s->z, s->yb, NULL, &l, s->dz, &err);
            if (!st) st = tbert_head_backward_rows(s->h, s->ws, &s->rb, s->dz, s->grad, &err);
        }
        if (st) {
            fprintf(stderr, "bench_head_sparse: %s\n", err.msg);
            exit(2);
        }
        tbert_adam_step(&s->adam, s->h->params, s->grad);
        lsum += l * m;
    }
    return lsum / n;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_head_sparse ROWS.npz [--epochs E] [--batch B] [--hidden H] [--lr LR]\n");
        return 2;
    }
    int epochs = 3, batch = 32, hidden = 0;
    double lr = 1e-2;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--epochs")) epochs = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--batch")) batch = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--hidden")) hidden = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--lr")) lr = atof(argv[i + 1]);
        else {
            fprintf(stderr, "bench_head_sparse: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    unsigned char *buf;
    member m[16];
    int nm = read_npz(argv[1], &buf, m, 16);
    if (nm <= 0) {
        fprintf(stderr, "bench_head_sparse: %s: not an .npz from tbert\n", argv[1]);
        return 2;
    }
    const int64_t *shape = (const int64_t *)find(m, nm, "shape.npy")->data;
    const member *dm = find(m, nm, "dense.npy"), *lm = find(m, nm, "labels.npy");
    int n = (int)shape[0];
    size_t sparse = (size_t)shape[1], dd = dm->len / sizeof(float) / (size_t)n;
    tbert_rows rows;
    tbert_error err;
    tbert_rows_init(&rows, dd, 1, &sparse, NULL);
    /* borrow the arrays (rows.h's layout is the .npz's) */
    rows.n = n;
    rows.dense = (float *)dm->data;
    rows.indptr = (int64_t *)find(m, nm, "indptr.npy")->data;
    rows.indices = (int32_t *)find(m, nm, "indices.npy")->data;
    rows.values = (float *)find(m, nm, "data.npy")->data;
    size_t dim = dd + sparse, nnz = (size_t)rows.indptr[n];
    int *y = malloc(sizeof(int) * (size_t)n);
    for (int i = 0; i < n; i++) y[i] = ((const int32_t *)lm->data)[i];
    float *X = malloc(sizeof(float) * (size_t)n * dim);
    if (!X || !y) {
        fprintf(stderr, "bench_head_sparse: out of memory for the dense matrix (%d x %zu)\n", n, dim);
        return 2;
    }
    tbert_rows_densify(&rows, 0, n, X, dim);
    printf("rows: %d x (%zu dense + %zu sparse), %.1f sparse entries per row; head hidden=%d (0: linear), batch %d, lr %g\n", n, dd,
           sparse, (double)nnz / n, hidden, batch, lr);
    tbert_head_config cfg = {.in_dim = (int)dim, .hidden = hidden, .n_classes = 2, .binary = true, .positive = 1};
    side sd, ss;
    side_init(&sd, &cfg, batch, dim, &rows, lr, n);
    side_init(&ss, &cfg, batch, 0, &rows, lr, n);
    double *tw[2], *tc[2], loss[2] = {0, 0};
    for (int k = 0; k < 2; k++) {
        tw[k] = malloc(sizeof(double) * (size_t)epochs);
        tc[k] = malloc(sizeof(double) * (size_t)epochs);
    }
    for (int e = 0; e < epochs; e++)
        for (int k = 0; k < 2; k++) {
            double w0 = wall_now(), c0 = cpu_now();
            loss[k] = k == 0 ? epoch(&sd, &rows, X, dim, y, n, batch) : epoch(&ss, &rows, NULL, 0, y, n, batch);
            tw[k][e] = wall_now() - w0;
            tc[k][e] = cpu_now() - c0;
            printf("epoch %d %-6s loss %.6f  wall %.3f s  cpu %.3f s\n", e + 1, k ? "sparse" : "dense", loss[k], tw[k][e], tc[k][e]);
        }
    double med_w[2], med_c[2];
    for (int k = 0; k < 2; k++) {
        qsort(tw[k], (size_t)epochs, sizeof(double), cmp_d);
        qsort(tc[k], (size_t)epochs, sizeof(double), cmp_d);
        med_w[k] = tw[k][epochs / 2];
        med_c[k] = tc[k][epochs / 2];
    }
    double dn = 0, rn = 0;
    for (size_t i = 0; i < sd.h->n_params; i++) {
        double d = (double)sd.h->params[i] - ss.h->params[i];
        dn += d * d;
        rn += (double)sd.h->params[i] * sd.h->params[i];
    }
    double rel = sqrt(dn / (rn > 0 ? rn : 1));
    printf("median per epoch: dense wall %.3f s cpu %.3f s | sparse wall %.3f s cpu %.3f s | speed-up wall %.1fx cpu %.1fx\n",
           med_w[0], med_c[0], med_w[1], med_c[1], med_w[0] / med_w[1], med_c[0] / med_c[1]);
    printf("final parameters: ||dense - sparse|| / ||dense|| = %.2e (same batches, sums in another order)\n", rel);
    (void)err;
    return rel < 1e-3 ? 0 : 1;
}
