#include "ckvm.h"
#include <sys/ioctl.h>

int ckvm_ioctl(int fd, unsigned long request, void *arg) { return ioctl(fd, request, arg); }

int ckvm_ioctl_value(int fd, unsigned long request, unsigned long value) {
  return ioctl(fd, request, value);
}
