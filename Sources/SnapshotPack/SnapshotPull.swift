import Protocol
import SnapshotStorage
import Syscalls

/// Pulling a snapshot artifact (and the chain below it) into a snapshots directory. Every blob
/// is checked against its digest and size, each layer is written into a staging directory and
/// renamed into place; a failure removes everything this pull wrote and names what failed.
public struct SnapshotPull: Sendable {
  public struct Result: Sendable, Equatable {
    /// Digest of the top layer's OCI manifest.
    public var digest: String
    /// Tags this pull created, base first (the last is the requested tag).
    public var createdTags: [String]
    /// A local snapshot with the same content that the chain was attached to instead of pulled.
    public var reusedTag: String?
    public var progress: TransferProgress
    /// Lazy pulls: the directories whose memory a LazyFill must complete, base first.
    public var lazyDirectories: [String] = []
  }

  /// One resolved layer of the remote chain.
  struct RemoteLayer {
    let digest: String
    let manifest: ArtifactManifest
    let config: ArtifactConfig
  }

  public let store: any BlobStore
  public let snapshotsDirectory: String

  public init(store: any BlobStore, snapshotsDirectory: String) {
    self.store = store
    self.snapshotsDirectory = snapshotsDirectory
  }

  /// `lazy`: memory chunks are left for a LazyFill (the result's `lazyDirectories`); `origin`
  /// (`HOST/REPOSITORY`) is recorded for it.
  public func pull(
    reference: String, tag: String, lazy: Bool = false, origin: String = "", progress: ProgressHandler? = nil
  ) async throws(PackError) -> Result {
    guard SnapshotTag.isValid(tag) else { throw PackError(.invalidArtifact, "bad tag \"\(tag.prefix(80))\"") }
    guard !FileSystem.exists(snapshotsDirectory + "/" + tag) else {
      throw PackError(.exists, "snapshot \(tag) already exists")
    }
    // The remote chain, top first, down to a full layer or one whose content is already here.
    var remote: [RemoteLayer] = []
    var reused: String?
    var next: String? = reference
    while let ref = next {
      guard remote.count < PagerHandshake.maxLayers else {
        throw PackError(
          .invalidArtifact, "\(reference): the diff chain is deeper than \(PagerHandshake.maxLayers) layers")
      }
      let layer = try await resolve(ref)
      if !remote.isEmpty, let content = layer.config.contentDigest,
        let local = localTag(withContent: content, layer.config)
      {
        reused = local
        break
      }
      remote.append(layer)
      next = layer.config.parentManifestDigest
    }
    remote.reverse()
    var names: [String] = []
    for i in remote.indices {
      if i == remote.count - 1 {
        names.append(tag)
      } else {
        let suffix = "-base\(remote.count - 1 - i)"
        names.append(String(tag.prefix(64 - suffix.count)) + suffix)
      }
    }
    var state = TransferProgress()
    // Sizes come from the registry: added without trapping (a hostile size fails its fetch later).
    state.totalBytes = remote.reduce(0) { sum, layer in
      layer.manifest.layers.reduce(sum) { $0.addingReportingOverflow($1.size).overflow ? .max : $0 + $1.size }
    }
    progress?(state)
    var created: [String] = []
    var parentTag = reused
    do throws(PackError) {
      for (layer, name) in zip(remote, names) {
        var unpack = SnapshotUnpack(
          store: store, layer: layer, directory: snapshotsDirectory + "/" + name, parentTag: parentTag)
        unpack.lazy = lazy
        unpack.origin = origin
        try await unpack.run(&state, progress)
        created.append(name)
        parentTag = name
      }
    } catch {
      for name in created.reversed() { FileSystem.removeTree(snapshotsDirectory + "/" + name) }
      throw error
    }
    return Result(
      digest: remote.last?.digest ?? "", createdTags: created, reusedTag: reused, progress: state,
      lazyDirectories: lazy ? created.map { snapshotsDirectory + "/" + $0 } : [])
  }

  /// Fetches, checks and parses the manifest and config of `reference`.
  func resolve(_ reference: String) async throws(PackError) -> RemoteLayer {
    let bytes = try await store.fetchManifest(reference)
    let digest = SHA256.digestString(of: bytes)
    if SHA256.isDigestString(reference), digest != reference {
      throw PackError(.digestMismatch, "manifest \(reference): the registry returned bytes with digest \(digest)")
    }
    let manifest = try ArtifactManifest.decode(bytes, source: "manifest \(reference)")
    guard manifest.config.size <= 1 << 20 else {
      throw PackError(.invalidArtifact, "manifest \(reference): config size \(manifest.config.size) exceeds 1 MiB")
    }
    let configBytes = try await SnapshotUnpack.fetchVerified(store, manifest.config, what: "config of \(reference)")
    let config = try ArtifactConfig.decode(configBytes, source: "config \(manifest.config.digest)")
    return RemoteLayer(digest: digest, manifest: manifest, config: config)
  }

  /// A local snapshot whose layer content is `content` with the same memory size.
  func localTag(withContent content: String, _ config: ArtifactConfig) -> String? {
    let names = ((try? FileSystem.listDirectory(snapshotsDirectory)) ?? []).filter(SnapshotTag.isValid).sorted()
    for name in names {
      guard let m = try? SnapshotManifest.read(directory: snapshotsDirectory + "/" + name) else { continue }
      if m.contentDigest == content, m.memorySize == config.memorySize, m.memoryLayer.rawValue == config.memoryLayer {
        return name
      }
    }
    return nil
  }
}
