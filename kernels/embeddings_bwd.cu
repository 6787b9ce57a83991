// Embeddings backward (forward: embeddings.cu): the gradient of the sum word[id] + pos[t] + type[0] (dz, from
// tbert_cuda_layernorm_bwd over the embedding LayerNorm) scattered into the three tables without float atomics.
// The host groups the packed rows by table row (tbert_cuda_scatter_plan: a stable counting sort, so a table row's
// rows come in row order); one thread per (table row, column) then adds its rows into the table in that order, so
// each table element has one writer and a fixed summation order. The type table (type 0 only) is a column sum
// (colsum.cu). Contracts: include/tbert/cuda_kernels.h.
#include <string.h>

#include "cuda_check.cuh"

namespace {

constexpr int kScatterBlock = 128;

// grid (segments, ceil(H / block)): table[key[g], c] += dz[perm[start[g]], c] + ... in perm order
__global__ void scatter_rows_kernel(float *table, const float *dz, const int32_t *perm, const int32_t *start,
                                    const int32_t *key, int H) {
    const int g = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= H) return;
    float *t = table + (size_t)key[g] * H + c;
    float acc = *t;
    for (int i = start[g]; i < start[g + 1]; i++) acc += dz[(size_t)perm[i] * H + c];
    *t = acc;
}

int scatter(float *table, const float *dz, const tbert_cuda_scatter_plan *p, int H, cudaStream_t s) {
    SHAPE_CHECK(p->perm && p->start && p->key && p->n_seg >= 0);
    if (p->n_seg == 0) return 0;
    TBERT_LAUNCH(scatter_rows_kernel, dim3(p->n_seg, TBERT_CEIL_DIV(H, kScatterBlock)), kScatterBlock, 0, s, table,
                 dz, p->perm, p->start, p->key, H);
    LAUNCH_CHECK(s);
    return 0;
}

} // namespace

extern "C" int tbert_cuda_scatter_plan_host(const int32_t *keys, int n, int n_keys, int32_t *count, int32_t *perm,
                                            int32_t *start, int32_t *key) {
    if (!keys || !count || n < 0 || n_keys <= 0 || (n > 0 && (!perm || !start || !key))) return -1;
    memset(count, 0, (size_t)n_keys * sizeof *count);
    for (int i = 0; i < n; i++) {
        if (keys[i] < 0 || keys[i] >= n_keys) return -1;
        count[keys[i]]++;
    }
    int n_seg = 0, at = 0;
    for (int k = 0; k < n_keys; k++) { // count[k] becomes the next free slot of key k in perm
        const int c = count[k];
        if (c == 0) continue;
        start[n_seg] = at;
        key[n_seg++] = k;
        count[k] = at;
        at += c;
    }
    if (n_seg > 0) start[n_seg] = at;
    for (int i = 0; i < n; i++) perm[count[keys[i]]++] = i; // stable: rows of one key in row order
    return n_seg;
}

extern "C" int tbert_cuda_embeddings_bwd(float *dword, float *dpos, float *dtype, const float *dz,
                                         const tbert_cuda_scatter_plan *word, const tbert_cuda_scatter_plan *pos,
                                         float *ws, int N, int H, cudaStream_t s) {
    SHAPE_CHECK(dz && N >= 0 && H > 0 && (!dword || word) && (!dpos || pos) && (!dtype || ws));
    if (N == 0) return 0;
    int rc = 0;
    if (dword && (rc = scatter(dword, dz, word, H, s))) return rc;
    if (dpos && (rc = scatter(dpos, dz, pos, H, s))) return rc;
    if (dtype) return tbert_cuda_colsum_acc(dtype, dz, TBERT_CUDA_F32, N, H, ws, s);
    return 0;
}
