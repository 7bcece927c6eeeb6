// Passing file descriptors over Unix sockets (SCM_RIGHTS): the CMSG_* macros are not importable.
#pragma once
#include <stddef.h>
#include <sys/types.h>

// Sends `len` bytes and, when fd >= 0, one descriptor as ancillary data. Returns sendmsg's result.
ssize_t cuffd_send_with_fd(int sock, const void *buf, size_t len, int fd);

// Receives up to `cap` bytes; *fd_out is the received descriptor or -1. *truncated is set when
// ancillary data or the message body did not fit. Returns recvmsg's result.
ssize_t cuffd_recv_with_fd(int sock, void *buf, size_t cap, int *fd_out, int *truncated);
