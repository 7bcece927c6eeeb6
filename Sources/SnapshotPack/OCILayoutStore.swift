import Protocol
import Synchronization
import Syscalls

/// An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/<hex>`) as a
/// blob store: snapshots copied without a registry, and the registry-free tests. Counts the
/// blobs it was given so tests can see what a push skipped.
public final class OCILayoutStore: BlobStore {
  public let directory: String
  private let state = Mutex<(tags: [String: String], blobPuts: Int)>(([:], 0))

  public init(directory: String) throws(PackError) {
    self.directory = directory
    do {
      try FileSystem.makeDirectories(directory + "/blobs/sha256")
      if !FileSystem.exists(directory + "/oci-layout") {
        try FileSystem.writeAtomically(directory + "/oci-layout", Array(#"{"imageLayoutVersion":"1.0.0"}"#.utf8))
      }
    } catch {
      throw PackError(.io, "\(directory): cannot create the OCI layout: \(error)")
    }
    if let bytes = try? FileSystem.readFile(directory + "/index.json", limit: 16 << 20),
      let index = try? JSONValue.parse(bytes, source: "index.json"), let manifests = index["manifests"]?.arrayValue
    {
      var tags: [String: String] = [:]
      for m in manifests {
        if let digest = m["digest"]?.stringValue,
          let name = m["annotations"]?["org.opencontainers.image.ref.name"]?.stringValue
        {
          tags[name] = digest
        }
      }
      state.withLock { $0.tags = tags }
    }
  }

  /// How many blobs `putBlob` wrote.
  public var blobPuts: Int { state.withLock { $0.blobPuts } }

  public func blobPath(_ digest: String) -> String { directory + "/blobs/sha256/" + digest.dropFirst("sha256:".count) }

  public func blobExists(_ descriptor: Descriptor) async throws(PackError) -> Bool {
    FileSystem.exists(blobPath(descriptor.digest))
  }

  public func putBlob(_ bytes: [UInt8], descriptor: Descriptor) async throws(PackError) {
    guard SHA256.isDigestString(descriptor.digest), ChunkDigest.digestString(bytes) == descriptor.digest else {
      throw PackError(.digestMismatch, "blob \(descriptor.digest): bytes do not match the digest")
    }
    do {
      try FileSystem.writeAtomically(blobPath(descriptor.digest), bytes)
    } catch {
      throw PackError(.io, "\(blobPath(descriptor.digest)): \(error)")
    }
    state.withLock { $0.blobPuts += 1 }
  }

  public func fetchBlob(_ descriptor: Descriptor) async throws(PackError) -> [UInt8] {
    guard SHA256.isDigestString(descriptor.digest) else {
      throw PackError(.invalidArtifact, "bad digest \(descriptor.digest.prefix(80))")
    }
    guard FileSystem.exists(blobPath(descriptor.digest)) else {
      throw PackError(.notFound, "blob \(descriptor.digest) is not in \(directory)")
    }
    do {
      return try FileSystem.readFile(blobPath(descriptor.digest), limit: 256 << 20)
    } catch {
      throw PackError(.io, "\(blobPath(descriptor.digest)): \(error)")
    }
  }

  public func putManifest(_ bytes: [UInt8], mediaType: String, reference: String) async throws(PackError) {
    let digest = SHA256.digestString(of: bytes)
    try await putBlob(bytes, descriptor: Descriptor(mediaType: mediaType, digest: digest, size: UInt64(bytes.count)))
    guard !SHA256.isDigestString(reference) else { return }
    let tags = state.withLock { s in
      s.tags[reference] = digest
      return s.tags
    }
    let entries: [JSONValue] = tags.sorted { $0.key < $1.key }.map { name, digest in
      let size = (try? FileSystem.readFile(blobPath(digest), limit: 16 << 20).count) ?? 0
      return .object([
        "mediaType": .string(ForkdMediaType.ociManifest), "digest": .string(digest), "size": .integer(Int64(size)),
        "annotations": .object(["org.opencontainers.image.ref.name": .string(name)]),
      ])
    }
    let index = JSONValue.object(["schemaVersion": .integer(2), "manifests": .array(entries)])
    do {
      try FileSystem.writeAtomically(directory + "/index.json", Array(index.serialized().utf8))
    } catch {
      throw PackError(.io, "\(directory)/index.json: \(error)")
    }
  }

  public func fetchManifest(_ reference: String) async throws(PackError) -> [UInt8] {
    let tagged: String? = state.withLock { $0.tags[reference] }
    guard let digest = SHA256.isDigestString(reference) ? reference : tagged else {
      throw PackError(.notFound, "no manifest \(reference) in \(directory)")
    }
    return try await fetchBlob(Descriptor(mediaType: ForkdMediaType.ociManifest, digest: digest, size: 0))
  }
}
