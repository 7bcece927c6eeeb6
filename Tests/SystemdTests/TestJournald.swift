import Foundation
import Syscalls
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// A test-owned systemd-journald in its own journal namespace, isolated from the machine's.
///
/// `systemd-journald NAMESPACE` (what systemd-journald@NAMESPACE.service runs) works without
/// systemd as PID 1: it creates /run/systemd/journal.NAMESPACE/{socket,stdout,…} and writes
/// /var/log/journal/MACHINE.NAMESPACE (or /run/log/journal/… without /var/log/journal), read
/// with `journalctl --namespace=NAMESPACE`. A machine journald, if any, is never touched.
///
/// libsystemd's clients (sd_journal_sendv, sd_journal_stream_fd) always use
/// /run/systemd/journal/{socket,stdout}; systemd itself gives a `LogNamespace=` service its
/// namespace's sockets at that path by bind-mounting. The tests do the same for the processes
/// that log: `runLogging` runs them under `unshare --mount` with a tmpfs over /run/systemd and the
/// namespace's directory bind-mounted at /run/systemd/journal. The mounts live only in that
/// process's private mount namespace and vanish with it.
final class TestJournald {
  let namespace: String
  let pid: pid_t
  let work: TemporaryDirectory
  let runDirectory: String
  private let createdRunLogJournal: Bool
  private var stopped = false
  private var reaped = false

  /// Why these tests cannot run here, or nil.
  static let unavailableReason: String? = {
    if geteuid() != 0 { return "needs root (journald writes /run/systemd and /var/log/journal)" }
    guard journaldPath != nil else { return "no systemd-journald binary" }
    guard let journalctl = Tool.find("journalctl") else { return "no journalctl" }
    guard Tool.find("unshare") != nil else { return "no unshare (util-linux)" }
    guard Tool.find("mount") != nil else { return "no mount (util-linux)" }
    guard FileSystem.isDirectory("/run/systemd") || FileSystem.isDirectory("/run") else { return "no /run" }
    guard canUseMountNamespace else { return "cannot create a mount namespace (unshare --mount)" }
    guard let version = try? Tool.run(journalctl, ["--version"], timeoutMS: 10_000), version.succeeded else {
      return "journalctl does not run"
    }
    return nil
  }()

  /// True if `unshare --mount` works here (root with CAP_SYS_ADMIN, mount namespaces enabled).
  static let canUseMountNamespace: Bool = {
    guard let unshare = Tool.find("unshare"),
      let run = try? Tool.run(unshare, ["--mount", "--propagation", "private", "true"], timeoutMS: 10_000)
    else { return false }
    return run.succeeded
  }()

  static var journaldPath: String? {
    ["/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald"].first { access($0, X_OK) == 0 }
  }

  /// Starts journald for a fresh namespace and waits (≤ 10 s) until its sockets exist.
  init() throws {
    let journald = try #require(Self.journaldPath)
    namespace = "forkdtest" + randomToken(5)
    runDirectory = "/run/systemd/journal." + namespace
    work = try TemporaryDirectory("forkd-journald")
    createdRunLogJournal = !FileSystem.exists("/run/log/journal")
    let log = try FileDescriptor.open(work.path + "/journald.out", [.writeOnly, .create, .truncate])
    defer { log.close() }
    // SYSTEMD_LOG_TARGET=console keeps journald's own messages out of any machine journal.
    var environment = ChildProcess.currentEnvironment().filter { !$0.hasPrefix("NOTIFY_SOCKET=") }
    environment.append("SYSTEMD_LOG_TARGET=console")
    pid = try ChildProcess.spawn(
      path: journald, arguments: [journald, namespace], environment: environment, stdoutFD: log, stderrFD: log)
    let deadline = Clock.monotonicNanoseconds() + 10_000_000_000
    while !(FileSystem.exists(runDirectory + "/socket") && FileSystem.exists(runDirectory + "/stdout")) {
      if (try? ChildProcess.wait(pid, block: false)) != nil { reaped = true }
      if reaped || Clock.monotonicNanoseconds() > deadline {
        let output = (try? work.read("journald.out")) ?? ""
        stop()
        Issue.record("systemd-journald \(namespace) did not come up: \(output)")
        throw SyscallError("systemd-journald", .noEntry, detail: runDirectory)
      }
      Clock.sleep(milliseconds: 10)
    }
  }

  deinit { stop() }

  /// Stops journald (SIGTERM, SIGKILL after 5 s) and removes its sockets and journal files.
  func stop() {
    guard !stopped else { return }
    stopped = true
    if !reaped {
      // Our own unreaped child: the pid cannot have been reused.
      kill(pid, SIGTERM)
      ChildProcess.waitOrKill(pid, timeoutMS: 5_000)
      reaped = true
    }
    FileSystem.removeTree(runDirectory)
    for root in ["/var/log/journal", "/run/log/journal"] {
      for entry in (try? FileSystem.listDirectory(root)) ?? [] where entry.hasSuffix("." + namespace) {
        FileSystem.removeTree(root + "/" + entry)
      }
    }
    if createdRunLogJournal, ((try? FileSystem.listDirectory("/run/log/journal")) ?? ["?"]).isEmpty {
      _ = rmdir("/run/log/journal")
    }
    work.remove()
  }

  /// Puts this journald's sockets at the default journal path in a private mount namespace, then
  /// execs the rest of its arguments: `sh -c SCRIPT sh RUN_DIR HOLD PROGRAM ARGS…`.
  private static let namespaceScript = """
    set -e
    mount --bind "$1" "$2"
    mount -t tmpfs -o mode=0755,size=1m forkd-test-run-systemd /run/systemd
    mkdir /run/systemd/journal
    mount --bind "$2" /run/systemd/journal
    shift 2
    exec "$@"
    """

  /// Runs `arguments` (a program and its arguments) with this journald at the default journal
  /// path, in a private mount namespace.
  func runLogging(_ arguments: [String], timeoutMS: Int = 20_000) throws -> Tool.Run {
    let unshare = try #require(Tool.find("unshare"))
    let hold = work.path + "/hold"
    if !FileSystem.exists(hold) { try FileSystem.makeDirectory(hold, mode: 0o755) }
    return try Tool.run(
      unshare,
      ["--mount", "--propagation", "private", "/bin/sh", "-c", Self.namespaceScript, "sh", runDirectory, hold]
        + arguments,
      timeoutMS: timeoutMS)
  }

  /// Starts `arguments` in the background like `runLogging` (same private mount namespace set-up),
  /// with stdout and stderr in `logPath`; returns its pid (the caller stops and reaps it).
  func spawnLogging(_ arguments: [String], logPath: String) throws -> pid_t {
    let unshare = try #require(Tool.find("unshare"))
    let hold = work.path + "/hold"
    if !FileSystem.exists(hold) { try FileSystem.makeDirectory(hold, mode: 0o755) }
    let log = try FileDescriptor.open(logPath, [.writeOnly, .create, .truncate])
    defer { log.close() }
    return try ChildProcess.spawn(
      path: unshare,
      arguments: [
        unshare, "--mount", "--propagation", "private", "/bin/sh", "-c", Self.namespaceScript, "sh", runDirectory, hold,
      ]
        + arguments, stdoutFD: log, stderrFD: log)
  }

  /// The entries matching `matches` ("FIELD=value"), as journalctl -o json prints them; polls
  /// until at least `count` are there or `timeoutMS` passed.
  func entries(_ matches: [String], atLeast count: Int = 1, timeoutMS: Int = 10_000) throws -> [[String: String]] {
    let journalctl = try #require(Tool.find("journalctl"))
    let deadline = Clock.monotonicNanoseconds() + UInt64(timeoutMS) * 1_000_000
    var result: [[String: String]] = []
    repeat {
      let run = try Tool.run(
        journalctl, ["--namespace=" + namespace, "-o", "json", "--no-pager", "--all"] + matches, timeoutMS: 10_000)
      result = run.lines.compactMap(Self.parse)
      if result.count >= count { break }
      Clock.sleep(milliseconds: 50)
    } while Clock.monotonicNanoseconds() < deadline
    return result
  }

  /// One journalctl JSON line; string fields only (binary ones come as arrays of numbers).
  static func parse(_ line: String) -> [String: String]? {
    guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { return nil }
    return object.compactMapValues { $0 as? String }
  }
}
