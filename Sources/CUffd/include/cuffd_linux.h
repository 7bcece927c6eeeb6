// Linux-only calls that Glibc's Swift module does not export (they need _GNU_SOURCE or have no
// glibc wrapper on Debian 12): eventfd, accept4, pidfd_open, pidfd_send_signal, memfd_create.
#pragma once
#include <sys/types.h>

int cuffd_eventfd(unsigned int initval, int nonblocking);
int cuffd_accept4(int sock, int nonblocking);
int cuffd_pidfd_open(pid_t pid);
int cuffd_pidfd_send_signal(int pidfd, int signo);
int cuffd_memfd_create(const char *name, int allow_sealing);
int cuffd_pipe_cloexec(int fds[2]);
int cuffd_unix_stream_socket(void);
int cuffd_unix_socketpair(int fds[2]);
pid_t cuffd_peer_pid(int sock);
int cuffd_rename_noreplace(const char *from, const char *to);

#include <spawn.h>
// Makes the spawned child close every descriptor >= lowfd (after the dup2 actions before it), so
// only what was passed on purpose crosses exec: sockets of other clients, other children's pipes
// and the like never leak into a VM process.
int cuffd_spawn_closefrom(posix_spawn_file_actions_t *actions, int lowfd);
