import CUffd

#if canImport(Glibc)
  import Glibc
#endif

/// A raw file descriptor with EINTR-retrying, typed-error operations. It does not close itself:
/// ownership is explicit, as in swift-system.
public struct FileDescriptor: Hashable, Sendable, CustomStringConvertible {
  public let rawValue: Int32
  public init(rawValue: Int32) { self.rawValue = rawValue }
  public var description: String { "fd \(rawValue)" }

  public struct OpenFlags: OptionSet, Sendable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }
    public static let readOnly = OpenFlags([])
    public static let writeOnly = OpenFlags(rawValue: O_WRONLY)
    public static let readWrite = OpenFlags(rawValue: O_RDWR)
    public static let create = OpenFlags(rawValue: O_CREAT)
    public static let exclusive = OpenFlags(rawValue: O_EXCL)
    public static let truncate = OpenFlags(rawValue: O_TRUNC)
    public static let append = OpenFlags(rawValue: O_APPEND)
    public static let directory = OpenFlags(rawValue: O_DIRECTORY)
    public static let noFollow = OpenFlags(rawValue: O_NOFOLLOW)
    public static let nonBlocking = OpenFlags(rawValue: O_NONBLOCK)
  }

  public static func open(
    _ path: String, _ flags: OpenFlags, mode: mode_t = 0o600
  ) throws(SyscallError) -> FileDescriptor {
    let fd = try retryingEINTR("open", detail: path) { Glibc.open(path, flags.rawValue | O_CLOEXEC, mode) }
    return FileDescriptor(rawValue: fd)
  }

  public func close() {
    // Never retry close(2) on Linux: the descriptor is released even when it reports EINTR.
    _ = Glibc.close(rawValue)
  }

  public func read(into buffer: UnsafeMutableRawBufferPointer) throws(SyscallError) -> Int {
    try retryingEINTR("read") { Glibc.read(rawValue, buffer.baseAddress, buffer.count) }
  }

  public func read(upTo count: Int) throws(SyscallError) -> [UInt8] {
    var result = [UInt8](repeating: 0, count: count)
    let n = try retryingEINTR("read") {
      result.withUnsafeMutableBytes { Glibc.read(rawValue, $0.baseAddress, $0.count) }
    }
    result.removeSubrange(n...)
    return result
  }

  public func write(_ buffer: UnsafeRawBufferPointer) throws(SyscallError) -> Int {
    try retryingEINTR("write") { Glibc.write(rawValue, buffer.baseAddress, buffer.count) }
  }

  /// Writes every byte, looping over short writes.
  public func writeAll(_ bytes: some Collection<UInt8>) throws(SyscallError) {
    let array = Array(bytes)
    var offset = 0
    while offset < array.count {
      let n = try retryingEINTR("write") {
        array.withUnsafeBytes { Glibc.write(rawValue, $0.baseAddress! + offset, $0.count - offset) }
      }
      offset += n
    }
  }

  public func pread(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws(SyscallError) -> Int {
    try retryingEINTR("pread") { Glibc.pread(rawValue, buffer.baseAddress, buffer.count, Int(offset)) }
  }

  /// Writes all of `buffer` at `offset`, looping over short writes.
  public func pwriteAll(_ buffer: UnsafeRawBufferPointer, at offset: Int64) throws(SyscallError) {
    var done = 0
    while done < buffer.count {
      let n = try retryingEINTR("pwrite") {
        Glibc.pwrite(rawValue, buffer.baseAddress! + done, buffer.count - done, Int(offset) + done)
      }
      done += n
    }
  }

  public func pwriteAll(_ bytes: [UInt8], at offset: Int64) throws(SyscallError) {
    var done = 0
    while done < bytes.count {
      let n = try retryingEINTR("pwrite") {
        bytes.withUnsafeBytes { Glibc.pwrite(rawValue, $0.baseAddress! + done, $0.count - done, Int(offset) + done) }
      }
      done += n
    }
  }

  /// Reads the whole file from offset 0 until EOF (so /proc files, whose size is 0, work too),
  /// refusing files larger than `limit`.
  public func readAll(limit: Int) throws(SyscallError) -> [UInt8] {
    let hint = try self.size()
    guard hint <= Int64(limit) else {
      throw SyscallError("read", Errno(EFBIG), detail: "file of \(hint) bytes, limit \(limit)")
    }
    var result = [UInt8](repeating: 0, count: max(Int(hint), 4096))
    var done = 0
    while true {
      if done == result.count {
        guard result.count < limit else { throw SyscallError("read", Errno(EFBIG), detail: "more than \(limit) bytes") }
        result += [UInt8](repeating: 0, count: min(result.count, limit - result.count))
      }
      let n = try retryingEINTR("pread") {
        result.withUnsafeMutableBytes { Glibc.pread(rawValue, $0.baseAddress! + done, $0.count - done, done) }
      }
      if n == 0 { break }
      done += n
    }
    result.removeSubrange(done...)
    return result
  }

  public func size() throws(SyscallError) -> Int64 {
    var st = stat()
    _ = try retryingEINTR("fstat") { fstat(rawValue, &st) }
    return Int64(st.st_size)
  }

  public func truncate(to size: Int64) throws(SyscallError) {
    _ = try retryingEINTR("ftruncate") { ftruncate(rawValue, Int(size)) }
  }

  public func sync() throws(SyscallError) {
    _ = try retryingEINTR("fsync") { fsync(rawValue) }
  }

  /// lseek with SEEK_DATA / SEEK_HOLE; nil when there is no more data (ENXIO).
  public func seek(data offset: Int64) throws(SyscallError) -> Int64? {
    try seekSparse(offset, whence: 3)  // SEEK_DATA
  }

  public func seek(hole offset: Int64) throws(SyscallError) -> Int64? {
    try seekSparse(offset, whence: 4)  // SEEK_HOLE
  }

  private func seekSparse(_ offset: Int64, whence: Int32) throws(SyscallError) -> Int64? {
    do throws(SyscallError) {
      return Int64(try retryingEINTR("lseek") { lseek(rawValue, Int(offset), whence) })
    } catch  where error.errno.rawValue == ENXIO {
      return nil
    }
  }

  public func setNonBlocking(_ on: Bool = true) throws(SyscallError) {
    let flags = try retryingEINTR("fcntl") { fcntl(rawValue, F_GETFL) }
    _ = try retryingEINTR("fcntl") { fcntl(rawValue, F_SETFL, on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK) }
  }

  public func setCloseOnExec(_ on: Bool) throws(SyscallError) {
    _ = try retryingEINTR("fcntl") { fcntl(rawValue, F_SETFD, on ? FD_CLOEXEC : 0) }
  }

  public func duplicate() throws(SyscallError) -> FileDescriptor {
    FileDescriptor(rawValue: try retryingEINTR("fcntl(F_DUPFD_CLOEXEC)") { fcntl(rawValue, F_DUPFD_CLOEXEC, 3) })
  }

  public static func pipe() throws(SyscallError) -> (read: FileDescriptor, write: FileDescriptor) {
    var fds: [Int32] = [0, 0]
    _ = try retryingEINTR("pipe2") { cuffd_pipe_cloexec(&fds) }
    return (FileDescriptor(rawValue: fds[0]), FileDescriptor(rawValue: fds[1]))
  }
}

extension FileDescriptor {
  /// Drops the file's clean pages from the page cache (POSIX_FADV_DONTNEED): a cold start.
  public func evictFromPageCache() throws(SyscallError) {
    let rc = posix_fadvise(rawValue, 0, 0, POSIX_FADV_DONTNEED)
    guard rc == 0 else { throw SyscallError("posix_fadvise(DONTNEED)", Errno(rc)) }
  }
}
