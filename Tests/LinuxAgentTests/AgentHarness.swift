import Protocol
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// A failure of the harness itself (building or starting the agent, the socket), with what and why.
struct HarnessError: Error, CustomStringConvertible {
  var description: String
  init(_ description: String) { self.description = description }
}

/// The package root, from this file's place in it (Tests/LinuxAgentTests/…).
let packageRoot: String = {
  var parts = String(#filePath).split(separator: "/", omittingEmptySubsequences: false)
  parts.removeLast(3)
  return parts.joined(separator: "/")
}()

/// Builds guest/linux-agent with its script (cached: a no-op when the binary is up to date) and
/// returns the path of the static forkd-agent. Built once per test process.
let agentBinary: Result<String, HarnessError> = {
  let output = packageRoot + "/.cache/linux-guest/forkd-agent"
  let script = packageRoot + "/guest/linux-agent/build.sh"
  do {
    let pid = try ChildProcess.spawn(path: "/usr/bin/env", arguments: ["env", "bash", script, output])
    let termination = try ChildProcess.wait(pid)
    guard termination == .exited(0) else {
      return .failure(HarnessError("\(script) \(output) ended with \(termination.map { "\($0)" } ?? "?")"))
    }
  } catch {
    return .failure(HarnessError("cannot run \(script): \(error)"))
  }
  return .success(output)
}()

/// A scratch directory removed when the object goes away.
final class ScratchDirectory: @unchecked Sendable {
  let path: String
  init(_ name: String) throws {
    var template = Array("/tmp/forkd-agent-\(name)-XXXXXX".utf8CString)
    guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
      throw SyscallError("mkdtemp", .current)
    }
    path = String(cString: made)
  }
  deinit { FileSystem.removeTree(path) }
}

/// The real forkd-agent binary listening on a Unix socket (its host-test seam), with a console
/// file and a log; killed when the object goes away.
final class RunningAgent: @unchecked Sendable {
  let scratch: ScratchDirectory
  let pid: pid_t
  var socketPath: String { scratch.path + "/agent.sock" }
  var consolePath: String { scratch.path + "/console" }
  var logPath: String { scratch.path + "/agent.log" }
  private var reaped: ChildProcess.Termination?

  /// `environment`: extra variables for the agent (e.g. FORKD_AGENT_PYTHON).
  init(environment: [String] = []) throws {
    let binary = try agentBinary.get()
    scratch = try ScratchDirectory("run")
    let console = try FileDescriptor.open(scratch.path + "/console", [.writeOnly, .create], mode: 0o600)
    console.close()
    let log = try FileDescriptor.open(scratch.path + "/agent.log", [.writeOnly, .create, .truncate], mode: 0o600)
    defer { log.close() }
    pid = try ChildProcess.spawn(
      path: binary,
      arguments: [binary, "--listen", "unix:" + scratch.path + "/agent.sock", "--console", scratch.path + "/console"],
      environment: environment.isEmpty ? nil : ChildProcess.currentEnvironment() + environment,
      stdoutFD: log, stderrFD: log)
    // Ready once the socket accepts a connection.
    let deadline = Clock.monotonicNanoseconds() + 5_000_000_000
    while true {
      if let fd = try? UnixSocket.connect(path: socketPath) {
        fd.close()
        return
      }
      if Clock.monotonicNanoseconds() > deadline || (try? ChildProcess.wait(pid, block: false)) != nil {
        _ = ChildProcess.waitOrKill(pid, timeoutMS: 0)
        throw HarnessError("forkd-agent did not listen on \(socketPath): \(fileText(logPath))")
      }
      usleep(10_000)
    }
  }

  /// Waits for the agent to end by itself; nil if it is still running after `timeoutMS`.
  func waitForExit(timeoutMS: Int) -> ChildProcess.Termination? {
    let deadline = Clock.monotonicNanoseconds() + UInt64(timeoutMS) * 1_000_000
    while Clock.monotonicNanoseconds() < deadline {
      if let t = try? ChildProcess.wait(pid, block: false) {
        reaped = t
        return t
      }
      usleep(10_000)
    }
    return nil
  }

  var isRunning: Bool {
    if reaped != nil { return false }
    if let t = try? ChildProcess.wait(pid, block: false) {
      reaped = t
      return false
    }
    return true
  }

  func connect() throws -> AgentConnection { try AgentConnection(path: socketPath) }

  deinit {
    if reaped == nil { _ = ChildProcess.waitOrKill(pid, timeoutMS: 0) }
  }
}

/// The contents of a (small) text file, for assertions and messages.
func fileText(_ path: String) -> String {
  guard let bytes = try? FileSystem.readFile(path, limit: 1 << 20) else { return "(cannot read \(path))" }
  return String(decoding: bytes, as: UTF8.self)
}

/// One raw connection to the agent: frames out, frames in (AgentCodec, AgentFrameDecoder).
final class AgentConnection: @unchecked Sendable {
  let fd: FileDescriptor
  private var decoder = AgentFrameDecoder()
  private var nextID: UInt32 = 1

  init(path: String) throws {
    fd = try UnixSocket.connect(path: path)
  }
  deinit { fd.close() }

  func sendRaw(_ bytes: [UInt8]) throws { try fd.writeAll(bytes) }

  /// Sends `request` and returns its id.
  @discardableResult
  func send(_ request: AgentRequest) throws -> UInt32 {
    let id = nextID
    nextID &+= 1
    try sendRaw(AgentCodec.encode(request, id: id))
    return id
  }

  /// The next frame, or nil if the agent closed the connection first.
  func nextFrame(timeoutMS: Int = 10_000) throws -> AgentFrame? {
    let deadline = Clock.monotonicNanoseconds() + UInt64(timeoutMS) * 1_000_000
    while true {
      if let frame = try decoder.next() { return frame }
      let now = Clock.monotonicNanoseconds()
      guard now < deadline else { throw HarnessError("no frame from the agent within \(timeoutMS) ms") }
      let ready = try Poll.wait([(fd, .readable)], timeoutMS: Int32((deadline - now) / 1_000_000 + 1))
      if ready[0].isEmpty { continue }
      let bytes = try fd.read(upTo: 65536)
      if bytes.isEmpty { return nil }
      decoder.feed(bytes)
    }
  }

  /// Sends `request` and decodes its answer (an agent error comes back as `.error`).
  func call(_ request: AgentRequest, timeoutMS: Int = 10_000) throws -> AgentResponse {
    let id = try send(request)
    return try response(to: request, id: id, timeoutMS: timeoutMS)
  }

  func response(to request: AgentRequest, id: UInt32, timeoutMS: Int = 10_000) throws -> AgentResponse {
    guard let frame = try nextFrame(timeoutMS: timeoutMS) else {
      throw HarnessError("the agent closed the connection instead of answering \(request)")
    }
    guard frame.requestID == id else { throw HarnessError("answer for id \(frame.requestID), expected \(id)") }
    return try AgentCodec.decodeResponse(frame, for: request)
  }

  /// Runs a program and returns its result (throws if the agent answered anything else).
  func exec(_ args: [String], timeoutSeconds: UInt32 = 10, timeoutMS: Int = 20_000) throws -> AgentExecResult {
    let response = try call(.exec(args: args, timeoutSeconds: timeoutSeconds), timeoutMS: timeoutMS)
    guard case .exec(let result) = response else { throw HarnessError("exec \(args) answered \(response)") }
    return result
  }
}

extension AgentExecResult {
  var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
  var stderrText: String { String(decoding: stderr, as: UTF8.self) }
}

/// A frame with any header fields, for malformed-input tests.
func rawFrame(
  magic: UInt32 = AgentProtocol.magic, version: UInt8 = 1, type: UInt8, id: UInt32, length: UInt32? = nil,
  payload: [UInt8] = []
) -> [UInt8] {
  var w = ByteWriter()
  w.u32(magic)
  w.u8(version)
  w.u8(type)
  w.u16(0)
  w.u32(id)
  w.u32(length ?? UInt32(payload.count))
  w.bytes(payload)
  return w.bytes
}
