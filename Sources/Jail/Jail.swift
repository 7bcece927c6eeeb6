import CJail
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// The cell a per-child process (forkd-vmm, forkd-pager) locks itself into once its setup is
/// done: a private mount namespace whose root is the process's working directory (its run
/// directory, which the launcher made its current directory), one unprivileged uid/gid of its
/// own, no capabilities, no_new_privs. Everything the process needs from outside the cell (the
/// snapshot's files, /dev/kvm, the uffd, the listening sockets) is already an open descriptor.
public struct JailSpec: Sendable, Equatable {
  public var uid: UInt32
  public var gid: UInt32
  /// A host directory bind-mounted read-write onto a directory of the cell (relative path), e.g.
  /// the child's own branch directory onto `branches`. At most one: each mount costs time.
  public var bind: (source: String, target: String)?
  /// The cell (the run directory, absolute): the process changes into it first thing, so its
  /// relative paths name files in it, and its command line names its run directory (what a
  /// restarted supervisor looks for to find a child it lost).
  public var cell: String?

  public init(uid: UInt32, gid: UInt32, bind: (source: String, target: String)? = nil, cell: String? = nil) {
    self.uid = uid
    self.gid = gid
    self.bind = bind
    self.cell = cell
  }

  public static func == (a: JailSpec, b: JailSpec) -> Bool {
    a.uid == b.uid && a.gid == b.gid && a.bind?.source == b.bind?.source && a.bind?.target == b.bind?.target
      && a.cell == b.cell
  }

  /// The command-line form launchers pass and the per-child processes read:
  /// `--jail UID:GID [--jail-cell DIR] [--jail-bind SRC:NAME]`.
  public var arguments: [String] {
    var result = ["--jail", "\(uid):\(gid)"]
    if let cell { result += ["--jail-cell", cell] }
    if let bind { result += ["--jail-bind", "\(bind.source):\(bind.target)"] }
    return result
  }

  /// Changes into the cell (nothing without one); a process calls it before using any path.
  public func enterCellDirectory() throws(JailError) {
    guard let cell else { return }
    guard chdir(cell) == 0 else {
      throw JailError(
        .enter, "cannot change into the cell \(cell)", cause: SyscallError("chdir", .current, detail: cell))
    }
  }

  /// Reads `--jail UID:GID`. Root (0) is refused: a jail that
  /// keeps uid 0 is no jail.
  public static func parse(_ value: String) -> Result<JailSpec, JailError> {
    let parts = value.split(separator: ":", omittingEmptySubsequences: false)
    guard parts.count == 2, let uid = UInt32(parts[0]), let gid = UInt32(parts[1]) else {
      return .failure(JailError(.usage, "--jail '\(value)': expected UID:GID (two unsigned numbers)"))
    }
    guard uid != 0, gid != 0 else {
      return .failure(JailError(.usage, "--jail '\(value)': uid and gid must not be 0 (root)"))
    }
    guard uid != UInt32.max, gid != UInt32.max else {
      return .failure(JailError(.usage, "--jail '\(value)': 4294967295 is not a valid id"))
    }
    return .success(JailSpec(uid: uid, gid: gid))
  }

  /// Reads `--jail-bind SOURCE:TARGET` into this spec. The target is a plain name inside the
  /// cell (no '/', not '.' or '..'); the source an absolute host path.
  public mutating func parseBind(_ value: String) -> JailError? {
    guard let colon = value.lastIndex(of: ":") else {
      return JailError(.usage, "--jail-bind '\(value)': expected SOURCE:TARGET")
    }
    let source = String(value[..<colon])
    let target = String(value[value.index(after: colon)...])
    guard source.hasPrefix("/") else { return JailError(.usage, "--jail-bind '\(value)': SOURCE must be absolute") }
    guard !target.isEmpty, !target.contains("/"), target != ".", target != ".." else {
      return JailError(.usage, "--jail-bind '\(value)': TARGET must be one name inside the cell")
    }
    bind = (source, target)
    return nil
  }
}

public struct JailError: Error, CustomStringConvertible, Sendable {
  public enum Code: String, Sendable {
    case usage
    /// A step of entering the cell failed: the process must not go on unjailed.
    case enter
  }
  public let code: Code
  public let message: String
  public let cause: SyscallError?

  public init(_ code: Code, _ message: String, cause: SyscallError? = nil) {
    self.code = code
    self.message = message
    self.cause = cause
  }

  public var description: String { cause.map { "\(message): \($0)" } ?? message }
}

public enum Jail {
  /// Enters the cell described by `spec`, rooted at the current directory. The process must be
  /// single-threaded (a new mount namespace and root apply to the calling thread only) and still
  /// root. On return: own mount namespace, root = the former working directory, uid/gid from
  /// `spec`, the effective, permitted, inheritable and ambient capability sets empty, no_new_privs. Any failure is thrown and the caller must
  /// end: a half-entered jail is never used.
  ///
  /// `relaxed` (ASan/TSan builds only, docs/jail.md): the mount namespace and the bind, but no
  /// root change and no uid change, so the sanitizer runtime can still write its reports to
  /// the absolute path it was given.
  public static func enter(_ spec: JailSpec, relaxed: Bool = false) throws(JailError) {
    try step("unshare(CLONE_NEWNS)") { cjail_private_mount_namespace() }
    if let bind = spec.bind {
      try step("bind \(bind.source) onto \(bind.target)") { cjail_bind(bind.source, bind.target) }
    }
    if relaxed { return }
    try step("chroot into the run directory") { cjail_root_here() }
    try step("clear the ambient capability set") { cjail_clear_ambient_capabilities() }
    try step("become uid \(spec.uid) gid \(spec.gid)") { cjail_become(spec.uid, spec.gid) }
    let left = cjail_has_capabilities()
    guard left == 0 else {
      throw JailError(
        .enter, left < 0 ? "cannot read the capability sets" : "capabilities remain after the uid change",
        cause: left < 0 ? SyscallError("capget", .current) : nil)
    }
    try step("set no_new_privs") { cjail_no_new_privs() }
  }

  private static func step(_ what: String, _ body: () -> Int32) throws(JailError) {
    do {
      _ = try retryingEINTR(what) { body() }
    } catch {
      throw JailError(.enter, "cannot enter the jail: \(what)", cause: error)
    }
  }
}
