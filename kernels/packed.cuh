// Packed batches: a batch's real tokens concatenated, sequence b owning rows cu_seqlens[b] .. cu_seqlens[b+1]-1
// (cu_seqlens: int32 [B+1], cu_seqlens[0] = 0, non-decreasing). Shared by embeddings.cu and attention.cu.
#pragma once
#include "cuda_check.cuh"

namespace tbert {

// The largest b in [0, n) with a[b] <= x, for a non-decreasing a with a[0] <= x (binary search). With
// a = cu_seqlens and x a packed row, the sequence that owns the row (sequences of length 0 own none).
__device__ __forceinline__ int last_le(const int32_t *a, int n, int x) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (a[mid] <= x) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

} // namespace tbert
