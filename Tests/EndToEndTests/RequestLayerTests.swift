import Protocol
import Syscalls
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// A raw TCP client for requests no well-behaved client sends: half requests, lying lengths,
/// oversized headers, connections by the thousand.
struct RawConnection {
  let fd: Int32

  /// Connects to 127.0.0.1:`port`; reads give up after `receiveTimeoutMS` (a hang fails the test).
  init(port: UInt16, receiveTimeoutMS: Int = 30_000) throws {
    fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw SyscallError("socket", .current) }
    var timeout = timeval(tv_sec: receiveTimeoutMS / 1000, tv_usec: (receiveTimeoutMS % 1000) * 1000)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
    let result = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
      }
    }
    guard result == 0 else {
      let error = SyscallError("connect", .current)
      _ = Glibc.close(fd)
      throw error
    }
  }

  func send(_ text: String) {
    let bytes = Array(text.utf8)
    _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
  }

  /// Everything until the server closes; nil if the receive timeout hit first (the server held
  /// the connection open). A reset after the answer counts as closed.
  func readUntilClosed() -> String? {
    var all: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
      let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
      if n > 0 {
        all += buffer[0..<n]
        continue
      }
      if n == 0 || errno == ECONNRESET { return String(decoding: all, as: UTF8.self) }
      if errno == EINTR { continue }
      return nil
    }
  }

  func close() { _ = Glibc.close(fd) }
}

/// The status code of a raw response ("HTTP/1.1 413 …"), nil if there is none.
func statusCode(_ response: String) -> Int? {
  let parts = response.split(separator: " ", maxSplits: 2)
  guard parts.count >= 2, parts[0].hasPrefix("HTTP/1.") else { return nil }
  return Int(parts[1])
}

@Suite("Request layer under abuse", .serialized)
struct RequestLayerTests {
  @Test("query strings like ?= and ?&, a Content-Length of 99999999999 (413 before any body), a 20 KiB header (431)")
  func shapes() throws {
    // Long body and header deadlines: an answer that waited for them would hit the read timeout.
    let sup = try TestSupervisor(
      "shapes", extra: ["--header-timeout-ms", "600000", "--body-timeout-ms", "600000", "--idle-timeout-ms", "600000"])
    defer { sup.stop() }
    for query in ["?=", "?&", "?=&=", "?a=b=c&&", "?==", "?%", "?&=x"] {
      let r = try sup.unix.request("GET", "/healthz" + query)
      #expect(r.status == 200, "/healthz\(query): \(r.text)")
    }
    #expect(try sup.unix.request("DELETE", "/v1/snapshots/nope?=").status == 404)

    let huge = try RawConnection(port: sup.tcpPort)
    defer { huge.close() }
    huge.send("POST /v1/sandboxes HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n{")
    let answer = try #require(huge.readUntilClosed(), "no answer: the server waited for the body")
    #expect(statusCode(answer) == 413, "\(answer)")
    #expect(answer.contains("99999999999") && answer.contains("1048576"), "\(answer)")

    let chunked = try RawConnection(port: sup.tcpPort)
    defer { chunked.close() }
    chunked.send("POST /v1/sandboxes HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunked.send("200000\r\n" + String(repeating: "a", count: 0x200000) + "\r\n")
    let chunkedAnswer = try #require(chunked.readUntilClosed(), "no answer to an endless chunked body")
    #expect(statusCode(chunkedAnswer) == 413, "\(chunkedAnswer.prefix(300))")

    let header = try RawConnection(port: sup.tcpPort)
    defer { header.close() }
    header.send("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: \(String(repeating: "b", count: 20 << 10))\r\n\r\n")
    let headerAnswer = try #require(header.readUntilClosed(), "no answer to a 20 KiB header")
    #expect(statusCode(headerAnswer) == 431, "\(headerAnswer)")

    let garbage = try RawConnection(port: sup.tcpPort)
    defer { garbage.close() }
    garbage.send("\u{01}\u{02} NOT HTTP\r\n\r\n")
    let garbageAnswer = try #require(garbage.readUntilClosed())
    #expect(statusCode(garbageAnswer) == 400, "\(garbageAnswer)")
    // Every answer the HTTP layer writes itself carries an {"error": …} JSON body.
    for raw in [answer, chunkedAnswer, headerAnswer, garbageAnswer] {
      let body = raw.components(separatedBy: "\r\n\r\n").dropFirst().joined(separator: "\r\n\r\n")
      let parsed = try? JSONValue.parse(Array(body.utf8), source: "answer")
      #expect(parsed?["error"]?.stringValue?.isEmpty == false, "\(raw.prefix(400))")
    }

    #expect(processExists(sup.pid))
    #expect(try sup.unix.request("GET", "/healthz").status == 200)
    let audit = String(decoding: try FileSystem.readFile(sup.scratch.path + "/state/audit.jsonl"), as: UTF8.self)
    #expect(audit.contains(#""query":"a=b=c&&""#), "the audit log records the query string")
  }

  @Test("a slow-loris header is cut off (408, closed); an idle kept-alive connection is closed")
  func slowLoris() throws {
    let sup = try TestSupervisor("loris", extra: ["--header-timeout-ms", "300", "--idle-timeout-ms", "300"])
    defer { sup.stop() }
    let loris = try RawConnection(port: sup.tcpPort)
    defer { loris.close() }
    loris.send("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    for _ in 0..<3 {
      Clock.sleep(milliseconds: 50)
      loris.send("z")
    }
    let answer = try #require(loris.readUntilClosed(), "the slow header was never cut off")
    #expect(statusCode(answer) == 408, "\(answer)")

    let idle = try RawConnection(port: sup.tcpPort)
    defer { idle.close() }
    idle.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    let idleAnswer = try #require(idle.readUntilClosed(), "the idle connection was never closed")
    #expect(statusCode(idleAnswer) == 200, "one answer, then closed for idling: \(idleAnswer)")
    #expect(try sup.unix.request("GET", "/healthz").status == 200)
  }

  @Test("2,000 half-request connections: over the cap they get 503, the rest 408; all are closed; the daemon serves on")
  func connectionFlood() throws {
    var files = rlimit()
    getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &files)
    if files.rlim_cur < 4096 && files.rlim_max >= 4096 {
      files.rlim_cur = 4096
      setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &files)
    }
    let sup = try TestSupervisor("flood", extra: ["--max-connections", "256", "--header-timeout-ms", "1000"])
    defer { sup.stop() }
    var connections: [RawConnection] = []
    defer { for c in connections { c.close() } }
    for _ in 0..<2000 {
      let c = try RawConnection(port: sup.tcpPort)
      c.send("GET /healthz HTTP/1.1\r\nHost: x\r\n")
      connections.append(c)
    }
    var statuses: [Int: Int] = [:]
    var heldOpen = 0
    for c in connections {
      guard let answer = c.readUntilClosed() else {
        heldOpen += 1
        continue
      }
      statuses[statusCode(answer) ?? 0, default: 0] += 1
    }
    print("2000 half requests: \(statuses.sorted { $0.key < $1.key }), held open: \(heldOpen)")
    #expect(heldOpen == 0, "connections the server never closed")
    #expect(Set(statuses.keys).isSubset(of: [503, 408, 0]), "\(statuses)")
    #expect(statuses[503, default: 0] > 0 && statuses[408, default: 0] > 0, "\(statuses)")
    #expect(processExists(sup.pid))
    // Closed answered connections leave the count once the server sees the client's close.
    for c in connections { c.close() }
    connections = []
    var status = 0
    for _ in 0..<250 where status != 200 {
      status = (try? sup.unix.request("GET", "/healthz"))?.status ?? 0
      if status != 200 { Clock.sleep(milliseconds: 20) }
    }
    #expect(status == 200, "the daemon serves after the flood")
  }
}
