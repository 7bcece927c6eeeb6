#include "cseccomp_load.h"
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int cseccomp_load_program(const void *instructions, size_t count) {
  if (count == 0 || count > 0xFFFF) return -EINVAL;
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -errno;
  struct sock_fprog program = {.len = (unsigned short)count, .filter = (struct sock_filter *)instructions};
  long rc = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &program);
  if (rc < 0) return -errno;
  return rc > 0 ? -ESRCH : 0;
}

#ifndef __has_feature
#define __has_feature(x) 0
#endif

int cseccomp_sanitizer_runtime(void) {
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || defined(__SANITIZE_ADDRESS__) || \
    defined(__SANITIZE_THREAD__)
  return 1;
#else
  return 0;
#endif
}
