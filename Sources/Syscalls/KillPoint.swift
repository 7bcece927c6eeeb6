import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// Test seam, like `FORKD_TEST_LIVE_COPY_DELAY_US` in forkd-vmm's ControlServer: with
/// `FORKD_TEST_KILL_AT=<role>:<stage>` in its environment, forkd-vmm (role `vmm`) or forkd-pager
/// (role `pager`) SIGKILLs itself when it reaches `stage`, so the end-to-end tests can kill a
/// per-child process at an exact step of a spawn, a branch or a snapshot.
///
/// `FORKD_TEST_KILL_AT=@PATH` reads `<role>:<stage>` from the file PATH instead (absent or empty:
/// disarmed): a test arms the children of an already running supervisor one request at a time.
/// Read once, at start; an unknown role or stage is a usage error, so a typo cannot make a test
/// pass without killing anything. Compiled only into debug builds (FORKD_TEST_SEAMS, the builds
/// `swift test` runs): in a release binary `arm` and `reached` are empty and the variable's name
/// is not in the binary at all.
public enum KillPoint {
  public enum Role: String, Sendable, CaseIterable {
    case vmm
    case pager
  }

  /// Every stage each role reports, in the order a spawn, branch or snapshot reaches them.
  public static let stages: [Role: [String]] = [
    // forkd-vmm: `started` after its arguments are parsed (before any handshake); `handshake-sent`
    // once the handshake and uffd are sent, before the pager's ack; `acked` after the ack, before
    // vCPU and device state are restored; `restored` with the vCPUs running, before READY;
    // `snapshot-staging` with the staging directory written in part (full and diff: memory.bin
    // written; live: paused state captured, pager suspended, memory write-protected); `live-copy`
    // after the first chunk of a live copy; `snapshot-before-rename` with every file written and
    // synced; `snapshot-published` after the rename, before the answer.
    .vmm: [
      "started", "handshake-sent", "acked", "restored", "snapshot-staging", "live-copy", "snapshot-before-rename",
      "snapshot-published",
    ],
    // forkd-pager: `started` before it listens; `connected` once the VM connected; `received-uffd`
    // with the handshake and uffd received and validated, before the ack; `acked` after the ack;
    // `first-fault` on reading its first fault, before serving it; `suspended` after acknowledging
    // a suspend (a live snapshot took the uffd over).
    .pager: ["started", "connected", "received-uffd", "acked", "first-fault", "suspended"],
  ]

  public struct ConfigError: Error, CustomStringConvertible {
    public let description: String
  }

  #if FORKD_TEST_SEAMS
    private static let armed = Atomic<Bool>(false)
    private static let target = Mutex<(role: Role, stage: String)?>(nil)

    /// Reads `FORKD_TEST_KILL_AT` for a process of `role`. The whole value is checked whatever its
    /// role (forkd-vmm rejects a misspelt pager stage too); only a value naming `role` arms.
    public static func arm(role: Role, environment name: String = "FORKD_TEST_KILL_AT") throws(ConfigError) {
      guard let raw = getenv(name).map({ String(cString: $0) }), !raw.isEmpty else { return }
      var spec = raw
      if raw.hasPrefix("@") {
        let path = String(raw.dropFirst())
        guard let bytes = try? FileSystem.readFile(path, limit: 4096) else {
          if FileSystem.exists(path) { throw ConfigError(description: "\(name): cannot read \(path)") }
          return
        }
        spec = String(decoding: bytes, as: UTF8.self).filter { $0 != "\n" && $0 != " " }
        if spec.isEmpty { return }
      }
      let parts = spec.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
      guard parts.count == 2, let wanted = Role(rawValue: parts[0]) else {
        throw ConfigError(
          description: "\(name)='\(spec)': expected <role>:<stage> with role \(Role.allCases.map(\.rawValue))")
      }
      let known = stages[wanted] ?? []
      guard known.contains(parts[1]) else {
        throw ConfigError(
          description:
            "\(name)='\(spec)': unknown \(wanted.rawValue) stage '\(parts[1])'; known: \(known.joined(separator: ", "))"
        )
      }
      guard wanted == role else { return }
      target.withLock { $0 = (role, parts[1]) }
      armed.store(true, ordering: .releasing)
    }

    /// Kills the process with SIGKILL if it is armed for `stage`; otherwise returns at once.
    @inline(__always)
    public static func reached(_ stage: String) {
      guard armed.load(ordering: .acquiring) else { return }
      kill(at: stage)
    }

    private static func kill(at reachedStage: String) {
      guard let (role, stage) = target.withLock({ $0 }), stage == reachedStage else { return }
      let line = Array("forkd-\(role.rawValue): test seam FORKD_TEST_KILL_AT: SIGKILL at \(reachedStage)\n".utf8)
      _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
      raise(SIGKILL)
    }
  #else
    /// Release builds carry no seam: nothing to arm.
    @inline(__always)
    public static func arm(role: Role) throws(ConfigError) {}

    @inline(__always)
    public static func reached(_ stage: String) {}
  #endif
}
