// Deterministic column sums for the backward passes' parameter gradients (bias, dgamma, dbeta, the type
// embedding), no float atomics: the rows are cut in chunks of TBERT_CUDA_BWD_CHUNK; pass 1 sums each chunk's rows in
// row order into part[chunk][c] (one thread per column, coalesced across columns); pass 2 adds the partials to the
// accumulator in chunk order. The same tree as the CPU's colsum_chunked (src/encoder_backward.c), so the bits do
// not depend on the launch or the schedule.
#include "colsum.cuh"

namespace {

constexpr int kColsumBlock = 128;

template <typename T> __global__ void colsum_part_kernel(float *part, const T *a, int rows, int cols) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x, k = blockIdx.y;
    if (c >= cols) return;
    const int r0 = k * TBERT_CUDA_BWD_CHUNK;
    const int r1 = rows - r0 < TBERT_CUDA_BWD_CHUNK ? rows : r0 + TBERT_CUDA_BWD_CHUNK;
    float s = 0.0f;
    for (int r = r0; r < r1; r++) s += tbert::to_f(a[(size_t)r * cols + c]);
    part[(size_t)k * cols + c] = s;
}

// acc[c] += part[0][c]; acc[c] += part[1][c]; ... (one rounding per chunk, as the CPU)
__global__ void colsum_finish_kernel(float *acc, const float *part, int chunks, int cols) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float s = acc[c];
    for (int k = 0; k < chunks; k++) s += part[(size_t)k * cols + c];
    acc[c] = s;
}

} // namespace

int tbert::colsum_finish(float *acc, const float *part, int rows, int cols, cudaStream_t s) {
    SHAPE_CHECK(acc && part && rows >= 0 && cols > 0);
    if (rows == 0) return 0;
    TBERT_LAUNCH(colsum_finish_kernel, TBERT_CEIL_DIV(cols, kColsumBlock), kColsumBlock, 0, s, acc, part,
                 colsum_chunks(rows), cols);
    LAUNCH_CHECK(s);
    return 0;
}

extern "C" int tbert_cuda_colsum_acc(float *acc, const void *a, tbert_cuda_dtype dt, int rows, int cols, float *ws,
                                     cudaStream_t s) {
    SHAPE_CHECK(acc && a && ws && rows >= 0 && cols > 0);
    if (rows == 0) return 0;
    SHAPE_CHECK(tbert::colsum_chunks(rows) <= 65535);
    const dim3 grid(TBERT_CEIL_DIV(cols, kColsumBlock), tbert::colsum_chunks(rows));
    TBERT_DISPATCH_DTYPE(dt, TBERT_LAUNCH(colsum_part_kernel<Act>, grid, kColsumBlock, 0, s, ws, (const Act *)a, rows,
                                          cols));
    LAUNCH_CHECK(s);
    return tbert::colsum_finish(acc, ws, rows, cols, s);
}
