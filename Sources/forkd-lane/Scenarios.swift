import Protocol
import Syscalls
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// Runs a program through the agent and returns its result; a non-zero exit or a timeout is a
/// failure naming the command and its output.
@discardableResult
func run(_ agent: AgentClient, _ args: [String], timeoutSeconds: UInt32 = 30) throws -> AgentExecResult {
  let response = try agent.request(
    .exec(args: args, timeoutSeconds: timeoutSeconds), timeoutMS: Int(timeoutSeconds) * 1000 + 30_000)
  guard case .exec(let result) = response else { throw LaneFailure("exec \(args): unexpected answer \(response)") }
  guard result.exitCode == 0, !result.timedOut else {
    throw LaneFailure(
      "exec \(args): exit \(result.exitCode)\(result.timedOut ? " (timed out)" : ""), stdout '\(text(result.stdout))', stderr '\(text(result.stderr))'"
    )
  }
  return result
}

func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

func expectEqual<T: Equatable>(_ what: String, _ seen: T, _ expected: T) throws {
  guard seen == expected else {
    throw LaneFailure("\(what): got \(String(reflecting: seen)), expected \(String(reflecting: expected))")
  }
}

/// The plumbing check that needs no Linux guest: the built-in test guest booted on this KVM,
/// snapshotted, and restored as children that each see the parent's state and keep their own.
func testGuestScenario(work: String, children: Int, report: Report) throws {
  let parent = try report.step("test-guest: boot") {
    try VMMProcess.launch(
      .boot(image: "builtin:test-guest", memoryMiB: 64, vcpus: 1), runDirectory: work + "/tg-parent")
  }
  defer { parent.stop() }
  let bootStart = parent.ready.spawnedAt
  let agent = try report.step("test-guest: agent ping") {
    let agent = try parent.agent()
    try expectEqual("agent kind", try agent.ping().kind, AgentPong.testGuestKind)
    return agent
  }
  report.metric("tg_boot_to_ping_ms", "\(milliseconds(since: bootStart))")
  try report.step("test-guest: state in the parent") {
    try agent.set("lane", "parent")
    try expectEqual("counter", try agent.counter(add: 100), 100)
  }
  let snapshot = work + "/tg-snap"
  try report.step("test-guest: snapshot") {
    let start = Clock.monotonicNanoseconds()
    try parent.control().snapshot(directory: snapshot, parentTag: nil)
    report.metric("tg_snapshot_ms", "\(milliseconds(since: start))")
  }
  parent.stop()
  var kids: [Child] = []
  defer { kids.forEach { $0.stop() } }
  for i in 0..<children {
    try report.step("test-guest: child \(i) restored, sees the parent's state, keeps its own") {
      let start = Clock.monotonicNanoseconds()
      let child = try Child.restore(snapshot: snapshot, runDirectory: work + "/tg-child-\(i)", backend: .file)
      kids.append(child)
      let agent = try child.vmm.agent()
      try expectEqual("kv lane", try agent.get("lane"), "parent")
      report.metric("tg_child\(i)_restore_to_answer_ms", "\(milliseconds(since: start))")
      try expectEqual("counter", try agent.counter(add: Int64(i + 1)), 101 + UInt64(i))
    }
  }
}

/// Whether the scenario also restores a child with the uffd backend, and whether its failure
/// fails the lane.
enum UffdCheck { case off, optional, required }

struct LinuxSettings {
  var parent: LinuxParent.Settings
  var expectedKernel: String
  var children: Int
  var uffd: UffdCheck
  /// Also restore a child with the shmem backend (MINOR faults on a shared copy), reported only.
  var shmem: Bool = false
  var bootTimeoutMS: Int
}

/// The real-Linux scenario: an unmodified Debian kernel with the forkd agent, forked.
func linuxScenario(_ s: LinuxSettings, work: String, report: Report) throws {
  let parent = try report.step("linux: forkd-vmm boot --kernel (READY)") {
    try LinuxParent(s.parent, runDirectory: work + "/linux-parent", timeoutMS: 180_000)
  }
  defer { parent.stop() }
  let agent = try report.step("linux: boot → agent ready") {
    let (agent, pong) = try parent.waitForAgent(timeoutMS: s.bootTimeoutMS)
    try expectEqual("agent kind", pong.kind, AgentPong.linuxKind)
    return agent
  }
  let bootToAgent = milliseconds(since: parent.spawnedAt)
  report.metric("boot_to_agent_ms", "\(bootToAgent)")
  report.note("forkd-vmm: \(parent.readyLine)")
  if let uptime = try? run(agent, ["cat", "/proc/uptime"]) {
    let seconds = text(uptime.stdout).split(separator: " ").first.map(String.init) ?? "?"
    report.metric("guest_uptime_at_agent_s", seconds)
  }
  try report.step("linux: exec uname -r is the Debian kernel \(s.expectedKernel)") {
    try expectEqual("uname -r", text(try run(agent, ["uname", "-r"]).stdout), s.expectedKernel + "\n")
  }
  var directory = "/tmp"
  if s.parent.disk != nil {
    try report.step("linux: the virtio-blk base disk is mounted and readable") {
      try expectEqual(
        "/mnt/disk/etc/forkd-base", text(try run(agent, ["cat", "/mnt/disk/etc/forkd-base"]).stdout),
        "forkd base image 1\n")
    }
    directory = "/mnt/disk"
  }
  let file = directory + "/lane-file"
  try report.step("linux: write \(file) in the parent") {
    try run(agent, ["sh", "-c", "echo parent > \(file) && sync"])
  }
  let snapshot = work + "/linux-snap"
  try report.step("linux: snapshot") {
    let start = Clock.monotonicNanoseconds()
    // Generous: a debug forkd-vmm hashes every data page of memory.bin (SHA-256, the layer's
    // content digest) before answering, ~2 min for a 256 MiB Linux guest under TCG.
    try parent.control().snapshot(directory: snapshot, parentTag: nil, timeoutMS: 400_000)
    report.metric("snapshot_ms", "\(milliseconds(since: start))")
  }
  parent.stop()

  var kids: [(Child, AgentClient)] = []
  defer { kids.forEach { $0.0.stop() } }
  var restoreTimes: [UInt64] = []
  /// Restores child `i`, connects to its agent and checks it sees the parent's file.
  func restoreChild(_ i: Int, _ name: String, _ backend: ChildBackend, agentTimeoutMS: Int = 60_000) throws {
    let start = Clock.monotonicNanoseconds()
    let child = try Child.restore(
      snapshot: snapshot, runDirectory: work + "/linux-child-\(i)", backend: backend, timeoutMS: 60_000)
    do {
      let (agent, _) = try connectAgent(
        child.vmm.vsockSocket, timeoutMS: agentTimeoutMS, isAlive: { !child.vmm.hasExited },
        context: { childDiagnostics(child) })
      kids.append((child, agent))
      try expectEqual("\(file) in child \(i)", text(try run(agent, ["cat", file]).stdout), "parent\n")
    } catch {
      throw LaneFailure("\(error) [\(childDiagnostics(child))]")
    }
    let elapsed = milliseconds(since: start)
    restoreTimes.append(elapsed)
    report.metric("child\(i)_\(name)_restore_to_exec_ms", "\(elapsed)")
  }
  for i in 0..<s.children {
    try report.step("linux: child \(i) (file) restored, answers exec, sees the parent's file") {
      try restoreChild(i, "file", .file)
    }
  }
  if s.children > 1 {
    try report.step("linux: a write in child 0 is invisible to the other children") {
      try run(kids[0].1, ["sh", "-c", "echo child-0 > \(file) && sync"])
      try expectEqual("\(file) in child 0", text(try run(kids[0].1, ["cat", file]).stdout), "child-0\n")
      for (i, kid) in kids.enumerated().dropFirst() {
        try expectEqual("\(file) in child \(i)", text(try run(kid.1, ["cat", file]).stdout), "parent\n")
      }
    }
  }
  if s.children > 0 && s.parent.vcpus > 1 {
    try report.step("linux: child 0 runs a program on each of its \(s.parent.vcpus) vCPUs after the restore") {
      for cpu in 0..<s.parent.vcpus {
        // Field 39 of /proc/self/stat is the CPU the process last ran on; a vCPU that did not
        // come back from the restore would leave the pinned program unscheduled (exec timeout).
        let stat = text(try run(kids[0].1, ["taskset", "-c", "\(cpu)", "cat", "/proc/self/stat"]).stdout)
        let fields = stat.split(separator: " ")
        try expectEqual("CPU of a program pinned to \(cpu)", fields.count > 38 ? String(fields[38]) : stat, "\(cpu)")
      }
    }
  }
  if s.children > 1 {
    try report.step("linux: file frames: a binary file put into child 0 reads back byte for byte, child 1 has none") {
      let path = Array("/tmp/forkd-lane-files/blob.bin".utf8)
      let blob = (0..<70_000).map { UInt8(truncatingIfNeeded: $0 &* 7) } + [0, 0, 0]
      let written = try kids[0].1.request(.fileWrite(path: path, mode: 0o600, offset: 0, truncate: true, data: blob))
      try expectEqual("file write answer", written, AgentResponse.fileWritten(size: UInt64(blob.count)))
      let read = try kids[0].1.request(.fileRead(path: path, offset: 0, maxBytes: 1 << 19))
      try expectEqual(
        "file read answer", read,
        AgentResponse.fileData(AgentFileData(size: UInt64(blob.count), mode: 0o600, data: blob)))
      // The client throws an agent's error answer; "not found" is the one wanted here.
      do {
        let sibling = try kids[1].1.request(.fileRead(path: path, offset: 0, maxBytes: 16))
        throw LaneFailure("child 1 read \(String(decoding: path, as: UTF8.self)): expected not found, got \(sibling)")
      } catch let error as ControlError {
        guard error.code == .agent, (error.cause as? AgentError)?.code == AgentError.notFound else { throw error }
      }
      let parentFile = try kids[1].1.request(.fileRead(path: Array(file.utf8), offset: 0, maxBytes: 64))
      try expectEqual(
        "\(file) read by frames in child 1", parentFile,
        AgentResponse.fileData(AgentFileData(size: 7, mode: 0o644, data: Array("parent\n".utf8))))
    }
  }
  if s.children > 0 {
    try report.step("linux: agent exit powers child \(s.children - 1) off, forkd-vmm ends with status 0") {
      let (child, agent) = kids[s.children - 1]
      try expectEqual("exit answer", try agent.request(.exit(code: 0)), AgentResponse.exiting)
      let termination = child.vmm.wait(timeoutMS: 30_000)
      guard termination == .exited(0) else {
        throw LaneFailure(
          "forkd-vmm \(termination.map { "\($0)" } ?? "still running") 30 s after exit [\(childDiagnostics(child))]")
      }
    }
  }
  switch s.uffd {
  case .off:
    break
  case .required:
    try report.step("linux: child \(s.children) (uffd, forkd-pager) restored, answers exec, sees the parent's file") {
      try restoreChild(s.children, "uffd", .uffd())
    }
  case .optional:
    report.optionalStep("linux: child \(s.children) (uffd, forkd-pager) restored, answers exec, sees the parent's file")
    {
      try restoreChild(s.children, "uffd", .uffd(), agentTimeoutMS: 30_000)
    }
  }
  if s.shmem {
    report.optionalStep(
      "linux: child \(s.children + 1) (shmem, forkd-pager) restored, answers exec, sees the parent's file"
    ) {
      try restoreChild(s.children + 1, "shmem", .shmem(), agentTimeoutMS: 30_000)
    }
  }
  if !restoreTimes.isEmpty {
    let mean = Double(restoreTimes.reduce(0, +)) / Double(restoreTimes.count)
    report.metric("restore_to_exec_mean_ms", "\(UInt64(mean))")
    report.metric("boot_over_restore", format(Double(bootToAgent) / max(mean, 1)))
  }
}

/// What a child's files and control socket say, for a failure message.
func childDiagnostics(_ child: Child) -> String {
  var parts = ["vmm.log: \(tail(child.vmm.vmmLog))", "console: \(tail(child.vmm.consoleLog, lines: 8))"]
  if let pager = child.pager {
    parts.append("pager log: \(tail(pager.logPath))")
    if let stats = try? pager.stats(timeoutMS: 2000) {
      parts.append("pager stats: \(stats.keys.sorted().map { "\($0)=\(stats[$0]!)" }.joined(separator: ","))")
    }
  }
  if let status = try? child.vmm.control().status(timeoutMS: 2000) {
    parts.append("status: \(status)")
  }
  return parts.joined(separator: " | ")
}
