import ForkdClient
import Protocol
import Synchronization
import Syscalls
import Testing
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// Namespaces whose names start with "forkd-sb-" (what the supervisor makes).
func forkdNamespaces() -> Set<String> {
  let listed = runCommand(["ip", "netns", "list"]).output
  return Set(
    listed.split(separator: "\n").compactMap { line in
      let name = String(line.split(separator: " ").first ?? "")
      return name.hasPrefix("forkd-sb-") ? name : nil
    })
}

/// Runs `body` on a thread inside the namespace `name`.
func inNamespace<T: Sendable>(_ name: String, _ body: @escaping @Sendable () throws -> T) throws -> T {
  let path = "/run/netns/\(name)"
  let result = Mutex<Result<T, any Error>?>(nil)
  let thread = try OSThread.start(name: "netns") {
    do {
      try NetworkNamespace.enter(path: path)
      let value = try body()
      result.withLock { $0 = .success(value) }
    } catch {
      result.withLock { $0 = .failure(error) }
    }
  }
  thread.join()
  return try result.withLock { $0! }.get()
}

@Suite("forkd-supervisor: per_child_netns", .serialized)
struct SupervisorNetworkTests {
  @Test(
    "three children spawned with per_child_netns answer ping and UDP echo in their namespaces; a fourth without has no netns; DELETE removes every namespace"
  )
  func perChildNamespaces() throws {
    let sup = try TestSupervisor("netns", backend: "file")
    let api = sup.unix
    let created = try api.request("POST", "/v1/snapshots", body: #"{"tag":"base","memory_mib":32}"#)
    #expect(created.status == 201, "\(created.text)")

    let spawned = try api.request(
      "POST", "/v1/sandboxes", body: #"{"snapshot_tag":"base","n":3,"per_child_netns":true}"#)
    #expect(spawned.status == 201, "\(spawned.text)")
    let children = try #require(spawned.json?.arrayValue)
    #expect(children.count == 3)
    var namespaces: [String] = []
    for child in children {
      let id = try #require(child["id"]?.stringValue)
      let netns = try #require(child["netns"]?.stringValue, "\(child)")
      #expect(netns == "forkd-\(id)")
      #expect(child["guest_addr"] == .string(GuestNet.address))
      #expect(try api.request("GET", "/v1/sandboxes/\(id)").json?["netns"] == .string(netns))
      let ping = runCommand(["ip", "netns", "exec", netns, "ping", "-c1", "-W5", GuestNet.address])
      #expect(ping.status == 0, "\(id): \(ping.output)")
      let payload = Array("hello \(id)".utf8)
      #expect(try inNamespace(netns) { try udpEcho(payload) } == payload)
      namespaces.append(netns)
    }
    #expect(forkdNamespaces().isSuperset(of: namespaces))

    let plain = try api.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"base"}"#)
    #expect(plain.status == 201, "\(plain.text)")
    let plainChild = try #require(plain.json?.arrayValue?.first)
    #expect(plainChild["netns"] == nil && plainChild["guest_addr"] == nil, "\(plainChild)")
    let plainID = try #require(plainChild["id"]?.stringValue)
    #expect(try api.request("POST", "/v1/sandboxes/\(plainID)/ping").json?["pong"] == .bool(true))

    for child in children {
      let id = try #require(child["id"]?.stringValue)
      #expect(try api.request("DELETE", "/v1/sandboxes/\(id)").status == 204)
    }
    // Only this supervisor's namespaces are checked: other tests may make their own meanwhile.
    #expect(forkdNamespaces().isDisjoint(with: namespaces), "every namespace of a deleted child is gone")
    #expect(sup.stop() == .exited(0))
  }

  @Test("a spawn whose children die before they are ready removes the namespaces it made")
  func failedSpawnLeavesNothing() throws {
    let scratch = try Scratch("sup-netns-fail")
    let armFile = scratch.path + "/kill-at"
    let before = forkdNamespaces()
    let sup = try TestSupervisor(
      "netns-fail", backend: "file", reusing: scratch, environment: ["FORKD_TEST_KILL_AT=@" + armFile])
    #expect(try sup.unix.request("POST", "/v1/snapshots", body: #"{"tag":"base","memory_mib":32}"#).status == 201)
    // Every forkd-vmm started from now on SIGKILLs itself with its vCPUs running, before READY.
    try FileSystem.writeAtomically(armFile, Array("vmm:restored".utf8))
    let spawned = try sup.unix.request(
      "POST", "/v1/sandboxes", body: #"{"snapshot_tag":"base","n":3,"per_child_netns":true}"#)
    #expect(spawned.status == 500, "\(spawned.text)")
    // Only this suite (serialized) makes forkd-sb-* namespaces.
    #expect(forkdNamespaces() == before, "the failed spawn's namespaces are gone")
    let markers = (try? FileSystem.listDirectory(scratch.path + "/run/netns")) ?? []
    #expect(markers.isEmpty, "\(markers)")
    try FileSystem.writeAtomically(armFile, [])
    #expect(sup.stop() == .exited(0))
  }

  @Test("a supervisor killed with children in namespaces removes them when it starts again on the same run directory")
  func crashLeavesNothing() throws {
    let first = try TestSupervisor("netns-crash", backend: "file")
    #expect(try first.unix.request("POST", "/v1/snapshots", body: #"{"tag":"base","memory_mib":32}"#).status == 201)
    let spawned = try first.unix.request(
      "POST", "/v1/sandboxes", body: #"{"snapshot_tag":"base","n":2,"per_child_netns":true}"#)
    #expect(spawned.status == 201, "\(spawned.text)")
    let made = Set((spawned.json?.arrayValue ?? []).compactMap { $0["netns"]?.stringValue })
    #expect(made.count == 2 && forkdNamespaces().isSuperset(of: made))
    kill(first.pid, SIGKILL)
    _ = ChildProcess.waitOrKill(first.pid, timeoutMS: 10_000)
    let second = try TestSupervisor("netns-crash", backend: "file", reusing: first.scratch)
    #expect(forkdNamespaces().isDisjoint(with: made), "the restarted supervisor removed what the first one made")
    #expect(second.stop() == .exited(0))
  }
}
