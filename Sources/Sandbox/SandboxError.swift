/// A policy that cannot be built or a filter that cannot be installed: a stable code for programs,
/// a message naming the policy (and the system call) for people, and the underlying errno if any.
public struct SandboxError: Error, Sendable, CustomStringConvertible {
  public enum Code: String, Sendable {
    /// The policy itself is malformed (ioctl allowed unconditionally, bad argument index, …).
    case invalidPolicy = "invalid_policy"
    /// A system call name this architecture (or this libseccomp) does not know.
    case unknownSyscall = "unknown_syscall"
    /// libseccomp refused to create the filter or to add a rule.
    case filter = "filter"
    /// prctl(PR_SET_NO_NEW_PRIVS) failed.
    case noNewPrivs = "no_new_privs"
    /// The kernel refused the filter (or could not apply it to every thread).
    case load = "load"
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
