// SHA-256 from libcrypto (OpenSSL, Debian's libssl-dev): the supervisor hashes every memory chunk
// it pushes or pulls, where the self-contained Swift SHA256 of Protocol runs at ~50 MB/s and
// libcrypto (SHA-NI where the CPU has it) at over 1 GB/s.
#pragma once
#include <stddef.h>

// Writes the 32-byte digest of `length` bytes at `data` into `out`; returns 0 on success.
int forkd_sha256(const void *data, size_t length, unsigned char out[32]);
