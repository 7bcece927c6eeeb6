import Dispatch
import ForkdHTTP
import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Protocol
import SupervisorCore
import Synchronization
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// Fuzz targets of the daemon itself: whole requests through the HTTP layer, and agent replies
/// through the code that turns them into API answers.
enum SupervisorTargets {
  /// Raw bytes on one connection → NIO's HTTP/1 decoder → the request handler → the router and
  /// handlers of a real Supervisor whose launcher never starts a VM. Every answer is one HTTP
  /// response with a documented status; nothing traps.
  static func apiServer(_ bytes: [UInt8]) {
    var input = FuzzInput(bytes)
    let kind: ListenerKind = input.u8() & 1 == 0 ? .unix : .tcp
    let data = input.rest()
    let done = DispatchSemaphore(value: 0)
    Task {
      await ServerHarness.shared.exchange(data, kind: kind)
      done.signal()
    }
    done.wait()
  }

  /// An agent reply stream for a request the first byte picks (ping, exec, kv get, counter),
  /// decoded as the host does and handed to the supervisor's reply handling.
  static func agentReplies(_ bytes: [UInt8]) {
    var input = FuzzInput(bytes)
    let selector = input.u8()
    let requests: [AgentRequest] = [
      .ping, .exec(args: ["x"], timeoutSeconds: 1), .kvGet(key: [1]), .counter(delta: -1),
    ]
    let request = requests[Int(selector) % requests.count]
    var decoder = AgentFrameDecoder()
    decoder.feed(input.rest())
    while let frame = try? decoder.next() {
      guard let response = try? AgentCodec.decodeResponse(frame, for: request) else { continue }
      let id = "sb-0123456789ab"
      do {
        let ping = try AgentReplies.ping(sandbox: id, response, rttMicroseconds: UInt64.max)
        guard case .pong(let pong) = response else { return check(false, "ping answered without a pong") }
        check(pong.counter <= UInt64(Int64.max) && pong.requestsServed <= UInt64(Int64.max), "out of range accepted")
        check((try? JSONValue.parse(Array(ping.serialized().utf8), source: "fuzz")) == ping, "ping JSON round trip")
      } catch {
        check(error.status == 502 && error.message.contains(id), "ping rejection: \(error)")
      }
      do {
        let exec = try AgentReplies.exec(sandbox: id, response)
        check(exec["exit_code"]?.int64Value.map { Int32(exactly: $0) != nil } == true, "exit code")
        _ = exec.serialized()
      } catch {
        check(error.status == 502 && error.message.contains(id), "exec rejection: \(error)")
      }
    }
  }
}

/// Statuses the API documents (docs/api.md); anything else is a finding.
private let documentedStatuses: Set<Int> = [
  200, 201, 204, 400, 401, 403, 404, 405, 408, 409, 413, 431, 500, 502, 503,
]

/// Never starts a process: every spawn and snapshot fails as a launch failure would.
struct NoVMLauncher: ChildLauncher {
  func restore(
    snapshot: String, runDirectory: String, backend: ChildBackend, outputs: Child.OutputFactory?,
    vmmArguments: [String], jail: JailPool?, branchDirectory: String?
  ) throws(ControlError) -> Child {
    throw ControlError(.launch, "fuzz launcher: no VMs")
  }

  func boot(_ mode: VMMProcess.Mode, runDirectory: String, extraArguments: [String]) throws(ControlError)
    -> VMMProcess
  {
    throw ControlError(.launch, "fuzz launcher: no VMs")
  }

  func makeNetwork(for sandboxID: String, config: SupervisorConfig) throws(APIError) -> ChildNetwork {
    throw .internalError("fuzz launcher: no networks")
  }
}

/// One Supervisor for the process (state under /tmp), requests counted so the harness knows
/// when every handler has answered.
final class ServerHarness: Sendable {
  static let shared = ServerHarness()

  let supervisor: Supervisor
  let auditPath: String
  private let exchanges = Atomic<Int>(0)

  init() {
    var config = SupervisorConfig(
      stateDirectory: "/tmp/forkd-fuzz-\(getpid())/state", runDirectory: "/tmp/forkd-fuzz-\(getpid())/run",
      token: "fuzz-token")
    config.spawnParallelism = 1
    auditPath = config.auditLogPath
    do {
      supervisor = try Supervisor(
        config: config, logger: Logger(label: "fuzz", factory: { _ in SwiftLogNoOpLogHandler() }),
        launcher: NoVMLauncher())
    } catch {
      fatalError("fuzz: cannot start the supervisor: \(error)")
    }
  }

  func exchange(_ bytes: [UInt8], kind: ListenerKind) async {
    // The audit log gets a line per request: kept short over long runs.
    if exchanges.add(1, ordering: .relaxed).newValue % 10_000 == 0 { _ = truncate(auditPath, 0) }
    let channel = NIOAsyncTestingChannel()
    let supervisor = self.supervisor
    let counts = ExchangeCounts()
    let handler: HTTPHandler = { request in
      counts.started.add(1, ordering: .sequentiallyConsistent)
      let response = await supervisor.handle(request)
      check(documentedStatuses.contains(response.status), "undocumented status \(response.status)")
      counts.finished.add(1, ordering: .sequentiallyConsistent)
      return response
    }
    do {
      try await channel.testingEventLoop.executeInContext {
        let pipeline = channel.pipeline.syncOperations
        try HTTPServer.configure(pipeline, kind: kind, limits: HTTPLimits(), handler: handler)
        let assist = try pipeline.handler(type: HTTPServerPipelineHandler.self)
        try pipeline.addHandler(RequestEnds(counts: counts), position: .after(assist))
      }
      try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1))
    } catch {
      return check(false, "fuzz: cannot set up the channel: \(error)")
    }
    _ = try? await channel.writeInbound(ByteBuffer(bytes: bytes))
    // Pipelined requests are released one by one as each answer is written; a request answered
    // early (413) is never handed over, and its connection closes after a grace period.
    var quietRounds = 0
    var advances = 0
    while true {
      _ = try? await channel.testingEventLoop.executeInContext {}
      let ends = counts.ends.load(ordering: .sequentiallyConsistent)
      let started = counts.started.load(ordering: .sequentiallyConsistent)
      let finished = counts.finished.load(ordering: .sequentiallyConsistent)
      if started == finished && finished >= ends {
        _ = try? await channel.testingEventLoop.executeInContext {}
        if counts.ends.load(ordering: .sequentiallyConsistent) == ends { break }
        continue
      }
      if started == finished {
        // Nothing is with a handler: a request task not yet running, or an early answer.
        quietRounds += 1
        if quietRounds > 50 {
          quietRounds = 0
          advances += 1
          await channel.testingEventLoop.advanceTime(by: .seconds(2))
          if !channel.isActive || advances > 3 { break }
        }
        await Task.yield()
        continue
      }
      try? await Task.sleep(nanoseconds: 20_000)
    }
    var output: [UInt8] = []
    while let part = try? await channel.readOutbound(as: IOData.self) {
      if case .byteBuffer(var buffer) = part, let b = buffer.readBytes(length: buffer.readableBytes) { output += b }
    }
    _ = try? await channel.close()
    // Timers still queued (the close after a final answer) hold the channel: run them, then end
    // the loop, so nothing of this exchange outlives it.
    await channel.testingEventLoop.advanceTime(by: .seconds(3600))
    try? await channel.testingEventLoop.shutdownGracefully()
    if getenv("FORKD_FUZZ_SHOW") != nil { print(String(decoding: output, as: UTF8.self)) }
    checkResponses(output)
  }

  /// Every response the server wrote starts with an HTTP/1.x status line of a documented status.
  private func checkResponses(_ output: [UInt8]) {
    guard !output.isEmpty else { return }
    let text = String(decoding: output, as: UTF8.self)
    check(text.hasPrefix("HTTP/1."), "output does not start with a status line: \(text.prefix(80))")
    for line in text.split(separator: "\r\n") where line.hasPrefix("HTTP/1.") {
      let parts = line.split(separator: " ", maxSplits: 2)
      guard parts.count >= 2, let status = Int(parts[1]) else { return check(false, "bad status line \(line)") }
      check(documentedStatuses.contains(status), "undocumented status \(status) in \(line)")
    }
  }
}

/// Requests of one exchange: complete (their end parsed), handed to the API handler, answered.
final class ExchangeCounts: Sendable {
  let ends = Atomic<Int>(0)
  let started = Atomic<Int>(0)
  let finished = Atomic<Int>(0)
}

/// Counts each request's end as it reaches the request handler.
final class RequestEnds: ChannelInboundHandler {
  typealias InboundIn = HTTPServerRequestPart
  typealias InboundOut = HTTPServerRequestPart
  let counts: ExchangeCounts

  init(counts: ExchangeCounts) { self.counts = counts }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    if case .end = unwrapInboundIn(data) { counts.ends.add(1, ordering: .sequentiallyConsistent) }
    context.fireChannelRead(data)
  }
}
