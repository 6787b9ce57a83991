// Scaled dot-product attention over packed sequences (a batch's real tokens concatenated; sequence b owns the
// rows cu_seqlens[b] .. cu_seqlens[b+1]-1 and attends only to them), three implementations:
//  1. fused v1 (the first, simplest version): one block per (16 queries, head, sequence), ceil(length / 16)
//     query tiles per sequence (cu_tiles, binary-searched by the block); K and V stream through
//     shared memory in tiles of 32 keys, each warp keeps an online softmax (running max, running sum, output
//     accumulator in registers) for its 4 queries, so the [B, heads, T, T] scores never reach global memory.
//     Any T works; the model's positions cap T at 512 for BERT.
//  2. fused v2 (ships): v1's tiling and online softmax, with the warp's 4 queries sharing every shared-memory
//     load: 16-byte loads of a K row per lane (lane = key), 16-byte broadcast loads of Q, one V load per key for
//     all 4 queries. v1 spends two 4-byte loads per FMA in the score loop; v2 about 1.25 / 4.
//  3. unfused (reference): heads split to a padded float32 [B, heads, T, d] layout (zeros past each length),
//     cuBLAS strided-batched Q K^T, masked softmax kernel, cuBLAS P V, real rows merged back into the packed
//     layout. Simple enough to trust; the parity test checks 1 and 2 against 3 and all three against a CPU loop.
#include <math.h>

#include "elementwise.cuh"
#include "packed.cuh"

namespace {

constexpr int kKeyTile = 32; // keys per shared-memory tile: one per lane
constexpr int kWarps = 4;
constexpr int kQueriesPerWarp = 4;
constexpr int kQueryTile = kWarps * kQueriesPerWarp;
static_assert(kQueryTile == TBERT_CUDA_QUERY_TILE, "the host's tile table (tbert_cuda_query_tiles) uses this tile");

// The block's sequence and first query: tile blockIdx.x belongs to the b with cu_tiles[b] <= tile < cu_tiles[b+1]
// (the largest such b: sequences of length 0 own no tile). Every thread computes the same answer.
struct tile_pos {
    int start, len, q0;
};
__device__ __forceinline__ tile_pos find_tile(const int32_t *cu_seqlens, const int32_t *cu_tiles, int B) {
    const int tile = blockIdx.x, lo = tbert::last_le(cu_tiles, B, tile);
    tile_pos p;
    p.start = cu_seqlens[lo];
    p.len = cu_seqlens[lo + 1] - p.start;
    p.q0 = (tile - cu_tiles[lo]) * kQueryTile;
    return p;
}

// qkv rows hold [Q | K | V] for all heads; NC = ceil(d / 32) output columns per lane.
template <typename T, int NC>
__global__ void __launch_bounds__(kWarps * 32)
    attention_fused_v1_kernel(T *ctx, const T *qkv, const float *bias, const int32_t *cu_seqlens, const int32_t *cu_tiles,
                              int B, int heads, int d, float scale) {
    TBERT_DYNAMIC_SHARED(float, smem);
    float *Qs = smem;                        // [kQueryTile][d], pre-scaled by 1/sqrt(d)
    float *Ks = Qs + kQueryTile * d;         // [kKeyTile][d + 1]: the pad keeps lane j's row j conflict-free
    float *Vs = Ks + kKeyTile * (d + 1);     // [kKeyTile][d]
    const tile_pos tp = find_tile(cu_seqlens, cu_tiles, B);
    const int h = blockIdx.y, q0 = tp.q0, len = tp.len;
    if (q0 >= len) return; // only with an inconsistent tile table; uniform over the block
    const int H = heads * d;
    const size_t row3 = (size_t)3 * H;
    const T *base = qkv + (size_t)tp.start * row3 + (size_t)h * d;
    const float *bq = bias ? bias + (size_t)h * d : nullptr; // this head's Q bias; K's at +H, V's at +2H
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

    for (int idx = threadIdx.x; idx < kQueryTile * d; idx += blockDim.x) {
        const int i = idx / d, c = idx - i * d, t = q0 + i;
        Qs[idx] = t < len ? (tbert::to_f(base[(size_t)t * row3 + c]) + (bq ? bq[c] : 0.0f)) * scale : 0.0f;
    }
    float m[kQueriesPerWarp], l[kQueriesPerWarp], acc[kQueriesPerWarp][NC];
#pragma unroll
    for (int qi = 0; qi < kQueriesPerWarp; qi++) {
        m[qi] = -INFINITY;
        l[qi] = 0.0f;
#pragma unroll
        for (int cc = 0; cc < NC; cc++) acc[qi][cc] = 0.0f;
    }
    for (int k0 = 0; k0 < len; k0 += kKeyTile) {
        __syncthreads(); // the Q tile is complete / every warp is done with the previous K, V tile
        for (int idx = threadIdx.x; idx < kKeyTile * d; idx += blockDim.x) {
            const int j = idx / d, c = idx - j * d, key = k0 + j;
            float kv = 0.0f, vv = 0.0f;
            if (key < len) {
                const T *r = base + (size_t)key * row3 + c;
                kv = tbert::to_f(r[H]) + (bq ? bq[H + c] : 0.0f);
                vv = tbert::to_f(r[2 * H]) + (bq ? bq[2 * H + c] : 0.0f);
            }
            Ks[j * (d + 1) + c] = kv;
            Vs[j * d + c] = vv;
        }
        __syncthreads();
        const bool valid = k0 + lane < len; // lane's key
#pragma unroll
        for (int qi = 0; qi < kQueriesPerWarp; qi++) {
            const float *q = Qs + (warp * kQueriesPerWarp + qi) * d;
            const float *k = Ks + lane * (d + 1);
            float sc = 0.0f;
            for (int c = 0; c < d; c++) sc = fmaf(q[c], k[c], sc);
            sc = valid ? sc : -INFINITY;
            const float mn = fmaxf(m[qi], tbert::warp_max(sc)); // finite: key k0 < len is lane 0's
            const float p = valid ? expf(sc - mn) : 0.0f;
            const float alpha = expf(m[qi] - mn); // 0 on the first tile (m = -inf)
            l[qi] = l[qi] * alpha + tbert::warp_sum(p);
            m[qi] = mn;
#pragma unroll
            for (int cc = 0; cc < NC; cc++) acc[qi][cc] *= alpha;
#pragma unroll 4
            for (int j = 0; j < kKeyTile; j++) {
                const float pj = __shfl_sync(0xffffffffu, p, j);
                const float *vr = Vs + j * d;
#pragma unroll
                for (int cc = 0; cc < NC; cc++) {
                    const int c = lane + 32 * cc;
                    if (c < d) acc[qi][cc] = fmaf(pj, vr[c], acc[qi][cc]);
                }
            }
        }
    }
#pragma unroll
    for (int qi = 0; qi < kQueriesPerWarp; qi++) {
        const int t = q0 + warp * kQueriesPerWarp + qi;
        if (t >= len) continue;
        const float inv = l[qi] > 0.0f ? 1.0f / l[qi] : 0.0f;
        T *o = ctx + ((size_t)tp.start + t) * H + (size_t)h * d;
#pragma unroll
        for (int cc = 0; cc < NC; cc++) {
            const int c = lane + 32 * cc;
            if (c < d) o[c] = tbert::from_f<T>(acc[qi][cc] * inv);
        }
    }
}

// Shared-memory row strides of v2: Q and K rows padded with zeros to a multiple of 4 floats (16-byte loads);
// K rows further padded so that (stride / 4) is odd, which keeps each quarter-warp's 16-byte loads of 8
// different rows on 8 different 4-bank groups (no bank conflicts).
__host__ __device__ inline int v2_qstride(int d) { return (d + 3) / 4 * 4; }
__host__ __device__ inline int v2_kstride(int d) { return (v2_qstride(d) / 4) % 2 ? v2_qstride(d) : v2_qstride(d) + 4; }

template <typename T, int NC>
__global__ void __launch_bounds__(kWarps * 32)
    attention_fused_v2_kernel(T *ctx, const T *qkv, const float *bias, const int32_t *cu_seqlens, const int32_t *cu_tiles,
                              int B, int heads, int d, float scale) {
    TBERT_DYNAMIC_SHARED(float4, smem4); // float4: 16-byte alignment of the tiles
    const int dq = v2_qstride(d), ks = v2_kstride(d), n4 = dq / 4;
    float *Qs = reinterpret_cast<float *>(smem4); // [kQueryTile][dq], pre-scaled, zero padded
    float *Ks = Qs + kQueryTile * dq;              // [kKeyTile][ks], zero padded
    float *Vs = Ks + kKeyTile * ks;                // [kKeyTile][d]
    const tile_pos tp = find_tile(cu_seqlens, cu_tiles, B);
    const int h = blockIdx.y, q0 = tp.q0, len = tp.len;
    if (q0 >= len) return; // only with an inconsistent tile table; uniform over the block
    const int H = heads * d;
    const size_t row3 = (size_t)3 * H;
    const T *base = qkv + (size_t)tp.start * row3 + (size_t)h * d;
    const float *bq = bias ? bias + (size_t)h * d : nullptr; // this head's Q bias; K's at +H, V's at +2H
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

    for (int idx = threadIdx.x; idx < kQueryTile * dq; idx += blockDim.x) {
        const int i = idx / dq, c = idx - i * dq, t = q0 + i;
        Qs[idx] = t < len && c < d ? (tbert::to_f(base[(size_t)t * row3 + c]) + (bq ? bq[c] : 0.0f)) * scale : 0.0f;
    }
    float m[kQueriesPerWarp], l[kQueriesPerWarp], acc[kQueriesPerWarp][NC];
#pragma unroll
    for (int qi = 0; qi < kQueriesPerWarp; qi++) {
        m[qi] = -INFINITY;
        l[qi] = 0.0f;
#pragma unroll
        for (int cc = 0; cc < NC; cc++) acc[qi][cc] = 0.0f;
    }
    const float4 *q4 = reinterpret_cast<const float4 *>(Qs + warp * kQueriesPerWarp * dq);
    const float4 *k4 = reinterpret_cast<const float4 *>(Ks + lane * ks);
    for (int k0 = 0; k0 < len; k0 += kKeyTile) {
        __syncthreads(); // the Q tile is complete / every warp is done with the previous K, V tile
        for (int idx = threadIdx.x; idx < kKeyTile * dq; idx += blockDim.x) {
            const int j = idx / dq, c = idx - j * dq, key = k0 + j;
            Ks[j * ks + c] =
                key < len && c < d ? tbert::to_f(base[(size_t)key * row3 + H + c]) + (bq ? bq[H + c] : 0.0f) : 0.0f;
        }
        for (int idx = threadIdx.x; idx < kKeyTile * d; idx += blockDim.x) {
            const int j = idx / d, c = idx - j * d, key = k0 + j;
            Vs[idx] = key < len ? tbert::to_f(base[(size_t)key * row3 + 2 * H + c]) + (bq ? bq[2 * H + c] : 0.0f) : 0.0f;
        }
        __syncthreads();
        const bool valid = k0 + lane < len; // lane's key
        float sc[kQueriesPerWarp];
#pragma unroll
        for (int qi = 0; qi < kQueriesPerWarp; qi++) sc[qi] = 0.0f;
        for (int c4 = 0; c4 < n4; c4++) {
            const float4 kv = k4[c4];
#pragma unroll
            for (int qi = 0; qi < kQueriesPerWarp; qi++) {
                const float4 qv = q4[qi * n4 + c4]; // same address in every lane: a broadcast
                sc[qi] = fmaf(qv.x, kv.x, sc[qi]);
                sc[qi] = fmaf(qv.y, kv.y, sc[qi]);
                sc[qi] = fmaf(qv.z, kv.z, sc[qi]);
                sc[qi] = fmaf(qv.w, kv.w, sc[qi]);
            }
        }
        float p[kQueriesPerWarp];
#pragma unroll
        for (int qi = 0; qi < kQueriesPerWarp; qi++) {
            const float s_ = valid ? sc[qi] : -INFINITY;
            const float mn = fmaxf(m[qi], tbert::warp_max(s_)); // finite: key k0 < len is lane 0's
            p[qi] = valid ? expf(s_ - mn) : 0.0f;
            const float alpha = expf(m[qi] - mn); // 0 on the first tile (m = -inf)
            l[qi] = l[qi] * alpha + tbert::warp_sum(p[qi]);
            m[qi] = mn;
#pragma unroll
            for (int cc = 0; cc < NC; cc++) acc[qi][cc] *= alpha;
        }
#pragma unroll 4
        for (int j = 0; j < kKeyTile; j++) {
            float v[NC];
#pragma unroll
            for (int cc = 0; cc < NC; cc++) {
                const int c = lane + 32 * cc;
                v[cc] = c < d ? Vs[j * d + c] : 0.0f;
            }
#pragma unroll
            for (int qi = 0; qi < kQueriesPerWarp; qi++) {
                const float pj = __shfl_sync(0xffffffffu, p[qi], j);
#pragma unroll
                for (int cc = 0; cc < NC; cc++) acc[qi][cc] = fmaf(pj, v[cc], acc[qi][cc]);
            }
        }
    }
#pragma unroll
    for (int qi = 0; qi < kQueriesPerWarp; qi++) {
        const int t = q0 + warp * kQueriesPerWarp + qi;
        if (t >= len) continue;
        const float inv = l[qi] > 0.0f ? 1.0f / l[qi] : 0.0f;
        T *o = ctx + ((size_t)tp.start + t) * H + (size_t)h * d;
#pragma unroll
        for (int cc = 0; cc < NC; cc++) {
            const int c = lane + 32 * cc;
            if (c < d) o[c] = tbert::from_f<T>(acc[qi][cc] * inv);
        }
    }
}

template <typename T, int NC>
int launch_fused(int version, T *ctx, const T *qkv, const float *bias, const int32_t *cu_seqlens,
                 const int32_t *cu_tiles, int B, int tiles, int heads, int d, cudaStream_t s) {
    const size_t smem = version == 1
                            ? ((size_t)kQueryTile * d + (size_t)kKeyTile * (d + 1) + (size_t)kKeyTile * d) * sizeof(float)
                            : ((size_t)kQueryTile * v2_qstride(d) + (size_t)kKeyTile * v2_kstride(d) +
                               (size_t)kKeyTile * d) * sizeof(float);
    const float scale = 1.0f / sqrtf((float)d);
    const dim3 grid((unsigned)tiles, (unsigned)heads);
    if (version == 1)
        TBERT_LAUNCH((attention_fused_v1_kernel<T, NC>), grid, kWarps * 32, smem, s, ctx, qkv, bias, cu_seqlens,
                     cu_tiles, B, heads, d, scale);
    else
        TBERT_LAUNCH((attention_fused_v2_kernel<T, NC>), grid, kWarps * 32, smem, s, ctx, qkv, bias, cu_seqlens,
                     cu_tiles, B, heads, d, scale);
    LAUNCH_CHECK(s);
    return 0;
}

template <typename T>
int dispatch_fused(int version, void *ctx, const void *qkv, const float *bias, const int32_t *cu_seqlens,
                   const int32_t *cu_tiles, int B, int tiles, int heads, int d, cudaStream_t s) {
    T *o = (T *)ctx;
    const T *in = (const T *)qkv;
    if (d <= 32) return launch_fused<T, 1>(version, o, in, bias, cu_seqlens, cu_tiles, B, tiles, heads, d, s);
    if (d <= 64) return launch_fused<T, 2>(version, o, in, bias, cu_seqlens, cu_tiles, B, tiles, heads, d, s);
    if (d <= 96) return launch_fused<T, 3>(version, o, in, bias, cu_seqlens, cu_tiles, B, tiles, heads, d, s);
    return launch_fused<T, 4>(version, o, in, bias, cu_seqlens, cu_tiles, B, tiles, heads, d, s);
}

// ---- unfused reference path ----

__device__ __forceinline__ int seq_len(const int32_t *cu_seqlens, size_t b, int Tn) {
    const int len = cu_seqlens[b + 1] - cu_seqlens[b];
    return len < 0 ? 0 : (len > Tn ? Tn : len);
}

// packed qkv (dt [N, 3H]) -> q, k, v float32 [B, heads, T, d], zeros at t >= length (padded V rows meet
// probability 0 in P V: they must be finite)
template <typename T>
__global__ void split_heads_kernel(float *q, float *k, float *v, const T *qkv, const float *bias,
                                   const int32_t *cu_seqlens, int Tn, int heads, int d, size_t n) {
    const int H = heads * d;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const int col = (int)(i % (size_t)(3 * H));
        const size_t bt = i / (size_t)(3 * H);
        const int t = (int)(bt % (size_t)Tn);
        const size_t b = bt / (size_t)Tn;
        const int part = col / H, hc = col - part * H, h = hc / d, c = hc - h * d;
        float *dst = part == 0 ? q : (part == 1 ? k : v);
        float val = 0.0f;
        if (t < seq_len(cu_seqlens, b, Tn))
            val = tbert::to_f(qkv[((size_t)cu_seqlens[b] + t) * 3 * H + col]) + (bias ? bias[col] : 0.0f);
        dst[((b * heads + h) * Tn + t) * d + c] = val;
    }
}

// One block per score row (b, h, i): p[j] = softmax_j(s[j] * scale) over j < len, 0 for j >= len.
__global__ void masked_softmax_kernel(float *S, const int32_t *cu_seqlens, int Tn, int heads, float scale) {
    TBERT_SHARED(float, scratch, 32);
    const size_t row = blockIdx.x;
    const int len = seq_len(cu_seqlens, row / ((size_t)heads * Tn), Tn);
    float *r = S + row * Tn;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < len; j += blockDim.x) mx = fmaxf(mx, r[j] * scale);
    mx = tbert::block_max(mx, scratch);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < len; j += blockDim.x) sum += expf(r[j] * scale - mx);
    sum = tbert::block_sum(sum, scratch);
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    for (int j = threadIdx.x; j < Tn; j += blockDim.x) r[j] = j < len ? expf(r[j] * scale - mx) * inv : 0.0f;
}

// o float32 [B, heads, T, d] -> packed ctx dt [N, H]: the rows t < length only
template <typename T>
__global__ void merge_heads_kernel(T *ctx, const float *o, const int32_t *cu_seqlens, int Tn, int heads, int d,
                                   size_t n) {
    const int H = heads * d;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const int col = (int)(i % (size_t)H);
        const size_t bt = i / (size_t)H;
        const int t = (int)(bt % (size_t)Tn);
        const size_t b = bt / (size_t)Tn;
        if (t >= seq_len(cu_seqlens, b, Tn)) continue;
        const int h = col / d, c = col - h * d;
        ctx[((size_t)cu_seqlens[b] + t) * H + col] = tbert::from_f<T>(o[((b * heads + h) * Tn + t) * d + c]);
    }
}

} // namespace

static int attention_fused(int version, void *ctx, const void *qkv, const float *bias, const int32_t *cu_seqlens,
                           const int32_t *cu_tiles, tbert_cuda_dtype dt, int B, int tiles, int heads, int d,
                           cudaStream_t s) {
    SHAPE_CHECK(ctx && qkv && cu_seqlens && cu_tiles && B >= 0 && tiles >= 0 && heads > 0 && heads <= 65535 &&
                d > 0 && d <= 128);
    SHAPE_CHECK(ctx != qkv);
    if (B == 0 || tiles == 0) return 0;
    if (dt == TBERT_CUDA_F32)
        return dispatch_fused<float>(version, ctx, qkv, bias, cu_seqlens, cu_tiles, B, tiles, heads, d, s);
    if (dt == TBERT_CUDA_BF16)
        return dispatch_fused<__nv_bfloat16>(version, ctx, qkv, bias, cu_seqlens, cu_tiles, B, tiles, heads, d, s);
    return TBERT_CUDA_EBADSHAPE;
}

extern "C" int tbert_cuda_attention_fused(void *ctx, const void *qkv, const float *bias, const int32_t *cu_seqlens,
                                          const int32_t *cu_tiles, tbert_cuda_dtype dt, int B, int tiles, int heads,
                                          int d, cudaStream_t s) {
    return attention_fused(2, ctx, qkv, bias, cu_seqlens, cu_tiles, dt, B, tiles, heads, d, s);
}

extern "C" int tbert_cuda_attention_fused_v1(void *ctx, const void *qkv, const float *bias, const int32_t *cu_seqlens,
                                             const int32_t *cu_tiles, tbert_cuda_dtype dt, int B, int tiles,
                                             int heads, int d, cudaStream_t s) {
    return attention_fused(1, ctx, qkv, bias, cu_seqlens, cu_tiles, dt, B, tiles, heads, d, s);
}

extern "C" size_t tbert_cuda_attention_unfused_work_floats(int B, int T, int heads, int d) {
    const size_t bt = (size_t)(B > 0 ? B : 0) * (size_t)(T > 0 ? T : 0);
    const size_t H = (size_t)(heads > 0 ? heads : 0) * (size_t)(d > 0 ? d : 0);
    return 4 * bt * H + bt * (size_t)(heads > 0 ? heads : 0) * (size_t)(T > 0 ? T : 0);
}

extern "C" int tbert_cuda_attention_unfused(tbert_cublas_handle h, tbert_cuda_gemm_mode mode, void *ctx,
                                            const void *qkv, const float *bias, const int32_t *cu_seqlens,
                                            float *work, tbert_cuda_dtype dt, int B, int T, int heads, int d,
                                            cudaStream_t s) {
    SHAPE_CHECK(h && ctx && qkv && cu_seqlens && work && B >= 0 && T > 0 && heads > 0 && d > 0);
    if (B == 0) return 0;
    const size_t H = (size_t)heads * d, bt = (size_t)B * T, per = bt * H;
    const size_t batches = (size_t)B * heads;
    SHAPE_CHECK(batches <= 0x7fffffffu);
    float *q = work, *k = q + per, *v = k + per, *o = v + per, *S = o + per; // S: [B*heads, T, T]
    const size_t n3 = 3 * per;
    TBERT_DISPATCH_DTYPE(dt, TBERT_LAUNCH(split_heads_kernel<Act>, tbert::elt_grid(n3), tbert::kEltBlock, 0, s, q, k, v,
                                          (const Act *)qkv, bias, cu_seqlens, T, heads, d, n3));
    LAUNCH_CHECK(s);
    const cublasComputeType_t ct = mode == TBERT_CUDA_GEMM_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    const float one = 1.0f, zero = 0.0f;
    const long long sQ = (long long)T * d, sS = (long long)T * T;
    // S (row-major [i][j], i.e. column-major S^T) = K Q^T per (b, h)
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, T, T, d, &one, k, CUDA_R_32F, d, sQ, q,
                                            CUDA_R_32F, d, sQ, &zero, S, CUDA_R_32F, T, sS, (int)batches, ct,
                                            CUBLAS_GEMM_DEFAULT));
    const size_t rows = batches * T;
    SHAPE_CHECK(rows <= 0x7fffffffu);
    TBERT_LAUNCH(masked_softmax_kernel, (unsigned)rows, 128, 0, s, S, cu_seqlens, T, heads, 1.0f / sqrtf((float)d));
    LAUNCH_CHECK(s);
    // O (row-major [i][c], column-major O^T) = V^T P^T per (b, h)
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, d, T, T, &one, v, CUDA_R_32F, d, sQ, S,
                                            CUDA_R_32F, T, sS, &zero, o, CUDA_R_32F, d, sQ, (int)batches, ct,
                                            CUBLAS_GEMM_DEFAULT));
    TBERT_DISPATCH_DTYPE(dt, TBERT_LAUNCH(merge_heads_kernel<Act>, tbert::elt_grid(per), tbert::kEltBlock, 0, s,
                                          (Act *)ctx, o, cu_seqlens, T, heads, d, per));
    LAUNCH_CHECK(s);
    return 0;
}
