#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// A typed errno value.
public struct Errno: Error, Equatable, Hashable, Sendable, CustomStringConvertible {
  public let rawValue: Int32
  public init(_ rawValue: Int32) { self.rawValue = rawValue }

  /// The calling thread's current errno.
  public static var current: Errno { Errno(errno) }

  public static let interrupted = Errno(EINTR)
  public static let wouldBlock = Errno(EAGAIN)
  public static let noEntry = Errno(ENOENT)
  public static let exists = Errno(EEXIST)
  public static let badFD = Errno(EBADF)
  public static let invalid = Errno(EINVAL)
  public static let notSupported = Errno(ENOTTY)
  public static let permission = Errno(EACCES)
  public static let notPermitted = Errno(EPERM)
  public static let noSpace = Errno(ENOSPC)
  public static let inProgress = Errno(EINPROGRESS)
  public static let brokenPipe = Errno(EPIPE)
  public static let connectionRefused = Errno(ECONNREFUSED)
  public static let readOnlyFS = Errno(EROFS)
  public static let noChild = Errno(ECHILD)

  public var name: String {
    switch rawValue {
    case EINTR: "EINTR"
    case EAGAIN: "EAGAIN"
    case ENOENT: "ENOENT"
    case EEXIST: "EEXIST"
    case EBADF: "EBADF"
    case EINVAL: "EINVAL"
    case ENOTTY: "ENOTTY"
    case EACCES: "EACCES"
    case EPERM: "EPERM"
    case ENOSPC: "ENOSPC"
    case EFAULT: "EFAULT"
    case ENOMEM: "ENOMEM"
    case EPIPE: "EPIPE"
    case ECONNREFUSED: "ECONNREFUSED"
    case EROFS: "EROFS"
    case ENXIO: "ENXIO"
    case ENODEV: "ENODEV"
    case E2BIG: "E2BIG"
    case ENOSYS: "ENOSYS"
    case ESRCH: "ESRCH"
    case EIO: "EIO"
    case ECHILD: "ECHILD"
    default: "errno \(rawValue)"
    }
  }

  public var description: String {
    guard let message = strerror(rawValue) else { return name }
    return "\(name) (\(String(cString: message)))"
  }
}

/// A failed system call: which call, on what, and the errno.
public struct SyscallError: Error, Equatable, Sendable, CustomStringConvertible {
  public let call: String
  public let errno: Errno
  public let detail: String

  public init(_ call: String, _ errno: Errno, detail: String = "") {
    self.call = call
    self.errno = errno
    self.detail = detail
  }

  public var description: String {
    detail.isEmpty ? "\(call): \(errno)" : "\(call) \(detail): \(errno)"
  }
}
