// The one launch form and the shared-memory declarations of tbert's kernels: plain CUDA under nvcc, calls into
// the emulated device (kernels/emu/, -DTBERT_CUDA=EMU) under the host compiler, so that launch errors, emulator
// faults and ASan reports point at the .cu line that launched or declared.
//
//   TBERT_LAUNCH(kernel, grid, block, smem, stream, args...)   kernel<<<grid, block, smem, stream>>>(args...)
//       a template kernel with a comma goes in parentheses: TBERT_LAUNCH((k<T, NC>), ...)
//   TBERT_SHARED(T, name, N);        __shared__ T name[N];
//   TBERT_SHARED_VAR(T, name);       __shared__ T name;
//   TBERT_DYNAMIC_SHARED(T, name);   extern __shared__ T name[];
// Emulated, every CUDA block gets fresh heap blocks of exactly the declared / launched size, filled with 0xFF
// bytes (NaN floats), the same pointer for all threads of the block.
#pragma once
#include <cuda_runtime.h>

#ifdef TBERT_CUDA_EMULATED
#define TBERT_LAUNCH(kernel, grid, block, smem, stream, ...) \
    ::tbert_emu::launch(kernel, #kernel, __FILE__, __LINE__, grid, block, smem, stream, __VA_ARGS__)
#define TBERT_SHARED(T, name, N) \
    T(&name)[N] = *static_cast<T(*)[N]>(::tbert_emu::static_shared(__FILE__, __LINE__, sizeof(T[N])))
#define TBERT_SHARED_VAR(T, name) T &name = *static_cast<T *>(::tbert_emu::static_shared(__FILE__, __LINE__, sizeof(T)))
#define TBERT_DYNAMIC_SHARED(T, name) T *const name = static_cast<T *>(::tbert_emu::dynamic_shared())
#else
#define TBERT_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#define TBERT_SHARED(T, name, N) __shared__ T name[N]
#define TBERT_SHARED_VAR(T, name) __shared__ T name
#define TBERT_DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif
