#define _GNU_SOURCE
#include "cjail_cell.h"
#include <sched.h>
#include <sys/mount.h>
#include <unistd.h>

int cjail_private_mount_namespace(void) {
  if (unshare(CLONE_NEWNS) != 0) return -1;
  return mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
}

int cjail_bind(const char *source, const char *target) {
  return mount(source, target, NULL, MS_BIND | MS_NOSUID | MS_NODEV, NULL);
}

int cjail_root_here(void) {
  if (chroot(".") != 0) return -1;
  return chdir("/");
}

int cjail_try_user_namespace(void) { return unshare(CLONE_NEWUSER); }
