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

  /// The base's data ranges, then each layer's pages over them (zero pages of a layer are
  /// written as zeros: they hide what the layers below hold).
  private static func writeFlatMemory(_ chain: SnapshotChain, to path: String) throws(SnapshotStorageError) -> UInt64 {
    let size = chain.layers[0].manifest.memorySize
    let pages = Int(size / 4096)
    var owner = [UInt8](repeating: 0, count: pages)
    for (depth, layer) in chain.layers.enumerated().dropFirst() {
      let indexPath = layer.pageIndexPath!
      do {
        let index = try PageIndex.parse(FileSystem.readFile(indexPath), source: indexPath, expectedPages: pages)
        for page in index.pages { owner[page] = UInt8(depth) }
      } catch {
        throw SnapshotStorageError(.invalidSnapshot, "\(indexPath): \(error)")
      }
    }
    do {
      let out = try FileDescriptor.open(path, [.writeOnly, .create, .exclusive], mode: 0o600)
      defer { out.close() }
      try out.truncate(to: Int64(size))
      var sources: [FileDescriptor] = []
      defer { sources.forEach { $0.close() } }
      for layer in chain.layers { sources.append(try FileDescriptor.open(layer.memoryPath, .readOnly)) }
      let page = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
      defer { page.deallocate() }
      var written: UInt64 = 0
      // Pages the base owns: copy only its data (holes stay holes).
      var offset: Int64 = 0
      let base = sources[0]
      while offset < Int64(size), let dataStart = try base.seek(data: offset) {
        let dataEnd = try base.seek(hole: dataStart) ?? Int64(size)
        for p in Int(dataStart / 4096)..<min(pages, Int((dataEnd + 4095) / 4096)) where owner[p] == 0 {
          guard try base.pread(into: page, at: Int64(p) * 4096) == 4096 else { continue }
          try out.pwriteAll(UnsafeRawBufferPointer(page), at: Int64(p) * 4096)
          written += 4096
        }
        offset = dataEnd
      }
      for p in 0..<pages where owner[p] != 0 {
        guard try sources[Int(owner[p])].pread(into: page, at: Int64(p) * 4096) == 4096 else {
          throw SyscallError("pread", .invalid, detail: "\(chain.layers[Int(owner[p])].memoryPath) page \(p) short")
        }
        try out.pwriteAll(UnsafeRawBufferPointer(page), at: Int64(p) * 4096)
        written += 4096
      }
      try out.sync()
      return written
    } catch let error as SnapshotStorageError {
      throw error
    } catch {
      throw SnapshotStorageError(.io, "\(path): cannot write the flattened memory", cause: error)
    }
  }
}
