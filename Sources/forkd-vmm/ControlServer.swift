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
      let written = SnapshotReply.Written(
        memorySize: result.manifest.memorySize, memoryDataBytes: result.memoryDataBytes,
        stateBytes: result.stateBytes, totalMicroseconds: result.totalNanoseconds / 1000,
        guestImageDigest: result.manifest.guestImageDigest, layerPages: result.layerPages.map { UInt64(clamping: $0) },
        contentDigest: result.manifest.contentDigest)
      return .success(
        SnapshotReply(
          directory: result.directory, pauseMicroseconds: result.pauseNanoseconds / 1000,
          memoryLayer: result.manifest.memoryLayer.rawValue, written: written))
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
      return .success(PauseReply(pauseMicroseconds: (Clock.monotonicNanoseconds() - t0) / 1000))
    case .resume:
      guard machine.exit == nil else { return exited() }
      machine.resume()
      return .success(ResumeReply())
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
          return .success(
            SnapshotReply(
              directory: directory, pauseMicroseconds: job.pauseNanoseconds / 1000,
              memoryLayer: SnapshotManifest.MemoryLayer.full.rawValue, written: nil))
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
        return .success(AttachPagerReply(pagerPID: pid, attachments: UInt64(clamping: pager.attachments)))
      } catch {
        return .failure(code: error.code.rawValue, message: error.description)
      }
    case .stop:
      stopRequested = true
      machine.stop()
      return .success(StopReply())
    }
  }

  private func exited() -> ControlResponse {
    .failure(code: "exited", message: "the VM has ended: \(machine.exit.map { "\($0)" } ?? "unknown")")
  }

  private func status() -> VMStatusReply {
    VMStatusReply(
      state: machine.exit != nil ? .exited : machine.isPaused ? .paused : .running, pid: getpid(),
      memorySize: UInt64(clamping: machine.memory.size), vcpus: machine.config.vcpuCount,
      guestKind: machine.guestKind, guestImageDigest: machine.guestImageDigest, backend: machine.memory.backend.name,
      restoredFrom: machine.restoredFrom,
      pager: pager.map {
        VMStatusReply.Pager(pid: $0.pagerPID, attached: $0.isAttached, policy: $0.policy.rawValue)
      },
      network: machine.networkStatistics.map {
        VMStatusReply.Network(
          rxFrames: $0.rxFrames, txFrames: $0.txFrames, rxDropped: $0.rxDropped, txDropped: $0.txDropped)
      },
      exit: machine.exit.map { "\($0)" })
  }
}
