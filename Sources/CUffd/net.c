#define _GNU_SOURCE
#include "cuffd_net.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sched.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

int cuffd_tap_open(const char *name, char actual[16]) {
  if (strlen(name) >= IFNAMSIZ) return -ENAMETOOLONG;
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return -errno;
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
  memcpy(ifr.ifr_name, name, strlen(name));
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    int err = errno;
    close(fd);
    return -err;
  }
  memcpy(actual, ifr.ifr_name, IFNAMSIZ);
  actual[IFNAMSIZ - 1] = 0;
  return fd;
}

int cuffd_enter_netns(int fd) { return setns(fd, CLONE_NEWNET) < 0 ? -errno : 0; }

int cuffd_is_tap(int fd) {
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  if (ioctl(fd, TUNGETIFF, &ifr) < 0) return -errno;
  return (ifr.ifr_flags & IFF_TAP) && (ifr.ifr_flags & IFF_NO_PI) && !(ifr.ifr_flags & IFF_VNET_HDR);
}
