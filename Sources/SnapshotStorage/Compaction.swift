import Protocol
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// Flattens a diff chain into one full snapshot that any backend can restore (the File backend
/// maps a single memory.bin). Written into a staging directory and renamed into place.
public enum SnapshotCompaction {
  public struct Result: Sendable {
    public let manifest: SnapshotManifest
    public let dataBytes: UInt64
    public let nanoseconds: UInt64
  }

  public static func flatten(_ chain: SnapshotChain, into directory: String) throws(SnapshotStorageError) -> Result {
    let started = Clock.monotonicNanoseconds()
    guard !FileSystem.exists(directory) else {
      throw SnapshotStorageError(.snapshotExists, "\(directory) already exists: a snapshot is never overwritten")
    }
    let staging = "\(directory).staging-\(getpid())-\(started)"
    let top = chain.layers.last!
    do {
      try FileSystem.makeDirectory(staging, mode: 0o700)
    } catch {
      throw SnapshotStorageError(.io, "cannot create the staging directory \(staging)", cause: error)
    }
    do throws(SnapshotStorageError) {
      let memoryPath = staging + "/" + SnapshotManifest.defaultMemoryFile
      let dataBytes = try writeFlatMemory(chain, to: memoryPath)
      let stateBytes: [UInt8]
      do {
        stateBytes = try FileSystem.readFile(top.directory + "/" + top.manifest.stateFile)
      } catch {
        throw SnapshotStorageError(.io, "\(top.directory): cannot read the VM state", cause: error)
      }
      guard SHA256.digestString(of: stateBytes) == top.manifest.stateDigest else {
        throw SnapshotStorageError(
          .invalidSnapshot, "\(top.directory)/\(top.manifest.stateFile) does not match its manifest's state_digest")
      }
      try SnapshotFiles.write(staging + "/" + SnapshotManifest.defaultStateFile, stateBytes)
      let manifest = SnapshotManifest(
        memorySize: top.manifest.memorySize, vcpuCount: top.manifest.vcpuCount, guestKind: top.manifest.guestKind,
        guestImageDigest: top.manifest.guestImageDigest, createdAtUnix: Clock.unixSeconds(), parentTag: nil,
        stateDigest: top.manifest.stateDigest,
        contentDigest: try LayerDigest.compute(memoryPath: memoryPath, index: nil))
      try SnapshotFiles.write(staging + "/manifest.json", Array(manifest.jsonText().utf8))
      try SnapshotFiles.publish(staging: staging, as: directory)
      return Result(manifest: manifest, dataBytes: dataBytes, nanoseconds: Clock.monotonicNanoseconds() - started)
    } catch {
      FileSystem.removeTree(staging)
      throw error
    }
  }

  /// Every page with data, taken from the layer that owns it (ChainImage resolves the chain);
  /// zero pages stay holes.
  private static func writeFlatMemory(_ chain: SnapshotChain, to path: String) throws(SnapshotStorageError) -> UInt64 {
    let image = try ChainImage(chain: chain)
    do {
      let out = try FileDescriptor.open(path, [.writeOnly, .create, .exclusive], mode: 0o600)
      defer { out.close() }
      try out.truncate(to: Int64(image.size))
      var written: UInt64 = 0
      for page in 0..<image.pageCount {
        guard let data = image.page(page) else { continue }
        try out.pwriteAll(UnsafeRawBufferPointer(start: data, count: 4096), at: Int64(page) * 4096)
        written += 4096
      }
      try out.sync()
      return written
    } catch {
      throw SnapshotStorageError(.io, "\(path): cannot write the flattened memory", cause: error)
    }
  }
}
