/* tbert's emulated CUDA device: the CUDA runtime host API (CUDA's names, types and error values), implemented in
 * kernels/emu/host.cpp. Valid C17 and C++17; included through cuda_runtime.h.
 *
 * What the emulation promises, and nothing more (CUDA's documented ordering, made strict to expose bugs):
 * - cudaMalloc memory is poisoned (0xFF bytes: NaN floats, -1 ints), never zeroed; every allocation is its own
 *   heap block of exactly the size asked, so AddressSanitizer sees overruns; freed blocks stay in a quarantine,
 *   ASan-poisoned (or, without ASan, filled with 0xFF again) so later use shows. cudaFree does not wait for
 *   queued work: work that still uses the block when it runs is a use after free (copies and cuBLAS check at the
 *   call and again when they run; kernels are caught by ASan).
 * - Async work (kernels, cudaMemcpyAsync, cudaMemsetAsync, cudaMemset, device-to-device and pageable
 *   host-to-device cudaMemcpy, cuBLAS) is queued per stream and runs only when CUDA guarantees that it has run:
 *   cudaStreamSynchronize, cudaDeviceSynchronize, cudaEventSynchronize (and a cudaEventQuery that reports
 *   not-ready runs it, so a polling loop ends), and blocking calls (cudaMemcpy device-to-host or from pinned
 *   memory). cudaStreamWaitEvent orders later work on a stream after the event's recorded position.
 * - The legacy default stream (NULL, cudaStreamLegacy) waits for earlier work on every blocking stream and
 *   blocking streams wait for earlier work on it; cudaStreamNonBlocking streams are ordered with nothing.
 * - Among queued work that is ready, the most recently queued runs first.
 * - Copies: pageable host source -> read at the call; pinned host source (cudaMallocHost) -> read when the copy
 *   runs; host destination of an async copy -> written when the copy runs.
 * - A fault while work runs (tbert_emu_fault) is sticky: every later call returns it and queued work is dropped.
 * The environment variable TBERT_EMU_MEMORY_BYTES sets the emulated device's memory (default 80 GiB); cudaMalloc
 * beyond it fails with cudaErrorMemoryAllocation. */
#ifndef TBERT_EMU_HOST_H
#define TBERT_EMU_HOST_H

#include <stddef.h>

#include "emu_types.h"

#ifdef __cplusplus
extern "C" {
#endif

struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    size_t sharedMemPerBlock;
    int regsPerBlock;
    int warpSize;
    size_t memPitch;
    int maxThreadsPerBlock;
    int maxThreadsDim[3];
    int maxGridSize[3];
    int clockRate;
    size_t totalConstMem;
    int major;
    int minor;
    size_t textureAlignment;
    int multiProcessorCount;
    int integrated;
    int canMapHostMemory;
    int concurrentKernels;
    int ECCEnabled;
    int pciBusID;
    int pciDeviceID;
    int asyncEngineCount;
    int unifiedAddressing;
    int memoryClockRate;
    int memoryBusWidth;
    int l2CacheSize;
    int maxThreadsPerMultiProcessor;
    size_t sharedMemPerMultiprocessor;
    int regsPerMultiprocessor;
    size_t sharedMemPerBlockOptin;
};
#ifndef __cplusplus
typedef struct cudaDeviceProp cudaDeviceProp;
#endif

#define cudaHostAllocDefault 0x0u

/* errors */
const char *cudaGetErrorString(cudaError_t error);
const char *cudaGetErrorName(cudaError_t error);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);

/* devices (one emulated device, number 0) */
cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int *device);
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaDeviceReset(void);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
cudaError_t cudaDriverGetVersion(int *version);
cudaError_t cudaRuntimeGetVersion(int *version);

/* memory */
cudaError_t cudaMalloc(void **devPtr, size_t size);
cudaError_t cudaFree(void *devPtr);
cudaError_t cudaMallocHost(void **ptr, size_t size);
cudaError_t cudaHostAlloc(void **ptr, size_t size, unsigned int flags);
cudaError_t cudaFreeHost(void *ptr);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind, cudaStream_t stream);
cudaError_t cudaMemset(void *devPtr, int value, size_t count);
cudaError_t cudaMemsetAsync(void *devPtr, int value, size_t count, cudaStream_t stream);

/* streams */
cudaError_t cudaStreamCreate(cudaStream_t *stream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamQuery(cudaStream_t stream);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags);
cudaError_t cudaStreamGetFlags(cudaStream_t stream, unsigned int *flags);

/* events */
cudaError_t cudaEventCreate(cudaEvent_t *event);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventQuery(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end);

/* ---- for the emulator's own tests ---- */
/* Number of queued work items that have not run yet (all streams). */
size_t tbert_emu_pending_work(void);
/* 1 when p lies in a block freed by cudaFree/cudaFreeHost that is still in the quarantine. */
int tbert_emu_is_freed(const void *p);

#ifdef __cplusplus
}
#endif
#endif
