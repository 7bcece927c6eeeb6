import Protocol
import SnapshotStorage
import Syscalls

/// Writes one remote layer into `directory`: staged beside it, renamed into place when every
/// blob arrived with the right digest and the snapshot's own digests agree.
struct SnapshotUnpack {
  let store: any BlobStore
  let layer: SnapshotPull.RemoteLayer
  let directory: String
  /// The local tag of the parent layer (diff layers), written into manifest.json.
  let parentTag: String?
  /// Lazy pull: memory.bin is left sparse with a `lazy.map` for the fill (LazyFill) instead of
  /// downloading the chunks now.
  var lazy = false
  /// Where the chunks come from (recorded for the fill after a restart).
  var origin = ""

  /// Fetches `descriptor` and checks its size and digest.
  static func fetchVerified(_ store: any BlobStore, _ descriptor: Descriptor, what: String) async throws(PackError)
    -> [UInt8]
  {
    let bytes = try await store.fetchBlob(descriptor)
    guard UInt64(bytes.count) == descriptor.size else {
      throw PackError(
        .sizeMismatch,
        "\(what) (\(descriptor.digest)): got \(bytes.count) bytes, the descriptor says \(descriptor.size)")
    }
    let digest = ChunkDigest.digestString(bytes)
    guard digest == descriptor.digest else {
      throw PackError(.digestMismatch, "\(what): expected \(descriptor.digest), the bytes received hash to \(digest)")
    }
    return bytes
  }

  func run(_ state: inout TransferProgress, _ progress: ProgressHandler?) async throws(PackError) {
    let staging = directory + ".staging-pull-\(Clock.monotonicNanoseconds())"
    do {
      try FileSystem.makeDirectory(staging)
    } catch {
      throw PackError(.io, "\(staging): cannot create the staging directory: \(error)")
    }
    do throws(PackError) {
      try await write(into: staging, &state, progress)
      do {
        try SnapshotFiles.publish(staging: staging, as: directory)
      } catch {
        throw PackError(error.code == .snapshotExists ? .exists : .io, error.description)
      }
    } catch {
      FileSystem.removeTree(staging)
      throw error
    }
  }

  private func single(_ mediaType: String) throws(PackError) -> Descriptor? {
    let found = layer.manifest.layers.filter { $0.mediaType == mediaType }
    guard found.count <= 1 else {
      throw PackError(.invalidArtifact, "manifest \(layer.digest): \(found.count) layers of type \(mediaType)")
    }
    return found.first
  }

  private func write(into staging: String, _ state: inout TransferProgress, _ progress: ProgressHandler?)
    async throws(PackError)
  {
    let config = layer.config
    let known: Set<String> = [
      ForkdMediaType.snapshotManifest, ForkdMediaType.vmstate, ForkdMediaType.pageIndex, ForkdMediaType.memoryChunk,
    ]
    if let unknown = layer.manifest.layers.first(where: { !known.contains($0.mediaType) }) {
      throw PackError(
        .invalidArtifact, "manifest \(layer.digest): unknown layer media type \(unknown.mediaType.prefix(100))")
    }
    func fetch(_ d: Descriptor, _ what: String) async throws(PackError) -> [UInt8] {
      let bytes = try await SnapshotUnpack.fetchVerified(store, d, what: "\(what) of \(layer.digest)")
      state.transferredBytes += d.size
      state.blobsTransferred += 1
      if d.mediaType == ForkdMediaType.memoryChunk { state.chunksTransferred += 1 }
      progress?(state)
      return bytes
    }
    guard let manifestLayer = try single(ForkdMediaType.snapshotManifest), manifestLayer.size <= 1 << 20,
      let stateLayer = try single(ForkdMediaType.vmstate), stateLayer.size <= 256 << 20
    else {
      throw PackError(
        .invalidArtifact,
        "manifest \(layer.digest): needs one manifest.json (≤ 1 MiB) and one vmstate (≤ 256 MiB) layer")
    }
    var manifest: SnapshotManifest
    do {
      manifest = try SnapshotManifest.decode(
        try await fetch(manifestLayer, "manifest.json"), source: "manifest.json of \(layer.digest)")
    } catch let error as PackError {
      throw error
    } catch {
      throw PackError(.invalidArtifact, "\(error)")
    }
    guard manifest.memorySize == config.memorySize, manifest.memoryLayer.rawValue == config.memoryLayer,
      manifest.contentDigest == config.contentDigest, manifest.parentContentDigest == config.parentContentDigest
    else {
      throw PackError(
        .invalidArtifact,
        "manifest \(layer.digest): manifest.json (memory_size \(manifest.memorySize), \(manifest.memoryLayer.rawValue)) disagrees with the artifact config (memory_size \(config.memorySize), \(config.memoryLayer))"
      )
    }
    manifest.parentTag = parentTag
    let stateBytes = try await fetch(stateLayer, "vmstate")
    guard SHA256.digestString(of: stateBytes) == manifest.stateDigest else {
      throw PackError(.digestMismatch, "vmstate of \(layer.digest) does not match state_digest \(manifest.stateDigest)")
    }
    do throws(SnapshotStorageError) {
      try SnapshotFiles.write(staging + "/" + manifest.stateFile, stateBytes)
    } catch {
      throw PackError(.io, error.description)
    }
    if manifest.memoryLayer == .diff {
      guard let indexLayer = try single(ForkdMediaType.pageIndex), indexLayer.size <= 64 << 20,
        let indexFile = manifest.pageIndexFile
      else {
        throw PackError(.invalidArtifact, "manifest \(layer.digest): a diff layer needs one pages.idx layer (≤ 64 MiB)")
      }
      let indexBytes = try await fetch(indexLayer, "pages.idx")
      do throws(SnapshotStorageError) {
        try SnapshotFiles.write(staging + "/" + indexFile, indexBytes)
      } catch {
        throw PackError(.io, error.description)
      }
    }
    try await writeMemory(staging + "/" + manifest.memoryFile, manifest.memorySize, fetch)
    do throws(SnapshotStorageError) {
      try SnapshotFiles.write(staging + "/manifest.json", Array(manifest.jsonText().utf8))
    } catch {
      throw PackError(.io, error.description)
    }
  }

  /// A sparse memory.bin of `size` bytes: each chunk written at its offset, its zero pages left
  /// as holes (as the snapshot writer leaves them).
  private func writeMemory(
    _ path: String, _ size: UInt64, _ fetch: (Descriptor, String) async throws(PackError) -> [UInt8]
  ) async throws(PackError) {
    let chunkSize = layer.config.chunkSize
    var placed: Set<UInt64> = []
    let chunks = layer.manifest.layers.filter { $0.mediaType == ForkdMediaType.memoryChunk }
    for chunk in chunks {
      guard let text = chunk.annotations[ForkdMediaType.chunkOffsetAnnotation], let offset = UInt64(text),
        offset % chunkSize == 0, offset < size, chunk.size > 0, chunk.size % SnapshotManifest.pageSize == 0,
        chunk.size <= min(chunkSize, size - offset)
      else {
        throw PackError(
          .invalidArtifact,
          "manifest \(layer.digest): chunk \(chunk.digest) has offset \(chunk.annotations[ForkdMediaType.chunkOffsetAnnotation]?.prefix(40) ?? "(none)") and size \(chunk.size), not a whole chunk inside memory_size \(size)"
        )
      }
      guard placed.insert(offset).inserted else {
        throw PackError(.invalidArtifact, "manifest \(layer.digest): two chunks at offset \(offset)")
      }
    }
    if lazy {
      try createLazy(path, size, chunks)
      return
    }
    let fd: FileDescriptor
    do {
      fd = try FileDescriptor.open(path, [.writeOnly, .create, .exclusive], mode: 0o600)
    } catch {
      throw PackError(.io, "\(path): cannot create: \(error)")
    }
    defer { fd.close() }
    do {
      try fd.truncate(to: Int64(size))
    } catch {
      throw PackError(.io, "\(path): cannot size to \(size): \(error)")
    }
    for chunk in chunks {
      let offset = UInt64(chunk.annotations[ForkdMediaType.chunkOffsetAnnotation] ?? "") ?? 0
      let bytes = try await fetch(chunk, "memory chunk at \(offset)")
      do {
        try SnapshotUnpack.writeNonZeroRuns(bytes, to: fd, at: offset)
      } catch {
        throw PackError(.io, "\(path): cannot write the chunk at \(offset): \(error)")
      }
    }
    do {
      try fd.sync()
    } catch {
      throw PackError(.io, "\(path): fsync: \(error)")
    }
  }

  /// A sparse memory.bin of `size` bytes, its `lazy.map` (chunks of the artifact missing, the
  /// others zero) and `lazy-chunks.json` (what to fetch, from where).
  private func createLazy(_ path: String, _ size: UInt64, _ chunks: [Descriptor]) throws(PackError) {
    let chunkSize = layer.config.chunkSize
    let count = Int((size + chunkSize - 1) / chunkSize)
    var states = [LazyMemoryMap.State](repeating: .zero, count: count)
    for chunk in chunks {
      let offset = UInt64(chunk.annotations[ForkdMediaType.chunkOffsetAnnotation] ?? "") ?? 0
      states[Int(offset / chunkSize)] = .missing
    }
    do {
      let fd = try FileDescriptor.open(path, [.writeOnly, .create, .exclusive], mode: 0o600)
      defer { fd.close() }
      try fd.truncate(to: Int64(size))
      try fd.sync()
    } catch {
      throw PackError(.io, "\(path): cannot create: \(error)")
    }
    let directory = parentDirectory(of: path)
    let plan = LazyPlan(
      origin: origin, chunkSize: chunkSize, memoryFile: String(path.split(separator: "/").last ?? ""), chunks: chunks)
    do throws(SnapshotStorageError) {
      try LazyMemoryMap.create(directory + "/" + LazyMemoryMap.fileName, chunkSize: chunkSize, states: states)
      try SnapshotFiles.write(directory + "/" + LazyPlan.fileName, plan.serialized())
    } catch {
      throw PackError(.io, error.description)
    }
  }

  /// Writes `bytes` at `offset`, runs of non-zero pages in one write each; zero pages stay holes.
  static func writeNonZeroRuns(_ bytes: [UInt8], to fd: FileDescriptor, at offset: UInt64) throws {
    try bytes.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
      let page = Int(SnapshotManifest.pageSize)
      var start = 0
      while start < raw.count {
        var end = start
        while end < raw.count, !PackedSnapshot.isZero(UnsafeRawBufferPointer(rebasing: raw[end..<end + page])) {
          end += page
        }
        if end > start {
          try fd.pwriteAll(UnsafeRawBufferPointer(rebasing: raw[start..<end]), at: Int64(offset) + Int64(start))
        }
        start = end + page
      }
    }
  }
}
