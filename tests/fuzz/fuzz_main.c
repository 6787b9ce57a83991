/* libFuzzer main of one target: built once per entry of targets.h with -DFUZZ_ENTRY=fuzz_<name>. */
#include "targets.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return FUZZ_ENTRY(data, size); }
