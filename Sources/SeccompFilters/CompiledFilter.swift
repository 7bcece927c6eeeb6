import CSeccompLoad

/// A seccomp BPF program compiled from a role's policy at build time (see forkd-seccomp-compile),
/// loaded without libseccomp: installing it costs microseconds, not the ~1 ms of compiling.
public struct CompiledFilter: Sendable {
  public let name: String
  /// `struct sock_filter` instructions, 8 bytes each, native byte order.
  public let program: [UInt8]

  init(name: String, hex: StaticString) {
    self.name = name
    var bytes: [UInt8] = []
    hex.withUTF8Buffer { text in
      bytes.reserveCapacity(text.count / 2)
      func nibble(_ c: UInt8) -> UInt8 { c <= UInt8(ascii: "9") ? c - UInt8(ascii: "0") : c - UInt8(ascii: "a") + 10 }
      var i = 0
      while i + 1 < text.count {
        bytes.append(nibble(text[i]) << 4 | nibble(text[i + 1]))
        i += 2
      }
    }
    program = bytes
  }

  public var instructionCount: Int { program.count / 8 }

  public struct LoadError: Error, CustomStringConvertible, Sendable {
    public let filter: String
    public let errno: Int32
    public var description: String { "cannot install the \(filter) seccomp filter (errno \(errno))" }
  }

  /// Sets NO_NEW_PRIVS and installs the program on every thread (TSYNC). Irreversible.
  public func install() throws(LoadError) {
    let rc = program.withUnsafeBytes { cseccomp_load_program($0.baseAddress, $0.count / 8) }
    guard rc == 0 else { throw LoadError(filter: name, errno: -rc) }
  }
}

extension CompiledFilter {
  /// The filter a per-child process of this build installs for `role` ("pager" or "vmm"): the
  /// shipped one, or in an ASan/TSan build the same list plus the sanitizer runtime's own calls.
  public static func forRole(_ role: Role) -> CompiledFilter {
    let sanitized = cseccomp_sanitizer_runtime() != 0
    switch role {
    case .pager: return sanitized ? .pagerUnderSanitizer : .pager
    case .vmm: return sanitized ? .vmmUnderSanitizer : .vmm
    case .pagerJailed: return sanitized ? .pagerJailedUnderSanitizer : .pagerJailed
    }
  }

  /// Whether this binary was built with ASan or TSan (scripts/sanitize): such builds also enter a
  /// relaxed jail only (docs/jail.md).
  public static var sanitizerBuild: Bool { cseccomp_sanitizer_runtime() != 0 }

  /// `pagerJailed`: a pager in its jail (docs/jail.md), which never renames its record itself.
  public enum Role: Sendable { case pager, vmm, pagerJailed }
}
