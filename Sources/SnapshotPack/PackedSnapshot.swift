import Protocol
import SnapshotStorage
import Syscalls

/// One snapshot directory (one layer of a chain) as the blobs of an artifact: its manifest.json,
/// vmstate.bin, pages.idx for diff layers, and memory.bin cut into `chunkSize` chunks addressed by
/// their SHA-256, all-zero chunks left out.
public struct PackedSnapshot: Sendable {
  public struct Chunk: Sendable, Equatable {
    public let offset: UInt64
    public let length: Int
    public let digest: String
  }

  public let directory: String
  public let manifest: SnapshotManifest
  public let chunkSize: UInt64
  public let manifestBytes: [UInt8]
  public let vmstateBytes: [UInt8]
  public let pageIndexBytes: [UInt8]?
  public let chunks: [Chunk]

  public var memoryPath: String { directory + "/" + manifest.memoryFile }

  /// Reads and hashes the snapshot in `directory`.
  public init(directory: String, chunkSize: UInt64 = ArtifactConfig.defaultChunkSize) throws(PackError) {
    self.directory = directory
    self.chunkSize = chunkSize
    do {
      manifest = try SnapshotManifest.read(directory: directory)
      manifestBytes = try FileSystem.readFile(directory + "/manifest.json", limit: 1 << 20)
      vmstateBytes = try FileSystem.readFile(directory + "/" + manifest.stateFile, limit: 256 << 20)
      pageIndexBytes = try manifest.pageIndexFile.map { try FileSystem.readFile(directory + "/" + $0, limit: 64 << 20) }
      chunks = try PackedSnapshot.scan(
        directory + "/" + manifest.memoryFile, size: manifest.memorySize, chunkSize: chunkSize)
    } catch let error as PackError {
      throw error
    } catch {
      throw PackError(.io, "\(directory): cannot pack the snapshot: \(error)")
    }
  }

  /// The non-zero chunks of `path`: holes are skipped with SEEK_DATA, chunks whose bytes are all
  /// zero are dropped after reading.
  static func scan(_ path: String, size: UInt64, chunkSize: UInt64) throws -> [Chunk] {
    let fd = try FileDescriptor.open(path, .readOnly)
    defer { fd.close() }
    let fileSize = try fd.size()
    guard fileSize >= 0, UInt64(fileSize) == size else {
      throw PackError(.invalidArtifact, "\(path): size \(fileSize) is not memory_size \(size)")
    }
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(chunkSize), alignment: 4096)
    defer { buffer.deallocate() }
    var chunks: [Chunk] = []
    var offset: UInt64 = 0
    while offset < size {
      guard let data = try fd.seek(data: Int64(offset)) else { break }
      offset = UInt64(data) / chunkSize * chunkSize
      let length = Int(min(chunkSize, size - offset))
      let view = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<length])
      try readFully(fd, into: view, at: offset, path: path)
      if !isZero(UnsafeRawBufferPointer(view)) {
        chunks.append(
          Chunk(offset: offset, length: length, digest: ChunkDigest.digestString(UnsafeRawBufferPointer(view))))
      }
      offset += UInt64(length)
    }
    return chunks
  }

  /// The bytes of one chunk, read again from memory.bin for an upload.
  public func chunkBytes(_ chunk: Chunk) throws(PackError) -> [UInt8] {
    do {
      let fd = try FileDescriptor.open(memoryPath, .readOnly)
      defer { fd.close() }
      var bytes = [UInt8](repeating: 0, count: chunk.length)
      try bytes.withUnsafeMutableBytes {
        try PackedSnapshot.readFully(fd, into: $0, at: chunk.offset, path: memoryPath)
      }
      return bytes
    } catch let error as PackError {
      throw error
    } catch {
      throw PackError(.io, "\(memoryPath): cannot read the chunk at \(chunk.offset): \(error)")
    }
  }

  static func readFully(
    _ fd: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64, path: String
  ) throws {
    var done = 0
    while done < buffer.count {
      let n = try fd.pread(
        into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]), at: Int64(offset) + Int64(done))
      guard n > 0 else { throw PackError(.io, "\(path): short read at \(offset + UInt64(done))") }
      done += n
    }
  }

  static func isZero(_ bytes: UnsafeRawBufferPointer) -> Bool {
    let words = bytes.count / 8
    let wordsZero =
      bytes.baseAddress.map { base in
        UnsafeBufferPointer(start: base.assumingMemoryBound(to: UInt64.self), count: words).allSatisfy { $0 == 0 }
      } ?? true
    return wordsZero && bytes[(words * 8)...].allSatisfy { $0 == 0 }
  }

  /// The config, layer descriptors and OCI manifest of this layer; `parent` is the digest of the
  /// parent layer's OCI manifest (diff layers).
  public func artifact(parent: String?, sourceTag: String?) -> (config: [UInt8], manifest: ArtifactManifest) {
    let config = ArtifactConfig(
      chunkSize: chunkSize, memorySize: manifest.memorySize, memoryLayer: manifest.memoryLayer.rawValue,
      parentManifestDigest: parent, parentContentDigest: manifest.parentContentDigest,
      contentDigest: manifest.contentDigest
    ).serialized()
    var layers = [
      Descriptor.of(manifestBytes, mediaType: ForkdMediaType.snapshotManifest),
      Descriptor.of(vmstateBytes, mediaType: ForkdMediaType.vmstate),
    ]
    if let pageIndexBytes { layers.append(.of(pageIndexBytes, mediaType: ForkdMediaType.pageIndex)) }
    for chunk in chunks {
      layers.append(
        Descriptor(
          mediaType: ForkdMediaType.memoryChunk, digest: chunk.digest, size: UInt64(chunk.length),
          annotations: [ForkdMediaType.chunkOffsetAnnotation: String(chunk.offset)]))
    }
    var annotations: [String: String] = [:]
    if let sourceTag { annotations[ForkdMediaType.sourceTagAnnotation] = sourceTag }
    return (
      config,
      ArtifactManifest(config: .of(config, mediaType: ForkdMediaType.config), layers: layers, annotations: annotations)
    )
  }
}
