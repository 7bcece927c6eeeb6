import Protocol
import SnapshotStorage
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// Set when a page's data could not be had (a lazily pulled chunk that was not fetched): the
/// pager then exits with `PagerHandshake.memoryUnavailableStatus`.
nonisolated(unsafe) var lazyChunkFailure: String?

/// The fault-serving state of one VM's userfaultfd: its regions, the pages it has seen, its
/// queued faults, its prefetch list and its stats. A per-child pager has one; a shared pager one
/// per VM, all driven by the same `PageServer` loop.
final class PagerSession {
  let session: Session
  private(set) var stats = FaultStats()

  private struct Region {
    let host: UInt64
    let size: UInt64
    let filePage: Int
  }
  private let regions: [Region]
  /// Pages the VM discarded (EVENT_REMOVE): they read as zero from now on.
  private var removed: PageBitmap
  /// Pages already faulted, and in which order (the working-set record).
  private var seen: PageBitmap
  private var order: [UInt64] = []
  private var distinctFaultedPages = 0
  private let recorder: WorkingSetRecorder?
  /// Pages still to copy ahead of the guest (working-set prefetch), in order.
  private var prefetch: ArraySlice<UInt64>
  private var prefetchStarted: UInt64 = 0
  private var pendingFaults: [(address: UInt64, minor: Bool)] = []
  private let minorMode: Bool
  private(set) var vmGone = false
  /// The VM reads the uffd itself (a live snapshot): no fault is read or prefetched meanwhile.
  private(set) var suspended = false
  private(set) var exitReason = ""

  init(session: Session, recorder: WorkingSetRecorder?, prefetch: [UInt64]) {
    self.session = session
    self.recorder = recorder
    regions = session.hello.regions.map {
      Region(host: $0.hostVirtualAddress, size: $0.size, filePage: Int($0.fileOffset / 4096))
    }
    let pages = Int((session.source.size + 4095) / 4096)
    removed = PageBitmap(pages: pages)
    seen = PageBitmap(pages: pages)
    self.prefetch = prefetch.filter { Int($0) < pages }[...]
    minorMode = session.hello.memory.mode == .minor
  }

  /// The file page index and host address of the page containing `address`.
  @inline(__always)
  private func locate(_ address: UInt64) -> (filePage: Int, host: UInt64)? {
    for region in regions where address >= region.host && address < region.host + region.size {
      let offset = (address - region.host) & ~4095
      return (region.filePage + Int(offset / 4096), region.host + offset)
    }
    return nil
  }

  private func hostAddress(ofFilePage page: Int) -> UInt64? {
    for region in regions where page >= region.filePage && page < region.filePage + Int(region.size / 4096) {
      return region.host + UInt64(page - region.filePage) * 4096
    }
    return nil
  }

  enum Outcome { case served, retryAfterEvents, vmGone }

  /// Maps one page into the VM. Copy mode: its data from the memory source, or a zero page for a
  /// hole or a removed page. Minor mode: the page-cache page (UFFDIO_CONTINUE) when the page
  /// exists in the shmem image, else a zero page. `minorFault` is the fault's kind (nil for
  /// prefetch); `wake: false` is used for prefetch batches (one UFFDIO_WAKE at the end).
  private func populate(filePage page: Int, host: UInt64, minorFault: Bool?, wake: Bool) -> Outcome {
    let uffd = session.uffd
    do {
      if minorMode {
        if minorFault ?? session.source.hasData(page) {
          _ = try uffd.continue(at: host, length: 4096, wake: wake)
          stats.continues += 1
        } else {
          _ = try uffd.zeroPage(at: host, length: 4096, wake: wake)
          stats.zeroPages += 1
        }
      } else if removed.contains(page) || !session.source.hasData(page) {
        _ = try uffd.zeroPage(at: host, length: 4096, wake: wake)
        stats.zeroPages += 1
      } else {
        guard let source = session.source.page(page) else {
          // A lazily pulled chunk that did not arrive: this child cannot go on (its siblings
          // that do not need the chunk are not affected).
          lazyChunkFailure = "cannot serve page \(page): \(session.source.failure ?? "no data")"
          writeLog("pager: \(lazyChunkFailure ?? "")")
          return .vmGone
        }
        _ = try uffd.copy(to: host, from: source, length: 4096, wake: wake)
        stats.copies += 1
        stats.bytesCopied += 4096
      }
      return .served
    } catch {
      switch error.errno.rawValue {
      case EEXIST:
        // Mapped already (prefetch got there first, or a racing fault): make sure nobody sleeps on it.
        stats.alreadyMapped += 1
        try? uffd.wake(start: host, length: 4096)
        return .served
      case EAGAIN:
        // The kernel has queued events (REMOVE/UNMAP) that must be read before any ioctl works.
        stats.retriesAfterEvents += 1
        return .retryAfterEvents
      case ESRCH, ENOENT, EBADF:
        return .vmGone
      default:
        writeLog("pager: cannot resolve the fault at 0x\(String(host, radix: 16)): \(error)")
        return .vmGone
      }
    }
  }

  private func serveFault(_ address: UInt64, minor: Bool) -> Outcome {
    let started = Clock.monotonicNanoseconds()
    guard let (page, host) = locate(address) else {
      writeLog("pager: fault at 0x\(String(address, radix: 16)) outside every region; ignored")
      return .served
    }
    let outcome = populate(filePage: page, host: host, minorFault: minor, wake: true)
    if outcome == .served {
      stats.record(serviceNanoseconds: Clock.monotonicNanoseconds() - started)
      if !seen.contains(page) {
        seen.insert(page)
        distinctFaultedPages += 1
        if recorder != nil { order.append(UInt64(page)) }
      }
    }
    return outcome
  }

  /// Reads every queued event; non-fault events are applied at once, faults are queued.
  func drainEvents() {
    while true {
      let events: [Userfault.Event]?
      do {
        events = try session.uffd.readEvents()
      } catch {
        vmGone = true
        exitReason = "reading the userfaultfd failed: \(error)"
        return
      }
      guard let events else {
        vmGone = true
        exitReason = "the userfaultfd reached EOF"
        return
      }
      if events.isEmpty { return }
      for event in events {
        switch event {
        case .pageFault(let address, _, _, let minor, _):
          if stats.faults == 0 { KillPoint.reached("first-fault") }
          stats.faults += 1
          if minor { stats.minorFaults += 1 }
          pendingFaults.append((address, minor))
        case .remove(let start, let end):
          stats.removeEvents += 1
          markRemoved(start, end)
        case .unmap(let start, let end):
          stats.unmapEvents += 1
          markRemoved(start, end)
        default:
          break
        }
      }
    }
  }

  private func markRemoved(_ start: UInt64, _ end: UInt64) {
    var address = start & ~4095
    while address < end {
      if let (page, _) = locate(address) { removed.insert(page) }
      address += 4096
    }
  }

  func servePending() {
    var index = 0
    while index < pendingFaults.count {
      switch serveFault(pendingFaults[index].address, minor: pendingFaults[index].minor) {
      case .served:
        index += 1
      case .retryAfterEvents:
        pendingFaults.removeFirst(index)
        return
      case .vmGone:
        vmGone = true
        exitReason = lazyChunkFailure ?? "the VM's memory is gone"
        pendingFaults.removeAll()
        return
      }
    }
    pendingFaults.removeAll(keepingCapacity: true)
  }

  /// Copies the next batch of the recorded working set ahead of the guest (DONTWAKE), then one
  /// wake over every region so a vCPU that faulted on one of them meanwhile continues.
  func prefetchBatch(_ count: Int = 64) {
    if prefetchStarted == 0 { prefetchStarted = Clock.monotonicNanoseconds() }
    var done = 0
    while done < count, let page = prefetch.popFirst() {
      guard let host = hostAddress(ofFilePage: Int(page)), !seen.contains(Int(page)) else { continue }
      switch populate(filePage: Int(page), host: host, minorFault: nil, wake: false) {
      case .served:
        seen.insert(Int(page))
        stats.prefetchedPages += 1
        done += 1
      case .retryAfterEvents:
        prefetch.insert(page, at: prefetch.startIndex)
        return
      case .vmGone:
        vmGone = true
        return
      }
    }
    for region in regions { try? session.uffd.wake(start: region.host, length: region.size) }
    if prefetch.isEmpty { stats.prefetchNanoseconds = Clock.monotonicNanoseconds() - prefetchStarted }
  }

  /// Whether the loop should poll without sleeping: faults read but not served, or prefetch left.
  var busy: Bool { !vmGone && !suspended && (!pendingFaults.isEmpty || !prefetch.isEmpty) }
  var hasPendingFaults: Bool { !pendingFaults.isEmpty }
  var hasPrefetch: Bool { !prefetch.isEmpty }

  /// One turn for this VM, given what poll said about its uffd and its VM socket.
  func step(uffdReadable: Bool, vmReadable: Bool) {
    if !suspended && (uffdReadable || !pendingFaults.isEmpty) {
      drainEvents()
      servePending()
    }
    if vmReadable && !vmGone { handleVMCommand() }
    if !vmGone && !suspended && !uffdReadable && pendingFaults.isEmpty && !prefetch.isEmpty { prefetchBatch() }
  }

  /// Closes this VM's descriptors (a shared pager outlives its VMs).
  func close() {
    session.uffd.fd.close()
    session.vmSocket.close()
  }

  /// A byte from the VM: suspend/resume (live snapshots), or end of file when the VM is gone.
  func handleVMCommand() {
    var byte: UInt8 = 0
    guard Glibc.read(session.vmSocket.rawValue, &byte, 1) == 1 else {
      vmGone = true
      exitReason = "the VM closed its pager connection"
      return
    }
    switch byte {
    case PagerHandshake.suspendCommand:
      // Faults already read are served first: the VM must not wait for a fault nobody reads.
      var rounds = 0
      while !pendingFaults.isEmpty && rounds < 1000 {
        drainEvents()
        servePending()
        rounds += 1
      }
      suspended = true
      var ack = PagerHandshake.suspendCommand
      _ = Glibc.write(session.vmSocket.rawValue, &ack, 1)
      KillPoint.reached("suspended")
    case PagerHandshake.resumeCommand:
      suspended = false
    default:
      writeLog("pager: unknown command byte 0x\(String(byte, radix: 16)) from the VM; ignored")
    }
  }

  func saveWorkingSet() -> Int? {
    guard let recorder else { return nil }
    return recorder.save(WorkingSet(pages: order))
  }

  func statsJSON() -> JSONValue {
    guard case .object(var o) = stats.json else { return stats.json }
    o["pid"] = .integer(Int64(getpid()))
    o["vm_pid"] = .integer(Int64(session.hello.vmPID))
    o["data_pages_in_source"] = .integer(Int64(session.source.dataPageCount))
    o["distinct_pages_faulted"] = .integer(Int64(distinctFaultedPages))
    if jailNanoseconds > 0 { o["jail_ns"] = .integer(Int64(jailNanoseconds)) }
    return .object(o)
  }

  var distinctPagesFaulted: Int { distinctFaultedPages }
}

/// Writes the working-set record beside the snapshot: into a file opened before the seccomp
/// filter (the pager may not open files afterwards), then renamed into place — by the pager, or,
/// for a jailed pager (`renames: false`, the snapshot directory is outside its cell), by its
/// owner once the pager has ended (`<path>.tmp-<pid>`).
final class WorkingSetRecorder {
  let path: String
  private let staging: String
  private let fd: FileDescriptor
  private let renames: Bool

  init(path: String, renames: Bool) throws(SyscallError) {
    self.path = path
    self.renames = renames
    staging = path + ".tmp-\(getpid())"
    fd = try FileDescriptor.open(staging, [.writeOnly, .create, .exclusive], mode: 0o600)
  }

  /// Returns the number of pages written, nil on failure.
  func save(_ set: WorkingSet) -> Int? {
    do {
      let bytes = set.serialized()
      try fd.truncate(to: 0)
      try fd.pwriteAll(bytes, at: 0)
      try fd.sync()
      if renames { try FileSystem.rename(staging, to: path) }
      return set.pages.count
    } catch {
      writeLog("pager: cannot save the working set to \(path): \(error)")
      return nil
    }
  }
}

func writeLog(_ text: String) {
  try? FileDescriptor(rawValue: 2).writeAll(Array((text + "\n").utf8))
}
