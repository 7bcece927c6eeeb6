import ForkdClient
import Protocol
import Syscalls
import Testing
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// Issue 8, item 6 (security review as code): tags and ids never leave the state directory,
/// planted symlinks and records are not followed, state and sockets have restrictive modes,
/// exposed TCP listeners need a token. docs/hardening.md lists what each test proves.
@Suite("security: paths, symlinks, modes, exposure", .serialized)
struct SecurityTests {
  /// Tags and ids an attacker might send, as URL segments (percent-encoded where needed).
  static let hostileSegments = [
    "..", "..%2F..%2Fetc", "%2Fetc%2Fpasswd", "a%00b", "%2e%2e", ".hidden", "a.b", "evil%2F..",
    String(repeating: "a", count: 65), "x%20y", "%C3%A9",
  ]
  /// The same as JSON string bodies (raw, unescaped where JSON allows).
  static let hostileTags = [
    "..", "../../etc", "/etc/passwd", "a\\u0000b", ".hidden", "a.b", "evil/..", String(repeating: "a", count: 65), "",
    "x y", "é", "victim/../victim",
  ]

  @Test("no tag or id from a URL or a body escapes the state directory: 400 or 404, nothing outside is touched")
  func traversal() throws {
    let sup = try TestSupervisor("traversal")
    let api = sup.unix
    // A victim beside the state directory, reachable by "../victim" from snapshots/.
    let victim = sup.scratch.path + "/state/victim"
    try FileSystem.makeDirectories(victim)
    try FileSystem.writeAtomically(victim + "/manifest.json", Array("keep".utf8))
    func expectRefused(_ r: APIClient.Response, _ what: String) {
      #expect([400, 404].contains(r.status), "\(what): \(r.status) \(r.text)")
      #expect(r.json?["error"]?.stringValue != nil, "\(what): no error body: \(r.text)")
    }
    for segment in Self.hostileSegments + ["..%2Fvictim", "victim%2F..%2F..%2Fvictim"] {
      expectRefused(try api.request("GET", "/v1/snapshots/\(segment)/info"), "info \(segment)")
      expectRefused(try api.request("DELETE", "/v1/snapshots/\(segment)?force=true"), "delete \(segment)")
      expectRefused(
        try api.request("POST", "/v1/snapshots/\(segment)/compact", body: #"{"to":"ok"}"#), "compact \(segment)")
      expectRefused(try api.request("GET", "/v1/sandboxes/\(segment)"), "get sandbox \(segment)")
      expectRefused(try api.request("DELETE", "/v1/sandboxes/\(segment)"), "delete sandbox \(segment)")
      expectRefused(try api.request("POST", "/v1/sandboxes/\(segment)/branch", body: "{}"), "branch \(segment)")
    }
    for tag in Self.hostileTags {
      var quoted = #""\#(tag.replacingOccurrences(of: "\"", with: "\\\""))""#
      if tag.contains("\\u") { quoted = #""\#(tag)""# }
      let what = "tag \(quoted)"
      for (path, body) in [
        ("/v1/snapshots", #"{"tag":\#(quoted)}"#), ("/v1/sandboxes", #"{"snapshot_tag":\#(quoted)}"#),
        ("/v1/snapshots/base/compact", #"{"to":\#(quoted)}"#),
        ("/v1/sandboxes/sb-000000000000/branch", #"{"tag":\#(quoted)}"#),
      ] {
        let r = try api.request("POST", path, body: body)
        #expect(r.status == 400, "\(path) \(what): \(r.status) \(r.text)")
      }
    }
    #expect(FileSystem.isDirectory(victim), "the victim directory beside snapshots/ was removed")
    #expect(String(decoding: try FileSystem.readFile(victim + "/manifest.json"), as: UTF8.self) == "keep")
    #expect(try FileSystem.listDirectory(sup.scratch.path + "/state/snapshots").isEmpty)
    #expect(try api.request("GET", "/healthz").status == 200, "the daemon keeps serving")
    #expect(sup.stop() == .exited(0))
  }

  @Test("a snapshot directory planted as a symlink is unlinked on delete, never followed")
  func symlinkedSnapshot() throws {
    let sup = try TestSupervisor("symlink")
    let api = sup.unix
    let victim = sup.scratch.path + "/victim"
    try FileSystem.makeDirectories(victim)
    for file in ["manifest.json", "memory.bin", "vmstate.bin", "keep"] {
      try FileSystem.writeAtomically(victim + "/" + file, Array("precious".utf8))
    }
    #expect(symlink(victim, sup.scratch.path + "/state/snapshots/evil") == 0)
    // Not a valid snapshot (its manifest does not parse): 404 for info, 409/404 for a spawn.
    let info = try api.request("GET", "/v1/snapshots/evil/info")
    #expect([404, 409].contains(info.status), "\(info.text)")
    let spawn = try api.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"evil"}"#)
    #expect([404, 409].contains(spawn.status), "\(spawn.text)")
    let delete = try api.request("DELETE", "/v1/snapshots/evil?force=true")
    #expect([204, 404].contains(delete.status), "\(delete.text)")
    // Whatever the answer, nothing behind the link was removed or written.
    for file in ["manifest.json", "memory.bin", "vmstate.bin", "keep"] {
      #expect(
        (try? FileSystem.readFile(victim + "/" + file)).map { String(decoding: $0, as: UTF8.self) } == "precious",
        "\(victim)/\(file) was changed through the planted link")
    }
    #expect(sup.stop() == .exited(0))
  }

  @Test("a planted sandbox record naming a directory and a process outside the run directory is not obeyed")
  func plantedRecord() throws {
    let scratch = try Scratch("record")
    // A bystander process whose command line names the victim directory.
    let victim = scratch.path + "/victim"
    try FileSystem.makeDirectories(victim)
    try FileSystem.writeAtomically(victim + "/keep", Array("precious".utf8))
    let bystander = try ChildProcess.spawn(
      path: "/bin/sh", arguments: ["sh", "-c", "sleep 60", victim], environment: ChildProcess.currentEnvironment())
    defer {
      kill(bystander, SIGKILL)
      _ = ChildProcess.waitOrKill(bystander, timeoutMS: 5000)
    }
    try FileSystem.makeDirectories(scratch.path + "/state/sandboxes")
    let record = JSONValue.object([
      "id": .string("sb-0123456789ab"), "snapshot_tag": .string("base"), "created_at_unix": .integer(1),
      "vmm_pid": .integer(Int64(bystander)), "pager_pid": .integer(0), "run_dir": .string(victim),
    ])
    try FileSystem.writeAtomically(
      scratch.path + "/state/sandboxes/sb-0123456789ab.json", Array(record.serialized().utf8))
    let sup = try TestSupervisor("record", reusing: scratch)
    // Not reaped yet and still running (a killed child would be a zombie that kill(pid, 0) still finds).
    #expect(
      try ChildProcess.wait(bystander, block: false) == nil, "the supervisor killed a process outside its run directory"
    )
    #expect(FileSystem.exists(victim + "/keep"), "the supervisor removed \(victim) named by a planted record")
    #expect(!FileSystem.exists(scratch.path + "/state/sandboxes/sb-0123456789ab.json"), "the record is dropped")
    #expect(sup.stop() == .exited(0))
  }

  @Test("writeAtomically does not follow a symlink planted at its temporary name")
  func atomicWriteTemp() throws {
    let scratch = try Scratch("atomic")
    let target = scratch.path + "/target"
    try FileSystem.writeAtomically(target, Array("precious".utf8))
    let path = scratch.path + "/record.json"
    #expect(symlink(target, path + ".tmp-\(getpid())") == 0)
    try FileSystem.writeAtomically(path, Array("new".utf8))
    #expect(String(decoding: try FileSystem.readFile(target), as: UTF8.self) == "precious")
    #expect(String(decoding: try FileSystem.readFile(path), as: UTF8.self) == "new")
  }

  @Test("state, run directories, sockets and files are created without group/other write or other access")
  func modes() throws {
    let sup = try TestSupervisor("modes")
    let api = sup.unix
    let created = try api.request("POST", "/v1/snapshots", body: #"{"tag":"base","memory_mib":16}"#)
    try #require(created.status == 201, "\(created.text)")
    let spawned = try api.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"base"}"#)
    try #require(spawned.status == 201, "\(spawned.text)")
    let id = try #require(spawned.json?.arrayValue?.first?["id"]?.stringValue)
    let state = sup.scratch.path + "/state"
    let run = sup.scratch.path + "/run"
    var checked: [String: mode_t] = [:]
    func walk(_ path: String) {
      var st = stat()
      guard lstat(path, &st) == 0 else { return }
      checked[path] = st.st_mode & 0o7777
      if st.st_mode & S_IFMT == S_IFDIR {
        for name in (try? FileSystem.listDirectory(path)) ?? [] { walk(path + "/" + name) }
      }
    }
    walk(state)
    walk(run + "/sandboxes")
    walk(sup.socket)
    #expect(checked[state + "/audit.jsonl"] != nil)
    #expect(checked[state + "/snapshots/base/memory.bin"] != nil)
    #expect(checked[run + "/sandboxes/\(id)"] != nil)
    #expect(checked.keys.contains { $0.hasPrefix(run + "/sandboxes/\(id)/") && $0.hasSuffix(".sock") })
    for (path, mode) in checked.sorted(by: { $0.key < $1.key }) {
      // The API socket may be group-writable (the forkd group connects); nothing else is.
      let allowedGroup: mode_t = path == sup.socket ? 0o060 : 0o050
      #expect(mode & 0o007 == 0, "\(path) has mode \(String(mode, radix: 8)): others have access")
      #expect(mode & 0o070 & ~allowedGroup == 0, "\(path) has mode \(String(mode, radix: 8)): group may write")
    }
    #expect(sup.stop() == .exited(0))
  }

  @Test("a TCP listener on a host name that only looks like loopback needs a token too")
  func exposureLookalike() throws {
    for host in ["127.attacker.invalid", "0.0.0.0"] {
      let scratch = try Scratch("exposure2")
      let log = try FileDescriptor.open(scratch.path + "/log", [.writeOnly, .create])
      let listen = "\(host):18998"
      let pid = try ChildProcess.spawn(
        path: try ForkdBinaries.path(of: "forkd-supervisor"),
        arguments: [
          "forkd-supervisor", "--state-dir", scratch.path + "/state", "--run-dir", scratch.path + "/run", "--socket",
          scratch.path + "/s.sock", "--listen-tcp", listen,
        ], environment: ChildProcess.currentEnvironment().filter { !$0.hasPrefix("FORKD_TOKEN=") }, stdoutFD: log,
        stderrFD: log)
      log.close()
      #expect(ChildProcess.waitOrKill(pid, timeoutMS: 10_000) == .exited(1), "\(listen)")
      #expect(
        lastLines(of: scratch.path + "/log").contains("without a token"),
        "\(listen): \(lastLines(of: scratch.path + "/log"))")
    }
  }
}
