// Error checking shared by all kernels' launchers.
#pragma once
#include <cstdio>
#include <cuda_runtime.h>

#define TBERT_CEIL_DIV(a, b) (((a) + (b) - 1) / (b))
