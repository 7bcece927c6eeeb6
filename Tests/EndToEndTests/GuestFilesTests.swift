import ForkdClient
import Protocol
import Syscalls
import Testing
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// Files in children, child lifetimes and parents with several vCPUs, through the daemon on
/// this machine's KVM with the test guest (docs/api.md, docs/test-guest.md).
@Suite("forkd-supervisor: files, lifetimes, vCPUs", .serialized)
struct GuestFilesTests {
  func expectError(
    _ r: APIClient.Response, _ status: Int, _ fragment: String, sourceLocation: SourceLocation = #_sourceLocation
  ) {
    #expect(r.status == status, "\(r.text)", sourceLocation: sourceLocation)
    #expect(r.errorMessage?.contains(fragment) == true, "\(r.text)", sourceLocation: sourceLocation)
  }

  func raw(_ sup: TestSupervisor, _ method: String, _ path: String, _ body: [UInt8] = []) throws -> APIClient.Response {
    try APIClient(endpoint: .unix(sup.socket)).request(method, path, rawBody: body)
  }

  func spawn(_ api: HTTPTestClient, _ tag: String, n: Int, extra: String = "") throws -> [String] {
    let r = try api.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"\#(tag)","n":\#(n)\#(extra)}"#)
    #expect(r.status == 201, "\(r.text)")
    return try #require(r.json?.arrayValue).compactMap { $0["id"]?.stringValue }
  }

  @Test("a file PUT into a child comes back byte for byte, siblings never see it, parent files are in every child")
  func filesRoundTrip() throws {
    let sup = try TestSupervisor("files")
    let api = sup.unix
    let created = try api.request(
      "POST", "/v1/snapshots",
      body:
        #"{"tag":"files","memory_mib":32,"warmup":[{"op":"write_file","path":"/etc/motd","content":"from the parent\n","mode":"0640"},{"op":"write_file","path":"/etc/bin","content_b64":"AAEA/w=="}]}"#
    )
    #expect(created.status == 201, "\(created.text)")
    let ids = try spawn(api, "files", n: 2)
    try #require(ids.count == 2)
    let (a, b) = (ids[0], ids[1])

    // Both children see the parent's file.
    for id in ids {
      let motd = try raw(sup, "GET", "/v1/sandboxes/\(id)/files?path=/etc/motd")
      #expect(motd.status == 200)
      #expect(motd.text == "from the parent\n")
    }
    #expect(try raw(sup, "GET", "/v1/sandboxes/\(b)/files?path=/etc/bin").body == [0, 1, 0, 0xFF])
    let root = try api.request("GET", "/v1/sandboxes/\(a)/files?path=/&list=true")
    #expect(
      root.json?["entries"]
        == .array([
          .object(["name": .string("etc"), "type": .string("dir"), "size": .integer(0), "mode": .string("0755")])
        ]),
      "\(root.text)")

    // Binary content across several agent frames: every byte value, runs of NULs.
    var blob: [UInt8] = (0..<5000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
    blob.replaceSubrange(100..<300, with: [UInt8](repeating: 0, count: 200))
    let put = try raw(sup, "PUT", "/v1/sandboxes/\(a)/files?path=/data/blob.bin&mode=0600", blob)
    #expect(put.status == 200, "\(put.text)")
    #expect(put.json?["size"] == .integer(5000))
    let back = try raw(sup, "GET", "/v1/sandboxes/\(a)/files?path=/data/blob.bin")
    #expect(back.status == 200)
    #expect(back.body == blob)
    let listing = try api.request("GET", "/v1/sandboxes/\(a)/files?path=/data&list=true")
    #expect(
      listing.json?["entries"]
        == .array([
          .object([
            "name": .string("blob.bin"), "type": .string("file"), "size": .integer(5000), "mode": .string("0600"),
          ])
        ]), "\(listing.text)")
    let empty = try raw(sup, "PUT", "/v1/sandboxes/\(a)/files?path=/data/empty", [])
    #expect(empty.status == 200, "\(empty.text)")
    #expect(try raw(sup, "GET", "/v1/sandboxes/\(a)/files?path=/data/empty").body == [])

    // The sibling sees neither the new file nor the child's change to the parent's file.
    #expect(try raw(sup, "PUT", "/v1/sandboxes/\(a)/files?path=/etc/motd", Array("changed".utf8)).status == 200)
    #expect(try raw(sup, "GET", "/v1/sandboxes/\(a)/files?path=/etc/motd").text == "changed")
    expectError(try api.request("GET", "/v1/sandboxes/\(b)/files?path=/data/blob.bin"), 404, "no such file")
    expectError(try api.request("GET", "/v1/sandboxes/\(b)/files?path=/data&list=true"), 404, "no such directory")
    #expect(try raw(sup, "GET", "/v1/sandboxes/\(b)/files?path=/etc/motd").text == "from the parent\n")

    // Delete.
    #expect(try api.request("DELETE", "/v1/sandboxes/\(a)/files?path=/data/blob.bin").status == 204)
    expectError(try api.request("GET", "/v1/sandboxes/\(a)/files?path=/data/blob.bin"), 404, "no such file")
    expectError(try api.request("DELETE", "/v1/sandboxes/\(a)/files?path=/data/blob.bin"), 404, "no such file")

    // Bad input: clear errors naming the value; the child keeps serving.
    expectError(try api.request("GET", "/v1/sandboxes/\(a)/files?path=etc/motd"), 400, "etc/motd")
    expectError(try api.request("GET", "/v1/sandboxes/\(a)/files"), 400, "\"path\"")
    expectError(try api.request("GET", "/v1/sandboxes/\(a)/files?path=/etc/../x"), 400, "/etc/../x")
    expectError(try api.request("GET", "/v1/sandboxes/\(a)/files?path=/etc%2"), 400, "percent escape")
    expectError(try api.request("PUT", "/v1/sandboxes/\(a)/files?path=/x&mode=999"), 400, "\"999\"")
    expectError(try api.request("PUT", "/v1/sandboxes/\(a)/files?path=/x&mode=17777"), 400, "mode")
    expectError(try api.request("GET", "/v1/sandboxes/\(a)/files?path=/etc/motd&list=true"), 400, "not a directory")
    expectError(try api.request("GET", "/v1/sandboxes/\(a)/files?path=/etc"), 400, "is a directory")
    expectError(
      try raw(sup, "PUT", "/v1/sandboxes/\(a)/files?path=/big", [UInt8](repeating: 1, count: 70_000)), 413, "65536")
    expectError(try api.request("GET", "/v1/sandboxes/\(a)/files?path=/big"), 404, "no such file")  // no half file
    let longPath = "/" + String(repeating: "p", count: 80)
    expectError(try api.request("PUT", "/v1/sandboxes/\(a)/files?path=\(longPath)"), 400, "64 bytes")
    expectError(try api.request("GET", "/v1/sandboxes/sb-000000000000/files?path=/x"), 404, "unknown sandbox")
    expectError(try api.request("POST", "/v1/sandboxes/\(a)/files?path=/x"), 405, "POST")
    #expect(try api.request("POST", "/v1/sandboxes/\(a)/ping").json?["pong"] == .bool(true))

    // A file PUT into a child before a branch is in the branch's children.
    #expect(try raw(sup, "PUT", "/v1/sandboxes/\(a)/files?path=/from-child", Array("kept".utf8)).status == 200)
    let branch = try api.request("POST", "/v1/sandboxes/\(a)/branch", body: #"{"tag":"files-branch"}"#)
    #expect(branch.status == 201, "\(branch.text)")
    let grandchild = try spawn(api, "files-branch", n: 1)
    #expect(try raw(sup, "GET", "/v1/sandboxes/\(grandchild[0])/files?path=/from-child").text == "kept")
    #expect(try raw(sup, "GET", "/v1/sandboxes/\(grandchild[0])/files?path=/etc/motd").text == "changed")
  }

  @Test("a child spawned with timeout_secs 3 is gone (404, no process) after 5 s; the timeout can be extended")
  func lifetimes() throws {
    let sup = try TestSupervisor("lifetime")
    let api = sup.unix
    #expect(try api.request("POST", "/v1/snapshots", body: #"{"tag":"life","memory_mib":16}"#).status == 201)
    expectError(
      try api.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"life","timeout_secs":0}"#), 400, "timeout_secs")
    let spawned = try api.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"life","n":2,"timeout_secs":3}"#)
    #expect(spawned.status == 201, "\(spawned.text)")
    let children = try #require(spawned.json?.arrayValue)
    let ids = children.compactMap { $0["id"]?.stringValue }
    let pids = children.compactMap { $0["pid"]?.int64Value }.map { pid_t(truncatingIfNeeded: $0) }
    try #require(ids.count == 2 && pids.count == 2)
    let now = Clock.unixSeconds()
    let expires = try #require(children[0]["expires_at_unix"]?.int64Value)
    #expect(expires >= now + 1 && expires <= now + 4)
    #expect(try api.request("GET", "/v1/sandboxes/\(ids[0])").json?["expires_at_unix"] == .integer(expires))

    // The second child's lifetime is extended; bad bodies are refused.
    expectError(try api.request("POST", "/v1/sandboxes/\(ids[1])/timeout", body: "{}"), 400, "timeout_secs")
    expectError(
      try api.request("POST", "/v1/sandboxes/\(ids[1])/timeout", body: #"{"timeout_secs":-1}"#), 400, "timeout_secs")
    expectError(
      try api.request("POST", "/v1/sandboxes/sb-000000000000/timeout", body: #"{"timeout_secs":5}"#), 404, "unknown")
    let extended = try api.request("POST", "/v1/sandboxes/\(ids[1])/timeout", body: #"{"timeout_secs":600}"#)
    #expect(extended.status == 200, "\(extended.text)")
    #expect((extended.json?["expires_at_unix"]?.int64Value ?? 0) >= now + 599)

    // Other routes keep answering while the deadline passes.
    #expect(try api.request("POST", "/v1/sandboxes/\(ids[0])/ping").json?["pong"] == .bool(true))
    Clock.sleep(milliseconds: 5000)
    expectError(try api.request("GET", "/v1/sandboxes/\(ids[0])"), 404, "unknown sandbox")
    #expect(kill(pids[0], 0) == -1 && errno == ESRCH, "forkd-vmm \(pids[0]) of the expired child is still there")
    #expect(try api.request("GET", "/v1/sandboxes/\(ids[1])").status == 200)
    #expect(kill(pids[1], 0) == 0)
    #expect(try api.request("GET", "/v1/sandboxes").json?.arrayValue?.count == 1)
  }

  @Test("children whose deadline passes while the daemon is down are gone once it restarts")
  func expiryAcrossRestart() throws {
    let first = try TestSupervisor("lifetime-crash")
    let api = first.unix
    #expect(try api.request("POST", "/v1/snapshots", body: #"{"tag":"life","memory_mib":16}"#).status == 201)
    let spawned = try api.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"life","n":2,"timeout_secs":2}"#)
    #expect(spawned.status == 201, "\(spawned.text)")
    let pids = (spawned.json?.arrayValue ?? []).compactMap { $0["pid"]?.int64Value }.map {
      pid_t(truncatingIfNeeded: $0)
    }
    try #require(pids.count == 2)
    kill(first.pid, SIGKILL)
    _ = ChildProcess.waitOrKill(first.pid, timeoutMS: 10_000)
    Clock.sleep(milliseconds: 3000)
    // Nobody was there to expire them.
    #expect(pids.allSatisfy { kill($0, 0) == 0 })
    let second = try TestSupervisor("lifetime-crash", reusing: first.scratch)
    defer { second.stop() }
    // A started supervisor has ended every process of its predecessor (init reaps them).
    let alive = pids.filter { kill($0, 0) == 0 && !isZombieProcess($0) }
    #expect(alive.isEmpty, "left running: \(alive)")
    #expect(try second.unix.request("GET", "/v1/sandboxes").json?.arrayValue?.isEmpty == true)
  }

  @Test("vcpus: 2 is saved, reported, and both vCPUs run in a child; bad counts are refused")
  func twoVCPUs() throws {
    let sup = try TestSupervisor("vcpus")
    let api = sup.unix
    for bad in ["0", "9", "\"two\""] {
      expectError(try api.request("POST", "/v1/snapshots", body: #"{"tag":"v","vcpus":\#(bad)}"#), 400, "vcpus")
    }
    let created = try api.request("POST", "/v1/snapshots", body: #"{"tag":"duo","memory_mib":16,"vcpus":2}"#)
    #expect(created.status == 201, "\(created.text)")
    #expect(created.json?["vcpus"] == .integer(2))
    #expect(try api.request("GET", "/v1/snapshots/duo").json?["vcpus"] == .integer(2))
    #expect(try api.request("GET", "/v1/snapshots/duo/info").json?["vcpus"] == .integer(2))
    #expect(
      try api.request("POST", "/v1/snapshots", body: #"{"tag":"solo","memory_mib":16}"#).json?["vcpus"] == .integer(1))

    let ids = try spawn(api, "duo", n: 2)
    try #require(ids.count == 2)
    var runs: [Int64] = []
    for round in 0..<2 {
      let status = try api.request("GET", "/v1/sandboxes/\(ids[0])/vcpus")
      #expect(status.status == 200, "\(status.text)")
      let vcpus = try #require(status.json?["vcpus"]?.arrayValue)
      #expect(vcpus.count == 2)
      #expect(vcpus.allSatisfy { $0["answered"] == .bool(true) }, "\(status.text)")
      let apRuns = vcpus.last?["runs"]?.int64Value ?? 0
      // vCPU 1 answered this request after the restore, so it ran again since the last one.
      if round > 0 { #expect(apRuns > runs[round - 1], "\(status.text)") }
      runs.append(apRuns)
    }
    #expect(try api.request("POST", "/v1/sandboxes/\(ids[1])/ping").json?["pong"] == .bool(true))
    let solo = try spawn(api, "solo", n: 1)
    let one = try api.request("GET", "/v1/sandboxes/\(solo[0])/vcpus")
    #expect(one.json?["vcpus"]?.arrayValue?.count == 1, "\(one.text)")
  }
}
