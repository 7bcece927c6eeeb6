// Signals used to kick a vCPU thread out of KVM_RUN.
#pragma once
#include <pthread.h>

// Installs a no-op handler for `signo` without SA_RESTART so a blocked ioctl returns EINTR.
int cuffd_install_kick_handler(int signo);
int cuffd_thread_kick(pthread_t thread, int signo);
int cuffd_thread_set_name(pthread_t thread, const char *name);

// Makes SIGTERM and SIGINT write one 8-byte count to `eventfd` (async-signal-safe) instead of
// killing the process, whichever thread they land on.
int cuffd_install_stop_handler(int eventfd);
