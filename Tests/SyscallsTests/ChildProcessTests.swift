import Syscalls
import Testing

#if canImport(Glibc)
  import Glibc
#endif

@Suite("ChildProcess")
struct ChildProcessTests {
  @Test("waitOrKill collects the exit status of a process that ends by itself")
  func waitOrKillCollectsExit() throws {
    let pid = try ChildProcess.spawn(path: "/bin/sh", arguments: ["sh", "-c", "exit 7"])
    #expect(ChildProcess.waitOrKill(pid, timeoutMS: 30_000) == .exited(7))
  }

  @Test("waitOrKill SIGKILLs a process that outlives the timeout")
  func waitOrKillKills() throws {
    let pid = try ChildProcess.spawn(path: "/bin/sleep", arguments: ["sleep", "30"])
    #expect(ChildProcess.waitOrKill(pid, timeoutMS: 50) == .signaled(SIGKILL))
  }

  @Test("waitOrKill on a pid that is not (or no longer) our child returns at once and signals nothing")
  func waitOrKillNotAChild() throws {
    let pid = try ChildProcess.spawn(path: "/bin/sh", arguments: ["sh", "-c", "exit 0"])
    #expect(try ChildProcess.wait(pid) == .exited(0))
    let started = Clock.monotonicNanoseconds()
    #expect(ChildProcess.waitOrKill(pid, timeoutMS: 60_000) == nil)
    // Reaped already: the call must not poll until its deadline and then kill a recycled pid.
    #expect(Clock.monotonicNanoseconds() - started < 30_000_000_000)
    #expect(throws: SyscallError.self) { try ChildProcess.wait(pid) }
  }
}
