import Protocol

/// The config blob of a forkd snapshot artifact.
public struct ArtifactConfig: Equatable, Sendable {
  /// The artifact layout version this forkd writes and reads.
  public static let currentPackVersion: UInt32 = 1
  /// The memory chunk size forkd writes (docs/snapshot-format.md explains the choice).
  public static let defaultChunkSize: UInt64 = 2 << 20
  /// Chunk sizes a reader accepts: powers of two from 64 KiB to 64 MiB.
  public static let chunkSizes: ClosedRange<UInt64> = (64 << 10)...(64 << 20)

  public var packVersion: UInt32
  public var chunkSize: UInt64
  public var memorySize: UInt64
  /// `full` or `diff`, as in the snapshot's manifest.json.
  public var memoryLayer: String
  /// The digest of the parent's OCI manifest (diff layers only).
  public var parentManifestDigest: String?
  /// The parent's content digest (diff layers only), as in manifest.json.
  public var parentContentDigest: String?
  /// The content digest of this layer's memory, as in manifest.json.
  public var contentDigest: String?

  public init(
    packVersion: UInt32 = currentPackVersion, chunkSize: UInt64, memorySize: UInt64, memoryLayer: String,
    parentManifestDigest: String? = nil, parentContentDigest: String? = nil, contentDigest: String? = nil
  ) {
    self.packVersion = packVersion
    self.chunkSize = chunkSize
    self.memorySize = memorySize
    self.memoryLayer = memoryLayer
    self.parentManifestDigest = parentManifestDigest
    self.parentContentDigest = parentContentDigest
    self.contentDigest = contentDigest
  }

  public func serialized() -> [UInt8] {
    var o: [String: JSONValue] = [
      "pack_version": .integer(Int64(packVersion)), "chunk_size": .integer(Int64(clamping: chunkSize)),
      "memory_size": .integer(Int64(clamping: memorySize)), "memory_layer": .string(memoryLayer),
    ]
    if let parentManifestDigest { o["parent_manifest_digest"] = .string(parentManifestDigest) }
    if let parentContentDigest { o["parent_content_digest"] = .string(parentContentDigest) }
    if let contentDigest { o["content_digest"] = .string(contentDigest) }
    return Array(JSONValue.object(o).serialized().utf8)
  }

  public static func decode(_ bytes: [UInt8], source: String) throws(PackError) -> ArtifactConfig {
    do {
      let r = try JSONObjectReader(JSONValue.parse(bytes, source: source, maxBytes: 1 << 20), source: source)
      let version = try r.uint32("pack_version")
      guard version == currentPackVersion else {
        throw PackError(
          .invalidArtifact,
          "\(source): pack_version \(version) is not \(currentPackVersion) (written by a different forkd)")
      }
      let chunkSize = try r.uint64("chunk_size")
      guard chunkSizes.contains(chunkSize), chunkSize & (chunkSize - 1) == 0 else {
        throw PackError(.invalidArtifact, "\(source): chunk_size \(chunkSize) is not a power of two in 64 KiB…64 MiB")
      }
      let memorySize = try r.uint64("memory_size")
      guard memorySize > 0, memorySize % SnapshotManifest.pageSize == 0, memorySize <= 1 << 40 else {
        throw PackError(
          .invalidArtifact, "\(source): memory_size \(memorySize) is not a positive multiple of 4096 ≤ 1 TiB")
      }
      let layer = try r.string("memory_layer")
      guard layer == "full" || layer == "diff" else {
        throw PackError(.invalidArtifact, "\(source): memory_layer \"\(layer.prefix(40))\" is not full or diff")
      }
      let parent = try r.optionalString("parent_manifest_digest")
      let parentContent = try r.optionalString("parent_content_digest")
      let content = try r.optionalString("content_digest")
      for (key, value) in [
        ("parent_manifest_digest", parent), ("parent_content_digest", parentContent), ("content_digest", content),
      ] {
        if let value, !SHA256.isDigestString(value) {
          throw PackError(.invalidArtifact, "\(source): \(key) \"\(value.prefix(80))\" is not sha256:<64 hex>")
        }
      }
      guard (layer == "diff") == (parent != nil) else {
        throw PackError(.invalidArtifact, "\(source): a diff layer needs parent_manifest_digest, a full one has none")
      }
      return ArtifactConfig(
        packVersion: version, chunkSize: chunkSize, memorySize: memorySize, memoryLayer: layer,
        parentManifestDigest: parent, parentContentDigest: parentContent, contentDigest: content)
    } catch let error as PackError {
      throw error
    } catch {
      throw PackError(.invalidArtifact, "\(error)")
    }
  }
}
