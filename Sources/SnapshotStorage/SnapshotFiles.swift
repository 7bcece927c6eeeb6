import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// Writing a snapshot directory: every file created new and fsynced in a staging directory,
/// which is published by a rename that never replaces an existing snapshot.
public enum SnapshotFiles {
  /// Creates `path` (it must not exist), writes `bytes` and fsyncs.
  public static func write(_ path: String, _ bytes: [UInt8]) throws(SnapshotStorageError) {
    do {
      let fd = try FileDescriptor.open(path, [.writeOnly, .create, .exclusive], mode: 0o600)
      defer { fd.close() }
      try fd.writeAll(bytes)
      try fd.sync()
    } catch {
      throw SnapshotStorageError(.io, "\(path): cannot write", cause: error)
    }
  }

  /// Syncs `staging`, renames it to `directory` (RENAME_NOREPLACE) and syncs the parent.
  public static func publish(staging: String, as directory: String) throws(SnapshotStorageError) {
    do {
      try FileSystem.syncDirectory(staging)
      try FileSystem.rename(staging, to: directory, noReplace: true)
      try FileSystem.syncDirectory(parentDirectory(of: directory))
    } catch {
      if error.errno == .exists || error.errno == Errno(ENOTEMPTY) {
        throw SnapshotStorageError(
          .snapshotExists, "\(directory) appeared while the snapshot was written", cause: error)
      }
      throw SnapshotStorageError(.io, "cannot move the snapshot into \(directory)", cause: error)
    }
  }
}
