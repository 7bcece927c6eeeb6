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

#include <stdint.h>
#include <unistd.h>

static volatile int cuffd_stop_fd = -1;

static void cuffd_stop_handler(int signo) {
  (void)signo;
  uint64_t one = 1;
  if (cuffd_stop_fd >= 0) {
    ssize_t ignored = write(cuffd_stop_fd, &one, sizeof(one));
    (void)ignored;
  }
}

int cuffd_install_stop_handler(int eventfd) {
  cuffd_stop_fd = eventfd;
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = cuffd_stop_handler;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  if (sigaction(SIGTERM, &sa, NULL) != 0) return -1;
  return sigaction(SIGINT, &sa, NULL);
}
