/* Rows as a NumPy .npz (an uncompressed zip of .npy arrays) in scipy.sparse's CSR layout, readable with
 * numpy alone (include/tbert/rows.h, tbert_rows_write_npz). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tbert/fileio.h"
#include "tbert/rows.h"

uint32_t tbert_crc32(uint32_t crc, const void *data, size_t len) {
    /* reflected CRC-32 (polynomial 0xEDB88320), bit by bit: the arrays are written once, speed is not the point */
    const unsigned char *p = data;
    crc = ~crc;
    for (size_t i = 0; i < len; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

typedef struct {
    char name[32];  /* "data.npy" ... */
    char hdr[256];  /* the .npy header (magic, version, length, dict padded to 64 bytes) */
    size_t hdr_len;
    const void *data;
    size_t data_len;
    uint32_t crc;
    uint32_t offset; /* of its local header in the file */
} npz_member;

static bool npy_header(npz_member *m, const char *descr, int ndim, const int64_t *shape) {
    char dict[200], sh[96] = "";
    size_t o = 0;
    for (int i = 0; i < ndim; i++) o += (size_t)snprintf(sh + o, sizeof sh - o, "%lld%s", (long long)shape[i], ndim == 1 ? "," : i + 1 < ndim ? ", " : "");
    int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, sh);
    if (n < 0 || (size_t)n >= sizeof dict) return false;
    size_t total = 10 + (size_t)n + 1, pad = (64 - total % 64) % 64;
    size_t hl = (size_t)n + pad + 1;
    if (10 + hl > sizeof m->hdr) return false;
    memcpy(m->hdr, "\x93NUMPY\x01\x00", 8);
    m->hdr[8] = (char)(hl & 0xff);
    m->hdr[9] = (char)(hl >> 8);
    memcpy(m->hdr + 10, dict, (size_t)n);
    memset(m->hdr + 10 + n, ' ', pad);
    m->hdr[10 + hl - 1] = '\n';
    m->hdr_len = 10 + hl;
    return true;
}

static void put16(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}
static void put32(unsigned char *p, uint32_t v) {
    put16(p, v & 0xffff);
    put16(p + 2, v >> 16);
}

tbert_status tbert_rows_write_npz(const char *path, const tbert_rows *r, const int32_t *labels, tbert_error *err) {
    size_t nnz = tbert_rows_nnz(r);
    int64_t zero = 0;
    int64_t shape_csr[2] = {r->n, (int64_t)r->sparse_dim}, nnz1[1] = {(int64_t)nnz}, ip1[1] = {(int64_t)r->n + 1},
            dshape[2] = {r->n, (int64_t)r->dense_dim}, two[1] = {2}, nb1[1] = {(int64_t)r->n_blocks + 1};
    int64_t starts[TBERT_ROWS_MAX_BLOCKS + 1];
    for (int b = 0; b <= r->n_blocks; b++) starts[b] = (int64_t)r->block_start[b];
    npz_member m[8];
    memset(m, 0, sizeof m);
    bool ok = true;
    int k = 0;
    /* the scipy.sparse.save_npz keys (format as bytes, as scipy writes it), then the dense block */
    snprintf(m[k].name, sizeof m[k].name, "indices.npy");
    ok &= npy_header(&m[k], "<i4", 1, nnz1);
    m[k].data = r->indices;
    m[k++].data_len = nnz * sizeof(int32_t);
    snprintf(m[k].name, sizeof m[k].name, "indptr.npy");
    ok &= npy_header(&m[k], "<i8", 1, ip1);
    m[k].data = r->indptr ? (const void *)r->indptr : (const void *)&zero;
    m[k++].data_len = (size_t)(r->n + 1) * sizeof(int64_t);
    snprintf(m[k].name, sizeof m[k].name, "format.npy");
    ok &= npy_header(&m[k], "|S3", 0, NULL);
    m[k].data = "csr";
    m[k++].data_len = 3;
    snprintf(m[k].name, sizeof m[k].name, "shape.npy");
    ok &= npy_header(&m[k], "<i8", 1, two);
    m[k].data = shape_csr;
    m[k++].data_len = sizeof shape_csr;
    snprintf(m[k].name, sizeof m[k].name, "data.npy");
    ok &= npy_header(&m[k], "<f4", 1, nnz1);
    m[k].data = r->values;
    m[k++].data_len = nnz * sizeof(float);
    snprintf(m[k].name, sizeof m[k].name, "dense.npy");
    ok &= npy_header(&m[k], "<f4", 2, dshape);
    m[k].data = r->dense;
    m[k++].data_len = (size_t)r->n * r->dense_dim * sizeof(float);
    snprintf(m[k].name, sizeof m[k].name, "block_start.npy");
    ok &= npy_header(&m[k], "<i8", 1, nb1);
    m[k].data = starts;
    m[k++].data_len = (size_t)(r->n_blocks + 1) * sizeof(int64_t);
    int64_t n1[1] = {r->n};
    if (labels) {
        snprintf(m[k].name, sizeof m[k].name, "labels.npy");
        ok &= npy_header(&m[k], "<i4", 1, n1);
        m[k].data = labels;
        m[k++].data_len = (size_t)r->n * sizeof(int32_t);
    }
    if (!ok) return tbert_fail(err, TBERT_E_ARG, "%s: array header too long", path);
    uint64_t off = 0;
    for (int i = 0; i < k; i++) {
        if (m[i].data_len && !m[i].data) m[i].data_len = 0;
        m[i].crc = tbert_crc32(tbert_crc32(0, m[i].hdr, m[i].hdr_len), m[i].data, m[i].data_len);
        m[i].offset = (uint32_t)off;
        off += 30 + strlen(m[i].name) + m[i].hdr_len + m[i].data_len;
        if (off >= 0xffffffffull) return tbert_fail(err, TBERT_E_ARG, "%s: rows exceed the 4 GB a zip without zip64 holds", path);
    }
    tbert_atomic_file *f;
    tbert_status st = tbert_atomic_open(path, &f, err);
    if (st) return st;
    for (int i = 0; i < k && !st; i++) {
        unsigned char h[30] = {0};
        size_t nl = strlen(m[i].name);
        uint32_t size = (uint32_t)(m[i].hdr_len + m[i].data_len);
        put32(h, 0x04034b50);
        put16(h + 4, 20);
        put16(h + 10, 0);      /* time */
        put16(h + 12, 0x21);   /* date 1980-01-01 */
        put32(h + 14, m[i].crc);
        put32(h + 18, size);
        put32(h + 22, size);
        put16(h + 26, (uint32_t)nl);
        st = tbert_atomic_write(f, h, 30, err);
        if (!st) st = tbert_atomic_write(f, m[i].name, nl, err);
        if (!st) st = tbert_atomic_write(f, m[i].hdr, m[i].hdr_len, err);
        if (!st && m[i].data_len) st = tbert_atomic_write(f, m[i].data, m[i].data_len, err);
    }
    uint32_t cd_start = (uint32_t)off, cd_len = 0;
    for (int i = 0; i < k && !st; i++) {
        unsigned char h[46] = {0};
        size_t nl = strlen(m[i].name);
        uint32_t size = (uint32_t)(m[i].hdr_len + m[i].data_len);
        put32(h, 0x02014b50);
        put16(h + 4, 20);
        put16(h + 6, 20);
        put16(h + 14, 0x21);
        put32(h + 16, m[i].crc);
        put32(h + 20, size);
        put32(h + 24, size);
        put16(h + 28, (uint32_t)nl);
        put32(h + 42, m[i].offset);
        st = tbert_atomic_write(f, h, 46, err);
        if (!st) st = tbert_atomic_write(f, m[i].name, nl, err);
        cd_len += 46 + (uint32_t)nl;
    }
    if (!st) {
        unsigned char e[22] = {0};
        put32(e, 0x06054b50);
        put16(e + 8, (uint32_t)k);
        put16(e + 10, (uint32_t)k);
        put32(e + 12, cd_len);
        put32(e + 16, cd_start);
        st = tbert_atomic_write(f, e, 22, err);
    }
    if (st) {
        tbert_atomic_abort(f);
        return st;
    }
    return tbert_atomic_commit(f, err);
}
