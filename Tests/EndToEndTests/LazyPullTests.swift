import ForkdClient
import Protocol
import Syscalls
import Testing
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// Lazy pulls (docs/fleet.md): children spawn before the memory has arrived; their pagers wait
/// for the chunks they fault on; a chunk that cannot be fetched fails the child that needs it.
/// A proxy in front of the registry holds back the last memory chunk (fill data the agent's
/// ping never touches), so "before the memory arrived" is a fact, not a race.
@Suite("lazy snapshot pull through a real OCI registry", .serialized)
struct LazyPullTests {
  static let parentBody =
    #"{"tag":"base","memory_mib":64,"warmup":[{"op":"fill","pages":4096,"seed":5},{"op":"counter","delta":7}]}"#

  /// Pushes A's `base` and returns the digest of its last memory chunk (the end of the fill data).
  func pushBase(_ a: TestSupervisor, _ registry: TestRegistry, repository: String) throws -> String {
    #expect(try a.unix.request("POST", "/v1/snapshots", body: LazyPullTests.parentBody).status == 201)
    let pushed = try a.unix.request(
      "POST", "/v1/snapshots/base/push", body: #"{"ref":"\#(registry.host)/\#(repository):v1"}"#)
    #expect(pushed.status == 200, "\(pushed.text)")
    let digest = try #require(pushed.json?["digest"]?.stringValue)
    let manifest = try JSONValue.parse(try FileSystem.readFile(registry.blobPath(digest)), source: "manifest")
    let chunks = (manifest["layers"]?.arrayValue ?? []).filter {
      $0["mediaType"]?.stringValue == "application/vnd.forkd.snapshot.memory.chunk.v1"
    }
    let last = chunks.max { a, b in
      (UInt64(a["annotations"]?["dev.forkd.memory.offset"]?.stringValue ?? "") ?? 0)
        < (UInt64(b["annotations"]?["dev.forkd.memory.offset"]?.stringValue ?? "") ?? 0)
    }
    #expect(last?["annotations"]?["dev.forkd.memory.offset"]?.stringValue == String(18 << 20))
    return try #require(last?["digest"]?.stringValue)
  }

  func spawn(_ sup: TestSupervisor, _ tag: String) throws -> String {
    let r = try sup.unix.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"\#(tag)"}"#)
    #expect(r.status == 201, "\(r.text)")
    return try #require(r.json?.arrayValue?.first?["id"]?.stringValue)
  }

  func counter(_ sup: TestSupervisor, _ id: String) throws -> Int64? {
    try sup.unix.request("POST", "/v1/sandboxes/\(id)/ping").json?["counter"]?.int64Value
  }

  /// Waits (bounded) until `condition` holds; false if it never did.
  func eventually(_ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Clock.monotonicNanoseconds() + 60_000_000_000
    while Clock.monotonicNanoseconds() < deadline {
      if try condition() { return true }
      Clock.sleep(milliseconds: 50)
    }
    return try condition()
  }

  @Test("a child of a lazy pull answers before the memory arrived; the fill then completes the copy")
  func spawnBeforeMemory() throws {
    let scratch = try Scratch("lazy-spawn")
    let registry = try TestRegistry(in: scratch)
    let a = try TestSupervisor("lazy-a")
    let b = try TestSupervisor("lazy-b", backend: "auto")
    let last = try pushBase(a, registry, repository: "forkd/lazy")
    let proxy = try HoldingProxy(upstream: registry.port, holding: [last])
    defer { proxy.stop() }

    let pulled = try b.unix.request(
      "POST", "/v1/snapshots/pull", body: #"{"ref":"127.0.0.1:\#(proxy.port)/forkd/lazy:v1","tag":"lz","lazy":true}"#)
    #expect(pulled.status == 201, "\(pulled.text)")
    #expect(pulled.json?["lazy"] == .bool(true))
    let directory = b.scratch.path + "/state/snapshots/lz"
    let child = try spawn(b, "lz")
    #expect(try counter(b, child) == 7, "the child answers with the parent's state")
    // The held chunk cannot have arrived: the snapshot is still being filled.
    #expect(eventually { proxy.holding > 0 })
    #expect(FileSystem.exists(directory + "/lazy.map"))
    let transfers = try b.unix.request("GET", "/v1/transfers").json?.arrayValue ?? []
    #expect(transfers.contains { $0["kind"] == .string("fill") && $0["tag"] == .string("lz") }, "\(transfers)")
    #expect(
      try b.unix.request("POST", "/v1/snapshots/lz/push", body: #"{"ref":"\#(registry.host)/x/y:z"}"#).status == 409)
    // A branch of the child would record the still-sparse lz as its parent: refused, nothing kept.
    let early = try b.unix.request("POST", "/v1/sandboxes/\(child)/branch", body: #"{"tag":"lzb"}"#)
    #expect(early.status == 409, "\(early.text)")
    #expect(early.json?["error"]?.stringValue?.contains("still being filled") == true, "\(early.text)")
    #expect(!FileSystem.exists(b.scratch.path + "/state/snapshots/lzb"))
    #expect(try counter(b, child) == 7, "the refused branch leaves the child running")

    proxy.release()
    #expect(
      eventually { !FileSystem.exists(directory + "/lazy.map") }, "the fill completes once the chunk is let through")
    let branched = try b.unix.request("POST", "/v1/sandboxes/\(child)/branch", body: #"{"tag":"lzb"}"#)
    #expect(branched.status == 201, "once the fill is done the branch is taken: \(branched.text)")
    #expect(!FileSystem.exists(directory + "/lazy-chunks.json"))
    let original = try FileSystem.readFile(a.scratch.path + "/state/snapshots/base/memory.bin", limit: 128 << 20)
    #expect(try FileSystem.readFile(directory + "/memory.bin", limit: 128 << 20) == original)
    // The child, and a new one (now flat: the file backend), read every filled page right.
    let agent = try AgentClient(vsockPath: b.scratch.path + "/run/sandboxes/\(child)/vsock.sock")
    let sum = try agent.checksum(pages: 4096)
    let later = try spawn(b, "lz")
    #expect(try b.unix.request("GET", "/v1/sandboxes/\(later)").json?["backend"] == .string("file"))
    let laterSum = try AgentClient(vsockPath: b.scratch.path + "/run/sandboxes/\(later)/vsock.sock").checksum(
      pages: 4096)
    #expect(sum == laterSum)
  }

  @Test("a registry that fails mid-fault fails the child that needed the chunk; its sibling goes on")
  func registryDiesMidFault() throws {
    let scratch = try Scratch("lazy-fail")
    let registry = try TestRegistry(in: scratch)
    let a = try TestSupervisor("lazyf-a")
    let b = try TestSupervisor("lazyf-b")
    let last = try pushBase(a, registry, repository: "forkd/lazyf")
    let proxy = try HoldingProxy(upstream: registry.port, holding: [last])
    defer { proxy.stop() }
    let pulled = try b.unix.request(
      "POST", "/v1/snapshots/pull", body: #"{"ref":"127.0.0.1:\#(proxy.port)/forkd/lazyf:v1","tag":"lz","lazy":true}"#)
    #expect(pulled.status == 201, "\(pulled.text)")
    let sibling = try spawn(b, "lz")
    #expect(try counter(b, sibling) == 7)
    let victim = try spawn(b, "lz")
    #expect(try counter(b, victim) == 7)

    // The victim reads the held chunk: its pager waits; then the registry's answer fails.
    let agent = try AgentClient(vsockPath: b.scratch.path + "/run/sandboxes/\(victim)/vsock.sock", timeoutMS: 60_000)
    #expect(eventually { proxy.holding > 0 })
    proxy.fail()
    #expect(throws: (any Error).self) { _ = try agent.checksum(pages: 4096) }
    #expect(
      try eventually {
        try b.unix.request("GET", "/v1/sandboxes/\(victim)").json?["state"] != .string("running")
      }, "the child whose chunk could not be fetched stops")
    let info = try b.unix.request("GET", "/v1/sandboxes/\(victim)")
    #expect(info.json?["exit_reason"]?.stringValue?.contains("could not be fetched") == true, "\(info.text)")
    // The sibling never needed the chunk: it keeps answering.
    #expect(try counter(b, sibling) == 7)
    #expect(try b.unix.request("GET", "/healthz").status == 200)
  }
}
