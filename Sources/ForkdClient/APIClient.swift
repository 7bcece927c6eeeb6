import Protocol
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// A small blocking HTTP/1.1 client for the forkd API over its Unix socket or TCP: one request per
/// connection, JSON bodies, an optional bearer token. (The CLI talks to a local daemon; this keeps
/// TLS stacks out of it.)
public struct APIClient: Sendable {
  public enum Endpoint: Sendable, CustomStringConvertible {
    case unix(String)
    case tcp(host: String, port: UInt16)

    public var description: String {
      switch self {
      case .unix(let path): "unix:\(path)"
      case .tcp(let host, let port): "http://\(host):\(port)"
      }
    }
  }

  public struct Response: Sendable {
    public let status: Int
    public let body: [UInt8]
    public var json: JSONValue? { try? JSONValue.parse(body, source: "response") }
    public var text: String { String(decoding: body, as: UTF8.self) }
    /// The `{"error": …}` message of a failed request.
    public var errorMessage: String? { json?["error"]?.stringValue }
  }

  public struct ClientError: Error, CustomStringConvertible, Sendable {
    public let description: String
  }

  public let endpoint: Endpoint
  public let token: String?
  public let timeoutMS: Int32

  public init(endpoint: Endpoint, token: String? = nil, timeoutMS: Int32 = 600_000) {
    self.endpoint = endpoint
    self.token = token
    self.timeoutMS = timeoutMS
  }

  /// Parses `unix:/path`, `/path`, `http://host:port`.
  public static func endpoint(_ text: String) -> Endpoint? {
    if text.hasPrefix("unix:") { return .unix(String(text.dropFirst(5))) }
    if text.hasPrefix("/") { return .unix(text) }
    var rest = Substring(text)
    if rest.hasPrefix("http://") { rest = rest.dropFirst(7) }
    while rest.hasSuffix("/") { rest = rest.dropLast() }
    guard let colon = rest.lastIndex(of: ":"), let port = UInt16(rest[rest.index(after: colon)...]) else { return nil }
    return .tcp(host: String(rest[..<colon]), port: port)
  }

  public func request(_ method: String, _ path: String, body: JSONValue? = nil, headers: [String: String] = [:])
    throws(ClientError) -> Response
  {
    try request(method, path, rawBody: body.map { Array($0.serialized().utf8) } ?? [], headers: headers)
  }

  public func request(_ method: String, _ path: String, rawBody: [UInt8], headers: [String: String] = [:])
    throws(ClientError)
    -> Response
  {
    let fd = try connect()
    defer { fd.close() }
    var head =
      "\(method) \(path) HTTP/1.1\r\nHost: forkd\r\nConnection: close\r\nUser-Agent: forkd-cli/\(APIVersion.version)\r\n"
    if let token { head += "Authorization: Bearer \(token)\r\n" }
    for (name, value) in headers { head += "\(name): \(value)\r\n" }
    if !rawBody.isEmpty { head += "Content-Type: application/json\r\n" }
    head += "Content-Length: \(rawBody.count)\r\n\r\n"
    var raw: [UInt8] = []
    do {
      try fd.writeAll(Array(head.utf8) + rawBody)
      let deadline = Clock.monotonicNanoseconds() + UInt64(timeoutMS) * 1_000_000
      while true {
        let now = Clock.monotonicNanoseconds()
        guard now < deadline else { throw ClientError(description: "\(endpoint): no answer within \(timeoutMS) ms") }
        let ready = try Poll.wait([(fd, .readable)], timeoutMS: Int32(min((deadline - now) / 1_000_000 + 1, 60_000)))
        if ready[0].isEmpty { continue }
        let chunk = try fd.read(upTo: 65536)
        if chunk.isEmpty { break }
        raw += chunk
      }
    } catch let error as ClientError {
      throw error
    } catch {
      throw ClientError(description: "\(endpoint): \(error)")
    }
    return try parse(raw)
  }

  private func parse(_ raw: [UInt8]) throws(ClientError) -> Response {
    let separator: [UInt8] = [13, 10, 13, 10]
    guard raw.count >= 4, let split = (0...(raw.count - 4)).first(where: { raw[$0..<$0 + 4].elementsEqual(separator) })
    else {
      throw ClientError(description: "\(endpoint): malformed HTTP response (\(raw.count) bytes)")
    }
    let statusLine = String(decoding: raw[..<split], as: UTF8.self).split(separator: "\r\n").first ?? ""
    guard let status = Int(statusLine.split(separator: " ").dropFirst().first ?? "") else {
      throw ClientError(description: "\(endpoint): malformed status line '\(statusLine)'")
    }
    return Response(status: status, body: Array(raw[(split + 4)...]))
  }

  private func connect() throws(ClientError) -> FileDescriptor {
    switch endpoint {
    case .unix(let path):
      do {
        return try UnixSocket.connect(path: path)
      } catch {
        throw ClientError(
          description: "cannot connect to forkd at \(path): \(error.errno) (is forkd-supervisor running?)")
      }
    case .tcp(let host, let port):
      var hints = addrinfo()
      hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
      var result: UnsafeMutablePointer<addrinfo>?
      guard getaddrinfo(host, "\(port)", &hints, &result) == 0, let first = result else {
        throw ClientError(description: "cannot resolve \(host)")
      }
      defer { freeaddrinfo(result) }
      let s = socket(
        first.pointee.ai_family, first.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), first.pointee.ai_protocol)
      guard s >= 0 else { throw ClientError(description: "socket: \(Errno.current)") }
      guard Glibc.connect(s, first.pointee.ai_addr, first.pointee.ai_addrlen) == 0 else {
        let err = Errno.current
        close(s)
        throw ClientError(description: "cannot connect to forkd at \(host):\(port): \(err)")
      }
      return FileDescriptor(rawValue: s)
    }
  }
}
