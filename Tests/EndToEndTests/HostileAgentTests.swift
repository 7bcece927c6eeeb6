import ForkdClient
import Protocol
import Syscalls
import Testing
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// A guest agent's answers are untrusted: values the API cannot carry (a counter past i64, u64
/// maxima, a lying length) are reported as 502 naming the sandbox and the value, while the
/// daemon keeps its pid and the child stays managed (listed, deletable, its processes ended).
@Suite("Hostile agent through the daemon", .serialized)
struct HostileAgentTests {
  func expectError(_ r: APIClient.Response, _ status: Int, _ fragments: [String]) {
    #expect(r.status == status, "\(r.text)")
    for fragment in fragments {
      #expect(r.json?["error"]?.stringValue?.contains(fragment) == true, "\(fragment): \(r.text)")
    }
  }

  @Test("a ping whose counter is -1 as a u64 (issue 13's repro): 502 naming it, the daemon lives, the child is deleted")
  func negativeCounter() throws {
    let sup = try TestSupervisor("neg-counter")
    defer { sup.stop() }
    let api = sup.unix
    let created = try api.request(
      "POST", "/v1/snapshots", body: #"{"tag":"neg","memory_mib":32,"warmup":[{"op":"counter","delta":-1}]}"#)
    #expect(created.status == 201, "\(created.text)")
    let spawned = try api.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"neg"}"#)
    let child = try #require(spawned.json?.arrayValue?.first)
    let id = try #require(child["id"]?.stringValue)
    let vmm = pid_t(try #require(child["pid"]?.int64Value))

    expectError(try api.request("POST", "/v1/sandboxes/\(id)/ping"), 502, [id, "counter 18446744073709551615"])
    #expect(processExists(sup.pid), "the daemon is alive")
    #expect(try api.request("GET", "/healthz").status == 200)
    #expect(try api.request("GET", "/v1/sandboxes/\(id)").json?["state"] == .string("running"))
    let metrics = String(decoding: try api.request("GET", "/metrics").body, as: UTF8.self)
    #expect(metrics.contains("forkd_agent_replies_rejected_total 1"), "\(metrics)")
    #expect(try api.request("DELETE", "/v1/sandboxes/\(id)").status == 204)
    #expect(!processExists(vmm), "the child's forkd-vmm is not leaked")
    #expect(sup.stop() == .exited(0), "the daemon drains and exits cleanly")
  }

  @Test("an agent that turns liar (attack 11): u64-max ping fields and a 4 GiB exec length are 502s, nothing dies")
  func lyingAgent() throws {
    let sup = try TestSupervisor("liar")
    defer { sup.stop() }
    let api = sup.unix
    #expect(try api.request("POST", "/v1/snapshots", body: #"{"tag":"base","memory_mib":32}"#).status == 201)
    let spawned = try api.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"base","n":2}"#)
    let children = try #require(spawned.json?.arrayValue)
    let ids = children.compactMap { $0["id"]?.stringValue }
    let pids = children.compactMap { $0["pid"]?.int64Value }.map { pid_t($0) }
    #expect(ids.count == 2 && pids.count == 2)
    let liar = ids[0]

    // The guest side of the child turns hostile (over its own vsock connection).
    let agent = try AgentClient(vsockPath: sup.scratch.path + "/run/sandboxes/\(liar)/vsock.sock")
    #expect(try agent.request(.attack(kind: HostileAttack.lyingReplies.rawValue)) == .attacking)
    guard case .pong(let pong) = try agent.request(.ping) else {
      Issue.record("no pong")
      return
    }
    #expect(pong.requestsServed == UInt64.max && pong.counter == 1 << 63 && pong.agentVersion == UInt32.max)

    expectError(
      try api.request("POST", "/v1/sandboxes/\(liar)/ping"), 502, [liar, "requests_served 18446744073709551615"])
    expectError(
      try api.request("POST", "/v1/sandboxes/\(liar)/exec", body: #"{"args":["true"]}"#), 502,
      [liar, "4294967295"])
    // The same sandbox answers again (a new connection after the bad frame), still as a liar.
    expectError(try api.request("POST", "/v1/sandboxes/\(liar)/ping"), 502, ["requests_served"])
    #expect(processExists(sup.pid), "the daemon is alive")
    // The sibling never noticed.
    let sibling = try api.request("POST", "/v1/sandboxes/\(ids[1])/ping")
    #expect(sibling.status == 200 && sibling.json?["counter"] == .integer(0), "\(sibling.text)")
    #expect(try api.request("GET", "/v1/sandboxes").json?.arrayValue?.count == 2)
    for id in ids { #expect(try api.request("DELETE", "/v1/sandboxes/\(id)").status == 204) }
    for pid in pids { #expect(!processExists(pid), "forkd-vmm \(pid) is not leaked") }
    let audit = String(decoding: try FileSystem.readFile(sup.scratch.path + "/state/audit.jsonl"), as: UTF8.self)
    #expect(audit.contains("\"status\":502"))
    #expect(sup.stop() == .exited(0))
  }
}

/// Without a journal each child's output goes to `<state>/logs/<id>.log`: a guest that prints
/// without end fills it only up to the limit.
@Suite("Child log files are bounded", .serialized)
struct ChildLogBoundTests {
  @Test(
    "a guest printing 40 KiB into a 4 KiB log limit: the file stops at the limit with a line saying so",
    .enabled(if: !FileSystem.exists("/run/systemd/journal/socket")))
  func boundedFallbackLog() throws {
    let sup = try TestSupervisor("log-bound", extra: ["--max-child-log-bytes", "4096"])
    defer { sup.stop() }
    let api = sup.unix
    #expect(try api.request("POST", "/v1/snapshots", body: #"{"tag":"base","memory_mib":32}"#).status == 201)
    let spawned = try api.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"base"}"#)
    let id = try #require(spawned.json?.arrayValue?.first?["id"]?.stringValue)
    let agent = try AgentClient(vsockPath: sup.scratch.path + "/run/sandboxes/\(id)/vsock.sock")
    let line = Array(String(repeating: "x", count: 200).utf8)
    for _ in 0..<200 { #expect(try agent.request(.console(line)) == .consoleWritten) }
    let path = sup.scratch.path + "/state/logs/\(id).log"
    var text = ""
    for _ in 0..<500 where !text.contains("log limit") {
      text = String(decoding: (try? FileSystem.readFile(path, limit: 1 << 20)) ?? [], as: UTF8.self)
      if !text.contains("log limit") { Clock.sleep(milliseconds: 20) }
    }
    #expect(text.contains("log limit of 4096 bytes reached"), "\(text.suffix(300))")
    #expect(text.utf8.count <= 4096 + 200, "\(text.utf8.count) bytes")
    #expect(try api.request("POST", "/v1/sandboxes/\(id)/ping").status == 200, "the child runs on")
  }
}
