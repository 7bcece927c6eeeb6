import Syscalls
import SystemdSupport

#if canImport(Glibc)
  import Glibc
#endif

/// Optional per-child memory limit: a cgroup per sandbox, below the supervisor's own cgroup (the
/// subtree a `Delegate=yes` unit owns), holding the child's vmm and pager. cgroup v2
/// (`memory.max`) or the v1 memory controller (`memory.limit_in_bytes`) on hybrid hosts.
enum CgroupLimit {
  enum Hierarchy: Equatable {
    /// Directory under which every sandbox gets `<id>`.
    case v2(String)
    case v1(String)

    var root: String {
      switch self {
      case .v2(let root), .v1(let root): root
      }
    }
  }

  /// Where the sandboxes' cgroups go, found once: `<own cgroup>/forkd-sandboxes` (v2) or
  /// `<own memory cgroup>/forkd-sandboxes` (v1).
  static let hierarchy: Hierarchy? = locate(own: ProcessCgroups.current())

  static func locate(own: ProcessCgroups?, mount: String = "/sys/fs/cgroup") -> Hierarchy? {
    let controllers = (try? FileSystem.readFile(mount + "/cgroup.controllers")).map {
      String(decoding: $0, as: UTF8.self)
    }
    if let controllers, controllers.split(whereSeparator: { $0 == " " || $0 == "\n" }).contains("memory") {
      return .v2(join(mount, own?.unified ?? "/", "forkd-sandboxes"))
    }
    if FileSystem.isDirectory(mount + "/memory") {
      return .v1(join(mount + "/memory", own?.controllers["memory"] ?? "/", "forkd-sandboxes"))
    }
    return nil
  }

  static func apply(id: String, limitMiB: UInt64, pids: [pid_t]) throws(APIError) {
    guard let hierarchy else { throw .badRequest("memory_limit_mib: no cgroup memory controller on this host") }
    // Bounded at decode (SpawnRequest.maxMemoryLimitMiB); checked again so no caller can wrap it.
    let (bytes, overflow) = limitMiB.multipliedReportingOverflow(by: 1 << 20)
    guard !overflow else { throw .badRequest("memory_limit_mib \(limitMiB) does not fit in bytes") }
    let group = hierarchy.root + "/" + id
    do {
      switch hierarchy {
      case .v2(let root):
        try prepareV2(root)
        try FileSystem.makeDirectories(group, mode: 0o755)
        try write("\(bytes)", to: group + "/memory.max")
      case .v1:
        try FileSystem.makeDirectories(group, mode: 0o755)
        try write("\(bytes)", to: group + "/memory.limit_in_bytes")
      }
      for pid in pids { try write("\(pid)", to: group + "/cgroup.procs") }
    } catch {
      remove(id: id)
      throw .internalError("cannot apply memory_limit_mib \(limitMiB) in \(group): \(error)")
    }
  }

  /// Moves one more process (a restarted pager) into the sandbox's cgroup, if it has one.
  static func add(pid: pid_t, id: String) {
    guard let group = path(id: id), FileSystem.isDirectory(group) else { return }
    try? write("\(pid)", to: group + "/cgroup.procs")
  }

  /// Removes the child's cgroup (its processes have ended or moved out).
  static func remove(id: String) {
    if let group = path(id: id) { _ = rmdir(group) }
  }

  static func path(id: String) -> String? { hierarchy.map { $0.root + "/" + id } }

  /// Removes every sandbox cgroup (at start: a previous supervisor's children are gone).
  static func removeAll() {
    guard let root = hierarchy?.root else { return }
    for name in (try? FileSystem.listDirectory(root)) ?? [] where name.hasPrefix("sb-") { _ = rmdir(root + "/" + name) }
  }

  /// cgroup v2 lets only leaves hold processes, and a controller reaches a child only through
  /// its parent's `cgroup.subtree_control`. Below a delegated unit cgroup the supervisor first
  /// moves itself into the leaf `<unit>/supervisor`, then enables memory for `<unit>/forkd-sandboxes`.
  private static func prepareV2(_ root: String) throws(SyscallError) {
    let parent = String(root[..<(root.lastIndex(of: "/") ?? root.endIndex)])
    if subtreeHasMemory(root) { return }
    if parent != "/sys/fs/cgroup" {
      let leaf = parent + "/supervisor"
      if !FileSystem.exists(leaf) { try FileSystem.makeDirectory(leaf, mode: 0o755) }
      try write("\(getpid())", to: leaf + "/cgroup.procs")
    }
    try write("+memory", to: parent + "/cgroup.subtree_control")
    if !FileSystem.exists(root) { try FileSystem.makeDirectory(root, mode: 0o755) }
    try write("+memory", to: root + "/cgroup.subtree_control")
  }

  private static func subtreeHasMemory(_ group: String) -> Bool {
    guard let bytes = try? FileSystem.readFile(group + "/cgroup.subtree_control") else { return false }
    return String(decoding: bytes, as: UTF8.self).contains("memory")
  }

  private static func join(_ mount: String, _ path: String, _ leaf: String) -> String {
    (mount + (path == "/" ? "" : path)) + "/" + leaf
  }

  private static func write(_ text: String, to path: String) throws(SyscallError) {
    let fd = try FileDescriptor.open(path, .writeOnly)
    defer { fd.close() }
    try fd.writeAll(Array(text.utf8))
  }
}
