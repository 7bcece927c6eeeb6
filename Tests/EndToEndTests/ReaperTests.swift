import Syscalls
import Testing

@testable import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

@Suite("Reaper")
struct ReaperTests {
  @Test("threads waiting on one process at once all get its real exit status; nobody SIGKILLs it")
  func concurrentWaiters() throws {
    let pid = try ChildProcess.spawn(path: "/bin/sh", arguments: ["sh", "-c", "sleep 0.2; exit 3"])
    let reaper = Reaper(pid: pid)
    let results = Terminations()
    let threads = try (0..<4).map { i in
      try OSThread.start(name: "reap\(i)") {
        if i % 2 == 0 {
          results.add(reaper.waitOrKill(timeoutMS: 20_000))
        } else {
          while !reaper.hasExited { Clock.sleep(milliseconds: 1) }
          results.add(reaper.termination)
        }
      }
    }
    threads.forEach { $0.join() }
    #expect(results.all == Array(repeating: ChildProcess.Termination.exited(3), count: 4))
  }
}

private final class Terminations: @unchecked Sendable {
  private let lock = ConditionLock()
  private var values: [ChildProcess.Termination?] = []
  func add(_ value: ChildProcess.Termination?) { lock.withLock { values.append(value) } }
  var all: [ChildProcess.Termination?] { lock.withLock { values } }
}
