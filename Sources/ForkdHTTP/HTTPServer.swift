import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// A request as the API sees it: the whole body is read first (bounded).
public struct HTTPRequest: Sendable {
  public var method: String
  /// Path without the query string.
  public var path: String
  public var query: [String: String]
  /// The query string as sent (without "?"), for the audit log.
  public var rawQuery: String?
  public var headers: [(name: String, value: String)]
  public var body: [UInt8]
  /// Which listener it came through (TCP listeners may require a bearer token).
  public var listener: ListenerKind

  public init(
    method: String, uri: String, headers: [(name: String, value: String)] = [], body: [UInt8] = [],
    listener: ListenerKind = .unix
  ) {
    self.method = method
    (path, query, rawQuery) = splitQuery(uri)
    self.headers = headers
    self.body = body
    self.listener = listener
  }

  public func header(_ name: String) -> String? {
    headers.first { $0.name.lowercased() == name.lowercased() }?.value
  }
}

public enum ListenerKind: Sendable, Equatable {
  case unix
  case tcp
  /// The daemon's own liveness probe (HTTPServer.probe): not a client, not audited.
  case probe
}

public struct HTTPResponse: Sendable {
  public var status: Int
  public var contentType: String
  public var body: [UInt8]

  public init(status: Int, contentType: String = "application/json", body: [UInt8]) {
    self.status = status
    self.contentType = contentType
    self.body = body
  }

  public init(status: Int, json: String) {
    self.init(status: status, body: Array(json.utf8))
  }
}

public typealias HTTPHandler = @Sendable (HTTPRequest) async -> HTTPResponse

/// What one client may cost the server (docs/api.md, "Limits"): bounded header and body sizes,
/// deadlines for each phase of a request, and a cap on open connections.
public struct HTTPLimits: Sendable, Equatable {
  /// Request body; a larger declared Content-Length is answered 413 before any body is read.
  public var maxBodyBytes = 1 << 20
  /// Request line and header fields together; more is answered 431.
  public var maxHeaderBytes = 16 << 10
  /// From a request's first byte until its header is complete (slow headers: 408 and close).
  public var headerTimeoutMS = 10_000
  /// From the header until the whole body is in (slow bodies: 408 and close).
  public var bodyTimeoutMS = 30_000
  /// A kept-alive connection with no request in progress is closed after this long.
  public var idleTimeoutMS = 60_000
  /// Open connections across all listeners; one more is answered 503 and closed.
  public var maxConnections = 512

  public init() {}
}

/// A small HTTP/1.1 server (keep-alive, bounded requests, per-phase deadlines, a connection cap)
/// for the v1 API.
public final class HTTPServer: Sendable {
  public let limits: HTTPLimits
  let group: MultiThreadedEventLoopGroup
  let handler: HTTPHandler
  private let connections = ConnectionCount()
  /// Event loops (by index) whose last liveness probe has not been taken yet (HTTPProbe.swift).
  let probesPending = Mutex<Set<Int>>([])

  public init(threads: Int = 1, limits: HTTPLimits = HTTPLimits(), handler: @escaping HTTPHandler) {
    group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
    self.limits = limits
    self.handler = handler
  }

  /// Connections open now (for tests and metrics).
  public var openConnections: Int { connections.value }

  private func bootstrap(kind: ListenerKind) -> ServerBootstrap {
    let handler = self.handler
    let limits = self.limits
    let connections = self.connections
    return ServerBootstrap(group: group)
      .serverChannelOption(ChannelOptions.backlog, value: 512)
      .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
      // Out of descriptors (EMFILE, ENFILE): accepting pauses a moment instead of spinning.
      .serverChannelInitializer { channel in channel.pipeline.addHandler(AcceptBackoffHandler()) }
      .childChannelInitializer { channel in
        guard connections.tryAdd(limit: limits.maxConnections) else {
          return channel.pipeline.addHandler(OverCapacity(limit: limits.maxConnections))
        }
        channel.closeFuture.whenComplete { _ in connections.remove() }
        return channel.eventLoop.makeCompletedFuture {
          try HTTPServer.configure(channel.pipeline.syncOperations, kind: kind, limits: limits, handler: handler)
        }
      }
      .childChannelOption(ChannelOptions.maxMessagesPerRead, value: 16)
  }

  /// The handlers of one connection, from raw bytes to `handler`: also used by the request-path
  /// fuzz target on an in-memory channel.
  public static func configure(
    _ pipeline: ChannelPipeline.SynchronousOperations, kind: ListenerKind, limits: HTTPLimits,
    handler: @escaping HTTPHandler
  ) throws {
    var decoderLimits = NIOHTTPDecoderLimitConfiguration()
    decoderLimits.maxHeaderFieldSize = limits.maxHeaderBytes
    decoderLimits.maxHeaderListSize = limits.maxHeaderBytes
    decoderLimits.maxHeaderFieldCount = 256
    let deadlines = Deadlines(limits: limits)
    try pipeline.addHandlers([
      deadlines, HTTPResponseEncoder(),
      ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes, limitConfiguration: decoderLimits)),
      HTTPServerPipelineHandler(),
      RequestHandler(kind: kind, limits: limits, deadlines: deadlines, handler: handler),
    ])
  }

  /// Binds a Unix socket at `path` (an existing stale socket file is replaced).
  public func bind(unixPath path: String) async throws -> Channel {
    try await bootstrap(kind: .unix).bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
  }

  public func bind(host: String, port: Int) async throws -> Channel {
    try await bootstrap(kind: .tcp).bind(host: host, port: port).get()
  }

  /// Serves on a listening socket passed by systemd (socket activation).
  public func adopt(descriptor: Int32, kind: ListenerKind) async throws -> Channel {
    try await bootstrap(kind: kind).withBoundSocket(descriptor).get()
  }

  public func shutdown() async throws {
    try await group.shutdownGracefully()
  }
}

/// Open connections, shared by every listener's accept path.
private final class ConnectionCount: Sendable {
  private let count = Atomic<Int>(0)

  var value: Int { count.load(ordering: .relaxed) }

  func tryAdd(limit: Int) -> Bool {
    var current = count.load(ordering: .relaxed)
    while current < limit {
      let (exchanged, original) = count.compareExchange(
        expected: current, desired: current + 1, ordering: .relaxed)
      if exchanged { return true }
      current = original
    }
    return false
  }

  func remove() { count.subtract(1, ordering: .relaxed) }
}

/// A complete response written straight to the socket, for connections that never reach the
/// HTTP handlers (over the cap, timed out).
private func rawResponse(status: Int, reason: String, message: String) -> [UInt8] {
  let body = errorJSON(message)
  return Array(
    ("HTTP/1.1 \(status) \(reason)\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n"
      + "Connection: close\r\n\r\n" + body).utf8)
}

/// Ends a connection after a final answer: the write side first, so the client reads the answer
/// rather than a reset for bytes it sent that were never read, then all of it a moment later.
private func finish(_ channel: Channel) {
  channel.close(mode: .output, promise: nil)
  channel.eventLoop.scheduleTask(in: .seconds(1)) { channel.close(promise: nil) }
}

/// Past the connection cap: 503 with the reason, then close.
private final class OverCapacity: ChannelInboundHandler {
  typealias InboundIn = ByteBuffer
  let limit: Int

  init(limit: Int) { self.limit = limit }

  func channelActive(context: ChannelHandlerContext) {
    let bytes = rawResponse(
      status: 503, reason: "Service Unavailable",
      message: "too many connections: the server holds at most \(limit) open connections; retry later")
    let channel = context.channel
    context.writeAndFlush(NIOAny(context.channel.allocator.buffer(bytes: bytes))).whenComplete { _ in
      finish(channel)
    }
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {}

  func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
}

/// The per-phase deadlines of one connection. Sits in front of the HTTP decoder, so it sees the
/// first byte of each request; the request handler reports the header and the end.
private final class Deadlines: ChannelInboundHandler, RemovableChannelHandler {
  typealias InboundIn = ByteBuffer
  typealias InboundOut = ByteBuffer

  enum Phase {
    /// Between requests: the idle deadline runs.
    case idle
    /// A request's first bytes are in, its header is not complete.
    case header
    case body
    /// The request is complete; the API handler has it (no deadline: an exec may run an hour).
    case handling
  }

  private let limits: HTTPLimits
  private var phase = Phase.idle
  private var timer: Scheduled<Void>?
  private var context: ChannelHandlerContext?
  /// A final answer was sent: no more deadlines.
  private var closing = false

  init(limits: HTTPLimits) { self.limits = limits }

  func handlerAdded(context: ChannelHandlerContext) {
    self.context = context
    if context.channel.isActive { enter(.idle) }
  }

  func channelActive(context: ChannelHandlerContext) {
    enter(.idle)
    context.fireChannelActive()
  }

  func handlerRemoved(context: ChannelHandlerContext) {
    timer?.cancel()
    self.context = nil
  }

  func channelInactive(context: ChannelHandlerContext) {
    timer?.cancel()
    context.fireChannelInactive()
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    if phase == .idle { enter(.header) }
    context.fireChannelRead(data)
  }

  func headReceived() { enter(.body) }
  func requestComplete() { enter(.handling) }
  func responseSent() { enter(.idle) }
  /// The connection ends after its answer: no deadline may write after it.
  func finalAnswerSent() {
    closing = true
    timer?.cancel()
    timer = nil
  }

  private func enter(_ next: Phase) {
    phase = next
    timer?.cancel()
    timer = nil
    guard let context, !closing else { return }
    let (ms, message): (Int, String?)
    switch next {
    case .idle: (ms, message) = (limits.idleTimeoutMS, nil)
    case .header:
      (ms, message) = (limits.headerTimeoutMS, "request header not complete within \(limits.headerTimeoutMS) ms")
    case .body: (ms, message) = (limits.bodyTimeoutMS, "request body not complete within \(limits.bodyTimeoutMS) ms")
    case .handling: return
    }
    let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
    timer = context.eventLoop.scheduleTask(in: .milliseconds(Int64(ms))) {
      loopBound.value.expired(message: message)
    }
  }

  /// An idle connection just closes; one stuck mid-request is told why first.
  private func expired(message: String?) {
    guard let context, !closing else { return }
    closing = true
    let channel = context.channel
    guard let message else {
      channel.close(promise: nil)
      return
    }
    let bytes = rawResponse(status: 408, reason: "Request Timeout", message: message)
    context.writeAndFlush(NIOAny(channel.allocator.buffer(bytes: bytes))).whenComplete { _ in finish(channel) }
  }
}

private final class RequestHandler: ChannelInboundHandler {
  typealias InboundIn = HTTPServerRequestPart
  typealias OutboundOut = HTTPServerResponsePart

  private let kind: ListenerKind
  private let limits: HTTPLimits
  private let deadlines: Deadlines
  private let handler: HTTPHandler
  private var head: HTTPRequestHead?
  private var body: [UInt8] = []
  /// A request is with the API handler: protocol errors then close without a response.
  private var inFlight = false
  /// An early answer (413) was sent: the rest of the request is ignored until the close.
  private var answered = false

  init(kind: ListenerKind, limits: HTTPLimits, deadlines: Deadlines, handler: @escaping HTTPHandler) {
    self.kind = kind
    self.limits = limits
    self.deadlines = deadlines
    self.handler = handler
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    if answered { return }
    switch unwrapInboundIn(data) {
    case .head(let h):
      deadlines.headReceived()
      // Declared too large: answered now, without reading (or waiting for) the body.
      if let declared = h.headers.first(name: "content-length"), let length = UInt64(declared),
        length > UInt64(limits.maxBodyBytes)
      {
        return answerEarly(context, tooLarge: "declared Content-Length \(length)", version: h.version)
      }
      head = h
      body.removeAll(keepingCapacity: true)
    case .body(var buffer):
      guard let head else { return }
      if body.count + buffer.readableBytes > limits.maxBodyBytes {
        return answerEarly(
          context, tooLarge: "body of more than \(body.count + buffer.readableBytes) bytes", version: head.version)
      }
      if let bytes = buffer.readBytes(length: buffer.readableBytes) { body += bytes }
    case .end:
      guard let head else { return }
      self.head = nil
      deadlines.requestComplete()
      inFlight = true
      let keepAlive = head.isKeepAlive
      let version = head.version
      let request = HTTPRequest(
        method: head.method.rawValue, uri: head.uri, headers: head.headers.map { ($0.name, $0.value) }, body: body,
        listener: kind)
      body = []
      let handler = self.handler
      let loop = context.eventLoop
      let boxed = NIOLoopBound((self, context), eventLoop: loop)
      Task {
        let response = await handler(request)
        loop.execute {
          let (me, ctx) = boxed.value
          me.inFlight = false
          me.write(context: ctx, response: response, version: version, keepAlive: keepAlive)
        }
      }
    }
  }

  /// Malformed requests get 400, oversized headers 431, then the connection closes.
  func errorCaught(context: ChannelHandlerContext, error: Error) {
    guard let parserError = error as? HTTPParserError, !inFlight, !answered else {
      context.close(promise: nil)
      return
    }
    answered = true
    let response =
      parserError == .headerOverflow
      ? HTTPResponse(
        status: 431,
        json: errorJSON("request header larger than \(limits.maxHeaderBytes) bytes (or more than 256 fields)"))
      : HTTPResponse(status: 400, json: errorJSON("malformed HTTP request: \(parserError)"))
    write(context: context, response: response, version: .http1_1, keepAlive: false)
  }

  private func answerEarly(_ context: ChannelHandlerContext, tooLarge what: String, version: HTTPVersion) {
    answered = true
    head = nil
    body = []
    write(
      context: context,
      response: HTTPResponse(
        status: 413, json: errorJSON("request body too large: \(what), the limit is \(limits.maxBodyBytes) bytes")),
      version: version, keepAlive: false)
  }

  private func write(context: ChannelHandlerContext, response: HTTPResponse, version: HTTPVersion, keepAlive: Bool) {
    guard context.channel.isActive else { return }
    var headers = HTTPHeaders()
    headers.add(name: "Content-Type", value: response.contentType)
    headers.add(name: "Content-Length", value: "\(response.body.count)")
    headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
    let head = HTTPResponseHead(
      version: version, status: HTTPResponseStatus(statusCode: response.status), headers: headers)
    context.write(wrapOutboundOut(.head(head)), promise: nil)
    var buffer = context.channel.allocator.buffer(capacity: response.body.count)
    buffer.writeBytes(response.body)
    context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
    let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
    if keepAlive {
      deadlines.responseSent()
    } else {
      deadlines.finalAnswerSent()
      let channel = context.channel
      done.whenComplete { _ in finish(channel) }
    }
  }
}

/// `{"error": "<message>"}` with the message escaped (this module has no JSON encoder of its own).
func errorJSON(_ message: String) -> String {
  var out = "{\"error\":\""
  for scalar in message.unicodeScalars {
    switch scalar {
    case "\"": out += "\\\""
    case "\\": out += "\\\\"
    case _ where scalar.value < 0x20:
      out += "\\u00" + (scalar.value < 0x10 ? "0" : "") + String(scalar.value, radix: 16)
    default: out.unicodeScalars.append(scalar)
    }
  }
  return out + "\"}"
}

/// Path, query parameters and the raw query of a request target. A parameter without "=" (or
/// an empty pair, as in "?=" or "?&") is kept with an empty value; the last of repeated keys wins.
func splitQuery(_ uri: String) -> (path: String, query: [String: String], raw: String?) {
  guard let mark = uri.firstIndex(of: "?") else { return (uri, [:], nil) }
  let raw = uri[uri.index(after: mark)...]
  var query: [String: String] = [:]
  for pair in raw.split(separator: "&", omittingEmptySubsequences: true) {
    if let equals = pair.firstIndex(of: "=") {
      query[String(pair[..<equals])] = String(pair[pair.index(after: equals)...])
    } else {
      query[String(pair)] = ""
    }
  }
  return (String(uri[..<mark]), query, String(raw))
}
