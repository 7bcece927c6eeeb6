#include "csha256.h"

#include <openssl/evp.h>

int forkd_sha256(const void *data, size_t length, unsigned char out[32]) {
  unsigned int written = 0;
  if (EVP_Digest(data, length, out, &written, EVP_sha256(), NULL) != 1 || written != 32) return -1;
  return 0;
}
