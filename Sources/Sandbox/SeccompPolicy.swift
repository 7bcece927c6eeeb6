/// A seccomp allow-list for one process role: the system calls it may still make once its setup
/// is done. Everything else gets `defaultAction`.
public struct SeccompPolicy: Sendable, Equatable {
  /// What the kernel does with a system call the policy does not allow.
  public enum Action: Sendable, Equatable, CustomStringConvertible {
    /// The whole process dies from SIGSYS at once (production: nothing to catch, nothing to undo).
    case killProcess
    /// The call fails with this errno (1...4095) and the process goes on.
    case errno(Int32)
    /// The call runs and the kernel logs it (audit / kernel log): to draw up a list, never to ship.
    case log

    public var description: String {
      switch self {
      case .killProcess: "kill-process"
      case .errno(let value): "errno \(value)"
      case .log: "log"
      }
    }
  }

  /// One conditional allowance: `syscall` is allowed when its argument `argument` (0...5) matches.
  /// Several rules for the same call are alternatives.
  public struct ArgumentRule: Sendable, Equatable, CustomStringConvertible {
    public enum Comparison: Sendable, Equatable {
      /// arg == value
      case equal(UInt64)
      /// (arg & mask) == value
      case maskedEqual(mask: UInt64, value: UInt64)
    }

    public var syscall: String
    public var argument: Int
    public var comparison: Comparison

    public init(_ syscall: String, argument: Int, _ comparison: Comparison) {
      self.syscall = syscall
      self.argument = argument
      self.comparison = comparison
    }

    public var description: String {
      switch comparison {
      case .equal(let value): "\(syscall)(arg\(argument) == \(hex(value)))"
      case .maskedEqual(let mask, let value): "\(syscall)(arg\(argument) & \(hex(mask)) == \(hex(value)))"
      }
    }
  }

  /// Names the policy in errors and logs ("pager", "vmm").
  public var name: String
  /// System calls allowed whatever their arguments, by name (resolved for the native architecture).
  /// `ioctl` is not accepted here: list its requests in `allowedIoctls`.
  public var allowedSyscalls: [String]
  /// ioctl(2) is allowed only with these request numbers (argument 1 masked to 32 bits, the width
  /// the kernel reads it with).
  public var allowedIoctls: [UInt]
  /// Calls allowed only with some argument values (for example socket(AF_UNIX, …)).
  public var argumentRules: [ArgumentRule]
  /// What happens to every other call.
  public var defaultAction: Action

  public init(
    name: String, allowedSyscalls: [String], allowedIoctls: [UInt] = [], argumentRules: [ArgumentRule] = [],
    defaultAction: Action = .killProcess
  ) {
    self.name = name
    self.allowedSyscalls = allowedSyscalls
    self.allowedIoctls = allowedIoctls
    self.argumentRules = argumentRules
    self.defaultAction = defaultAction
  }

  /// This policy with another default action (the probe's `errno` / `log` modes).
  public func with(defaultAction: Action) -> SeccompPolicy {
    var copy = self
    copy.defaultAction = defaultAction
    return copy
  }
}

func hex(_ value: some BinaryInteger) -> String { "0x" + String(value, radix: 16) }
