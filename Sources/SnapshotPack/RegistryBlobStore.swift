import OCIDistribution
import Protocol

/// A registry repository as the blob store of SnapshotPack.
public struct RegistryBlobStore: BlobStore {
  public let client: RegistryClient

  public init(client: RegistryClient) { self.client = client }

  private func map(_ error: RegistryError) -> PackError {
    PackError(error.code == .notFound ? .notFound : .transport, error.message)
  }

  public func blobExists(_ descriptor: Descriptor) async throws(PackError) -> Bool {
    do { return try await client.blobExists(descriptor.digest) } catch { throw map(error) }
  }
  public func putBlob(_ bytes: [UInt8], descriptor: Descriptor) async throws(PackError) {
    do { try await client.putBlob(bytes, digest: descriptor.digest) } catch { throw map(error) }
  }
  public func fetchBlob(_ descriptor: Descriptor) async throws(PackError) -> [UInt8] {
    do { return try await client.fetchBlob(descriptor.digest, expectedSize: descriptor.size) } catch {
      throw map(error)
    }
  }
  public func putManifest(_ bytes: [UInt8], mediaType: String, reference: String) async throws(PackError) {
    do { try await client.putManifest(bytes, mediaType: mediaType, reference: reference) } catch { throw map(error) }
  }
  public func fetchManifest(_ reference: String) async throws(PackError) -> [UInt8] {
    do { return try await client.fetchManifest(reference, accept: ForkdMediaType.ociManifest) } catch {
      throw map(error)
    }
  }
}
