import Protocol
import Syscalls

/// The logical memory of a snapshot chain, mapped read-only: each page resolved once, when the
/// image is opened, to the topmost layer holding it, so reading a page costs the same at any
/// depth. Used by the pager to answer faults and by forkd-vmm to snapshot pages it never touched.
public final class ChainImage: @unchecked Sendable {
  public struct Layer: Sendable {
    public let memory: String
    public let pageIndex: String?
    /// memory.bin already open (it is mapped from this descriptor, which stays the caller's) and
    /// the page index already read: a process in its jail, which cannot open them by path.
    public let openMemory: FileDescriptor?
    public let pageIndexBytes: [UInt8]?
    public init(memory: String, pageIndex: String?, openMemory: FileDescriptor? = nil, pageIndexBytes: [UInt8]? = nil) {
      self.memory = memory
      self.pageIndex = pageIndex
      self.openMemory = openMemory
      self.pageIndexBytes = pageIndexBytes
    }
  }

  /// Logical bytes (every layer's memory.bin has this size).
  public let size: UInt64
  public let pageCount: Int
  /// Pages with data in the layer that owns them; the others read as zero.
  public let dataPageCount: Int
  public var path: String { paths.last! }

  private let paths: [String]
  private let bases: [UnsafeRawPointer?]
  private let sizes: [Int]
  private var data: [UInt64]
  /// The owning layer of each page, for chains only (a flat image owns every page).
  private let owner: [UInt8]
  /// Per layer: the chunk map of a layer still being filled by a lazy pull (nil: complete).
  private let lazyMaps: [LazyMemoryMap?]
  /// Why the last `page` returned nil for a data page (a lazy chunk that could not be fetched).
  public private(set) var failure: String?

  public convenience init(chain: SnapshotChain) throws(SnapshotStorageError) {
    try self.init(layers: chain.layers.map { Layer(memory: $0.memoryPath, pageIndex: $0.pageIndexPath) })
  }

  /// `layers`: the base (no index) first.
  public init(layers: [Layer]) throws(SnapshotStorageError) {
    var mapped: [(UnsafeRawPointer?, Int)] = []
    var dataSets: [[UInt64]] = []
    var lazy: [LazyMemoryMap?] = []
    for layer in layers {
      do {
        let fd = try layer.openMemory ?? FileDescriptor.open(layer.memory, .readOnly)
        defer { if layer.openMemory == nil { fd.close() } }
        let size = Int(try fd.size())
        let base = size == 0 ? nil : UnsafeRawPointer(try MemoryMapping.sharedFile(fd, size: size, protection: .read))
        mapped.append((base, size))
        // Holes (SEEK_HOLE) are zero pages: never read, answered as zero.
        let pages = (size + 4095) / 4096
        var words = [UInt64](repeating: 0, count: (pages + 63) / 64)
        var offset: Int64 = 0
        while offset < Int64(size), let dataStart = try fd.seek(data: offset) {
          let dataEnd = try fd.seek(hole: dataStart) ?? Int64(size)
          for page in Int(dataStart / 4096)..<min(pages, Int((dataEnd + 4095) / 4096)) {
            words[page >> 6] |= 1 << UInt64(page & 63)
          }
          offset = dataEnd
        }
        // A layer a lazy pull is still filling: every page of a chunk the artifact holds has
        // (or will have) data; its holes are not zero pages yet.
        let lazyPath = parentDirectory(of: layer.memory) + "/" + LazyMemoryMap.fileName
        let map = FileSystem.exists(lazyPath) ? try LazyMemoryMap(path: lazyPath) : nil
        if let map {
          let pagesPerChunk = Int(map.chunkSize / 4096)
          for chunk in 0..<map.chunkCount where map.state(chunk) != .zero {
            for page in chunk * pagesPerChunk..<min(pages, (chunk + 1) * pagesPerChunk) {
              words[page >> 6] |= 1 << UInt64(page & 63)
            }
          }
        }
        lazy.append(map)
        dataSets.append(words)
      } catch {
        for (base, size) in mapped where base != nil {
          MemoryMapping.unmap(UnsafeMutableRawPointer(mutating: base!), size: size)
        }
        throw SnapshotStorageError(.invalidSnapshot, "\(layer.memory): cannot map the memory layer", cause: error)
      }
    }
    paths = layers.map(\.memory)
    lazyMaps = lazy
    bases = mapped.map(\.0)
    sizes = mapped.map(\.1)
    size = UInt64(sizes[0])
    pageCount = (sizes[0] + 4095) / 4096
    for (layer, bytes) in zip(layers, sizes) where bytes != sizes[0] {
      throw SnapshotStorageError(
        .invalidSnapshot, "\(layer.memory) has \(bytes) bytes but the chain's base \(paths[0]) has \(sizes[0])")
    }
    guard layers.count > 1 else {
      owner = []
      data = dataSets[0]
      dataPageCount = data.reduce(0) { $0 + $1.nonzeroBitCount }
      return
    }
    var owner = [UInt8](repeating: 0, count: pageCount)
    for (depth, layer) in layers.enumerated().dropFirst() {
      guard let indexPath = layer.pageIndex else {
        throw SnapshotStorageError(.invalidSnapshot, "\(layer.memory): a layer above the base needs its page index")
      }
      do {
        let bytes = try layer.pageIndexBytes ?? FileSystem.readFile(indexPath)
        let index = try PageIndex.parse(bytes, source: indexPath, expectedPages: pageCount)
        for page in index.pages { owner[page] = UInt8(depth) }
      } catch {
        throw SnapshotStorageError(.invalidSnapshot, "\(indexPath): \(error)")
      }
    }
    var words = [UInt64](repeating: 0, count: (pageCount + 63) / 64)
    var count = 0
    for page in 0..<pageCount where dataSets[Int(owner[page])][page >> 6] & (1 << UInt64(page & 63)) != 0 {
      words[page >> 6] |= 1 << UInt64(page & 63)
      count += 1
    }
    self.owner = owner
    data = words
    dataPageCount = count
  }

  deinit {
    for (base, size) in zip(bases, sizes) where base != nil {
      MemoryMapping.unmap(UnsafeMutableRawPointer(mutating: base!), size: size)
    }
  }

  /// Whether the page holds data (false: it reads as zero).
  @inline(__always) public func hasData(_ page: Int) -> Bool {
    page >= 0 && page < pageCount && data[page >> 6] & (1 << UInt64(page & 63)) != 0
  }

  /// The page's bytes in the layer that owns it; nil for a zero page.
  @inline(__always) public func page(_ page: Int) -> UnsafeRawPointer? {
    guard hasData(page) else { return nil }
    let layer = owner.isEmpty ? 0 : Int(owner[page])
    if let map = lazyMaps[layer] {
      let chunk = map.chunk(containing: UInt64(page) * 4096)
      guard map.waitPresent(chunk) else {
        failure =
          "chunk \(chunk) (offset \(UInt64(chunk) * map.chunkSize)) of \(paths[layer]) could not be fetched by the lazy pull (\(map.state(chunk) == .failed ? "the fetch failed" : "timed out"))"
        return nil
      }
    }
    return bases[layer]! + page * 4096
  }

  /// Whether any layer is still being filled by a lazy pull.
  public var isLazy: Bool { lazyMaps.contains { $0 != nil } }
}
