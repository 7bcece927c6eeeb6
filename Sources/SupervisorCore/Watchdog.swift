import ForkdHTTP
import Logging
import Synchronization
import Syscalls

/// A closure run every `intervalMS` on its own thread until `stop`.
final class PeriodicThread: Sendable {
  private let wake: EventFD
  private let thread: OSThread

  init(name: String, intervalMS: Int, _ tick: @escaping @Sendable () -> Void) throws(SyscallError) {
    let wake = try EventFD()
    self.wake = wake
    do {
      thread = try OSThread.start(name: name) {
        // Readable only once stop() signalled: then the loop ends.
        while (try? Poll.wait([(wake.fd, .readable)], timeoutMS: Int32(clamping: intervalMS)))?.first?.isEmpty ?? true {
          tick()
        }
      }
    } catch {
      wake.fd.close()
      throw error
    }
  }

  /// Ends the loop (a tick in progress finishes first) and joins the thread.
  func stop() {
    wake.signal()
    thread.join()
    wake.fd.close()
  }
}

/// The systemd watchdog fed honestly: WATCHDOG=1 only after a GET /healthz went through every
/// event loop, the HTTP pipeline and the supervisor's handler (which takes the registry locks)
/// and came back 200. A hung loop, a deadlocked registry or a starved executor stops the pings,
/// and systemd restarts the daemon after WatchdogSec.
enum Watchdog {
  static func start(server: HTTPServer, interval: Duration, hooks: ServiceHooks, logger: Logger) throws(SyscallError)
    -> PeriodicThread
  {
    let intervalMS = max(milliseconds(interval), 200)
    // Ping at half the interval (sd_watchdog_enabled(3)); a probe may take a quarter of it.
    let probeTimeoutMS = intervalMS / 4
    let failing = Mutex(false)
    return try PeriodicThread(name: "watchdog", intervalMS: intervalMS / 2) {
      let failure = server.probe(path: "/healthz", timeoutMS: probeTimeoutMS)
      let wasFailing = failing.withLock { state in
        defer { state = failure != nil }
        return state
      }
      if let failure {
        if !wasFailing { logger.error("watchdog probe failed, not feeding the watchdog: \(failure)") }
        return
      }
      if wasFailing { logger.notice("watchdog probe answers again") }
      hooks.watchdog()
    }
  }

  /// While the drain runs: every `interval`, EXTEND_TIMEOUT_USEC for three more intervals, so a
  /// drain that is still working is not SIGKILLed by TimeoutStopSec. Extensions stop once
  /// `limit` has passed: a drain that hangs for good then ends by the unit's timeout (each
  /// extension counts from when it is sent, so at most three intervals after the last one).
  static func extendWhileDraining(interval: Duration, limit: Duration, hooks: ServiceHooks) -> PeriodicThread? {
    let started = Clock.monotonicNanoseconds()
    let limitNS = UInt64(clamping: milliseconds(limit)) &* 1_000_000
    return try? PeriodicThread(name: "drain-extend", intervalMS: max(milliseconds(interval), 100)) {
      guard Clock.monotonicNanoseconds() - started < limitNS else { return }
      hooks.extendTimeout(interval * 3)
    }
  }

  static func milliseconds(_ duration: Duration) -> Int {
    let (seconds, attoseconds) = duration.components
    let (ms, overflow) = seconds.multipliedReportingOverflow(by: 1000)
    return overflow ? Int.max : Int(clamping: ms + attoseconds / 1_000_000_000_000_000)
  }
}
