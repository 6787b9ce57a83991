/* --device parsing. Device discovery goes through the CUDA plugin (src/cuda_plugin.c). */
#include <stdlib.h>
#include <string.h>

#include "tbert/encoder.h"

tbert_status tbert_device_parse(const char *s, tbert_device *out, tbert_error *err) {
    out->index = 0;
    if (!strcmp(s, "auto")) out->kind = TBERT_DEVICE_AUTO;
    else if (!strcmp(s, "cpu")) out->kind = TBERT_DEVICE_CPU;
    else if (!strcmp(s, "cuda")) out->kind = TBERT_DEVICE_CUDA;
    else if (!strncmp(s, "cuda:", 5) && s[5] >= '0' && s[5] <= '9') {
        char *end;
        long v = strtol(s + 5, &end, 10);
        if (*end || v < 0 || v > 1024) return tbert_fail(err, TBERT_E_ARG, "--device: bad CUDA device index in '%s'", s);
        out->kind = TBERT_DEVICE_CUDA;
        out->index = (int)v;
    } else {
        return tbert_fail(err, TBERT_E_ARG, "--device: expected auto, cpu, cuda or cuda:N, got '%s'", s);
    }
    return TBERT_OK;
}
