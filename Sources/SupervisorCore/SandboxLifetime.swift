import Dispatch
import Protocol
import Syscalls

/// When a sandbox spawned with `timeout_secs` is deleted.
struct SandboxDeadline: Sendable {
  /// CLOCK_MONOTONIC: wall-clock steps do not move it.
  var monotonicNanoseconds: UInt64
  /// What the API shows (`expires_at_unix`).
  var unixSeconds: Int64
  /// The monitor has started deleting it.
  var expiring = false

  init(fromNowSeconds seconds: UInt64) {
    // seconds ≤ SandboxTimeout.maxSeconds: the products stay far from overflow.
    monotonicNanoseconds = Clock.monotonicNanoseconds() + seconds * 1_000_000_000
    unixSeconds = Clock.unixSeconds() + Int64(seconds)
  }
}

extension SandboxManager {
  /// Sets (or replaces) the deadline of each of `ids`: `timeout_secs` from now.
  func setTimeout(_ ids: [String], seconds: UInt64) {
    let all = ids.compactMap { try? sandbox($0) }
    for s in all { s.deadline.withLock { $0 = SandboxDeadline(fromNowSeconds: seconds) } }
    monitorWake.signal()
  }

  /// POST /v1/sandboxes/:id/timeout: the child now expires `seconds` from now.
  public func extendTimeout(_ id: String, seconds: UInt64) throws(APIError) -> SandboxInfo {
    let s = try sandbox(id)
    try s.deadline.withLock { (d) throws(APIError) in
      if d?.expiring == true { throw .conflict("sandbox \(id) has expired and is being deleted") }
      d = SandboxDeadline(fromNowSeconds: seconds)
    }
    monitorWake.signal()
    return s.info
  }

  /// Deletes (in the background) every sandbox whose deadline has passed; returns how long the
  /// monitor may sleep before the next deadline, at most `maxWaitMS`. Runs on the monitor thread.
  func expireDue(maxWaitMS: Int32) -> Int32 {
    let now = Clock.monotonicNanoseconds()
    var wait = UInt64(maxWaitMS) * 1_000_000
    var due: [Sandbox] = []
    for s in allSandboxes() {
      s.deadline.withLock { d in
        guard let deadline = d, !deadline.expiring else { return }
        if deadline.monotonicNanoseconds <= now {
          d?.expiring = true
          due.append(s)
        } else {
          wait = min(wait, deadline.monotonicNanoseconds - now)
        }
      }
    }
    for s in due {
      let log = logger(for: s)
      DispatchQueue.global().async { [self] in
        // Stop first: an agent call in flight then fails at once instead of holding the sandbox.
        _ = s.child.stop()
        do {
          try delete(s.id)
          log.info("sandbox expired and was deleted")
        } catch {
          log.info("expired sandbox was already gone: \(error)")
        }
      }
    }
    // Round up: waking a little late is fine, spinning on a 0 ms timeout is not.
    return Int32(truncatingIfNeeded: (wait + 999_999) / 1_000_000)
  }
}
