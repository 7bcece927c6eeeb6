import ForkdClient
import Protocol
import Testing

/// POST /v1/sandboxes/:id/eval and the `eval` warm-up step through the daemon on this host's KVM.
/// The test guest has no interpreter: both must be refused clearly, and the daemon keep serving.
/// (The Linux agent's interpreter itself: LinuxAgentEvalTests.)
@Suite("forkd-supervisor: eval", .serialized)
struct EvalRouteTests {
  @Test("eval and exec options are validated, the test guest refuses both, a warm-up eval fails the snapshot by name")
  func evalOnTheTestGuest() throws {
    let sup = try TestSupervisor("eval")
    let api = sup.unix
    let created = try api.request("POST", "/v1/snapshots", body: #"{"tag":"base","memory_mib":32}"#)
    #expect(created.status == 201, "\(created.text)")
    let spawned = try api.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"base"}"#)
    let id = try #require(spawned.json?.arrayValue?.first?["id"]?.stringValue, "\(spawned.text)")

    func expectError(_ r: APIClient.Response, _ status: Int, _ fragment: String) {
      #expect(r.status == status, "\(r.text)")
      #expect(r.json?["error"]?.stringValue?.contains(fragment) == true, "\(r.text)")
    }
    expectError(try api.request("POST", "/v1/sandboxes/\(id)/eval", body: #"{}"#), 400, "code")
    expectError(try api.request("POST", "/v1/sandboxes/\(id)/eval", body: #"{"code":5}"#), 400, "code")
    expectError(
      try api.request("POST", "/v1/sandboxes/\(id)/eval", body: #"{"code":"1","timeout_secs":0}"#), 400,
      "timeout_secs")
    let huge = String(repeating: "x", count: EvalRequest.maxCodeBytes + 1)
    expectError(
      try api.request("POST", "/v1/sandboxes/\(id)/eval", body: JSONValue.object(["code": .string(huge)]).serialized()),
      400, "code")
    expectError(try api.request("POST", "/v1/sandboxes/\(id)/eval", body: #"{"code":"1+1"}"#), 400, "does not support")
    // exec's env, cwd and stdin are checked before the agent is asked.
    let exec = "/v1/sandboxes/\(id)/exec"
    expectError(try api.request("POST", exec, body: #"{"args":["env"],"env":{"A=B":"x"}}"#), 400, "A=B")
    expectError(try api.request("POST", exec, body: #"{"args":["env"],"env":{"A":5}}"#), 400, "A")
    expectError(try api.request("POST", exec, body: #"{"args":["env"],"env":["A=1"]}"#), 400, "env")
    expectError(try api.request("POST", exec, body: #"{"args":["pwd"],"cwd":"tmp"}"#), 400, "cwd")
    expectError(try api.request("POST", exec, body: #"{"args":["cat"],"stdin":7}"#), 400, "stdin")
    // A stdin past the request body limit is refused by the HTTP layer before anything is parsed.
    let bigStdin = String(repeating: "y", count: 1 << 20)
    let tooBig = try api.request(
      "POST", exec, body: JSONValue.object(["args": .array([.string("cat")]), "stdin": .string(bigStdin)]).serialized())
    #expect(tooBig.status == 413, "\(tooBig.text)")
    expectError(
      try api.request("POST", exec, body: #"{"args":["env"],"env":{"A":"1"},"cwd":"/","stdin":"x"}"#), 400,
      "does not support")
    expectError(try api.request("POST", "/v1/sandboxes/ghost/eval", body: #"{"code":"1+1"}"#), 404, "ghost")
    // The child still answers after the refused requests.
    #expect(try api.request("POST", "/v1/sandboxes/\(id)/ping").status == 200)

    let warm = try api.request(
      "POST", "/v1/snapshots", body: #"{"tag":"warm","memory_mib":32,"warmup":[{"op":"eval","code":"import json"}]}"#)
    #expect(warm.status >= 400, "\(warm.text)")
    #expect(warm.json?["error"]?.stringValue?.contains("warm") == true, "\(warm.text)")
    #expect(try api.request("GET", "/v1/snapshots/warm/info").status == 404)
    expectError(
      try api.request("POST", "/v1/snapshots", body: #"{"tag":"w2","warmup":[{"op":"eval"}]}"#), 400, "code")
    #expect(try api.request("DELETE", "/v1/sandboxes/\(id)").status == 204)
  }
}
