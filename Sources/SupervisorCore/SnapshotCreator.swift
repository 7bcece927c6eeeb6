import Logging
import Protocol
import Syscalls
import VMMControl

/// POST /v1/snapshots: boot a parent, warm it with agent commands, snapshot it, stop it.
struct SnapshotCreator {
  let store: SnapshotStore
  let config: SupervisorConfig
  let logger: Logger
  let launcher: any ChildLauncher

  func create(_ request: CreateSnapshotRequest) throws(APIError) -> SnapshotInfo {
    let mode: VMMProcess.Mode
    let source: String
    let roots = ImageRoots(config.imageRoots)
    if let kernel = request.kernel {
      let kernelPath = try roots.resolve(field: "kernel", path: kernel)
      let rootfs = try request.rootfs.map { (path) throws(APIError) in try roots.resolve(field: "rootfs", path: path) }
      let initrd = try request.initrd.map { (path) throws(APIError) in try roots.resolve(field: "initrd", path: path) }
      mode = .bootLinux(
        kernel: kernelPath, initrd: initrd, disk: rootfs, commandLine: request.cmdline,
        memoryMiB: request.memoryMiB, vcpus: request.vcpus)
      source = kernel
    } else {
      if request.rootfs != nil || request.initrd != nil {
        throw .badRequest("rootfs and initrd belong to a Linux parent: give \"kernel\" too")
      }
      let image = request.image ?? "builtin:test-guest"
      let imagePath = image == "builtin:test-guest" ? image : try roots.resolve(field: "image", path: image)
      mode = .boot(image: imagePath, memoryMiB: request.memoryMiB, vcpus: request.vcpus)
      source = image
    }
    try store.reserve(request.tag, existsStatus: 400)
    defer { store.release(request.tag) }
    let runDirectory = config.runDirectory + "/parents/" + request.tag + "-" + randomHex(4)
    let parent: VMMProcess
    do {
      // A test-guest parent gets a NIC without a backend, so its children can each get a TAP
      // (`per_child_netns`); a child without a namespace has it unplugged.
      var extra: [String] = []
      if case .boot = mode { extra = ["--nic"] }
      parent = try launcher.boot(mode, runDirectory: runDirectory, extraArguments: extra)
    } catch {
      throw .internalError("cannot boot the parent of \(request.tag): \(error)")
    }
    defer { parent.stop() }
    do {
      let agent = try parent.agent(timeoutMS: Int(request.bootWaitSeconds) * 1000 + 1000)
      let pong = try agent.ping()
      for step in request.warmup {
        if case .writeFile(let path, let content, let mode) = step {
          try warmupWrite(
            agent, testGuest: pong.kind == AgentPong.testGuestKind, path: path, content: content, mode: mode)
          continue
        }
        let response = try agent.request(step.agentRequest, timeoutMS: 300_000)
        if case .exec(let result) = response, result.exitCode != 0 || result.timedOut {
          throw ControlError(
            .agent,
            "warm-up exec \(step.jsonValue.serialized()) \(result.timedOut ? "timed out" : "exited with \(result.exitCode)"): \(String(decoding: result.stderr.suffix(512), as: UTF8.self))"
          )
        }
        if case .eval(let result) = response, result.exitCode != 0 {
          throw ControlError(
            .agent,
            "warm-up eval \(step.jsonValue.serialized().prefix(200)) ended with status \(result.exitCode): \(String(decoding: result.error.suffix(512), as: UTF8.self))"
          )
        }
      }
      try parent.control().snapshot(directory: store.path(request.tag), parentTag: nil, timeoutMS: 120_000)
    } catch {
      // A warm-up step the guest refused (e.g. a file too large for it): the caller's error.
      if let refused = error as? APIError { throw refused }
      // The parent died: name it and remove what it was writing. The rename is the commit point:
      // a snapshot renamed into place before it died is complete and stays.
      guard let termination = parent.ended(after: error) else {
        throw .internalError("warming or snapshotting the parent of \(request.tag) failed: \(error)")
      }
      let log = lastLines(of: parent.vmmLog, count: 3)
      guard store.settleAfterWriterDied(request.tag) else {
        throw .internalError(
          "warming or snapshotting the parent of \(request.tag) failed: its forkd-vmm (pid \(parent.pid)) \(termination): \(error) (log: \(log))"
        )
      }
      logger.warning(
        "the parent's forkd-vmm \(termination) after the snapshot was renamed into place: the snapshot is complete",
        metadata: ["forkd_snapshot_tag": "\(request.tag)", "log": "\(log)"])
    }
    logger.info("snapshot created", metadata: ["forkd_snapshot_tag": "\(request.tag)", "from": "\(source)"])
    return try store.info(request.tag)
  }

  /// A `write_file` warm-up step, in as many frames as the guest's agent needs.
  private func warmupWrite(
    _ agent: AgentClient, testGuest: Bool, path: String, content: [UInt8], mode: UInt32
  ) throws {
    let label = "warm-up write_file \(path)"
    let transfer = FileTransfer(
      send: { (r) throws(APIError) in
        do throws(ControlError) {
          return try agent.request(r, timeoutMS: 30_000)
        } catch {
          if error.code == .agent, let agentError = error.cause as? AgentError {
            throw FileTransfer.apiError(agentError, label)
          }
          throw .internalError("\(label): \(error)")
        }
      }, testGuest: testGuest, label: label)
    _ = try transfer.write(path: path, data: content, mode: mode)
  }
}
