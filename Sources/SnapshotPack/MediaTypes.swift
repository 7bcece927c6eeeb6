/// The media types of a forkd snapshot artifact (docs/snapshot-format.md, "OCI artifact").
/// The `v1` in each is the artifact format version: a reader refuses a config media type it
/// does not know rather than guessing.
public enum ForkdMediaType {
  /// The OCI image manifest that lists the blobs.
  public static let ociManifest = "application/vnd.oci.image.manifest.v1+json"
  /// `artifactType` of the OCI manifest.
  public static let artifact = "application/vnd.forkd.snapshot.v1"
  /// The config blob: pack version, chunk size, memory size, layer kind, parent.
  public static let config = "application/vnd.forkd.snapshot.config.v1+json"
  /// The snapshot's `manifest.json`, byte for byte.
  public static let snapshotManifest = "application/vnd.forkd.snapshot.manifest.v1+json"
  /// `vmstate.bin`.
  public static let vmstate = "application/vnd.forkd.snapshot.vmstate.v1"
  /// `pages.idx` of a diff layer.
  public static let pageIndex = "application/vnd.forkd.snapshot.pages.v1"
  /// One chunk of `memory.bin` (at most `chunk_size` bytes at the offset in its annotation).
  public static let memoryChunk = "application/vnd.forkd.snapshot.memory.chunk.v1"

  /// Annotation on a memory chunk layer: its byte offset in `memory.bin` (decimal).
  public static let chunkOffsetAnnotation = "dev.forkd.memory.offset"
  /// Annotation on the OCI manifest: the tag the snapshot had where it was pushed from.
  public static let sourceTagAnnotation = "dev.forkd.snapshot.tag"
}
