/* Feature rows: what the featurizer produces, the store keeps, the head trains on and --export-features
 * writes (src/rows.c).
 *
 * A batch of n rows is
 *   dense:  n x dense_dim float32, row-major (the encoder's pooled block; always present, may be 0 wide)
 *   sparse: one CSR matrix n x sparse_dim over the concatenated sparse column space, scipy's layout:
 *           row i holds the entries indptr[i] .. indptr[i+1]-1 of (indices, values), column indices strictly
 *           ascending inside a row, values never 0.
 * The feature vector of row i in the old dense layout (recipe.h) is [dense row | sparse row densified]:
 * sparse column j is feature column dense_dim + j. The sparse space is the recipe's blocks side by side
 * (lexical, evidence, header); block_start[b] .. block_start[b+1]-1 are block b's columns (n_blocks <=
 * TBERT_ROWS_MAX_BLOCKS, block_start[n_blocks] = sparse_dim).
 * Memory: n * dense_dim * 4 + nnz * 8 + (n + 1) * 8 bytes; it grows with the tokens present, not with the
 * block widths. */
#ifndef TBERT_ROWS_H
#define TBERT_ROWS_H

#include "tbert/common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TBERT_ROWS_MAX_BLOCKS 4

typedef struct {
    int n;                 /* rows */
    size_t dense_dim;      /* width of the dense block */
    size_t sparse_dim;     /* width of the sparse column space (< 2^31) */
    int n_blocks;
    size_t block_start[TBERT_ROWS_MAX_BLOCKS + 1];
    float *dense;          /* n x dense_dim */
    int64_t *indptr;       /* n + 1 (indptr[0] = 0) */
    int32_t *indices;      /* nnz = indptr[n] */
    float *values;         /* nnz */
    size_t cap_rows, cap_nnz;
} tbert_rows;

/* An empty batch of the given shape (no allocation until rows are added). block_widths: n_blocks widths
 * whose sum is the sparse width (n_blocks may be 0). */
tbert_status tbert_rows_init(tbert_rows *r, size_t dense_dim, int n_blocks, const size_t *block_widths, tbert_error *err);
void tbert_rows_free(tbert_rows *r);
/* Drops every row, keeps shape and allocations. */
void tbert_rows_clear(tbert_rows *r);
/* Full feature width dense_dim + sparse_dim. */
size_t tbert_rows_dim(const tbert_rows *r);
size_t tbert_rows_nnz(const tbert_rows *r);
/* Room for `rows` more rows and `nnz` more entries (amortised growth). */
tbert_status tbert_rows_reserve(tbert_rows *r, size_t rows, size_t nnz, tbert_error *err);
/* Appends one row: dense (dense_dim floats; NULL = zeros) and k sparse entries (columns ascending, values
 * non-zero; checked). */
tbert_status tbert_rows_append(tbert_rows *r, const float *dense, size_t k, const int32_t *idx, const float *val,
                               tbert_error *err);
/* Appends row i of src (same shape). */
tbert_status tbert_rows_append_row(tbert_rows *dst, const tbert_rows *src, int i, tbert_error *err);
/* Appends rows idx[0..n) of src to dst, in that order. */
tbert_status tbert_rows_gather(tbert_rows *dst, const tbert_rows *src, const int *idx, int n, tbert_error *err);
/* Rows i0 .. i0+n-1 as dense feature vectors: out (n x stride floats, stride >= dim) gets
 * [dense | sparse densified] in the old layout; columns past dim are left alone. */
void tbert_rows_densify(const tbert_rows *r, int i0, int n, float *out, size_t stride);
/* Appends n dense feature vectors (n x dim, dim = dense_dim + sparse_dim): the exact inverse of densify
 * (zeros dropped). */
tbert_status tbert_rows_append_dense(tbert_rows *r, int n, const float *x, tbert_error *err);
/* Bytes held by the rows' allocations (capacity, not only use). */
size_t tbert_rows_bytes(const tbert_rows *r);

/* Writes the rows as an uncompressed .npz, atomically (temp + fsync + rename; src/npz.c), in the layout of
 * scipy.sparse.save_npz for the sparse part, so numpy alone reads it and scipy.sparse.load_npz too:
 *   data (float32, nnz), indices (int32, nnz), indptr (int64, n+1), shape (int64 [n, sparse_dim]),
 *   format (b"csr"), plus dense (float32, n x dense_dim), block_start (int64, n_blocks + 1) and, when
 *   labels is not NULL, labels (int32, n: class indices).
 * Refuses (TBERT_E_ARG) a file over 4 GB (no zip64). */
tbert_status tbert_rows_write_npz(const char *path, const tbert_rows *r, const int32_t *labels, tbert_error *err);
/* CRC-32 (zip, PNG) of len bytes, continuing from crc (0 to start). */
uint32_t tbert_crc32(uint32_t crc, const void *data, size_t len);

#ifdef __cplusplus
}
#endif
#endif
