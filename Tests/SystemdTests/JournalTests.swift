import Syscalls
import SystemdSupport
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// Entries written by forkd-systemd-probe (JournalLogHandler, JournalStream,
/// JournalLineForwarder) into a test-owned journald namespace, read back with journalctl.
@Suite(
  "journald: structured entries, streams, forwarded child lines",
  .serialized, .enabled(if: TestJournald.unavailableReason == nil, "\(TestJournald.unavailableReason ?? "")"))
struct JournalTests {
  @Test("a JournalLogHandler line carries metadata fields, PRIORITY, SYSLOG_IDENTIFIER and CODE_*")
  func handlerEntry() throws {
    let journald = try TestJournald()
    defer { journald.stop() }
    let probe = try Tool.probePath()
    let sandbox = "test-" + randomToken()
    let identifier = "forkd-supervisor-" + randomToken(3)
    let run = try journald.runLogging([
      probe, "journal-log", "--identifier", identifier, "--level", "warning", "--message", "child \(sandbox) started",
      "--metadata", "forkd_sandbox_id=\(sandbox)", "--metadata", "forkd_role=supervisor",
      "--metadata", "vm.exit-code=0", "--metadata", "message=not the message",
    ])
    #expect(run.succeeded, "\(run)")
    #expect(run.value("journal-available") == "1", "the namespace's socket is at the default path: \(run)")

    let entries = try journald.entries(["FORKD_SANDBOX_ID=\(sandbox)"])
    try #require(entries.count == 1, "journalctl FORKD_SANDBOX_ID=\(sandbox): \(entries)")
    let entry = entries[0]
    #expect(entry["MESSAGE"] == "child \(sandbox) started")
    #expect(entry["PRIORITY"] == "4")
    #expect(entry["SYSLOG_IDENTIFIER"] == identifier)
    #expect(entry["FORKD_SANDBOX_ID"] == sandbox)
    #expect(entry["FORKD_ROLE"] == "supervisor")
    #expect(entry["VM_EXIT_CODE"] == "0")
    #expect(entry["META_MESSAGE"] == "not the message")
    #expect(entry["SWIFT_LOG_LABEL"] == "forkd.systemd-probe")
    #expect(entry["CODE_FILE"]?.hasSuffix("main.swift") == true, "\(entry)")
    #expect(entry["CODE_FUNC"]?.hasPrefix("journalLog") == true, "\(entry)")
    #expect(entry["CODE_LINE"].flatMap { Int($0) } != nil, "\(entry)")
    #expect(entry["_TRANSPORT"] == "journal")
    #expect(entry["_NAMESPACE"] == journald.namespace)
    // The same line is found by identifier and by role, as an operator would look.
    let byIdentifier = try journald.entries(["SYSLOG_IDENTIFIER=\(identifier)", "FORKD_ROLE=supervisor"])
    #expect(byIdentifier.count == 1)
  }

  @Test("a JournalStream fd turns written lines into entries (identifier and priority, no extra fields)")
  func streamEntries() throws {
    let journald = try TestJournald()
    defer { journald.stop() }
    let probe = try Tool.probePath()
    let identifier = "forkd-vmm-test-" + randomToken(4)
    let run = try journald.runLogging([
      probe, "journal-stream", "--identifier", identifier, "--priority", "5", "--level-prefix", "console line one",
      "<3>vmm error line",
    ])
    #expect(run.succeeded, "\(run)")
    #expect(run.value("stream-env")?.hasPrefix("JOURNAL_STREAM=") == true, "\(run)")

    let entries = try journald.entries(["SYSLOG_IDENTIFIER=\(identifier)"], atLeast: 2)
    try #require(entries.count == 2, "\(entries)")
    #expect(entries.map { $0["MESSAGE"] } == ["console line one", "vmm error line"])
    #expect(entries.map { $0["PRIORITY"] } == ["5", "3"])
    #expect(entries.allSatisfy { $0["_TRANSPORT"] == "stdout" })
    #expect(entries[0]["_STREAM_ID"] != nil && entries[0]["_STREAM_ID"] == entries[1]["_STREAM_ID"])
    // A stream has no way to carry extra fields: nothing FORKD_* on these entries.
    #expect(entries.allSatisfy { entry in !entry.keys.contains { $0.hasPrefix("FORKD_") } })
  }

  /// Where a cgroup2 hierarchy is mounted (pure v2: /sys/fs/cgroup; hybrid: /sys/fs/cgroup/unified).
  static var cgroup2Mount: String? {
    guard let bytes = try? FileSystem.readFile("/proc/self/mounts", limit: 1 << 20) else { return nil }
    return String(decoding: bytes, as: UTF8.self).split(separator: "\n").compactMap { line -> String? in
      let fields = line.split(separator: " ")
      return fields.count > 2 && fields[2] == "cgroup2" ? String(fields[1]) : nil
    }.first { access($0 + "/cgroup.procs", W_OK) == 0 }
  }

  @Test("a stream handed to a child: entries carry the child's _PID/_COMM and its cgroup, but no custom fields")
  func streamHandedToChild() throws {
    let journald = try TestJournald()
    defer { journald.stop() }
    let probe = try Tool.probePath()
    let identifier = "forkd-console-test-" + randomToken(4)
    // The child moves itself into a cgroup named after its sandbox first, as a supervisor with
    // Delegate=yes would place it (skipped where no cgroup2 hierarchy is writable).
    let sandbox = "test-" + randomToken()
    var cgroup: String? = nil
    if let mount = Self.cgroup2Mount {
      let path = mount + "/forkd-test-" + sandbox
      if (try? FileSystem.makeDirectory(path, mode: 0o755)) != nil { cgroup = path }
    }
    defer { if let cgroup { _ = rmdir(cgroup) } }
    let moveSelf = cgroup.map { "echo $$ > \($0)/cgroup.procs; " } ?? ""
    let run = try journald.runLogging([
      probe, "journal-stream", "--identifier", identifier, "--run", "--", "/bin/sh", "-c",
      moveSelf + "echo \"child stdout $JOURNAL_STREAM\"; echo 'child stderr' >&2; sleep 0.2",
    ])
    #expect(run.succeeded, "\(run)")
    let opener = try #require(run.value("self-pid"), "\(run)")
    let child = try #require(run.value("child-pid"), "\(run)")
    let streamEnv = try #require(run.value("stream-env"), "\(run)")

    let entries = try journald.entries(["SYSLOG_IDENTIFIER=\(identifier)"], atLeast: 2)
    try #require(entries.count == 2, "\(entries)")
    #expect(
      entries.map { $0["MESSAGE"] } == ["child stdout \(streamEnv.dropFirst("JOURNAL_STREAM=".count))", "child stderr"])
    // journald takes the writer's credentials with every read (SCM_CREDENTIALS), not the opener's.
    #expect(entries.allSatisfy { $0["_PID"] == child && $0["_PID"] != opener }, "\(entries)")
    #expect(entries.allSatisfy { $0["_COMM"] == "sh" }, "\(entries)")
    #expect(entries.allSatisfy { entry in !entry.keys.contains { $0.hasPrefix("FORKD_") } })
    if cgroup != nil {
      #expect(entries.allSatisfy { $0["_SYSTEMD_CGROUP"] == "/forkd-test-" + sandbox }, "\(entries)")
      let byCgroup = try journald.entries(["_SYSTEMD_CGROUP=/forkd-test-" + sandbox], atLeast: 2)
      #expect(byCgroup.count == 2)
    }
  }

  @Test("a child's output forwarded line by line carries the child's fields and OBJECT_PID")
  func forwardedLines() throws {
    let journald = try TestJournald()
    defer { journald.stop() }
    let probe = try Tool.probePath()
    let sandbox = "test-" + randomToken()
    let run = try journald.runLogging([
      probe, "journal-forward", "--identifier", "forkd-vmm", "--field", "FORKD_SANDBOX_ID=\(sandbox)",
      "--field", "FORKD_ROLE=vmm", "--", "/bin/sh", "-c", "echo 'guest: booted'; echo '<4>guest: warning'; printf tail",
    ])
    #expect(run.succeeded, "\(run)")
    #expect(run.value("forwarded") == "3", "\(run)")

    let entries = try journald.entries(["FORKD_SANDBOX_ID=\(sandbox)"], atLeast: 3)
    try #require(entries.count == 3, "\(entries)")
    #expect(entries.map { $0["MESSAGE"] } == ["guest: booted", "guest: warning", "tail"])
    #expect(entries.map { $0["PRIORITY"] } == ["6", "4", "6"])
    #expect(entries.allSatisfy { $0["SYSLOG_IDENTIFIER"] == "forkd-vmm" && $0["FORKD_ROLE"] == "vmm" })
    let childPID = try #require(run.value("child-pid"), "\(run)")
    #expect(entries.allSatisfy { $0["OBJECT_PID"] == childPID })
    #expect(entries.allSatisfy { $0["_PID"] != childPID }, "the forwarder sends: _PID is the supervisor's")
  }
}
