import Logging
import Syscalls

/// The log handler forkd processes use: the journal when there is one, a file otherwise.
public enum ForkdLogging {
  /// A `JournalLogHandler` if a journald socket exists at `journalSocket`; otherwise a
  /// `FileLogHandler` appending to `<fallbackDirectory>/<identifier>.log` (the directory is
  /// created, mode 0750, if missing); if that cannot be opened either, swift-log's standard-error
  /// handler. Use it as the `LoggingSystem.bootstrap` factory, or per child with the child's run
  /// directory as `fallbackDirectory`:
  ///
  ///     LoggingSystem.bootstrap { label in
  ///       ForkdLogging.handler(label: label, identifier: "forkd-supervisor", fallbackDirectory: "/var/lib/forkd/log")
  ///     }
  ///
  /// Every call in fallback mode opens the file again (copies of one handler share one
  /// descriptor, closed when the last copy is gone).
  public static func handler(
    label: String, identifier: String = "forkd-supervisor", fallbackDirectory: String,
    journalSocket: String = Journal.socketPath
  ) -> any LogHandler {
    if Journal.isAvailable(socketPath: journalSocket) {
      return JournalLogHandler(label: label, identifier: identifier)
    }
    do {
      if !FileSystem.isDirectory(fallbackDirectory) { try FileSystem.makeDirectories(fallbackDirectory, mode: 0o750) }
      return try FileLogHandler(label: label, path: fallbackDirectory + "/" + identifier + ".log")
    } catch {
      return StreamLogHandler.standardError(label: label)
    }
  }
}

/// The cgroups of a process (/proc/<pid>/cgroup), to find the subtree a `Delegate=yes` service
/// owns: on cgroup v2 `/sys/fs/cgroup` + `unified` (e.g. `/system.slice/forkd.service`).
public struct ProcessCgroups: Sendable, Hashable {
  /// The cgroup v2 path ("0::PATH"), nil if the unified hierarchy is not mounted.
  public var unified: String?
  /// cgroup v1 controller → path ("memory" → "/system.slice/forkd.service").
  public var controllers: [String: String]

  /// Parses the text of /proc/<pid>/cgroup ("ID:CONTROLLERS:PATH" lines).
  public init(parsing text: String) {
    unified = nil
    controllers = [:]
    for line in text.split(separator: "\n") {
      let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
      guard parts.count == 3 else { continue }
      let path = String(parts[2])
      if parts[0] == "0" && parts[1].isEmpty {
        unified = path
      } else {
        for controller in parts[1].split(separator: ",") { controllers[String(controller)] = path }
      }
    }
  }

  /// This process's cgroups.
  public static func current() -> ProcessCgroups? {
    guard let bytes = try? FileSystem.readFile("/proc/self/cgroup", limit: 1 << 16) else { return nil }
    return ProcessCgroups(parsing: String(decoding: bytes, as: UTF8.self))
  }

  /// The systemd unit owning the unified (else the memory or systemd-named) cgroup: the last
  /// path component ending in .service or .scope, e.g. "forkd.service".
  public var unit: String? {
    let path = unified ?? controllers["memory"] ?? controllers["name=systemd"] ?? ""
    return path.split(separator: "/").last { $0.hasSuffix(".service") || $0.hasSuffix(".scope") }.map(String.init)
  }
}
