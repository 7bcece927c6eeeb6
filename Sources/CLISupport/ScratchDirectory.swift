import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// A private scratch directory for one CLI run: VM run directories and snapshots live here and
/// all of it is removed at the end unless the user asks to keep it.
public struct ScratchDirectory: Sendable {
  public let path: String

  public init(prefix: String, base: String?) throws {
    let root = base ?? (getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp")
    var template = Array("\(root)/\(prefix)-XXXXXX".utf8CString)
    guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
      throw SyscallError("mkdtemp", .current, detail: root)
    }
    path = String(cString: made)
  }

  public func remove() { FileSystem.removeTree(path) }
}
