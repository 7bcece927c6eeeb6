import Protocol
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

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
  static let present: UInt64 = 1 << 63
  static let swapped: UInt64 = 1 << 62
  static let filePage: UInt64 = 1 << 61

  static func scan(_ memory: GuestMemory) throws(VMMError) -> PageIndex {
    let pageSize = Int(GuestMemory.pageSize)
    var index = PageIndex(pageCount: Int(memory.size) / pageSize)
    let pagemap: FileDescriptor
    do {
      pagemap = try FileDescriptor.open("/proc/self/pagemap", .readOnly)
    } catch {
      throw VMMError(.io, "cannot read /proc/self/pagemap to find the pages this VM changed", cause: error)
    }
    defer { pagemap.close() }
    let chunk = 8192
    let entries = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: chunk)
    defer { entries.deallocate() }
    for region in memory.regions {
      let firstVirtualPage = Int(bitPattern: region.host) / pageSize
      let regionPages = Int(region.size) / pageSize
      let firstFilePage = Int(region.fileOffset) / pageSize
      var done = 0
      while done < regionPages {
        let count = min(chunk, regionPages - done)
        let bytes = UnsafeMutableRawBufferPointer(start: entries.baseAddress, count: count * 8)
        do {
          let read = try pagemap.pread(into: bytes, at: Int64(firstVirtualPage + done) * 8)
          guard read == count * 8 else { throw SyscallError("pread", .invalid, detail: "short pagemap read") }
        } catch {
          throw VMMError(.io, "cannot read /proc/self/pagemap", cause: error)
        }
        for i in 0..<count {
          let entry = entries[i]
          let privateCopy = (entry & present != 0 && entry & filePage == 0) || entry & swapped != 0
          if privateCopy { index.insert(firstFilePage + done + i) }
        }
        done += count
      }
    }
    return index
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

private func isZeroPage(_ page: UnsafeRawPointer) -> Bool {
  let words = page.assumingMemoryBound(to: UInt64.self)
  for i in 0..<512 where words[i] != 0 { return false }
  return true
}

/// The content digest of one memory layer, computed once from the written file (after the
/// guest resumed): SHA-256 over each page the layer holds with data, as its page number (u64
/// little-endian) followed by its 4096 bytes. For a full layer those are the non-hole pages;
/// for a diff layer the pages of its index.
public enum LayerDigest {
  public static func compute(memoryPath: String, index: PageIndex?) throws(VMMError) -> String {
    do {
      let fd = try FileDescriptor.open(memoryPath, .readOnly)
      defer { fd.close() }
      let size = try fd.size()
      var hasher = SHA256()
      let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
      defer { buffer.deallocate() }
      func hashPages(_ first: Int, _ count: Int) throws(SyscallError) {
        var page = first
        while page < first + count {
          let n = min(count - (page - first), buffer.count / 4096)
          let chunk = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n * 4096])
          let read = try fd.pread(into: chunk, at: Int64(page) * 4096)
          guard read == chunk.count else { throw SyscallError("pread", .invalid, detail: "short read") }
          for i in 0..<n {
            var number = UInt64(page + i).littleEndian
            withUnsafeBytes(of: &number) { hasher.update($0) }
            hasher.update(UnsafeRawBufferPointer(rebasing: chunk[i * 4096..<(i + 1) * 4096]))
          }
          page += n
        }
      }
      if let index {
        var runStart = -1
        var runLength = 0
        for page in index.pages {
          if runStart >= 0 && page == runStart + runLength {
            runLength += 1
          } else {
            if runStart >= 0 { try hashPages(runStart, runLength) }
            runStart = page
            runLength = 1
          }
        }
        if runStart >= 0 { try hashPages(runStart, runLength) }
      } else {
        var offset: Int64 = 0
        while offset < size, let dataStart = try fd.seek(data: offset) {
          let dataEnd = try fd.seek(hole: dataStart) ?? size
          let first = Int(dataStart / 4096)
          let last = Int((dataEnd + 4095) / 4096)
          try hashPages(first, last - first)
          offset = dataEnd
        }
      }
      return "sha256:" + SHA256.hex(of: hasher.finalize())
    } catch {
      throw VMMError(.io, "\(memoryPath): cannot compute the layer's content digest", cause: error)
    }
  }
}

/// A snapshot and the layers below it, base first, loaded and checked for a restore: every
/// layer names its parent by tag (a sibling directory) and by the parent's content digest, which
/// must match what the parent's manifest says now — no memory is hashed.
public struct SnapshotChain: Sendable {
  public struct Layer: Sendable {
    public let directory: String
    public let manifest: SnapshotManifest
    public var memoryPath: String { directory + "/" + manifest.memoryFile }
    public var pageIndexPath: String? { manifest.pageIndexFile.map { directory + "/" + $0 } }
  }

  /// Base (a full snapshot) first, the requested snapshot last.
  public let layers: [Layer]
  public var depth: Int { layers.count - 1 }

  public static func load(top directory: String) throws(VMMError) -> SnapshotChain {
    var chain: [Layer] = []
    var current = directory
    var seen: Set<String> = []
    while true {
      let manifest = try LoadedSnapshot.readManifest(directory: current)
      chain.append(Layer(directory: current, manifest: manifest))
      guard manifest.memoryLayer == .diff else { break }
      guard chain.count <= PagerHandshake.maxLayers else {
        throw VMMError(
          .invalidSnapshot, "\(directory): the diff chain is deeper than \(PagerHandshake.maxLayers) layers; compact it")
      }
      let parentTag = manifest.parentTag!
      let parent = parentDirectory(of: current) + "/" + parentTag
      guard seen.insert(parent).inserted else {
        throw VMMError(.invalidSnapshot, "\(current): the diff chain loops back to \(parentTag)")
      }
      guard FileSystem.isDirectory(parent) else {
        throw VMMError(
          .invalidSnapshot, "\(current)/manifest.json: parent snapshot \(parentTag) (\(parent)) does not exist")
      }
      let parentManifest = try LoadedSnapshot.readManifest(directory: parent)
      guard parentManifest.contentDigest == manifest.parentContentDigest else {
        throw VMMError(
          .invalidSnapshot,
          "\(current)/manifest.json: parent_content_digest \(manifest.parentContentDigest ?? "-") does not match \(parent)/manifest.json content_digest \(parentManifest.contentDigest ?? "(none)"): the parent changed after this layer was taken"
        )
      }
      guard parentManifest.memorySize == manifest.memorySize else {
        throw VMMError(
          .invalidSnapshot,
          "\(current): memory_size \(manifest.memorySize) differs from its parent \(parentTag)'s \(parentManifest.memorySize)")
      }
      current = parent
    }
    return SnapshotChain(layers: chain.reversed())
  }
}
