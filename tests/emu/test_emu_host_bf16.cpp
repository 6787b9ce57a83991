// The emulated device's bfloat16 (kernels/emu/include/cuda_bf16.h): CUDA's conversions, checked against bit
// patterns derived by hand (each one's reasoning beside it) and, for all 2^32 floats' worth of cases we can
// afford, against an independent nearest-even rounding written with frexp/rint in double.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "cuda_bf16.h"
#include "cuda_runtime.h"

static_assert(sizeof(__nv_bfloat16) == 2, "bf16 is 16 bits");

static int failures = 0;

#define EXPECT(cond)                                                                                             \
    do {                                                                                                         \
        if (!(cond)) {                                                                                           \
            std::printf("FAILED: %s (%s:%d)\n", #cond, __FILE__, __LINE__);                                      \
            failures++;                                                                                          \
        }                                                                                                        \
    } while (0)

static float from_bits(uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}
static uint32_t bits_of(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

static void check_round(uint32_t in, unsigned short want, const char *why) {
    unsigned short got = __bfloat16_as_ushort(__float2bfloat16(from_bits(in)));
    unsigned short got_rn = __bfloat16_as_ushort(__float2bfloat16_rn(from_bits(in)));
    unsigned short got_ctor = __nv_bfloat16(from_bits(in)).__x;
    if (got != want || got_rn != want || got_ctor != want) {
        std::printf("FAILED: float 0x%08x -> bf16 0x%04x (rn 0x%04x, ctor 0x%04x), expected 0x%04x: %s\n", in, got,
                    got_rn, got_ctor, want, why);
        failures++;
    }
}

static void test_hand_patterns() {
    check_round(0x3f800000u, 0x3f80, "1.0 is exact");
    check_round(0xbf800000u, 0xbf80, "-1.0 is exact");
    check_round(0x00000000u, 0x0000, "+0");
    check_round(0x80000000u, 0x8000, "-0 keeps its sign");
    check_round(0x3f808000u, 0x3f80, "1 + 2^-8: halfway between 0x3f80 and 0x3f81, ties to the even 0x3f80");
    check_round(0x3f818000u, 0x3f82, "halfway between 0x3f81 (odd) and 0x3f82: up to even");
    check_round(0x3f808001u, 0x3f81, "just above half: up");
    check_round(0x3f807fffu, 0x3f80, "just below half: down");
    check_round(0xbf808000u, 0xbf80, "negative tie: to even, magnitude down");
    check_round(0xbf818000u, 0xbf82, "negative tie: to even, magnitude up");
    check_round(0x3fffffffu, 0x4000, "1.99999988: carries into the exponent -> 2.0");
    check_round(0x7f800000u, 0x7f80, "+inf");
    check_round(0xff800000u, 0xff80, "-inf");
    check_round(0x7f7fffffu, 0x7f80, "FLT_MAX: above the largest bf16 + half ulp -> +inf");
    check_round(0xff7fffffu, 0xff80, "-FLT_MAX -> -inf");
    check_round(0x7f7f7fffu, 0x7f7f, "just below half an ulp under 0x7f7f: stays the largest finite bf16");
    check_round(0x7f7f8000u, 0x7f80, "tie between 0x7f7f (odd) and inf: to even -> inf");
    check_round(0x7fc00000u, 0x7fff, "quiet NaN -> canonical NaN");
    check_round(0x7f800001u, 0x7fff, "signalling NaN with the lowest payload bit: NaN, not inf");
    check_round(0xffc00001u, 0x7fff, "negative NaN -> canonical NaN");
    check_round(0x7fffffffu, 0x7fff, "NaN with all payload bits: no carry into anything");
    check_round(0x00010000u, 0x0001, "smallest bf16 subnormal is exact");
    check_round(0x00000001u, 0x0000, "smallest float subnormal: far below half -> +0");
    check_round(0x00008000u, 0x0000, "half of the smallest bf16 subnormal: tie to even 0");
    check_round(0x00018000u, 0x0002, "1.5 smallest subnormals: tie to even 2");
    check_round(0x00008001u, 0x0001, "just above half: up to the smallest subnormal");
    check_round(0x807fffffu, 0x8080, "largest negative subnormal rounds up into the smallest normal");
    check_round(0x007f7fffu, 0x007f, "largest bf16 subnormal, below half: stays subnormal");
}

static void test_to_float() {
    EXPECT(__bfloat162float(__ushort_as_bfloat16(0x3f80)) == 1.0f);
    EXPECT(__bfloat162float(__ushort_as_bfloat16(0xc040)) == -3.0f);
    EXPECT(bits_of(__bfloat162float(__ushort_as_bfloat16(0x0001))) == 0x00010000u);
    EXPECT(bits_of(__bfloat162float(__ushort_as_bfloat16(0x8000))) == 0x80000000u);
    EXPECT(std::isinf(__bfloat162float(__ushort_as_bfloat16(0xff80))));
    EXPECT(std::isnan(__bfloat162float(__ushort_as_bfloat16(0x7fff))));
    EXPECT(std::isnan(__bfloat162float(__ushort_as_bfloat16(0xff81))));
    // the class: construction, assignment, conversion back
    __nv_bfloat16 b = 1.5f;
    EXPECT(static_cast<float>(b) == 1.5f);
    b = 3.0f + 1.0f / 128.0f; // 3 + 2^-7: half an ulp of 3 (ulp 2^-6): tie to even 3.0 (0x4040)
    EXPECT(b.__x == 0x4040);
    __nv_bfloat16_raw raw = b;
    EXPECT(raw.x == 0x4040);
    __nv_bfloat16 c(raw);
    EXPECT(__bfloat162float(c) == 3.0f);
    float f = c; // implicit
    EXPECT(f == 3.0f);
    // every bf16 that is not NaN round-trips exactly through float
    int bad = 0;
    for (uint32_t u = 0; u < 0x10000u; u++) {
        unsigned short h = (unsigned short)u;
        if ((h & 0x7f80) == 0x7f80 && (h & 0x7f)) continue; // NaN
        if (__bfloat16_as_ushort(__float2bfloat16(__bfloat162float(__ushort_as_bfloat16(h)))) != h) bad++;
    }
    EXPECT(bad == 0);
}

// Independent reference: the bf16 nearest to x, ties to even, from frexp and rint (ties-to-even in the default
// rounding mode), including the subnormal range (fixed exponent -133 quantum) and overflow.
static unsigned short ref_bf16(float x) {
    if (std::isnan(x)) return 0x7fff;
    unsigned short sign = std::signbit(x) ? 0x8000 : 0;
    double a = std::fabs((double)x);
    if (std::isinf(x)) return sign | 0x7f80;
    if (a == 0.0) return sign;
    int e;
    std::frexp(a, &e);                    // a = m 2^e, 0.5 <= m < 1
    int q = e - 8 < -133 ? -133 : e - 8; // quantum: 8 significant bits, or the subnormal spacing 2^-133
    double r = std::ldexp(std::rint(std::ldexp(a, -q)), q);
    if (r >= std::ldexp(1.0, 128)) return sign | 0x7f80;
    // encode r exactly
    if (r < std::ldexp(1.0, -126)) return sign | (unsigned short)std::ldexp(r, 133);
    int er;
    double mr = std::frexp(r, &er); // r = mr 2^er
    unsigned short exp = (unsigned short)(er - 1 + 127), man = (unsigned short)(std::ldexp(mr, 8) - 128.0);
    return sign | (unsigned short)(exp << 7) | man;
}

static void test_against_reference() {
    // every float whose low 16 bits are one of a set of interesting tails (ties, near-ties, extremes), for every
    // high half: 65536 x 9 inputs covering all exponents, both signs, subnormals, inf and NaN.
    static const uint32_t tails[] = {0x0000, 0x0001, 0x7fff, 0x8000, 0x8001, 0xffff, 0x4000, 0xc000, 0x1234};
    long bad = 0;
    for (uint32_t hi = 0; hi < 0x10000u; hi++)
        for (uint32_t t : tails) {
            float x = from_bits(hi << 16 | t);
            unsigned short got = __bfloat16_as_ushort(__float2bfloat16(x)), want = ref_bf16(x);
            if (got != want) {
                if (bad < 5) std::printf("FAILED: 0x%08x -> 0x%04x, reference 0x%04x\n", hi << 16 | t, got, want);
                bad++;
            }
        }
    EXPECT(bad == 0);
    // the reference must itself tell ties apart: a truncating conversion disagrees with it
    EXPECT(ref_bf16(from_bits(0x3f818000u)) == 0x3f82 && (0x3f818000u >> 16) == 0x3f81);
}

int main() {
    test_hand_patterns();
    test_to_float();
    test_against_reference();
    if (failures) {
        std::printf("test_emu_host_bf16: %d check(s) failed\n", failures);
        return 1;
    }
    std::printf("test_emu_host_bf16: all checks passed\n");
    return 0;
}
