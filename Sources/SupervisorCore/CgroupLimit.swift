import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// Optional per-child memory limit: a cgroup `forkd/<sandbox id>` holding the child's processes,
/// on cgroup v2 (`memory.max`) or the v1 memory controller (`memory.limit_in_bytes`).
enum CgroupLimit {
  enum Hierarchy {
    case v2(String)
    case v1(String)
  }

  static var hierarchy: Hierarchy? {
    // Pure v2 hosts mount it at /sys/fs/cgroup; hybrid hosts have the v1 memory controller.
    if FileSystem.exists("/sys/fs/cgroup/cgroup.controllers"),
      let controllers = try? FileSystem.readFile("/sys/fs/cgroup/cgroup.controllers"),
      String(decoding: controllers, as: UTF8.self).contains("memory")
    {
      return .v2("/sys/fs/cgroup/forkd")
    }
    if FileSystem.isDirectory("/sys/fs/cgroup/memory") { return .v1("/sys/fs/cgroup/memory/forkd") }
    return nil
  }

  static func apply(id: String, limitMiB: UInt64, pids: [pid_t]) throws(APIError) {
    guard let hierarchy else { throw .badRequest("memory_limit_mib: no cgroup memory controller on this host") }
    let bytes = "\(limitMiB << 20)"
    do {
      switch hierarchy {
      case .v2(let root):
        if !FileSystem.exists(root) {
          try FileSystem.makeDirectory(root, mode: 0o755)
          try? write("+memory", to: "/sys/fs/cgroup/cgroup.subtree_control")
          try? write("+memory", to: root + "/cgroup.subtree_control")
        }
        let group = root + "/" + id
        try FileSystem.makeDirectories(group, mode: 0o755)
        try write(bytes, to: group + "/memory.max")
        for pid in pids { try write("\(pid)", to: group + "/cgroup.procs") }
      case .v1(let root):
        let group = root + "/" + id
        try FileSystem.makeDirectories(group, mode: 0o755)
        try write(bytes, to: group + "/memory.limit_in_bytes")
        for pid in pids { try write("\(pid)", to: group + "/cgroup.procs") }
      }
    } catch {
      remove(id: id)
      throw .internalError("cannot apply memory_limit_mib \(limitMiB): \(error)")
    }
  }

  /// Removes the child's cgroup (its processes have ended or moved out).
  static func remove(id: String) {
    guard let hierarchy else { return }
    switch hierarchy {
    case .v2(let root), .v1(let root):
      _ = rmdir(root + "/" + id)
    }
  }

  static func path(id: String) -> String? {
    switch hierarchy {
    case .v2(let root), .v1(let root): root + "/" + id
    case nil: nil
    }
  }

  private static func write(_ text: String, to path: String) throws(SyscallError) {
    let fd = try FileDescriptor.open(path, .writeOnly)
    defer { fd.close() }
    try fd.writeAll(Array(text.utf8))
  }
}
