/// Where snapshot artifacts go and come from: a registry (OCIDistribution) or an OCI image
/// layout directory on disk (tests, air-gapped copies). Every call names what failed.
public protocol BlobStore: Sendable {
  /// Whether the blob is already stored (a push skips it).
  func blobExists(_ descriptor: Descriptor) async throws(PackError) -> Bool
  /// Stores `bytes` under `descriptor.digest`.
  func putBlob(_ bytes: [UInt8], descriptor: Descriptor) async throws(PackError)
  /// The blob's bytes; callers verify size and digest.
  func fetchBlob(_ descriptor: Descriptor) async throws(PackError) -> [UInt8]
  /// Stores a manifest under a tag or its own digest.
  func putManifest(_ bytes: [UInt8], mediaType: String, reference: String) async throws(PackError)
  /// The manifest stored under a tag or digest.
  func fetchManifest(_ reference: String) async throws(PackError) -> [UInt8]
}

/// Counters of one push or pull, also reported as progress while it runs.
public struct TransferProgress: Sendable, Equatable {
  /// Bytes of every blob the transfer covers (including skipped ones).
  public var totalBytes: UInt64 = 0
  /// Bytes sent or received so far.
  public var transferredBytes: UInt64 = 0
  /// Blobs sent or received.
  public var blobsTransferred = 0
  /// Blobs a push found already stored, or a pull found already local.
  public var blobsSkipped = 0
  /// Memory chunks sent or received.
  public var chunksTransferred = 0
  /// Memory chunks skipped (already stored).
  public var chunksSkipped = 0
  public init() {}
}

public typealias ProgressHandler = @Sendable (TransferProgress) -> Void
