import ForkdClient
import Protocol
import Syscalls
import SystemdSupport
import Testing
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

extension NotifySocket {
  /// Every datagram that arrives in the next `milliseconds` (a fixed window, however busy).
  func collect(forMS milliseconds: Int) -> [String] {
    let deadline = Clock.monotonicNanoseconds() + UInt64(milliseconds) * 1_000_000
    var messages: [String] = []
    while true {
      let now = Clock.monotonicNanoseconds()
      guard now < deadline else { return messages }
      let waitMS = Int32(clamping: (deadline - now) / 1_000_000 + 1)
      guard let ready = try? Poll.wait([(fd, .readable)], timeoutMS: waitMS), ready[0].contains(.readable) else {
        continue
      }
      guard let bytes = try? fd.read(upTo: 4096) else { return messages }
      messages.append(String(decoding: bytes, as: UTF8.self))
    }
  }
}

/// Issue 13 item 4: the systemd contract kept honestly. WATCHDOG=1 only after a probe through
/// the real request path answered; EXTEND_TIMEOUT_USEC while a drain runs long; and (item 5)
/// a socket-activated TCP listener without a token refuses to start.
@Suite("forkd-supervisor: watchdog, drain and activated TCP", .serialized)
struct WatchdogTests {
  /// forkd-supervisor with a test-owned NOTIFY_SOCKET and `extraEnvironment`.
  static func start(_ directory: TemporaryDirectory, notify: NotifySocket, extraEnvironment: [String]) throws -> pid_t {
    let log = try FileDescriptor.open(directory.path + "/log", [.writeOnly, .create, .append])
    defer { log.close() }
    let environment =
      SystemdEnvironment.forChild(ChildProcess.currentEnvironment()) + ["NOTIFY_SOCKET=" + notify.path]
      + extraEnvironment
    return try ChildProcess.spawn(
      path: try ForkdBinaries.path(of: "forkd-supervisor"),
      arguments: [
        "forkd-supervisor", "--state-dir", directory.path + "/state", "--run-dir", directory.path + "/run", "--socket",
        directory.path + "/forkd.sock", "--backend", "uffd",
      ], environment: environment, stdoutFD: log, stderrFD: log)
  }

  /// Whether a TCP connection to 127.0.0.1:`port` is accepted (then closed at once).
  static func connects(port: UInt16) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
    return withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
      }
    }
  }

  static func count(_ assignment: String, in messages: [String]) -> Int {
    messages.reduce(0) { $0 + $1.split(separator: "\n").filter { $0 == assignment }.count }
  }

  @Test("WATCHDOG=1 follows a probe through the event loops and handler; a hung event loop stops it")
  func watchdogFollowsTheRequestPath() throws {
    let directory = try TemporaryDirectory("forkd-watchdog")
    defer { directory.remove() }
    let notify = try NotifySocket(path: directory.path + "/notify.sock")
    defer { notify.close() }
    // WatchdogSec=1s: a probe and a ping every 500 ms.
    let pid = try Self.start(
      directory, notify: notify, extraEnvironment: ["WATCHDOG_USEC=1000000", "FORKD_TEST_SEAMS=1"])
    defer { _ = ChildProcess.waitOrKill(pid, timeoutMS: 0) }
    let client = APIClient(endpoint: .unix(directory.path + "/forkd.sock"), timeoutMS: 10_000)
    #expect(SupervisorUnderSystemdTests.waitHealthy(client), "\(lastLines(of: directory.path + "/log"))")

    let healthy = notify.collect(forMS: 3000)
    #expect(Self.count("WATCHDOG=1", in: healthy) >= 2, "a serving daemon feeds the watchdog: \(healthy)")

    // Every event loop blocks (debug-build seam): no probe can be answered any more.
    #expect(try client.request("POST", "/__test/hang-event-loops").status == 202)
    let hung = notify.collect(forMS: 4000)
    // One probe may have been answered just before the loops stopped; after it, silence.
    #expect(Self.count("WATCHDOG=1", in: hung) <= 1, "a hung daemon must not feed the watchdog: \(hung)")
    kill(pid, SIGKILL)
  }

  @Test("SIGTERM with a child whose forkd-vmm is stopped: the long drain sends EXTEND_TIMEOUT_USEC, then exits 0")
  func longDrainExtendsTheTimeout() throws {
    let directory = try TemporaryDirectory("forkd-drain")
    defer { directory.remove() }
    let notify = try NotifySocket(path: directory.path + "/notify.sock")
    defer { notify.close() }
    let pid = try Self.start(directory, notify: notify, extraEnvironment: [])
    defer { _ = ChildProcess.waitOrKill(pid, timeoutMS: 0) }
    let client = APIClient(endpoint: .unix(directory.path + "/forkd.sock"), timeoutMS: 60_000)
    #expect(SupervisorUnderSystemdTests.waitHealthy(client), "\(lastLines(of: directory.path + "/log"))")
    #expect(
      try client.request("POST", "/v1/snapshots", body: .object(["tag": .string("base"), "memory_mib": .integer(32)]))
        .status == 201)
    let spawned = try client.request("POST", "/v1/sandboxes", body: .object(["snapshot_tag": .string("base")]))
    let vmm = try #require(spawned.json?.arrayValue?.first?["pid"]?.int64Value.flatMap { pid_t(exactly: $0) })
    // A forkd-vmm that answers nothing: stopping it takes the stop timeout, then SIGKILL.
    #expect(kill(vmm, SIGSTOP) == 0)
    _ = notify.collect(forMS: 200)
    kill(pid, SIGTERM)
    #expect(ChildProcess.waitOrKill(pid, timeoutMS: 60_000) == .exited(0), "\(lastLines(of: directory.path + "/log"))")
    let messages = notify.collect(forMS: 200)
    #expect(messages.contains { $0.contains("STOPPING=1") }, "\(messages)")
    #expect(
      messages.contains { $0.contains("EXTEND_TIMEOUT_USEC=15000000") }, "a long drain asks for more time: \(messages)")
    #expect(kill(vmm, 0) != 0, "the stopped forkd-vmm was ended by the drain")
  }

  @Test("socket-activated TCP on 0.0.0.0 or loopback without a token refuses to start; with the token it serves")
  func activatedTCPNeedsToken() throws {
    let activate = try #require(Tool.find("systemd-socket-activate"), "systemd-socket-activate is part of systemd")
    let supervisorPath = try ForkdBinaries.path(of: "forkd-supervisor")
    for (address, token, expectStart) in [
      ("0.0.0.0", nil, false), ("127.0.0.1", nil, false), ("0.0.0.0", "t0ken", true),
    ] as [(String, String?, Bool)] {
      let directory = try TemporaryDirectory("forkd-activate-tcp")
      defer { directory.remove() }
      let port = UInt16.random(in: 20000...40000)
      var environment = SystemdEnvironment.forChild(ChildProcess.currentEnvironment()).filter {
        !$0.hasPrefix("FORKD_TOKEN=")
      }
      var passed: [String] = []
      if let token {
        environment.append("FORKD_TOKEN=\(token)")
        passed = ["-E", "FORKD_TOKEN"]
      }
      let arguments =
        ["-l", "\(address):\(port)"] + passed + [
          supervisorPath, "--state-dir", directory.path + "/state", "--run-dir", directory.path + "/run", "--socket",
          directory.path + "/forkd.sock",
        ]
      if expectStart {
        let log = try FileDescriptor.open(directory.path + "/log", [.writeOnly, .create])
        let pid = try ChildProcess.spawn(
          path: activate, arguments: [activate] + arguments, environment: environment, stdoutFD: log, stderrFD: log)
        log.close()
        defer { _ = ChildProcess.waitOrKill(pid, timeoutMS: 100) }
        let tcp = APIClient(endpoint: .tcp(host: "127.0.0.1", port: port), timeoutMS: 10_000)
        #expect(SupervisorUnderSystemdTests.waitHealthy(tcp), "\(lastLines(of: directory.path + "/log"))")
        #expect(try tcp.request("GET", "/v1/sandboxes").status == 401)
        #expect(
          try tcp.request("GET", "/v1/sandboxes", headers: ["Authorization": "Bearer \(token ?? "")"]).status == 200)
        kill(pid, SIGTERM)
        #expect(ChildProcess.waitOrKill(pid, timeoutMS: 20_000) == .exited(0))
      } else {
        // systemd-socket-activate starts the service on the first connection.
        let run = try Tool.run(activate, arguments, environment: environment, timeoutMS: 20_000) { _ in
          for _ in 0..<200 where !Self.connects(port: port) { Clock.sleep(milliseconds: 25) }
        }
        #expect(run.termination == .exited(1), "\(address): \(run)")
        #expect(run.output.contains("without a token"), "\(address): \(run)")
      }
    }
  }
}
