// forkd-systemd-probe: prints what SystemdSupport sees in this process (socket activation,
// notify socket, watchdog, journal) and exercises it, for SystemdTests and as a host doctor.
//
//   forkd-systemd-probe listeners [--accept]
//   forkd-systemd-probe notify [--status TEXT] [--watchdog-pings N] [--extend-ms N] [--stopping]
//   forkd-systemd-probe journal-log --identifier ID --message TEXT [--level LEVEL] [--metadata KEY=VALUE]...
//   forkd-systemd-probe journal-stream --identifier ID [--priority N] [--level-prefix] LINE...
//   forkd-systemd-probe journal-stream --identifier ID [--priority N] --run -- COMMAND [ARG]...
//   forkd-systemd-probe journal-forward --identifier ID [--field NAME=VALUE]... -- COMMAND [ARG]...
//   forkd-systemd-probe doctor
//
// Output: one "key value" line per fact. Exit status 0, 1 on failure, 2 on usage errors.
import Logging
import Syscalls
import SystemdSupport

#if canImport(Glibc)
  import Glibc
#endif

func say(_ line: String) {
  var bytes = Array(line.utf8)
  bytes.append(UInt8(ascii: "\n"))
  try? FileDescriptor(rawValue: 1).writeAll(bytes)
}

func fail(_ message: String, status: Int32 = 1) -> Never {
  try? FileDescriptor(rawValue: 2).writeAll(Array(("forkd-systemd-probe: " + message + "\n").utf8))
  exit(status)
}

func environment(_ name: String) -> String { getenv(name).map { String(cString: $0) } ?? "<unset>" }

/// `--name value` options (repeatable) and the remaining positional arguments.
struct Options {
  var values: [String: [String]] = [:]
  var flags: Set<String> = []
  var positional: [String] = []

  init(_ arguments: ArraySlice<String>, flags knownFlags: Set<String>) {
    var rest = arguments
    while let argument = rest.popFirst() {
      if argument == "--" {
        positional += rest
        break
      }
      if argument.hasPrefix("--") {
        let name = String(argument.dropFirst(2))
        if knownFlags.contains(name) {
          flags.insert(name)
        } else if let value = rest.popFirst() {
          values[name, default: []].append(value)
        } else {
          fail("\(argument) needs a value", status: 2)
        }
      } else {
        positional.append(argument)
      }
    }
  }

  func value(_ name: String) -> String? { values[name]?.last }
  func required(_ name: String) -> String {
    guard let value = value(name) else { fail("--\(name) is required", status: 2) }
    return value
  }
}

func listeners(_ options: Options) {
  let sockets = SocketActivation.listeners()
  say("count \(sockets.count)")
  for socket in sockets {
    var line = "listener fd=\(socket.fd.rawValue)"
    switch socket.kind {
    case .unix(let path): line += " kind=unix path=\(path)"
    case .tcp(let address, let port): line += " kind=tcp address=\(address) port=\(port)"
    case .other: line += " kind=other"
    }
    line += " name=\(socket.name ?? "<none>") listening=\(socket.isListening ? 1 : 0)"
    line += " cloexec=\((fcntl(socket.fd.rawValue, F_GETFD) & FD_CLOEXEC) != 0 ? 1 : 0)"
    say(line)
  }
  say(
    "env LISTEN_PID=\(environment("LISTEN_PID")) LISTEN_FDS=\(environment("LISTEN_FDS")) LISTEN_FDNAMES=\(environment("LISTEN_FDNAMES"))"
  )
  say("again \(SocketActivation.listeners().count)")
  if options.flags.contains("accept") {
    guard let first = sockets.first else { fail("--accept: no listener") }
    guard let ready = try? Poll.wait([(first.fd, .readable)], timeoutMS: 10_000), ready[0].contains(.readable) else {
      fail("--accept: no connection within 10 s")
    }
    let connection: FileDescriptor
    do {
      guard let accepted = try UnixSocket.accept(first.fd, nonBlocking: false) else { fail("accept: nothing") }
      connection = accepted
    } catch {
      fail("\(error)")
    }
    try? connection.writeAll(Array("probe-accepted\n".utf8))
    connection.close()
    say("accepted 1")
  }
}

func notify(_ options: Options) {
  let notifier = Notifier()
  say("notify-enabled \(notifier.isEnabled ? 1 : 0)")
  if let interval = notifier.watchdogInterval {
    let (seconds, attoseconds) = interval.components
    say("watchdog-usec \(seconds * 1_000_000 + attoseconds / 1_000_000_000_000)")
  } else {
    say("watchdog-usec none")
  }
  say("ready \(notifier.ready(status: options.value("status")))")
  if let status = options.value("status") { say("status \(notifier.status(status + " (again)"))") }
  if let text = options.value("extend-ms"), let ms = Int64(text) {
    say("extend \(notifier.extendTimeout(by: .milliseconds(ms)))")
  }
  let pings = Int(options.value("watchdog-pings") ?? "0") ?? 0
  for _ in 0..<pings {
    say("watchdog \(notifier.watchdog())")
    if let interval = notifier.watchdogPingInterval {
      let (seconds, attoseconds) = interval.components
      let ms = min(Int(seconds) * 1000 + Int(attoseconds / 1_000_000_000_000_000), 1000)
      Clock.sleep(milliseconds: ms)
    }
  }
  if options.flags.contains("stopping") { say("stopping \(notifier.stopping(status: "probe stopping"))") }
}

func journalLog(_ options: Options) {
  let identifier = options.required("identifier")
  var logger = Logger(label: "forkd.systemd-probe") { label in JournalLogHandler(label: label, identifier: identifier) }
  logger.logLevel = .trace
  for pair in options.values["metadata"] ?? [] {
    let parts = pair.split(separator: "=", maxSplits: 1)
    guard parts.count == 2 else { fail("--metadata \(pair): expected KEY=VALUE", status: 2) }
    logger[metadataKey: String(parts[0])] = .string(String(parts[1]))
  }
  guard let level = Logger.Level(rawValue: options.value("level") ?? "notice") else { fail("bad --level", status: 2) }
  logger.log(level: level, "\(options.required("message"))")
  say("journal-available \(Journal.isAvailable() ? 1 : 0)")
  say("logged 1")
}

func journalStream(_ options: Options) {
  let identifier = options.required("identifier")
  let priority = JournalPriority(rawValue: Int32(options.value("priority") ?? "6") ?? 6) ?? .info
  let fd: FileDescriptor
  do {
    fd = try JournalStream.open(
      identifier: identifier, priority: priority, levelPrefix: options.flags.contains("level-prefix"))
  } catch {
    fail("\(error)")
  }
  say("stream-fd \(fd.rawValue)")
  say("stream-env \(JournalStream.environmentEntry(for: fd) ?? "<none>")")
  say("self-pid \(getpid())")
  if options.flags.contains("run") {
    // What the supervisor does with a stream: the child's stdout and stderr, the parent's copy closed.
    guard let command = options.positional.first else { fail("journal-stream --run: no command", status: 2) }
    do {
      let pid = try ChildProcess.spawn(
        path: command, arguments: options.positional,
        environment: SystemdEnvironment.forChild(ChildProcess.currentEnvironment())
          + [JournalStream.environmentEntry(for: fd)].compactMap { $0 },
        stdoutFD: fd, stderrFD: fd)
      fd.close()
      say("child-pid \(pid)")
      say("child \(ChildProcess.waitOrKill(pid, timeoutMS: 10_000).map { "\($0)" } ?? "lost")")
    } catch {
      fail("\(error)")
    }
    return
  }
  for line in options.positional { try? fd.writeAll(Array((line + "\n").utf8)) }
  fd.close()
  say("streamed \(options.positional.count)")
}

/// What the supervisor does for a child whose lines must carry fields: a pipe as the child's
/// stdout/stderr, every line forwarded with the child's fields and OBJECT_PID.
func journalForward(_ options: Options) {
  guard let command = options.positional.first else { fail("journal-forward: no command", status: 2) }
  var fields: [String: String] = ["SYSLOG_IDENTIFIER": options.required("identifier")]
  for pair in options.values["field"] ?? [] {
    let parts = pair.split(separator: "=", maxSplits: 1)
    guard parts.count == 2 else { fail("--field \(pair): expected NAME=VALUE", status: 2) }
    fields[String(parts[0])] = String(parts[1])
  }
  do {
    let (readEnd, writeEnd) = try FileDescriptor.pipe()
    let pid = try ChildProcess.spawn(
      path: command, arguments: options.positional,
      environment: SystemdEnvironment.forChild(ChildProcess.currentEnvironment()),
      stdoutFD: writeEnd, stderrFD: writeEnd)
    writeEnd.close()
    say("child-pid \(pid)")
    fields["OBJECT_PID"] = "\(pid)"
    var forwarder = JournalLineForwarder(fields: fields, levelPrefix: true)
    var lines = 0
    var counting = JournalLineForwarder(fields: [:]) { _, _, _ in lines += 1 }
    while case let chunk = try readEnd.read(upTo: 4096), !chunk.isEmpty {
      forwarder.feed(chunk)
      counting.feed(chunk)
    }
    forwarder.finish()
    counting.finish()
    readEnd.close()
    say("child \(ChildProcess.waitOrKill(pid, timeoutMS: 10_000).map { "\($0)" } ?? "lost")")
    say("forwarded \(lines)")
  } catch {
    fail("\(error)")
  }
}

func doctor() {
  say("systemd-booted \(SystemdEnvironment.isSystemdBooted ? 1 : 0)")
  say("journal-socket \(Journal.isAvailable() ? Journal.socketPath : "<absent>")")
  say("notify-socket \(environment("NOTIFY_SOCKET"))")
  let notifier = Notifier()
  say("watchdog \(notifier.watchdogInterval.map { "\($0)" } ?? "none")")
  say("invocation-id \(SystemdEnvironment.invocationID ?? "<unset>")")
  let cgroups = ProcessCgroups.current()
  say("cgroup-unified \(cgroups?.unified ?? "<none>")")
  say("cgroup-memory \(cgroups?.controllers["memory"] ?? "<none>")")
  say("unit \(cgroups?.unit ?? "<none>")")
  for socket in SocketActivation.listeners() { say("listener \(socket)") }
}

let arguments = CommandLine.arguments
guard arguments.count >= 2 else {
  fail("usage: forkd-systemd-probe listeners|notify|journal-log|journal-stream|journal-forward|doctor …", status: 2)
}
let rest = arguments.dropFirst(2)
switch arguments[1] {
case "listeners": listeners(Options(rest, flags: ["accept"]))
case "notify": notify(Options(rest, flags: ["stopping"]))
case "journal-log": journalLog(Options(rest, flags: []))
case "journal-stream": journalStream(Options(rest, flags: ["level-prefix", "run"]))
case "journal-forward": journalForward(Options(rest, flags: []))
case "doctor": doctor()
default: fail("unknown command \(arguments[1])", status: 2)
}
