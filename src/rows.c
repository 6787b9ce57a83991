/* Feature rows: a dense block + one CSR matrix over the sparse blocks (include/tbert/rows.h). */
#include "tbert/rows.h"

#include <stdlib.h>
#include <string.h>

tbert_status tbert_rows_init(tbert_rows *r, size_t dense_dim, int n_blocks, const size_t *block_widths, tbert_error *err) {
    memset(r, 0, sizeof *r);
    if (n_blocks < 0 || n_blocks > TBERT_ROWS_MAX_BLOCKS)
        return tbert_fail(err, TBERT_E_ARG, "rows: %d sparse blocks (at most %d)", n_blocks, TBERT_ROWS_MAX_BLOCKS);
    size_t s = 0;
    for (int b = 0; b < n_blocks; b++) {
        r->block_start[b] = s;
        if (!tbert_add_size(s, block_widths[b], &s) || s > (size_t)INT32_MAX)
            return tbert_fail(err, TBERT_E_ARG, "rows: sparse width too large");
    }
    if (dense_dim > ((size_t)1 << 28)) return tbert_fail(err, TBERT_E_ARG, "rows: dense width %zu too large", dense_dim);
    r->block_start[n_blocks] = s;
    r->n_blocks = n_blocks;
    r->dense_dim = dense_dim;
    r->sparse_dim = s;
    return TBERT_OK;
}

void tbert_rows_free(tbert_rows *r) {
    if (!r) return;
    free(r->dense);
    free(r->indptr);
    free(r->indices);
    free(r->values);
    r->dense = NULL;
    r->indptr = NULL;
    r->indices = NULL;
    r->values = NULL;
    r->n = 0;
    r->cap_rows = r->cap_nnz = 0;
}

void tbert_rows_clear(tbert_rows *r) { r->n = 0; }

size_t tbert_rows_dim(const tbert_rows *r) { return r->dense_dim + r->sparse_dim; }
size_t tbert_rows_nnz(const tbert_rows *r) { return r->indptr && r->n > 0 ? (size_t)r->indptr[r->n] : 0; }

static size_t grow(size_t cap, size_t need) {
    size_t c = cap ? cap : 16;
    while (c < need) c = c > SIZE_MAX / 2 ? need : c * 2;
    return c;
}

tbert_status tbert_rows_reserve(tbert_rows *r, size_t rows, size_t nnz, tbert_error *err) {
    size_t need_rows, need_nnz;
    if (!tbert_add_size((size_t)r->n, rows, &need_rows) || need_rows >= (size_t)INT32_MAX ||
        !tbert_add_size(tbert_rows_nnz(r), nnz, &need_nnz))
        return tbert_fail(err, TBERT_E_ARG, "rows: too many rows or entries");
    if (need_rows > r->cap_rows || !r->indptr) {
        size_t c = grow(r->cap_rows, need_rows);
        int64_t *ip = tbert_realloc_array(r->indptr, c + 1, sizeof *ip);
        if (!ip) return tbert_fail(err, TBERT_E_NOMEM, "rows: out of memory for %zu rows", c);
        r->indptr = ip;
        if (r->n == 0) ip[0] = 0;
        if (r->dense_dim) {
            float *d = tbert_realloc_array(r->dense, c, r->dense_dim * sizeof(float));
            if (!d) return tbert_fail(err, TBERT_E_NOMEM, "rows: out of memory for %zu rows of %zu floats", c, r->dense_dim);
            r->dense = d;
        }
        r->cap_rows = c;
    }
    if (need_nnz > r->cap_nnz) {
        size_t c = grow(r->cap_nnz, need_nnz);
        int32_t *ix = tbert_realloc_array(r->indices, c, sizeof *ix);
        if (ix) r->indices = ix;
        float *v = ix ? tbert_realloc_array(r->values, c, sizeof *v) : NULL;
        if (!v) return tbert_fail(err, TBERT_E_NOMEM, "rows: out of memory for %zu sparse entries", c);
        r->values = v;
        r->cap_nnz = c;
    }
    return TBERT_OK;
}

tbert_status tbert_rows_append(tbert_rows *r, const float *dense, size_t k, const int32_t *idx, const float *val,
                               tbert_error *err) {
    for (size_t j = 0; j < k; j++) {
        if (idx[j] < 0 || (size_t)idx[j] >= r->sparse_dim || (j > 0 && idx[j] <= idx[j - 1]))
            return tbert_fail(err, TBERT_E_ARG, "rows: sparse column %d (entry %zu) out of order or range", idx[j], j);
        if (val[j] == 0.0f) return tbert_fail(err, TBERT_E_ARG, "rows: sparse entry %zu holds a zero", j);
    }
    tbert_status st = tbert_rows_reserve(r, 1, k, err);
    if (st) return st;
    size_t at = tbert_rows_nnz(r);
    if (r->dense_dim) {
        float *d = r->dense + (size_t)r->n * r->dense_dim;
        if (dense) memcpy(d, dense, r->dense_dim * sizeof(float));
        else memset(d, 0, r->dense_dim * sizeof(float));
    }
    if (k) {
        memcpy(r->indices + at, idx, k * sizeof *idx);
        memcpy(r->values + at, val, k * sizeof *val);
    }
    r->indptr[r->n + 1] = (int64_t)(at + k);
    r->n++;
    return TBERT_OK;
}

tbert_status tbert_rows_append_row(tbert_rows *dst, const tbert_rows *src, int i, tbert_error *err) {
    if (dst->dense_dim != src->dense_dim || dst->sparse_dim != src->sparse_dim)
        return tbert_fail(err, TBERT_E_ARG, "rows: shapes differ (%zu+%zu against %zu+%zu)", dst->dense_dim, dst->sparse_dim,
                          src->dense_dim, src->sparse_dim);
    if (i < 0 || i >= src->n) return tbert_fail(err, TBERT_E_ARG, "rows: row %d of %d", i, src->n);
    int64_t a = src->indptr[i], b = src->indptr[i + 1];
    tbert_status st = tbert_rows_reserve(dst, 1, (size_t)(b - a), err);
    if (st) return st;
    size_t at = tbert_rows_nnz(dst), k = (size_t)(b - a);
    if (dst->dense_dim)
        memcpy(dst->dense + (size_t)dst->n * dst->dense_dim, src->dense + (size_t)i * src->dense_dim, dst->dense_dim * sizeof(float));
    if (k) {
        memcpy(dst->indices + at, src->indices + a, k * sizeof(int32_t));
        memcpy(dst->values + at, src->values + a, k * sizeof(float));
    }
    dst->indptr[dst->n + 1] = (int64_t)(at + k);
    dst->n++;
    return TBERT_OK;
}

tbert_status tbert_rows_gather(tbert_rows *dst, const tbert_rows *src, const int *idx, int n, tbert_error *err) {
    size_t nnz = 0;
    for (int i = 0; i < n; i++) {
        if (idx[i] < 0 || idx[i] >= src->n) return tbert_fail(err, TBERT_E_ARG, "rows: row %d of %d", idx[i], src->n);
        nnz += (size_t)(src->indptr[idx[i] + 1] - src->indptr[idx[i]]);
    }
    tbert_status st = tbert_rows_reserve(dst, (size_t)n, nnz, err);
    for (int i = 0; i < n && !st; i++) st = tbert_rows_append_row(dst, src, idx[i], err);
    return st;
}

void tbert_rows_densify(const tbert_rows *r, int i0, int n, float *out, size_t stride) {
    size_t D = r->dense_dim, dim = tbert_rows_dim(r);
    for (int i = 0; i < n; i++) {
        float *o = out + (size_t)i * stride;
        int row = i0 + i;
        if (D) memcpy(o, r->dense + (size_t)row * D, D * sizeof(float));
        memset(o + D, 0, (dim - D) * sizeof(float));
        for (int64_t e = r->indptr[row]; e < r->indptr[row + 1]; e++) o[D + (size_t)r->indices[e]] = r->values[e];
    }
}

tbert_status tbert_rows_append_dense(tbert_rows *r, int n, const float *x, tbert_error *err) {
    size_t D = r->dense_dim, dim = tbert_rows_dim(r);
    for (int i = 0; i < n; i++) {
        const float *row = x + (size_t)i * dim;
        size_t k = 0;
        for (size_t j = D; j < dim; j++) k += row[j] != 0.0f;
        tbert_status st = tbert_rows_reserve(r, 1, k, err);
        if (st) return st;
        size_t at = tbert_rows_nnz(r);
        if (D) memcpy(r->dense + (size_t)r->n * D, row, D * sizeof(float));
        for (size_t j = D; j < dim; j++)
            if (row[j] != 0.0f) {
                r->indices[at] = (int32_t)(j - D);
                r->values[at++] = row[j];
            }
        r->indptr[r->n + 1] = (int64_t)at;
        r->n++;
    }
    return TBERT_OK;
}

size_t tbert_rows_bytes(const tbert_rows *r) {
    size_t b = 0;
    if (r->indptr) b += (r->cap_rows + 1) * sizeof(int64_t) + r->cap_rows * r->dense_dim * sizeof(float);
    b += r->cap_nnz * (sizeof(int32_t) + sizeof(float));
    return b;
}
