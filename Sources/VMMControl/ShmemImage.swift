import Protocol
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// The shmem (tmpfs) copy of a snapshot's memory.bin used by the shmem-minor backend. One per
/// snapshot, shared by all its children: its page cache is what they map.
public enum ShmemImage {
  public static let directory = "/dev/shm"

  /// The image's path for `snapshot` (named after the manifest's digest: content, not location).
  public static func path(for snapshot: String) throws(ControlError) -> String {
    do {
      let manifest = try FileSystem.readFile(snapshot + "/manifest.json", limit: 1 << 20)
      let digest = SHA256.hex(of: SHA256.hash(manifest))
      return directory + "/forkd-" + String(digest.prefix(32)) + ".mem"
    } catch {
      throw ControlError(.launch, "\(snapshot): cannot read manifest.json", cause: error)
    }
  }

  /// Creates the image if it does not exist yet (data extents copied, holes kept), atomically.
  @discardableResult
  public static func ensure(for snapshot: String) throws(ControlError) -> String {
    let target = try path(for: snapshot)
    if FileSystem.exists(target) { return target }
    let staging = target + ".tmp-\(getpid())-\(Clock.monotonicNanoseconds())"
    do {
      let source = try FileDescriptor.open(snapshot + "/" + SnapshotManifest.defaultMemoryFile, .readOnly)
      defer { source.close() }
      let output = try FileDescriptor.open(staging, [.writeOnly, .create, .exclusive], mode: 0o600)
      defer { output.close() }
      let size = try source.size()
      try output.truncate(to: size)
      var buffer = [UInt8](repeating: 0, count: 1 << 20)
      var offset: Int64 = 0
      while offset < size, let dataStart = try source.seek(data: offset) {
        let dataEnd = try source.seek(hole: dataStart) ?? size
        var position = dataStart
        while position < dataEnd {
          let want = Int(min(Int64(buffer.count), dataEnd - position))
          let n = try buffer.withUnsafeMutableBytes { (raw) throws(SyscallError) -> Int in
            try source.pread(into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<want]), at: position)
          }
          if n == 0 { break }
          try output.pwriteAll(Array(buffer[0..<n]), at: position)
          position += Int64(n)
        }
        offset = dataEnd
      }
      try FileSystem.rename(staging, to: target, noReplace: true)
    } catch {
      _ = try? FileSystem.unlink(staging)
      // Another owner may have created it first: that is fine.
      if FileSystem.exists(target) { return target }
      throw ControlError(.launch, "cannot create the shmem image \(target)", cause: error)
    }
    return target
  }

  public static func remove(for snapshot: String) {
    if let target = try? path(for: snapshot) { _ = try? FileSystem.unlink(target) }
  }
}
