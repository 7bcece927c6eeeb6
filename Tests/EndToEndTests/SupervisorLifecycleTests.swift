import Protocol
import Syscalls
import Testing
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// What the supervisor leaves on the host: cgroups per child, and nothing at all after a crash
/// once a new supervisor has started on the same state directory.
@Suite("forkd-supervisor: cgroups and restart after a crash", .serialized)
struct SupervisorLifecycleTests {
  /// The memory cgroup of `pid` as a path under /sys/fs/cgroup (v2 or the v1 memory controller).
  static func memoryCgroup(of pid: pid_t) -> String? {
    guard let bytes = try? FileSystem.readFile("/proc/\(pid)/cgroup") else { return nil }
    var unified: String?
    for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") {
      let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
      guard parts.count == 3 else { continue }
      if parts[1].split(separator: ",").contains("memory") { return "/sys/fs/cgroup/memory" + parts[2] }
      if parts[0] == "0" { unified = "/sys/fs/cgroup" + parts[2] }
    }
    return unified
  }

  static func limitFile(_ group: String) -> String {
    FileSystem.exists(group + "/memory.max") ? group + "/memory.max" : group + "/memory.limit_in_bytes"
  }

  @Test("memory_limit_mib: vmm and pager (also a restarted one) in a cgroup below the supervisor's, removed on delete")
  func memoryLimit() throws {
    let sup = try TestSupervisor("cgroup")
    let api = sup.unix
    #expect(try api.request("POST", "/v1/snapshots", body: #"{"tag":"base","memory_mib":32}"#).status == 201)
    let spawned = try api.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"base","memory_limit_mib":48}"#)
    #expect(spawned.status == 201, "\(spawned.text)")
    let entry = try #require(spawned.json?.arrayValue?.first)
    let id = try #require(entry["id"]?.stringValue)
    let vmmPID = try #require(entry["pid"]?.int64Value)
    let pagerPID = try #require(entry["pager_pid"]?.int64Value)
    let vmm = pid_t(vmmPID)
    let pager = pid_t(pagerPID)

    let group = try #require(Self.memoryCgroup(of: vmm))
    #expect(group.hasSuffix("/" + id), "the vmm runs in its own cgroup, not \(group)")
    #expect(Self.memoryCgroup(of: pager) == group)
    // Below the supervisor's own cgroup: the subtree its unit owns (Delegate=yes).
    let own = try #require(Self.memoryCgroup(of: sup.pid))
    let ownUnit = own.hasSuffix("/supervisor") ? String(own.dropLast("/supervisor".count)) : own
    #expect(group.hasPrefix(ownUnit + "/"), "\(group) is not below \(ownUnit)")
    let limit = try FileSystem.readFile(Self.limitFile(group))
    #expect(String(decoding: limit, as: UTF8.self).trimmingSpaces == "\(48 << 20)")

    // The pager policy restarts a killed pager; the new one joins the cgroup.
    kill(pager, SIGKILL)
    var newPager: pid_t?
    for _ in 0..<200 where newPager == nil {
      Clock.sleep(milliseconds: 20)
      let now = try api.request("GET", "/v1/sandboxes/\(id)").json?["pager_pid"]?.int64Value
      if let now, now != Int64(pager) { newPager = pid_t(now) }
    }
    let restarted = try #require(newPager, "the pager was not restarted")
    #expect(Self.memoryCgroup(of: restarted) == group)
    #expect(try api.request("POST", "/v1/sandboxes/\(id)/ping").status == 200)

    #expect(try api.request("DELETE", "/v1/sandboxes/\(id)").status == 204)
    #expect(!FileSystem.exists(group), "the child's cgroup outlived it")
  }

  @Test("SIGKILL the supervisor with children running: the next one ends them and leaves no run dir, record or cgroup")
  func restartAfterCrash() throws {
    let first = try TestSupervisor("crash")
    let api = first.unix
    #expect(try api.request("POST", "/v1/snapshots", body: #"{"tag":"base","memory_mib":32}"#).status == 201)
    let plain = try api.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"base","n":3}"#)
    let limited = try api.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"base","memory_limit_mib":48}"#)
    #expect(plain.status == 201 && limited.status == 201, "\(plain.text) \(limited.text)")
    let entries = (plain.json?.arrayValue ?? []) + (limited.json?.arrayValue ?? [])
    let pids = entries.flatMap { e in ["pid", "pager_pid"].compactMap { e[$0]?.int64Value }.map { pid_t($0) } }
    #expect(pids.count == 8)
    let limitedPID = try #require(limited.json?.arrayValue?.first?["pid"]?.int64Value)
    let group = try #require(Self.memoryCgroup(of: pid_t(limitedPID)))

    kill(first.pid, SIGKILL)
    _ = ChildProcess.waitOrKill(first.pid, timeoutMS: 10_000)
    // Nobody stopped the children: they run on without their supervisor.
    #expect(pids.allSatisfy { kill($0, 0) == 0 })
    let runDir = first.scratch.path + "/run/sandboxes"
    #expect(try !FileSystem.listDirectory(runDir).isEmpty)

    let second = try TestSupervisor("crash", reusing: first.scratch)
    defer { second.stop() }
    // Started means cleaned: every old process is gone (reaped by init once killed).
    var alive = pids
    for _ in 0..<250 where !alive.isEmpty {
      alive = alive.filter { kill($0, 0) == 0 && !isZombieProcess($0) }
      if !alive.isEmpty { Clock.sleep(milliseconds: 20) }
    }
    #expect(alive.isEmpty, "left running: \(alive)")
    #expect(try FileSystem.listDirectory(runDir).isEmpty, "run directories left")
    let records = (try? FileSystem.listDirectory(first.scratch.path + "/state/sandboxes")) ?? []
    #expect(records.isEmpty, "sandbox records left: \(records)")
    #expect(!FileSystem.exists(group), "cgroup left: \(group)")
    #expect(try second.unix.request("GET", "/v1/sandboxes").json?.arrayValue?.isEmpty == true)
    // The snapshots survive a crash, and the new supervisor spawns from them.
    #expect(try second.unix.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"base"}"#).status == 201)
  }
}

extension String {
  fileprivate var trimmingSpaces: String {
    String(self.drop { $0 == " " || $0 == "\n" }.reversed().drop { $0 == " " || $0 == "\n" }.reversed())
  }
}
