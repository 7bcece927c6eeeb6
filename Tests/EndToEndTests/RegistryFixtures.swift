import Protocol
import Synchronization
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// Debian's docker-registry (distribution 2.8) started for one test on 127.0.0.1 with an
/// ephemeral port, filesystem storage in the scratch directory; stopped by its PID.
final class TestRegistry {
  static let binary = "/usr/bin/docker-registry"
  let pid: pid_t
  let port: UInt16
  let storage: String
  var host: String { "127.0.0.1:\(port)" }

  /// `htpasswd`: lines `user:bcrypt-hash`; the registry then asks for HTTP Basic auth.
  init(in scratch: Scratch, name: String = "registry", htpasswd: String? = nil) throws {
    guard FileSystem.exists(TestRegistry.binary) else {
      throw SyscallError(
        "docker-registry", .invalid, detail: "\(TestRegistry.binary) missing: run scripts/install-deps")
    }
    storage = scratch.path + "/\(name)-storage"
    let config = scratch.path + "/\(name).yml"
    var auth = ""
    if let htpasswd {
      try FileSystem.writeAtomically(scratch.path + "/\(name).htpasswd", Array(htpasswd.utf8))
      auth = "auth:\n  htpasswd:\n    realm: forkd-test\n    path: \(scratch.path)/\(name).htpasswd\n"
    }
    let log = scratch.path + "/\(name).log"
    try FileSystem.writeAtomically(
      config,
      Array(
        """
        version: 0.1
        log:
          level: info
        storage:
          filesystem:
            rootdirectory: \(storage)
          delete:
            enabled: true
        http:
          addr: 127.0.0.1:0
          secret: forkd-test

        """.utf8) + Array(auth.utf8))
    let fd = try FileDescriptor.open(log, [.writeOnly, .create, .append])
    defer { fd.close() }
    pid = try ChildProcess.spawn(
      path: TestRegistry.binary, arguments: ["docker-registry", "serve", config], stdoutFD: fd, stderrFD: fd)
    let deadline = Clock.monotonicNanoseconds() + 20_000_000_000
    var found: UInt16?
    while found == nil {
      let text = String(decoding: (try? FileSystem.readFile(log)) ?? [], as: UTF8.self)
      if let range = text.range(of: "listening on 127.0.0.1:") {
        found = UInt16(text[range.upperBound...].prefix { $0.isNumber })
      }
      guard found != nil || Clock.monotonicNanoseconds() < deadline else {
        kill(pid, SIGKILL)
        _ = ChildProcess.waitOrKill(pid, timeoutMS: 5000)
        throw SyscallError("docker-registry", .invalid, detail: "did not start: \(text)")
      }
      if found == nil { Clock.sleep(milliseconds: 20) }
    }
    port = found ?? 0
  }

  /// The file the registry keeps a blob's bytes in.
  func blobPath(_ digest: String) -> String {
    let hex = String(digest.dropFirst("sha256:".count))
    return storage + "/docker/registry/v2/blobs/sha256/\(hex.prefix(2))/\(hex)/data"
  }

  func stop() {
    kill(pid, SIGTERM)
    _ = ChildProcess.waitOrKill(pid, timeoutMS: 10_000)
  }

  deinit { if kill(pid, 0) == 0 { stop() } }
}

/// A TCP proxy on 127.0.0.1 (ephemeral port) in front of `upstream` that drops every
/// connection after it has passed `cutAfter` bytes from the upstream: a registry whose
/// connection dies mid-blob.
final class CuttingProxy: @unchecked Sendable {
  let port: UInt16
  private let listener: Int32
  private let upstream: UInt16
  private let cutAfter: Int
  private let stopped = Mutex(false)
  private var acceptThread: OSThread?
  let cuts = Mutex(0)

  init(upstream: UInt16, cutAfter: Int) throws {
    self.upstream = upstream
    self.cutAfter = cutAfter
    (listener, port) = try listenOnLoopback()
    acceptThread = try OSThread.start(name: "proxy-accept") { [self] in acceptLoop() }
  }

  static func loopback(port: UInt16) -> sockaddr_in {
    var a = sockaddr_in()
    a.sin_family = sa_family_t(AF_INET)
    a.sin_port = port.bigEndian
    a.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
    return a
  }

  private func acceptLoop() {
    while !stopped.withLock({ $0 }) {
      let client = accept(listener, nil, nil)
      guard client >= 0 else { return }
      let server = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
      var address = CuttingProxy.loopback(port: upstream)
      let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
          connect(server, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
      }
      guard connected == 0 else {
        close(client)
        close(server)
        continue
      }
      let limit = cutAfter
      let up = try? OSThread.start(name: "proxy-up") {
        CuttingProxy.pump(from: client, to: server, limit: nil, cut: nil)
      }
      let down = try? OSThread.start(name: "proxy-down") { [self] in
        CuttingProxy.pump(from: server, to: client, limit: limit) { self.cuts.withLock { $0 += 1 } }
        shutdown(client, Int32(SHUT_RDWR))
        shutdown(server, Int32(SHUT_RDWR))
        up?.join()
        close(client)
        close(server)
      }
      down?.detach()
    }
  }

  private static func pump(from: Int32, to: Int32, limit: Int?, cut: (() -> Void)?) {
    var buffer = [UInt8](repeating: 0, count: 65536)
    var passed = 0
    while true {
      let want = limit.map { min(buffer.count, $0 - passed) } ?? buffer.count
      if want <= 0 {
        cut?()
        return
      }
      let n = buffer.withUnsafeMutableBytes { read(from, $0.baseAddress, want) }
      guard n > 0 else {
        shutdown(to, Int32(SHUT_WR))
        return
      }
      var sent = 0
      while sent < n {
        let m = buffer.withUnsafeBytes { write(to, $0.baseAddress! + sent, n - sent) }
        guard m > 0 else { return }
        sent += m
      }
      passed += n
    }
  }

  func stop() {
    stopped.withLock { $0 = true }
    shutdown(listener, Int32(SHUT_RDWR))
    close(listener)
    acceptThread?.join()
  }
}

/// Runs a program to completion; its exit status and stdout.
func runProgram(_ path: String, _ arguments: [String], scratch: Scratch) throws -> (
  status: ChildProcess.Termination?, output: String
) {
  let outPath = scratch.path + "/run-\(UInt32.random(in: 0...UInt32.max)).out"
  let out = try FileDescriptor.open(outPath, [.writeOnly, .create])
  let pid = try ChildProcess.spawn(path: path, arguments: arguments, stdoutFD: out, stderrFD: out)
  out.close()
  let status = ChildProcess.waitOrKill(pid, timeoutMS: 120_000)
  return (status, String(decoding: try FileSystem.readFile(outPath), as: UTF8.self))
}

/// A TCP proxy on 127.0.0.1 (ephemeral port) in front of `upstream` that holds back requests for
/// chosen blobs: held until `release()`, or dropped (connection closed) after `fail()`. It reads
/// the request line from what the client sends; curl writes a request in one piece.
final class HoldingProxy: @unchecked Sendable {
  enum Mode { case hold, release, fail }
  let port: UInt16
  private let listener: Int32
  private let upstream: UInt16
  private let lock = ConditionLock()
  private var mode = Mode.hold
  private var held: Set<String>
  private var stopped = false
  private(set) var heldRequests = 0
  private var acceptThread: OSThread?

  init(upstream: UInt16, holding digests: Set<String>) throws {
    self.upstream = upstream
    held = digests
    (listener, port) = try listenOnLoopback()
    acceptThread = try OSThread.start(name: "hold-accept") { [self] in acceptLoop() }
  }

  func release() {
    lock.withLock { mode = .release }
    lock.broadcast()
  }

  func fail() {
    lock.withLock { mode = .fail }
    lock.broadcast()
  }

  var holding: Int { lock.withLock { heldRequests } }

  private func acceptLoop() {
    while true {
      let client = accept(listener, nil, nil)
      guard client >= 0 else { return }
      let server = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
      var address = CuttingProxy.loopback(port: upstream)
      let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
          connect(server, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
      }
      guard connected == 0 else {
        close(client)
        close(server)
        continue
      }
      let down = try? OSThread.start(name: "hold-down") { HoldingProxy.copy(from: server, to: client) }
      // Detached: it joins its partner and closes both ends itself (TSan reports an unjoined thread).
      let up = try? OSThread.start(name: "hold-up") { [self] in
        upLoop(client: client, server: server)
        shutdown(client, Int32(SHUT_RDWR))
        shutdown(server, Int32(SHUT_RDWR))
        down?.join()
        close(client)
        close(server)
      }
      up?.detach()
    }
  }

  /// Client to upstream; a request for a held blob waits for release, or ends the connection.
  private func upLoop(client: Int32, server: Int32) {
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
      let n = buffer.withUnsafeMutableBytes { read(client, $0.baseAddress, $0.count) }
      guard n > 0 else { return }
      let text = String(decoding: buffer[0..<n], as: UTF8.self)
      let isHeld = lock.withLock { held.contains { text.contains("/blobs/" + $0) } }
      if isHeld {
        let proceed = lock.withLock { () -> Bool in
          heldRequests += 1
          while mode == .hold && !stopped { lock.wait() }
          return mode == .release
        }
        guard proceed else { return }
      }
      var sent = 0
      while sent < n {
        let m = buffer.withUnsafeBytes { write(server, $0.baseAddress! + sent, n - sent) }
        guard m > 0 else { return }
        sent += m
      }
    }
  }

  private static func copy(from: Int32, to: Int32) {
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
      let n = buffer.withUnsafeMutableBytes { read(from, $0.baseAddress, $0.count) }
      guard n > 0 else {
        shutdown(to, Int32(SHUT_WR))
        return
      }
      var sent = 0
      while sent < n {
        let m = buffer.withUnsafeBytes { write(to, $0.baseAddress! + sent, n - sent) }
        guard m > 0 else { return }
        sent += m
      }
    }
  }

  func stop() {
    lock.withLock {
      stopped = true
      mode = .fail
    }
    lock.broadcast()
    shutdown(listener, Int32(SHUT_RDWR))
    close(listener)
    acceptThread?.join()
  }
}

/// A TCP listener on 127.0.0.1 at an ephemeral port, for the test proxies: its descriptor and port.
func listenOnLoopback() throws -> (fd: Int32, port: UInt16) {
  let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
  var address = CuttingProxy.loopback(port: 0)
  let bound = withUnsafePointer(to: &address) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
  }
  guard fd >= 0, bound == 0, Glibc.listen(fd, 16) == 0 else { throw SyscallError("proxy", .current) }
  var length = socklen_t(MemoryLayout<sockaddr_in>.size)
  _ = withUnsafeMutablePointer(to: &address) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
  }
  return (fd, UInt16(bigEndian: address.sin_port))
}
