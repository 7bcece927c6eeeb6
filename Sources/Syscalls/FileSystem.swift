import CUffd

#if canImport(Glibc)
  import Glibc
#endif

/// Path operations used for staging-and-rename writes and cleanup.
public enum FileSystem {
  public static func exists(_ path: String) -> Bool {
    var st = stat()
    return lstat(path, &st) == 0
  }

  public static func isDirectory(_ path: String) -> Bool {
    var st = stat()
    return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
  }

  public static func makeDirectory(_ path: String, mode: mode_t = 0o700) throws(SyscallError) {
    _ = try retryingEINTR("mkdir", detail: path) { mkdir(path, mode) }
  }

  /// lchown(2): never follows a symlink at `path`.
  public static func changeOwner(_ path: String, uid: UInt32, gid: UInt32) throws(SyscallError) {
    _ = try retryingEINTR("lchown", detail: path) { lchown(path, uid, gid) }
  }

  /// mkdir -p.
  public static func makeDirectories(_ path: String, mode: mode_t = 0o700) throws(SyscallError) {
    var current = path.hasPrefix("/") ? "" : "."
    for component in path.split(separator: "/") {
      current += "/" + component
      if isDirectory(current) { continue }
      do throws(SyscallError) { try makeDirectory(current, mode: mode) } catch  where error.errno == .exists {}
    }
  }

  /// rename(2); with `noReplace` the destination must not exist (RENAME_NOREPLACE), so two writers
  /// of the same snapshot cannot overwrite each other.
  public static func rename(_ from: String, to: String, noReplace: Bool = false) throws(SyscallError) {
    if noReplace {
      _ = try retryingEINTR("renameat2", detail: "\(from) -> \(to)") {
        cuffd_rename_noreplace(from, to)
      }
    } else {
      _ = try retryingEINTR("rename", detail: "\(from) -> \(to)") { Glibc.rename(from, to) }
    }
  }

  public static func unlink(_ path: String) throws(SyscallError) {
    _ = try retryingEINTR("unlink", detail: path) { Glibc.unlink(path) }
  }

  /// Removes a file, or a directory tree, without following symlinks. Missing paths are fine.
  public static func removeTree(_ path: String) {
    var st = stat()
    guard lstat(path, &st) == 0 else { return }
    if (st.st_mode & S_IFMT) == S_IFDIR {
      for name in (try? listDirectory(path)) ?? [] { removeTree(path + "/" + name) }
      _ = rmdir(path)
    } else {
      _ = Glibc.unlink(path)
    }
  }

  public static func listDirectory(_ path: String) throws(SyscallError) -> [String] {
    guard let dir = opendir(path) else { throw SyscallError("opendir", .current, detail: path) }
    defer { closedir(dir) }
    var names: [String] = []
    while let entry = readdir(dir) {
      let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
        String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
      }
      if name != "." && name != ".." { names.append(name) }
    }
    return names.sorted()
  }

  /// fsyncs a directory so a rename inside it is durable.
  public static func syncDirectory(_ path: String) throws(SyscallError) {
    let fd = try FileDescriptor.open(path, [.readOnly, .directory])
    defer { fd.close() }
    try fd.sync()
  }

  /// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
  public static func writeAtomically(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o600) throws(SyscallError) {
    let temp = path + ".tmp-\(getpid())"
    // A leftover (or planted symlink) at the temporary name is removed, never written through.
    _ = Glibc.unlink(temp)
    let fd = try FileDescriptor.open(temp, [.writeOnly, .create, .exclusive, .noFollow], mode: mode)
    do throws(SyscallError) {
      try fd.writeAll(bytes)
      try fd.sync()
      fd.close()
      try rename(temp, to: path)
    } catch {
      fd.close()
      _ = Glibc.unlink(temp)
      throw error
    }
  }

  public static func readFile(_ path: String, limit: Int = 64 << 20) throws(SyscallError) -> [UInt8] {
    let fd = try FileDescriptor.open(path, .readOnly)
    defer { fd.close() }
    return try fd.readAll(limit: limit)
  }
}
