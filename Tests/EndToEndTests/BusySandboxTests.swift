import ForkdClient
import Protocol
import Syscalls
import Testing
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// An API call made on its own thread, whose answer the test collects later.
final class PendingCall: @unchecked Sendable {
  private let lock = ConditionLock()
  private var answer: Result<APIClient.Response, any Error>?
  private var thread: OSThread?

  init(_ client: APIClient, _ method: String, _ path: String, body: JSONValue? = nil) throws {
    thread = try OSThread.start(name: "pending-call") { [self] in
      let result = Result { try client.request(method, path, body: body) }
      lock.withLock {
        answer = result
        lock.broadcast()
      }
    }
  }

  var isAnswered: Bool { lock.withLock { answer != nil } }

  /// The answer, waiting for it (the client's own timeout bounds the wait).
  func wait() throws -> APIClient.Response {
    thread?.join()
    thread = nil
    return try lock.withLock { answer }!.get()
  }
}

/// Issue 13 item 3: an agent call that takes long (here: an exec to a child whose vCPU is paused,
/// so its agent never answers) holds no lock a read needs and no thread of Swift's cooperative
/// pool. Reads of that sandbox, of others, /healthz and list answer while it waits; DELETE of
/// the busy sandbox ends the call.
@Suite("forkd-supervisor: no route waits on another's work", .serialized)
struct BusySandboxTests {
  /// Client with a bound on every answer, so a regression fails instead of hanging the run.
  static func client(_ sup: TestSupervisor) -> APIClient { APIClient(endpoint: .unix(sup.socket), timeoutMS: 60_000) }

  /// Spawns `count` children and pauses each one's vCPU after a first ping opened its agent
  /// connection: an exec sent to it then waits until it is deleted.
  static func stalledChildren(_ sup: TestSupervisor, count: Int) throws -> [String] {
    let api = client(sup)
    #expect(
      try api.request("POST", "/v1/snapshots", body: .object(["tag": .string("base"), "memory_mib": .integer(32)]))
        .status == 201)
    let spawned = try api.request(
      "POST", "/v1/sandboxes", body: .object(["snapshot_tag": .string("base"), "n": .integer(Int64(count))]))
    let ids = (spawned.json?.arrayValue ?? []).compactMap { $0["id"]?.stringValue }
    try #require(ids.count == count, "\(spawned.text)")
    for id in ids {
      #expect(try api.request("POST", "/v1/sandboxes/\(id)/ping").status == 200)
      _ = try ControlClient(path: sup.scratch.path + "/run/sandboxes/\(id)/api.sock").pause()
    }
    return ids
  }

  static func longExec(_ sup: TestSupervisor, _ id: String) throws -> PendingCall {
    try PendingCall(
      APIClient(endpoint: .unix(sup.socket), timeoutMS: 120_000), "POST", "/v1/sandboxes/\(id)/exec",
      body: .object(["args": .array([.string("sleep"), .string("3600")]), "timeout_seconds": .integer(3600)]))
  }

  /// Waits until the supervisor reports `count` agent calls in flight (the execs reached it).
  static func waitForAgentCalls(_ sup: TestSupervisor, _ count: Int) throws {
    let api = client(sup)
    for _ in 0..<2000 {
      let text = try api.request("GET", "/metrics").text
      let value = text.split(separator: "\n").first { $0.hasPrefix("forkd_agent_calls_in_flight ") }
        .flatMap { Double($0.split(separator: " ").last ?? "") }
      if value == Double(count) { return }
      Clock.sleep(milliseconds: 10)
    }
    Issue.record("the supervisor never had \(count) agent calls in flight")
  }

  @Test(
    "while an exec waits on a stalled guest: healthz, list, GET of it and of another, ping of another answer; DELETE ends the exec"
  )
  func longExecDoesNotBlock() throws {
    let sup = try TestSupervisor("busy")
    let ids = try Self.stalledChildren(sup, count: 2)
    let (busy, other) = (ids[0], ids[1])
    _ = try ControlClient(path: sup.scratch.path + "/run/sandboxes/\(other)/api.sock").resume()
    let exec = try Self.longExec(sup, busy)
    try Self.waitForAgentCalls(sup, 1)

    // Several reads at once, more than the cooperative pool has threads (2 here): with a lock
    // held across the exec, each would park one of them and /healthz would stall behind them.
    let reads = try (0..<4).map { _ in try PendingCall(Self.client(sup), "GET", "/v1/sandboxes/\(busy)") }
    let api = Self.client(sup)
    #expect(try api.request("GET", "/healthz").status == 200)
    let list = try api.request("GET", "/v1/sandboxes")
    #expect(list.status == 200)
    #expect(Set((list.json?.arrayValue ?? []).compactMap { $0["id"]?.stringValue }) == Set(ids))
    #expect(try api.request("GET", "/v1/sandboxes/\(other)").status == 200)
    #expect(try api.request("POST", "/v1/sandboxes/\(other)/ping").status == 200)
    for read in reads {
      let r = try read.wait()
      #expect(r.status == 200 && r.json?["state"]?.stringValue == "running", "\(r.text)")
    }
    #expect(!exec.isAnswered, "the exec is still waiting on its stalled guest")

    // DELETE of the busy sandbox answers and ends the exec with a clear error.
    #expect(try api.request("DELETE", "/v1/sandboxes/\(busy)").status == 204)
    let ended = try exec.wait()
    #expect(ended.status == 409, "\(ended.text)")
    #expect(ended.json?["error"]?.stringValue?.contains("deleted") == true, "\(ended.text)")
    #expect(try api.request("GET", "/v1/sandboxes/\(busy)").status == 404)
    #expect(try api.request("DELETE", "/v1/sandboxes/\(other)").status == 204)
    #expect(sup.stop() == .exited(0))
  }

  @Test("four long execs at once (twice the cooperative pool) starve neither /healthz nor list; deleting ends them all")
  func concurrentLongCalls() throws {
    let sup = try TestSupervisor("busy-many")
    let ids = try Self.stalledChildren(sup, count: 4)
    let execs = try ids.map { try Self.longExec(sup, $0) }
    try Self.waitForAgentCalls(sup, ids.count)
    let api = Self.client(sup)
    for _ in 0..<3 {
      #expect(try api.request("GET", "/healthz").status == 200)
      #expect(try api.request("GET", "/v1/sandboxes").json?.arrayValue?.count == ids.count)
    }
    #expect(try api.request("GET", "/v1/snapshots").status == 200)
    #expect(execs.allSatisfy { !$0.isAnswered })
    let deletes = try ids.map { try PendingCall(Self.client(sup), "DELETE", "/v1/sandboxes/\($0)") }
    for delete in deletes { #expect(try delete.wait().status == 204) }
    for exec in execs { #expect(try exec.wait().status == 409) }
    #expect(try api.request("GET", "/v1/sandboxes").json?.arrayValue?.isEmpty == true)
    #expect(sup.stop() == .exited(0))
  }
}
