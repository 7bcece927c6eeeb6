import CSeccomp

#if canImport(Glibc)
  import Glibc
#endif

/// A named set of system calls with the reason a role needs them (docs/seccomp.md lists the same
/// groups).
public struct SyscallGroup: Sendable, Equatable {
  public var name: String
  public var reason: String
  public var syscalls: [String]

  public init(_ name: String, _ reason: String, _ syscalls: [String]) {
    self.name = name
    self.reason = reason
    self.syscalls = syscalls
  }
}

extension SyscallGroup {
  /// The Swift runtime and glibc (malloc, locks, signals, abort, hashing seed) once the process
  /// is set up. rseq and set_robust_list are what a new thread's first instructions in glibc do:
  /// a thread created just before the filter may reach them only after TSYNC applied it.
  public static let runtime = SyscallGroup(
    "runtime",
    "the Swift runtime and glibc: malloc, futex locks, signal return/masks, abort, the hash seed, "
      + "and a just-created thread's own start-up (rseq, set_robust_list)",
    [
      "mmap", "munmap", "mremap", "madvise", "brk", "mprotect", "futex", "rt_sigreturn", "rt_sigprocmask",
      "rt_sigaction", "sigaltstack", "getpid", "gettid", "tgkill", "exit", "exit_group", "getrandom",
      "sched_yield", "fstat", "newfstatat", "statx", "fcntl", "restart_syscall", "rseq", "set_robust_list",
    ])

  public static let streamIO = SyscallGroup(
    "stream I/O", "reading and writing descriptors opened during setup (sockets, pipes, the uffd, logs)",
    ["read", "write", "readv", "writev", "recvmsg", "sendmsg", "sendto", "recvfrom"])

  public static let polling = SyscallGroup(
    "polling", "the event loop waits on its descriptors", ["poll", "ppoll", "epoll_wait", "epoll_pwait"])

  public static let accepting = SyscallGroup(
    "accepting", "connections to a socket that was bound and listening before the filter", ["accept4", "accept"])

  public static let closing = SyscallGroup("closing", "descriptors are closed when connections end", ["close"])

  public static let clocks = SyscallGroup(
    "clocks", "timestamps, timeouts and back-off (clock_gettime is usually the vDSO)",
    ["clock_gettime", "clock_nanosleep", "nanosleep", "gettimeofday"])

  /// The pager writes its working-set record into a file opened before the filter, then renames it.
  public static let recordFile = SyscallGroup(
    "record file", "write, sync and rename into place a file opened before the filter",
    ["pwrite64", "fsync", "fdatasync", "rename", "renameat", "renameat2", "ftruncate", "lseek"])

  /// A snapshot creates its directory and files, and the VMM removes its sockets on exit.
  public static let snapshotFiles = SyscallGroup(
    "snapshot files",
    "snapshots create a staging directory and files, sync them and rename them into place; "
      + "sockets are unlinked at exit",
    [
      "openat", "mkdir", "mkdirat", "unlink", "unlinkat", "rmdir", "getdents64", "rename", "renameat", "renameat2",
      "fsync", "fdatasync", "pwrite64", "pread64", "ftruncate", "lseek",
    ])

  /// Guest-initiated vsock connections become Unix-socket connections (socket itself: AF_UNIX only).
  /// Both listeners (control, vsock) are bound, chmodded and listening before the filter: no chmod.
  public static let unixSockets = SyscallGroup(
    "unix sockets",
    "guest vsock connects become Unix connections; socket() is allowed for AF_UNIX only (an argument rule)",
    ["connect", "bind", "listen", "accept4", "accept", "getsockopt", "setsockopt", "sendmsg", "recvmsg"])

  /// A jailed pager leaves its working-set record for its owner to rename (docs/jail.md).
  public static let recordFileInJail = SyscallGroup(
    "record file (jailed)", "write and sync a file opened before the filter; the owner renames it into place",
    ["pwrite64", "fsync", "fdatasync", "ftruncate", "lseek"])

  public static let vcpuThreads = SyscallGroup(
    "vcpu threads", "vCPU kicks (SIGUSR1 via tgkill), the signals thread's sigwait, thread names",
    ["tgkill", "rt_sigtimedwait", "prctl"])

  /// Only in ASan/TSan builds (scripts/sanitize): what those runtimes call on their own, e.g. when a
  /// thread starts (its stack bounds via sched_getaffinity) or a report is printed. Shipped builds
  /// never load a filter with this group (CompiledFilter.forRole).
  public static let sanitizerRuntime = SyscallGroup(
    "sanitizer runtime",
    "ASan/TSan runtimes in sanitizer test builds only: thread stack bounds, resource limits, "
      + "reading /proc/self/exe and maps for a report",
    ["sched_getaffinity", "prlimit64", "getrlimit", "readlink", "readlinkat", "openat", "pread64", "getdents64"])

  public static let descriptorsForDevices = SyscallGroup(
    "new descriptors", "wake-ups and memory for devices and the pager link",
    ["pipe2", "eventfd2", "memfd_create", "userfaultfd"])
}

extension SeccompPolicy {
  /// userfaultfd requests: resolve faults (copy, zero page, continue, move), wake, write-protect,
  /// and the API handshake.
  public static let userfaultfdIoctls: [UInt] = [
    CSECCOMP_UFFDIO_API, CSECCOMP_UFFDIO_COPY, CSECCOMP_UFFDIO_ZEROPAGE, CSECCOMP_UFFDIO_WAKE,
    CSECCOMP_UFFDIO_CONTINUE, CSECCOMP_UFFDIO_WRITEPROTECT, CSECCOMP_UFFDIO_MOVE,
  ]

  /// TCGETS: glibc's stdio asks whether stderr is a terminal on its first buffered write; a log
  /// line must not kill a process that was started from a shell.
  public static let terminalIoctls: [UInt] = [0x5401]

  /// KVM requests a running VMM issues: KVM_RUN, vCPU/VM state for snapshots and restores, memory
  /// slots and the capability queries. Creating VMs or vCPUs is not among them.
  public static let kvmIoctls: [UInt] = [
    CSECCOMP_KVM_RUN, CSECCOMP_KVM_CHECK_EXTENSION, CSECCOMP_KVM_GET_MSR_INDEX_LIST,
    CSECCOMP_KVM_GET_SUPPORTED_CPUID, CSECCOMP_KVM_SET_USER_MEMORY_REGION,
    CSECCOMP_KVM_GET_REGS, CSECCOMP_KVM_SET_REGS, CSECCOMP_KVM_GET_SREGS, CSECCOMP_KVM_SET_SREGS,
    CSECCOMP_KVM_GET_FPU, CSECCOMP_KVM_SET_FPU, CSECCOMP_KVM_GET_XSAVE, CSECCOMP_KVM_SET_XSAVE,
    CSECCOMP_KVM_GET_XCRS, CSECCOMP_KVM_SET_XCRS, CSECCOMP_KVM_GET_MSRS, CSECCOMP_KVM_SET_MSRS,
    CSECCOMP_KVM_GET_VCPU_EVENTS, CSECCOMP_KVM_SET_VCPU_EVENTS, CSECCOMP_KVM_GET_MP_STATE,
    CSECCOMP_KVM_SET_MP_STATE, CSECCOMP_KVM_GET_DEBUGREGS, CSECCOMP_KVM_SET_DEBUGREGS,
    CSECCOMP_KVM_GET_LAPIC, CSECCOMP_KVM_SET_LAPIC, CSECCOMP_KVM_GET_CPUID2, CSECCOMP_KVM_SET_CPUID2,
    CSECCOMP_KVM_GET_IRQCHIP, CSECCOMP_KVM_SET_IRQCHIP, CSECCOMP_KVM_GET_PIT2, CSECCOMP_KVM_SET_PIT2,
    CSECCOMP_KVM_GET_CLOCK, CSECCOMP_KVM_SET_CLOCK,
  ]

  /// The pager's groups: it only moves bytes between descriptors it already has.
  public static let pagerGroups: [SyscallGroup] = [
    .runtime, .streamIO, .polling, .accepting, .closing, .clocks, .recordFile,
  ]

  /// The VMM's groups: the pager's plus files, Unix sockets, thread signalling and new descriptors.
  public static let vmmGroups: [SyscallGroup] =
    pagerGroups + [
      .snapshotFiles, .unixSockets, .vcpuThreads, .descriptorsForDevices,
    ]

  /// forkd-pager after its setup: a single thread serving faults from the uffd and the VMM link.
  /// No socket, connect, openat, execve, fork, clone or clone3: a pager never creates anything.
  public static let pager = SeccompPolicy(
    name: "pager", allowedSyscalls: pagerGroups.flatMap(\.syscalls),
    allowedIoctls: userfaultfdIoctls + terminalIoctls)

  /// A jailed forkd-pager (docs/jail.md): the pager's list without rename, renameat, renameat2.
  public static let pagerJailedGroups: [SyscallGroup] = pagerGroups.map { $0 == .recordFile ? .recordFileInJail : $0 }

  public static let pagerJailed = SeccompPolicy(
    name: "pager-jailed", allowedSyscalls: pagerJailedGroups.flatMap(\.syscalls),
    allowedIoctls: userfaultfdIoctls + terminalIoctls)

  public static let pagerJailedUnderSanitizer = SeccompPolicy(
    name: "pager-jailed-sanitized", allowedSyscalls: (pagerJailedGroups + [.sanitizerRuntime]).flatMap(\.syscalls),
    allowedIoctls: userfaultfdIoctls + terminalIoctls)

  /// The pager's policy plus the sanitizer runtime's calls, for ASan/TSan test builds only.
  public static let pagerUnderSanitizer = SeccompPolicy(
    name: "pager-sanitized", allowedSyscalls: (pagerGroups + [.sanitizerRuntime]).flatMap(\.syscalls),
    allowedIoctls: userfaultfdIoctls + terminalIoctls)

  /// forkd-vmm after its setup: vCPU threads, event loop, snapshots. Threads are created before the
  /// filter, so clone/clone3 (and fork, vfork, execve) stay forbidden; socket() only for AF_UNIX.
  public static let vmm = SeccompPolicy(
    name: "vmm", allowedSyscalls: vmmGroups.flatMap(\.syscalls),
    allowedIoctls: kvmIoctls + userfaultfdIoctls + terminalIoctls,
    argumentRules: [ArgumentRule("socket", argument: 0, .equal(UInt64(AF_UNIX)))])

  /// The VMM's policy plus the sanitizer runtime's calls, for ASan/TSan test builds only.
  public static let vmmUnderSanitizer = SeccompPolicy(
    name: "vmm-sanitized", allowedSyscalls: (vmmGroups + [.sanitizerRuntime]).flatMap(\.syscalls),
    allowedIoctls: kvmIoctls + userfaultfdIoctls + terminalIoctls,
    argumentRules: [ArgumentRule("socket", argument: 0, .equal(UInt64(AF_UNIX)))])
}
