// The one step of the trainable stack on the device (src/finetune_stack_cuda.c) that no other kernel file has:
// the embedding sum z = word[id] + pos[t] + type[0], kept in float32 because the saving layernorm forward
// (layernorm_bwd.cu) normalises it and the backward needs it (embeddings.cu's fused kernel does not keep it).
// CPU twin: tbert_fwd_embeddings (src/encoder_backward.c). Contract: include/tbert/cuda_kernels.h.
#include "elementwise.cuh"
#include "packed.cuh"

namespace {

constexpr int kRowBlock = 128;

// one block per packed row r: z[r] = word[ids[r]] + pos[t] + type[0], t = r's position in its sequence (the CPU's
// order of the two adds)
__global__ void emb_sum_kernel(float *z, const int32_t *ids, const int32_t *cu_seqlens, int B, const float *word,
                               const float *pos, const float *type, int H) {
    const int r = blockIdx.x;
    const int b = tbert::last_le(cu_seqlens, B, r);
    const int t = r - cu_seqlens[b];
    const float *w = word + (size_t)ids[r] * H, *p = pos + (size_t)t * H;
    for (int j = threadIdx.x; j < H; j += blockDim.x) z[(size_t)r * H + j] = w[j] + p[j] + type[j];
}

} // namespace

extern "C" int tbert_cuda_emb_sum(float *z, const int32_t *ids, const int32_t *cu_seqlens, int B, int N,
                                  const float *word, const float *pos, const float *type, int H, cudaStream_t s) {
    SHAPE_CHECK(z && ids && cu_seqlens && word && pos && type && B >= 0 && N >= 0 && H > 0);
    if (N == 0) return 0;
    TBERT_LAUNCH(emb_sum_kernel, N, kRowBlock, 0, s, z, ids, cu_seqlens, B, word, pos, type, H);
    LAUNCH_CHECK(s);
    return 0;
}
