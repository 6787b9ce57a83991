/* Counter-based random numbers for dropout (issue 15): Philox-4x32-10 (Salmon et al., "Parallel random numbers:
 * as easy as 1, 2, 3", SC'11), a pure function of (key, counter), so that the CPU and a CUDA kernel draw the same
 * mask for the same element whatever the thread layout. Header-only, static inline, no state: C17 (gcc), C++ (the
 * emulated device compiles kernels/NAME.cu as C++, where TBERT_HD is empty: its kernels are host functions) and nvcc
 * (TBERT_HD = __host__ __device__). Checked against Random123's known-answer vectors in tests/test_dropout_rng.c.
 *
 * The convention (the CUDA twins must draw exactly this):
 *   key     = (seed low 32 bits, seed high 32 bits)
 *   counter = (block low 32, block high 32, step low 32 bits, site), block = element index / 4
 *   element index i uses output word i % 4 of its block's draw: one Philox call gives the words of four consecutive
 *   elements (until issue 15's speed work each element used word 0 of its own call, three quarters of the draws
 *   thrown away: the masks of that convention differ from these)
 *   site    = layer * 8 + which, layer = the model's layer index (0-based, counted from the bottom; embeddings use
 *             layer 0), which = TBERT_DROP_EMBEDDINGS 0 (after the embedding LayerNorm), TBERT_DROP_ATTN_PROBS 1
 *             (softmax probabilities), TBERT_DROP_ATTN_OUT 2 (attention output projection + bias, before the
 *             residual add), TBERT_DROP_FFN_OUT 3 (FFN output projection + bias, before the residual add)
 *   element index, per site, in the batch's packed layout (include/tbert/encoder_backward.h):
 *             hidden sites (0, 2, 3): row * H + column of the packed [N, H] matrix (N = the batch's tokens);
 *             attention probabilities (1): the offset in the packed P array, i.e. sequence by sequence (windows in
 *             batch order), head by head, L x L row-major (tbert_attn_probs_size's layout).
 *   keep when (word >> 8) * 2^-24 >= p, and a kept value is
 *   multiplied by 1 / (1 - p) (computed in float as 1.0f / (1.0f - p)); p = 0 keeps everything (no draw). */
#ifndef TBERT_DROPOUT_RNG_H
#define TBERT_DROPOUT_RNG_H

#include <stdint.h>

#if defined(__CUDACC__)
#define TBERT_HD __host__ __device__
#else
#define TBERT_HD
#endif

enum { TBERT_DROP_EMBEDDINGS = 0, TBERT_DROP_ATTN_PROBS = 1, TBERT_DROP_ATTN_OUT = 2, TBERT_DROP_FFN_OUT = 3 };

/* Philox-4x32-10: out = the 10-round bijection of ctr under key (Random123's philox4x32 with R = 10). */
static inline TBERT_HD void tbert_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3], k0 = key[0], k1 = key[1];
    for (int r = 0; r < 10; r++) {
        if (r > 0) {
            k0 += 0x9E3779B9u; /* the golden ratio's and sqrt(3)-1's bits: Weyl key schedule */
            k1 += 0xBB67AE85u;
        }
        uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0, hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* The site number of (layer, which). */
static inline TBERT_HD uint32_t tbert_dropout_site(int layer, int which) {
    return (uint32_t)layer * 8u + (uint32_t)which;
}

/* The 32 random bits of one element: word index % 4 of Philox(key = seed, counter = (index / 4, step, site)). */
static inline TBERT_HD uint32_t tbert_dropout_u32(uint64_t seed, uint64_t step, uint32_t site, uint64_t index) {
    uint64_t block = index >> 2;
    uint32_t ctr[4] = {(uint32_t)block, (uint32_t)(block >> 32), (uint32_t)step, site};
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    uint32_t out[4];
    tbert_philox4x32_10(ctr, key, out);
    unsigned w = (unsigned)(index & 3u); /* selects, not out[w]: a dynamic index puts out in local memory on a GPU */
    return w == 0 ? out[0] : w == 1 ? out[1] : w == 2 ? out[2] : out[3];
}

/* The multiplier of one element: 0 (dropped) or 1 / (1 - p) (kept); 1 when p <= 0. */
static inline TBERT_HD float tbert_dropout_scale(uint64_t seed, uint64_t step, uint32_t site, uint64_t index, float p) {
    if (p <= 0.0f) return 1.0f;
    float u = (float)(tbert_dropout_u32(seed, step, site, index) >> 8) * 5.9604644775390625e-8f; /* 2^-24 */
    return u >= p ? 1.0f / (1.0f - p) : 0.0f;
}

#endif
