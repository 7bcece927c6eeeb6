import CUffd

#if canImport(Glibc)
  import Glibc
#endif

/// Starting and reaping child processes (posix_spawn keeps start-up cheap: no fork of a big parent).
public enum ChildProcess {
  /// Spawns `path` with `arguments` (argv[0] included). `inheritedFDs` maps a child descriptor
  /// number to a parent descriptor; everything else close-on-exec stays closed.
  public static func spawn(
    path: String, arguments: [String], environment: [String]? = nil,
    inheritedFDs: [(child: Int32, parent: FileDescriptor)] = [], stdoutFD: FileDescriptor? = nil,
    stderrFD: FileDescriptor? = nil
  ) throws(SyscallError) -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    if let stdoutFD { posix_spawn_file_actions_adddup2(&actions, stdoutFD.rawValue, 1) }
    if let stderrFD { posix_spawn_file_actions_adddup2(&actions, stderrFD.rawValue, 2) }
    // A source whose number is one of the targets is moved out of the way first: dup2(3, 3)
    // would leave its FD_CLOEXEC set, and another dup2 might overwrite it before it is used.
    let targets = Set(inheritedFDs.map(\.child))
    var temporaries: [Int32] = []
    defer { temporaries.forEach { _ = Glibc.close($0) } }
    for (child, parent) in inheritedFDs {
      var source = parent.rawValue
      if targets.contains(source) {
        source = fcntl(source, F_DUPFD_CLOEXEC, 64)
        guard source >= 0 else { throw SyscallError("fcntl(F_DUPFD_CLOEXEC)", .current) }
        temporaries.append(source)
      }
      posix_spawn_file_actions_adddup2(&actions, source, child)
    }
    // Everything else is closed in the child, whether or not its owner set FD_CLOEXEC.
    let firstUnused = (inheritedFDs.map(\.child).max() ?? 2) + 1
    _ = cuffd_spawn_closefrom(&actions, firstUnused)
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var defaultSignals = sigset_t()
    sigemptyset(&defaultSignals)
    sigaddset(&defaultSignals, SIGPIPE)
    sigaddset(&defaultSignals, SIGUSR1)
    posix_spawnattr_setsigdefault(&attributes, &defaultSignals)
    var emptyMask = sigset_t()
    sigemptyset(&emptyMask)
    posix_spawnattr_setsigmask(&attributes, &emptyMask)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))

    let argv = arguments.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    let envStrings = environment ?? currentEnvironment()
    let envp = envStrings.map { strdup($0) } + [nil]
    defer { envp.forEach { free($0) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, path, &actions, &attributes, argv, envp)
    guard rc == 0 else { throw SyscallError("posix_spawn", Errno(rc), detail: path) }
    return pid
  }

  public static func currentEnvironment() -> [String] {
    var result: [String] = []
    var p = environ
    while let entry = p.pointee {
      result.append(String(cString: entry))
      p += 1
    }
    return result
  }

  public enum Termination: Equatable, Sendable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)
    public var description: String {
      switch self {
      case .exited(let code): "exited with status \(code)"
      case .signaled(let signal): "killed by signal \(signal)"
      }
    }
  }

  /// Waits for `pid`; with `block: false` returns nil while it still runs.
  public static func wait(_ pid: pid_t, block: Bool = true) throws(SyscallError) -> Termination? {
    var status: Int32 = 0
    let rc = try retryingEINTR("waitpid", detail: "pid \(pid)") { waitpid(pid, &status, block ? 0 : WNOHANG) }
    if rc == 0 { return nil }
    if status & 0x7f == 0 { return .exited((status >> 8) & 0xff) }
    return .signaled(status & 0x7f)
  }

  /// Waits up to `timeoutMS` for `pid` to end, then SIGKILLs and reaps it.
  @discardableResult
  public static func waitOrKill(_ pid: pid_t, timeoutMS: Int) -> Termination? {
    let deadline = Clock.monotonicNanoseconds() + UInt64(timeoutMS) * 1_000_000
    while Clock.monotonicNanoseconds() < deadline {
      do {
        if let t = try wait(pid, block: false) { return t }
      } catch {
        // Not (or no longer) our child: nothing to wait for, and nothing to kill.
        return nil
      }
      Clock.sleep(milliseconds: 2)
    }
    kill(pid, SIGKILL)
    return try? wait(pid)
  }

  /// A pidfd for `pid` (pidfd_open), pollable for its exit.
  public static func pidFD(_ pid: pid_t) throws(SyscallError) -> FileDescriptor {
    FileDescriptor(rawValue: try retryingEINTR("pidfd_open", detail: "pid \(pid)") { cuffd_pidfd_open(pid) })
  }
}

extension FileDescriptor {
  /// pidfd_send_signal: signals exactly the process this pidfd was opened for, never a later
  /// process that reused its pid.
  public func sendSignal(_ signal: Int32) throws(SyscallError) {
    _ = try retryingEINTR("pidfd_send_signal", detail: "signal \(signal)") { cuffd_pidfd_send_signal(rawValue, signal) }
  }
}
