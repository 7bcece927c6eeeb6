import Syscalls

/// Every failure of the VMM: a stable code for programs, a message for people, and the cause.
public struct VMMError: Error, Sendable, CustomStringConvertible {
  public enum Code: String, Sendable {
    case kvmUnavailable = "kvm_unavailable"
    case kvmCall = "kvm_call"
    case invalidImage = "invalid_image"
    case invalidConfig = "invalid_config"
    case invalidSnapshot = "invalid_snapshot"
    case snapshotExists = "snapshot_exists"
    case guestCrashed = "guest_crashed"
    case guestMemory = "guest_memory"
    case device = "device"
    case io = "io"
    case state = "state"
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
