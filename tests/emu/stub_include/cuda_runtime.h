/* TEMPORARY STUB (emu-exec branch only): stands in for the emu-host branch's kernels/emu/include/cuda_runtime.h
 * until that is merged; kernels/emu/CMakeLists.txt uses it only when the real header is absent. Delete then. */
#ifndef TBERT_EMU_STUB_CUDA_RUNTIME_H
#define TBERT_EMU_STUB_CUDA_RUNTIME_H
#include "emu_types.h"
#ifdef __cplusplus
extern "C" {
#endif
cudaError_t cudaGetLastError(void);
cudaError_t cudaDeviceSynchronize(void);
const char *cudaGetErrorString(cudaError_t e);
#ifdef __cplusplus
}
#include "emu_device.h"
#endif
#endif
