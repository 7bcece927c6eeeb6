import Protocol
import Syscalls
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// A forkd-vmm booting a Linux kernel (`boot --kernel …`), launched the way VMMProcess launches
/// the test guest: run directory, ready pipe on fd 3, console and log files.
final class LinuxParent {
  let pid: pid_t
  let runDirectory: String
  let spawnedAt: UInt64
  var controlSocket: String { runDirectory + "/api.sock" }
  var vsockSocket: String { runDirectory + "/vsock.sock" }
  var consoleLog: String { runDirectory + "/console.log" }
  var vmmLog: String { runDirectory + "/vmm.log" }
  private var ended = false
  /// forkd-vmm's READY line (its own timings).
  private(set) var readyLine = ""

  struct Settings {
    var vmm: String
    var kernel: String
    var initrd: String
    var disk: String?
    var commandLine: String?
    var memoryMiB: UInt64
    var vcpus: UInt32
  }

  init(_ s: Settings, runDirectory: String, timeoutMS: Int) throws {
    self.runDirectory = runDirectory
    try FileSystem.makeDirectories(runDirectory)
    var arguments = [
      s.vmm, "boot", "--kernel", s.kernel, "--initrd", s.initrd, "--memory-mib", "\(s.memoryMiB)", "--vcpus",
      "\(s.vcpus)",
    ]
    if let disk = s.disk { arguments += ["--disk", disk] }
    if let commandLine = s.commandLine { arguments += ["--cmdline", commandLine] }
    arguments += [
      "--api-sock", runDirectory + "/api.sock", "--vsock-sock", runDirectory + "/vsock.sock", "--console",
      runDirectory + "/console.log", "--ready-fd", "3",
    ]
    let pipe = try FileDescriptor.pipe()
    let log = try FileDescriptor.open(runDirectory + "/vmm.log", [.writeOnly, .create, .truncate], mode: 0o600)
    spawnedAt = Clock.monotonicNanoseconds()
    do {
      pid = try ChildProcess.spawn(
        path: s.vmm, arguments: arguments, inheritedFDs: [(3, pipe.write)], stdoutFD: log, stderrFD: log)
    } catch {
      pipe.read.close()
      pipe.write.close()
      log.close()
      throw error
    }
    pipe.write.close()
    log.close()
    defer { pipe.read.close() }
    // READY (or ERROR) on the pipe.
    var line: [UInt8] = []
    let deadline = spawnedAt + UInt64(timeoutMS) * 1_000_000
    while !line.contains(UInt8(ascii: "\n")) {
      let now = Clock.monotonicNanoseconds()
      guard now < deadline else {
        kill()
        throw LaneFailure("forkd-vmm did not report READY within \(timeoutMS) ms; \(tail(vmmLog))")
      }
      let ready = try Poll.wait([(pipe.read, .readable)], timeoutMS: Int32((deadline - now) / 1_000_000 + 1))
      if ready[0].isEmpty { continue }
      let bytes = try pipe.read.read(upTo: 512)
      if bytes.isEmpty {
        let termination = ChildProcess.waitOrKill(pid, timeoutMS: 2000)
        ended = true
        throw LaneFailure(
          "forkd-vmm ended (\(termination.map { "\($0)" } ?? "?")) before READY: \(tail(vmmLog))")
      }
      line += bytes
    }
    let text = String(decoding: line.prefix { $0 != UInt8(ascii: "\n") }, as: UTF8.self)
    readyLine = text
    guard text.hasPrefix("READY") else {
      _ = ChildProcess.waitOrKill(pid, timeoutMS: 5000)
      ended = true
      throw LaneFailure("forkd-vmm failed: \(text); \(tail(vmmLog))")
    }
  }

  /// Connects to the agent, retrying until it listens (the guest is still booting); returns
  /// the connection and its pong.
  func waitForAgent(timeoutMS: Int) throws -> (AgentClient, AgentPong) {
    try connectAgent(vsockSocket, timeoutMS: timeoutMS, isAlive: { !self.hasEnded }, context: { self.diagnostics })
  }

  var hasEnded: Bool {
    if ended { return true }
    if (try? ChildProcess.wait(pid, block: false)) != nil { ended = true }
    return ended
  }

  var diagnostics: String { "vmm.log: \(tail(vmmLog)) | console: \(tail(consoleLog, lines: 8))" }

  func control() throws -> ControlClient { try ControlClient(path: controlSocket) }

  func stop() {
    guard !hasEnded else { return }
    _ = try? control().stop(timeoutMS: 5000)
    _ = ChildProcess.waitOrKill(pid, timeoutMS: 5000)
    ended = true
  }

  func kill() {
    guard !ended else { return }
    _ = ChildProcess.waitOrKill(pid, timeoutMS: 0)
    ended = true
  }

  deinit { kill() }
}

/// Connects to the agent behind a vsock socket, retrying while the guest is not listening yet.
func connectAgent(
  _ vsockSocket: String, timeoutMS: Int, isAlive: () -> Bool, context: () -> String
) throws -> (AgentClient, AgentPong) {
  let deadline = Clock.monotonicNanoseconds() + UInt64(timeoutMS) * 1_000_000
  var lastError = "no attempt"
  while Clock.monotonicNanoseconds() < deadline {
    guard isAlive() else { throw LaneFailure("the VM ended while waiting for its agent: \(context())") }
    do {
      let agent = try AgentClient(vsockPath: vsockSocket, timeoutMS: 5000)
      let pong = try agent.ping()
      return (agent, pong)
    } catch {
      lastError = "\(error)"
    }
    usleep(200_000)
  }
  throw LaneFailure("no agent answer within \(timeoutMS) ms (last: \(lastError)): \(context())")
}

/// The last lines of a file, for failure messages.
func tail(_ path: String, lines: Int = 5) -> String {
  guard let bytes = try? FileSystem.readFile(path, limit: 4 << 20) else { return "(no \(path))" }
  return String(decoding: bytes, as: UTF8.self).split(separator: "\n").suffix(lines).joined(separator: " | ")
}
