import CSystemd
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// sd_notify for a `Type=notify` service: readiness, status text, watchdog pings, stopping.
///
/// Every call is a no-op returning `.disabled` when NOTIFY_SOCKET is not set (not started by
/// systemd, or started by hand), so the supervisor calls them unconditionally.
public struct Notifier: Sendable {
  public enum Outcome: Sendable, Hashable {
    /// The service manager's socket took the datagram.
    case sent
    /// NOTIFY_SOCKET is not set: nothing to tell.
    case disabled
    /// Sending failed (socket gone, permission, …).
    case failed(Errno)
  }

  public init() {}

  /// True if NOTIFY_SOCKET is set.
  public var isEnabled: Bool { getenv("NOTIFY_SOCKET") != nil }

  /// READY=1 (startup finished: sockets are served), with an optional STATUS= line.
  @discardableResult
  public func ready(status: String? = nil) -> Outcome {
    send(["READY=1"] + (status.map { ["STATUS=" + Self.oneLine($0)] } ?? []))
  }

  /// STATUS=… (shown by `systemctl status forkd`).
  @discardableResult
  public func status(_ text: String) -> Outcome { send(["STATUS=" + Self.oneLine(text)]) }

  /// STOPPING=1: shutdown has begun (then drain children and exit).
  @discardableResult
  public func stopping(status: String? = nil) -> Outcome {
    send(["STOPPING=1"] + (status.map { ["STATUS=" + Self.oneLine($0)] } ?? []))
  }

  /// WATCHDOG=1: the keep-alive ping; send it every `watchdogInterval / 2`.
  @discardableResult
  public func watchdog() -> Outcome { send(["WATCHDOG=1"]) }

  /// EXTEND_TIMEOUT_USEC=…: asks for `duration` more before the start/stop timeout fires (e.g.
  /// while draining many children on stop). Each call restarts the extension from now.
  @discardableResult
  public func extendTimeout(by duration: Duration) -> Outcome {
    send(["EXTEND_TIMEOUT_USEC=\(Self.microseconds(duration))"])
  }

  /// Sends `assignments` ("NAME=value", one per line) as one notification.
  @discardableResult
  public func send(_ assignments: [String]) -> Outcome {
    let rc = csystemd_notify(0, assignments.joined(separator: "\n"))
    if rc > 0 { return .sent }
    if rc == 0 { return .disabled }
    return .failed(Errno(-rc))
  }

  /// The watchdog timeout the service manager enforces (WatchdogSec=, from WATCHDOG_USEC when
  /// WATCHDOG_PID is unset or is this process); nil when no watchdog is expected.
  public var watchdogInterval: Duration? {
    var usec: UInt64 = 0
    guard csystemd_watchdog_enabled(0, &usec) > 0, usec > 0 else { return nil }
    return .microseconds(Int64(clamping: usec))
  }

  /// How often to ping: half the watchdog interval, as sd_watchdog_enabled(3) recommends.
  public var watchdogPingInterval: Duration? { watchdogInterval.map { $0 / 2 } }

  static func oneLine(_ text: String) -> String {
    String(text.map { $0 == "\n" || $0 == "\r" ? " " : $0 })
  }

  static func microseconds(_ duration: Duration) -> UInt64 {
    let (seconds, attoseconds) = duration.components
    guard seconds >= 0 else { return 0 }
    return UInt64(seconds) &* 1_000_000 &+ UInt64(attoseconds / 1_000_000_000_000)
  }
}

/// The systemd environment a service receives that must not reach its children.
public enum SystemdEnvironment {
  /// Meant for the supervisor alone: a child with NOTIFY_SOCKET could mark the service ready or
  /// feed the watchdog; LISTEN_* would make it take the supervisor's sockets; JOURNAL_STREAM
  /// describes the supervisor's own stderr, not the child's.
  public static let supervisorOnlyVariables: Set<String> = [
    "NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "WATCHDOG_PID", "WATCHDOG_USEC", "JOURNAL_STREAM",
  ]

  /// `environment` ("NAME=value" entries, e.g. `ChildProcess.currentEnvironment()`) without the
  /// supervisor-only variables: the environment to give forkd-vmm and forkd-pager.
  public static func forChild(_ environment: [String]) -> [String] {
    environment.filter { entry in
      let name =
        entry.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
      return !supervisorOnlyVariables.contains(name)
    }
  }

  /// INVOCATION_ID of this run of the service (systemd sets it; journald records it as
  /// _SYSTEMD_INVOCATION_ID), or nil outside systemd.
  public static var invocationID: String? { getenv("INVOCATION_ID").map { String(cString: $0) } }

  /// True if this machine was booted with systemd as PID 1 (sd_booted).
  public static var isSystemdBooted: Bool { csystemd_booted() > 0 }
}
