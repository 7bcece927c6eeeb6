import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// The exit status of one spawned process, collected once (waitpid) and remembered.
final class Reaper: @unchecked Sendable {
  let pid: pid_t
  private(set) var termination: ChildProcess.Termination?

  init(pid: pid_t) { self.pid = pid }

  /// Whether the process has ended (reaps it if so, without blocking).
  var hasExited: Bool {
    if termination != nil { return true }
    if let t = try? ChildProcess.wait(pid, block: false) {
      termination = t
      return true
    }
    return false
  }

  /// Waits up to `timeoutMS`, then SIGKILLs and reaps.
  @discardableResult
  func waitOrKill(timeoutMS: Int) -> ChildProcess.Termination? {
    if termination == nil { termination = ChildProcess.waitOrKill(pid, timeoutMS: timeoutMS) }
    return termination
  }

  /// SIGKILLs and reaps a process nobody waited for (an owner going away).
  func killIfRunning() {
    if termination == nil {
      _ = kill(pid, SIGKILL)
      termination = try? ChildProcess.wait(pid)
    }
  }
}
