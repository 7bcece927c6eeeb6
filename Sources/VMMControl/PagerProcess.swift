import Jail
import Protocol
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// One running forkd-pager: the per-child userfaultfd page server, or (`shared: true`, the
/// experimental daemon-wide mode) one pager serving every child restored against its socket.
public final class PagerProcess: @unchecked Sendable {
  public let pid: pid_t
  public let socket: String
  public let logPath: String
  public let pidFD: FileDescriptor
  private let reaper: Reaper

  /// Starts forkd-pager listening on `socket` and waits until it is listening.
  /// `jail` (with the run directory `socket` lies in as its cell): the pager changes into that
  /// directory and locks itself into it after its handshake, before the first fault is served.
  public static func launch(
    socket: String, logPath: String, recordWorkingSet: String? = nil, prefetch: String? = nil,
    handshakeTimeoutMS: Int = 5000, binary: String? = nil, timeoutMS: Int = 10_000, output: FileDescriptor? = nil,
    shared: Bool = false, extraArguments: [String] = [], jail: (spec: JailSpec, cell: String)? = nil
  ) throws(ControlError) -> PagerProcess {
    let path: String
    if let binary { path = binary } else { path = try ForkdBinaries.path(of: "forkd-pager") }
    var socketArgument = socket
    if let jail {
      guard socket.hasPrefix(jail.cell + "/"), !socket.dropFirst(jail.cell.count + 1).contains("/") else {
        throw ControlError(.launch, "a jailed pager's socket \(socket) must lie directly in its cell \(jail.cell)")
      }
      socketArgument = String(socket.dropFirst(jail.cell.count + 1))
    }
    var arguments = [
      path, "--socket", socketArgument, "--ready-fd", "3", "--handshake-timeout-ms", "\(handshakeTimeoutMS)",
    ]
    if let recordWorkingSet { arguments += ["--record-working-set", recordWorkingSet] }
    if let prefetch { arguments += ["--prefetch", prefetch] }
    if shared { arguments.append("--shared") }
    arguments += extraArguments
    if let jail {
      var spec = jail.spec
      spec.cell = jail.cell
      arguments += spec.arguments
    }
    let pipe: (read: FileDescriptor, write: FileDescriptor)
    let log: FileDescriptor
    do {
      pipe = try FileDescriptor.pipe()
      log = try output ?? FileDescriptor.open(logPath, [.writeOnly, .create, .truncate], mode: 0o600)
    } catch {
      throw ControlError(.launch, "cannot prepare the launch of \(path)", cause: error)
    }
    let pid: pid_t
    do {
      pid = try ChildProcess.spawn(
        path: path, arguments: arguments, inheritedFDs: [(3, pipe.write)], stdoutFD: log, stderrFD: log)
    } catch {
      pipe.read.close()
      pipe.write.close()
      log.close()
      throw ControlError(.launch, "cannot start \(path)", cause: error)
    }
    pipe.write.close()
    log.close()
    defer { pipe.read.close() }
    var line: [UInt8] = []
    do {
      try readUntil(
        pipe.read, deadline: Clock.monotonicNanoseconds() + UInt64(timeoutMS) * 1_000_000,
        what: "forkd-pager to listen", { $0.contains(UInt8(ascii: "\n")) }, buffer: &line)
    } catch {
      let termination = ChildProcess.waitOrKill(pid, timeoutMS: 1000)
      _ = try? FileSystem.unlink(socket)
      throw ControlError(
        .notReady,
        "forkd-pager (pid \(pid)) did not start (\(termination.map { "\($0)" } ?? "killed")): \(lastLines(of: logPath))",
        cause: error)
    }
    guard line.starts(with: Array("READY".utf8)) else {
      let termination = ChildProcess.waitOrKill(pid, timeoutMS: 1000)
      throw ControlError(
        .launch,
        "forkd-pager (pid \(pid)) failed (\(termination.map { "\($0)" } ?? "killed")): \(String(decoding: line, as: UTF8.self))"
      )
    }
    let pidFD: FileDescriptor
    do {
      pidFD = try ChildProcess.pidFD(pid)
    } catch {
      ChildProcess.waitOrKill(pid, timeoutMS: 0)
      throw ControlError(.launch, "cannot watch forkd-pager \(pid)", cause: error)
    }
    return PagerProcess(pid: pid, socket: socket, logPath: logPath, pidFD: pidFD)
  }

  private init(pid: pid_t, socket: String, logPath: String, pidFD: FileDescriptor) {
    self.pid = pid
    reaper = Reaper(pid: pid)
    self.socket = socket
    self.logPath = logPath
    self.pidFD = pidFD
  }

  deinit {
    reaper.killIfRunning()
    pidFD.close()
  }

  /// The pager's counters and fault service-time percentiles.
  public func stats(timeoutMS: Int = 5000) throws(ControlError) -> [String: JSONValue] {
    let fd: FileDescriptor
    do {
      fd = try UnixSocket.connect(path: socket)
    } catch {
      throw ControlError(.connection, "cannot reach the pager at \(socket)", cause: error)
    }
    defer { fd.close() }
    do {
      try fd.writeAll(Array("{\"op\":\"stats\"}\n".utf8))
    } catch {
      throw ControlError(.connection, "cannot ask the pager for stats", cause: error)
    }
    var buffer: [UInt8] = []
    try readUntil(
      fd, deadline: Clock.monotonicNanoseconds() + UInt64(timeoutMS) * 1_000_000, what: "pager stats",
      { $0.contains(UInt8(ascii: "\n")) }, buffer: &buffer)
    guard
      let reply = try? JSONValue.parse(
        Array(buffer.prefix(while: { $0 != UInt8(ascii: "\n") })), source: "pager stats"),
      reply["ok"] == .bool(true), let result = reply["result"]?.objectValue
    else { throw ControlError(.protocolViolation, "bad stats reply from the pager") }
    return result
  }

  /// Whether the process has ended (reaps it if so).
  public var hasExited: Bool { reaper.hasExited }

  public var termination: ChildProcess.Termination? {
    _ = reaper.hasExited
    return reaper.termination
  }

  /// Waits up to `timeoutMS` for the process to end by itself, without killing it; nil if it runs on.
  public func exited(withinMS timeoutMS: Int) -> ChildProcess.Termination? {
    reaper.exited(withinMS: timeoutMS)
  }

  public func signal(_ signal: Int32) { _ = kill(pid, signal) }

  @discardableResult
  public func wait(timeoutMS: Int = 10_000) -> ChildProcess.Termination? {
    reaper.waitOrKill(timeoutMS: timeoutMS)
  }
}
