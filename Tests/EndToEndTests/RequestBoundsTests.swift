import ForkdClient
import ForkdHTTP
import Logging
import Protocol
import SupervisorCore
import Syscalls
import Testing
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// Fails every launch, as a broken forkd-vmm binary would: requests reach every handler without VMs.
private struct FailingLauncher: ChildLauncher {
  func restore(
    snapshot: String, runDirectory: String, backend: ChildBackend, outputs: Child.OutputFactory?,
    vmmArguments: [String], jail: JailPool?, branchDirectory: String?
  ) throws(ControlError) -> Child {
    throw ControlError(.launch, "test launcher: no VMs")
  }

  func boot(_ mode: VMMProcess.Mode, runDirectory: String, extraArguments: [String]) throws(ControlError)
    -> VMMProcess
  {
    throw ControlError(.launch, "test launcher: no VMs")
  }

  func makeNetwork(for sandboxID: String, config: SupervisorConfig) throws(APIError) -> ChildNetwork {
    throw .internalError("test launcher: no networks")
  }
}

@Suite("Request bounds and the drain", .serialized)
struct RequestBoundsTests {
  func expectError(_ r: APIClient.Response, _ status: Int, _ fragments: [String]) {
    #expect(r.status == status, "\(r.text)")
    for fragment in fragments {
      #expect(r.json?["error"]?.stringValue?.contains(fragment) == true, "\(fragment): \(r.text)")
    }
  }

  @Test("every field outside its bounds is a 400 naming it, at decode, before any process starts")
  func bounds() throws {
    let sup = try TestSupervisor("bounds")
    defer { sup.stop() }
    let api = sup.unix
    let longKey = String(repeating: "k", count: 70_000)
    expectError(
      try api.request(
        "POST", "/v1/snapshots", body: #"{"tag":"k","warmup":[{"op":"kv_set","key":"\#(longKey)","value":"v"}]}"#),
      400, ["warmup[0]", "\"key\"", "65535", "70000"])
    #expect(try api.request("POST", "/v1/snapshots", body: #"{"tag":"base","memory_mib":32}"#).status == 201)
    expectError(
      try api.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"base","memory_limit_mib":17592186044416}"#),
      400, ["memory_limit_mib", "17592186044416"])
    expectError(
      try api.request(
        "POST", "/v1/snapshots", body: #"{"tag":"f","memory_mib":32,"warmup":[{"op":"fill","pages":9000}]}"#),
      400, ["\"pages\"", "8192"])
    expectError(
      try api.request("POST", "/v1/snapshots", body: #"{"tag":"p","kernel":"/boot/vm\u0000linuz"}"#), 400,
      ["\"kernel\""])
    expectError(
      try api.request(
        "POST", "/v1/snapshots", body: #"{"tag":"c","kernel":"/k","cmdline":"\#(String(repeating: "c", count: 3000))"}"#
      ),
      400, ["\"cmdline\"", "2048"])
    let manyArgs = "[" + Array(repeating: "\"a\"", count: 5000).joined(separator: ",") + "]"
    expectError(
      try api.request("POST", "/v1/sandboxes/sb-000000000000/exec", body: #"{"args":\#(manyArgs)}"#), 400,
      ["\"args\"", "4096"])
    #expect(processExists(sup.pid))
    let parents = (try? FileSystem.listDirectory(sup.scratch.path + "/run/parents")) ?? []
    #expect(parents.isEmpty, "no parent was started for a refused request: \(parents)")
  }

  @Test("during the SIGTERM drain, spawn, snapshot creation and branch are refused with 503 saying why")
  func drainRefuses() async throws {
    let scratch = try Scratch("drain")
    let config = SupervisorConfig(stateDirectory: scratch.path + "/state", runDirectory: scratch.path + "/run")
    let supervisor = try Supervisor(
      config: config, logger: Logger(label: "drain-test", factory: { _ in SwiftLogNoOpLogHandler() }),
      launcher: FailingLauncher())
    // Before the drain the same requests get through decoding to the launcher or the registry.
    let before = await supervisor.handle(
      HTTPRequest(method: "POST", uri: "/v1/snapshots", body: Array(#"{"tag":"a","memory_mib":32}"#.utf8)))
    #expect(before.status == 500 && String(decoding: before.body, as: UTF8.self).contains("test launcher"))
    supervisor.shutdown()
    let requests: [(String, String)] = [
      ("/v1/sandboxes", #"{"snapshot_tag":"base"}"#), ("/v1/snapshots", #"{"tag":"b","memory_mib":32}"#),
      ("/v1/sandboxes/sb-000000000000/branch", "{}"),
    ]
    for (uri, body) in requests {
      let response = await supervisor.handle(HTTPRequest(method: "POST", uri: uri, body: Array(body.utf8)))
      let text = String(decoding: response.body, as: UTF8.self)
      #expect(response.status == 503, "\(uri): \(text)")
      #expect(text.contains("shutting down") && text.contains("refused"), "\(uri): \(text)")
    }
    #expect(await supervisor.handle(HTTPRequest(method: "GET", uri: "/healthz?=")).status == 200)
  }
}
