// Deterministic column sums for the backward passes' parameter gradients (kernels/colsum.cu).
#pragma once
#include "cuda_check.cuh"

namespace tbert {
inline int colsum_chunks(int rows) { return TBERT_CEIL_DIV(rows, TBERT_CUDA_BWD_CHUNK); }
// acc[c] += part[0][c], += part[1][c], ... for the colsum_chunks(rows) chunk partials part[k][cols] (the second
// pass alone: the layernorm backward writes its own partials).
int colsum_finish(float *acc, const float *part, int rows, int cols, cudaStream_t s);
} // namespace tbert
