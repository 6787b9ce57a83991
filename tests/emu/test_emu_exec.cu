// Self-tests of the emulated CUDA device's execution half (kernels/emu/exec.cpp): each check of the emulator must
// be seen to fire on a deliberately wrong kernel, and each primitive must give CUDA's values (computed here by
// hand from the CUDA/PTX documentation, for 32-lane warps). One case per ctest: `test_emu_exec CASE`.
// Kernels are compiled from this .cu file by the host compiler, as kernels/*.cu are in the EMU build.
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

#include "cuda_launch.cuh"

namespace {

int g_fail = 0;
#define CHECK(cond, ...)                                                                  \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            std::fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);          \
            std::fprintf(stderr, __VA_ARGS__);                                            \
            std::fputc('\n', stderr);                                                     \
            g_fail++;                                                                     \
        }                                                                                 \
    } while (0)

bool has(const std::string &s, const std::string &sub) { return s.find(sub) != std::string::npos; }
std::string line_tag(int line) { return "test_emu_exec.cu:" + std::to_string(line) + ")"; }
void order(const char *o) { setenv("TBERT_EMU_ORDER", o, 1); }
void reset() {
    tbert_emu_reset_faults();
    (void)cudaGetLastError();
    order("forward");
}
std::string last_fault() { return tbert_emu_last_fault(); }
const unsigned kFull = 0xffffffffu;
const uint32_t kPoison32 = 0xffffffffu;

// ---- kernels ----------------------------------------------------------------------------------------------------

// Every thread records its indices; lane 0's linear id comes back through a shuffle (warps = 32 consecutive
// linear ids, x fastest).
__global__ void k_indices(int *out) {
    const unsigned lin = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const unsigned blin = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const unsigned nt = blockDim.x * blockDim.y * blockDim.z;
    int *o = out + (size_t)(blin * nt + lin) * 8;
    o[0] = (int)threadIdx.x, o[1] = (int)threadIdx.y, o[2] = (int)threadIdx.z;
    o[3] = (int)blockIdx.x, o[4] = (int)blockIdx.y, o[5] = (int)blockIdx.z;
    o[6] = (int)(blockDim.x * 10000 + gridDim.x * 100 + gridDim.z);
    o[7] = __shfl_sync(kFull, (int)lin, 0);
}

__global__ void k_barrier_skip(int *out, int *line, int skip) {
    TBERT_SHARED(int, s, 64);
    s[threadIdx.x] = (int)threadIdx.x;
    if ((int)threadIdx.x == skip) return;
    *line = __LINE__; __syncthreads();
    out[blockIdx.x * 64 + threadIdx.x] = s[63 - threadIdx.x];
}

__global__ void k_barrier_sites(int *line) {
    if (threadIdx.x & 1) {
        line[0] = __LINE__; __syncthreads();
    } else {
        line[1] = __LINE__; __syncthreads();
    }
}

__global__ void k_barrier_count(int *out) {
    const int t = (int)threadIdx.x;
    out[t * 4 + 0] = __syncthreads_count(t % 3 == 0);
    out[t * 4 + 1] = __syncthreads_and(t % 3 == 0);
    out[t * 4 + 2] = __syncthreads_or(t == 95);
    out[t * 4 + 3] = __syncthreads_and(t < 1000);
}

__global__ void k_shfl_exit(uint32_t *out, int *line, int exit_lane, unsigned mask) {
    const unsigned lane = threadIdx.x & 31;
    if ((int)lane == exit_lane) return;
    uint32_t v = lane * 100u;
    *line = __LINE__; v = __shfl_xor_sync(mask, v, 1);
    out[threadIdx.x] = v;
}

__global__ void k_shfl_split(int *line) {
    const unsigned lane = threadIdx.x & 31;
    int v = (int)lane;
    if (lane < 16) {
        line[0] = __LINE__; v = __shfl_sync(kFull, v, 0);
    } else {
        line[1] = __LINE__; v = __shfl_sync(kFull, v, 1);
    }
    (void)v;
}

__global__ void k_shfl_mask(int *out, unsigned mask, int width) { out[threadIdx.x] = __shfl_sync(mask, 5, 0, width); }

__global__ void k_shfl_partial(int *out) {
    const unsigned m = (threadIdx.x >> 5) == 1 ? 0xffffu : kFull;
    out[threadIdx.x] = __shfl_sync(m, (int)threadIdx.x, 3);
}

__global__ void k_warp_values(uint32_t *out, double *dout) {
    const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const unsigned v = lane * 10u + warp * 1000u;
    uint32_t *o = out + threadIdx.x * 16;
    o[0] = __shfl_sync(kFull, v, (int)((lane * 7 + 3) & 31));
    o[1] = __shfl_sync(kFull, v, (int)lane + 40); // srcLane >= width: taken modulo the width
    o[2] = __shfl_up_sync(kFull, v, 3);
    o[3] = __shfl_down_sync(kFull, v, 5);
    o[4] = __shfl_xor_sync(kFull, v, 5);
    o[5] = __ballot_sync(kFull, lane % 3 == 0);
    o[6] = (uint32_t)__any_sync(kFull, lane == 17);
    o[7] = (uint32_t)__any_sync(kFull, 0);
    o[8] = (uint32_t)__all_sync(kFull, lane < 32);
    o[9] = (uint32_t)__all_sync(kFull, lane != 4);
    o[10] = __reduce_add_sync(kFull, lane);
    o[11] = (uint32_t)__reduce_min_sync(kFull, (int)lane - 7 - (int)warp);
    o[12] = (uint32_t)__reduce_max_sync(kFull, (int)lane * 3 - 50);
    o[13] = __reduce_max_sync(kFull, lane == 9 ? 0x90000000u : lane);
    __syncwarp();
    o[14] = lane >= 8 && lane < 16 ? __ballot_sync(0x0000ff00u, lane & 1) : 0; // a sub-warp vote
    dout[threadIdx.x] = __shfl_down_sync(kFull, 0.5 + lane, 1);
}

__global__ void k_warp_widths(uint32_t *out) {
    const unsigned lane = threadIdx.x & 31;
    uint32_t *o = out + threadIdx.x * 8;
    o[0] = __shfl_sync(kFull, lane, 2, 8);
    o[1] = __shfl_up_sync(kFull, lane, 1, 8);
    o[2] = __shfl_down_sync(kFull, lane, 2, 16);
    o[3] = __shfl_xor_sync(kFull, lane, 4, 8);
    o[4] = __shfl_xor_sync(kFull, lane, 8, 8);
    o[5] = __shfl_sync(kFull, lane, 31, 1);
    if (lane < 16) o[6] = __shfl_down_sync(0x0000ffffu, lane, 1); // lane 15 reads lane 16: not in the mask
    else o[6] = __shfl_up_sync(0xffff0000u, lane, 2);
    o[7] = __shfl_up_sync(kFull, lane, 33);                       // delta taken mod 32: 1
}

__global__ void k_shared_poison(uint32_t *out, int n) {
    TBERT_DYNAMIC_SHARED(float, dyn);
    TBERT_SHARED(float, st, 8);
    TBERT_SHARED_VAR(uint32_t, one);
    if (threadIdx.x == 0) {
        uint32_t *o = out + blockIdx.x * 4;
        memcpy(&o[0], &dyn[n - 1], 4); // never written in this block: poison
        memcpy(&o[1], &st[7], 4);
        o[2] = one;
        dyn[n - 1] = 1.0f, st[7] = 2.0f, one = 3; // written now; the next block must not see them
    }
}

__global__ void k_shared_static(int *out) {
    TBERT_SHARED(int, a, 96);
    TBERT_SHARED(int, b, 96);
    TBERT_SHARED_VAR(int, total);
    const int t = (int)threadIdx.x;
    if (t == 0) total = 0;
    a[t] = t;
    b[t] = 1000 + t;
    __syncthreads();
    atomicAdd(&total, a[(t + 1) % 96]);
    __syncthreads();
    out[t] = a[(t + 5) % 96] + b[(t + 95) % 96] + total * 100000;
}

#if defined(__SANITIZE_ADDRESS__)
__global__ void k_oob_dynamic(float *out, int n) {
    TBERT_DYNAMIC_SHARED(float, dyn);
    dyn[threadIdx.x] = 1.0f; // thread n writes one past the launched size
    out[0] = 0.0f;
}

__global__ void k_oob_static(float *out, int i) {
    TBERT_SHARED(float, st, 32);
    float *p = st; // through a pointer: UBSan's bounds check of the array type would report it first
    p[i] = 1.0f;
    out[0] = st[0];
}
#endif

__global__ void k_racy(int *out, int use_sync) {
    TBERT_SHARED(int, s, 128);
    s[threadIdx.x] = (int)threadIdx.x * 3 + 1;
    if (use_sync) __syncthreads();
    out[blockIdx.x * 128 + threadIdx.x] = s[(threadIdx.x + 1) % 128];
}

__device__ float test_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
    return v;
}

// Two block sums through one scratch array, as cuda_check.cuh's block_sum does; without the barrier after the
// first sum's read, a warp that runs ahead overwrites scratch before a slower warp has read it.
__global__ void k_two_sums(float *out, int use_sync) {
    TBERT_SHARED(float, scratch, 32);
    const int lane = (int)threadIdx.x & 31, warp = (int)threadIdx.x >> 5, nw = (int)blockDim.x >> 5;
    float v = test_warp_sum((float)threadIdx.x);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = test_warp_sum(lane < nw ? scratch[lane] : 0.0f);
    if (use_sync) __syncthreads();
    float v2 = test_warp_sum(1.0f);
    if (lane == 0) scratch[warp] = v2;
    __syncthreads();
    float t2 = test_warp_sum(lane < nw ? scratch[lane] : 0.0f);
    out[threadIdx.x * 2] = t, out[threadIdx.x * 2 + 1] = t2;
}

__global__ void k_flag(int *flag) {
    if (threadIdx.x + threadIdx.y + threadIdx.z + blockIdx.x + blockIdx.y + blockIdx.z == 0) *flag += 1;
}

__global__ void k_atomics(int *ci, float *cf, double *cd, int *mx, int *mn, int *cas, unsigned *ex, int *tickets) {
    const int g = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    atomicAdd(ci, 1);
    atomicAdd(cf, 0.5f);
    atomicAdd(cd, 0.25);
    atomicMax(mx, (g * 7919) % 1000);
    atomicMin(mn, 500 - (g * 7919) % 1000);
    atomicCAS(cas, -1, g);
    atomicExch(ex, (unsigned)g);
    tickets[g] = atomicAdd(ci + 1, 1);
}

__global__ void k_fault_block(int *out, int bad_block) {
    if ((int)blockIdx.x == bad_block && threadIdx.x == 3) return;
    __syncthreads();
    out[blockIdx.x * 32 + threadIdx.x] = 7;
}

__global__ void k_bench_shfl(float *out, int iters) {
    float v = (float)threadIdx.x;
    for (int i = 0; i < iters; i++) v += __shfl_xor_sync(kFull, v, i & 31) * 0.5f;
    out[blockIdx.x * blockDim.x + threadIdx.x] = v;
}

__global__ void k_bench_plain(float *out, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = out[i] * 0.5f + 1.0f;
}

// ---- cases ------------------------------------------------------------------------------------------------------

void case_indices() {
    const dim3 grid(3, 2, 2), block(8, 4, 2);
    const int nt = 64, nb = 12;
    std::vector<int> out((size_t)nt * nb * 8, -5);
    TBERT_LAUNCH(k_indices, grid, block, 0, 0, out.data());
    CHECK(cudaGetLastError() == cudaSuccess, "launch");
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "sync: %s", last_fault().c_str());
    for (int bz = 0; bz < 2; bz++)
        for (int by = 0; by < 2; by++)
            for (int bx = 0; bx < 3; bx++)
                for (int z = 0; z < 2; z++)
                    for (int y = 0; y < 4; y++)
                        for (int x = 0; x < 8; x++) {
                            const int lin = x + 8 * (y + 4 * z), blin = bx + 3 * (by + 2 * bz);
                            const int *o = &out[((size_t)blin * nt + lin) * 8];
                            const int want[8] = {x, y, z, bx, by, bz, 8 * 10000 + 3 * 100 + 2, lin / 32 * 32};
                            for (int k = 0; k < 8; k++)
                                CHECK(o[k] == want[k], "block (%d,%d,%d) thread (%d,%d,%d) field %d: %d, want %d", bx,
                                      by, bz, x, y, z, k, o[k], want[k]);
                        }
}

void case_barrier_skip() {
    std::vector<int> out(128, -1);
    int line = 0;
    TBERT_LAUNCH(k_barrier_skip, 2, 64, 0, 0, out.data(), &line, -1); // control: nobody skips
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "control run: %s", last_fault().c_str());
    for (int i = 0; i < 128; i++) CHECK(out[i] == 63 - i % 64, "out[%d] = %d", i, out[i]);
    TBERT_LAUNCH(k_barrier_skip, 2, 64, 0, 0, out.data(), &line, 5);
    CHECK(cudaDeviceSynchronize() == cudaErrorIllegalInstruction, "the skipped barrier is not reported");
    const std::string f = last_fault();
    CHECK(has(f, "kernel k_barrier_skip (test_emu_exec.cu:") && has(f, "block (0,0,0)") && has(f, "__syncthreads (") &&
              has(f, line_tag(line)) && has(f, "thread (5,0,0) has exited") && has(f, "63 of 64 threads wait"),
          "message: %s", f.c_str());
}

void case_barrier_sites() {
    int line[2] = {0, 0};
    TBERT_LAUNCH(k_barrier_sites, 1, 64, 0, 0, line);
    CHECK(cudaDeviceSynchronize() == cudaErrorIllegalInstruction, "two barrier sites not reported");
    const std::string f = last_fault();
    CHECK(line[0] && line[1] && line[0] != line[1], "lines %d %d", line[0], line[1]);
    // forward order: thread 0 (even, line[1]) waits first, thread 1 arrives at line[0]
    CHECK(has(f, "two barrier call sites") && has(f, line_tag(line[0])) && has(f, line_tag(line[1])) &&
              has(f, "thread (1,0,0)"),
          "message: %s", f.c_str());
}

void case_barrier_count() {
    std::vector<int> out(96 * 4, -1);
    TBERT_LAUNCH(k_barrier_count, 1, 96, 0, 0, out.data());
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "%s", last_fault().c_str());
    for (int t = 0; t < 96; t++) {
        CHECK(out[t * 4 + 0] == 32, "count at %d: %d", t, out[t * 4]);
        CHECK(out[t * 4 + 1] == 0, "and at %d: %d", t, out[t * 4 + 1]);
        CHECK(out[t * 4 + 2] == 1, "or at %d: %d", t, out[t * 4 + 2]);
        CHECK(out[t * 4 + 3] == 1, "and(all) at %d: %d", t, out[t * 4 + 3]);
    }
}

void case_shfl_missing_lane() {
    std::vector<uint32_t> out(32, 1);
    int line = 0;
    // lane 7 exits, the others name it in their mask
    TBERT_LAUNCH(k_shfl_exit, 1, 32, 0, 0, out.data(), &line, 7, kFull);
    CHECK(cudaDeviceSynchronize() == cudaErrorIllegalInstruction, "missing lane not reported");
    std::string f = last_fault();
    CHECK(has(f, "__shfl_xor_sync (" + line_tag(line)) &&
              has(f, "lane 7 (thread (7,0,0)) named in the mask has exited") && has(f, "mask 0xffffffff"),
          "message: %s", f.c_str());
    // the same with lane 7 left out of the mask: no fault; lane 6 reads lane 7 (not in the mask): poison
    reset();
    TBERT_LAUNCH(k_shfl_exit, 1, 32, 0, 0, out.data(), &line, 7, 0xffffff7fu);
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "%s", last_fault().c_str());
    for (unsigned l = 0; l < 32; l++) {
        if (l == 7) continue;
        const uint32_t want = l == 6 ? kPoison32 : (l ^ 1u) * 100u;
        CHECK(out[l] == want, "lane %u: %u, want %u", l, out[l], want);
    }
}

void case_shfl_other_collective() {
    int line[2] = {0, 0};
    TBERT_LAUNCH(k_shfl_split, 1, 32, 0, 0, line);
    CHECK(cudaDeviceSynchronize() == cudaErrorIllegalInstruction, "lanes at two shuffles not reported");
    const std::string f = last_fault();
    CHECK(has(f, "__shfl_sync (" + line_tag(line[0])) &&
              has(f, "named in the mask waits at __shfl_sync (" + line_tag(line[1])),
          "message: %s", f.c_str());
}

void case_shfl_bad_mask() {
    std::vector<int> out(64, 0);
    TBERT_LAUNCH(k_shfl_mask, 1, 32, 0, 0, out.data(), 0xfffffffeu, 32); // lane 0 calls without its own bit
    CHECK(cudaDeviceSynchronize() == cudaErrorIllegalInstruction, "own lane missing from mask not reported");
    CHECK(has(last_fault(), "does not name the calling lane 0"), "message: %s", last_fault().c_str());
    reset();
    TBERT_LAUNCH(k_shfl_mask, 1, 48, 0, 0, out.data(), kFull, 32); // warp 1 has 16 lanes
    CHECK(cudaDeviceSynchronize() == cudaErrorIllegalInstruction, "mask naming absent lanes not reported");
    CHECK(has(last_fault(), "names lanes that do not exist (warp 1 of a 48-thread block has 16 lanes)"), "message: %s",
          last_fault().c_str());
    reset();
    TBERT_LAUNCH(k_shfl_mask, 1, 32, 0, 0, out.data(), kFull, 12);
    CHECK(cudaDeviceSynchronize() == cudaErrorIllegalInstruction, "width 12 not reported");
    CHECK(has(last_fault(), "with width 12"), "message: %s", last_fault().c_str());
    reset();
    TBERT_LAUNCH(k_shfl_partial, 1, 48, 0, 0, out.data()); // the right mask for a partial warp
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "%s", last_fault().c_str());
    for (int t = 0; t < 48; t++) CHECK(out[t] == (t < 32 ? 3 : 35), "partial warp, thread %d: %d", t, out[t]);
}

void case_warp_values() {
    std::vector<uint32_t> out(64 * 16, 1);
    std::vector<double> dout(64, -1.0);
    TBERT_LAUNCH(k_warp_values, 1, 64, 0, 0, out.data(), dout.data());
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "%s", last_fault().c_str());
    for (unsigned t = 0; t < 64; t++) {
        const unsigned lane = t & 31, warp = t >> 5;
        auto val = [&](unsigned l) { return l * 10u + warp * 1000u; };
        const uint32_t *o = &out[t * 16];
        const uint32_t want[15] = {
            val((lane * 7 + 3) % 32),
            val((lane + 40) % 32),
            lane < 3 ? val(lane) : val(lane - 3),
            lane + 5 > 31 ? val(lane) : val(lane + 5),
            val(lane ^ 5u),
            0x49249249u, // lanes 0, 3, 6, ..., 30
            1,
            0,
            1,
            0,
            496, // 0 + 1 + ... + 31
            (uint32_t)(-7 - (int)warp),
            (uint32_t)(31 * 3 - 50),
            0x90000000u,
            lane >= 8 && lane < 16 ? 0xaa00u : 0u, // odd lanes among 8..15
        };
        for (int k = 0; k < 15; k++) CHECK(o[k] == want[k], "thread %u, result %d: 0x%x, want 0x%x", t, k, o[k], want[k]);
        CHECK(dout[t] == (lane == 31 ? 31.5 : lane + 1.5), "double shuffle at %u: %g", t, dout[t]);
    }
}

void case_warp_widths() {
    std::vector<uint32_t> out(32 * 8, 1);
    TBERT_LAUNCH(k_warp_widths, 1, 32, 0, 0, out.data());
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "%s", last_fault().c_str());
    for (unsigned l = 0; l < 32; l++) {
        const uint32_t *o = &out[l * 8];
        uint32_t w6;
        if (l < 16) w6 = l == 15 ? kPoison32 : l + 1;
        else w6 = l < 18 ? kPoison32 : l - 2; // lanes 16, 17 read lanes 14, 15: not in the mask
        const uint32_t want[8] = {
            l / 8 * 8 + 2,                      // idx 2 in segments of 8
            l % 8 == 0 ? l : l - 1,             // up 1, width 8: a segment's first lane keeps its own
            l % 16 >= 14 ? l : l + 2,           // down 2, width 16
            l ^ 4u,                             // xor 4 inside segments of 8
            (l & 8u) ? l - 8 : l,               // xor 8, width 8: earlier segment readable, later gives own
            l,                                  // width 1: every lane its own segment
            w6,
            l == 0 ? 0 : l - 1,                 // delta 33 = 1 (5 bits)
        };
        for (int k = 0; k < 8; k++) CHECK(o[k] == want[k], "lane %u, result %d: 0x%x, want 0x%x", l, k, o[k], want[k]);
    }
}

void case_shared_poison() {
    const int n = 37;
    for (const char *ord : {"forward", "reverse", "random:3"}) {
        order(ord);
        std::vector<uint32_t> out(3 * 4, 0);
        TBERT_LAUNCH(k_shared_poison, 3, 64, n * sizeof(float), 0, out.data(), n);
        CHECK(cudaDeviceSynchronize() == cudaSuccess, "%s", last_fault().c_str());
        for (int b = 0; b < 3; b++) {
            CHECK(out[b * 4 + 0] == kPoison32, "%s block %d dynamic: 0x%x", ord, b, out[b * 4]);
            CHECK(out[b * 4 + 1] == kPoison32, "%s block %d static: 0x%x", ord, b, out[b * 4 + 1]);
            CHECK(out[b * 4 + 2] == kPoison32, "%s block %d scalar: 0x%x", ord, b, out[b * 4 + 2]);
        }
        float f;
        memcpy(&f, &kPoison32, 4);
        CHECK(std::isnan(f), "0xff bytes are a NaN float");
    }
}

void case_shared_static() {
    for (const char *ord : {"forward", "reverse", "random:9"}) {
        order(ord);
        std::vector<int> out(96, 0);
        TBERT_LAUNCH(k_shared_static, 1, 96, 0, 0, out.data());
        CHECK(cudaDeviceSynchronize() == cudaSuccess, "%s", last_fault().c_str());
        for (int t = 0; t < 96; t++) {
            const int want = (t + 5) % 96 + 1000 + (t + 95) % 96 + 4560 * 100000;
            CHECK(out[t] == want, "%s thread %d: %d, want %d", ord, t, out[t], want);
        }
    }
}

// Runs fn in a child process and returns its stderr and exit status.
template <typename F> std::string in_child(F fn, int *status) {
    int p[2];
    if (pipe(p) != 0) return "pipe failed";
    fflush(stdout);
    fflush(stderr);
    const pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        dup2(p[1], 2);
#if defined(__SANITIZE_ADDRESS__)
        // scripts/test.sh sends reports to files (log_path): this child's report must reach the pipe we read
        __sanitizer_set_report_path("stderr");
#endif
        fn();
        _exit(0);
    }
    close(p[1]);
    std::string err;
    char buf[4096];
    ssize_t r;
    while ((r = read(p[0], buf, sizeof buf)) > 0) err.append(buf, (size_t)r);
    close(p[0]);
    waitpid(pid, status, 0);
    return err;
}

void case_shared_oob(bool dynamic) {
#if defined(__SANITIZE_ADDRESS__)
    int status = 0;
    const std::string err = in_child(
        [dynamic] {
            std::vector<float> out(1);
            if (dynamic) TBERT_LAUNCH(k_oob_dynamic, 1, 33, 32 * sizeof(float), 0, out.data(), 32);
            else TBERT_LAUNCH(k_oob_static, 1, 1, 0, 0, out.data(), 32);
            cudaDeviceSynchronize();
        },
        &status);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) != 0, "the child did not fail (status 0x%x)", status);
    CHECK(has(err, "ERROR: AddressSanitizer: heap-buffer-overflow") && has(err, "WRITE of size 4") &&
              has(err, "0 bytes to the right of 128-byte region") &&
              has(err, dynamic ? "k_oob_dynamic" : "k_oob_static") && has(err, "test_emu_exec.cu:"),
          "ASan report:\n%s", err.c_str());
#else
    (void)dynamic;
    CHECK(false, "registered only in sanitizer builds");
#endif
}

void case_missing_sync_orders() {
    std::vector<int> fw(256), rv(256), rnd(256);
    std::vector<int> want(256);
    for (int i = 0; i < 256; i++) want[i] = (i % 128 + 1) % 128 * 3 + 1;
    const char *orders[3] = {"forward", "reverse", "random:12345"};
    std::vector<int> *outs[3] = {&fw, &rv, &rnd};
    for (int use_sync = 1; use_sync >= 0; use_sync--)
        for (int k = 0; k < 3; k++) {
            order(orders[k]);
            std::fill(outs[k]->begin(), outs[k]->end(), 0);
            TBERT_LAUNCH(k_racy, 2, 128, 0, 0, outs[k]->data(), use_sync);
            CHECK(cudaDeviceSynchronize() == cudaSuccess, "%s", last_fault().c_str());
            if (use_sync) CHECK(*outs[k] == want, "with the barrier, %s order gives other values", orders[k]);
        }
    // without the barrier: forward reads unwritten (poison) neighbours, reverse finds them written
    CHECK(fw != rv, "a missing __syncthreads is not caught by forward vs reverse");
    CHECK(fw != want && fw[0] == -1 && fw[127] == 1, "forward: %d %d", fw[0], fw[127]);
    bool rv_ok = true;
    for (int i = 0; i < 256; i++) rv_ok &= rv[i] == (i % 128 == 127 ? -1 : want[i]);
    CHECK(rv_ok, "reverse: each neighbour written before it is read, except thread 127's (thread 0 runs last)");
    CHECK(rnd != fw && rnd != rv, "random differs from both");
}

void case_missing_sync_warps() {
    const float want[2] = {127.0f * 128.0f / 2.0f, 128.0f};
    std::vector<float> out(256);
    bool wrong_somewhere = false;
    for (const char *ord : {"forward", "reverse", "random:4", "random:5"}) {
        order(ord);
        for (int use_sync = 1; use_sync >= 0; use_sync--) {
            std::fill(out.begin(), out.end(), 0.0f);
            TBERT_LAUNCH(k_two_sums, 1, 128, 0, 0, out.data(), use_sync);
            CHECK(cudaDeviceSynchronize() == cudaSuccess, "%s", last_fault().c_str());
            bool ok = true;
            for (int t = 0; t < 128; t++) ok &= out[t * 2] == want[0] && out[t * 2 + 1] == want[1];
            if (use_sync) CHECK(ok, "%s order: the correct kernel gives %g %g", ord, out[0], out[1]);
            else if (!ok) wrong_somewhere = true;
            if (!use_sync && strcmp(ord, "forward") == 0)
                CHECK(!ok, "forward order: warp 0 runs ahead and overwrites the scratch the others still read");
        }
    }
    CHECK(wrong_somewhere, "the missing barrier between two block sums is never caught");
}

void case_launch_limits() {
    int flag = 0;
    struct bad {
        dim3 grid, block;
        size_t smem;
        cudaError_t e;
    } cases[] = {
        {dim3(1), dim3(1025), 0, cudaErrorInvalidConfiguration},
        {dim3(1), dim3(32, 33), 0, cudaErrorInvalidConfiguration},
        {dim3(1), dim3(1, 1, 65), 0, cudaErrorInvalidConfiguration},
        {dim3(1), dim3(1, 1025), 0, cudaErrorInvalidConfiguration},
        {dim3(1), dim3(0), 0, cudaErrorInvalidConfiguration},
        {dim3(0), dim3(32), 0, cudaErrorInvalidConfiguration},
        {dim3(1, 65536), dim3(32), 0, cudaErrorInvalidConfiguration},
        {dim3(1, 1, 65536), dim3(32), 0, cudaErrorInvalidConfiguration},
        {dim3(2147483648u), dim3(32), 0, cudaErrorInvalidConfiguration},
        {dim3(1), dim3(32), 48 * 1024 + 1, cudaErrorInvalidValue},
    };
    for (const bad &c : cases) {
        TBERT_LAUNCH(k_flag, c.grid, c.block, c.smem, 0, &flag);
        const cudaError_t e = cudaGetLastError();
        CHECK(e == c.e, "grid (%u,%u,%u) block (%u,%u,%u) smem %zu: error %d, want %d", c.grid.x, c.grid.y, c.grid.z,
              c.block.x, c.block.y, c.block.z, c.smem, (int)e, (int)c.e);
        CHECK(cudaGetLastError() == cudaSuccess, "launch errors are not sticky");
    }
    CHECK(cudaDeviceSynchronize() == cudaSuccess && flag == 0, "a refused launch ran (flag %d)", flag);
    // what is allowed runs
    TBERT_LAUNCH(k_flag, dim3(1, 65535), dim3(1), 0, 0, &flag);
    TBERT_LAUNCH(k_flag, dim3(1, 1, 65535), dim3(1), 0, 0, &flag);
    TBERT_LAUNCH(k_flag, 1, dim3(1024), 0, 0, &flag);
    TBERT_LAUNCH(k_flag, 1, dim3(1, 1, 64), 48 * 1024, 0, &flag);
    TBERT_LAUNCH(k_flag, 1, dim3(32, 32), 0, 0, &flag);
    CHECK(cudaGetLastError() == cudaSuccess, "allowed launches");
    CHECK(cudaDeviceSynchronize() == cudaSuccess && flag == 5, "allowed launches ran: flag %d", flag);
    // the dynamic shared memory opt-in
    CHECK(cudaFuncSetAttribute(k_flag, cudaFuncAttributeMaxDynamicSharedMemorySize, 227 * 1024 + 1) ==
              cudaErrorInvalidValue, "opt-in above 227 KiB");
    CHECK(cudaFuncSetAttribute(k_flag, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024) == cudaSuccess, "opt-in");
    TBERT_LAUNCH(k_flag, 1, 32, 100 * 1024, 0, &flag);
    CHECK(cudaGetLastError() == cudaSuccess, "100 KiB after the opt-in");
    TBERT_LAUNCH(k_flag, 1, 32, 100 * 1024 + 1, 0, &flag);
    CHECK(cudaGetLastError() == cudaErrorInvalidValue, "above the opt-in");
    CHECK(cudaDeviceSynchronize() == cudaSuccess && flag == 6, "flag %d", flag);
    TBERT_LAUNCH(k_barrier_skip, 1, 64, 48 * 1024 + 4, 0, (int *)nullptr, (int *)nullptr, -1); // another kernel: no opt-in
    CHECK(cudaGetLastError() == cudaErrorInvalidValue, "the opt-in is per kernel");
}

void case_atomics() {
    for (const char *ord : {"forward", "reverse", "random:77"}) {
        order(ord);
        int ci[2] = {0, 0}, mx = -1, mn = 1 << 30, cas = -1;
        float cf = 0.0f;
        double cd = 0.0;
        unsigned ex = 12345;
        std::vector<int> tickets(1024, -1);
        TBERT_LAUNCH(k_atomics, 4, 256, 0, 0, ci, &cf, &cd, &mx, &mn, &cas, &ex, tickets.data());
        CHECK(cudaDeviceSynchronize() == cudaSuccess, "%s", last_fault().c_str());
        int wmx = -1, wmn = 1 << 30;
        for (int g = 0; g < 1024; g++) {
            wmx = std::max(wmx, (g * 7919) % 1000);
            wmn = std::min(wmn, 500 - (g * 7919) % 1000);
        }
        CHECK(ci[0] == 1024 && ci[1] == 1024, "%s int adds: %d %d", ord, ci[0], ci[1]);
        CHECK(cf == 512.0f && cd == 256.0, "%s float/double adds: %g %g", ord, cf, cd);
        CHECK(mx == wmx && mn == wmn, "%s max/min: %d/%d, want %d/%d", ord, mx, mn, wmx, wmn);
        // CAS and Exch: the first / last thread in schedule order
        std::vector<int> seen(1024, 0);
        int first = -1, last = -1;
        for (int g = 0; g < 1024; g++) {
            CHECK(tickets[g] >= 0 && tickets[g] < 1024 && !seen[tickets[g]], "%s ticket of %d: %d", ord, g, tickets[g]);
            if (tickets[g] >= 0 && tickets[g] < 1024) seen[tickets[g]] = 1;
            if (tickets[g] == 0) first = g;
            if (tickets[g] == 1023) last = g;
        }
        CHECK(cas == first, "%s CAS winner %d, first in schedule %d", ord, cas, first);
        CHECK((int)ex == last, "%s Exch keeps %u, last in schedule %d", ord, ex, last);
    }
}

void case_atomics_order() {
    std::vector<int> tk[3];
    const char *orders[3] = {"forward", "reverse", "random:5"};
    for (int k = 0; k < 3; k++) {
        order(orders[k]);
        int ci[2] = {0, 0}, mx = 0, mn = 0, cas = -1;
        float cf = 0;
        double cd = 0;
        unsigned ex = 0;
        tk[k].assign(1024, -1);
        TBERT_LAUNCH(k_atomics, 4, 256, 0, 0, ci, &cf, &cd, &mx, &mn, &cas, &ex, tk[k].data());
        CHECK(cudaDeviceSynchronize() == cudaSuccess, "%s", last_fault().c_str());
    }
    bool fw_ok = true, rv_ok = true, rnd_identity = true;
    for (int g = 0; g < 1024; g++) {
        fw_ok &= tk[0][g] == g;
        rv_ok &= tk[1][g] == 1023 - g;
        rnd_identity &= tk[2][g] == g || tk[2][g] == 1023 - g;
    }
    CHECK(fw_ok, "forward: tickets in linear order (blocks in order, threads in order)");
    CHECK(rv_ok, "reverse: tickets in reverse linear order");
    CHECK(!rnd_identity, "random: another order");
}

void case_fault_aborts_kernel() {
    std::vector<int> out(4 * 32, 0);
    TBERT_LAUNCH(k_fault_block, 4, 32, 0, 0, out.data(), 1);
    CHECK(cudaDeviceSynchronize() == cudaErrorIllegalInstruction, "fault");
    CHECK(has(last_fault(), "block (1,0,0)") && has(last_fault(), "thread (3,0,0) has exited"), "message: %s",
          last_fault().c_str());
    for (int i = 0; i < 32; i++) CHECK(out[i] == 7, "block 0 ran");
    for (int i = 64; i < 128; i++) CHECK(out[i] == 0, "blocks after the fault do not run: out[%d] = %d", i, out[i]);
    CHECK(cudaDeviceSynchronize() == cudaErrorIllegalInstruction, "the fault is sticky");
}

void case_order_env() {
    int flag = 0;
    for (const char *bad : {"sideways", "random:", "random:12x", "random"}) {
        reset();
        order(bad);
        TBERT_LAUNCH(k_flag, 1, 32, 0, 0, &flag);
        CHECK(cudaDeviceSynchronize() != cudaSuccess, "TBERT_EMU_ORDER=%s accepted", bad);
        CHECK(has(last_fault(), "TBERT_EMU_ORDER=") && has(last_fault(), bad), "message: %s", last_fault().c_str());
    }
    CHECK(flag == 0, "no kernel ran under a bad order");
    reset();
    for (const char *good : {"forward", "reverse", "random:0", "random:18446744073709551615"}) {
        order(good);
        TBERT_LAUNCH(k_flag, 1, 32, 0, 0, &flag);
    }
    CHECK(cudaDeviceSynchronize() == cudaSuccess && flag == 4, "good orders: flag %d", flag);
}

// Not a ctest case: the cost of a warp collective and of a barrier-free thread (`test_emu_exec bench`).
void case_bench() {
    std::vector<float> out(4 * 128);
    timespec t0, t1;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t0);
    TBERT_LAUNCH(k_bench_shfl, 4, 128, 0, 0, out.data(), 2000);
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "%s", last_fault().c_str());
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    std::printf("shuffle: %.1f ns per lane per collective\n", s / (4.0 * 128 * 2000) * 1e9);
    const size_t n = (size_t)1 << 22;
    std::vector<float> big(n, 1.0f);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t0);
    TBERT_LAUNCH(k_bench_plain, (unsigned)(n / 256), 256, 0, 0, big.data(), n);
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "%s", last_fault().c_str());
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t1);
    s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    std::printf("barrier-free: %.1f ns per CUDA thread\n", s / (double)n * 1e9);
}

struct test_case {
    const char *name;
    void (*fn)();
};
const test_case kCases[] = {
    {"indices", case_indices},
    {"barrier_skip", case_barrier_skip},
    {"barrier_sites", case_barrier_sites},
    {"barrier_count", case_barrier_count},
    {"shfl_missing_lane", case_shfl_missing_lane},
    {"shfl_other_collective", case_shfl_other_collective},
    {"shfl_bad_mask", case_shfl_bad_mask},
    {"warp_values", case_warp_values},
    {"warp_widths", case_warp_widths},
    {"shared_poison", case_shared_poison},
    {"shared_static", case_shared_static},
    {"shared_oob_dynamic", [] { case_shared_oob(true); }},
    {"shared_oob_static", [] { case_shared_oob(false); }},
    {"missing_sync_orders", case_missing_sync_orders},
    {"missing_sync_warps", case_missing_sync_warps},
    {"launch_limits", case_launch_limits},
    {"atomics", case_atomics},
    {"atomics_order", case_atomics_order},
    {"fault_aborts_kernel", case_fault_aborts_kernel},
    {"order_env", case_order_env},
    {"bench", case_bench},
};

} // namespace

int main(int argc, char **argv) {
    int ran = 0;
    for (const test_case &c : kCases) {
        if (argc > 1 ? strcmp(argv[1], c.name) != 0 : strcmp(c.name, "bench") == 0) continue;
        reset();
        const int before = g_fail;
        c.fn();
        std::printf("%s %s\n", g_fail == before ? "ok  " : "FAIL", c.name);
        ran++;
    }
    if (!ran) {
        std::fprintf(stderr, "unknown case %s\n", argc > 1 ? argv[1] : "");
        return 2;
    }
    return g_fail ? 1 : 0;
}
