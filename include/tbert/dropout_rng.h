/* Counter-based random numbers for dropout (issue 15): Philox-4x32-10 (Salmon et al., "Parallel random numbers:
 * as easy as 1, 2, 3", SC'11), a pure function of (key, counter), so that the CPU and a CUDA kernel draw the same
 * mask for the same element whatever the thread layout. Header-only, C and CUDA (host and device).
 * Contract (filled in by src/finetune work; keep the signatures):
 *   key = (seed low 32, seed high 32); counter = (element index low 32, element index high 32, step, site),
 *   site = layer * 8 + which (0 embeddings, 1 attention probabilities, 2 attention output, 3 FFN output);
 *   keep the element when (first output word >> 8) * 2^-24 >= p; kept values are scaled by 1 / (1 - p). */
#ifndef TBERT_DROPOUT_RNG_H
#define TBERT_DROPOUT_RNG_H

#include <stdint.h>

#if defined(__CUDACC__) || defined(TBERT_EMU_DEVICE_CODE)
#define TBERT_HD __host__ __device__
#else
#define TBERT_HD
#endif

#endif
