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
  public var headers: [(name: String, value: String)]
  public var body: [UInt8]
  /// Which listener it came through (TCP listeners may require a bearer token).
  public var listener: ListenerKind

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

/// A small HTTP/1.1 server (keep-alive, bounded bodies) for the v1 API.
public final class HTTPServer: Sendable {
  public static let maxBodyBytes = 1 << 20
  let group: MultiThreadedEventLoopGroup
  let handler: HTTPHandler
  /// Event loops (by index) whose last liveness probe has not been taken yet (HTTPProbe.swift).
  let probesPending = Mutex<Set<Int>>([])

  public init(threads: Int = 1, handler: @escaping HTTPHandler) {
    group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
    self.handler = handler
  }

  private func bootstrap(kind: ListenerKind) -> ServerBootstrap {
    let handler = self.handler
    return ServerBootstrap(group: group)
      .serverChannelOption(ChannelOptions.backlog, value: 512)
      .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
      .childChannelInitializer { channel in
        channel.pipeline.configureHTTPServerPipeline(withErrorHandling: true).flatMap {
          channel.pipeline.addHandler(RequestHandler(kind: kind, handler: handler))
        }
      }
      .childChannelOption(ChannelOptions.maxMessagesPerRead, value: 16)
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

final class RequestHandler: ChannelInboundHandler, @unchecked Sendable {
  typealias InboundIn = HTTPServerRequestPart
  typealias OutboundOut = HTTPServerResponsePart

  private let kind: ListenerKind
  private let handler: HTTPHandler
  private var head: HTTPRequestHead?
  private var body: [UInt8] = []
  private var tooLarge = false

  init(kind: ListenerKind, handler: @escaping HTTPHandler) {
    self.kind = kind
    self.handler = handler
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    switch unwrapInboundIn(data) {
    case .head(let h):
      head = h
      body.removeAll(keepingCapacity: true)
      tooLarge = false
    case .body(var buffer):
      if body.count + buffer.readableBytes > HTTPServer.maxBodyBytes {
        tooLarge = true
      } else if let bytes = buffer.readBytes(length: buffer.readableBytes) {
        body += bytes
      }
    case .end:
      guard let head else { return }
      self.head = nil
      let keepAlive = head.isKeepAlive
      let version = head.version
      if tooLarge {
        write(
          context: context,
          response: HTTPResponse(
            status: 413, json: "{\"error\":\"request body larger than \(HTTPServer.maxBodyBytes) bytes\"}"),
          version: version, keepAlive: false)
        return
      }
      let (path, query) = splitQuery(head.uri)
      let request = HTTPRequest(
        method: head.method.rawValue, path: path, query: query, headers: head.headers.map { ($0.name, $0.value) },
        body: body, listener: kind)
      let handler = self.handler
      let loop = context.eventLoop
      let boxed = NIOLoopBound((self, context), eventLoop: loop)
      Task {
        let response = await handler(request)
        loop.execute {
          let (me, ctx) = boxed.value
          me.write(context: ctx, response: response, version: version, keepAlive: keepAlive)
        }
      }
    }
  }

  private func write(context: ChannelHandlerContext, response: HTTPResponse, version: HTTPVersion, keepAlive: Bool) {
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
    if !keepAlive {
      let channel = context.channel
      done.whenComplete { _ in channel.close(promise: nil) }
    }
  }

  private func splitQuery(_ uri: String) -> (String, [String: String]) {
    guard let mark = uri.firstIndex(of: "?") else { return (uri, [:]) }
    var query: [String: String] = [:]
    for pair in uri[uri.index(after: mark)...].split(separator: "&") {
      let parts = pair.split(separator: "=", maxSplits: 1)
      query[String(parts[0])] = parts.count > 1 ? String(parts[1]) : ""
    }
    return (String(uri[..<mark]), query)
  }
}
