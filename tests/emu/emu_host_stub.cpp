// TEMPORARY STUB (emu-exec branch only) of the emu-host half (kernels/emu/host.cpp): queued work runs at once.
// kernels/emu/CMakeLists.txt builds it only while host.cpp is absent. Delete after merging emu-host.
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "cuda_runtime.h"

namespace {
struct stub_state {
    cudaError_t launch = cudaSuccess, sticky = cudaSuccess;
    char last[1024] = "";
};
stub_state &st() {
    static stub_state s;
    return s;
}
} // namespace

extern "C" {
cudaError_t tbert_emu_enqueue(cudaStream_t, tbert_emu_work_fn run, void *ctx, tbert_emu_work_fn drop, const char *) {
    run(ctx);
    if (drop) drop(ctx);
    return cudaSuccess;
}
int tbert_emu_find_allocation(const void *, size_t, const void **, size_t *, int *) { return 0; }
void tbert_emu_set_launch_error(cudaError_t e) { st().launch = e; }
void tbert_emu_fault(cudaError_t e, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(st().last, sizeof st().last, fmt, ap);
    va_end(ap);
    fprintf(stderr, "tbert-emu: %s\n", st().last);
    st().sticky = e;
    const char *ab = getenv("TBERT_EMU_ABORT");
    if (ab && strcmp(ab, "1") == 0) abort();
}
const char *tbert_emu_last_fault(void) { return st().last; }
void tbert_emu_reset_faults(void) {
    st().last[0] = '\0';
    st().sticky = cudaSuccess;
    st().launch = cudaSuccess;
}
cudaError_t cudaGetLastError(void) {
    cudaError_t e = st().launch != cudaSuccess ? st().launch : st().sticky;
    st().launch = cudaSuccess;
    return e;
}
cudaError_t cudaDeviceSynchronize(void) { return st().sticky; }
const char *cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "error"; }
}
