/* tbert's emulated CUDA device: bfloat16 (CUDA's cuda_bf16.h, the part tbert uses). Valid C17 and C++17.
 *
 * C sees only the 16-bit storage type (the C files under src/ pass bf16 buffers as uint16_t-sized elements). C++ (the kernels
 * compiled for the emulator) gets the class and CUDA's conversion intrinsics, with CUDA's rounding:
 *   float -> bf16: round to nearest, ties to even, on the 16 bits kept; overflow rounds to +-inf; subnormal
 *                  floats round like any other value (bf16 has float's exponent range, so they stay subnormal
 *                  or round to zero / the smallest normal); every NaN becomes CUDA's canonical quiet NaN
 *                  0x7fff (what cuda_bf16.hpp's host path returns and cvt.rn.bf16.f32 gives).
 *   bf16 -> float: exact (the 16 bits become the high half of the float).
 * The bit-level functions below are plain C so the C side and the tests can use them too. */
#ifndef TBERT_EMU_CUDA_BF16_H
#define TBERT_EMU_CUDA_BF16_H

#include <stdint.h>
#include <string.h>

typedef struct __nv_bfloat16_raw {
    unsigned short x;
} __nv_bfloat16_raw;

/* float -> bf16 bits, round to nearest even (CUDA's __float2bfloat16_rn). */
static inline unsigned short tbert_emu_f32_to_bf16_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu; /* any NaN: CUDA's canonical NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* ties to even; carries into the exponent (and to inf) as it should */
    return (unsigned short)(u >> 16);
}
/* bf16 bits -> float (exact). */
static inline float tbert_emu_bf16_bits_to_f32(unsigned short b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

#ifndef __cplusplus
typedef struct __nv_bfloat16 {
    unsigned short __x;
} __nv_bfloat16;
#else
struct __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(const __nv_bfloat16_raw &r) : __x(r.x) {}
    __nv_bfloat16(float f) : __x(tbert_emu_f32_to_bf16_bits(f)) {}
    __nv_bfloat16(double d) : __x(tbert_emu_f32_to_bf16_bits((float)d)) {}
    __nv_bfloat16 &operator=(float f) { __x = tbert_emu_f32_to_bf16_bits(f); return *this; }
    __nv_bfloat16 &operator=(const __nv_bfloat16_raw &r) { __x = r.x; return *this; }
    operator __nv_bfloat16_raw() const { __nv_bfloat16_raw r; r.x = __x; return r; }
    operator float() const { return tbert_emu_bf16_bits_to_f32(__x); }
};

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    __nv_bfloat16 b;
    b.__x = tbert_emu_f32_to_bf16_bits(f);
    return b;
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return tbert_emu_bf16_bits_to_f32(b.__x); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) {
    __nv_bfloat16 b;
    b.__x = u;
    return b;
}
#endif

#endif
