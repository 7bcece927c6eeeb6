// userfaultfd(2): creation, the ioctls, and the event record, for Swift.
// Debian 12's <linux/userfaultfd.h> predates UFFDIO_MOVE, WP_ASYNC and POISON; the running kernel
// (6.18 here) has them, so their UAPI values are defined below when the header lacks them.
#pragma once
#include <linux/userfaultfd.h>
#include <stdint.h>

#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1 << 16)
#endif

// Creates a userfaultfd: the syscall first, then /dev/userfaultfd (for kernels or sandboxes that
// restrict the syscall to privileged users). flags: O_CLOEXEC | O_NONBLOCK as wanted.
// Returns the fd or -1 with errno set from the last attempt.
int cuffd_create(int flags, int user_mode_only);

// UFFDIO_API: asks for `features`; on success *granted_features and *ioctls are what the kernel
// offers. Must be the first ioctl on a new uffd.
int cuffd_api(int uffd, uint64_t features, uint64_t *granted_features, uint64_t *ioctls);

// Asks the kernel which features it supports (on a throwaway uffd).
int cuffd_probe_features(uint64_t *features);

int cuffd_register(int uffd, uint64_t start, uint64_t len, uint64_t mode, uint64_t *ioctls);
int cuffd_unregister(int uffd, uint64_t start, uint64_t len);

// Range operations. Each returns 0 or -1 with errno; *done is the byte count the kernel reports
// (copy/zeropage/continue/move may complete partially before failing).
int cuffd_copy(int uffd, uint64_t dst, uint64_t src, uint64_t len, uint64_t mode, int64_t *done);
int cuffd_zeropage(int uffd, uint64_t start, uint64_t len, uint64_t mode, int64_t *done);
int cuffd_continue(int uffd, uint64_t start, uint64_t len, uint64_t mode, int64_t *done);
int cuffd_move(int uffd, uint64_t dst, uint64_t src, uint64_t len, uint64_t mode, int64_t *done);
int cuffd_wake(int uffd, uint64_t start, uint64_t len);
int cuffd_writeprotect(int uffd, uint64_t start, uint64_t len, int protect, int dontwake);

// Mode bits (re-exported so Swift needs no macros).
static const uint64_t CUFFD_REGISTER_MISSING = UFFDIO_REGISTER_MODE_MISSING;
static const uint64_t CUFFD_REGISTER_WP = UFFDIO_REGISTER_MODE_WP;
static const uint64_t CUFFD_REGISTER_MINOR = UFFDIO_REGISTER_MODE_MINOR;
static const uint64_t CUFFD_COPY_DONTWAKE = UFFDIO_COPY_MODE_DONTWAKE;
static const uint64_t CUFFD_COPY_WP = UFFDIO_COPY_MODE_WP;
static const uint64_t CUFFD_ZEROPAGE_DONTWAKE = UFFDIO_ZEROPAGE_MODE_DONTWAKE;
static const uint64_t CUFFD_CONTINUE_DONTWAKE = UFFDIO_CONTINUE_MODE_DONTWAKE;
static const uint64_t CUFFD_MOVE_DONTWAKE = 1ULL << 0;
static const uint64_t CUFFD_MOVE_ALLOW_SRC_HOLES = 1ULL << 1;

static const uint64_t CUFFD_FEATURE_PAGEFAULT_FLAG_WP = UFFD_FEATURE_PAGEFAULT_FLAG_WP;
static const uint64_t CUFFD_FEATURE_EVENT_REMOVE = UFFD_FEATURE_EVENT_REMOVE;
static const uint64_t CUFFD_FEATURE_EVENT_UNMAP = UFFD_FEATURE_EVENT_UNMAP;
static const uint64_t CUFFD_FEATURE_EVENT_REMAP = UFFD_FEATURE_EVENT_REMAP;
static const uint64_t CUFFD_FEATURE_MISSING_SHMEM = UFFD_FEATURE_MISSING_SHMEM;
static const uint64_t CUFFD_FEATURE_MINOR_SHMEM = UFFD_FEATURE_MINOR_SHMEM;
static const uint64_t CUFFD_FEATURE_THREAD_ID = UFFD_FEATURE_THREAD_ID;
static const uint64_t CUFFD_FEATURE_EXACT_ADDRESS = UFFD_FEATURE_EXACT_ADDRESS;
static const uint64_t CUFFD_FEATURE_WP_UNPOPULATED = UFFD_FEATURE_WP_UNPOPULATED;
static const uint64_t CUFFD_FEATURE_WP_ASYNC = UFFD_FEATURE_WP_ASYNC;
static const uint64_t CUFFD_FEATURE_MOVE = UFFD_FEATURE_MOVE;

// The 32-byte event record, flattened.
struct cuffd_event {
  uint8_t kind;          // CUFFD_EVENT_*
  uint64_t flags;        // page fault: UFFD_PAGEFAULT_FLAG_*
  uint64_t address;      // page fault address; REMOVE/UNMAP start; REMAP from
  uint64_t end;          // REMOVE/UNMAP end; REMAP to
  uint64_t length;       // REMAP length
  uint32_t thread_id;    // page fault thread id when UFFD_FEATURE_THREAD_ID
};

static const uint8_t CUFFD_EVENT_PAGEFAULT = UFFD_EVENT_PAGEFAULT;
static const uint8_t CUFFD_EVENT_FORK = UFFD_EVENT_FORK;
static const uint8_t CUFFD_EVENT_REMAP = UFFD_EVENT_REMAP;
static const uint8_t CUFFD_EVENT_REMOVE = UFFD_EVENT_REMOVE;
static const uint8_t CUFFD_EVENT_UNMAP = UFFD_EVENT_UNMAP;
static const uint64_t CUFFD_FAULT_WRITE = UFFD_PAGEFAULT_FLAG_WRITE;
static const uint64_t CUFFD_FAULT_WP = UFFD_PAGEFAULT_FLAG_WP;
static const uint64_t CUFFD_FAULT_MINOR = UFFD_PAGEFAULT_FLAG_MINOR;

// Reads up to `max` events; returns the count, 0 at EOF, or -1 with errno (EAGAIN when none).
int cuffd_read_events(int uffd, struct cuffd_event *events, int max);
