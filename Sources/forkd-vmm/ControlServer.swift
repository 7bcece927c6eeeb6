import Protocol
import Syscalls
import VMMCore

#if canImport(Glibc)
  import Glibc
#endif

/// The per-VM control socket: newline-delimited JSON requests, one response line each.
final class ControlServer: PollSource {
  private let path: String
  private let listener: FileDescriptor
  private var clients: [FileDescriptor: LineDecoder] = [:]
  private let machine: VirtualMachine
  private let pager: PagerLink?
  /// The snapshot this VM was restored from: diff snapshots are layers over it.
  private let restoredFrom: String?
  /// Live snapshots answered before their copy finished (`wait: false`), by directory.
  private var liveJobs: [String: LiveSnapshotJob] = [:]
  /// Test seam (debug builds only): slows the live copier (microseconds per 64 pages), from
  /// FORKD_TEST_LIVE_COPY_DELAY_US.
  #if FORKD_TEST_SEAMS
    private let liveCopyDelay: UInt32 =
      getenv("FORKD_TEST_LIVE_COPY_DELAY_US").flatMap { UInt32(String(cString: $0)) } ?? 0
  #else
    private let liveCopyDelay: UInt32 = 0
  #endif
  /// Set by `stop`: the process exits after answering.
  private(set) var stopRequested = false

  /// Runs live snapshot copies; created before the seccomp filter (which forbids new threads).
  private let worker: Worker?

  init(path: String, machine: VirtualMachine, pager: PagerLink?, restoredFrom: String?, worker: Worker?)
    throws(VMMError)
  {
    self.worker = worker
    self.path = path
    self.machine = machine
    self.pager = pager
    self.restoredFrom = restoredFrom
    do {
      listener = try UnixSocket.listen(path: path)
      try listener.setNonBlocking()
    } catch {
      throw VMMError(.io, "cannot listen on the control socket \(path)", cause: error)
    }
  }

  private func snapshotOutcome(_ outcome: Result<SnapshotResult, VMMError>) -> ControlResponse {
    switch outcome {
    case .failure(let error):
      return .failure(code: error.code.rawValue, message: error.description)
    case .success(let result):
      var fields: [String: JSONValue] = [
        "dir": .string(result.directory),
        "status": .string("ready"),
        "memory_size": .integer(Int64(result.manifest.memorySize)),
        "memory_data_bytes": .integer(Int64(result.memoryDataBytes)),
        "state_bytes": .integer(Int64(result.stateBytes)),
        "pause_us": .integer(Int64(result.pauseNanoseconds / 1000)),
        "total_us": .integer(Int64(result.totalNanoseconds / 1000)),
        "guest_image_digest": .string(result.manifest.guestImageDigest),
        "memory_layer": .string(result.manifest.memoryLayer.rawValue),
      ]
      if let pages = result.layerPages { fields["layer_pages"] = .integer(Int64(pages)) }
      if let digest = result.manifest.contentDigest { fields["content_digest"] = .string(digest) }
      return .success(fields)
    }
  }

  func close() {
    for fd in clients.keys { fd.close() }
    clients.removeAll()
    listener.close()
    _ = try? FileSystem.unlink(path)
  }

  func pollDescriptors() -> [(FileDescriptor, Poll.Events)] {
    [(listener, .readable)] + clients.keys.map { ($0, .readable) }
  }

  func handle(_ fd: FileDescriptor, _ events: Poll.Events) {
    if fd == listener {
      while let client = try? UnixSocket.accept(listener, nonBlocking: true) { clients[client] = LineDecoder() }
      return
    }
    guard var decoder = clients[fd] else { return }
    var buffer = [UInt8](repeating: 0, count: 4096)
    let n = buffer.withUnsafeMutableBytes { Glibc.read(fd.rawValue, $0.baseAddress, $0.count) }
    if n < 0 && (errno == EAGAIN || errno == EINTR) { return }
    guard n > 0 else {
      drop(fd)
      return
    }
    decoder.feed(buffer[0..<n])
    while true {
      let line: [UInt8]?
      do {
        line = try decoder.next()
      } catch {
        reply(fd, .failure(code: "bad_request", message: error.message))
        drop(fd)
        return
      }
      guard let line else { break }
      let response: ControlResponse
      do {
        response = perform(try ControlCodec.decodeRequest(line))
      } catch {
        response = .failure(code: "bad_request", message: error.message)
      }
      reply(fd, response)
    }
    if clients[fd] != nil { clients[fd] = decoder }
  }

  private func drop(_ fd: FileDescriptor) {
    clients[fd] = nil
    fd.close()
  }

  private func reply(_ fd: FileDescriptor, _ response: ControlResponse) {
    // Responses are small; the client reads them promptly. Switch to blocking for the write.
    try? fd.setNonBlocking(false)
    do { try fd.writeAll(Array(ControlCodec.encode(response).utf8)) } catch { drop(fd) }
    try? fd.setNonBlocking(true)
  }

  private func perform(_ request: ControlRequest) -> ControlResponse {
    switch request {
    case .status:
      return .success(status())
    case .pause:
      guard machine.exit == nil else { return exited() }
      let t0 = Clock.monotonicNanoseconds()
      machine.pause()
      return .success([
        "state": .string("paused"), "pause_us": .integer(Int64((Clock.monotonicNanoseconds() - t0) / 1000)),
      ])
    case .resume:
      guard machine.exit == nil else { return exited() }
      machine.resume()
      return .success(["state": .string("running")])
    case .snapshot(let directory, let parentTag, _, true, let wait):
      guard machine.exit == nil else { return exited() }
      guard let pager, let restoredFrom, let worker else {
        return .failure(
          code: "invalid_config",
          message: "a live snapshot needs a pager-backed VM (restored with --backend uffd); this one has none")
      }
      do {
        let job = try machine.liveSnapshot(
          to: directory, parentTag: parentTag, restoredFrom: restoredFrom, pager: pager, worker: worker,
          copyDelayMicroseconds: liveCopyDelay)
        guard wait else {
          liveJobs[directory] = job
          return .success([
            "dir": .string(directory), "status": .string("writing"),
            "pause_us": .integer(Int64(job.pauseNanoseconds / 1000)), "memory_layer": .string("full"),
          ])
        }
        return snapshotOutcome(job.wait())
      } catch {
        return .failure(code: error.code.rawValue, message: error.description)
      }
    case .snapshotWait(let directory):
      guard let job = liveJobs.removeValue(forKey: directory) else {
        return .failure(code: "not_found", message: "no live snapshot into \(directory) is in progress")
      }
      return snapshotOutcome(job.wait())
    case .snapshot(let directory, let parentTag, let diff, _, _):
      guard machine.exit == nil else { return exited() }
      var mode = SnapshotMode.full
      if diff {
        guard let restoredFrom else {
          return .failure(
            code: "invalid_config", message: "a diff snapshot needs a VM restored from a snapshot; this one was booted")
        }
        mode = .diff(parentDirectory: restoredFrom)
      }
      do {
        let result = try machine.snapshot(to: directory, parentTag: parentTag, mode: mode, restoredFrom: restoredFrom)
        return snapshotOutcome(.success(result))
      } catch {
        return .failure(code: error.code.rawValue, message: error.description)
      }
    case .attachPager(let socket):
      guard machine.exit == nil else { return exited() }
      guard let pager else { return .failure(code: "invalid_config", message: "this VM has no pager (backend file)") }
      do {
        let pid = try pager.attach(socketPath: socket)
        // Faults the dead pager had read but not served are raised again for the new one.
        machine.kickVCPUs()
        return .success(["pager_pid": .integer(Int64(pid)), "attachments": .integer(Int64(pager.attachments))])
      } catch {
        return .failure(code: error.code.rawValue, message: error.description)
      }
    case .stop:
      stopRequested = true
      machine.stop()
      return .success(["state": .string("stopping")])
    }
  }

  private func exited() -> ControlResponse {
    .failure(code: "exited", message: "the VM has ended: \(machine.exit.map { "\($0)" } ?? "unknown")")
  }

  private func status() -> [String: JSONValue] {
    var result: [String: JSONValue] = [
      "state": .string(machine.exit != nil ? "exited" : machine.isPaused ? "paused" : "running"),
      "pid": .integer(Int64(getpid())),
      "memory_size": .integer(Int64(machine.memory.size)),
      "vcpus": .integer(Int64(machine.config.vcpuCount)),
      "guest_kind": .string(machine.guestKind),
      "guest_image_digest": .string(machine.guestImageDigest),
      "backend": .string(machine.memory.backend.name),
    ]
    if let from = machine.restoredFrom { result["restored_from"] = .string(from) }
    if let pager {
      result["pager_pid"] = .integer(Int64(pager.pagerPID))
      result["pager_attached"] = .bool(pager.isAttached)
      result["pager_policy"] = .string(pager.policy.rawValue)
    }
    if let net = machine.networkStatistics {
      result["net"] = .object([
        "rx_frames": .integer(Int64(clamping: net.rxFrames)), "tx_frames": .integer(Int64(clamping: net.txFrames)),
        "rx_dropped": .integer(Int64(clamping: net.rxDropped)),
        "tx_dropped": .integer(Int64(clamping: net.txDropped)),
      ])
    }
    if let exit = machine.exit { result["exit"] = .string("\(exit)") }
    return result
  }
}
