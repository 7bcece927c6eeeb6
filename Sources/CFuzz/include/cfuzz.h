#ifndef CFUZZ_H
#define CFUZZ_H
#include <stddef.h>
#include <stdint.h>

// libFuzzer's driver entry (compiler-rt FuzzerDriver.cpp), present when forkd-fuzz is linked
// with -sanitize=fuzzer (scripts/fuzz). Declared only: the normal build never calls it.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

#endif
