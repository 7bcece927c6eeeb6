import Logging
import Protocol
import Syscalls
import VMMControl

/// POST /v1/snapshots: boot a parent, warm it with agent commands, snapshot it, stop it.
struct SnapshotCreator {
  let store: SnapshotStore
  let config: SupervisorConfig
  let logger: Logger

  func create(_ request: CreateSnapshotRequest) throws(APIError) -> SnapshotInfo {
    if request.kernel != nil || request.rootfs != nil {
      throw .badRequest("kernel/rootfs snapshots need Linux guest support, which this build does not have; use image")
    }
    let image = request.image ?? "builtin:test-guest"
    if image != "builtin:test-guest" && !FileSystem.exists(image) {
      throw .badRequest("image \(image) does not exist")
    }
    try store.reserve(request.tag, existsStatus: 400)
    defer { store.release(request.tag) }
    let runDirectory = config.runDirectory + "/parents/" + request.tag + "-" + randomHex(4)
    let parent: VMMProcess
    do {
      parent = try VMMProcess.launch(
        .boot(image: image, memoryMiB: request.memoryMiB, vcpus: 1), runDirectory: runDirectory)
    } catch {
      throw .internalError("cannot boot the parent of \(request.tag): \(error)")
    }
    defer { parent.stop() }
    do {
      let agent = try parent.agent(timeoutMS: Int(request.bootWaitSeconds) * 1000 + 1000)
      _ = try agent.ping()
      for step in request.warmup { _ = try agent.request(step.agentRequest, timeoutMS: 300_000) }
      try parent.control().call(.snapshot(directory: store.path(request.tag), parentTag: nil), timeoutMS: 120_000)
    } catch {
      throw .internalError("warming or snapshotting the parent of \(request.tag) failed: \(error)")
    }
    logger.info("snapshot created", metadata: ["forkd_snapshot_tag": "\(request.tag)", "image": "\(image)"])
    return try store.info(request.tag)
  }
}
