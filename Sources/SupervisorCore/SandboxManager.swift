import Dispatch
import Logging
import Protocol
import SnapshotStorage
import Synchronization
import Syscalls
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// One child as the API knows it.
final class Sandbox: @unchecked Sendable {
  let id: String
  let snapshotTag: String
  let createdAt: Int64
  let child: Child
  let memoryLimitMiB: UInt64?
  /// The child's own network namespace (`per_child_netns`), removed with the sandbox.
  let network: ChildNetwork?
  /// Guards the fields below; held only for short reads and writes, never across I/O, so a GET,
  /// a list or a DELETE never waits on an agent call.
  let lock = ConditionLock()
  var state = "running"
  var exitReason: String?
  var branchCount = 0
  var lastBranchPath: String?
  var lastBranch: (tag: String, status: String, error: String?)?
  /// The agent connection (opened on first use); `dropAgent` shuts it down while a call holding
  /// `agentCalls` is blocked on it.
  private var agentClient: AgentClient?
  /// Serialises agent requests: one connection per sandbox, one request on it at a time.
  private let agentCalls = ConditionLock()
  /// Set by `timeout_secs`; its own lock, so the expiry check never waits for an agent call.
  let deadline = Mutex<SandboxDeadline?>(nil)

  init(id: String, snapshotTag: String, child: Child, memoryLimitMiB: UInt64?, network: ChildNetwork? = nil) {
    self.network = network
    self.id = id
    self.snapshotTag = snapshotTag
    self.child = child
    self.memoryLimitMiB = memoryLimitMiB
    createdAt = Clock.unixSeconds()
  }

  var info: SandboxInfo {
    lock.withLock {
      SandboxInfo(
        id: id, snapshotTag: snapshotTag, createdAtUnix: createdAt, pid: state == "running" ? child.vmm.pid : nil,
        pagerPID: state == "running" ? child.pager?.pid : nil, backend: child.backend.name, state: state,
        exitReason: exitReason, memoryLimitMiB: memoryLimitMiB, branchCount: branchCount,
        lastBranchMemoryPath: lastBranchPath, pagerRestarts: child.pagerRestarts, lastBranchTag: lastBranch?.tag,
        lastBranchStatus: lastBranch?.status, lastBranchError: lastBranch?.error, netns: network?.name,
        guestAddr: network == nil ? nil : ChildNetwork.guestAddress,
        expiresAtUnix: deadline.withLock { $0?.unixSeconds })
    }
  }

  var isRunning: Bool { lock.withLock { state == "running" } }

  /// Runs one agent request on this sandbox's connection. Blocks for as long as the guest takes
  /// (an exec: up to its timeout); `dropAgent` (DELETE, the child's end) ends the wait at once.
  func agent(_ request: AgentRequest, timeoutMS: Int) throws(APIError) -> AgentResponse {
    try agentCalls.withLock { () throws(APIError) -> AgentResponse in
      let client = try connection()
      do throws(ControlError) {
        return try client.request(request, timeoutMS: timeoutMS)
      } catch {
        let gone = lock.withLock { () -> (state: String, reason: String)? in
          if agentClient === client { agentClient = nil }
          return state == "running" ? nil : (state, exitReason ?? state)
        }
        if let gone {
          throw .conflict("sandbox \(id) was \(gone.state) while the request ran: \(gone.reason)")
        }
        if error.code == .agent, let agentError = error.cause as? AgentError {
          throw FileTransfer.apiError(agentError, "sandbox \(id)")
        }
        if error.code == .protocolViolation {
          // Guest data the host refuses to decode: the child is reported, the daemon carries on.
          throw APIError(502, "sandbox \(id): the guest agent sent a reply the host refuses: \(error)")
        }
        throw .internalError("sandbox \(id): agent request failed: \(error)")
      }
    }
  }

  /// The open agent connection, or a new one (the connect itself runs outside `lock`).
  private func connection() throws(APIError) -> AgentClient {
    let existing = try lock.withLock { () throws(APIError) -> AgentClient? in
      guard state == "running" else {
        throw .conflict(
          "sandbox \(id) has \(state == "deleted" ? "been deleted" : state): \(exitReason ?? "unknown reason")")
      }
      return agentClient
    }
    if let existing { return existing }
    let client: AgentClient
    do {
      client = try child.vmm.agent()
    } catch {
      throw .internalError("sandbox \(id): agent request failed: \(error)")
    }
    return try lock.withLock { () throws(APIError) -> AgentClient in
      // A DELETE may have come while connecting: it must not find a connection it cannot end.
      guard state == "running" else {
        client.abort()
        throw .conflict(
          "sandbox \(id) has \(state == "deleted" ? "been deleted" : state): \(exitReason ?? "unknown reason")")
      }
      agentClient = client
      return client
    }
  }

  /// Drops the agent connection; a request waiting on it fails at once.
  func dropAgent() {
    let client = lock.withLock { () -> AgentClient? in
      defer { agentClient = nil }
      return agentClient
    }
    client?.abort()
  }

  /// DELETE: marks the sandbox gone (later agent calls get 409) and ends a running agent call.
  func markDeleted() {
    lock.withLock {
      if state == "running" {
        state = "deleted"
        exitReason = "deleted"
      }
    }
    dropAgent()
  }
}

/// All sandboxes: spawn (in parallel), delete, agent calls, branch, and a monitor thread that
/// applies the pager policy and notices children that end.
public final class SandboxManager: @unchecked Sendable {
  let config: SupervisorConfig
  let store: SnapshotStore
  let metrics: SupervisorMetrics
  var logger: Logger
  private let lock = ConditionLock()
  private var sandboxes: [String: Sandbox] = [:]
  private var order: [String] = []
  private var branchesInFlight = 0
  let monitorWake: EventFD
  private var monitorThread: OSThread?
  private var stopping = false
  private let logs: LogPump
  let launcher: any ChildLauncher

  public init(
    config: SupervisorConfig, store: SnapshotStore, metrics: SupervisorMetrics, logger: Logger,
    launcher: any ChildLauncher = ProcessLauncher()
  ) throws {
    self.launcher = launcher
    logs = try LogPump(fallbackDirectory: config.stateDirectory + "/logs", maxFallbackBytes: config.maxChildLogBytes)
    self.config = config
    self.store = store
    self.metrics = metrics
    self.logger = logger
    monitorWake = try EventFD()
    try FileSystem.makeDirectories(config.sandboxRecordsDirectory)
    try FileSystem.makeDirectories(config.sandboxRunDirectory)
    cleanUpLeftovers()
    try ChildNetwork.prepare(config: config)
    monitorThread = try OSThread.start(name: "monitor") { [self] in monitorLoop() }
  }

  // MARK: Spawn and delete

  /// Set once the SIGTERM drain has begun: new children, snapshots and branches are refused.
  public var isStopping: Bool { lock.withLock { stopping } }

  func refuseWhileStopping(_ what: String) throws(APIError) {
    if isStopping { throw .unavailable("the supervisor is shutting down (SIGTERM drain): \(what) refused") }
  }

  public func spawn(_ request: SpawnRequest) throws(APIError) -> [SandboxInfo] {
    try refuseWhileStopping("spawn")
    try store.checkRestorable(request.snapshotTag)
    let chain = try store.chain(request.snapshotTag)
    // A snapshot a lazy pull is still filling is served by pagers (which wait for missing chunks).
    let filling = chain.layers.contains { FileSystem.exists($0.directory + "/" + LazyMemoryMap.fileName) }
    let backend = config.backend.backend(
      chainDepth: filling ? max(chain.depth, 1) : chain.depth, liveFork: request.liveFork)
    if filling && !backend.servesChains {
      throw .conflict(
        "snapshot \(request.snapshotTag) is still being filled by a lazy pull: its children need pager-backed memory (run the supervisor with --backend auto or uffd), or wait for the fill"
      )
    }
    if request.liveFork && !backend.servesChains {
      throw .badRequest(
        "live_fork: live branches need pager-backed children, and this supervisor's backend is \(backend.name) (run it with --backend auto or uffd)"
      )
    }
    if chain.depth > 0, !backend.servesChains {
      throw .conflict(
        "snapshot \(request.snapshotTag) is a diff layer (chain depth \(chain.depth)); this supervisor's backend \(backend.name) maps one flat memory.bin: compact it (POST /v1/snapshots/\(request.snapshotTag)/compact) or run the supervisor with --backend auto or uffd"
      )
    }
    let snapshot = store.path(request.snapshotTag)
    let count = request.count
    let results = ResultsBox(count: count)
    let workers = max(1, min(config.spawnParallelism, count))
    let next = Counter()
    let started = Clock.monotonicNanoseconds()
    DispatchQueue.concurrentPerform(iterations: workers) { _ in
      while true {
        let index = next.increment()
        guard index < count, !results.failed else { return }
        let id = newSandboxID()
        let t0 = Clock.monotonicNanoseconds()
        var network: ChildNetwork? = nil
        do {
          let logs = self.logs
          let tag = request.snapshotTag
          if request.perChildNetns { network = try launcher.makeNetwork(for: id, config: config) }
          let child = try launcher.restore(
            snapshot: snapshot, runDirectory: config.sandboxRunDirectory + "/" + id, backend: backend,
            outputs: { role in logs.output(sandboxID: id, snapshotTag: tag, role: role) },
            vmmArguments: network?.vmmArguments ?? [], jail: config.jail,
            branchDirectory: config.jail == nil ? nil : config.branchStagingDirectory + "/" + id)
          let sandbox = Sandbox(
            id: id, snapshotTag: request.snapshotTag, child: child, memoryLimitMiB: request.memoryLimitMiB,
            network: network)
          network = nil  // the sandbox owns it now
          if let limit = request.memoryLimitMiB {
            try CgroupLimit.apply(id: id, limitMiB: limit, pids: [child.vmm.pid] + (child.pager.map { [$0.pid] } ?? []))
          }
          metrics.spawnLatency.recordNanoseconds(Int64(Clock.monotonicNanoseconds() - t0))
          results.set(index, .success(sandbox))
        } catch {
          network?.remove(config: config)
          results.set(index, .failure("\(error)"))
        }
      }
    }
    let outcome = results.all
    let created = outcome.compactMap { if case .success(let s) = $0 { return s } else { return nil } }
    if let failure = outcome.first(where: { if case .failure = $0 { return true } else { return false } }),
      case .failure(let message) = failure
    {
      // All or nothing: a spawn that fails leaves no child of this request behind.
      for sandbox in created {
        sandbox.child.stop()
        CgroupLimit.remove(id: sandbox.id)
        sandbox.network?.remove(config: config)
      }
      logger.error("spawn from \(request.snapshotTag) failed", metadata: ["error": "\(message)"])
      throw .internalError("restore from \(request.snapshotTag) failed: \(message)")
    }
    // A drain that began while these were restored never saw them: they are stopped here.
    let admitted = lock.withLock {
      guard !stopping else { return false }
      for sandbox in created {
        sandboxes[sandbox.id] = sandbox
        order.append(sandbox.id)
      }
      return true
    }
    guard admitted else {
      for sandbox in created {
        sandbox.child.stop()
        CgroupLimit.remove(id: sandbox.id)
      }
      throw .unavailable("the supervisor is shutting down (SIGTERM drain): spawn refused")
    }
    for sandbox in created {
      writeRecord(sandbox)
      logger(for: sandbox).info(
        "sandbox spawned",
        metadata: [
          "vmm_pid": "\(sandbox.child.vmm.pid)", "pager_pid": "\(sandbox.child.pager?.pid ?? 0)",
          "backend": "\(sandbox.child.backend.name)",
        ])
    }
    metrics.sandboxesActive.record(activeCount())
    monitorWake.signal()
    logger.info(
      "spawned \(count) from \(request.snapshotTag) in \(Double(Clock.monotonicNanoseconds() - started) / 1e6) ms")
    return created.map(\.info)
  }

  public func delete(_ id: String) throws(APIError) {
    let sandbox = try lock.withLock { () throws(APIError) -> Sandbox in
      guard let s = sandboxes.removeValue(forKey: id) else { throw .notFound("unknown sandbox \(id)") }
      order.removeAll { $0 == id }
      return s
    }
    sandbox.markDeleted()
    sandbox.child.stop()
    CgroupLimit.remove(id: id)
    sandbox.network?.remove(config: config)
    _ = try? FileSystem.unlink(recordPath(id))
    metrics.sandboxesActive.record(activeCount())
    monitorWake.signal()
    logger(for: sandbox).info("sandbox deleted")
  }

  public func list() -> [SandboxInfo] {
    let all = lock.withLock { order.compactMap { sandboxes[$0] } }
    return all.map(\.info)
  }

  public func get(_ id: String) throws(APIError) -> SandboxInfo { try sandbox(id).info }

  func sandbox(_ id: String) throws(APIError) -> Sandbox {
    try lock.withLock { () throws(APIError) -> Sandbox in
      guard let s = sandboxes[id] else { throw .notFound("unknown sandbox \(id)") }
      return s
    }
  }

  func allSandboxes() -> [Sandbox] { lock.withLock { Array(sandboxes.values) } }

  public func activeCount() -> Int {
    lock.withLock { Array(sandboxes.values) }.filter(\.isRunning).count
  }

  // MARK: Agent calls

  public func ping(_ id: String) throws(APIError) -> JSONValue {
    let started = Clock.monotonicNanoseconds()
    let sandbox = try sandbox(id)
    return try reported(sandbox) { () throws(APIError) in
      let response = try sandbox.agent(.ping, timeoutMS: 10_000)
      return try AgentReplies.ping(
        sandbox: id, response, rttMicroseconds: (Clock.monotonicNanoseconds() &- started) / 1000)
    }
  }

  public func exec(_ id: String, _ request: ExecRequest) throws(APIError) -> JSONValue {
    let sandbox = try sandbox(id)
    return try reported(sandbox) { () throws(APIError) in
      let response = try sandbox.agent(
        .exec(args: request.args, timeoutSeconds: request.timeoutSeconds, options: request.options),
        timeoutMS: Int(request.timeoutSeconds) * 1000 + 5000)
      return try AgentReplies.exec(sandbox: id, response)
    }
  }

  /// A reply the host refuses (502) goes into the child's log story as well as the response.
  private func reported(_ sandbox: Sandbox, _ body: () throws(APIError) -> JSONValue) throws(APIError) -> JSONValue {
    do {
      return try body()
    } catch {
      guard error.status == 502 else { throw error }
      metrics.agentReplyRejections.increment()
      logger(for: sandbox).warning("agent reply rejected", metadata: ["error": "\(error.message)"])
      throw error
    }
  }

  /// Python in the guest agent's long-lived interpreter: `{result, error, exit_code}` as the
  /// public API answers, plus what print() wrote as `stdout`.
  public func eval(_ id: String, _ request: EvalRequest) throws(APIError) -> JSONValue {
    let sandbox = try sandbox(id)
    return try reported(sandbox) { () throws(APIError) in
      let response = try sandbox.agent(
        .eval(code: request.code, timeoutSeconds: request.timeoutSeconds),
        timeoutMS: Int(request.timeoutSeconds) * 1000 + 5000)
      return try AgentReplies.eval(sandbox: id, response)
    }
  }

  // MARK: Branch

  /// `mode: full`: the source is paused while its vCPU/device state and memory are captured, then
  /// resumes while the files are synced. The snapshot records the source's snapshot as parent.
  public func branch(_ id: String, _ request: BranchRequest) throws(APIError) -> SnapshotInfo {
    try refuseWhileStopping("branch")
    let source = try sandbox(id)
    if request.mode == .live && !source.child.backend.servesChains {
      throw .badRequest(
        "branch mode live needs a pager-backed sandbox (backend uffd); \(id) uses \(source.child.backend.name): spawn it with live_fork: true"
      )
    }
    let tag = request.tag ?? "branch-\(id)-\(Clock.unixSeconds())-\(randomHex(4))"
    try lock.withLock { () throws(APIError) in
      guard branchesInFlight < config.branchConcurrency else {
        throw .unavailable("\(branchesInFlight) branches in flight: the concurrency cap is \(config.branchConcurrency)")
      }
      branchesInFlight += 1
    }
    // Released when the branch is done: for a live branch answered early, when its copy ends.
    var handedOff = false
    defer {
      if !handedOff {
        lock.withLock { branchesInFlight -= 1 }
      }
    }
    try store.reserve(tag, existsStatus: 409)
    defer { if !handedOff { store.release(tag) } }
    let directory = store.path(tag)
    // A jailed source writes into its own branch directory (its cell's `branches`); the
    // finished snapshot is then moved into the store.
    let written = source.child.branchDirectory.map { JailedBranch(directory: $0, tag: tag) }
    // The directory outlives a source that dies mid-branch until the branch is settled.
    source.child.beginBranch()
    defer { if !handedOff { source.child.endBranch() } }
    // nil when the source died after its branch was renamed into place (the snapshot is complete).
    var result: SnapshotReply?
    do {
      result = try source.child.vmm.control().snapshot(
        directory: written?.cellPath ?? directory, parentTag: source.snapshotTag, diff: request.mode == .diff,
        live: request.mode == .live, wait: request.wait, timeoutMS: 600_000)
      if result?.status != .writing { try written?.adopt(into: store) }
    } catch let error as APIError {
      written?.discard()
      throw error
    } catch {
      // The source died mid-branch: name it, remove what it was writing. The rename is the
      // commit point: a snapshot renamed into place before it died is complete and stays.
      let vmm = source.child.vmm
      guard let termination = vmm.ended(after: error) else {
        written?.discard()
        // A running forkd-vmm whose reply does not decode (a guest may have escaped into it):
        // whatever it wrote under the tag is not trusted either.
        if let control = error as? ControlError, control.code == .protocolViolation {
          store.removeStaging(of: tag)
          FileSystem.removeTree(directory)
        }
        throw .internalError("branch of \(id) failed: \(error)")
      }
      if let written {
        written.removeStaging()
        do throws(APIError) {
          try written.adopt(into: store)
        } catch {
          written.discard()
        }
      }
      guard store.settleAfterWriterDied(tag) else {
        throw .internalError(
          "branch of \(id) failed: its forkd-vmm (pid \(vmm.pid)) \(termination) during the snapshot: \(error)")
      }
      logger.warning(
        "forkd-vmm \(termination) after the branch was renamed into place: the snapshot is complete",
        metadata: ["forkd_sandbox_id": "\(id)", "tag": "\(tag)"])
    }
    let writing = result?.status == .writing
    source.lock.withLock {
      source.branchCount += 1
      source.lastBranchPath = directory + "/memory.bin"
      source.lastBranch = (tag, writing ? "writing" : "ready", nil)
    }
    let pauseMS = Double(result?.pauseMicroseconds ?? 0) / 1000
    if writing {
      // wait: false — the source runs again; the copy finishes in the background.
      handedOff = true
      let log = logger
      let vmm = source.child.vmm
      let snapshots = store
      let metrics = metrics
      // Waits up to an hour: its own thread, not a pool's (the API answered already).
      let child = source.child
      let waiter = try? OSThread.start(name: "live-branch") { [self] in
        defer {
          child.endBranch()
          snapshots.release(tag)
          lock.withLock { branchesInFlight -= 1 }
        }
        do {
          let done = try vmm.control().snapshotWait(
            directory: written?.cellPath ?? directory, timeoutMS: 3_600_000)
          try written?.adopt(into: snapshots)
          // The copy can also end without an error yet leave no snapshot (the writer gave up).
          guard snapshots.exists(tag) else {
            throw ControlError(.protocolViolation, "forkd-vmm reported the copy done, but \(directory) does not exist")
          }
          source.lock.withLock { source.lastBranch = (tag, "ready", nil) }
          metrics.snapshotsTotal.record(snapshots.count())
          log.info(
            "live branch written",
            metadata: [
              "forkd_sandbox_id": "\(id)", "tag": "\(tag)",
              "total_ms": "\(Double(done.written?.totalMicroseconds ?? 0) / 1000)",
            ])
        } catch {
          // A source that died mid-copy leaves its staging directory: nobody else will remove it.
          let termination = vmm.ended(after: error)
          if termination != nil { snapshots.removeStaging(of: tag) }
          // A jailed writer that died after its rename committed the branch: adopt it.
          if let written {
            written.removeStaging()
            if termination != nil, (try? written.adopt(into: snapshots)) != nil {
              source.lock.withLock { source.lastBranch = (tag, "ready", nil) }
              metrics.snapshotsTotal.record(snapshots.count())
              log.warning(
                "the live branch's forkd-vmm ended after its rename: the branch is complete",
                metadata: ["forkd_sandbox_id": "\(id)", "tag": "\(tag)"])
              return
            }
            written.discard()
          }
          // Visible afterwards: on the source sandbox and in the 404 for the tag.
          let reason = "live branch from \(id) failed: \(error)\(termination.map { " (forkd-vmm \($0))" } ?? "")"
          source.lock.withLock { source.lastBranch = (tag, "failed", reason) }
          snapshots.recordFailure(tag, reason)
          log.error(
            "live branch failed",
            metadata: [
              "forkd_sandbox_id": "\(id)", "tag": "\(tag)", "error": "\(error)",
              "vmm": "\(termination.map { "\($0)" } ?? "running")",
            ])
        }
      }
      guard let waiter else {
        child.endBranch()
        snapshots.release(tag)
        lock.withLock { branchesInFlight -= 1 }
        throw .internalError("branch of \(id): cannot start the thread that waits for the live copy")
      }
      waiter.detach()
      var info = SnapshotInfo(
        tag: tag, dir: directory, createdAtUnix: Clock.unixSeconds(), parentTag: source.snapshotTag)
      info.branchedFrom = id
      info.pauseMS = pauseMS
      info.status = "writing"
      logger.info("branch started", metadata: ["forkd_sandbox_id": "\(id)", "tag": "\(tag)", "pause_ms": "\(pauseMS)"])
      return info
    }
    var info = try store.info(tag)
    info.branchedFrom = id
    info.pauseMS = pauseMS
    info.status = "ready"
    if request.mode == .diff {
      let diff = result?.written
      info.diffMS = Double(diff?.totalMicroseconds ?? 0) / 1000
      info.diffPhysicalBytes = diff?.memoryDataBytes
      info.diffLogicalBytes = diff?.layerBytes
    }
    metrics.snapshotsTotal.record(store.count())
    logger.info(
      "branched", metadata: ["forkd_sandbox_id": "\(id)", "tag": "\(tag)", "pause_ms": "\(info.pauseMS ?? 0)"])
    return info
  }

  // MARK: Lifecycle

  /// Stops every child (SIGTERM drain) and the monitor.
  public func shutdown() {
    let all: [Sandbox] = lock.withLock {
      stopping = true
      let list = Array(sandboxes.values)
      sandboxes.removeAll()
      order.removeAll()
      return list
    }
    monitorWake.signal()
    monitorThread?.join()
    DispatchQueue.concurrentPerform(iterations: all.count) { i in
      all[i].markDeleted()
      all[i].child.stop()
      CgroupLimit.remove(id: all[i].id)
      all[i].network?.remove(config: config)
      _ = try? FileSystem.unlink(recordPath(all[i].id))
    }
    metrics.sandboxesActive.record(0)
    logs.stop()
  }

  /// Applies the pager policy and marks exited VMs; runs on its own thread.
  private func monitorLoop() {
    while true {
      let watched: [(Sandbox, FileDescriptor, Bool)] = lock.withLock {
        if stopping { return [] }
        var list: [(Sandbox, FileDescriptor, Bool)] = []
        for s in sandboxes.values where s.isRunning {
          if let fd = s.child.vmm.pidFD { list.append((s, fd, false)) }
          if let pager = s.child.pager { list.append((s, pager.pidFD, true)) }
        }
        return list
      }
      if lock.withLock({ stopping }) { return }
      let entries = [(monitorWake.fd, Poll.Events.readable)] + watched.map { ($0.1, Poll.Events.readable) }
      guard let ready = try? Poll.wait(entries, timeoutMS: expireDue(maxWaitMS: 1000)) else { continue }
      if !ready[0].isEmpty { monitorWake.drain() }
      for (i, entry) in watched.enumerated() where !ready[i + 1].isEmpty {
        let (sandbox, _, isPager) = entry
        if isPager {
          handlePagerExit(sandbox)
        } else {
          handleVMExit(sandbox)
        }
      }
    }
  }

  /// The supervisor's logger for one child: its lines join the child's story in the journal.
  func logger(for sandbox: Sandbox) -> Logger {
    var log = logger
    log[metadataKey: "forkd_sandbox_id"] = "\(sandbox.id)"
    log[metadataKey: "forkd_snapshot_tag"] = "\(sandbox.snapshotTag)"
    log[metadataKey: "forkd_role"] = "supervisor"
    return log
  }

  /// Whether `sandbox` is still ours: a DELETE may have taken it while the monitor polled.
  private func isCurrent(_ sandbox: Sandbox) -> Bool {
    lock.withLock { sandboxes[sandbox.id] === sandbox }
  }

  private func handlePagerExit(_ sandbox: Sandbox) {
    guard isCurrent(sandbox) else { return }
    // Both gone (e.g. a signal to the whole process group): that is the VM's end, not a pager's.
    if sandbox.child.vmm.hasExited {
      handleVMExit(sandbox)
      return
    }
    let log = logger(for: sandbox)
    do {
      let id = sandbox.id
      guard let event = try sandbox.child.handlePagerExit(adopt: { CgroupLimit.add(pid: $0, id: id) }) else { return }
      switch event {
      case .restarted(let old, let new, let termination):
        metrics.pagerRestarts.increment()
        log.warning("pager \(old) \(termination); restarted as \(new)")
      case .failed(let termination, let vmm):
        sandbox.lock.withLock {
          sandbox.state = "exited"
          sandbox.exitReason =
            termination == .exited(PagerHandshake.memoryUnavailableStatus)
            ? "memory unavailable: a chunk of the lazily pulled snapshot could not be fetched from the registry (the supervisor log names the registry error); VM stopped"
            : "memory pager \(termination); VM stopped (\(vmm.map { "\($0)" } ?? "killed"))"
        }
        sandbox.dropAgent()
        CgroupLimit.remove(id: sandbox.id)
        log.error("pager \(termination): policy fail, sandbox stopped")
        metrics.sandboxesActive.record(activeCount())
      }
    } catch {
      // The pager may have ended because its VM died (its connection closed first): then that
      // is the VM's end, and the restart could not reach it.
      if sandbox.child.vmm.exited(withinMS: 2000) != nil {
        handleVMExit(sandbox)
        monitorWake.signal()
        return
      }
      log.error("pager restart failed: \(error)")
      sandbox.lock.withLock {
        sandbox.state = "exited"
        sandbox.exitReason = "memory pager died and could not be restarted: \(error)"
      }
      sandbox.dropAgent()
      sandbox.child.stop()
      CgroupLimit.remove(id: sandbox.id)
      metrics.sandboxesActive.record(activeCount())
    }
    monitorWake.signal()
  }

  private func handleVMExit(_ sandbox: Sandbox) {
    guard isCurrent(sandbox), sandbox.child.vmm.hasExited else { return }
    let termination = sandbox.child.vmm.termination
    let reason =
      "forkd-vmm \(termination.map { "\($0)" } ?? "ended"): \(lastLines(of: sandbox.child.vmm.vmmLog, count: 2))"
    sandbox.lock.withLock {
      sandbox.state = "exited"
      sandbox.exitReason = reason
    }
    sandbox.dropAgent()
    sandbox.child.stop()
    CgroupLimit.remove(id: sandbox.id)
    logger(for: sandbox).warning("sandbox exited", metadata: ["reason": "\(reason)"])
    metrics.sandboxesActive.record(activeCount())
  }

  // MARK: Records

  private func recordPath(_ id: String) -> String { config.sandboxRecordsDirectory + "/" + id + ".json" }

  private func writeRecord(_ sandbox: Sandbox) {
    let record = JSONValue.object([
      "id": .string(sandbox.id), "snapshot_tag": .string(sandbox.snapshotTag),
      "created_at_unix": .integer(sandbox.createdAt), "vmm_pid": .integer(Int64(sandbox.child.vmm.pid)),
      "pager_pid": .integer(Int64(sandbox.child.pager?.pid ?? 0)), "run_dir": .string(sandbox.child.runDirectory),
    ])
    try? FileSystem.writeAtomically(recordPath(sandbox.id), Array(record.serialized(pretty: true).utf8))
  }

  /// A previous supervisor's children and snapshot parents (it crashed or was killed): their
  /// processes are ended — recorded or not, e.g. children of a spawn that was still running —
  /// and their run directories, records and cgroups removed, so nothing of them leaks.
  private func cleanUpLeftovers() {
    let parentsDirectory = config.runDirectory + "/parents"
    let ended = LeftoverProcesses.end(mentioning: [config.sandboxRunDirectory + "/", parentsDirectory + "/"])
    if ended > 0 {
      logger.warning("ended \(ended) processes left by a previous supervisor")
    }
    for name in (try? FileSystem.listDirectory(config.sandboxRecordsDirectory)) ?? [] where name.hasSuffix(".json") {
      let path = config.sandboxRecordsDirectory + "/" + name
      // Only a record naming its own run directory (run/sandboxes/<id>, id as in the file name)
      // is obeyed: a planted or corrupt one must not kill or remove anything else.
      let id = String(name.dropLast(5))
      if let bytes = try? FileSystem.readFile(path), let record = try? JSONValue.parse(bytes, source: path),
        let runDir = record["run_dir"]?.stringValue, isSandboxID(id), record["id"]?.stringValue == id,
        runDir == config.sandboxRunDirectory + "/" + id
      {
        FileSystem.removeTree(runDir)
        logger.warning("cleaned up a sandbox left by a previous supervisor", metadata: ["record": "\(name)"])
      }
      _ = try? FileSystem.unlink(path)
    }
    // Jailed children's branch directories (whatever they held was never adopted).
    for directory in [config.sandboxRunDirectory, parentsDirectory, config.branchStagingDirectory] {
      for name in (try? FileSystem.listDirectory(directory)) ?? [] { FileSystem.removeTree(directory + "/" + name) }
    }
    CgroupLimit.removeAll()
    let namespaces = ChildNetwork.removeLeftovers(config: config)
    if namespaces > 0 {
      logger.warning("removed \(namespaces) network namespaces left by a previous supervisor")
    }
  }
}

/// Ending the processes a crashed supervisor left: every process whose command line names one
/// of its run directories (forkd-vmm and forkd-pager are always given their run directory).
enum LeftoverProcesses {
  /// SIGKILLs them through pidfds (opened before the command line is checked, so a recycled pid
  /// is never signalled) and waits until they are gone. Returns how many were ended.
  static func end(mentioning prefixes: [String]) -> Int {
    var killed: [FileDescriptor] = []
    for name in (try? FileSystem.listDirectory("/proc")) ?? [] {
      guard let pid = pid_t(name), pid != getpid(), let pidFD = try? ChildProcess.pidFD(pid) else { continue }
      let cmdline = (try? FileSystem.readFile("/proc/\(pid)/cmdline")) ?? []
      let text = String(decoding: cmdline.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
      if prefixes.contains(where: { text.contains($0) }), (try? pidFD.sendSignal(SIGKILL)) != nil {
        killed.append(pidFD)
      } else {
        pidFD.close()
      }
    }
    // Their cgroups and files can only be removed once the processes are really gone.
    for pidFD in killed {
      _ = try? Poll.wait([(pidFD, .readable)], timeoutMS: 5000)
      pidFD.close()
    }
    return killed.count
  }
}

func newSandboxID() -> String { "sb-" + randomHex(6) }

/// The shape `newSandboxID` produces: "sb-" and 12 lowercase hex digits.
func isSandboxID(_ id: String) -> Bool {
  let utf8 = Array(id.utf8)
  return utf8.count == 15 && id.hasPrefix("sb-")
    && utf8.dropFirst(3).allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
}

func randomHex(_ bytes: Int) -> String {
  var raw = [UInt8](repeating: 0, count: bytes)
  if let fd = try? FileDescriptor.open("/dev/urandom", .readOnly) {
    raw = (try? fd.read(upTo: bytes)) ?? raw
    fd.close()
  }
  return raw.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
}

/// Thread-safe collection of per-index results for parallel spawns.
final class ResultsBox: @unchecked Sendable {
  enum Outcome {
    case pending
    case success(Sandbox)
    case failure(String)
  }
  private let lock = ConditionLock()
  private var items: [Outcome]
  private var anyFailure = false

  init(count: Int) { items = Array(repeating: .pending, count: count) }

  func set(_ index: Int, _ outcome: Outcome) {
    lock.withLock {
      items[index] = outcome
      if case .failure = outcome { anyFailure = true }
    }
  }

  var failed: Bool { lock.withLock { anyFailure } }
  var all: [Outcome] { lock.withLock { items } }
}

final class Counter: @unchecked Sendable {
  private let lock = ConditionLock()
  private var value = 0
  func increment() -> Int {
    lock.withLock {
      defer { value += 1 }
      return value
    }
  }
}
