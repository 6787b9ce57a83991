// Embeddings of packed tokens: gather word + position + token-type (type 0) rows, sum, layernorm. One kernel,
// one block per token; a token's position is its row minus its sequence's first row.
#include "layernorm.cuh"
#include "packed.cuh"

namespace {

template <typename T>
__global__ void embeddings_ln_kernel(T *out, const int32_t *ids, const int32_t *cu_seqlens, int B, const float *word,
                                     const float *pos, const float *type, const float *g, const float *beta, float eps,
                                     int H, int V, int P) {
    TBERT_DYNAMIC_SHARED(float, smem); // [32 scratch][H row]
    float *scratch = smem, *buf = smem + 32;
    const int row = blockIdx.x;
    int t = row - cu_seqlens[tbert::last_le(cu_seqlens, B, row)];
    t = t < 0 ? 0 : (t >= P ? P - 1 : t); // the host keeps lengths <= P; the clamp only keeps reads in bounds
    int id = ids[row];
    id = id < 0 ? 0 : (id >= V ? V - 1 : id); // the host validates ids; the clamp only keeps reads in bounds
    const float *w = word + (size_t)id * H, *p = pos + (size_t)t * H;
    for (int c = threadIdx.x; c < H; c += blockDim.x) buf[c] = w[c] + p[c] + type[c];
    __syncthreads();
    tbert::layernorm_row(out + (size_t)row * H, buf, g, beta, eps, H, scratch);
}

} // namespace

extern "C" int tbert_cuda_embeddings_ln(void *out, tbert_cuda_dtype dt, const int32_t *ids, const int32_t *cu_seqlens,
                                        int B, int N, const float *word, const float *pos, const float *type,
                                        const float *g, const float *beta, float eps, int H, int V, int P,
                                        cudaStream_t s) {
    SHAPE_CHECK(out && ids && cu_seqlens && word && pos && type && g && beta);
    SHAPE_CHECK(B >= 0 && N >= 0 && H > 0 && H <= 8192 && V > 0 && P > 0);
    if (N == 0 || B == 0) return 0;
    const size_t smem = (32 + (size_t)H) * sizeof(float);
    TBERT_DISPATCH_DTYPE(dt, TBERT_LAUNCH(embeddings_ln_kernel<Act>, (unsigned)N, tbert::kLayernormBlock, smem, s,
                                          (Act *)out, ids, cu_seqlens, B, word, pos, type, g, beta, eps, H, V, P));
    LAUNCH_CHECK(s);
    return 0;
}
