// A minimal userfaultfd page handler: the baseline `forkd bench pagers` compares forkd-pager with
// (targets.md: the pager's fault service within 1.2x of a minimal C handler, same run, same guest).
//
// It speaks just enough of forkd's pager handshake (docs/pager.md) to be handed a VM's uffd, then
// answers every MISSING fault with one UFFDIO_COPY from a read-only mapping of memory.bin (holes
// read as zeros from the mapping: no hole map, no stats socket, no seccomp, no diff chains).
// Service time is measured like forkd-pager's: from reading the event to the resolving ioctl,
// in the same 250 ns buckets; printed as one JSON line on stderr when the VM goes away.
//
// usage: uffd-min-handler --socket PATH --ready-fd N --memory memory.bin [ignored options]
// Built by the bench at run time: clang -O2 -o uffd-min-handler uffd-min-handler.c
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_REGIONS 16
#define BUCKETS (256 + 40)

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint32_t histogram[BUCKETS];
static uint64_t faults, copies, already_mapped, busy_ns;

static void record(uint64_t ns) {
  int bucket;
  if (ns < 256 * 250) {
    bucket = (int)(ns / 250);
  } else {
    int lz = __builtin_clzll(ns / (256 * 250));
    bucket = 256 + (64 - lz < 39 ? 64 - lz : 39);
  }
  histogram[bucket]++;
  busy_ns += ns;
}

static uint64_t percentile(double p) {
  uint64_t total = 0, seen = 0;
  for (int i = 0; i < BUCKETS; i++) total += histogram[i];
  if (total == 0) return 0;
  uint64_t rank = (uint64_t)(p * (double)total);
  if ((double)rank < p * (double)total) rank++;
  for (int i = 0; i < BUCKETS; i++) {
    seen += histogram[i];
    if (seen >= rank) return i < 256 ? (uint64_t)(i + 1) * 250 : (uint64_t)256 * 250 << (i - 256);
  }
  return 0;
}

static void die(const char *what) {
  fprintf(stderr, "uffd-min-handler: %s: %s\n", what, strerror(errno));
  exit(1);
}

// The n-th unsigned number after "key": in the handshake's JSON (no JSON parser: minimal).
static int json_number(const char *json, const char *key, int n, uint64_t *out) {
  char pattern[64];
  snprintf(pattern, sizeof pattern, "\"%s\":", key);
  const char *at = json;
  for (int i = 0; i <= n; i++) {
    at = strstr(at, pattern);
    if (!at) return 0;
    at += strlen(pattern);
  }
  *out = strtoull(at, NULL, 10);
  return 1;
}

int main(int argc, char **argv) {
  const char *socket_path = NULL, *memory_path = NULL;
  int ready_fd = -1;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--socket")) socket_path = argv[i + 1];
    else if (!strcmp(argv[i], "--ready-fd")) ready_fd = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--memory")) memory_path = argv[i + 1];
  }
  if (!socket_path || !memory_path) {
    fprintf(stderr, "usage: uffd-min-handler --socket PATH --memory FILE [--ready-fd N]\n");
    return 2;
  }
  int memory_fd = open(memory_path, O_RDONLY);
  if (memory_fd < 0) die(memory_path);
  struct stat st;
  if (fstat(memory_fd, &st) < 0) die("fstat");
  const uint8_t *memory = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, memory_fd, 0);
  if (memory == MAP_FAILED) die("mmap");

  int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  strncpy(addr.sun_path, socket_path, sizeof addr.sun_path - 1);
  if (bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(listener, 4) < 0) die(socket_path);
  if (ready_fd >= 0) {
    dprintf(ready_fd, "READY pid=%d\n", getpid());
    close(ready_fd);
  }
  int vm = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
  if (vm < 0) die("accept");

  // The handshake: a 12-byte header, a JSON body, the uffd as SCM_RIGHTS.
  static char frame[12 + 65536 + 1];
  size_t have = 0, want = 12;
  int uffd = -1;
  while (have < want) {
    char control[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {.iov_base = frame + have, .iov_len = want - have};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
    ssize_t n = recvmsg(vm, &msg, 0);
    if (n <= 0) die("handshake");
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) memcpy(&uffd, CMSG_DATA(c), sizeof uffd);
    have += (size_t)n;
    if (have == 12 && want == 12) {
      uint32_t length;
      memcpy(&length, frame + 8, 4);
      if (length > 65536) { errno = EMSGSIZE; die("handshake body"); }
      want += length;
    }
  }
  frame[have] = 0;
  const char *json = frame + 12;
  uint64_t host[MAX_REGIONS], size[MAX_REGIONS], offset[MAX_REGIONS];
  int regions = 0;
  while (regions < MAX_REGIONS && json_number(json, "host_virt_addr", regions, &host[regions])) {
    json_number(json, "size", regions, &size[regions]);
    json_number(json, "file_offset", regions, &offset[regions]);
    regions++;
  }
  if (uffd < 0 || regions == 0) { errno = EPROTO; die("handshake: no uffd or no regions"); }
  char ack[64];
  int body = snprintf(ack + 12, sizeof ack - 12, "{\"ok\":true,\"pager_pid\":%d}", getpid());
  uint32_t magic = 0x50444B46, length = (uint32_t)body;
  uint16_t version = 1, flags = 0;
  memcpy(ack, &magic, 4);
  memcpy(ack + 4, &version, 2);
  memcpy(ack + 6, &flags, 2);
  memcpy(ack + 8, &length, 4);
  if (write(vm, ack, 12 + (size_t)body) != 12 + body) die("ack");

  // The fault loop.
  fcntl(uffd, F_SETFL, fcntl(uffd, F_GETFL) | O_NONBLOCK);
  struct pollfd fds[2] = {{.fd = uffd, .events = POLLIN}, {.fd = vm, .events = POLLIN}};
  for (;;) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    if (fds[1].revents) {
      char byte;
      if (read(vm, &byte, 1) <= 0) break;  // the VM went away
    }
    if (!(fds[0].revents & POLLIN)) continue;
    struct uffd_msg msgs[64];
    for (;;) {
      ssize_t n = read(uffd, msgs, sizeof msgs);
      if (n <= 0) break;
      for (size_t i = 0; i < (size_t)n / sizeof msgs[0]; i++) {
        if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
        uint64_t started = now_ns();
        uint64_t address = msgs[i].arg.pagefault.address & ~4095ull;
        faults++;
        for (int r = 0; r < regions; r++) {
          if (address < host[r] || address >= host[r] + size[r]) continue;
          struct uffdio_copy copy = {
              .dst = address, .src = (uint64_t)(memory + offset[r] + (address - host[r])), .len = 4096, .mode = 0};
          if (ioctl(uffd, UFFDIO_COPY, &copy) == 0) {
            copies++;
          } else if (errno == EEXIST) {
            struct uffdio_range range = {.start = address, .len = 4096};
            ioctl(uffd, UFFDIO_WAKE, &range);
            already_mapped++;
          }
          break;
        }
        record(now_ns() - started);
      }
    }
  }
  fprintf(stderr,
          "uffd-min-handler: stats {\"faults\":%llu,\"copies\":%llu,\"already_mapped\":%llu,"
          "\"service_ns\":{\"p50\":%llu,\"p90\":%llu,\"p99\":%llu},\"busy_ns\":%llu}\n",
          (unsigned long long)faults, (unsigned long long)copies, (unsigned long long)already_mapped,
          (unsigned long long)percentile(0.50), (unsigned long long)percentile(0.90),
          (unsigned long long)percentile(0.99), (unsigned long long)busy_ns);
  unlink(socket_path);
  return 0;
}
