import ForkdClient
import Protocol
import Syscalls
import Testing
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// One fault: an operation through the daemon, and the per-child process stage at which that
/// operation's forkd-vmm or forkd-pager SIGKILLs itself (`FORKD_TEST_KILL_AT`, see KillPoint).
struct StageKill: CustomTestStringConvertible, Sendable {
  enum Operation: String, Sendable {
    case spawnUffd = "spawn (uffd)"
    case spawnFile = "spawn (file)"
    case branchFull = "branch full"
    case branchDiff = "branch diff"
    case branchLive = "branch live"
    /// Answered while the copy still runs (slowed down: 5 ms per 64 pages, 640 ms for 32 MiB).
    case branchLiveNoWait = "branch live wait:false"
    case snapshotCreate = "snapshot create"
  }

  /// What the request and the victim come to.
  enum Outcome: Sendable {
    /// The request fails (500) with a message naming the dead process and its signal; nothing of
    /// the operation is left.
    case fails
    /// The rename (the commit point) happened: the request succeeds, the tag is complete and
    /// restorable, and the process that died is reported (and reaped) afterwards.
    case committed
    /// The request succeeds: the pager policy (restart) replaced the dead pager, the child lives.
    case survives
    /// The request was answered (201, "writing") before the process died: the tag never appears,
    /// its staging directory goes, the victim is reported exited.
    case abandoned
  }

  let operation: Operation
  let role: String
  let stage: String
  let outcome: Outcome

  /// Whether the tag "victim" exists afterwards: a branch or snapshot that completed.
  var leavesTag: Bool {
    outcome != .fails && outcome != .abandoned && ![Operation.spawnUffd, .spawnFile].contains(operation)
  }

  var testDescription: String { "\(operation.rawValue) × \(role):\(stage)" }

  static let all: [StageKill] = {
    var cases: [StageKill] = []
    func add(_ operation: Operation, _ role: String, _ stages: [(String, Outcome)]) {
      cases += stages.map { StageKill(operation: operation, role: role, stage: $0.0, outcome: $0.1) }
    }
    add(.spawnUffd, "vmm", [("started", .fails), ("handshake-sent", .fails), ("acked", .fails), ("restored", .fails)])
    add(
      .spawnUffd, "pager",
      [
        // A pager that dies after its ack leaves the restoring VM asleep in a fault (restoring state
        // touches guest memory before READY, and the VM has no control socket yet to attach a new
        // pager): the spawn fails at once rather than after the 30 s ready timeout.
        ("started", .fails), ("connected", .fails), ("received-uffd", .fails), ("acked", .fails),
        ("first-fault", .fails),
      ])
    add(.spawnFile, "vmm", [("started", .fails), ("restored", .fails)])
    for branch in [Operation.branchFull, .branchDiff] {
      add(
        branch, "vmm",
        [("snapshot-staging", .fails), ("snapshot-before-rename", .fails), ("snapshot-published", .committed)])
    }
    add(
      .branchLive, "vmm",
      [
        ("snapshot-staging", .fails), ("live-copy", .fails), ("snapshot-before-rename", .fails),
        ("snapshot-published", .committed),
      ])
    add(.branchLive, "pager", [("suspended", .survives)])
    add(.branchLiveNoWait, "vmm", [("snapshot-before-rename", .abandoned), ("snapshot-published", .committed)])
    add(.branchLiveNoWait, "pager", [("suspended", .survives)])
    add(
      .snapshotCreate, "vmm",
      [
        ("started", .fails), ("restored", .fails), ("snapshot-staging", .fails), ("snapshot-before-rename", .fails),
        ("snapshot-published", .committed),
      ])
    // FORKD_STAGEKILL_ONLY=<substring of the description> runs only the matching cases (debugging).
    if let only = getenv("FORKD_STAGEKILL_ONLY").map({ String(cString: $0) }) {
      cases = cases.filter { $0.testDescription.contains(only) }
    }
    return cases
  }()
}

/// SIGKILL of forkd-vmm or forkd-pager at every named stage of a spawn (uffd and file backends),
/// a branch (full, diff, live) and a snapshot create, through the real daemon. After each: the
/// request ends with a documented status naming what died, no half-written tag or staging
/// directory is visible, no process, zombie, descriptor, socket file or cgroup is left, a
/// sibling spawned before the fault still answers, the daemon keeps spawning, and a restarted
/// daemon sees the same consistent state.
@Suite("Fault injection: SIGKILL at each stage of the per-child processes", .serialized)
struct StageKillTests {
  static let journalSocket = "/run/systemd/journal/socket"

  /// The daemon's open descriptors and what they point at.
  static func descriptors(_ pid: pid_t) -> [String: String] {
    var result: [String: String] = [:]
    for name in (try? FileSystem.listDirectory("/proc/\(pid)/fd")) ?? [] {
      var buffer = [CChar](repeating: 0, count: 512)
      let n = readlink("/proc/\(pid)/fd/\(name)", &buffer, buffer.count - 1)
      guard n > 0 else { continue }
      result[name] = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
    return result
  }

  /// The daemon's children that have ended but were not reaped.
  static func zombieChildren(_ pid: pid_t) -> [pid_t] {
    var result: [pid_t] = []
    for task in (try? FileSystem.listDirectory("/proc/\(pid)/task")) ?? [] {
      let text = String(
        decoding: (try? FileSystem.readFile("/proc/\(pid)/task/\(task)/children")) ?? [], as: UTF8.self)
      result += text.split(separator: " ").compactMap { pid_t($0) }.filter { isZombieProcess($0) }
    }
    return result
  }

  /// Polls `condition` for up to `timeoutMS`.
  static func eventually(timeoutMS: Int = 10_000, _ condition: () -> Bool) -> Bool {
    let deadline = Clock.monotonicNanoseconds() + UInt64(timeoutMS) * 1_000_000
    while !condition() {
      if Clock.monotonicNanoseconds() >= deadline { return false }
      Clock.sleep(milliseconds: 20)
    }
    return true
  }

  @Test(
    "SIGKILL one per-child process at one stage: documented failure or recovery, nothing leaked",
    arguments: StageKill.all)
  func killAtStage(_ fault: StageKill) throws {
    let scratch = try Scratch("stagekill")
    let armFile = scratch.path + "/kill-at"
    // Every forkd-vmm and forkd-pager the daemon starts inherits this and reads the file at start.
    setenv("FORKD_TEST_KILL_AT", "@" + armFile, 1)
    if fault.operation == .branchLiveNoWait { setenv("FORKD_TEST_LIVE_COPY_DELAY_US", "5000", 1) }
    let started = Result {
      try TestSupervisor("stagekill", backend: fault.operation == .spawnFile ? "file" : "uffd", reusing: scratch)
    }
    unsetenv("FORKD_TEST_KILL_AT")
    unsetenv("FORKD_TEST_LIVE_COPY_DELAY_US")
    let sup = try started.get()
    defer { sup.stop() }
    // Bounded requests: a hung operation fails the test instead of stalling it for 10 minutes.
    func call(_ method: String, _ path: String, _ body: String? = nil) throws -> APIClient.Response {
      try APIClient(endpoint: .unix(sup.socket), timeoutMS: 90_000).request(
        method, path, rawBody: Array((body ?? "").utf8))
    }
    func spawn(_ tag: String, limit: Bool = false) throws -> APIClient.Response {
      try call(
        "POST", "/v1/sandboxes",
        limit ? #"{"snapshot_tag":"\#(tag)","memory_limit_mib":64}"# : #"{"snapshot_tag":"\#(tag)"}"#)
    }
    func id(_ r: APIClient.Response) -> String? { r.json?.arrayValue?.first?["id"]?.stringValue }
    let base =
      #"{"tag":"base","memory_mib":32,"warmup":[{"op":"fill","pages":64,"seed":7},{"op":"counter","delta":3}]}"#
    let created = try call("POST", "/v1/snapshots", base)
    try #require(created.status == 201, "\(created.text)")

    // A sibling spawned before the fault, and one spawn/delete cycle so that every descriptor
    // the daemon opens lazily is open before the count.
    let siblingSpawn = try spawn("base")
    let sibling = try #require(id(siblingSpawn), "\(siblingSpawn.text)")
    // The sibling's agent connection stays open once used: open it before the count.
    #expect(try call("POST", "/v1/sandboxes/\(sibling)/ping").status == 200)
    let warm = try #require(id(try spawn("base")))
    #expect(try call("DELETE", "/v1/sandboxes/\(warm)").status == 204)
    let siblingInfo = try call("GET", "/v1/sandboxes/\(sibling)").json
    let siblingPIDs = Set(["pid", "pager_pid"].compactMap { siblingInfo?[$0]?.int64Value }.map { pid_t($0) })
    let fdsBefore = Self.descriptors(sup.pid)

    // The fault.
    let spec = "\(fault.role):\(fault.stage)"
    func arm() throws { try FileSystem.writeAtomically(armFile, Array(spec.utf8)) }
    func disarm() { _ = try? FileSystem.unlink(armFile) }
    defer { disarm() }
    var victim: String?
    let response: APIClient.Response
    let requestStarted = Clock.monotonicNanoseconds()
    switch fault.operation {
    case .spawnUffd, .spawnFile:
      try arm()
      response = try spawn("base", limit: true)
      disarm()
      victim = id(response)
    case .branchFull, .branchDiff, .branchLive, .branchLiveNoWait:
      try arm()
      let source = try spawn("base", limit: true)
      disarm()
      victim = try #require(id(source), "\(source.text)")
      let body =
        switch fault.operation {
        case .branchFull: #"{"tag":"victim","mode":"full"}"#
        case .branchDiff: #"{"tag":"victim","mode":"diff"}"#
        case .branchLive: #"{"tag":"victim","mode":"live"}"#
        default: #"{"tag":"victim","mode":"live","wait":false}"#
        }
      response = try call("POST", "/v1/sandboxes/\(victim!)/branch", body)
    case .snapshotCreate:
      try arm()
      response = try call("POST", "/v1/snapshots", #"{"tag":"victim","memory_mib":32}"#)
      disarm()
    }

    // The request's answer, without waiting out a timeout.
    let seconds = Double(Clock.monotonicNanoseconds() - requestStarted) / 1e9
    #expect(seconds < 15, "the faulted request took \(seconds) s")
    let process = fault.role == "vmm" ? "forkd-vmm" : "forkd-pager"
    switch fault.outcome {
    case .fails:
      #expect(response.status == 500, "\(response.text)")
      let message = response.json?["error"]?.stringValue ?? ""
      #expect(message.contains(process), "the message names the dead process: \(response.text)")
      #expect(message.contains("signal 9"), "the message says how it died: \(response.text)")
      if fault.role == "vmm" {
        // A pager that ended because its VM died is not the cause.
        #expect(!message.contains("forkd-pager"), "the message blames the pager: \(response.text)")
      }
    case .committed, .survives, .abandoned:
      #expect(response.status == 201, "\(response.text)")
      if fault.operation == .branchLiveNoWait {
        #expect(response.json?["status"] == .string("writing"), "answered while copying: \(response.text)")
      }
    }

    // The process really died at that stage (not earlier, not of something else): its last
    // words are in the child's log (no journal here: the daemon's fallback files), the daemon's
    // log or the answer. (After an early answer the death comes later: allow for it.)
    if !FileSystem.exists(Self.journalSocket) {
      let seam = "forkd-\(fault.role): test seam FORKD_TEST_KILL_AT: SIGKILL at \(fault.stage)"
      let logs = scratch.path + "/state/logs"
      let said = Self.eventually {
        var texts = ((try? FileSystem.listDirectory(logs)) ?? []).map {
          String(decoding: (try? FileSystem.readFile(logs + "/" + $0, limit: 16 << 20)) ?? [], as: UTF8.self)
        }
        texts.append(String(decoding: (try? FileSystem.readFile(sup.logPath, limit: 16 << 20)) ?? [], as: UTF8.self))
        texts.append(response.text)
        return texts.contains { $0.contains(seam) }
      }
      #expect(said, "no log says '\(seam)'")
    }

    // The victim sandbox: alive (recovered), or reported exited and reaped by the monitor.
    if let victim {
      if fault.outcome == .survives {
        #expect(try call("POST", "/v1/sandboxes/\(victim)/ping").status == 200)
        if fault.role == "pager" {
          #expect(
            Self.eventually { (try? call("GET", "/v1/sandboxes/\(victim)"))?.json?["pager_restarts"]?.int64Value == 1 },
            "the pager policy restarted the dead pager")
        }
      } else {
        let exited = Self.eventually {
          (try? call("GET", "/v1/sandboxes/\(victim)"))?.json?["state"]?.stringValue == "exited"
        }
        let info = try call("GET", "/v1/sandboxes/\(victim)")
        #expect(exited, "the dead victim is reported: \(info.text)")
        #expect(info.json?["exit_reason"]?.stringValue?.contains("signal 9") == true, "\(info.text)")
      }
    }

    // The snapshot directory: the tag exists only if it was committed, and is then complete.
    let victimTagExpected = fault.leavesTag
    // (A live copy answered early ends in the background: allow it to settle.)
    var snapshots: [String] = []
    let snapshotsSettled = Self.eventually {
      snapshots = ((try? FileSystem.listDirectory(scratch.path + "/state/snapshots")) ?? []).sorted()
      return snapshots == (victimTagExpected ? ["base", "victim"] : ["base"])
    }
    #expect(snapshotsSettled, "left in snapshots/: \(snapshots)")
    #expect(try call("GET", "/v1/snapshots/victim/info").status == (victimTagExpected ? 200 : 404))
    let listed = try call("GET", "/v1/snapshots").json?.arrayValue?.compactMap { $0["tag"]?.stringValue }.sorted()
    #expect(listed == (victimTagExpected ? ["base", "victim"] : ["base"]), "listed: \(listed ?? [])")

    // Processes, zombies, run directories (their sockets), cgroups.
    let survivorIDs = Set([sibling] + (fault.outcome == .survives ? [victim].compactMap { $0 } : []))
    var survivorPIDs = siblingPIDs
    if fault.outcome == .survives, let victim, let info = try call("GET", "/v1/sandboxes/\(victim)").json {
      for key in ["pid", "pager_pid"] { if let pid = info[key]?.int64Value { survivorPIDs.insert(pid_t(pid)) } }
    }
    let run = scratch.path + "/run"
    var left: Set<pid_t> = []
    let settled = Self.eventually {
      left = Set(processes(mentioning: run + "/")).subtracting(survivorPIDs)
      return left.isEmpty && Self.zombieChildren(sup.pid).isEmpty
    }
    #expect(settled, "processes left: \(left), unreaped: \(Self.zombieChildren(sup.pid))")
    #expect(Set(processes(mentioning: run + "/")).isSuperset(of: siblingPIDs), "the sibling's processes run")
    // The monitor removes a dead child's run directory and cgroup once it sees the child end,
    // which can be just after the failed request answered.
    var runDirectories: Set<String> = []
    _ = Self.eventually {
      runDirectories = Set((try? FileSystem.listDirectory(run + "/sandboxes")) ?? [])
      return runDirectories == survivorIDs
    }
    #expect(runDirectories == survivorIDs, "run directories: \(runDirectories)")
    let parents = (try? FileSystem.listDirectory(run + "/parents")) ?? []
    #expect(parents.isEmpty, "parent run directories left: \(parents)")
    // The survivors' sockets: control, vsock and their current pager's, nothing stale.
    for survivor in survivorIDs {
      let info = try call("GET", "/v1/sandboxes/\(survivor)").json
      var expected: Set<String> = ["api.sock", "vsock.sock"]
      if fault.operation != .spawnFile { expected.insert("pager-\(info?["pager_restarts"]?.int64Value ?? -1).sock") }
      let sockets = Set(
        ((try? FileSystem.listDirectory(run + "/sandboxes/" + survivor)) ?? []).filter { $0.hasSuffix(".sock") })
      #expect(sockets == expected, "sockets of \(survivor): \(sockets)")
    }
    // Sandbox cgroups (the victims were spawned with memory_limit_mib).
    let group = SupervisorLifecycleTests.memoryCgroup(of: sup.pid)
    func cgroupsLeft() -> [String] {
      guard let group else { return [] }
      let unit = group.hasSuffix("/supervisor") ? String(group.dropLast("/supervisor".count)) : group
      return ((try? FileSystem.listDirectory(unit + "/forkd-sandboxes")) ?? []).filter { $0.hasPrefix("sb-") }
    }
    let survivingGroups = fault.outcome == .survives ? [victim].compactMap { $0 } : []
    _ = Self.eventually { cgroupsLeft() == survivingGroups }
    #expect(cgroupsLeft() == survivingGroups, "sandbox cgroups: \(cgroupsLeft())")

    // The sibling answers; the daemon keeps spawning (from the committed tag too).
    #expect(try call("POST", "/v1/sandboxes/\(sibling)/ping").status == 200)
    for tag in victimTagExpected ? ["base", "victim"] : ["base"] {
      let after = try spawn(tag)
      #expect(after.status == 201, "spawn from \(tag) after the fault: \(after.text)")
      if let next = id(after) {
        #expect(try call("POST", "/v1/sandboxes/\(next)/ping").status == 200)
        #expect(try call("DELETE", "/v1/sandboxes/\(next)").status == 204)
      }
    }
    if let victim { #expect(try call("DELETE", "/v1/sandboxes/\(victim)").status == 204) }
    #expect(cgroupsLeft().isEmpty, "cgroups left after the deletes: \(cgroupsLeft())")
    var fdsAfter: [String: String] = [:]
    let fdsSettled = Self.eventually {
      fdsAfter = Self.descriptors(sup.pid)
      return fdsAfter.count <= fdsBefore.count
    }
    #expect(
      fdsSettled,
      "the daemon's descriptors grew from \(fdsBefore.count) to \(fdsAfter.count): \(fdsAfter.filter { fdsBefore[$0.key] != $0.value })"
    )

    // A restarted daemon sees the same state: the committed tags, no sandbox, nothing left over.
    #expect(sup.stop() == .exited(0))
    let second = try TestSupervisor(
      "stagekill", backend: fault.operation == .spawnFile ? "file" : "uffd", reusing: scratch)
    defer { second.stop() }
    let tags = try second.unix.request("GET", "/v1/snapshots").json?.arrayValue?.compactMap { $0["tag"]?.stringValue }
    #expect(tags?.sorted() == (victimTagExpected ? ["base", "victim"] : ["base"]), "after restart: \(tags ?? [])")
    #expect(try second.unix.request("GET", "/v1/sandboxes").json?.arrayValue?.isEmpty == true)
    #expect(((try? FileSystem.listDirectory(run + "/sandboxes")) ?? []).isEmpty)
    #expect(processes(mentioning: run + "/").isEmpty)
    #expect(((try? FileSystem.listDirectory(scratch.path + "/state/sandboxes")) ?? []).isEmpty, "records left")
    let again = try second.unix.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"base"}"#)
    #expect(again.status == 201, "\(again.text)")
  }

  @Test("a misspelt stage is refused at start by both binaries, so a test cannot pass without a kill")
  func unknownStage() throws {
    let scratch = try Scratch("stagekill-typo")
    for (binary, arguments) in [
      ("forkd-pager", ["--socket", scratch.path + "/p.sock"]),
      (
        "forkd-vmm",
        [
          "boot", "--image", "builtin:test-guest", "--api-sock", scratch.path + "/a.sock", "--vsock-sock",
          scratch.path + "/v.sock",
        ]
      ),
    ] {
      for spec in ["vmm:acekd", "pager:first_fault", "pagr:acked", "vmm"] {
        let path = try ForkdBinaries.path(of: binary)
        let log = try FileDescriptor.open(scratch.path + "/out.log", [.writeOnly, .create, .truncate])
        let environment = ChildProcess.currentEnvironment() + ["FORKD_TEST_KILL_AT=\(spec)"]
        let pid = try ChildProcess.spawn(
          path: path, arguments: [path] + arguments, environment: environment, stdoutFD: log, stderrFD: log)
        log.close()
        #expect(ChildProcess.waitOrKill(pid, timeoutMS: 10_000) == .exited(2), "\(binary) with \(spec)")
        let text = String(decoding: try FileSystem.readFile(scratch.path + "/out.log"), as: UTF8.self)
        #expect(text.contains("FORKD_TEST_KILL_AT='\(spec)'"), "\(binary): \(text)")
      }
    }
  }
}
