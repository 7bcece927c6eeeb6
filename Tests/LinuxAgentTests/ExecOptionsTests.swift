import Protocol
import Syscalls
import Testing

/// exec's environment, working directory and stdin in the Linux agent (the optional tail of the
/// exec payload), over the agent's Unix-socket seam with real programs.
@Suite("Linux agent exec options")
struct LinuxAgentExecOptionsTests {
  func run(_ c: AgentConnection, _ args: [String], _ options: ExecOptions) throws -> AgentExecResult {
    let response = try c.call(.exec(args: args, timeoutSeconds: 10, options: options), timeoutMS: 20_000)
    guard case .exec(let result) = response else { throw HarnessError("exec \(args) answered \(response)") }
    return result
  }

  @Test("env adds and overrides variables, cwd sets the directory, stdin is the program's input")
  func options() throws {
    let agent = try RunningAgent()
    let c = try agent.connect()
    let env = try run(
      c, ["/bin/sh", "-c", "echo \"$GREETING $WHO\"; echo \"$PATH\" | grep -c /"],
      ExecOptions(environment: ["GREETING=hello", "WHO=forkd"]))
    #expect(env.exitCode == 0)
    #expect(env.stdoutText == "hello forkd\n1\n")  // the agent's PATH is kept
    #expect(try run(c, ["/bin/pwd"], ExecOptions(workingDirectory: "/tmp")).stdoutText == "/tmp\n")
    let bytes = (0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
    let counted = try run(c, ["/usr/bin/wc", "-c"], ExecOptions(stdin: bytes))
    #expect(counted.stdoutText.trimmingCharacters(in: " \n") == "200000")
    let echoed = try run(c, ["/bin/cat"], ExecOptions(stdin: Array("line one\nline two\n".utf8)))
    #expect(echoed.stdoutText == "line one\nline two\n")
    // Without options, stdin is /dev/null: cat ends at once with nothing.
    #expect(try c.exec(["/bin/cat"]).stdoutText == "")
  }

  @Test("a missing working directory fails the program with 126 and says why")
  func missingDirectory() throws {
    let agent = try RunningAgent()
    let c = try agent.connect()
    let result = try run(c, ["/bin/pwd"], ExecOptions(workingDirectory: "/nonexistent/dir"))
    #expect(result.exitCode == 126)
    #expect(result.stderrText.contains("/nonexistent/dir"))
  }

  @Test("malformed tails are refused with bad argument, naming the part")
  func malformed() throws {
    let agent = try RunningAgent()
    let c = try agent.connect()
    func payload(_ tail: [UInt8]) -> [UInt8] {
      var w = ByteWriter()
      w.u32(5)
      w.u32(1)
      w.string("/bin/true")
      w.bytes(tail)
      return w.bytes
    }
    func refused(_ tail: [UInt8], _ fragment: String) throws {
      try c.sendRaw(rawFrame(type: 0x09, id: 7, payload: payload(tail)))
      let frame = try #require(try c.nextFrame())
      guard case .error(let e) = try AgentCodec.decodeResponse(frame, for: .exec(args: [], timeoutSeconds: 0)) else {
        Issue.record("no error for a tail \(tail)")
        return
      }
      #expect(e.code == AgentError.badArgument)
      #expect(e.message.contains(fragment), "\(e.message)")
    }
    var noEquals = ByteWriter()
    noEquals.u32(1)
    noEquals.string("NOVALUE")
    try refused(noEquals.bytes, "NAME=value")
    var relative = ByteWriter()
    relative.u32(0)
    relative.string("tmp")
    relative.u32(0)
    try refused(relative.bytes, "absolute")
    var shortStdin = ByteWriter()
    shortStdin.u32(0)
    shortStdin.u32(0)
    shortStdin.u32(100)
    shortStdin.bytes([1, 2])
    try refused(shortStdin.bytes, "stdin")
    try refused([9, 9, 9, 9], "environment")
    #expect(try c.exec(["/bin/true"]).exitCode == 0)
  }
}

extension String {
  func trimmingCharacters(in set: String) -> String {
    var s = Substring(self)
    while let f = s.first, set.contains(f) { s = s.dropFirst() }
    while let l = s.last, set.contains(l) { s = s.dropLast() }
    return String(s)
  }
}
