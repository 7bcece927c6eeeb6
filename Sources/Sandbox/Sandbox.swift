import CSeccomp
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// Installs a process role's seccomp allow-list (libseccomp, native architecture).
///
/// Call `install` once, at the end of the process's setup phase: after every file, socket, thread
/// and mapping it needs has been created, before it handles its first untrusted input. The filter
/// cannot be removed and is inherited by every thread (TSYNC) and any child.
public enum Sandbox {
  /// Sets PR_SET_NO_NEW_PRIVS and loads `policy` for every thread of the process. The filter is
  /// fully built (every name resolved, every rule accepted) before anything about the process
  /// changes, so a failure with any code but `.noNewPrivs` / `.load` leaves the process untouched.
  public static func install(_ policy: SeccompPolicy) throws(SandboxError) {
    let filter = try build(policy)
    defer { cseccomp_filter_free(filter) }
    let nnp = cseccomp_set_no_new_privs()
    guard nnp == 0 else {
      throw SandboxError(
        .noNewPrivs, "seccomp policy \(policy.name): prctl(PR_SET_NO_NEW_PRIVS) failed",
        cause: SyscallError("prctl", Errno(-nnp)))
    }
    let rc = cseccomp_filter_load(filter)
    guard rc == 0 else {
      let detail = rc == -ESRCH ? "a thread could not be synchronised (TSYNC)" : "the kernel refused the filter"
      throw SandboxError(
        .load, "seccomp policy \(policy.name): \(detail)", cause: SyscallError("seccomp_load", Errno(-rc)))
    }
  }

  /// Compiles `policy` to its BPF program (what `install` would load), for embedding in the
  /// per-child binaries at build time.
  public static func compile(_ policy: SeccompPolicy) throws(SandboxError) -> [UInt8] {
    let filter = try build(policy)
    defer { cseccomp_filter_free(filter) }
    let pipe: (read: FileDescriptor, write: FileDescriptor)
    do {
      pipe = try FileDescriptor.pipe()
    } catch {
      throw SandboxError(.filter, "seccomp policy \(policy.name): cannot create a pipe", cause: error)
    }
    defer { pipe.read.close() }
    let rc = cseccomp_filter_export_bpf(filter, pipe.write.rawValue)
    pipe.write.close()
    guard rc == 0 else {
      throw SandboxError(
        .filter, "seccomp policy \(policy.name): cannot export the BPF program",
        cause: SyscallError("seccomp_export_bpf", Errno(-rc)))
    }
    var program: [UInt8] = []
    while let chunk = try? pipe.read.read(upTo: 65536), !chunk.isEmpty { program += chunk }
    return program
  }

  /// Builds `policy` without loading it: every name resolves and libseccomp accepts every rule.
  public static func validate(_ policy: SeccompPolicy) throws(SandboxError) {
    cseccomp_filter_free(try build(policy))
  }

  /// The native architecture's number for a system call name, nil when it has none.
  public static func syscallNumber(_ name: String) -> Int32? {
    let nr = cseccomp_syscall_number(name)
    return nr < 0 ? nil : nr
  }

  /// The libseccomp loaded at run time, "major.minor.micro".
  public static var libraryVersion: String {
    let v = cseccomp_library_version()
    return "\(v / 10000).\(v / 100 % 100).\(v % 100)"
  }

  // MARK: - Building

  private static func build(_ policy: SeccompPolicy) throws(SandboxError) -> OpaquePointer {
    try check(policy)
    let (action, errnoValue) = actionCode(policy.defaultAction)
    var error: Int32 = 0
    guard let filter = cseccomp_filter_new(action, errnoValue, &error) else {
      throw SandboxError(
        .filter, "seccomp policy \(policy.name): cannot create a filter (\(policy.defaultAction))",
        cause: SyscallError("seccomp_init", Errno(-error)))
    }
    do throws(SandboxError) {
      for name in unique(policy.allowedSyscalls) {
        let nr = try resolve(name, policy)
        try added(cseccomp_allow(filter, nr), policy, name)
      }
      if !policy.allowedIoctls.isEmpty {
        let nr = try resolve("ioctl", policy)
        for request in unique(policy.allowedIoctls) {
          let rc = cseccomp_allow_if(
            filter, nr, 1, Int32(CSECCOMP_CMP_MASKED_EQ), 0xFFFF_FFFF, UInt64(request))
          try added(rc, policy, "ioctl request \(hex(request))")
        }
      }
      for rule in policy.argumentRules {
        let nr = try resolve(rule.syscall, policy)
        let rc: Int32 =
          switch rule.comparison {
          case .equal(let value):
            cseccomp_allow_if(filter, nr, UInt32(rule.argument), Int32(CSECCOMP_CMP_EQ), 0, value)
          case .maskedEqual(let mask, let value):
            cseccomp_allow_if(filter, nr, UInt32(rule.argument), Int32(CSECCOMP_CMP_MASKED_EQ), mask, value)
          }
        try added(rc, policy, rule.description)
      }
    } catch {
      cseccomp_filter_free(filter)
      throw error
    }
    return filter
  }

  /// Rejects what libseccomp would accept but the policy cannot mean.
  private static func check(_ policy: SeccompPolicy) throws(SandboxError) {
    func invalid(_ message: String) -> SandboxError {
      SandboxError(.invalidPolicy, "seccomp policy \(policy.name): \(message)")
    }
    if policy.allowedSyscalls.contains("ioctl") {
      throw invalid("allows ioctl whatever the request; list the allowed requests in allowedIoctls instead")
    }
    if let name = policy.allowedSyscalls.first(where: { $0.isEmpty }) {
      throw invalid("an empty system call name (\"\(name)\") in allowedSyscalls")
    }
    if let request = policy.allowedIoctls.first(where: { $0 > 0xFFFF_FFFF }) {
      throw invalid("ioctl request \(hex(request)) does not fit the 32 bits the kernel compares")
    }
    for rule in policy.argumentRules {
      guard (0...5).contains(rule.argument) else {
        throw invalid("\(rule.syscall): argument \(rule.argument) out of range 0...5")
      }
      if rule.syscall == "ioctl" {
        throw invalid("an argument rule for ioctl; list the allowed requests in allowedIoctls instead")
      }
      if policy.allowedSyscalls.contains(rule.syscall) {
        throw invalid("\(rule.syscall) is allowed unconditionally, so the rule \(rule) would never restrict it")
      }
    }
    if case .errno(let value) = policy.defaultAction, !(1...4095).contains(value) {
      throw invalid("default action errno \(value) out of range 1...4095")
    }
  }

  private static func resolve(_ name: String, _ policy: SeccompPolicy) throws(SandboxError) -> Int32 {
    guard let nr = syscallNumber(name) else {
      throw SandboxError(
        .unknownSyscall,
        "seccomp policy \(policy.name): unknown system call \"\(name)\" on this architecture "
          + "(libseccomp \(libraryVersion))"
      )
    }
    return nr
  }

  private static func added(_ rc: Int32, _ policy: SeccompPolicy, _ what: String) throws(SandboxError) {
    guard rc == 0 else {
      throw SandboxError(
        .filter, "seccomp policy \(policy.name): libseccomp rejected the rule for \(what)",
        cause: SyscallError("seccomp_rule_add", Errno(-rc)))
    }
  }

  private static func actionCode(_ action: SeccompPolicy.Action) -> (Int32, Int32) {
    switch action {
    case .killProcess: (Int32(CSECCOMP_ACTION_KILL_PROCESS), 0)
    case .errno(let value): (Int32(CSECCOMP_ACTION_ERRNO), value)
    case .log: (Int32(CSECCOMP_ACTION_LOG), 0)
    }
  }

  private static func unique<T: Hashable>(_ items: [T]) -> [T] {
    var seen = Set<T>()
    return items.filter { seen.insert($0).inserted }
  }
}
