import Protocol
import SnapshotStorage
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// A live snapshot in progress: the guest runs again while its memory as of the pause is copied.
public final class LiveSnapshotJob: @unchecked Sendable {
  public let directory: String
  /// How long the guest was paused: vCPU and device state, the page scan, arming protection.
  public let pauseNanoseconds: UInt64
  private let lock = ConditionLock()
  private var outcome: Result<SnapshotResult, VMMError>?

  init(directory: String, pauseNanoseconds: UInt64) {
    self.directory = directory
    self.pauseNanoseconds = pauseNanoseconds
  }

  func finish(_ result: Result<SnapshotResult, VMMError>) {
    lock.withLock {
      outcome = result
      lock.broadcast()
    }
  }

  public var isDone: Bool { lock.withLock { outcome != nil } }

  /// Blocks until the copy is complete and the snapshot renamed into place (or failed).
  public func wait() -> Result<SnapshotResult, VMMError> {
    lock.withLock {
      while outcome == nil { lock.wait() }
      return outcome!
    }
  }
}

extension VirtualMachine {
  /// Snapshots a pager-backed VM with the guest paused only to capture vCPU and device state
  /// and write-protect its memory. The VM then takes the uffd over from its pager: a write to a
  /// page not copied yet raises a write-protect fault and the page is saved before the write
  /// lands; pages the VM never touched come from the snapshot it was restored from. When every
  /// page is saved the pager gets the uffd back and the snapshot is renamed into place.
  /// The copy runs on `worker` (created before the seccomp filter, which forbids new threads).
  /// `copyDelayMicroseconds` slows the copier per 64 pages (a test seam).
  public func liveSnapshot(
    to directory: String, parentTag: String?, restoredFrom: String, pager: PagerLink, worker: Worker,
    copyDelayMicroseconds: UInt32 = 0
  ) throws(VMMError) -> LiveSnapshotJob {
    let started = Clock.monotonicNanoseconds()
    guard !FileSystem.exists(directory) else {
      throw VMMError(.snapshotExists, "\(directory) already exists: a snapshot is never overwritten")
    }
    let parent = parentDirectory(of: directory)
    guard FileSystem.isDirectory(parent) else {
      throw VMMError(.invalidConfig, "\(parent): the snapshot's parent directory does not exist")
    }
    guard !isPaused else { throw VMMError(.invalidConfig, "a live snapshot needs a running VM; this one is paused") }
    let origin: ChainImage
    if let prepared = try SnapshotSources.origin(of: restoredFrom) {
      origin = prepared
    } else {
      do {
        origin = try ChainImage(chain: SnapshotChain.load(top: restoredFrom))
      } catch {
        throw VMMError(error)
      }
    }
    // Opened before the pause: the copier reads it per chunk while the guest runs.
    let pagemap = try Pagemap()
    let staging = "\(directory).staging-\(getpid())-\(started)"
    do {
      try FileSystem.makeDirectory(staging, mode: 0o700)
    } catch {
      throw VMMError(.io, "cannot create the staging directory \(staging)", cause: error)
    }
    let memoryPath = staging + "/" + SnapshotManifest.defaultMemoryFile
    let memoryFile: FileDescriptor
    do {
      memoryFile = try FileDescriptor.open(memoryPath, [.readWrite, .create, .exclusive], mode: 0o600)
      try memoryFile.truncate(to: Int64(memory.size))
    } catch {
      FileSystem.removeTree(staging)
      throw VMMError(.io, "\(memoryPath): cannot create", cause: error)
    }

    pause()
    let pausedAt = Clock.monotonicNanoseconds()
    var armed = false
    var suspended = false
    let stateBytes: [UInt8]
    do throws(VMMError) {
      stateBytes = try captureStateFile(staging: staging).serialized()
      try pager.suspendPager()
      suspended = true
      armed = true  // from here a failure unprotects (harmless for regions not protected yet)
      for region in memory.regions {
        do {
          try pager.uffd.writeProtect(start: UInt64(UInt(bitPattern: region.host)), length: region.size, protect: true)
        } catch {
          throw VMMError(.guestMemory, "cannot write-protect guest memory", cause: error)
        }
      }
    } catch {
      // A failed branch never leaves the source paused or its pager suspended.
      if armed { unprotectAll(pager) }
      if suspended { pager.resumePager() }
      resume()
      memoryFile.close()
      FileSystem.removeTree(staging)
      throw error
    }
    KillPoint.reached("snapshot-staging")
    let copier = LiveCopier(
      machine: self, pager: pager, origin: origin, file: memoryFile, pagemap: pagemap,
      delayMicroseconds: copyDelayMicroseconds)
    let pauseNanoseconds = Clock.monotonicNanoseconds() - pausedAt
    let job = LiveSnapshotJob(directory: directory, pauseNanoseconds: pauseNanoseconds)
    let manifestBase = (memorySize: memory.size, vcpus: config.vcpuCount, kind: guestKind, image: guestImageDigest)
    worker.submit { [self] in
      let copied = copier.run()
      unprotectAll(pager)
      pager.resumePager()
      memoryFile.close()
      let result: Result<SnapshotResult, VMMError>
      do throws(VMMError) {
        let dataBytes = try copied.get()
        try syncFile(memoryPath)
        try writeFile(staging + "/" + SnapshotManifest.defaultStateFile, stateBytes)
        let manifest = SnapshotManifest(
          memorySize: manifestBase.memorySize, vcpuCount: manifestBase.vcpus, guestKind: manifestBase.kind,
          guestImageDigest: manifestBase.image, createdAtUnix: Clock.unixSeconds(), parentTag: parentTag,
          stateDigest: SHA256.digestString(of: stateBytes),
          contentDigest: try layerDigest(memoryPath, nil))
        try writeFile(staging + "/manifest.json", Array(manifest.jsonText().utf8))
        try publish(staging, as: directory)
        result = .success(
          SnapshotResult(
            directory: directory, manifest: manifest, memoryDataBytes: dataBytes,
            stateBytes: UInt64(stateBytes.count), layerPages: nil, pauseNanoseconds: pauseNanoseconds,
            totalNanoseconds: Clock.monotonicNanoseconds() - started))
      } catch {
        FileSystem.removeTree(staging)
        result = .failure(error)
      }
      job.finish(result)
    }
    resume()
    return job
  }

  private func unprotectAll(_ pager: PagerLink) {
    for region in memory.regions {
      try? pager.uffd.writeProtect(start: UInt64(UInt(bitPattern: region.host)), length: region.size, protect: false)
    }
  }

  private func syncFile(_ path: String) throws(VMMError) {
    do {
      let fd = try FileDescriptor.open(path, .readOnly)
      defer { fd.close() }
      try fd.sync()
    } catch {
      throw VMMError(.io, "\(path): cannot sync", cause: error)
    }
  }
}

/// The copier of a live snapshot: reads the uffd (the pager is suspended) and memory.bin
/// gets each page as it was at the pause — from guest memory while the page is still
/// write-protected, or from the origin snapshot for pages the VM does not hold. Which pages the
/// VM holds is read per chunk (not during the pause): a page populated since the pause was
/// populated by this copier, from the origin and write-protected, so either way a held,
/// unsaved page still has its content of the pause.
final class LiveCopier: @unchecked Sendable {
  private let machine: VirtualMachine
  private let pager: PagerLink
  private let origin: ChainImage
  private let file: FileDescriptor
  private let pagemap: Pagemap
  private let pageCount: Int
  private let zeroPage: UnsafeMutableRawPointer
  private let delayMicroseconds: UInt32
  private var saved: PageIndex
  private var dataBytes: UInt64 = 0

  init(
    machine: VirtualMachine, pager: PagerLink, origin: ChainImage, file: FileDescriptor, pagemap: Pagemap,
    delayMicroseconds: UInt32
  ) {
    self.pagemap = pagemap
    self.machine = machine
    self.pager = pager
    self.origin = origin
    self.file = file
    self.delayMicroseconds = delayMicroseconds
    pageCount = Int(machine.memory.size / GuestMemory.pageSize)
    saved = PageIndex(pageCount: pageCount)
    zeroPage = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
    zeroPage.initializeMemory(as: UInt8.self, repeating: 0, count: 4096)
  }

  deinit { zeroPage.deallocate() }

  func run() -> Result<UInt64, VMMError> {
    let chunk = 64
    var next = 0
    do throws(VMMError) {
      while next < pageCount {
        try serveEvents()
        let end = min(next + chunk, pageCount)
        var held = [Bool](repeating: false, count: end - next)
        try pagemap.forEachPrivatePage(of: machine.memory, in: next..<end) { held[$0 - next] = true }
        for page in next..<end { try save(page, held: held[page - next]) }
        // Saved: the guest may write these pages freely from now on.
        if let host = machine.memory.hostAddress(ofFilePage: next) {
          try? pager.uffd.writeProtect(
            start: UInt64(UInt(bitPattern: host)), length: UInt64(end - next) * 4096, protect: false, wake: true)
        }
        if next == 0 { KillPoint.reached("live-copy") }
        next = end
        if delayMicroseconds > 0 { usleep(delayMicroseconds) }
      }
      try serveEvents()
      return .success(dataBytes)
    } catch {
      return .failure(error)
    }
  }

  /// Writes `page` as it was at the pause, once. `held`: the VM's memory has the page.
  private func save(_ page: Int, held: Bool) throws(VMMError) {
    guard !saved.contains(page) else { return }
    saved.insert(page)
    let source: UnsafeRawPointer?
    if held {
      source = machine.memory.hostAddress(ofFilePage: page).map { UnsafeRawPointer($0) }
    } else {
      source = origin.page(page)
    }
    guard let source, !isZeroPage(source) else { return }
    do {
      try file.pwriteAll(UnsafeRawBufferPointer(start: source, count: 4096), at: Int64(page) * 4096)
    } catch {
      throw VMMError(.io, "cannot write page \(page) of the live snapshot", cause: error)
    }
    dataBytes += 4096
  }

  /// Faults the VM raised while the copy runs: a write to a protected page saves it first; a
  /// first touch of a page the VM never had is served from the origin snapshot.
  private func serveEvents() throws(VMMError) {
    let uffd = pager.uffd
    while true {
      let events: [Userfault.Event]
      do {
        guard let read = try uffd.readEvents() else { return }
        events = read
      } catch {
        throw VMMError(.guestMemory, "cannot read the userfaultfd during a live snapshot", cause: error)
      }
      if events.isEmpty { return }
      for event in events {
        guard case .pageFault(let address, _, let writeProtect, _, _) = event else { continue }
        let pageAddress = address & ~4095
        guard let page = filePage(of: pageAddress) else { continue }
        if writeProtect {
          // Only held pages are protected.
          try save(page, held: true)
          try? uffd.writeProtect(start: pageAddress, length: 4096, protect: false, wake: true)
        } else {
          // First touch: the origin's page, kept write-protected until the copier saved it
          // (a zero page is copied rather than mapped: UFFDIO_ZEROPAGE cannot keep protection).
          let data = origin.page(page) ?? UnsafeRawPointer(zeroPage)
          _ = try? uffd.copy(to: pageAddress, from: data, length: 4096, wake: true, writeProtect: !saved.contains(page))
        }
      }
    }
  }

  private func filePage(of address: UInt64) -> Int? {
    for region in machine.memory.regions {
      let start = UInt64(UInt(bitPattern: region.host))
      if address >= start && address < start + region.size {
        return Int((region.fileOffset + address - start) / 4096)
      }
    }
    return nil
  }
}
