import Syscalls
import SystemdSupport
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// A datagram socket standing in for the service manager's NOTIFY_SOCKET.
struct NotifySocket {
  let path: String
  let fd: FileDescriptor

  init(path: String) throws {
    let raw = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    try #require(raw >= 0, "socket: \(Errno.current)")
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    try #require(bytes.count < MemoryLayout.size(ofValue: address.sun_path))
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
      for (index, byte) in bytes.enumerated() { raw[index] = byte }
    }
    let bound = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(raw, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    if bound != 0 {
      Glibc.close(raw)
      Issue.record("bind \(path): \(Errno.current)")
      throw SyscallError("bind", Errno.current, detail: path)
    }
    self.path = path
    self.fd = FileDescriptor(rawValue: raw)
  }

  func close() { fd.close() }

  /// Every datagram that arrives within `timeoutMS` of the previous one.
  func drain(timeoutMS: Int32 = 500) -> [String] {
    var messages: [String] = []
    while let ready = try? Poll.wait([(fd, .readable)], timeoutMS: timeoutMS), ready[0].contains(.readable) {
      guard let bytes = try? fd.read(upTo: 4096) else { break }
      messages.append(String(decoding: bytes, as: UTF8.self))
    }
    return messages
  }
}

@Suite("sd_notify and the watchdog", .serialized)
struct NotifyTests {
  static func environment(_ extra: [String]) -> [String] {
    SystemdEnvironment.forChild(ChildProcess.currentEnvironment()) + extra
  }

  @Test("READY, STATUS, EXTEND_TIMEOUT, WATCHDOG pings and STOPPING reach NOTIFY_SOCKET in order")
  func fullLifecycle() throws {
    let probe = try Tool.probePath()
    let directory = try TemporaryDirectory()
    defer { directory.remove() }
    let notify = try NotifySocket(path: directory.path + "/notify.sock")
    defer { notify.close() }
    let run = try Tool.run(
      probe, ["notify", "--status", "warming up", "--extend-ms", "1500", "--watchdog-pings", "2", "--stopping"],
      environment: Self.environment(["NOTIFY_SOCKET=\(notify.path)", "WATCHDOG_USEC=200000"]))
    #expect(run.succeeded, "\(run)")
    #expect(run.value("notify-enabled") == "1")
    #expect(run.value("watchdog-usec") == "200000", "\(run)")
    #expect(run.value("ready") == "sent", "\(run)")

    let messages = notify.drain()
    #expect(
      messages == [
        "READY=1\nSTATUS=warming up", "STATUS=warming up (again)", "EXTEND_TIMEOUT_USEC=1500000", "WATCHDOG=1",
        "WATCHDOG=1", "STOPPING=1\nSTATUS=probe stopping",
      ], "\(messages)")
  }

  @Test("WATCHDOG_PID of another process: no watchdog interval")
  func watchdogForAnotherProcess() throws {
    let probe = try Tool.probePath()
    let directory = try TemporaryDirectory()
    defer { directory.remove() }
    let notify = try NotifySocket(path: directory.path + "/notify.sock")
    defer { notify.close() }
    let run = try Tool.run(
      probe, ["notify"],
      environment: Self.environment(["NOTIFY_SOCKET=\(notify.path)", "WATCHDOG_USEC=200000", "WATCHDOG_PID=1"]))
    #expect(run.succeeded, "\(run)")
    #expect(run.value("watchdog-usec") == "none", "\(run)")
    #expect(notify.drain() == ["READY=1"])
  }

  @Test("no NOTIFY_SOCKET: every call is a no-op reporting .disabled")
  func disabled() throws {
    let probe = try Tool.probePath()
    let run = try Tool.run(
      probe, ["notify", "--status", "x", "--watchdog-pings", "1", "--stopping"], environment: Self.environment([]))
    #expect(run.succeeded, "\(run)")
    #expect(run.value("notify-enabled") == "0")
    #expect(run.value("watchdog-usec") == "none")
    for key in ["ready", "status", "watchdog", "stopping"] { #expect(run.value(key) == "disabled", "\(key): \(run)") }
  }

  @Test("a NOTIFY_SOCKET nobody listens on: .failed, not a crash")
  func failed() throws {
    let probe = try Tool.probePath()
    let run = try Tool.run(probe, ["notify"], environment: Self.environment(["NOTIFY_SOCKET=/nonexistent/notify.sock"]))
    #expect(run.succeeded, "\(run)")
    #expect(run.value("ready")?.hasPrefix("failed(") == true, "\(run)")
  }

  @Test("the child environment drops the supervisor-only variables and keeps the rest")
  func childEnvironment() {
    let environment = [
      "PATH=/usr/bin", "NOTIFY_SOCKET=/run/systemd/notify", "LISTEN_PID=7", "LISTEN_FDS=1", "LISTEN_FDNAMES=api",
      "WATCHDOG_USEC=30000000", "WATCHDOG_PID=7", "JOURNAL_STREAM=8:123", "INVOCATION_ID=abc", "NOTIFY_SOCKETS=x",
    ]
    #expect(SystemdEnvironment.forChild(environment) == ["PATH=/usr/bin", "INVOCATION_ID=abc", "NOTIFY_SOCKETS=x"])
  }
}
