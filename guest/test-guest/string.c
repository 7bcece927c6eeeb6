/*
 * mem* for the guest (clang may also emit calls to them). String instructions: on PVM each
 * iteration of `rep movsq` costs about one instruction, so a qword loop would be 3-4x dearer.
 */
#include "guest.h"

void *memcpy(void *dst, const void *src, usize n) {
  void *d = dst;
  usize q = n >> 3, b = n & 7;
  __asm__ volatile("rep movsq" : "+D"(d), "+S"(src), "+c"(q) : : "memory");
  __asm__ volatile("rep movsb" : "+D"(d), "+S"(src), "+c"(b) : : "memory");
  return dst;
}

/* Forward copies are safe for dst <= src (the only overlap the guest creates). */
void *memmove(void *dst, const void *src, usize n) {
  if ((usize)dst <= (usize)src || (usize)dst >= (usize)src + n) return memcpy(dst, src, n);
  u8 *d = (u8 *)dst + n - 1;
  const u8 *s = (const u8 *)src + n - 1;
  __asm__ volatile("std; rep movsb; cld" : "+D"(d), "+S"(s), "+c"(n) : : "memory", "cc");
  return dst;
}

void *memset(void *dst, int c, usize n) {
  void *d = dst;
  __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
  return dst;
}

int memcmp(const void *a, const void *b, usize n) {
  const u8 *x = a, *y = b;
  for (usize i = 0; i < n; i++)
    if (x[i] != y[i]) return x[i] < y[i] ? -1 : 1;
  return 0;
}
