import Protocol
import Syscalls
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// The Linux guest agent (guest/linux-agent), the real static binary driven over its Unix-socket
/// seam with the same frames a host sends over vsock.
@Suite("Linux agent")
struct LinuxAgentTests {
  @Test("ping names the Linux agent and counts every answered frame")
  func ping() throws {
    let agent = try RunningAgent()
    let c = try agent.connect()
    guard case .pong(let first) = try c.call(.ping) else { Issue.record("no pong"); return }
    #expect(first.kind == AgentPong.linuxKind)
    #expect(first.agentVersion == 1)
    #expect(first.requestsServed == 1)
    #expect(first.counter == 0)
    _ = try c.call(.echo([1, 2, 3]))
    _ = try c.call(.kvGet(key: Array("x".utf8)))
    guard case .pong(let second) = try c.call(.ping) else { Issue.record("no pong"); return }
    #expect(second.requestsServed == 4)
  }

  @Test("echo, counter and kv behave like the test guest's, state shared across connections")
  func stateCommands() throws {
    let agent = try RunningAgent()
    let a = try agent.connect()
    let b = try agent.connect()
    let blob = (0..<5000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
    #expect(try a.call(.echo(blob)) == .echo(blob))
    #expect(try a.call(.echo([])) == .echo([]))
    #expect(try a.call(.counter(delta: 5)) == .counter(5))
    #expect(try b.call(.counter(delta: -2)) == .counter(3))
    #expect(try a.call(.kvSet(key: Array("k".utf8), value: Array("v1".utf8))) == .kvSet)
    #expect(try b.call(.kvGet(key: Array("k".utf8))) == .kvGet(found: true, value: Array("v1".utf8)))
    #expect(try b.call(.kvGet(key: Array("missing".utf8))) == .kvGet(found: false, value: []))
    let longKey = [UInt8](repeating: 0x61, count: 33)
    #expect(try a.call(.kvSet(key: longKey, value: [])).agentErrorCode == AgentError.tooLarge)
    #expect(
      try a.call(.kvSet(key: [1], value: [UInt8](repeating: 0, count: 257))).agentErrorCode == AgentError.tooLarge)
    for i in 0..<15 { _ = try a.call(.kvSet(key: Array("key\(i)".utf8), value: [])) }
    #expect(try a.call(.kvSet(key: Array("one-too-many".utf8), value: [])).agentErrorCode == AgentError.tooLarge)
  }

  @Test("fill and checksum over the agent's data area agree with TestGuestMath")
  func fillChecksum() throws {
    let agent = try RunningAgent()
    let c = try agent.connect()
    #expect(try c.call(.fill(pages: 64, seed: 42)) == .filled(pages: 64))
    #expect(try c.call(.checksum(pages: 64)) == .checksum(TestGuestMath.checksum(pages: 64, seed: 42)))
    #expect(try c.call(.checksum(pages: 1 << 40)).agentErrorCode == AgentError.badArgument)
  }

  @Test("console writes one line to the console device")
  func console() throws {
    let agent = try RunningAgent()
    let c = try agent.connect()
    #expect(try c.call(.console(Array("hello\nconsole".utf8))) == .consoleWritten)
    #expect(fileText(agent.consolePath) == "hello console\n")
    #expect(try c.call(.console([UInt8](repeating: 0x41, count: 257))).agentErrorCode == AgentError.tooLarge)
  }

  @Test("exec returns stdout, stderr and the exit code of a real process")
  func execOutputs() throws {
    let agent = try RunningAgent()
    let c = try agent.connect()
    let r = try c.exec(["sh", "-c", "printf 'to stdout'; printf 'to stderr' >&2; exit 7"])
    #expect(r.exitCode == 7)
    #expect(r.stdoutText == "to stdout")
    #expect(r.stderrText == "to stderr")
    #expect(!r.timedOut)
    let ok = try c.exec(["/bin/echo", "hé llo", ""])
    #expect(ok.exitCode == 0)
    #expect(ok.stdoutText == "hé llo \n")
    // Killed by a signal: the negative signal number.
    let killed = try c.exec(["sh", "-c", "kill -TERM $$"])
    #expect(killed.exitCode == -SIGTERM)
    #expect(!killed.timedOut)
    // Runs with no stdin.
    #expect(try c.exec(["cat"]).stdout.isEmpty)
  }

  @Test("exec of a missing program: exit code 127 and a message on stderr")
  func execMissing() throws {
    let agent = try RunningAgent()
    let c = try agent.connect()
    let r = try c.exec(["/nonexistent/program", "arg"])
    #expect(r.exitCode == 127)
    #expect(r.stderrText.contains("cannot run /nonexistent/program"))
    #expect(r.stderrText.contains("No such file or directory"))
  }

  @Test("exec timeout kills the program and everything it started, and says so")
  func execTimeout() throws {
    let agent = try RunningAgent()
    let c = try agent.connect()
    let pidFile = agent.scratch.path + "/bg.pid"
    let start = Clock.monotonicNanoseconds()
    let r = try c.exec(["sh", "-c", "sleep 30 & echo $! > \(pidFile); echo started; sleep 30"], timeoutSeconds: 1)
    let elapsedMS = (Clock.monotonicNanoseconds() - start) / 1_000_000
    #expect(r.timedOut)
    #expect(r.exitCode == -SIGKILL)
    #expect(r.stdoutText == "started\n")
    #expect(elapsedMS >= 900 && elapsedMS < 5000, "took \(elapsedMS) ms")
    // The background sleep was in the program's process group: gone too.
    let bg = pid_t(fileText(pidFile).split(separator: "\n").first.flatMap { Int32($0) } ?? 0)
    #expect(bg > 0)
    usleep(100_000)
    #expect(bg > 0 && kill(bg, 0) != 0, "background process \(bg) survived the timeout")
    // The connection keeps working.
    #expect(try c.exec(["true"]).exitCode == 0)
  }

  @Test("large output is capped, the rest counted on stderr, and the response stays decodable")
  func execLargeOutput() throws {
    let agent = try RunningAgent()
    let c = try agent.connect()
    let r = try c.exec(["head", "-c", "3000000", "/dev/zero"])
    #expect(r.exitCode == 0)
    #expect(r.stdout.count == 512 * 1024 - 64)
    #expect(r.stderrText.contains("bytes of stdout dropped"))
  }

  @Test("a long exec on one connection does not hold up another connection")
  func execConcurrent() throws {
    let agent = try RunningAgent()
    let slow = try agent.connect()
    let request = AgentRequest.exec(args: ["sleep", "1"], timeoutSeconds: 10)
    let id = try slow.send(request)
    let fast = try agent.connect()
    let start = Clock.monotonicNanoseconds()
    #expect(try fast.call(.echo([9])) == .echo([9]))
    #expect((Clock.monotonicNanoseconds() - start) / 1_000_000 < 500)
    // Frames behind the exec on the same connection wait and are answered in order.
    let echoID = try slow.send(.echo([1]))
    guard case .exec(let r) = try slow.response(to: request, id: id) else { Issue.record("no exec answer"); return }
    #expect(r.exitCode == 0)
    #expect(try slow.response(to: .echo([1]), id: echoID) == .echo([1]))
  }

  @Test("a connection that dies during exec: the program is killed, the agent keeps serving")
  func execOrphaned() throws {
    let agent = try RunningAgent()
    let pidFile = agent.scratch.path + "/orphan.pid"
    do {
      let c = try agent.connect()
      try c.send(.exec(args: ["sh", "-c", "echo $$ > \(pidFile); exec sleep 30"], timeoutSeconds: 60))
      var waited = 0
      while fileText(pidFile).isEmpty || fileText(pidFile).hasPrefix("(cannot") {
        usleep(10_000)
        waited += 1
        if waited > 300 { break }
      }
    }
    let pid = pid_t(fileText(pidFile).split(separator: "\n").first.flatMap { Int32($0) } ?? 0)
    #expect(pid > 0)
    var gone = false
    for _ in 0..<200 where !gone {
      gone = kill(pid, 0) != 0
      usleep(10_000)
    }
    #expect(gone, "the orphaned program \(pid) still runs")
    #expect(try agent.connect().call(.ping).isPong)
  }

  @Test("exec requests that cannot run are refused with error 3")
  func execBadInput() throws {
    let agent = try RunningAgent()
    let c = try agent.connect()
    #expect(try c.call(.exec(args: [], timeoutSeconds: 1)).agentErrorCode == AgentError.badArgument)
    #expect(try c.call(.exec(args: [""], timeoutSeconds: 1)).agentErrorCode == AgentError.badArgument)
    #expect(try c.call(.exec(args: ["echo", "a\u{0}b"], timeoutSeconds: 1)).agentErrorCode == AgentError.badArgument)
    // Hand-made payloads: too short, argc beyond the payload, an argument running past the
    // end, trailing bytes.
    let execRequest = AgentRequest.exec(args: ["x"], timeoutSeconds: 1)
    let payloads: [[UInt8]] = [
      [1, 0, 0],
      [1, 0, 0, 0, 200, 0, 0, 0, 1, 0, 0, 0],
      [1, 0, 0, 0, 1, 0, 0, 0, 9, 0, 0, 0, 0x61],
      [1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0x61, 0xff],
    ]
    for (i, payload) in payloads.enumerated() {
      try c.sendRaw(rawFrame(type: 0x09, id: 100 + UInt32(i), payload: payload))
      guard let frame = try c.nextFrame() else { Issue.record("closed"); return }
      #expect(frame.requestID == 100 + UInt32(i))
      #expect(try AgentCodec.decodeResponse(frame, for: execRequest).agentErrorCode == AgentError.badArgument)
    }
    #expect(try c.exec(["true"]).exitCode == 0)
  }

  @Test("unknown types, wrong sizes and oversized frames get their error; the stream continues")
  func badFrames() throws {
    let agent = try RunningAgent()
    let c = try agent.connect()
    func expectError(_ bytes: [UInt8], id: UInt32, code: UInt32) throws {
      try c.sendRaw(bytes)
      guard let frame = try c.nextFrame() else {
        Issue.record("the agent closed the connection")
        return
      }
      #expect(frame.type == AgentProtocol.errorType)
      #expect(frame.requestID == id)
      #expect(try AgentCodec.decodeResponse(frame, for: .ping).agentErrorCode == code)
    }
    try expectError(rawFrame(type: 0x42, id: 7), id: 7, code: AgentError.unknownType)
    try expectError(rawFrame(type: 0x05, id: 8, payload: [1, 2, 3]), id: 8, code: AgentError.badArgument)
    try expectError(rawFrame(type: 0x03, id: 9, payload: [0]), id: 9, code: AgentError.badArgument)
    try expectError(rawFrame(type: 0x08, id: 10, payload: []), id: 10, code: AgentError.badArgument)
    // A payload above 1 MiB: error 5 at once, then its bytes are skipped and the next frame
    // is answered.
    let size = (1 << 20) + 10
    try expectError(rawFrame(type: 0x02, id: 11, length: UInt32(size)), id: 11, code: AgentError.tooLarge)
    try c.sendRaw([UInt8](repeating: 0xEE, count: size))
    #expect(try c.call(.echo([4, 2])) == .echo([4, 2]))
    // The largest accepted payload still works.
    let big = [UInt8](repeating: 0x5A, count: 1 << 20)
    #expect(try c.call(.echo(big), timeoutMS: 20_000) == .echo(big))
  }

  @Test("a bad magic or version gets error 1 and the connection is closed; the agent lives on")
  func badHeader() throws {
    let agent = try RunningAgent()
    for bytes in [Array("GET / HTTP/1.1\r\n\r\n".utf8), rawFrame(version: 2, type: 0x01, id: 3)] {
      let c = try agent.connect()
      try c.sendRaw(bytes)
      let frame = try c.nextFrame()
      #expect(frame?.type == AgentProtocol.errorType)
      #expect(try frame.map { try AgentCodec.decodeResponse($0, for: .ping) }?.agentErrorCode == AgentError.badFrame)
      #expect(try c.nextFrame() == nil, "the connection stayed open after a bad header")
    }
    // Truncated frames from a peer that hangs up are simply dropped.
    do {
      let c = try agent.connect()
      try c.sendRaw(Array(rawFrame(type: 0x02, id: 1, payload: [1, 2, 3]).prefix(10)))
    }
    #expect(agent.isRunning)
    #expect(try agent.connect().call(.ping).isPong)
  }

  @Test("exit answers, then the agent ends with the code (power-off in a guest)")
  func exit() throws {
    let agent = try RunningAgent()
    let c = try agent.connect()
    #expect(try c.call(.exit(code: 3)) == .exiting)
    #expect(agent.waitForExit(timeoutMS: 5000) == .exited(3))
  }
}

extension AgentResponse {
  var agentErrorCode: UInt32? {
    if case .error(let e) = self { return e.code }
    return nil
  }
  var isPong: Bool {
    if case .pong = self { return true }
    return false
  }
}
