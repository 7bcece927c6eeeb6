import Protocol
import SnapshotStorage
import Synchronization

/// Pushing a snapshot and the diff chain below it: every layer is its own artifact, base first,
/// and each diff layer's config names its parent's manifest digest. Blobs the store already has
/// are skipped, so a layer pushed after its base sends only its own chunks.
public struct SnapshotPush: Sendable {
  public struct Result: Sendable, Equatable {
    /// Digest of the top layer's OCI manifest (what the reference now points to).
    public var digest: String
    /// Digests of every layer's OCI manifest, base first.
    public var layerDigests: [String]
    public var progress: TransferProgress
  }

  public let store: any BlobStore
  public let chunkSize: UInt64

  public init(store: any BlobStore, chunkSize: UInt64 = ArtifactConfig.defaultChunkSize) {
    self.store = store
    self.chunkSize = chunkSize
  }

  /// Pushes the snapshot in `directory` (and its parents, sibling directories) under `reference`.
  public func push(directory: String, reference: String, progress: ProgressHandler? = nil) async throws(PackError)
    -> Result
  {
    let chain: SnapshotChain
    do {
      chain = try SnapshotChain.load(top: directory)
    } catch {
      throw PackError(.invalidArtifact, "cannot push \(directory): \(error.message)")
    }
    var packed: [PackedSnapshot] = []
    var state = TransferProgress()
    for layer in chain.layers {
      let p = try PackedSnapshot(directory: layer.directory, chunkSize: chunkSize)
      state.totalBytes += UInt64(p.manifestBytes.count + p.vmstateBytes.count + (p.pageIndexBytes?.count ?? 0))
      state.totalBytes += p.chunks.reduce(0) { $0 + UInt64($1.length) }
      packed.append(p)
    }
    progress?(state)
    var parent: String?
    var digests: [String] = []
    for (i, p) in packed.enumerated() {
      let isTop = i == packed.count - 1
      let sourceTag = String(p.directory.split(separator: "/").last ?? "")
      let (config, manifest) = p.artifact(parent: parent, sourceTag: sourceTag)
      var seen: Set<String> = []
      for (index, layer) in manifest.layers.enumerated() where seen.insert(layer.digest).inserted {
        let isChunk = layer.mediaType == ForkdMediaType.memoryChunk
        if try await store.blobExists(layer) {
          state.blobsSkipped += 1
          if isChunk { state.chunksSkipped += 1 }
        } else {
          let bytes: [UInt8]
          switch layer.mediaType {
          case ForkdMediaType.snapshotManifest: bytes = p.manifestBytes
          case ForkdMediaType.vmstate: bytes = p.vmstateBytes
          case ForkdMediaType.pageIndex: bytes = p.pageIndexBytes ?? []
          default: bytes = try p.chunkBytes(p.chunks[index - (manifest.layers.count - p.chunks.count)])
          }
          guard ChunkDigest.digestString(bytes) == layer.digest else {
            throw PackError(
              .digestMismatch,
              "\(p.directory): the chunk at \(layer.annotations[ForkdMediaType.chunkOffsetAnnotation] ?? "?") changed while it was pushed"
            )
          }
          try await store.putBlob(bytes, descriptor: layer)
          state.blobsTransferred += 1
          if isChunk { state.chunksTransferred += 1 }
          state.transferredBytes += layer.size
        }
        progress?(state)
      }
      if try await !store.blobExists(manifest.config) {
        try await store.putBlob(config, descriptor: manifest.config)
      }
      let bytes = manifest.serialized()
      let digest = SHA256.digestString(of: bytes)
      try await store.putManifest(bytes, mediaType: ForkdMediaType.ociManifest, reference: isTop ? reference : digest)
      digests.append(digest)
      parent = digest
    }
    return Result(digest: digests.last ?? "", layerDigests: digests, progress: state)
  }
}
