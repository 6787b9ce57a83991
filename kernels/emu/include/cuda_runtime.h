/* tbert's emulated CUDA device (-DTBERT_CUDA=EMU): stands in for CUDA's cuda_runtime.h. Valid C17 and C++17.
 * C (src/encoder_cuda.c, src/head_cuda.c) sees the host API; C++ (the kernels/ .cu files compiled by the host compiler)
 * also gets the device side (emu_device.h: dim3, threadIdx, launches, warp primitives, ...). */
#ifndef TBERT_EMU_CUDA_RUNTIME_H
#define TBERT_EMU_CUDA_RUNTIME_H

#include "emu_types.h"
#include "emu_host.h"
#include "library_types.h"

#ifdef __cplusplus
#if defined(__has_include)
#if __has_include("emu_device.h")
#include "emu_device.h"
#endif
#else
#include "emu_device.h"
#endif
#endif

#endif
