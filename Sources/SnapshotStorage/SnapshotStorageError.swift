/// A snapshot on disk that cannot be read, checked or written: a stable code, a message naming
/// the file and field, and the cause.
public struct SnapshotStorageError: Error, Sendable, CustomStringConvertible {
  public enum Code: String, Sendable {
    case invalidSnapshot = "invalid_snapshot"
    case snapshotExists = "snapshot_exists"
    case io = "io"
  }

  public let code: Code
  public let message: String
  public let cause: (any Error & Sendable)?

  public init(_ code: Code, _ message: String, cause: (any Error & Sendable)? = nil) {
    self.code = code
    self.message = message
    self.cause = cause
  }

  public var description: String {
    guard let cause else { return message }
    return "\(message): \(cause)"
  }
}
