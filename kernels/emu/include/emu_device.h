/* tbert's emulated CUDA device, execution half: what kernel code sees (-DTBERT_CUDA=EMU).
 *
 * The kernels (kernels/NAME.cu) compile with the host C++ compiler against this header (through cuda_runtime.h). A kernel is an
 * ordinary function; TBERT_LAUNCH (kernels/cuda_check.cuh) turns into tbert_emu::launch(), which checks the
 * launch configuration as an H100 would and queues the grid on its stream (tbert_emu_enqueue). When the queue
 * runs it, kernels/emu/exec.cpp runs the blocks one after another and every CUDA thread as a fiber that switches
 * only at sync points (__syncthreads, warp collectives). threadIdx & co. are found from the fiber's stack
 * pointer (each fiber stack is kStackSize-aligned with a tbert_emu::fiber_top at its top), so kernel code needs
 * no thread-local storage.
 *
 * Shared memory: TBERT_SHARED / TBERT_SHARED_VAR / TBERT_DYNAMIC_SHARED (cuda_check.cuh) become a fresh heap
 * block per CUDA block, of exactly the declared or launched size, filled with 0xFF bytes (NaN floats).
 * A raw __shared__ does not compile here, on purpose.
 *
 * Sync points take their call site from __builtin_FILE()/__builtin_LINE() default arguments, so the reports of a
 * misused barrier or shuffle name the .cu (or .cuh) line. */
#ifndef TBERT_EMU_DEVICE_H
#define TBERT_EMU_DEVICE_H

#include "emu_types.h"

#ifdef __cplusplus

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <cmath>
#include <cstddef>
#include <new>
#include <tuple>
#include <type_traits>
#include <utility>

/* ---- qualifiers ---- */
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ tbert_emu_use_TBERT_SHARED_instead_of_raw___shared__
#define __constant__ tbert_emu_has_no___constant__memory

/* ---- vector types ---- */
struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};
struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) int2 {
    int x, y;
};
struct alignas(16) int4 {
    int x, y, z, w;
};
struct alignas(16) double2 {
    double x, y;
};
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline int2 make_int2(int x, int y) { return int2{x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
inline dim3 make_dim3(unsigned x, unsigned y, unsigned z) { return dim3(x, y, z); }

constexpr int warpSize = 32;

/* ---- kernel attributes (cudaFuncSetAttribute) ---- */
enum cudaFuncAttribute {
    cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
    cudaFuncAttributePreferredSharedMemoryCarveout = 9
};

namespace tbert_emu {

/* H100 launch limits (what check_launch enforces). */
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxBlockDim[3] = {1024, 1024, 64};
constexpr unsigned kMaxGridDim[3] = {2147483647u, 65535, 65535};
constexpr size_t kDefaultDynamicShared = 48 * 1024;  /* without the cudaFuncSetAttribute opt-in */
constexpr size_t kMaxDynamicSharedOptIn = 227 * 1024; /* sharedMemPerBlockOptin */

/* Every fiber stack is a kStackSize-aligned region with this record at its top. */
constexpr size_t kStackSize = 256 * 1024;
struct block_view {
    uint3 block_idx;
    dim3 block_dim, grid_dim;
};
struct thread_view {
    uint3 thread_idx;
    const block_view *block;
};
struct fiber_top {
    thread_view *thread; /* the CUDA thread this fiber runs now */
    void *owner;         /* exec.cpp's fiber record */
};
/* The record sits 64 * (1 + region index mod 64) bytes below the region's top (and the stack starts below it):
 * without that "colouring" every fiber's hot top-of-stack lines would fall into the same cache sets. */
inline fiber_top *fiber_top_of(uintptr_t region) {
    return reinterpret_cast<fiber_top *>(region + kStackSize - 64 * (1 + ((region / kStackSize) & 63)));
}
inline fiber_top *self() {
    const uintptr_t fa = (uintptr_t)__builtin_frame_address(0);
    return fiber_top_of(fa & ~(uintptr_t)(kStackSize - 1));
}

/* ---- runtime entry points (exec.cpp) ---- */
enum sync_kind {
    SYNC_THREADS = 0,     /* __syncthreads and its _count/_and/_or forms */
    SYNC_WARP,            /* __syncwarp */
    SHFL_IDX,             /* __shfl_sync */
    SHFL_UP,              /* __shfl_up_sync */
    SHFL_DOWN,            /* __shfl_down_sync */
    SHFL_XOR,             /* __shfl_xor_sync */
    VOTE_BALLOT,          /* __ballot_sync */
    VOTE_ANY,             /* __any_sync */
    VOTE_ALL,             /* __all_sync */
    REDUCE_ADD,           /* __reduce_add_sync (unsigned) */
    REDUCE_MIN,           /* __reduce_min_sync (unsigned / int by flag) */
    REDUCE_MAX,           /* __reduce_max_sync */
    SYNC_KIND_COUNT
};
/* A barrier of the whole block; returns the count of threads with pred != 0 (for the _count/_and/_or forms). */
int block_barrier(int pred, const char *form, const char *file, int line);
/* A warp collective; value: the lane's operand as raw bits (<= 8 bytes); arg: src lane / delta / lane mask;
 * is_signed: REDUCE_MIN/MAX on int. Returns the result bits (all ones = poison where CUDA leaves it undefined). */
uint64_t warp_collective(sync_kind kind, unsigned mask, uint64_t value, int arg, int width, int is_signed,
                         const char *file, int line);
/* Shared memory of the running block: the same pointer for every thread of the block. */
void *static_shared(const char *file, int line, size_t bytes);
void *dynamic_shared();
/* A fault raised by kernel code (__trap, a failed device assert). Does not return to the kernel. */
[[noreturn]] void device_trap(const char *what, const char *file, int line);

/* Launch: checks the configuration (launch errors go to cudaGetLastError, the kernel does not run), then queues a
 * grid_job on the stream. */
struct grid_job {
    dim3 grid, block;
    size_t smem;
    const char *name; /* as written at the launch, e.g. "(attention_fused_v2_kernel<T, NC>)" */
    const char *file;
    int line;
    void (*body)(void *job); /* runs one CUDA thread: calls the kernel with the job's arguments */
    void (*destroy)(void *job);
    char what[192]; /* "kernel NAME (file.cu:LINE)": names the queued work in the host's reports */
};
cudaError_t check_launch(const void *fn, dim3 grid, dim3 block, size_t smem);
void enqueue_grid(cudaStream_t stream, grid_job *job); /* takes ownership of job */
cudaError_t func_set_attribute(const void *fn, int attr, int value);

template <typename... P> struct kernel_job : grid_job {
    void (*fn)(P...);
    std::tuple<std::decay_t<P>...> args;
    template <typename... A>
    kernel_job(void (*f)(P...), A &&...a) : grid_job(), fn(f), args(std::forward<A>(a)...) {}
    static void run(void *self) {
        kernel_job *k = static_cast<kernel_job *>(self);
        std::apply(k->fn, k->args); /* by value: each CUDA thread gets its own copy of the parameters */
    }
    static void drop(void *self) { delete static_cast<kernel_job *>(self); }
};

template <typename... P, typename... A>
void launch(void (*fn)(P...), const char *name, const char *file, int line, dim3 grid, dim3 block, size_t smem,
            cudaStream_t stream, A &&...args) {
    static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
    if (check_launch(reinterpret_cast<const void *>(fn), grid, block, smem) != cudaSuccess) return;
    kernel_job<P...> *k = new (std::nothrow) kernel_job<P...>(fn, std::forward<A>(args)...);
    if (!k) {
        tbert_emu_set_launch_error(cudaErrorMemoryAllocation);
        return;
    }
    k->grid = grid;
    k->block = block;
    k->smem = smem;
    k->name = name;
    k->file = file;
    k->line = line;
    k->body = &kernel_job<P...>::run;
    k->destroy = &kernel_job<P...>::drop;
    enqueue_grid(stream, k);
}

template <typename T> inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp collectives move <= 8 bytes");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof(T));
    return b;
}
template <typename T> inline T from_bits(uint64_t b) {
    T v;
    memcpy(&v, &b, sizeof(T));
    return v;
}

} // namespace tbert_emu

template <typename... P> inline cudaError_t cudaFuncSetAttribute(void (*fn)(P...), cudaFuncAttribute attr, int value) {
    return tbert_emu::func_set_attribute(reinterpret_cast<const void *>(fn), (int)attr, value);
}

/* ---- built-in variables ---- */
#define threadIdx (::tbert_emu::self()->thread->thread_idx)
#define blockIdx (::tbert_emu::self()->thread->block->block_idx)
#define blockDim (::tbert_emu::self()->thread->block->block_dim)
#define gridDim (::tbert_emu::self()->thread->block->grid_dim)

/* ---- barriers and warp primitives ---- */
inline void __syncthreads(const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    tbert_emu::block_barrier(0, "__syncthreads", file, line);
}
inline int __syncthreads_count(int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return tbert_emu::block_barrier(pred != 0, "__syncthreads_count", file, line);
}
inline int __syncthreads_and(int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    const unsigned n = blockDim.x * blockDim.y * blockDim.z;
    return tbert_emu::block_barrier(pred != 0, "__syncthreads_and", file, line) == (int)n;
}
inline int __syncthreads_or(int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return tbert_emu::block_barrier(pred != 0, "__syncthreads_or", file, line) != 0;
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    tbert_emu::warp_collective(tbert_emu::SYNC_WARP, mask, 0, 0, 32, 0, file, line);
}
template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32, const char *file = __builtin_FILE(),
                     int line = __builtin_LINE()) {
    return tbert_emu::from_bits<T>(
        tbert_emu::warp_collective(tbert_emu::SHFL_IDX, mask, tbert_emu::to_bits(var), src_lane, width, 0, file, line));
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32, const char *file = __builtin_FILE(),
                        int line = __builtin_LINE()) {
    return tbert_emu::from_bits<T>(tbert_emu::warp_collective(tbert_emu::SHFL_UP, mask, tbert_emu::to_bits(var),
                                                              (int)delta, width, 0, file, line));
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32, const char *file = __builtin_FILE(),
                          int line = __builtin_LINE()) {
    return tbert_emu::from_bits<T>(tbert_emu::warp_collective(tbert_emu::SHFL_DOWN, mask, tbert_emu::to_bits(var),
                                                              (int)delta, width, 0, file, line));
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32, const char *file = __builtin_FILE(),
                         int line = __builtin_LINE()) {
    return tbert_emu::from_bits<T>(
        tbert_emu::warp_collective(tbert_emu::SHFL_XOR, mask, tbert_emu::to_bits(var), lane_mask, width, 0, file, line));
}
inline unsigned __ballot_sync(unsigned mask, int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return (unsigned)tbert_emu::warp_collective(tbert_emu::VOTE_BALLOT, mask, pred != 0, 0, 32, 0, file, line);
}
inline int __any_sync(unsigned mask, int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return (int)tbert_emu::warp_collective(tbert_emu::VOTE_ANY, mask, pred != 0, 0, 32, 0, file, line);
}
inline int __all_sync(unsigned mask, int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return (int)tbert_emu::warp_collective(tbert_emu::VOTE_ALL, mask, pred != 0, 0, 32, 0, file, line);
}
inline unsigned __reduce_add_sync(unsigned mask, unsigned v, const char *file = __builtin_FILE(),
                                  int line = __builtin_LINE()) {
    return (unsigned)tbert_emu::warp_collective(tbert_emu::REDUCE_ADD, mask, v, 0, 32, 0, file, line);
}
inline int __reduce_add_sync(unsigned mask, int v, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return (int)(unsigned)tbert_emu::warp_collective(tbert_emu::REDUCE_ADD, mask, (unsigned)v, 0, 32, 1, file, line);
}
inline unsigned __reduce_min_sync(unsigned mask, unsigned v, const char *file = __builtin_FILE(),
                                  int line = __builtin_LINE()) {
    return (unsigned)tbert_emu::warp_collective(tbert_emu::REDUCE_MIN, mask, v, 0, 32, 0, file, line);
}
inline int __reduce_min_sync(unsigned mask, int v, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return (int)(unsigned)tbert_emu::warp_collective(tbert_emu::REDUCE_MIN, mask, (unsigned)v, 0, 32, 1, file, line);
}
inline unsigned __reduce_max_sync(unsigned mask, unsigned v, const char *file = __builtin_FILE(),
                                  int line = __builtin_LINE()) {
    return (unsigned)tbert_emu::warp_collective(tbert_emu::REDUCE_MAX, mask, v, 0, 32, 0, file, line);
}
inline int __reduce_max_sync(unsigned mask, int v, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return (int)(unsigned)tbert_emu::warp_collective(tbert_emu::REDUCE_MAX, mask, (unsigned)v, 0, 32, 1, file, line);
}
/* The emulator runs one thread at a time: every access is already ordered, fences are no-ops. */
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}
inline void __trap(const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    tbert_emu::device_trap("__trap()", file, line);
}
template <typename T> inline T __ldg(const T *p) { return *p; }

/* ---- atomics: applied in schedule order (one CUDA thread runs at a time) ---- */
template <typename T> inline T tbert_emu_atomic_add(T *p, T v) {
    const T old = *p;
    *p = old + v;
    return old;
}
inline int atomicAdd(int *p, int v) { return tbert_emu_atomic_add(p, v); }
inline unsigned atomicAdd(unsigned *p, unsigned v) { return tbert_emu_atomic_add(p, v); }
inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v) { return tbert_emu_atomic_add(p, v); }
inline float atomicAdd(float *p, float v) { return tbert_emu_atomic_add(p, v); }
inline double atomicAdd(double *p, double v) { return tbert_emu_atomic_add(p, v); }
inline int atomicSub(int *p, int v) {
    const int old = *p;
    *p = (int)((unsigned)old - (unsigned)v);
    return old;
}
inline unsigned atomicSub(unsigned *p, unsigned v) {
    const unsigned old = *p;
    *p = old - v;
    return old;
}
template <typename T> inline T tbert_emu_atomic_cas(T *p, T compare, T v) {
    const T old = *p;
    if (old == compare) *p = v;
    return old;
}
inline int atomicCAS(int *p, int compare, int v) { return tbert_emu_atomic_cas(p, compare, v); }
inline unsigned atomicCAS(unsigned *p, unsigned compare, unsigned v) { return tbert_emu_atomic_cas(p, compare, v); }
inline unsigned long long atomicCAS(unsigned long long *p, unsigned long long compare, unsigned long long v) {
    return tbert_emu_atomic_cas(p, compare, v);
}
template <typename T> inline T tbert_emu_atomic_exch(T *p, T v) {
    const T old = *p;
    *p = v;
    return old;
}
inline int atomicExch(int *p, int v) { return tbert_emu_atomic_exch(p, v); }
inline unsigned atomicExch(unsigned *p, unsigned v) { return tbert_emu_atomic_exch(p, v); }
inline unsigned long long atomicExch(unsigned long long *p, unsigned long long v) { return tbert_emu_atomic_exch(p, v); }
inline float atomicExch(float *p, float v) { return tbert_emu_atomic_exch(p, v); }
template <typename T> inline T tbert_emu_atomic_max(T *p, T v) {
    const T old = *p;
    if (v > old) *p = v;
    return old;
}
template <typename T> inline T tbert_emu_atomic_min(T *p, T v) {
    const T old = *p;
    if (v < old) *p = v;
    return old;
}
inline int atomicMax(int *p, int v) { return tbert_emu_atomic_max(p, v); }
inline unsigned atomicMax(unsigned *p, unsigned v) { return tbert_emu_atomic_max(p, v); }
inline unsigned long long atomicMax(unsigned long long *p, unsigned long long v) { return tbert_emu_atomic_max(p, v); }
inline long long atomicMax(long long *p, long long v) { return tbert_emu_atomic_max(p, v); }
inline int atomicMin(int *p, int v) { return tbert_emu_atomic_min(p, v); }
inline unsigned atomicMin(unsigned *p, unsigned v) { return tbert_emu_atomic_min(p, v); }
inline unsigned long long atomicMin(unsigned long long *p, unsigned long long v) { return tbert_emu_atomic_min(p, v); }
inline long long atomicMin(long long *p, long long v) { return tbert_emu_atomic_min(p, v); }

/* ---- device math: libm, with the round-to-nearest intrinsics as single IEEE operations (the build has no FMA
 * contraction: -std=c++17 implies -ffp-contract=off) ---- */
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return powf(10.0f, x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __fadd_rn(float x, float y) { return x + y; }
inline float __fsub_rn(float x, float y) { return x - y; }
inline float __fmul_rn(float x, float y) { return x * y; }
inline float __fdiv_rn(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
inline float __fmaf_rn(float x, float y, float z) { return fmaf(x, y, z); }
inline double __dadd_rn(double x, double y) { return x + y; }
inline double __dsub_rn(double x, double y) { return x - y; }
inline double __dmul_rn(double x, double y) { return x * y; }
inline double __ddiv_rn(double x, double y) { return x / y; }
inline double __fma_rn(double x, double y, double z) { return fma(x, y, z); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : (x == x ? x : 0.0f)); }
inline int __float_as_int(float x) { return tbert_emu::from_bits<int>(tbert_emu::to_bits(x)); }
inline unsigned __float_as_uint(float x) { return tbert_emu::from_bits<unsigned>(tbert_emu::to_bits(x)); }
inline float __int_as_float(int x) { return tbert_emu::from_bits<float>(tbert_emu::to_bits(x)); }
inline float __uint_as_float(unsigned x) { return tbert_emu::from_bits<float>(tbert_emu::to_bits(x)); }
inline long long __double_as_longlong(double x) { return tbert_emu::from_bits<long long>(tbert_emu::to_bits(x)); }
inline double __longlong_as_double(long long x) { return tbert_emu::from_bits<double>(tbert_emu::to_bits(x)); }
inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
inline int __float2int_rz(float x) { return (int)x; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; i++) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
inline unsigned __umulhi(unsigned x, unsigned y) { return (unsigned)(((unsigned long long)x * y) >> 32); }

#endif /* __cplusplus */
#endif
