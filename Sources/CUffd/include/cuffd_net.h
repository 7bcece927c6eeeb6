// Network plumbing of a VM's NIC: a TAP device (/dev/net/tun) and entering a network namespace.
#pragma once

// Opens /dev/net/tun and attaches it to the TAP device `name` (created if it does not exist, in
// the calling thread's network namespace), IFF_TAP | IFF_NO_PI, non-blocking, close-on-exec.
// The kernel's name for the device is copied into `actual` (16 bytes). Returns the descriptor or
// -errno.
int cuffd_tap_open(const char *name, char actual[16]);

// setns(fd, CLONE_NEWNET) for the calling thread; 0 or -errno.
int cuffd_enter_netns(int fd);

// Whether `fd` is a TAP device without packet information (TUNGETIFF): 1 yes, 0 no, -errno.
int cuffd_is_tap(int fd);
