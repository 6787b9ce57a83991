/* The CUDA plugin's one entry point (include/tbert/cuda_plugin.h): the table tbert's host code reaches the
 * CUDA backend through. Built into libtbert_cuda.so only (with the kernels/ .cu files, src/encoder_cuda.c,
 * src/head_cuda.c), by nvcc's toolkit for real GPUs or against kernels/emu/ for -DTBERT_CUDA=EMU. */
#include <stdio.h>

#include <cuda_runtime.h>

#include "encoder_backend.h"
#include "finetune_stack_cuda.h"
#include "head_cuda.h"
#include "tbert/cuda_kernels.h"
#include "tbert/cuda_plugin.h"

#ifdef TBERT_CUDA_EMULATED /* defined by kernels/emu/include/emu_types.h */
#define PLUGIN_NAME "emulated CUDA device (kernels run on the CPU, kernels/emu)"
#define PLUGIN_EMULATED 1
#else
#define PLUGIN_STR2(x) #x
#define PLUGIN_STR(x) PLUGIN_STR2(x)
#define PLUGIN_NAME "CUDA + cuBLAS, built with cudart " PLUGIN_STR(CUDART_VERSION)
#define PLUGIN_EMULATED 0
#endif

static int device_count(char *why, size_t cap) {
    int n = 0;
    cudaError_t rc = cudaGetDeviceCount(&n);
    if (rc != cudaSuccess) {
        cudaGetLastError(); /* clear the "no device" error */
        snprintf(why, cap, "cudaGetDeviceCount: %s", tbert_cuda_error_string((int)rc));
        return 0;
    }
    if (n <= 0) snprintf(why, cap, "cudaGetDeviceCount: no device");
    return n > 0 ? n : 0;
}

static const tbert_cuda_api api = {
    .abi = TBERT_CUDA_ABI,
    .version = TBERT_VERSION,
    .name = PLUGIN_NAME,
    .emulated = PLUGIN_EMULATED,
    .device_count = device_count,
    .encoder_create = tbert_cuda_encoder_create,
    .encoder_free = tbert_cuda_encoder_free,
    .encoder_forward = tbert_cuda_encoder_forward,
    .encoder_forward_pool = tbert_cuda_encoder_forward_pool,
    .head_create = tbert_cuda_head_create,
    .head_free = tbert_cuda_head_free,
    .head_forward = tbert_cuda_head_forward,
    .head_train_step = tbert_cuda_head_train_step,
    .head_download = tbert_cuda_head_download,
    .head_last_grad = tbert_cuda_head_last_grad,
    .head_forward_rows = tbert_cuda_head_forward_rows,
    .head_train_step_rows = tbert_cuda_head_train_step_rows,
    .ft_create = tbert_cuda_ft_create,
    .ft_free = tbert_cuda_ft_free,
    .ft_upload = tbert_cuda_ft_upload,
    .ft_forward = tbert_cuda_ft_forward,
    .ft_backward = tbert_cuda_ft_backward,
};

const tbert_cuda_api *tbert_cuda_plugin_api(int abi_version) {
    return abi_version == TBERT_CUDA_ABI ? &api : NULL;
}
