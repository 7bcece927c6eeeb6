#if canImport(Glibc)
  import Glibc
#endif

/// mmap(2) and friends.
public enum MemoryMapping {
  public struct Protection: OptionSet, Sendable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }
    public static let read = Protection(rawValue: PROT_READ)
    public static let write = Protection(rawValue: PROT_WRITE)
    public static let readWrite: Protection = [.read, .write]
  }

  public static let pageSize = 4096

  /// An anonymous private mapping (zero-filled, demand-allocated).
  public static func anonymous(size: Int, noReserve: Bool = true) throws(SyscallError) -> UnsafeMutableRawPointer {
    try map(
      size: size, protection: .readWrite, flags: MAP_PRIVATE | MAP_ANONYMOUS | (noReserve ? MAP_NORESERVE : 0), fd: -1,
      offset: 0)
  }

  /// A private (copy-on-write) mapping of a file: clean pages stay shared through the page cache.
  public static func privateFile(
    _ fd: FileDescriptor, size: Int, offset: Int64 = 0, protection: Protection = .readWrite
  )
    throws(SyscallError) -> UnsafeMutableRawPointer
  {
    try map(size: size, protection: protection, flags: MAP_PRIVATE | MAP_NORESERVE, fd: fd.rawValue, offset: offset)
  }

  /// A shared mapping of a file or memfd.
  public static func sharedFile(_ fd: FileDescriptor, size: Int, offset: Int64 = 0, protection: Protection = .readWrite)
    throws(SyscallError) -> UnsafeMutableRawPointer
  {
    try map(size: size, protection: protection, flags: MAP_SHARED, fd: fd.rawValue, offset: offset)
  }

  public static func unmap(_ address: UnsafeMutableRawPointer, size: Int) {
    _ = munmap(address, size)
  }

  public static func advise(_ address: UnsafeMutableRawPointer, size: Int, _ advice: Int32) throws(SyscallError) {
    _ = try retryingEINTR("madvise") { madvise(address, size, advice) }
  }

  private static func map(size: Int, protection: Protection, flags: Int32, fd: Int32, offset: Int64)
    throws(SyscallError) -> UnsafeMutableRawPointer
  {
    try FaultInjection.check("mmap")
    guard let p = mmap(nil, size, protection.rawValue, flags, fd, Int(offset)), p != MAP_FAILED else {
      throw SyscallError("mmap", .current, detail: "\(size) bytes")
    }
    return p
  }
}
