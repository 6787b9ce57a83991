/* Shared by the CUDA tests (include only where TBERT_HAVE_CUDA): CK(call) fails the test, naming the call, the
 * CUDA error and the place, when a CUDA call returns nonzero. */
#ifndef TBERT_TESTUTIL_CUDA_H
#define TBERT_TESTUTIL_CUDA_H

#include "testutil.h"
#include "tbert/cuda_kernels.h"

#define CK(call)                                                                                                 \
    do {                                                                                                         \
        int rc_ = (int)(call);                                                                                   \
        if (rc_) fail_msg("%s failed: %s (%s:%d)", #call, tbert_cuda_error_string(rc_), __FILE__, __LINE__);     \
    } while (0)

#endif
