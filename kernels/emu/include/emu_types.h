/* tbert's emulated CUDA device (-DTBERT_CUDA=EMU): the types and the internal contract shared by the two halves
 * of the emulator. Valid C17 and C++17: host files written in C (src/encoder_cuda.c, src/head_cuda.c) include
 * cuda_runtime.h and cublas_v2.h too.
 *
 * Halves and owners (one file each under kernels/emu/):
 *   execution  (emu_device.h, exec.cpp):    dim3, threadIdx/blockIdx/..., kernel launch (TBERT_LAUNCH),
 *                                           fibers, __syncthreads, warp primitives, shared memory, atomics,
 *                                           launch limits, schedule orders (TBERT_EMU_ORDER).
 *   host API   (emu_host.h, host.cpp):      cudaMalloc/Free (+poisoning, registry), streams, events, copies,
 *                                           memsets, errors (cudaGetLastError, sticky faults), devices.
 *   cuBLAS     (cublas_v2.h, cublas.cpp):   literal column-major Sgemm / GemmEx / GemmStridedBatchedEx.
 *   numbers    (cuda_bf16.h):               __nv_bfloat16 and CUDA's conversion intrinsics.
 * The functions declared at the end of this file are the contract between the halves.
 * Error values are CUDA's own numbers, so messages and logs read the same as on a GPU. */
#ifndef TBERT_EMU_TYPES_H
#define TBERT_EMU_TYPES_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TBERT_CUDA_EMULATED 1

typedef enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInitializationError = 3,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidPitchValue = 12,
    cudaErrorInvalidDevicePointer = 17,
    cudaErrorInvalidMemcpyDirection = 21,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorNotReady = 600,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchOutOfResources = 701,
    cudaErrorAssert = 710,
    cudaErrorIllegalInstruction = 715,
    cudaErrorLaunchFailure = 719,
    cudaErrorUnknown = 999
} cudaError_t;

typedef struct CUstream_st *cudaStream_t; /* == tbert_cuda_stream; NULL is the legacy default stream */
typedef struct CUevent_st *cudaEvent_t;

typedef enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4
} cudaMemcpyKind;

#define cudaStreamDefault 0x0u
#define cudaStreamNonBlocking 0x1u
#define cudaEventDefault 0x0u
#define cudaEventBlockingSync 0x1u
#define cudaEventDisableTiming 0x2u
#define cudaStreamLegacy ((cudaStream_t)0x1)
#define cudaStreamPerThread ((cudaStream_t)0x2)

/* ---- the contract between the halves (implemented in host.cpp unless said otherwise) ---- */

/* Work queued on stream s (NULL = legacy default stream) that runs when CUDA's ordering requires it to have run
 * (a synchronize, an event wait, a blocking call; see host.cpp). run(ctx) does the work; drop(ctx) frees ctx
 * after it ran or when it is discarded (drop may be NULL). what names it in reports ("kernel attention_fused_v2_kernel
 * (attention.cu:212)", "cublasGemmEx"). Returns cudaErrorInvalidResourceHandle for a destroyed stream. */
typedef void (*tbert_emu_work_fn)(void *ctx);
cudaError_t tbert_emu_enqueue(cudaStream_t s, tbert_emu_work_fn run, void *ctx, tbert_emu_work_fn drop, const char *what);

/* The live allocation (cudaMalloc or cudaMallocHost) that holds all of [p, p + bytes): 1 and *base / *size /
 * *is_device filled, or 0 (not ours, freed, or the range runs past its end). */
int tbert_emu_find_allocation(const void *p, size_t bytes, const void **base, size_t *size, int *is_device);

/* A launch or API error CUDA reports through cudaGetLastError (not sticky): e.g. too many threads per block. */
void tbert_emu_set_launch_error(cudaError_t e);

/* A fault while device work ran (a barrier a thread skipped, a lane missing from a shuffle, an access outside
 * every allocation): prints one line "tbert-emu: <message>" on stderr, names kernel, block and .cu line in the
 * message, and makes e the sticky error every later CUDA call returns (as a GPU's sticky errors do).
 * TBERT_EMU_ABORT=1 aborts the process there instead (to get a stack trace). */
void tbert_emu_fault(cudaError_t e, const char *fmt, ...)
#ifdef __GNUC__
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* The last fault's message ("" when none) and a reset, for the emulator's own tests. */
const char *tbert_emu_last_fault(void);
void tbert_emu_reset_faults(void);

#ifdef __cplusplus
}
#endif
#endif
