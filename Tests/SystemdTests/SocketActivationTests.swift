import Syscalls
import SystemdSupport
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// `systemd-socket-activate` passes sockets exactly as a .socket unit does (LISTEN_PID,
/// LISTEN_FDS, LISTEN_FDNAMES, fds from 3). It waits for the first connection before it execs
/// the command, so every test connects first.
@Suite(
  "socket activation", .serialized,
  .enabled(if: Tool.find("systemd-socket-activate") != nil, "needs systemd-socket-activate (package systemd)"))
struct SocketActivationTests {
  /// A TCP port on 127.0.0.1 that was free a moment ago.
  static func freePort() throws -> UInt16 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    try #require(fd >= 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    let bound = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    try #require(bound == 0, "bind: \(Errno.current)")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    return UInt16(bigEndian: address.sin_port)
  }

  /// Connects to `path` once it exists (≤ 10 s), reads until EOF.
  static func connectAndRead(_ path: String) -> String {
    let deadline = Clock.monotonicNanoseconds() + 10_000_000_000
    while Clock.monotonicNanoseconds() < deadline {
      if FileSystem.exists(path), let fd = try? UnixSocket.connect(path: path) {
        defer { fd.close() }
        var bytes: [UInt8] = []
        while true {
          guard let ready = try? Poll.wait([(fd, [.readable, .hangup])], timeoutMS: 10_000), !ready[0].isEmpty,
            let chunk = try? fd.read(upTo: 4096), !chunk.isEmpty
          else { break }
          bytes += chunk
        }
        return String(decoding: bytes, as: UTF8.self)
      }
      Clock.sleep(milliseconds: 10)
    }
    return "<could not connect to \(path)>"
  }

  @Test("listeners() sees a Unix and a TCP socket with their names, and clears LISTEN_*")
  func unixAndTCP() throws {
    let activate = try #require(Tool.find("systemd-socket-activate"))
    let probe = try Tool.probePath()
    let directory = try TemporaryDirectory()
    defer { directory.remove() }
    let socketPath = directory.path + "/forkd.sock"
    let port = try Self.freePort()
    var reply = ""
    let run = try Tool.run(
      activate,
      ["-l", socketPath, "-l", "127.0.0.1:\(port)", "--fdname=api:admin", probe, "listeners", "--accept"],
      timeoutMS: 20_000
    ) { _ in reply = Self.connectAndRead(socketPath) }

    #expect(run.succeeded, "\(run)")
    #expect(reply == "probe-accepted\n", "the passed fd is the live listener: \(run)")
    #expect(run.value("count") == "2", "\(run)")
    #expect(run.lines.contains("listener fd=3 kind=unix path=\(socketPath) name=api listening=1 cloexec=1"), "\(run)")
    #expect(
      run.lines.contains("listener fd=4 kind=tcp address=127.0.0.1 port=\(port) name=admin listening=1 cloexec=1"),
      "\(run)")
    #expect(run.value("env") == "LISTEN_PID=<unset> LISTEN_FDS=<unset> LISTEN_FDNAMES=<unset>", "\(run)")
    #expect(run.value("again") == "0", "a second call finds nothing: the activation was consumed")
  }

  @Test("without --fdname the name is nil")
  func unnamed() throws {
    let activate = try #require(Tool.find("systemd-socket-activate"))
    let probe = try Tool.probePath()
    let directory = try TemporaryDirectory()
    defer { directory.remove() }
    let socketPath = directory.path + "/api.sock"
    let run = try Tool.run(activate, ["-l", socketPath, probe, "listeners", "--accept"]) { _ in
      _ = Self.connectAndRead(socketPath)
    }
    #expect(run.succeeded, "\(run)")
    #expect(
      run.lines.contains("listener fd=3 kind=unix path=\(socketPath) name=<none> listening=1 cloexec=1"), "\(run)")
  }

  @Test("not activated, or LISTEN_PID naming another process: no listeners, environment cleared")
  func notActivated() throws {
    let probe = try Tool.probePath()
    let base = SystemdEnvironment.forChild(ChildProcess.currentEnvironment())
    let plain = try Tool.run(probe, ["listeners"], environment: base)
    #expect(plain.succeeded, "\(plain)")
    #expect(plain.value("count") == "0")

    let foreign = try Tool.run(probe, ["listeners"], environment: base + ["LISTEN_PID=1", "LISTEN_FDS=1"])
    #expect(foreign.succeeded, "\(foreign)")
    #expect(foreign.value("count") == "0")
    #expect(foreign.value("env") == "LISTEN_PID=<unset> LISTEN_FDS=<unset> LISTEN_FDNAMES=<unset>", "\(foreign)")
  }

  @Test("describe() tells a Unix listener from a TCP one in-process")
  func describeInProcess() throws {
    let directory = try TemporaryDirectory()
    defer { directory.remove() }
    let listener = try UnixSocket.listen(path: directory.path + "/x.sock")
    defer { listener.close() }
    let described = SocketActivation.describe(listener, name: "x")
    #expect(described.kind == .unix(path: directory.path + "/x.sock"))
    #expect(described.isListening)
    #expect(described.name == "x")

    let (a, b) = try UnixSocket.pair()
    defer {
      a.close()
      b.close()
    }
    let unnamed = SocketActivation.describe(a)
    #expect(unnamed.kind == .unix(path: ""))
    #expect(!unnamed.isListening)

    let pipe = try FileDescriptor.pipe()
    defer {
      pipe.read.close()
      pipe.write.close()
    }
    #expect(SocketActivation.describe(pipe.read).kind == .other)
    #expect(SocketActivation.firstDescriptor == 3)
  }
}
