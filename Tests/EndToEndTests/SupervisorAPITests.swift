import ForkdClient
import Protocol
import Syscalls
import Testing
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

@Suite("forkd-supervisor: the v1 API", .serialized)
struct SupervisorAPITests {
  @Test("every endpoint, good and bad input: documented statuses, {\"error\": …} bodies, the daemon keeps serving")
  func endpoints() throws {
    let sup = try TestSupervisor("api", token: "s3cret")
    let api = sup.unix
    #expect(try api.request("GET", "/healthz").json == .object(["ok": .bool(true)]))
    #expect(try api.request("GET", "/version").json?["api"] == .string("v1"))

    // Snapshots: create from the built-in test guest with warm-up steps.
    let created = try api.request(
      "POST", "/v1/snapshots",
      body:
        #"{"tag":"base","memory_mib":32,"warmup":[{"op":"fill","pages":64,"seed":5},{"op":"kv_set","key":"who","value":"parent"}]}"#
    )
    #expect(created.status == 201, "\(created.text)")
    #expect(created.json?["tag"] == .string("base"))
    func expectError(_ r: APIClient.Response, _ status: Int, _ fragment: String) {
      #expect(r.status == status, "\(r.text)")
      #expect(r.json?["error"]?.stringValue?.contains(fragment) == true, "\(r.text)")
    }
    expectError(try api.request("POST", "/v1/snapshots", body: #"{"tag":"base"}"#), 400, "already exists")
    expectError(try api.request("POST", "/v1/snapshots", body: #"{"tag":"bad tag!"}"#), 400, "tag")
    expectError(try api.request("POST", "/v1/snapshots", body: #"{"tag":"x","memory_mib":"lots"}"#), 400, "memory_mib")
    expectError(try api.request("POST", "/v1/snapshots", body: "{not json"), 400, "request body")
    expectError(
      try api.request("POST", "/v1/snapshots", body: #"{"tag":"img","image":"/nonexistent.elf"}"#), 403,
      "not under an image root")
    let missingImage = sup.scratch.path + "/state/images/nonexistent.elf"
    expectError(
      try api.request("POST", "/v1/snapshots", body: #"{"tag":"img","image":"\#(missingImage)"}"#), 400,
      "does not exist")
    #expect(try api.request("GET", "/v1/snapshots").json?.arrayValue?.count == 1)
    let info = try api.request("GET", "/v1/snapshots/base/info")
    #expect(info.json?["memory_logical_bytes"] == .integer(32 << 20))
    #expect(info.json?["chain_depth"] == .integer(0))
    expectError(try api.request("GET", "/v1/snapshots/nope/info"), 404, "nope")
    expectError(try api.request("GET", "/v1/snapshots/..%2Fetc/info"), 400, "bad tag")

    // Sandboxes.
    expectError(try api.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"base","n":0}"#), 400, "\"n\"")
    expectError(try api.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"base","n":1001}"#), 400, "\"n\"")
    expectError(try api.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"ghost"}"#), 404, "ghost")
    expectError(try api.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":5}"#), 400, "snapshot_tag")
    let spawned = try api.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"base","n":3}"#)
    #expect(spawned.status == 201, "\(spawned.text)")
    let ids = try #require(spawned.json?.arrayValue).compactMap { $0["id"]?.stringValue }
    #expect(ids.count == 3)
    let ping = try api.request("POST", "/v1/sandboxes/\(ids[0])/ping")
    #expect(ping.json?["pong"] == .bool(true), "\(ping.text)")
    #expect(try api.request("GET", "/v1/sandboxes/\(ids[1])").json?["snapshot_tag"] == .string("base"))
    expectError(try api.request("GET", "/v1/sandboxes/sb-000000000000"), 404, "unknown sandbox")
    expectError(try api.request("POST", "/v1/sandboxes/sb-000000000000/ping"), 404, "unknown sandbox")
    expectError(try api.request("POST", "/v1/sandboxes/\(ids[0])/exec", body: #"{"args":[]}"#), 400, "args")
    expectError(
      try api.request("POST", "/v1/sandboxes/\(ids[0])/exec", body: #"{"args":["uname"]}"#), 400, "does not support")

    // Branch (full) from a child, then the branch's children see its state.
    expectError(
      try api.request("POST", "/v1/sandboxes/\(ids[0])/branch", body: #"{"mode":"full","diff":true}"#), 400, "exclusive"
    )
    expectError(try api.request("POST", "/v1/sandboxes/\(ids[0])/branch", body: #"{"tag":"base"}"#), 409, "exists")
    let branch = try api.request("POST", "/v1/sandboxes/\(ids[0])/branch", body: #"{"tag":"b1"}"#)
    #expect(branch.status == 201, "\(branch.text)")
    #expect(branch.json?["branched_from"] == .string(ids[0]))
    #expect(branch.json?["status"] == .string("ready"))
    #expect((branch.json?["pause_ms"]?.doubleValue ?? -1) >= 0)
    #expect(try api.request("GET", "/v1/snapshots/b1/info").json?["ancestors"] == .array([.string("base")]))
    expectError(try api.request("DELETE", "/v1/snapshots/base"), 409, "b1")
    expectError(try api.request("DELETE", "/v1/snapshots/base?cascade=true&force=true"), 400, "exclusive")

    // Metrics carry the documented gauges.
    let metrics = try api.request("GET", "/metrics").text
    #expect(metrics.contains("forkd_snapshots_total 2"))
    #expect(metrics.contains("forkd_sandboxes_active 3"))
    #expect(metrics.contains("forkd_build_info{version=\"\(APIVersion.version)\"} 1"))

    // TCP needs the bearer token (except /healthz).
    #expect(try sup.tcp.request("GET", "/healthz").status == 200)
    expectError(try sup.tcp.request("GET", "/v1/sandboxes"), 401, "token")
    expectError(try sup.tcp.request("GET", "/v1/sandboxes", headers: ["Authorization": "Bearer wrong"]), 401, "token")
    #expect(try sup.tcp.request("GET", "/v1/sandboxes", headers: ["Authorization": "Bearer s3cret"]).status == 200)

    expectError(try api.request("GET", "/v2/nothing"), 404, "no route")
    for id in ids { #expect(try api.request("DELETE", "/v1/sandboxes/\(id)").status == 204) }
    expectError(try api.request("DELETE", "/v1/sandboxes/\(ids[0])"), 404, "unknown sandbox")
    #expect(try api.request("DELETE", "/v1/snapshots/base?cascade=true").status == 204)
    #expect(try api.request("GET", "/v1/snapshots").json?.arrayValue?.isEmpty == true)
    #expect(try api.request("GET", "/healthz").status == 200, "still serving after all the bad input")

    // Every request was audited.
    let audit = String(decoding: try FileSystem.readFile(sup.scratch.path + "/state/audit.jsonl"), as: UTF8.self)
    #expect(audit.split(separator: "\n").count >= 40)
    #expect(audit.contains("\"status\":401"))
    #expect(sup.stop() == .exited(0))
    #expect(processes(mentioning: sup.scratch.path).isEmpty, "nothing of the supervisor or its children is left")
  }

  @Test(
    "50 concurrent spawns while listing and deleting; a pager SIGKILLed under the supervisor is restarted; SIGTERM leaves nothing"
  )
  func concurrentLoad() throws {
    let sup = try TestSupervisor("load")
    let api = sup.unix
    #expect(try api.request("POST", "/v1/snapshots", body: #"{"tag":"base","memory_mib":32}"#).status == 201)
    let results = Results()
    let threads = try (0..<10).map { i in
      try OSThread.start(name: "client\(i)") {
        for _ in 0..<5 {
          do {
            let r = try api.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"base","n":1}"#)
            results.add(r.status)
            _ = try api.request("GET", "/v1/sandboxes")
            if i % 2 == 0, let id = r.json?.arrayValue?.first?["id"]?.stringValue {
              results.add(try api.request("DELETE", "/v1/sandboxes/\(id)").status)
            }
          } catch {
            results.add(-1)
          }
        }
      }
    }
    for t in threads { t.join() }
    #expect(results.statuses.filter { $0 == 201 }.count == 50, "\(results.statuses)")
    #expect(results.statuses.filter { $0 == 204 }.count == 25)
    let list = try #require(try api.request("GET", "/v1/sandboxes").json?.arrayValue)
    #expect(list.count == 25)

    // Kill one child's pager: the supervisor restarts it; the child keeps answering; siblings too.
    let victim = try #require(list.first)
    let id = try #require(victim["id"]?.stringValue)
    let pagerPID = try #require(victim["pager_pid"]?.int64Value)
    kill(pid_t(pagerPID), SIGKILL)
    var restarted = false
    for _ in 0..<100 where !restarted {
      Clock.sleep(milliseconds: 50)
      restarted = (try? api.request("GET", "/v1/sandboxes/\(id)").json?["pager_restarts"]) == .integer(1)
    }
    #expect(restarted)
    #expect(try api.request("POST", "/v1/sandboxes/\(id)/ping").json?["pong"] == .bool(true))
    for entry in list.dropFirst().prefix(5) {
      let sibling = try #require(entry["id"]?.stringValue)
      #expect(try api.request("POST", "/v1/sandboxes/\(sibling)/ping").status == 200)
    }
    #expect(try api.request("GET", "/metrics").text.contains("forkd_pager_restarts_total 1"))

    #expect(sup.stop() == .exited(0))
    #expect(processes(mentioning: sup.scratch.path).isEmpty, "SIGTERM drained every child")
    #expect(try FileSystem.listDirectory(sup.scratch.path + "/run/sandboxes").isEmpty)
  }

  @Test("a TCP listener on a non-loopback address refuses to start without a token")
  func exposure() throws {
    let scratch = try Scratch("exposure")
    let log = try FileDescriptor.open(scratch.path + "/log", [.writeOnly, .create])
    let pid = try ChildProcess.spawn(
      path: try ForkdBinaries.path(of: "forkd-supervisor"),
      arguments: [
        "forkd-supervisor", "--state-dir", scratch.path + "/state", "--run-dir", scratch.path + "/run", "--socket",
        scratch.path + "/s.sock", "--listen-tcp", "0.0.0.0:18999",
      ], environment: ChildProcess.currentEnvironment().filter { !$0.hasPrefix("FORKD_TOKEN=") }, stdoutFD: log,
      stderrFD: log)
    log.close()
    #expect(ChildProcess.waitOrKill(pid, timeoutMS: 10_000) == .exited(1))
    #expect(lastLines(of: scratch.path + "/log").contains("without a token"))
  }
}

final class Results: @unchecked Sendable {
  private let lock = ConditionLock()
  private var items: [Int] = []
  func add(_ s: Int) { lock.withLock { items.append(s) } }
  var statuses: [Int] { lock.withLock { items } }
}
