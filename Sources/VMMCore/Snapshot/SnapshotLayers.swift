import Protocol
import SnapshotStorage
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

extension VMMError {
  /// The same failure in the VMM's terms (codes map one to one).
  init(_ error: SnapshotStorageError) {
    let code: Code =
      switch error.code {
      case .invalidSnapshot: .invalidSnapshot
      case .snapshotExists: .snapshotExists
      case .io: .io
      }
    self.init(code, error.message, cause: error.cause)
  }
}

/// What a snapshot captures of guest memory.
public enum SnapshotMode: Sendable, Equatable {
  /// Every page (zero pages stay holes).
  case full
  /// Only the pages this VM changed since it was restored from `parentDirectory`: a layer over
  /// that snapshot, which must stay (children of the layer read every other page from it).
  case diff(parentDirectory: String)
}

/// The pages a restored VM holds privately, read from /proc/self/pagemap: no tracking while the
/// guest runs and no hashing of memory. For file and shmem mappings (MAP_PRIVATE) a page that
/// is no longer the file's page was written by the guest or a device: exact. For anonymous
/// memory filled by a pager every touched page is private, so the set also holds pages that
/// were only read (a superset: correct, and still proportional to what the child touched).
enum DirtyPages {
  /// Every private page of guest memory (one pass over the pagemap).
  static func scan(_ memory: GuestMemory) throws(VMMError) -> PageIndex {
    var index = PageIndex(pageCount: Int(memory.size / GuestMemory.pageSize))
    try Pagemap().forEachPrivatePage(of: memory, in: 0..<index.pageCount) { index.insert($0) }
    return index
  }
}

/// /proc/self/pagemap, opened once and read in chunks (a live copy asks per 64 pages).
final class Pagemap {
  static let present: UInt64 = 1 << 63
  static let swapped: UInt64 = 1 << 62
  static let filePage: UInt64 = 1 << 61
  private static let chunk = 8192

  private let fd: FileDescriptor
  /// False for the descriptor opened before the jail (SnapshotSources): shared, never closed.
  private let ownsFD: Bool
  private let entries = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: Pagemap.chunk)

  init() throws(VMMError) {
    if let prepared = SnapshotSources.prepared {
      fd = prepared.pagemap
      ownsFD = false
      return
    }
    do {
      fd = try FileDescriptor.open("/proc/self/pagemap", .readOnly)
      ownsFD = true
    } catch {
      entries.deallocate()
      throw VMMError(.io, "cannot read /proc/self/pagemap to find the pages this VM changed", cause: error)
    }
  }

  deinit {
    if ownsFD { fd.close() }
    entries.deallocate()
  }

  /// Calls `body` with the file page number of every private page among `wanted`.
  func forEachPrivatePage(of memory: GuestMemory, in wanted: Range<Int>, _ body: (Int) -> Void) throws(VMMError) {
    let pageSize = Int(GuestMemory.pageSize)
    for region in memory.regions {
      let firstVirtualPage = Int(bitPattern: region.host) / pageSize
      let firstFilePage = Int(region.fileOffset) / pageSize
      let range = wanted.clamped(to: firstFilePage..<(firstFilePage + Int(region.size) / pageSize))
      var done = range.lowerBound
      while done < range.upperBound {
        let count = min(Pagemap.chunk, range.upperBound - done)
        let bytes = UnsafeMutableRawBufferPointer(start: entries.baseAddress, count: count * 8)
        do {
          let read = try fd.pread(into: bytes, at: Int64(firstVirtualPage + done - firstFilePage) * 8)
          guard read == count * 8 else { throw SyscallError("pread", .invalid, detail: "short pagemap read") }
        } catch {
          throw VMMError(.io, "cannot read /proc/self/pagemap", cause: error)
        }
        for i in 0..<count {
          let entry = entries[i]
          let privateCopy =
            (entry & Pagemap.present != 0 && entry & Pagemap.filePage == 0) || entry & Pagemap.swapped != 0
          if privateCopy { body(done + i) }
        }
        done += count
      }
    }
  }
}

extension VirtualMachine {
  /// Writes the pages of `index` into a sparse memory.bin of the full logical size; zero pages
  /// stay holes (the index still says they belong to this layer). Returns the data bytes.
  func writeDiffMemory(_ index: PageIndex, to path: String) throws(VMMError) -> UInt64 {
    do {
      let fd = try FileDescriptor.open(path, [.writeOnly, .create, .exclusive], mode: 0o600)
      defer { fd.close() }
      try fd.truncate(to: Int64(memory.size))
      let page = Int(GuestMemory.pageSize)
      var written: UInt64 = 0
      for filePage in index.pages {
        guard let host = memory.hostAddress(ofFilePage: filePage) else { continue }
        if isZeroPage(host) { continue }
        try fd.pwriteAll(UnsafeRawBufferPointer(start: host, count: page), at: Int64(filePage * page))
        written += UInt64(page)
      }
      return written
    } catch {
      throw VMMError(.io, "\(path): cannot write the diff layer", cause: error)
    }
  }
}

extension VirtualMachine {
  /// A full memory.bin of a pager-backed VM: the pages it touched from its memory, every other
  /// page from the snapshot it was restored from (never faulted in through the pager).
  func writeMemory(to path: String, over origin: ChainImage, touched: PageIndex) throws(VMMError) -> UInt64 {
    do {
      let fd = try FileDescriptor.open(path, [.writeOnly, .create, .exclusive], mode: 0o600)
      defer { fd.close() }
      try fd.truncate(to: Int64(memory.size))
      var written: UInt64 = 0
      for page in 0..<touched.pageCount {
        let source: UnsafeRawPointer?
        if touched.contains(page) {
          source = memory.hostAddress(ofFilePage: page).map { UnsafeRawPointer($0) }
        } else {
          source = origin.page(page)
        }
        guard let source, !isZeroPage(source) else { continue }
        try fd.pwriteAll(UnsafeRawBufferPointer(start: source, count: 4096), at: Int64(page) * 4096)
        written += 4096
      }
      return written
    } catch {
      throw VMMError(.io, "\(path): cannot write guest memory", cause: error)
    }
  }

  /// The pages of `candidates` whose content differs from `origin`.
  func changedPages(_ candidates: PageIndex, comparedTo origin: ChainImage) -> PageIndex {
    var changed = PageIndex(pageCount: candidates.pageCount)
    for page in candidates.pages {
      guard let host = memory.hostAddress(ofFilePage: page) else { continue }
      let differs: Bool
      if let before = origin.page(page) {
        differs = memcmp(host, before, 4096) != 0
      } else {
        differs = !isZeroPage(host)
      }
      if differs { changed.insert(page) }
    }
    return changed
  }
}

extension GuestMemory {
  /// The host address of the page at `filePage` of memory.bin.
  func hostAddress(ofFilePage filePage: Int) -> UnsafeMutableRawPointer? {
    let offset = UInt64(filePage) * GuestMemory.pageSize
    for region in regions where offset >= region.fileOffset && offset < region.fileOffset + region.size {
      return region.host + Int(offset - region.fileOffset)
    }
    return nil
  }
}

func isZeroPage(_ page: UnsafeRawPointer) -> Bool {
  let words = page.assumingMemoryBound(to: UInt64.self)
  for i in 0..<512 where words[i] != 0 { return false }
  return true
}
