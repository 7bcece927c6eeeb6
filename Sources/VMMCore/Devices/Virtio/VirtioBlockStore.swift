import Protocol
import Syscalls

/// What a virtio-blk device reads and writes: a read-only base image shared by every VM, the
/// writes an ancestor made (a snapshot's overlay file, read-only, shared by its children), and
/// this VM's own writes, kept in memory in 4 KiB blocks. A child therefore sees its parent's
/// writes and never its siblings'.
public struct BlockDeviceConfig: Sendable, Equatable {
  public var basePath: String
  /// An ancestor's writes: the overlay file of a snapshot and the blocks it holds.
  public var inherited: InheritedOverlay?

  public struct InheritedOverlay: Sendable, Equatable {
    public var path: String
    public var blocks: [UInt64]
    public init(path: String, blocks: [UInt64]) {
      self.path = path
      self.blocks = blocks
    }
  }

  public init(basePath: String, inherited: InheritedOverlay? = nil) {
    self.basePath = basePath
    self.inherited = inherited
  }
}

public final class BlockStore: @unchecked Sendable {
  public static let sectorSize: UInt64 = 512
  public static let blockSize: UInt64 = 4096
  /// The overlay file's name inside a snapshot directory.
  public static let overlayFileName = "disk-overlay.bin"

  public let config: BlockDeviceConfig
  /// Bytes of the base image (the disk's size; a multiple of 512).
  public let size: UInt64
  private let base: FileDescriptor
  private let inheritedFD: FileDescriptor?
  private let inheritedBlocks: Set<UInt64>
  private var privateBlocks: [UInt64: [UInt8]] = [:]

  public init(_ config: BlockDeviceConfig) throws(VMMError) {
    self.config = config
    do {
      base = try FileDescriptor.open(config.basePath, .readOnly)
    } catch {
      throw VMMError(.invalidConfig, "\(config.basePath): cannot open the disk image", cause: error)
    }
    do {
      let bytes = try base.size()
      guard bytes > 0, UInt64(bytes) % Self.sectorSize == 0 else {
        base.close()
        throw VMMError(
          .invalidConfig, "\(config.basePath): disk image size \(bytes) bytes is not a non-zero multiple of 512")
      }
      size = UInt64(bytes)
    } catch let error as VMMError {
      throw error
    } catch {
      base.close()
      throw VMMError(.invalidConfig, "\(config.basePath): cannot stat the disk image", cause: error)
    }
    if let inherited = config.inherited {
      do {
        inheritedFD = try FileDescriptor.open(inherited.path, .readOnly)
      } catch {
        base.close()
        throw VMMError(.invalidSnapshot, "\(inherited.path): cannot open the disk overlay", cause: error)
      }
      inheritedBlocks = Set(inherited.blocks)
    } else {
      inheritedFD = nil
      inheritedBlocks = []
    }
  }

  deinit {
    base.close()
    inheritedFD?.close()
  }

  public var sectorCount: UInt64 { size / Self.sectorSize }

  /// Whether `count` bytes at `offset` lie inside the disk.
  public func contains(offset: UInt64, count: UInt64) -> Bool {
    let (end, overflow) = offset.addingReportingOverflow(count)
    return !overflow && end <= size
  }

  /// One 4 KiB block as this VM sees it (bytes past the end of the disk read as zero).
  func block(_ index: UInt64) throws(VMMError) -> [UInt8] {
    if let own = privateBlocks[index] { return own }
    var bytes = [UInt8](repeating: 0, count: Int(Self.blockSize))
    let (fd, path): (FileDescriptor, String) =
      inheritedBlocks.contains(index) ? (inheritedFD!, config.inherited!.path) : (base, config.basePath)
    let offset = index * Self.blockSize
    var done = 0
    while done < bytes.count {
      let n: Int
      do {
        n = try bytes.withUnsafeMutableBytes { raw throws(SyscallError) -> Int in
          try fd.pread(into: UnsafeMutableRawBufferPointer(rebasing: raw[done...]), at: Int64(offset) + Int64(done))
        }
      } catch {
        throw VMMError(.io, "\(path): read at \(offset + UInt64(done)) failed", cause: error)
      }
      if n == 0 { break }  // past the end: the rest stays zero
      done += n
    }
    return bytes
  }

  /// Reads `count` bytes at `offset` (bounds checked by the caller with `contains`).
  public func read(offset: UInt64, count: Int) throws(VMMError) -> [UInt8] {
    var out: [UInt8] = []
    out.reserveCapacity(count)
    var position = offset
    let end = offset + UInt64(count)
    while position < end {
      let index = position / Self.blockSize
      let within = Int(position % Self.blockSize)
      let take = min(Int(Self.blockSize) - within, Int(end - position))
      let data = try block(index)
      out += data[within..<within + take]
      position += UInt64(take)
    }
    return out
  }

  /// Writes into this VM's own blocks (never into the base or an inherited overlay).
  public func write(offset: UInt64, bytes: [UInt8]) throws(VMMError) {
    var position = offset
    var consumed = 0
    while consumed < bytes.count {
      let index = position / Self.blockSize
      let within = Int(position % Self.blockSize)
      let take = min(Int(Self.blockSize) - within, bytes.count - consumed)
      var data = take == Int(Self.blockSize) ? [] : try block(index)
      if data.isEmpty {
        data = Array(bytes[consumed..<consumed + take])
      } else {
        data.replaceSubrange(within..<within + take, with: bytes[consumed..<consumed + take])
      }
      privateBlocks[index] = data
      consumed += take
      position += UInt64(take)
    }
  }

  /// Every block that differs from the base: inherited ones and this VM's own.
  public var overlayBlocks: [UInt64] { Array(inheritedBlocks.union(privateBlocks.keys)).sorted() }

  /// Writes the overlay (inherited and own blocks) as a sparse file of the disk's size at `path`;
  /// returns the blocks it holds. The file is synced.
  public func writeOverlay(to path: String) throws(VMMError) -> [UInt64] {
    let blocks = overlayBlocks
    do {
      let fd = try FileDescriptor.open(path, [.writeOnly, .create, .exclusive], mode: 0o600)
      defer { fd.close() }
      try fd.truncate(to: Int64(size))
      for index in blocks {
        var data = try block(index)
        let end = min(Self.blockSize, size - index * Self.blockSize)
        data.removeLast(Int(Self.blockSize - end))
        try fd.pwriteAll(data, at: Int64(index * Self.blockSize))
      }
      try fd.sync()
    } catch let error as VMMError {
      throw error
    } catch {
      throw VMMError(.io, "\(path): cannot write the disk overlay", cause: error)
    }
    return blocks
  }
}
