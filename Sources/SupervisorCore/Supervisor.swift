import ForkdHTTP
import Logging
import Protocol
import Syscalls
import VMMControl

/// The daemon: owns the snapshot store, the sandboxes and the API.
public final class Supervisor: @unchecked Sendable {
  public let config: SupervisorConfig
  public let store: SnapshotStore
  public let sandboxes: SandboxManager
  public let metrics: SupervisorMetrics
  let transfers: SnapshotTransfers
  let audit: AuditLog
  let logger: Logger
  let pools: WorkPools

  let launcher: any ChildLauncher

  public init(config: SupervisorConfig, logger: Logger, launcher: any ChildLauncher = ProcessLauncher()) throws {
    self.launcher = launcher
    self.config = config
    self.logger = logger
    try FileSystem.makeDirectories(config.stateDirectory)
    try FileSystem.makeDirectories(config.runDirectory)
    for root in config.imageRoots where !FileSystem.isDirectory(root) {
      if root == config.stateDirectory + "/images" {
        try FileSystem.makeDirectories(root, mode: 0o750)
      } else {
        logger.warning("image root \(root) is not a directory: requests naming files under it will fail")
      }
    }
    store = try SnapshotStore(directory: config.snapshotsDirectory)
    metrics = SupervisorMetrics()
    sandboxes = try SandboxManager(
      config: config, store: store, metrics: metrics, logger: logger, launcher: launcher)
    audit = AuditLog(path: config.auditLogPath)
    pools = WorkPools(agentCalls: config.agentCalls, lifecycleCalls: config.lifecycleCalls)
    transfers = SnapshotTransfers(store: store, authFile: config.registryAuthFile, logger: logger)
    metrics.snapshotsTotal.record(store.count())
    metrics.sandboxesActive.record(0)
  }

  /// Stops every child; the supervisor is unusable afterwards.
  public func shutdown() {
    // Children first: that ends every agent call still blocked on a pool thread.
    sandboxes.shutdown()
    pools.shutdown()
  }

  /// The HTTP entry point: authentication, routing, errors as `{"error": …}`, audit.
  public func handle(_ request: HTTPRequest) async -> HTTPResponse {
    let started = Clock.monotonicNanoseconds()
    let response: HTTPResponse
    do {
      try authorize(request)
      response = try await route(request)
    } catch let error as APIError {
      response = HTTPResponse(status: error.status, json: apiErrorBody(error.message))
    } catch let error as ProtocolError {
      response = HTTPResponse(status: 400, json: apiErrorBody(error.message))
    } catch {
      response = HTTPResponse(status: 500, json: apiErrorBody("\(error)"))
    }
    // The watchdog's own probe is not a client's request.
    if request.listener == .probe { return response }
    metrics.requests.increment()
    audit.record(
      method: request.method, path: request.path, query: request.rawQuery, status: response.status,
      latencyMicroseconds: (Clock.monotonicNanoseconds() - started) / 1000, userAgent: request.header("User-Agent"))
    return response
  }

  private func authorize(_ request: HTTPRequest) throws(APIError) {
    guard request.listener == .tcp, request.path != "/healthz" else { return }
    guard let token = config.token else {
      // Only reachable with --insecure-loopback-without-token (Daemon.checkExposure).
      if config.insecureLoopbackWithoutToken { return }
      throw APIError(401, "missing or invalid bearer token")
    }
    let presented = request.header("Authorization") ?? ""
    guard constantTimeEqual(Array(presented.utf8), Array("Bearer \(token)".utf8)) else {
      throw APIError(401, "missing or invalid bearer token")
    }
  }

  private func route(_ request: HTTPRequest) async throws -> HTTPResponse {
    let parts = request.path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
    let method = request.method
    if match(method, parts, "GET", ["healthz"]) != nil {
      // Takes the sandbox registry's locks and lists the snapshots: a deadlock there fails the
      // watchdog's probe of this route, and systemd restarts the daemon.
      _ = sandboxes.activeCount()
      _ = store.count()
      return json(200, .object(["ok": .bool(true)]))
    }
    if match(method, parts, "GET", ["version"]) != nil {
      return json(200, .object(["version": .string(APIVersion.version), "api": .string(APIVersion.api)]))
    }
    if match(method, parts, "GET", ["metrics"]) != nil {
      metrics.snapshotsTotal.record(store.count())
      metrics.sandboxesActive.record(sandboxes.activeCount())
      metrics.agentCallsInFlight.record(pools.agent.inFlight)
      return HTTPResponse(status: 200, contentType: "text/plain; version=0.0.4", body: metrics.exposition())
    }
    if match(method, parts, "GET", ["v1", "snapshots"]) != nil {
      return json(200, .array(store.list().map(\.summaryJSON)))
    }
    if match(method, parts, "POST", ["v1", "snapshots"]) != nil {
      let body = try CreateSnapshotRequest.decode(request.body)
      try sandboxes.refuseWhileStopping("snapshot creation")
      let creator = SnapshotCreator(store: store, config: config, logger: logger, launcher: launcher)
      let info = try await pools.lifecycle.run { try creator.create(body) }
      metrics.snapshotsTotal.record(store.count())
      return json(201, info.summaryJSON)
    }
    if let captures = match(method, parts, "GET", ["v1", "snapshots", "*", "info"]) {
      let tag = captures.first ?? ""
      try checkTag(tag)
      return json(200, try store.info(tag).infoJSON)
    }
    if let captures = match(method, parts, "GET", ["v1", "snapshots", "*"]) {
      let tag = captures[0]
      try checkTag(tag)
      return json(200, try store.info(tag).infoJSON)
    }
    if let captures = match(method, parts, "DELETE", ["v1", "snapshots", "*"]) {
      let tag = captures.first ?? ""
      try checkTag(tag)
      let cascade = request.query["cascade"] == "true"
      let force = request.query["force"] == "true"
      let snapshots = store
      _ = try await pools.teardown.run { try snapshots.delete(tag, cascade: cascade, force: force) }
      metrics.snapshotsTotal.record(store.count())
      return HTTPResponse(status: 204, body: [])
    }
    if let captures = match(method, parts, "POST", ["v1", "snapshots", "*", "compact"]) {
      let tag = captures.first ?? ""
      try checkTag(tag)
      let body = try CompactRequest.decode(request.body)
      let snapshots = store
      let info = try await pools.lifecycle.run { try snapshots.compact(tag, to: body.to) }
      metrics.snapshotsTotal.record(store.count())
      return json(201, info.infoJSON)
    }
    if let (status, value) = try await transfers.route(method, parts, body: request.body) {
      metrics.snapshotsTotal.record(store.count())
      return json(status, value)
    }
    if match(method, parts, "GET", ["v1", "sandboxes"]) != nil {
      return json(200, .array(sandboxes.list().map(\.jsonValue)))
    }
    if match(method, parts, "POST", ["v1", "sandboxes"]) != nil {
      let body = try SpawnRequest.decode(request.body)
      let manager = sandboxes
      let created = try await pools.lifecycle.run {
        let spawned = try manager.spawn(body)
        guard let seconds = body.timeoutSeconds else { return spawned }
        manager.setTimeout(spawned.map(\.id), seconds: seconds)
        return spawned.map { (try? manager.get($0.id)) ?? $0 }
      }
      return json(201, .array(created.map(\.jsonValue)))
    }
    if let captures = match(method, parts, "GET", ["v1", "sandboxes", "*"]) {
      let id = captures.first ?? ""
      return json(200, try sandboxes.get(id).jsonValue)
    }
    if let captures = match(method, parts, "DELETE", ["v1", "sandboxes", "*"]) {
      let id = captures.first ?? ""
      let manager = sandboxes
      _ = try sandboxes.get(id)
      try await pools.teardown.run { try manager.delete(id) }
      return HTTPResponse(status: 204, body: [])
    }
    if let captures = match(method, parts, "POST", ["v1", "sandboxes", "*", "ping"]) {
      let id = captures.first ?? ""
      let manager = sandboxes
      return json(200, try await pools.agent.run { try manager.ping(id) })
    }
    if let captures = match(method, parts, "POST", ["v1", "sandboxes", "*", "exec"]) {
      let id = captures.first ?? ""
      let body = try ExecRequest.decode(request.body)
      let manager = sandboxes
      return json(200, try await pools.agent.run { try manager.exec(id, body) })
    }
    if let captures = match(method, parts, "POST", ["v1", "sandboxes", "*", "eval"]) {
      let id = captures.first ?? ""
      let body = try EvalRequest.decode(request.body)
      let manager = sandboxes
      return json(200, try await pools.agent.run { try manager.eval(id, body) })
    }
    if let captures = match(method, parts, "POST", ["v1", "sandboxes", "*", "timeout"]) {
      let id = captures[0]
      let seconds = try SandboxTimeout.decode(request.body)
      let manager = sandboxes
      // Off the event loop: the answer reads the sandbox's state, which an agent call may hold.
      return json(200, try await pools.lifecycle.run { try manager.extendTimeout(id, seconds: seconds) }.jsonValue)
    }
    if let captures = match(method, parts, "GET", ["v1", "sandboxes", "*", "vcpus"]) {
      let id = captures[0]
      let manager = sandboxes
      return json(200, try await pools.agent.run { try manager.vcpuStatus(id) })
    }
    if let response = try await fileRoute(method, parts, request) { return response }
    if let captures = match(method, parts, "POST", ["v1", "sandboxes", "*", "branch"]) {
      let id = captures.first ?? ""
      let body = try BranchRequest.decode(request.body)
      let manager = sandboxes
      try sandboxes.refuseWhileStopping("branch")
      let source = try sandboxes.get(id)
      // A branch records its source's snapshot as parent (and a diff branch only the pages
      // that differ from it): while that parent is still sparse on disk it cannot be one.
      try transfers.refuseWhileFilling(source.snapshotTag, "branch \(id)")
      let info = try await pools.lifecycle.run { try manager.branch(id, body) }
      return json(201, info.summaryJSON)
    }
    let known = ["healthz", "version", "metrics", "v1"]
    if let first = parts.first, known.contains(first) {
      if parts.count <= 4, ["GET", "POST", "DELETE"].contains(method) == false {
        throw APIError(405, "method \(method) not allowed on \(request.path)")
      }
    }
    throw APIError.notFound("no route for \(method) \(request.path)")
  }

  /// PUT/GET/DELETE /v1/sandboxes/:id/files?path=…[&mode=…|&list=true]; nil for other routes.
  private func fileRoute(_ method: String, _ parts: [String], _ request: HTTPRequest) async throws -> HTTPResponse? {
    guard parts.count == 4, parts[0] == "v1", parts[1] == "sandboxes", parts[3] == "files" else { return nil }
    let id = parts[2]
    let manager = sandboxes
    _ = try manager.get(id)
    let path = try SandboxFiles.path(request.query["path"])
    switch method {
    case "PUT":
      let mode = try SandboxFiles.mode(request.query["mode"])
      let body = request.body
      return json(200, try await pools.agent.run { try manager.putFile(id, path: path, mode: mode, data: body) })
    case "GET" where request.query["list"] == "true":
      return json(200, try await pools.agent.run { try manager.listFiles(id, path: path) })
    case "GET":
      let data = try await pools.agent.run { try manager.getFile(id, path: path) }
      return HTTPResponse(status: 200, contentType: "application/octet-stream", body: data)
    case "DELETE":
      try await pools.agent.run { try manager.deleteFile(id, path: path) }
      return HTTPResponse(status: 204, body: [])
    default:
      throw APIError(405, "method \(method) not allowed on \(request.path)")
    }
  }

  /// Matches a path against a pattern ("*" captures one segment); nil unless method and path fit.
  private func match(_ method: String, _ parts: [String], _ wanted: String, _ pattern: [String]) -> [String]? {
    guard method == wanted, parts.count == pattern.count else { return nil }
    var captures: [String] = []
    for (part, expected) in zip(parts, pattern) {
      if expected == "*" { captures.append(part) } else if part != expected { return nil }
    }
    return captures
  }

  private func checkTag(_ tag: String) throws(APIError) {
    guard SnapshotTag.isValid(tag) else { throw .badRequest("bad tag \"\(tag)\": tags match ^[A-Za-z0-9_-]{1,64}$") }
  }

  private func json(_ status: Int, _ value: JSONValue) -> HTTPResponse {
    HTTPResponse(status: status, json: value.serialized())
  }
}

/// Compares without an early exit, so a wrong token's timing does not reveal its prefix.
func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
  var difference = UInt8(a.count == b.count ? 0 : 1)
  for i in 0..<max(a.count, b.count) {
    difference |= (i < a.count ? a[i] : 0) ^ (i < b.count ? b[i] : 0)
  }
  return difference == 0
}
