#define _GNU_SOURCE
#include "cuffd_thread.h"
#include <signal.h>
#include <string.h>

static void cuffd_kick_noop(int signo) { (void)signo; }

int cuffd_install_kick_handler(int signo) {
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = cuffd_kick_noop;
  sigemptyset(&sa.sa_mask);
  return sigaction(signo, &sa, NULL);
}

int cuffd_thread_kick(pthread_t thread, int signo) { return pthread_kill(thread, signo); }

int cuffd_thread_set_name(pthread_t thread, const char *name) { return pthread_setname_np(thread, name); }
