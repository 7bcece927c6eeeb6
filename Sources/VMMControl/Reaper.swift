import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// The exit status of one spawned process, collected once (waitpid) and remembered. Safe to use
/// from several threads (the supervisor's monitor and an API request may both ask): only one of
/// them ever calls waitpid for the pid, so nobody waits on a pid another thread already reaped.
final class Reaper: @unchecked Sendable {
  let pid: pid_t
  private let lock = ConditionLock()
  private var collected: ChildProcess.Termination?

  init(pid: pid_t) { self.pid = pid }

  var termination: ChildProcess.Termination? { lock.withLock { collected } }

  /// Whether the process has ended (reaps it if so, without blocking).
  var hasExited: Bool { poll() != nil }

  /// Waits up to `timeoutMS`, then SIGKILLs and reaps.
  @discardableResult
  func waitOrKill(timeoutMS: Int) -> ChildProcess.Termination? {
    let deadline = Clock.monotonicNanoseconds() + UInt64(max(timeoutMS, 0)) * 1_000_000
    while Clock.monotonicNanoseconds() < deadline {
      if let t = poll() { return t }
      Clock.sleep(milliseconds: 2)
    }
    return killIfRunning()
  }

  /// Waits up to `timeoutMS` for the process to end by itself, without killing it; nil if it runs on.
  func exited(withinMS timeoutMS: Int) -> ChildProcess.Termination? {
    let deadline = Clock.monotonicNanoseconds() + UInt64(max(timeoutMS, 0)) * 1_000_000
    while true {
      if let t = poll() { return t }
      guard Clock.monotonicNanoseconds() < deadline else { return nil }
      Clock.sleep(milliseconds: 5)
    }
  }

  /// SIGKILLs and reaps a process nobody waited for (an owner going away).
  @discardableResult
  func killIfRunning() -> ChildProcess.Termination? {
    lock.withLock {
      if collected == nil {
        _ = kill(pid, SIGKILL)
        collected = reap(block: true)
      }
      return collected
    }
  }

  private func poll() -> ChildProcess.Termination? {
    lock.withLock {
      if collected == nil { collected = reap(block: false) }
      return collected
    }
  }

  /// waitpid; a pid that is no longer our child (ECHILD) counts as ended rather than running.
  private func reap(block: Bool) -> ChildProcess.Termination? {
    do {
      return try ChildProcess.wait(pid, block: block)
    } catch {
      return error.errno == .noChild ? .exited(-1) : nil
    }
  }
}
