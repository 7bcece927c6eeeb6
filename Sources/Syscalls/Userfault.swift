import CUffd

#if canImport(Glibc)
  import Glibc
#endif

/// A userfaultfd: the kernel hands page faults of registered ranges to whoever reads it.
public struct Userfault: Sendable {
  public let fd: FileDescriptor

  public struct Features: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static let pagefaultFlagWP = Features(rawValue: CUFFD_FEATURE_PAGEFAULT_FLAG_WP)
    public static let eventRemove = Features(rawValue: CUFFD_FEATURE_EVENT_REMOVE)
    public static let eventUnmap = Features(rawValue: CUFFD_FEATURE_EVENT_UNMAP)
    public static let eventRemap = Features(rawValue: CUFFD_FEATURE_EVENT_REMAP)
    public static let missingShmem = Features(rawValue: CUFFD_FEATURE_MISSING_SHMEM)
    public static let minorShmem = Features(rawValue: CUFFD_FEATURE_MINOR_SHMEM)
    public static let threadID = Features(rawValue: CUFFD_FEATURE_THREAD_ID)
    public static let exactAddress = Features(rawValue: CUFFD_FEATURE_EXACT_ADDRESS)
    public static let wpUnpopulated = Features(rawValue: CUFFD_FEATURE_WP_UNPOPULATED)
    public static let wpAsync = Features(rawValue: CUFFD_FEATURE_WP_ASYNC)
    public static let move = Features(rawValue: CUFFD_FEATURE_MOVE)

    public var description: String { "0x" + String(rawValue, radix: 16) }
  }

  public struct RegisterMode: OptionSet, Sendable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static let missing = RegisterMode(rawValue: CUFFD_REGISTER_MISSING)
    public static let writeProtect = RegisterMode(rawValue: CUFFD_REGISTER_WP)
    public static let minor = RegisterMode(rawValue: CUFFD_REGISTER_MINOR)
  }

  /// What the kernel reported on the uffd.
  public enum Event: Equatable, Sendable {
    case pageFault(address: UInt64, write: Bool, writeProtect: Bool, minor: Bool, threadID: UInt32)
    case remove(start: UInt64, end: UInt64)
    case unmap(start: UInt64, end: UInt64)
    case remap(from: UInt64, to: UInt64, length: UInt64)
    case fork(fd: Int32)
    case unknown(kind: UInt8)
  }

  public init(fd: FileDescriptor) { self.fd = fd }

  /// Creates a non-blocking, close-on-exec uffd and negotiates `features` (UFFDIO_API).
  /// Falls back to /dev/userfaultfd when the syscall is refused.
  public static func create(features: Features, userModeOnly: Bool = false) throws(SyscallError) -> (
    Userfault, Features
  ) {
    let raw = try retryingEINTR("userfaultfd") { cuffd_create(O_CLOEXEC | O_NONBLOCK, userModeOnly ? 1 : 0) }
    let uffd = Userfault(fd: FileDescriptor(rawValue: raw))
    do {
      let granted = try uffd.negotiate(features)
      return (uffd, granted)
    } catch {
      uffd.fd.close()
      throw error
    }
  }

  /// The features this kernel supports (probed on a throwaway uffd).
  public static func supportedFeatures() throws(SyscallError) -> Features {
    var features: UInt64 = 0
    _ = try retryingEINTR("UFFDIO_API") { cuffd_probe_features(&features) }
    return Features(rawValue: features)
  }

  /// Enables `features` (UFFDIO_API fails with EINVAL if any is unsupported) and returns what is
  /// now enabled. The kernel itself reports its whole supported set, not the enabled one; asking
  /// for WP_ASYNC also enables WP_UNPOPULATED.
  public func negotiate(_ features: Features) throws(SyscallError) -> Features {
    var supported: UInt64 = 0
    var ioctls: UInt64 = 0
    _ = try retryingEINTR("UFFDIO_API", detail: "features \(features)") {
      cuffd_api(fd.rawValue, features.rawValue, &supported, &ioctls)
    }
    return features.contains(.wpAsync) ? features.union(.wpUnpopulated) : features
  }

  public func register(start: UInt64, length: UInt64, mode: RegisterMode) throws(SyscallError) {
    var ioctls: UInt64 = 0
    _ = try retryingEINTR("UFFDIO_REGISTER", detail: "\(hexAddress(start))+\(length)") {
      cuffd_register(fd.rawValue, start, length, mode.rawValue, &ioctls)
    }
  }

  public func unregister(start: UInt64, length: UInt64) throws(SyscallError) {
    _ = try retryingEINTR("UFFDIO_UNREGISTER") { cuffd_unregister(fd.rawValue, start, length) }
  }

  /// Copies `length` bytes from `source` (in this process) into the registered range at
  /// `destination` and, unless `wake` is false, wakes the faulting threads. Returns bytes copied.
  /// EEXIST (already mapped) and EAGAIN (events pending) are returned to the caller as errors;
  /// the pager decides what they mean.
  /// `writeProtect`: the new pages stay write-protected (the range must be registered for WP).
  public func copy(
    to destination: UInt64, from source: UnsafeRawPointer, length: UInt64, wake: Bool = true,
    writeProtect: Bool = false
  ) throws(SyscallError) -> Int64 {
    var done: Int64 = 0
    let mode = (wake ? 0 : CUFFD_COPY_DONTWAKE) | (writeProtect ? CUFFD_COPY_WP : 0)
    do {
      _ = try retryingEINTR("UFFDIO_COPY", detail: hexAddress(destination)) {
        cuffd_copy(fd.rawValue, destination, UInt64(UInt(bitPattern: source)), length, mode, &done)
      }
    } catch  where error.errno == .wouldBlock && done > 0 {
      return done  // partly done before events got in the way: the caller compares with `length`
    }
    return done
  }

  public func zeroPage(at start: UInt64, length: UInt64, wake: Bool = true) throws(SyscallError) -> Int64 {
    var done: Int64 = 0
    do {
      _ = try retryingEINTR("UFFDIO_ZEROPAGE", detail: hexAddress(start)) {
        cuffd_zeropage(fd.rawValue, start, length, wake ? 0 : CUFFD_ZEROPAGE_DONTWAKE, &done)
      }
    } catch  where error.errno == .wouldBlock && done > 0 {
      return done
    }
    return done
  }

  /// Resolves a minor fault by mapping the page already in the page cache.
  public func `continue`(at start: UInt64, length: UInt64, wake: Bool = true) throws(SyscallError) -> Int64 {
    var done: Int64 = 0
    do {
      _ = try retryingEINTR("UFFDIO_CONTINUE", detail: hexAddress(start)) {
        cuffd_continue(fd.rawValue, start, length, wake ? 0 : CUFFD_CONTINUE_DONTWAKE, &done)
      }
    } catch  where error.errno == .wouldBlock && done > 0 {
      return done
    }
    return done
  }

  /// Moves pages from `source` to `destination` without copying (UFFDIO_MOVE).
  public func move(to destination: UInt64, from source: UInt64, length: UInt64, wake: Bool = true) throws(SyscallError)
    -> Int64
  {
    var done: Int64 = 0
    do {
      _ = try retryingEINTR("UFFDIO_MOVE", detail: hexAddress(destination)) {
        cuffd_move(fd.rawValue, destination, source, length, wake ? 0 : CUFFD_MOVE_DONTWAKE, &done)
      }
    } catch  where error.errno == .wouldBlock && done > 0 {
      return done
    }
    return done
  }

  public func wake(start: UInt64, length: UInt64) throws(SyscallError) {
    _ = try retryingEINTR("UFFDIO_WAKE") { cuffd_wake(fd.rawValue, start, length) }
  }

  /// Protects or un-protects a range. `wake: false` only applies to un-protecting (the kernel
  /// rejects WP together with DONTWAKE: protecting never wakes anyone anyway).
  public func writeProtect(start: UInt64, length: UInt64, protect: Bool, wake: Bool = true) throws(SyscallError) {
    _ = try retryingEINTR("UFFDIO_WRITEPROTECT") {
      cuffd_writeprotect(fd.rawValue, start, length, protect ? 1 : 0, wake ? 0 : 1)
    }
  }

  /// Reads pending events (non-blocking): empty when none, nil at EOF.
  public func readEvents(max: Int = 64) throws(SyscallError) -> [Event]? {
    var raw = [cuffd_event](repeating: cuffd_event(), count: Swift.min(Swift.max(max, 1), 64))
    let count: Int32
    do {
      count = try retryingEINTR("read(uffd)") { cuffd_read_events(fd.rawValue, &raw, Int32(raw.count)) }
    } catch  where error.errno == .wouldBlock {
      return []
    }
    if count == 0 { return nil }
    return raw.prefix(Int(count)).map { e in
      switch e.kind {
      case CUFFD_EVENT_PAGEFAULT:
        .pageFault(
          address: e.address, write: e.flags & CUFFD_FAULT_WRITE != 0, writeProtect: e.flags & CUFFD_FAULT_WP != 0,
          minor: e.flags & CUFFD_FAULT_MINOR != 0, threadID: e.thread_id)
      case CUFFD_EVENT_REMOVE: .remove(start: e.address, end: e.end)
      case CUFFD_EVENT_UNMAP: .unmap(start: e.address, end: e.end)
      case CUFFD_EVENT_REMAP: .remap(from: e.address, to: e.end, length: e.length)
      case CUFFD_EVENT_FORK: .fork(fd: Int32(truncatingIfNeeded: e.address))
      default: .unknown(kind: e.kind)
      }
    }
  }
}

func hexAddress(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }
