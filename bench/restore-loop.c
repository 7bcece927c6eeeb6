// The physical floor of a fan-out: one process, no pager, no sockets, no agent. For each of N
// children: KVM_CREATE_VM, a MAP_PRIVATE mapping of the snapshot's memory.bin as memslot 0, the
// vCPUs with the snapshot's state, and KVM_RUN until the first exit. The children stay alive
// until the round ends, like a fan-out's. `forkd-bench spawn` and `forkd-bench restore` build
// and run it beside forkd's own path and print the ratio (targets.md, issue 17).
//
// The vCPU state comes from a flat file forkd-bench writes from the snapshot's vmstate.bin
// (raw KVM structs, little endian; the layout below), so this file parses nothing of forkd's.
//
// usage: restore-loop --state FILE --memory memory.bin --children N [--rounds R]
// prints one JSON line per round: {"round":R,"children":N,"total_ms":…,"first_exit_us":[…],…}
// Built by the bench at run time: clang -O2 -o restore-loop restore-loop.c
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_VCPUS 8

struct blob {
  uint32_t length;
  uint8_t *bytes;
};

struct vcpu_state {
  struct blob regs, sregs, fpu, xcrs, msrs, events, mp_state, debugregs, cpuid;
  uint32_t fpu_is_xsave;
};

struct child {
  int vm, vcpus[MAX_VCPUS];
  void *memory;
  struct kvm_run *runs[MAX_VCPUS];
};

static struct vcpu_state states[MAX_VCPUS];
static uint32_t vcpu_count;
static uint64_t memory_size;
static size_t run_size;

static void die(const char *what) {
  fprintf(stderr, "restore-loop: %s: %s\n", what, strerror(errno));
  exit(1);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint8_t *cursor, *end;

static void take(void *out, size_t n) {
  if ((size_t)(end - cursor) < n) {
    fprintf(stderr, "restore-loop: state file truncated\n");
    exit(1);
  }
  memcpy(out, cursor, n);
  cursor += n;
}

static struct blob take_blob(void) {
  struct blob b;
  take(&b.length, 4);
  if ((size_t)(end - cursor) < b.length) {
    fprintf(stderr, "restore-loop: state file truncated\n");
    exit(1);
  }
  b.bytes = cursor;
  cursor += b.length;
  return b;
}

// Layout: "FCL1", u32 vcpu_count, u64 memory_size, then per vCPU: regs, sregs, u32 fpu_is_xsave,
// fpu, xcrs, msrs (struct kvm_msrs with its entries), vcpu_events, mp_state, debugregs, cpuid
// (struct kvm_cpuid2 with its entries), each as u32 length + bytes (length 0: absent).
static void read_state(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) die(path);
  struct stat st;
  if (fstat(fd, &st) != 0) die(path);
  cursor = malloc((size_t)st.st_size);
  if (!cursor || read(fd, cursor, (size_t)st.st_size) != st.st_size) die(path);
  close(fd);
  end = cursor + st.st_size;
  char magic[4];
  take(magic, 4);
  if (memcmp(magic, "FCL1", 4) != 0) {
    fprintf(stderr, "restore-loop: %s is not a restore-loop state file\n", path);
    exit(1);
  }
  take(&vcpu_count, 4);
  take(&memory_size, 8);
  if (vcpu_count == 0 || vcpu_count > MAX_VCPUS) {
    fprintf(stderr, "restore-loop: %u vCPUs\n", vcpu_count);
    exit(1);
  }
  for (uint32_t i = 0; i < vcpu_count; i++) {
    struct vcpu_state *s = &states[i];
    s->regs = take_blob();
    s->sregs = take_blob();
    take(&s->fpu_is_xsave, 4);
    s->fpu = take_blob();
    s->xcrs = take_blob();
    s->msrs = take_blob();
    s->events = take_blob();
    s->mp_state = take_blob();
    s->debugregs = take_blob();
    s->cpuid = take_blob();
  }
}

static void set(int fd, unsigned long request, struct blob b, const char *what) {
  if (b.length == 0) return;
  if (ioctl(fd, request, b.bytes) < 0) die(what);
}

// One child: VM, memory, vCPUs with state, each vCPU run to its first exit. Returns the exit
// reason of vCPU 0.
static uint32_t restore_child(int kvm, int memory_fd, struct child *c) {
  c->vm = ioctl(kvm, KVM_CREATE_VM, 0);
  if (c->vm < 0) die("KVM_CREATE_VM");
  c->memory = mmap(NULL, memory_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, memory_fd, 0);
  if (c->memory == MAP_FAILED) die("mmap memory.bin");
  struct kvm_userspace_memory_region region = {
      .slot = 0, .guest_phys_addr = 0, .memory_size = memory_size, .userspace_addr = (uint64_t)c->memory};
  if (ioctl(c->vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");
  uint32_t reason = 0;
  for (uint32_t i = 0; i < vcpu_count; i++) {
    struct vcpu_state *s = &states[i];
    int fd = ioctl(c->vm, KVM_CREATE_VCPU, i);
    if (fd < 0) die("KVM_CREATE_VCPU");
    c->vcpus[i] = fd;
    c->runs[i] = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (c->runs[i] == MAP_FAILED) die("mmap kvm_run");
    // The order forkd-vmm uses: CPUID, sregs, regs, FPU, XCRs, MSRs, debug regs, MP state, events.
    set(fd, KVM_SET_CPUID2, s->cpuid, "KVM_SET_CPUID2");
    set(fd, KVM_SET_SREGS, s->sregs, "KVM_SET_SREGS");
    set(fd, KVM_SET_REGS, s->regs, "KVM_SET_REGS");
    set(fd, s->fpu_is_xsave ? KVM_SET_XSAVE : KVM_SET_FPU, s->fpu, "KVM_SET_XSAVE/FPU");
    set(fd, KVM_SET_XCRS, s->xcrs, "KVM_SET_XCRS");
    if (s->msrs.length && ioctl(fd, KVM_SET_MSRS, s->msrs.bytes) < 0) die("KVM_SET_MSRS");
    set(fd, KVM_SET_DEBUGREGS, s->debugregs, "KVM_SET_DEBUGREGS");
    set(fd, KVM_SET_MP_STATE, s->mp_state, "KVM_SET_MP_STATE");
    set(fd, KVM_SET_VCPU_EVENTS, s->events, "KVM_SET_VCPU_EVENTS");
  }
  for (uint32_t i = 0; i < vcpu_count; i++) {
    if (ioctl(c->vcpus[i], KVM_RUN, 0) < 0 && errno != EINTR) die("KVM_RUN");
    if (i == 0) reason = c->runs[0]->exit_reason;
  }
  return reason;
}

static void destroy_child(struct child *c) {
  for (uint32_t i = 0; i < vcpu_count; i++) {
    munmap(c->runs[i], run_size);
    close(c->vcpus[i]);
  }
  munmap(c->memory, memory_size);
  close(c->vm);
}

int main(int argc, char **argv) {
  const char *state_path = NULL, *memory_path = NULL;
  long children = 100, rounds = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--state")) state_path = argv[i + 1];
    else if (!strcmp(argv[i], "--memory")) memory_path = argv[i + 1];
    else if (!strcmp(argv[i], "--children")) children = strtol(argv[i + 1], NULL, 10);
    else if (!strcmp(argv[i], "--rounds")) rounds = strtol(argv[i + 1], NULL, 10);
  }
  if (!state_path || !memory_path || children < 1 || children > 10000 || rounds < 1) {
    fprintf(stderr, "usage: restore-loop --state FILE --memory memory.bin --children N [--rounds R]\n");
    return 2;
  }
  read_state(state_path);
  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) die("/dev/kvm");
  int size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (size <= 0) die("KVM_GET_VCPU_MMAP_SIZE");
  run_size = (size_t)size;
  int memory_fd = open(memory_path, O_RDONLY | O_CLOEXEC);
  if (memory_fd < 0) die(memory_path);
  struct child *all = calloc((size_t)children, sizeof(struct child));
  uint64_t *first_exit = calloc((size_t)children, sizeof(uint64_t));
  if (!all || !first_exit) die("calloc");
  for (long round = 0; round < rounds; round++) {
    uint32_t reasons[64] = {0};
    uint64_t start = now_ns();
    for (long i = 0; i < children; i++) {
      uint64_t t0 = now_ns();
      uint32_t reason = restore_child(kvm, memory_fd, &all[i]);
      first_exit[i] = now_ns() - t0;
      reasons[reason < 64 ? reason : 63]++;
    }
    uint64_t total = now_ns() - start;
    printf("{\"round\":%ld,\"children\":%ld,\"vcpus\":%u,\"total_ms\":%.3f,\"exit_reasons\":{", round, children,
           vcpu_count, (double)total / 1e6);
    int comma = 0;
    for (int r = 0; r < 64; r++) {
      if (!reasons[r]) continue;
      printf("%s\"%d\":%u", comma ? "," : "", r, reasons[r]);
      comma = 1;
    }
    printf("},\"first_exit_us\":[");
    for (long i = 0; i < children; i++) printf("%s%.1f", i ? "," : "", (double)first_exit[i] / 1e3);
    printf("]}\n");
    fflush(stdout);
    for (long i = 0; i < children; i++) destroy_child(&all[i]);
  }
  return 0;
}
