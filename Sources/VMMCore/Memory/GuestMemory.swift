import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// Where guest RAM comes from. One enum so each new backend (userfault, shmem-minor) is one case.
public enum MemoryBackend: Sendable, Equatable, CustomStringConvertible {
  /// Fresh zeroed memory, for booting.
  case anonymous
  /// `memory.bin` mapped MAP_PRIVATE: children share clean pages through the page cache and
  /// copy a page only when they write it.
  case file(path: String)
  /// Anonymous private memory registered with a userfaultfd: every first touch of a page is a
  /// fault that the child's `forkd-pager` answers from `path` (UFFDIO_COPY / UFFDIO_ZEROPAGE).
  case userfault(path: String)
  /// A shmem (tmpfs) copy of memory.bin mapped MAP_PRIVATE and registered for MINOR faults:
  /// children share its page cache like the File backend, yet every first touch still goes to
  /// the pager, which maps the page with UFFDIO_CONTINUE.
  case shmemMinor(path: String)

  public var description: String {
    switch self {
    case .anonymous: "anonymous"
    case .file(let path): "file(\(path))"
    case .userfault(let path): "uffd(\(path))"
    case .shmemMinor(let path): "shmem-minor(\(path))"
    }
  }

  public var name: String {
    switch self {
    case .anonymous: "anonymous"
    case .file: "file"
    case .userfault: "uffd"
    case .shmemMinor: "shmem-minor"
    }
  }
}

/// Guest physical memory: one or more host mappings, every access bounds-checked.
public final class GuestMemory: @unchecked Sendable {
  public struct Region: @unchecked Sendable {
    public let guestPhysical: UInt64
    public let size: UInt64
    public let host: UnsafeMutableRawPointer
    /// Offset of this region in `memory.bin` (regions are laid back to back).
    public let fileOffset: UInt64
  }

  public static let pageSize: UInt64 = 4096
  /// Guest RAM must end below the device window.
  public static let maximumSize: UInt64 = 0xC000_0000

  public let size: UInt64
  public let regions: [Region]
  public let backend: MemoryBackend

  public static func create(size: UInt64, backend: MemoryBackend) throws(VMMError) -> GuestMemory {
    guard size > 0, size % (2 << 20) == 0, size <= maximumSize else {
      throw VMMError(
        .invalidConfig,
        "guest memory size \(size) bytes: must be a non-zero multiple of 2 MiB up to \(maximumSize >> 20) MiB")
    }
    let host: UnsafeMutableRawPointer
    switch backend {
    case .userfault(let path):
      // Checked here too, so a truncated memory.bin fails before any pager runs.
      try checkSize(of: path, expected: size)
      fallthrough
    case .anonymous:
      do {
        host = try MemoryMapping.anonymous(size: Int(size))
      } catch {
        throw VMMError(.guestMemory, "cannot map \(size >> 20) MiB of guest memory", cause: error)
      }
    case .file(let path), .shmemMinor(let path):
      try checkSize(of: path, expected: size)
      do {
        let fd = try FileDescriptor.open(path, .readOnly)
        defer { fd.close() }
        host = try MemoryMapping.privateFile(fd, size: Int(size))
      } catch {
        throw VMMError(.guestMemory, "\(path): cannot map memory file", cause: error)
      }
    }
    return GuestMemory(
      size: size, regions: [Region(guestPhysical: 0, size: size, host: host, fileOffset: 0)], backend: backend)
  }

  private static func checkSize(of path: String, expected size: UInt64) throws(VMMError) {
    let fd: FileDescriptor
    do {
      fd = try FileDescriptor.open(path, .readOnly)
    } catch {
      throw VMMError(.invalidSnapshot, "\(path): cannot open memory file", cause: error)
    }
    defer { fd.close() }
    let fileSize: Int64
    do { fileSize = try fd.size() } catch { throw VMMError(.invalidSnapshot, "\(path): cannot stat", cause: error) }
    guard UInt64(fileSize) == size else {
      throw VMMError(
        .invalidSnapshot,
        "\(path): memory file is \(fileSize) bytes but the snapshot's memory_size is \(size)"
          + (UInt64(fileSize) < size ? " (truncated)" : ""))
    }
  }

  init(size: UInt64, regions: [Region], backend: MemoryBackend) {
    self.size = size
    self.regions = regions
    self.backend = backend
  }

  deinit {
    for region in regions { MemoryMapping.unmap(region.host, size: Int(region.size)) }
  }

  /// The host address of `length` bytes at guest address `address`, or nil if any byte of the
  /// range lies outside guest RAM (a guest-controlled address never reaches host memory beyond).
  @inline(__always)
  public func host(_ address: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
    for region in regions {
      let (end, overflow) = address.addingReportingOverflow(length)
      if !overflow, address >= region.guestPhysical, end <= region.guestPhysical + region.size {
        return region.host + Int(address - region.guestPhysical)
      }
    }
    return nil
  }

  public func read<T: FixedWidthInteger>(_: T.Type, at address: UInt64) -> T? {
    guard let p = host(address, length: UInt64(MemoryLayout<T>.size)) else { return nil }
    return T(littleEndian: p.loadUnaligned(as: T.self))
  }

  @discardableResult
  public func write<T: FixedWidthInteger>(_ value: T, at address: UInt64) -> Bool {
    guard let p = host(address, length: UInt64(MemoryLayout<T>.size)) else { return false }
    p.storeBytes(of: value.littleEndian, as: T.self)
    return true
  }

  public func readBytes(at address: UInt64, count: Int) -> [UInt8]? {
    guard let p = host(address, length: UInt64(count)) else { return nil }
    return [UInt8](UnsafeRawBufferPointer(start: p, count: count))
  }

  @discardableResult
  public func writeBytes(_ bytes: some Collection<UInt8>, at address: UInt64) -> Bool {
    guard let p = host(address, length: UInt64(bytes.count)) else { return false }
    let buffer = UnsafeMutableRawBufferPointer(start: p, count: bytes.count)
    buffer.copyBytes(from: bytes)
    return true
  }
}
