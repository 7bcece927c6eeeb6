import Protocol
import Syscalls
import Testing
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// Issue 8, item 4, small: `forkd bench load` with 100 spawn/delete cycles and 50 concurrent TCP
/// clients against one supervisor. The full run (1000 cycles, 200 clients) is in docs/hardening.md.
@Suite("load: spawn/delete cycles and concurrent clients", .serialized)
struct LoadTests {
  @Test("100 cycles and 50 clients: every answer documented, no descriptor growth, nothing left behind")
  func smallLoad() throws {
    let scratch = try Scratch("load")
    let forkd = try ForkdBinaries.path(of: "forkd")
    let (readEnd, writeEnd) = try FileDescriptor.pipe()
    let log = try FileDescriptor.open(scratch.path + "/stderr", [.writeOnly, .create])
    // The supervisor's own growth bound; ASan's quarantine alone may hold 256 MiB of freed memory.
    let rssBoundMiB = sanitizerRuntimeLinked ? 48 + 320 : 48
    let pid = try ChildProcess.spawn(
      path: forkd,
      arguments: [
        forkd, "bench", "load", "--cycles", "100", "--clients", "50", "--requests-per-client", "8", "--fd-bound", "4",
        "--rss-bound-mib", "\(rssBoundMiB)", "--backend", "uffd", "--work-dir", scratch.path, "--json",
      ], stdoutFD: writeEnd, stderrFD: log)
    writeEnd.close()
    log.close()
    var bytes: [UInt8] = []
    while case let chunk = try readEnd.read(upTo: 65536), !chunk.isEmpty { bytes += chunk }
    readEnd.close()
    let termination = ChildProcess.waitOrKill(pid, timeoutMS: 600_000)
    let text = String(decoding: bytes, as: UTF8.self)
    let result = try JSONValue.parse(bytes, source: "forkd bench load --json")
    #expect(termination == .exited(0), "\(text)\n\(lastLines(of: scratch.path + "/stderr"))")
    #expect(result["passed"] == .bool(true), "\(text)")
    #expect(result["undocumented"] == .object([:]), "\(text)")
    #expect(result["cycle_statuses"] == .object(["201": .integer(100), "204": .integer(100)]), "\(text)")
    let before = try #require(result["fds_before"]?.int64Value)
    let after = try #require(result["fds_after"]?.int64Value)
    #expect(after - before <= 4, "supervisor descriptors \(before) → \(after)")
    let clientTotal = (result["client_statuses"]?.objectValue ?? [:]).values.compactMap(\.int64Value).reduce(0, +)
    #expect(clientTotal >= 50 * 8, "every client request got an answer: \(text)")
    #expect(result["client_statuses"]?["-1"] == nil, "requests without an answer: \(text)")
    #expect(result["leftover_run_dirs"] == .integer(0))
    #expect(processes(mentioning: scratch.path).isEmpty, "processes left: \(processes(mentioning: scratch.path))")
  }
}
