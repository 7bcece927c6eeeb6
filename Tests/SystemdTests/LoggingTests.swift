import Logging
import Syscalls
import SystemdSupport
import Testing

#if canImport(Glibc)
  import Glibc
#endif

struct ProbeError: Error, CustomStringConvertible {
  var description: String { "disk on fire" }
}

func event(
  _ level: Logger.Level = .info, _ message: Logger.Message = "hello", metadata: Logger.Metadata? = nil,
  error: (any Error)? = nil
) -> LogEvent {
  LogEvent(
    level: level, message: message, error: error, metadata: metadata, source: "Test",
    file: "SystemdTests/LoggingTests.swift",
    function: "test()", line: 42)
}

@Suite("journal fields and the log handlers")
struct LoggingTests {
  @Test(
    "metadata keys become journal field names",
    arguments: [
      ("forkd_sandbox_id", "FORKD_SANDBOX_ID"), ("forkd_role", "FORKD_ROLE"), ("vm.exit-code", "VM_EXIT_CODE"),
      ("_private", "PRIVATE"), ("__x", "X"), ("9lives", "F9LIVES"), ("", "FIELD"), ("___", "FIELD"),
      ("größe", "GR__E"), ("Already_OK_1", "ALREADY_OK_1"),
      (String(repeating: "a", count: 80), String(repeating: "A", count: 64)),
    ])
  func fieldNames(key: String, expected: String) {
    #expect(JournalFields.name(key) == expected)
    #expect(JournalFields.isValidName(JournalFields.name(key)))
  }

  @Test("journald's own rules for names")
  func validNames() {
    #expect(JournalFields.isValidName("MESSAGE"))
    #expect(!JournalFields.isValidName("_PID"))
    #expect(!JournalFields.isValidName("1ABC"))
    #expect(!JournalFields.isValidName("lower"))
    #expect(!JournalFields.isValidName(""))
    #expect(!JournalFields.isValidName(String(repeating: "A", count: 65)))
  }

  @Test("swift-log levels map to syslog priorities")
  func priorities() {
    let expected: [(Logger.Level, Int32)] = [
      (.trace, 7), (.debug, 7), (.info, 6), (.notice, 5), (.warning, 4), (.error, 3), (.critical, 2),
    ]
    for (level, priority) in expected { #expect(JournalPriority(level).rawValue == priority, "\(level)") }
  }

  @Test("a JournalLogHandler event becomes MESSAGE, PRIORITY, identifier, CODE_*, label, error and metadata")
  func handlerFields() {
    var handler = JournalLogHandler(label: "forkd.supervisor", identifier: "forkd-test", metadataProvider: nil)
    handler[metadataKey: "forkd_sandbox_id"] = "sb-1"
    handler[metadataKey: "forkd_role"] = "supervisor"
    let fields = handler.fields(
      for: event(
        .error, "restore failed", metadata: ["forkd_role": "vmm", "priority": "x", "attempt": .stringConvertible(3)],
        error: ProbeError()))
    let names = fields.map(\.name)
    #expect(
      names == [
        "MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "CODE_FILE", "CODE_LINE", "CODE_FUNC", "SWIFT_LOG_LABEL", "ERROR",
        "ATTEMPT", "FORKD_ROLE", "FORKD_SANDBOX_ID", "META_PRIORITY",
      ])
    let byName = Dictionary(fields.map { ($0.name, $0.value) }, uniquingKeysWith: { a, _ in a })
    #expect(byName["MESSAGE"] == "restore failed")
    #expect(byName["PRIORITY"] == "3")
    #expect(byName["SYSLOG_IDENTIFIER"] == "forkd-test")
    #expect(byName["CODE_FILE"] == "SystemdTests/LoggingTests.swift")
    #expect(byName["CODE_LINE"] == "42")
    #expect(byName["CODE_FUNC"] == "test()")
    #expect(byName["SWIFT_LOG_LABEL"] == "forkd.supervisor")
    #expect(byName["ERROR"] == "disk on fire")
    #expect(byName["ATTEMPT"] == "3")
    #expect(byName["FORKD_ROLE"] == "vmm", "the log call's metadata wins over the handler's")
    #expect(byName["FORKD_SANDBOX_ID"] == "sb-1")
    #expect(byName["META_PRIORITY"] == "x", "metadata cannot override the handler's own fields")
  }

  @Test("the default identifier is forkd-supervisor, and a metadata provider is consulted")
  func defaultsAndProvider() {
    let provider = Logger.MetadataProvider { ["forkd_request_id": "r-9"] }
    let handler = JournalLogHandler(label: "x", metadataProvider: provider)
    let fields = handler.fields(for: event())
    #expect(fields.contains { $0 == ("SYSLOG_IDENTIFIER", "forkd-supervisor") })
    #expect(fields.contains { $0 == ("FORKD_REQUEST_ID", "r-9") })
  }

  @Test("FileLogHandler line format: timestamp level [fields] message")
  func lineFormat() {
    var handler = FileLogHandler(label: "x", file: try! LogFile(path: "/dev/null"), metadataProvider: nil)
    handler[metadataKey: "forkd_sandbox_id"] = "test-1"
    handler[metadataKey: "forkd_role"] = "supervisor"
    handler[metadataKey: "note"] = "two words"
    handler[metadataKey: "quote"] = "say \"hi\"\n"
    handler[metadataKey: "empty"] = ""
    let line = handler.line(
      for: event(.warning, "first\nsecond", error: ProbeError()), timestamp: "2025-11-27T07:27:00.000001Z")
    #expect(
      line
        == "2025-11-27T07:27:00.000001Z warning [EMPTY=\"\" ERROR=\"disk on fire\" FORKD_ROLE=supervisor "
        + "FORKD_SANDBOX_ID=test-1 NOTE=\"two words\" QUOTE=\"say \\\"hi\\\"\\n\"] first\\nsecond")
    let plain = FileLogHandler(label: "x", file: try! LogFile(path: "/dev/null"), metadataProvider: nil)
    #expect(plain.line(for: event(), timestamp: "T") == "T info [] hello")
  }

  @Test("timestamps are UTC with microseconds")
  func timestamps() {
    #expect(LogLineFormat.timestamp(seconds: 0, microseconds: 0) == "1970-01-01T00:00:00.000000Z")
    #expect(LogLineFormat.timestamp(seconds: 1_764_228_420, microseconds: 123_456) == "2025-11-27T07:27:00.123456Z")
    let now = LogLineFormat.now()
    #expect(now.count == 27 && now.hasSuffix("Z") && now.dropFirst(10).first == "T", "\(now)")
  }

  @Test("FileLogHandler appends one line per entry to its file, through a Logger")
  func fileHandlerWrites() throws {
    let directory = try TemporaryDirectory()
    defer { directory.remove() }
    let path = directory.path + "/forkd-supervisor.log"
    var logger = Logger(label: "forkd.test") { label in try! FileLogHandler(label: label, path: path) }
    logger[metadataKey: "forkd_sandbox_id"] = "test-abc"
    logger.info("child started", metadata: ["forkd_role": "supervisor"])
    logger.debug("not at info level")
    logger.error("child failed")
    let lines = try directory.read("forkd-supervisor.log").split(separator: "\n").map(String.init)
    try #require(lines.count == 2, "\(lines)")
    #expect(lines[0].hasSuffix(" info [FORKD_ROLE=supervisor FORKD_SANDBOX_ID=test-abc] child started"), "\(lines[0])")
    #expect(lines[1].hasSuffix(" error [FORKD_SANDBOX_ID=test-abc] child failed"), "\(lines[1])")
    #expect(lines.allSatisfy { $0.count > 28 && $0.dropFirst(26).hasPrefix("Z ") }, "\(lines)")
    var info = stat()
    #expect(stat(path, &info) == 0 && info.st_mode & 0o777 == 0o640)
  }

  @Test("ForkdLogging picks the journal when its socket exists, else a file in the fallback directory")
  func factory() throws {
    let directory = try TemporaryDirectory()
    defer { directory.remove() }
    let fallback = directory.path + "/run/sandboxes/test-1"
    let noJournal = ForkdLogging.handler(
      label: "l", identifier: "forkd-supervisor", fallbackDirectory: fallback, journalSocket: directory.path + "/absent"
    )
    let file = try #require(noJournal as? FileLogHandler, "\(type(of: noJournal))")
    #expect(file.file.path == fallback + "/forkd-supervisor.log")
    var logger = Logger(label: "l") { _ in noJournal }
    logger[metadataKey: "forkd_sandbox_id"] = "test-1"
    logger.notice("fallback works")
    #expect(
      try directory.read("run/sandboxes/test-1/forkd-supervisor.log").contains(
        "[FORKD_SANDBOX_ID=test-1] fallback works"))

    // A socket at the journal path (a stand-in: nothing is sent here) selects the journal handler.
    let fakeJournal = directory.path + "/journal.socket"
    let listener = try UnixSocket.listen(path: fakeJournal)
    defer { listener.close() }
    let journal = ForkdLogging.handler(
      label: "l", identifier: "forkd-vmm", fallbackDirectory: fallback, journalSocket: fakeJournal)
    let journalHandler = try #require(journal as? JournalLogHandler, "\(type(of: journal))")
    #expect(journalHandler.identifier == "forkd-vmm")
    #expect(!Journal.isAvailable(socketPath: fallback + "/forkd-supervisor.log"), "a regular file is not a journal")
  }

  @Test("JournalLineForwarder: complete lines, CRLF, <N> prefixes, overlong lines, the last partial line")
  func lineForwarder() {
    var sent: [(String, JournalPriority)] = []
    var forwarder = JournalLineForwarder(
      fields: ["FORKD_SANDBOX_ID": "x"], priority: .info, levelPrefix: true, maximumLineBytes: 8
    ) { message, priority, fields in
      #expect(fields == ["FORKD_SANDBOX_ID": "x"])
      sent.append((message, priority))
    }
    forwarder.feed(Array("one\r\ntw".utf8))
    #expect(sent.map(\.0) == ["one"])
    forwarder.feed(Array("o\n<3>err\n<9>odd\n0123456789\n\nlast".utf8))
    forwarder.finish()
    #expect(sent.map(\.0) == ["one", "two", "err", "<9>odd", "01234567", "89", "", "last"])
    #expect(sent.map(\.1) == [.info, .info, .error, .info, .info, .info, .info, .info])
  }

  @Test("/proc/self/cgroup parsing: unified path, v1 controllers, the owning unit")
  func cgroups() {
    let hybrid = ProcessCgroups(
      parsing: "12:memory:/system.slice/forkd.service\n1:name=systemd:/system.slice/forkd.service\n"
        + "0::/system.slice/forkd.service/supervisor\n")
    #expect(hybrid.unified == "/system.slice/forkd.service/supervisor")
    #expect(hybrid.controllers["memory"] == "/system.slice/forkd.service")
    #expect(hybrid.unit == "forkd.service")
    let v1 = ProcessCgroups(parsing: "4:cpu,cpuacct:/user.slice\n")
    #expect(v1.unified == nil && v1.controllers["cpuacct"] == "/user.slice" && v1.unit == nil)
    #expect(ProcessCgroups.current() != nil)
  }
}
