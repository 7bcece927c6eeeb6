import ForkdClient
import Protocol
import Syscalls
import Testing
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

#if canImport(Glibc)
  import Glibc
#endif

/// Snapshots through a real registry (Debian's docker-registry on 127.0.0.1), between two
/// supervisors with separate state and run directories (docs/fleet.md).
@Suite("snapshot push/pull through a real OCI registry", .serialized)
struct RegistryTests {
  static let parentBody =
    #"{"tag":"base","memory_mib":32,"warmup":[{"op":"fill","pages":600,"seed":11},{"op":"counter","delta":7}]}"#

  func counter(_ sup: TestSupervisor, _ id: String) throws -> Int64? {
    try sup.unix.request("POST", "/v1/sandboxes/\(id)/ping").json?["counter"]?.int64Value
  }

  func spawnOne(_ sup: TestSupervisor, _ tag: String) throws -> String {
    let r = try sup.unix.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"\#(tag)"}"#)
    #expect(r.status == 201, "\(r.text)")
    return try #require(r.json?.arrayValue?.first?["id"]?.stringValue)
  }

  /// Tags and leftovers in a supervisor's snapshots directory.
  func snapshotEntries(_ sup: TestSupervisor) throws -> [String] {
    try FileSystem.listDirectory(sup.scratch.path + "/state/snapshots").sorted()
  }

  @Test(
    "forkd snapshot push/pull round-trip through the registry; skopeo sees the forkd media type; B's child answers with A's state"
  )
  func roundTrip() throws {
    let scratch = try Scratch("registry-rt")
    let registry = try TestRegistry(in: scratch)
    let a = try TestSupervisor("reg-a")
    let b = try TestSupervisor("reg-b")
    let created = try a.unix.request("POST", "/v1/snapshots", body: RegistryTests.parentBody)
    #expect(created.status == 201, "\(created.text)")
    let ref = "\(registry.host)/forkd/e2e:v1"

    let push = try forkdCLI(["snapshot", "push", "base", ref, "--host", a.socket], scratch: scratch)
    #expect(push.status == .exited(0), "\(push.output)")
    #expect(push.output.contains("pushed base to \(ref)"), "\(push.output)")

    let inspect = try runProgram(
      "/usr/bin/skopeo", ["skopeo", "inspect", "--raw", "--tls-verify=false", "docker://\(ref)"], scratch: scratch)
    #expect(inspect.status == .exited(0), "\(inspect.output)")
    #expect(inspect.output.contains("application/vnd.forkd.snapshot.config.v1+json"), "\(inspect.output)")
    #expect(inspect.output.contains("application/vnd.forkd.snapshot.memory.chunk.v1"), "\(inspect.output)")

    let pull = try forkdCLI(["snapshot", "pull", ref, "--tag", "copy", "--host", b.socket], scratch: scratch)
    #expect(pull.status == .exited(0), "\(pull.output)")
    #expect(try b.unix.request("GET", "/v1/snapshots/copy/info").status == 200)
    let child = try spawnOne(b, "copy")
    #expect(try counter(b, child) == 7, "B's child restores A's parent state")

    // A second push of the same snapshot sends no chunk; pulling an unknown tag is a 404 and
    // leaves nothing.
    let again = try a.unix.request(
      "POST", "/v1/snapshots/base/push", body: #"{"ref":"\#(registry.host)/forkd/e2e:v2"}"#)
    #expect(again.status == 200, "\(again.text)")
    #expect(again.json?["chunks_transferred"] == .integer(0))
    #expect((again.json?["chunks_skipped"]?.int64Value ?? 0) > 0)
    let missing = try b.unix.request(
      "POST", "/v1/snapshots/pull", body: #"{"ref":"\#(registry.host)/forkd/e2e:nope","tag":"x"}"#)
    #expect(missing.status == 404, "\(missing.text)")
    let badRef = try b.unix.request("POST", "/v1/snapshots/pull", body: #"{"ref":"no-slash","tag":"x"}"#)
    #expect(badRef.status == 400, "\(badRef.text)")
    #expect(badRef.json?["error"]?.stringValue?.contains("ref") == true)
    #expect(try snapshotEntries(b) == ["copy"])
  }

  @Test("a tampered blob, a truncated blob and a dropped connection each leave nothing on B and say what failed")
  func failures() throws {
    let scratch = try Scratch("registry-fail")
    let registry = try TestRegistry(in: scratch)
    let a = try TestSupervisor("regf-a")
    let b = try TestSupervisor("regf-b")
    #expect(try a.unix.request("POST", "/v1/snapshots", body: RegistryTests.parentBody).status == 201)
    let pushed = try a.unix.request("POST", "/v1/snapshots/base/push", body: #"{"ref":"\#(registry.host)/forkd/f:v1"}"#)
    #expect(pushed.status == 200, "\(pushed.text)")

    // The dropped connection first, while every blob is intact: the proxy cuts each
    // connection after 1 MiB from the registry, inside the first 2 MiB chunk.
    let proxy = try CuttingProxy(upstream: registry.port, cutAfter: 1 << 20)
    defer { proxy.stop() }
    let dropped = try b.unix.request(
      "POST", "/v1/snapshots/pull", body: #"{"ref":"127.0.0.1:\#(proxy.port)/forkd/f:v1","tag":"x"}"#)
    #expect(dropped.status == 502, "\(dropped.text)")
    #expect(dropped.json?["error"]?.stringValue?.contains("/blobs/sha256:") == true, "\(dropped.text)")
    #expect(proxy.cuts.withLock { $0 } > 0)
    #expect(try snapshotEntries(b).isEmpty)

    // Find the chunk blobs from the manifest the registry holds.
    let manifest = try FileSystem.readFile(
      registry.storage + "/docker/registry/v2/repositories/forkd/f/_manifests/tags/v1/current/link")
    let manifestDigest = String(decoding: manifest, as: UTF8.self)
    let manifestJSON = try JSONValue.parse(try FileSystem.readFile(registry.blobPath(manifestDigest)), source: "m")
    let chunks = (manifestJSON["layers"]?.arrayValue ?? []).filter {
      $0["mediaType"]?.stringValue == "application/vnd.forkd.snapshot.memory.chunk.v1"
    }.compactMap { $0["digest"]?.stringValue }
    #expect(chunks.count >= 2)

    // Tampered: one byte of a chunk flipped in the registry's storage.
    var bytes = try FileSystem.readFile(registry.blobPath(chunks[0]), limit: 8 << 20)
    bytes[4096] ^= 0x5a
    try FileSystem.writeAtomically(registry.blobPath(chunks[0]), bytes)
    let tampered = try b.unix.request(
      "POST", "/v1/snapshots/pull", body: #"{"ref":"\#(registry.host)/forkd/f:v1","tag":"x"}"#)
    #expect(tampered.status == 502, "\(tampered.text)")
    #expect(tampered.json?["error"]?.stringValue?.contains("digest_mismatch") == true, "\(tampered.text)")
    #expect(tampered.json?["error"]?.stringValue?.contains(chunks[0]) == true, "\(tampered.text)")
    #expect(try snapshotEntries(b).isEmpty)
    bytes[4096] ^= 0x5a
    try FileSystem.writeAtomically(registry.blobPath(chunks[0]), bytes)

    // Truncated: the registry holds (and announces) fewer bytes than the descriptor says.
    let original = try FileSystem.readFile(registry.blobPath(chunks[1]), limit: 8 << 20)
    try FileSystem.writeAtomically(registry.blobPath(chunks[1]), Array(original.prefix(original.count / 3)))
    let truncated = try b.unix.request(
      "POST", "/v1/snapshots/pull", body: #"{"ref":"\#(registry.host)/forkd/f:v1","tag":"x"}"#)
    #expect(truncated.status == 502, "\(truncated.text)")
    #expect(truncated.json?["error"]?.stringValue?.contains(chunks[1]) == true, "\(truncated.text)")
    #expect(try snapshotEntries(b).isEmpty)
    try FileSystem.writeAtomically(registry.blobPath(chunks[1]), original)

    // Oversized: the registry holds (and serves) 1 GiB under a chunk's digest; the pull stops at
    // the descriptor's size instead of reading the gigabyte, and names the blob.
    #expect(truncate(registry.blobPath(chunks[1]), 1 << 30) == 0)
    let oversized = try b.unix.request(
      "POST", "/v1/snapshots/pull", body: #"{"ref":"\#(registry.host)/forkd/f:v1","tag":"x"}"#)
    #expect(oversized.status == 502, "\(oversized.text)")
    let oversizedError = oversized.json?["error"]?.stringValue ?? ""
    #expect(oversizedError.contains(chunks[1]) && oversizedError.contains("more than the"), "\(oversized.text)")
    #expect(try snapshotEntries(b).isEmpty)
    try FileSystem.writeAtomically(registry.blobPath(chunks[1]), original)

    // A registry that is gone: a clear connection failure.
    registry.stop()
    let gone = try b.unix.request(
      "POST", "/v1/snapshots/pull", body: #"{"ref":"\#(registry.host)/forkd/f:v1","tag":"x"}"#)
    #expect(gone.status == 502, "\(gone.text)")
    #expect(gone.json?["error"]?.stringValue?.contains("cannot connect") == true, "\(gone.text)")
    #expect(try snapshotEntries(b).isEmpty)
    // B keeps serving.
    #expect(try b.unix.request("GET", "/healthz").status == 200)
  }

  @Test("a diff layer pushed after its base uploads only its own chunks; B pulls the chain and its child answers")
  func diffChainDedupe() throws {
    let scratch = try Scratch("registry-diff")
    let registry = try TestRegistry(in: scratch)
    let a = try TestSupervisor("regd-a")
    let b = try TestSupervisor("regd-b")
    #expect(try a.unix.request("POST", "/v1/snapshots", body: RegistryTests.parentBody).status == 201)
    let base = try a.unix.request("POST", "/v1/snapshots/base/push", body: #"{"ref":"\#(registry.host)/forkd/d:base"}"#)
    #expect(base.status == 200, "\(base.text)")
    let baseChunks = try #require(base.json?["chunks_transferred"]?.int64Value)

    let child = try spawnOne(a, "base")
    let branch = try a.unix.request("POST", "/v1/sandboxes/\(child)/branch", body: #"{"tag":"d1","mode":"diff"}"#)
    #expect(branch.status == 201, "\(branch.text)")
    let diff = try a.unix.request("POST", "/v1/snapshots/d1/push", body: #"{"ref":"\#(registry.host)/forkd/d:d1"}"#)
    #expect(diff.status == 200, "\(diff.text)")
    #expect(diff.json?["layers"]?.arrayValue?.count == 2)
    #expect(diff.json?["chunks_skipped"]?.int64Value == baseChunks, "every base chunk is already there: \(diff.text)")
    let diffChunks = try #require(diff.json?["chunks_transferred"]?.int64Value)
    #expect(diffChunks < baseChunks, "\(diff.text)")
    #expect(diff.json?["layers"]?.arrayValue?.first == base.json?["digest"])

    let pull = try b.unix.request(
      "POST", "/v1/snapshots/pull", body: #"{"ref":"\#(registry.host)/forkd/d:d1","tag":"head"}"#)
    #expect(pull.status == 201, "\(pull.text)")
    #expect(pull.json?["created"] == .array([.string("head-base1"), .string("head")]))
    #expect(try b.unix.request("GET", "/v1/snapshots/head/info").json?["chain_depth"] == .integer(1))
    #expect(try counter(b, try spawnOne(b, "head")) == 7)
  }

  @Test(
    "a registry that asks for HTTP Basic auth: refused without a login, with a wrong one; push and pull with --registry-auth"
  )
  func basicAuth() throws {
    let scratch = try Scratch("registry-auth")
    // bcrypt (cost 4) of "forkd-pass"; distribution's htpasswd accepts only bcrypt.
    let registry = try TestRegistry(
      in: scratch, htpasswd: "forkd:$2b$04$cGIZc6ue4LojRRPCkgft.ebpPoYXxwb7WQQa1w2vlv/CKHvvPONA2\n")
    func authFile(_ name: String, password: String) throws -> String {
      let path = scratch.path + "/\(name).json"
      let encoded = base64("forkd:\(password)")
      try FileSystem.writeAtomically(path, Array(#"{"auths":{"\#(registry.host)":{"auth":"\#(encoded)"}}}"#.utf8))
      return path
    }
    let anonymous = try TestSupervisor("rega-anon")
    let wrong = try TestSupervisor("rega-wrong", extra: ["--registry-auth", try authFile("wrong", password: "nope")])
    let good = try TestSupervisor(
      "rega-good", extra: ["--registry-auth", try authFile("good", password: "forkd-pass")])
    for sup in [anonymous, wrong, good] {
      #expect(try sup.unix.request("POST", "/v1/snapshots", body: RegistryTests.parentBody).status == 201)
    }
    let body = #"{"ref":"\#(registry.host)/forkd/auth:v1"}"#
    let refused = try anonymous.unix.request("POST", "/v1/snapshots/base/push", body: body)
    #expect(refused.status == 502, "\(refused.text)")
    #expect(refused.json?["error"]?.stringValue?.contains("none is configured") == true, "\(refused.text)")
    let denied = try wrong.unix.request("POST", "/v1/snapshots/base/push", body: body)
    #expect(denied.status == 502, "\(denied.text)")
    #expect(denied.json?["error"]?.stringValue?.contains("401 after authenticating as forkd") == true, "\(denied.text)")
    let pushed = try good.unix.request("POST", "/v1/snapshots/base/push", body: body)
    #expect(pushed.status == 200, "\(pushed.text)")
    let pulled = try good.unix.request(
      "POST", "/v1/snapshots/pull", body: #"{"ref":"\#(registry.host)/forkd/auth:v1","tag":"copy"}"#)
    #expect(pulled.status == 201, "\(pulled.text)")
    let pullRefused = try anonymous.unix.request(
      "POST", "/v1/snapshots/pull", body: #"{"ref":"\#(registry.host)/forkd/auth:v1","tag":"copy"}"#)
    #expect(pullRefused.status == 502, "\(pullRefused.text)")
    #expect(try snapshotEntries(anonymous) == ["base"])
  }
}

/// Standard base64 (the `auth` field of a Docker config.json).
func base64(_ text: String) -> String {
  let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
  let bytes = Array(text.utf8)
  var out = ""
  var i = 0
  while i < bytes.count {
    let b0 = Int(bytes[i])
    let b1 = i + 1 < bytes.count ? Int(bytes[i + 1]) : 0
    let b2 = i + 2 < bytes.count ? Int(bytes[i + 2]) : 0
    out.append(alphabet[b0 >> 2])
    out.append(alphabet[((b0 & 3) << 4) | (b1 >> 4)])
    out.append(i + 1 < bytes.count ? alphabet[((b1 & 15) << 2) | (b2 >> 6)] : "=")
    out.append(i + 2 < bytes.count ? alphabet[b2 & 63] : "=")
    i += 3
  }
  return out
}
