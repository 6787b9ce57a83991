// Embeddings: gather word + position + token-type (type 0) rows, sum, layernorm. One kernel, one block per token.
#include "layernorm.cuh"

namespace {

template <typename T>
__global__ void embeddings_ln_kernel(T *out, const int32_t *ids, const float *word, const float *pos,
                                     const float *type, const float *g, const float *beta, float eps, int T_len,
                                     int H, int V) {
    TBERT_DYNAMIC_SHARED(float, smem); // [32 scratch][H row]
    float *scratch = smem, *buf = smem + 32;
    const size_t row = blockIdx.x; // b * T + t
    const int t = (int)(row % (size_t)T_len);
    int id = ids[row];
    id = id < 0 ? 0 : (id >= V ? V - 1 : id); // padded positions may hold anything; real ids are validated
    const float *w = word + (size_t)id * H, *p = pos + (size_t)t * H;
    for (int c = threadIdx.x; c < H; c += blockDim.x) buf[c] = w[c] + p[c] + type[c];
    __syncthreads();
    tbert::layernorm_row(out + row * H, buf, g, beta, eps, H, scratch);
}

} // namespace

extern "C" int tbert_cuda_embeddings_ln(void *out, tbert_cuda_dtype dt, const int32_t *ids, const float *word,
                                        const float *pos, const float *type, const float *g, const float *beta,
                                        float eps, int B, int T, int H, int V, cudaStream_t s) {
    SHAPE_CHECK(out && ids && word && pos && type && g && beta);
    SHAPE_CHECK(B >= 0 && T > 0 && H > 0 && H <= 8192 && V > 0);
    const size_t rows = (size_t)B * (size_t)T;
    SHAPE_CHECK(rows <= 0x7fffffffu);
    if (rows == 0) return 0;
    const size_t smem = (32 + (size_t)H) * sizeof(float);
    TBERT_DISPATCH_DTYPE(dt, TBERT_LAUNCH(embeddings_ln_kernel<Act>, (unsigned)rows, tbert::kLayernormBlock, smem, s,
                                          (Act *)out, ids, word, pos, type, g, beta, eps, T, H, V));
    LAUNCH_CHECK(s);
    return 0;
}
