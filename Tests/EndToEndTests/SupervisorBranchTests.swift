import ForkdClient
import Protocol
import Syscalls
import Testing
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// Branching through the API: diff layers, chains, compaction, and the backends that can or
/// cannot restore a chain.
@Suite("forkd-supervisor: diff branches, chains and compaction", .serialized)
struct SupervisorBranchTests {
  @Test("branch mode diff three times, spawn the head (uffd), compact it, restore it on a file-backend supervisor")
  func diffChain() throws {
    let sup = try TestSupervisor("diff")
    let api = sup.unix
    func expectError(_ r: APIClient.Response, _ status: Int, _ fragment: String) {
      #expect(r.status == status, "\(r.text)")
      #expect(r.json?["error"]?.stringValue?.contains(fragment) == true, "\(r.text)")
    }
    func spawnOne(_ tag: String) throws -> String {
      let r = try api.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"\#(tag)"}"#)
      #expect(r.status == 201, "\(r.text)")
      return try #require(r.json?.arrayValue?.first?["id"]?.stringValue)
    }
    func counter(_ id: String) throws -> Int64? {
      try api.request("POST", "/v1/sandboxes/\(id)/ping").json?["counter"]?.int64Value
    }
    #expect(
      try api.request(
        "POST", "/v1/snapshots",
        body: #"{"tag":"base","memory_mib":32,"warmup":[{"op":"fill","pages":64,"seed":9},{"op":"counter","delta":1}]}"#
      ).status == 201)

    // Each generation spawns from the previous tag and branches a diff layer over it (memory
    // mutations between branches are covered by DiffSnapshotTests, through the agent).
    var previous = "base"
    for depth in 1...3 {
      let source = try spawnOne(previous)
      let r = try api.request(
        "POST", "/v1/sandboxes/\(source)/branch", body: #"{"tag":"d\#(depth)","mode":"diff"}"#)
      #expect(r.status == 201, "\(r.text)")
      #expect(r.json?["diff_logical_bytes"] != nil, "\(r.text)")
      #expect((r.json?["diff_logical_bytes"]?.int64Value ?? Int64.max) < 32 << 20, "a layer, not a copy: \(r.text)")
      #expect(r.json?["pause_ms"] != nil)
      let info = try #require(try api.request("GET", "/v1/snapshots/d\(depth)/info").json)
      #expect(info["chain_depth"] == .integer(Int64(depth)))
      #expect(info["memory_layer"] == .string("diff"))
      #expect(info["parent_content_hash"]?.stringValue?.hasPrefix("sha256:") == true)
      #expect(info["parent_tag"] == .string(previous))
      previous = "d\(depth)"
    }
    let head = try spawnOne("d3")
    #expect(try counter(head) == 1, "the chain's head restores the parent's counter")
    expectError(try api.request("DELETE", "/v1/snapshots/d2"), 409, "d3")

    // Compaction: a flat snapshot with the same content; 409 when the target exists.
    let compacted = try api.request("POST", "/v1/snapshots/d3/compact", body: #"{"to":"flat"}"#)
    #expect(compacted.status == 201, "\(compacted.text)")
    #expect(compacted.json?["chain_depth"] == .integer(0))
    #expect(compacted.json?["memory_layer"] == .string("full"))
    expectError(try api.request("POST", "/v1/snapshots/d3/compact", body: #"{"to":"flat"}"#), 409, "exists")
    expectError(try api.request("POST", "/v1/snapshots/d3/compact", body: #"{"to":"../x"}"#), 400, "tag")
    expectError(try api.request("POST", "/v1/snapshots/nope/compact", body: #"{"to":"y"}"#), 404, "nope")
    #expect(try counter(try spawnOne("flat")) == 1)
    #expect(sup.stop() == .exited(0))

    // A file-backend supervisor on the same snapshots: the chain is refused with the way out,
    // the compacted snapshot restores.
    let fileSup = try TestSupervisor("diff", backend: "file", reusing: sup.scratch)
    defer { fileSup.stop() }
    let refused = try fileSup.unix.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"d3"}"#)
    #expect(refused.status == 409, "\(refused.text)")
    #expect(refused.json?["error"]?.stringValue?.contains("compact") == true, "\(refused.text)")
    let flat = try fileSup.unix.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"flat"}"#)
    #expect(flat.status == 201, "\(flat.text)")
    let flatID = try #require(flat.json?.arrayValue?.first?["id"]?.stringValue)
    #expect(try fileSup.unix.request("POST", "/v1/sandboxes/\(flatID)/ping").json?["counter"] == .integer(1))
    let live = try fileSup.unix.request("POST", "/v1/sandboxes/\(flatID)/branch", body: #"{"mode":"live"}"#)
    #expect(live.status == 400 && live.text.contains("uffd"), "\(live.text)")
    let liveFork = try fileSup.unix.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"flat","live_fork":true}"#)
    #expect(liveFork.status == 400 && liveFork.text.contains("live_fork"), "\(liveFork.text)")
  }

  @Test("backend auto: file children for a flat snapshot, a pager for live_fork and for a diff chain")
  func autoBackend() throws {
    let sup = try TestSupervisor("auto", backend: "auto")
    defer { sup.stop() }
    let api = sup.unix
    #expect(
      try api.request(
        "POST", "/v1/snapshots",
        body: #"{"tag":"base","memory_mib":32,"warmup":[{"op":"fill","pages":16,"seed":3},{"op":"counter","delta":4}]}"#
      ).status == 201)
    func spawn(_ body: String) throws -> (id: String, backend: String?, pager: Int64?) {
      let r = try api.request("POST", "/v1/sandboxes", body: body)
      #expect(r.status == 201, "\(r.text)")
      let info = try #require(r.json?.arrayValue?.first)
      return (try #require(info["id"]?.stringValue), info["backend"]?.stringValue, info["pager_pid"]?.int64Value)
    }
    let flat = try spawn(#"{"snapshot_tag":"base"}"#)
    #expect(flat.backend == "file" && flat.pager == nil, "a flat snapshot needs no pager")
    let live = try api.request("POST", "/v1/sandboxes/\(flat.id)/branch", body: #"{"mode":"live"}"#)
    #expect(live.status == 400 && live.text.contains("live_fork: true"), "the way out is named: \(live.text)")

    let forkable = try spawn(#"{"snapshot_tag":"base","live_fork":true}"#)
    #expect(forkable.backend == "uffd" && forkable.pager != nil, "live_fork gets a pager")
    let branched = try api.request(
      "POST", "/v1/sandboxes/\(forkable.id)/branch", body: #"{"tag":"layer","mode":"diff"}"#)
    #expect(branched.status == 201, "\(branched.text)")
    let head = try spawn(#"{"snapshot_tag":"layer"}"#)
    #expect(head.backend == "uffd" && head.pager != nil, "a diff chain is served by a pager")
    for id in [flat.id, forkable.id, head.id] {
      #expect(try api.request("POST", "/v1/sandboxes/\(id)/ping").json?["counter"] == .integer(4))
    }
  }

  @Test(
    "branch mode live: wait true is ready at once; wait false answers while copying; a source killed mid-copy leaves no tag"
  )
  func liveBranches() throws {
    // The copier is slowed down (5 ms per 64 pages) so the no-wait branch is still writing.
    setenv("FORKD_TEST_LIVE_COPY_DELAY_US", "5000", 1)
    defer { unsetenv("FORKD_TEST_LIVE_COPY_DELAY_US") }
    let sup = try TestSupervisor("live")
    let api = sup.unix
    #expect(try api.request("POST", "/v1/snapshots", body: #"{"tag":"base","memory_mib":32}"#).status == 201)
    let spawned = try api.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"base","n":2}"#)
    let ids = try #require(spawned.json?.arrayValue).compactMap { $0["id"]?.stringValue }
    #expect(ids.count == 2)

    let waited = try api.request("POST", "/v1/sandboxes/\(ids[0])/branch", body: #"{"tag":"l1","mode":"live"}"#)
    #expect(waited.status == 201, "\(waited.text)")
    #expect(waited.json?["status"] == .string("ready"))
    #expect(try api.request("GET", "/v1/snapshots/l1/info").status == 200)

    let early = try api.request(
      "POST", "/v1/sandboxes/\(ids[0])/branch", body: #"{"tag":"l2","mode":"live","wait":false}"#)
    #expect(early.status == 201, "\(early.text)")
    #expect(early.json?["status"] == .string("writing"))
    #expect(try api.request("GET", "/v1/snapshots/l2/info").status == 404, "not visible while writing")
    let again = try api.request("POST", "/v1/sandboxes/\(ids[1])/branch", body: #"{"tag":"l2","mode":"live"}"#)
    #expect(again.status == 409, "the tag is in flight: \(again.text)")
    var ready = false
    for _ in 0..<500 where !ready {
      ready = try api.request("GET", "/v1/snapshots/l2/info").status == 200
      if !ready { Clock.sleep(milliseconds: 20) }
    }
    #expect(ready, "the no-wait branch completed")
    let child = try api.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"l2"}"#)
    #expect(child.status == 201, "\(child.text)")

    // The source dies in the middle of a copy: the tag never appears, nothing half-written stays.
    let doomed = try api.request(
      "POST", "/v1/sandboxes/\(ids[1])/branch", body: #"{"tag":"l3","mode":"live","wait":false}"#)
    #expect(doomed.json?["status"] == .string("writing"), "\(doomed.text)")
    let victim = pid_t(try #require(try api.request("GET", "/v1/sandboxes/\(ids[1])").json?["pid"]?.int64Value))
    kill(victim, SIGKILL)
    // The failure is visible: on the source sandbox and in the tag's 404.
    var source: JSONValue?
    for _ in 0..<500 {
      source = try api.request("GET", "/v1/sandboxes/\(ids[1])").json
      if source?["last_branch_status"] == .string("failed") { break }
      Clock.sleep(milliseconds: 20)
    }
    #expect(source?["last_branch_status"] == .string("failed"), "\(String(describing: source))")
    #expect(source?["last_branch_tag"] == .string("l3"))
    #expect(source?["last_branch_error"]?.stringValue?.contains(ids[1]) == true, "\(String(describing: source))")
    let gone = try api.request("GET", "/v1/snapshots/l3/info")
    #expect(gone.status == 404)
    #expect(gone.json?["error"]?.stringValue?.contains("\"failed\"") == true, "\(gone.text)")
    #expect(try api.request("GET", "/v1/snapshots").json?.arrayValue?.contains { $0["tag"] == .string("l3") } == false)
    #expect(sup.stop() == .exited(0))
    let restarted = try TestSupervisor("live", reusing: sup.scratch)
    defer { restarted.stop() }
    let left = try FileSystem.listDirectory(sup.scratch.path + "/state/snapshots").filter { $0.hasPrefix("l3") }
    #expect(left.isEmpty, "staging directories of the dead copy: \(left)")
  }
}

@Suite("forkd-supervisor: Linux parents, bad input", .serialized)
struct LinuxParentAPITests {
  @Test("kernel/rootfs/initrd: missing files are 400 naming the field; a file that is not a kernel fails naming it")
  func badLinuxParents() throws {
    let sup = try TestSupervisor("linux")
    let api = sup.unix
    func expectError(_ body: String, _ status: Int, _ fragments: [String]) throws {
      let r = try api.request("POST", "/v1/snapshots", body: body)
      #expect(r.status == status, "\(body) → \(r.text)")
      for fragment in fragments {
        #expect(r.json?["error"]?.stringValue?.contains(fragment) == true, "\(body) → \(r.text)")
      }
    }
    try expectError(#"{"tag":"l","kernel":"/nonexistent/vmlinuz"}"#, 400, ["kernel", "/nonexistent/vmlinuz"])
    try expectError(#"{"tag":"l","kernel":"/etc/hostname","rootfs":"/nonexistent.ext4"}"#, 400, ["rootfs"])
    try expectError(#"{"tag":"l","kernel":"/etc/hostname","initrd":"/nonexistent.cpio"}"#, 400, ["initrd"])
    try expectError(#"{"tag":"l","kernel":"/etc/hostname","image":"builtin:test-guest"}"#, 400, ["exclusive"])
    try expectError(#"{"tag":"l","rootfs":"/etc/hostname"}"#, 400, ["kernel"])
    try expectError(
      #"{"tag":"l","kernel":"/etc/hostname","warmup":[{"op":"exec","args":[]}]}"#, 400, ["args"])
    // Not a kernel: forkd-vmm refuses it before any KVM work; the API says which file and why.
    try expectError(#"{"tag":"l","kernel":"/etc/hostname"}"#, 500, ["/etc/hostname"])
    #expect(try api.request("GET", "/v1/snapshots/l/info").status == 404, "nothing half-made is visible")
    let parents = (try? FileSystem.listDirectory(sup.scratch.path + "/run/parents")) ?? []
    #expect(parents.isEmpty, "no run directory of the failed parent is left: \(parents)")
    #expect(try api.request("GET", "/healthz").status == 200)
  }
}
