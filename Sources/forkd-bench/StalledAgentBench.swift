import ArgumentParser
import CLISupport
import ForkdClient
import Protocol
import Syscalls
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// How other routes answer while agent calls wait on stalled guests (issue 13 item 3): latency
/// of /healthz, list and GET of a busy sandbox with no agent call in flight, then with `--stalled`
/// execs each waiting on a child whose vCPU is paused; then how long DELETE of a busy sandbox
/// takes to answer and to end its exec. Starts its own forkd-supervisor in a scratch directory.
struct StalledAgentBench: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "stalled",
    abstract: "Route latency while agent calls wait on stalled guests, and DELETE of a busy sandbox.")

  @Option(help: "Children whose vCPU is paused, each with one exec waiting on it.") var stalled: Int = 8
  @Option(help: "Requests per route and phase.") var requests: Int = 200
  @Option(help: "Directory for the supervisor's state and run directories.") var workDir: String?

  func run() throws {
    guard (1...60).contains(stalled), requests >= 1 else {
      throw ValidationError("--stalled 1...60, --requests >= 1")
    }
    let scratch = try ScratchDirectory(prefix: "forkd-bench-stalled", base: workDir)
    defer { scratch.remove() }
    let daemon = try LocalDaemon(directory: scratch.path, backend: "auto")
    defer { daemon.stop() }
    _ = try daemon.expect(
      201, "POST", "/v1/snapshots", body: .object(["tag": .string("stall"), "memory_mib": .integer(16)]))
    let spawned = try daemon.expect(
      201, "POST", "/v1/sandboxes", body: .object(["snapshot_tag": .string("stall"), "n": .integer(Int64(stalled))]))
    let ids = (spawned.json?.arrayValue ?? []).compactMap { $0["id"]?.stringValue }
    guard ids.count == stalled else { throw ValidationError("spawn answered \(spawned.text)") }
    for id in ids { _ = try daemon.expect(200, "POST", "/v1/sandboxes/\(id)/ping") }

    let idle = try measure(daemon.api, busy: ids[0])

    for id in ids {
      _ = try ControlClient(path: scratch.path + "/run/sandboxes/\(id)/api.sock").pause()
    }
    let api = daemon.api
    let execs = try ids.map { id in
      try Background {
        try api.request(
          "POST", "/v1/sandboxes/\(id)/exec",
          body: .object(["args": .array([.string("sleep"), .string("3600")]), "timeout_seconds": .integer(3600)]))
      }
    }
    try waitForAgentCalls(daemon.api, stalled)
    let busy = try measure(daemon.api, busy: ids[0])

    // DELETE of each busy sandbox: until the DELETE answers, and until its exec has answered.
    var deleteMS: [Double] = []
    var execEndMS: [Double] = []
    var execStatuses: [Int: Int] = [:]
    for (id, exec) in zip(ids, execs) {
      let t0 = Clock.monotonicNanoseconds()
      _ = try daemon.expect(204, "DELETE", "/v1/sandboxes/\(id)")
      deleteMS.append(ms(Clock.monotonicNanoseconds() - t0))
      let status = (try? exec.wait().status) ?? 0
      execEndMS.append(ms(Clock.monotonicNanoseconds() - t0))
      execStatuses[status, default: 0] += 1
    }

    print("stalled-agent bench: \(stalled) execs waiting on paused children, \(requests) requests per route")
    print("| route | no agent call in flight p50 / p99 ms | \(stalled) stalled execs p50 / p99 ms |")
    print("|---|---|---|")
    for route in idle.keys.sorted() {
      let a = Summary(idle[route] ?? [])
      let b = Summary(busy[route] ?? [])
      print(
        "| \(route) | \(format(a.p50)) / \(Summary.text(a.p99IfEnough)) | \(format(b.p50)) / \(Summary.text(b.p99IfEnough)) |"
      )
    }
    let d = Summary(deleteMS)
    let e = Summary(execEndMS)
    print(
      "DELETE of a busy sandbox: answered p50 \(format(d.p50)) ms (max \(format(d.max))); its exec answered p50 \(format(e.p50)) ms (max \(format(e.max))) after the DELETE was sent, statuses \(execStatuses)"
    )
  }

  /// Latency samples of each route, in milliseconds.
  private func measure(_ api: APIClient, busy: String) throws -> [String: [Double]] {
    let routes = [
      "GET /healthz": "/healthz", "GET /v1/sandboxes": "/v1/sandboxes", "GET busy sandbox": "/v1/sandboxes/\(busy)",
    ]
    var samples: [String: [Double]] = [:]
    for _ in 0..<requests {
      for (name, path) in routes {
        let t0 = Clock.monotonicNanoseconds()
        let response = try api.request("GET", path)
        guard response.status == 200 else { throw ValidationError("GET \(path): \(response.status) \(response.text)") }
        samples[name, default: []].append(ms(Clock.monotonicNanoseconds() - t0))
      }
    }
    return samples
  }

  private func waitForAgentCalls(_ api: APIClient, _ count: Int) throws {
    for _ in 0..<2000 {
      let text = try api.request("GET", "/metrics").text
      let value = text.split(separator: "\n").first { $0.hasPrefix("forkd_agent_calls_in_flight ") }
        .flatMap { Double($0.split(separator: " ").last ?? "") }
      if value == Double(count) { return }
      Clock.sleep(milliseconds: 10)
    }
    throw ValidationError("the supervisor never had \(count) agent calls in flight")
  }
}

/// A call on its own thread; `wait` joins it and returns its result.
final class Background<T: Sendable>: @unchecked Sendable {
  private var result: Result<T, any Error>?
  private var thread: OSThread?

  init(_ body: @escaping @Sendable () throws -> T) throws {
    thread = try OSThread.start(name: "bench-call") { [self] in result = Result { try body() } }
  }

  func wait() throws -> T {
    thread?.join()
    thread = nil
    guard let result else { throw ValidationError("the background call did not finish") }
    return try result.get()
  }
}
