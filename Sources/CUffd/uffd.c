#define _GNU_SOURCE
#include "cuffd_uffd.h"
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

struct cuffd_uffdio_move {
  uint64_t dst, src, len, mode;
  int64_t move;
};
#define CUFFD_UFFDIO_MOVE _IOWR(UFFDIO, 0x05, struct cuffd_uffdio_move)

int cuffd_create(int flags, int user_mode_only) {
  int fd = (int)syscall(SYS_userfaultfd, flags | (user_mode_only ? UFFD_USER_MODE_ONLY : 0));
  if (fd >= 0) return fd;
  int saved = errno;
  int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (dev < 0) {
    errno = saved;
    return -1;
  }
  fd = ioctl(dev, USERFAULTFD_IOC_NEW, flags | (user_mode_only ? UFFD_USER_MODE_ONLY : 0));
  saved = errno;
  close(dev);
  errno = saved;
  return fd;
}

int cuffd_api(int uffd, uint64_t features, uint64_t *granted_features, uint64_t *ioctls) {
  struct uffdio_api api = {.api = UFFD_API, .features = features};
  if (ioctl(uffd, UFFDIO_API, &api) < 0) return -1;
  if (granted_features) *granted_features = api.features;
  if (ioctls) *ioctls = api.ioctls;
  return 0;
}

int cuffd_probe_features(uint64_t *features) {
  int fd = cuffd_create(O_CLOEXEC, 1);
  if (fd < 0) fd = cuffd_create(O_CLOEXEC, 0);
  if (fd < 0) return -1;
  int rc = cuffd_api(fd, 0, features, NULL);
  int saved = errno;
  close(fd);
  errno = saved;
  return rc;
}

int cuffd_register(int uffd, uint64_t start, uint64_t len, uint64_t mode, uint64_t *ioctls) {
  struct uffdio_register reg = {.range = {.start = start, .len = len}, .mode = mode};
  if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0) return -1;
  if (ioctls) *ioctls = reg.ioctls;
  return 0;
}

int cuffd_unregister(int uffd, uint64_t start, uint64_t len) {
  struct uffdio_range range = {.start = start, .len = len};
  return ioctl(uffd, UFFDIO_UNREGISTER, &range);
}

int cuffd_copy(int uffd, uint64_t dst, uint64_t src, uint64_t len, uint64_t mode, int64_t *done) {
  struct uffdio_copy copy = {.dst = dst, .src = src, .len = len, .mode = mode};
  int rc = ioctl(uffd, UFFDIO_COPY, &copy);
  if (done) *done = copy.copy;
  return rc;
}

int cuffd_zeropage(int uffd, uint64_t start, uint64_t len, uint64_t mode, int64_t *done) {
  struct uffdio_zeropage zero = {.range = {.start = start, .len = len}, .mode = mode};
  int rc = ioctl(uffd, UFFDIO_ZEROPAGE, &zero);
  if (done) *done = zero.zeropage;
  return rc;
}

int cuffd_continue(int uffd, uint64_t start, uint64_t len, uint64_t mode, int64_t *done) {
  struct uffdio_continue cont = {.range = {.start = start, .len = len}, .mode = mode};
  int rc = ioctl(uffd, UFFDIO_CONTINUE, &cont);
  if (done) *done = cont.mapped;
  return rc;
}

int cuffd_move(int uffd, uint64_t dst, uint64_t src, uint64_t len, uint64_t mode, int64_t *done) {
  struct cuffd_uffdio_move move = {.dst = dst, .src = src, .len = len, .mode = mode};
  int rc = ioctl(uffd, CUFFD_UFFDIO_MOVE, &move);
  if (done) *done = move.move;
  return rc;
}

int cuffd_wake(int uffd, uint64_t start, uint64_t len) {
  struct uffdio_range range = {.start = start, .len = len};
  return ioctl(uffd, UFFDIO_WAKE, &range);
}

int cuffd_writeprotect(int uffd, uint64_t start, uint64_t len, int protect, int dontwake) {
  struct uffdio_writeprotect wp = {
      .range = {.start = start, .len = len},
      .mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : (dontwake ? UFFDIO_WRITEPROTECT_MODE_DONTWAKE : 0)};
  return ioctl(uffd, UFFDIO_WRITEPROTECT, &wp);
}

int cuffd_read_events(int uffd, struct cuffd_event *events, int max) {
  struct uffd_msg msgs[64];
  if (max > 64) max = 64;
  ssize_t n = read(uffd, msgs, sizeof(struct uffd_msg) * (size_t)max);
  if (n < 0) return -1;
  int count = (int)(n / (ssize_t)sizeof(struct uffd_msg));
  for (int i = 0; i < count; i++) {
    struct uffd_msg *m = &msgs[i];
    struct cuffd_event *e = &events[i];
    memset(e, 0, sizeof(*e));
    e->kind = m->event;
    switch (m->event) {
    case UFFD_EVENT_PAGEFAULT:
      e->flags = m->arg.pagefault.flags;
      e->address = m->arg.pagefault.address;
      e->thread_id = m->arg.pagefault.feat.ptid;
      break;
    case UFFD_EVENT_REMOVE:
    case UFFD_EVENT_UNMAP:
      e->address = m->arg.remove.start;
      e->end = m->arg.remove.end;
      break;
    case UFFD_EVENT_REMAP:
      e->address = m->arg.remap.from;
      e->end = m->arg.remap.to;
      e->length = m->arg.remap.len;
      break;
    case UFFD_EVENT_FORK:
      e->address = (uint64_t)m->arg.fork.ufd;
      break;
    }
  }
  return count;
}
