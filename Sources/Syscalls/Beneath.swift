import CUffd

#if canImport(Glibc)
  import Glibc
#endif

/// Opening a path confined to a directory: nothing in `relative` (a symlink, "..", an absolute
/// link target, a /proc magic link) may lead the resolution out of `directory`.
public enum Beneath {
  /// A file opened read-only under `directory`, and what it is.
  public struct Opened: ~Copyable {
    public let fd: FileDescriptor
    /// The absolute path the kernel resolved (no symlinks in it), from /proc/self/fd.
    public let resolvedPath: String
    public let isRegularFile: Bool

    deinit { fd.close() }
  }

  /// Opens `relative` under `directory` (openat2 with RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS).
  /// EXDEV means the path leads out of the directory.
  public static func open(_ relative: String, in directory: String) throws(SyscallError) -> Opened {
    let root = try FileDescriptor.open(directory, [.readOnly, .directory])
    defer { root.close() }
    let raw = try retryingEINTR("openat2", detail: "\(relative) beneath \(directory)") {
      cuffd_open_beneath(root.rawValue, relative)
    }
    let fd = FileDescriptor(rawValue: raw)
    var st = stat()
    guard fstat(raw, &st) == 0 else {
      let error = SyscallError("fstat", .current, detail: relative)
      fd.close()
      throw error
    }
    var buffer = [CChar](repeating: 0, count: 4097)
    let n = readlink("/proc/self/fd/\(raw)", &buffer, buffer.count - 1)
    guard n > 0 else {
      let error = SyscallError("readlink", .current, detail: "/proc/self/fd/\(raw)")
      fd.close()
      throw error
    }
    let resolved = String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return Opened(fd: fd, resolvedPath: resolved, isRegularFile: (st.st_mode & S_IFMT) == S_IFREG)
  }
}
