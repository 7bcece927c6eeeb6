import Protocol
import Syscalls
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// `eval` in the Linux agent's long-lived Python interpreter (guest/linux-agent/eval.c), driven
/// over the agent's Unix-socket seam with a real python3.
@Suite("Linux agent eval")
struct LinuxAgentEvalTests {
  @Test("the last expression's repr is the result, state persists, print() is captured")
  func resultAndState() throws {
    let agent = try RunningAgent()
    let c = try agent.connect()
    let two = try c.eval("1+1")
    #expect(two.exitCode == 0)
    #expect(two.resultText == "2")
    #expect(two.errorText == "")
    #expect(try c.eval("x = 41").resultText == "")
    #expect(try c.eval("x+1").resultText == "42")
    #expect(
      try c.eval("import json, decimal\njson.dumps({'d': str(decimal.Decimal('1.5'))})").resultText
        == "'{\"d\": \"1.5\"}'")
    let printed = try c.eval("print('hello'); None")
    #expect(printed.stdoutText == "hello\n")
    #expect(printed.resultText == "")
    // Another connection reaches the same interpreter (one per guest).
    #expect(try agent.connect().eval("x").resultText == "41")
  }

  @Test("an exception answers status 1 and the traceback of the user's code only")
  func exception() throws {
    let agent = try RunningAgent()
    let c = try agent.connect()
    let failed = try c.eval("y = 1\n1/0")
    #expect(failed.exitCode == 1)
    #expect(failed.errorText.contains("ZeroDivisionError"))
    #expect(failed.errorText.contains("<eval>"))
    #expect(!failed.errorText.contains("<string>"))
    #expect(try c.eval("y").resultText == "1")
    let syntax = try c.eval("def (")
    #expect(syntax.exitCode == 1)
    #expect(syntax.errorText.contains("SyntaxError"))
    #expect(try c.eval("raise SystemExit(7)").exitCode == 7)
    #expect(try c.eval("y + 1").resultText == "2")
  }

  @Test("two agents (two children) never share interpreter state")
  func isolation() throws {
    let first = try RunningAgent()
    let second = try RunningAgent()
    #expect(try first.connect().eval("x = 41").exitCode == 0)
    let missing = try second.connect().eval("x")
    #expect(missing.exitCode == 1)
    #expect(missing.errorText.contains("NameError"))
    #expect(try first.connect().eval("x + 1").resultText == "42")
  }

  @Test("a timeout kills the interpreter, says its state is gone, and the next eval starts anew")
  func timeout() throws {
    let agent = try RunningAgent()
    let c = try agent.connect()
    #expect(try c.eval("x = 1").exitCode == 0)
    let slow = try c.eval("import time\ntime.sleep(30)", timeoutSeconds: 1)
    #expect(slow.exitCode == 124)
    #expect(slow.errorText.contains("state is gone"))
    let after = try c.eval("x")
    #expect(after.exitCode == 1)
    #expect(after.errorText.contains("NameError"))
    #expect(try c.eval("2*21").resultText == "42")
  }

  @Test("one eval at a time: a second is refused as busy while pings are still answered")
  func busy() throws {
    let agent = try RunningAgent()
    let a = try agent.connect()
    let b = try agent.connect()
    let slow = AgentRequest.eval(code: "import time\ntime.sleep(1.5)\n'done'", timeoutSeconds: 10)
    let id = try a.send(slow)
    // Wait until the interpreter has the first eval (it answers the second as busy from then on).
    var refused = false
    for _ in 0..<50 where !refused {
      refused = try b.call(.eval(code: "1", timeoutSeconds: 5)).agentErrorCode == AgentError.busy
      if !refused { usleep(20_000) }
    }
    #expect(refused)
    guard case .pong = try b.call(.ping) else {
      Issue.record("no pong while an eval runs")
      return
    }
    guard case .eval(let done) = try a.response(to: slow, id: id, timeoutMS: 20_000) else {
      Issue.record("the slow eval was not answered")
      return
    }
    #expect(done.resultText == "'done'")
  }

  @Test("an interpreter that exits or cannot start is reported, and the agent keeps serving")
  func interpreterDies() throws {
    let agent = try RunningAgent()
    let c = try agent.connect()
    #expect(try c.eval("z = 5").exitCode == 0)
    let died = try c.eval("import os\nos._exit(3)")
    #expect(died.exitCode == -1)
    #expect(died.errorText.contains("ended"))
    #expect(try c.eval("'z' in globals()").resultText == "False")

    let noPython = try RunningAgent(environment: ["FORKD_AGENT_PYTHON=/nonexistent/python3"])
    let d = try noPython.connect()
    let missing = try d.eval("1")
    #expect(missing.exitCode == -1)
    #expect(missing.errorText.contains("python3"))
    guard case .pong = try d.call(.ping) else {
      Issue.record("the agent stopped answering")
      return
    }
  }

  @Test("malformed eval payloads are refused with bad argument")
  func malformed() throws {
    let agent = try RunningAgent()
    let c = try agent.connect()
    // Declared code length longer than the payload.
    try c.sendRaw(rawFrame(type: 0x20, id: 9, payload: [5, 0, 0, 0, 100, 0, 0, 0, 0x31]))
    guard let frame = try c.nextFrame(), frame.type == AgentProtocol.errorType else {
      Issue.record("no error frame")
      return
    }
    #expect(frame.payload.prefix(4) == [UInt8(AgentError.badArgument), 0, 0, 0][...])
    #expect(try c.eval("3").resultText == "3")
  }
}

extension AgentConnection {
  func eval(_ code: String, timeoutSeconds: UInt32 = 10) throws -> AgentEvalResult {
    let response = try call(.eval(code: code, timeoutSeconds: timeoutSeconds), timeoutMS: 40_000)
    guard case .eval(let result) = response else { throw HarnessError("eval \(code) answered \(response)") }
    return result
  }
}

extension AgentEvalResult {
  var resultText: String { String(decoding: result, as: UTF8.self) }
  var errorText: String { String(decoding: error, as: UTF8.self) }
  var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
}
