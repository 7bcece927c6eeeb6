import ArgumentParser
import CLISupport
import ForkdClient
import Protocol
import Syscalls
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// The README's main job. By default the way operators run forkd: `forkd serve` in the
/// background, a warmed parent snapshotted through the v1 API, 100 children spawned from it and
/// pinged, spawn time and memory per child shown, everything cleaned up. `--direct` drives
/// forkd-vmm processes without the daemon and talks to each child's agent itself.
struct Demo: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Warm a parent, snapshot it once, fork many children and talk to each (through forkd serve).")

  @Option(help: "How many children to spawn (default 100 through the daemon, 10 with --direct).")
  var children: Int?

  @Option(help: "Pages (4 KiB) the parent fills and every child inherits.")
  var pages: UInt64 = 1024

  @Option(help: "Guest memory in MiB.")
  var memoryMib: UInt64 = 64

  @Option(help: "Directory for the daemon's state, run directories and snapshots (default: a new one under $TMPDIR).")
  var workDir: String?

  @Option(
    help:
      "How children get their memory: auto (the daemon's default: file for flat snapshots, a forkd-pager per child for chains and live_fork), file (MAP_PRIVATE; the --direct default), uffd (a forkd-pager per child) or shmem (minor faults)."
  )
  var backend: String?

  @Flag(help: "Drive forkd-vmm processes directly instead of through forkd serve, and checksum every child's memory.")
  var direct = false

  @Flag(help: "Keep the work directory (snapshot, logs) instead of removing it at the end.")
  var keep = false

  var backendName: String { backend ?? (direct ? "file" : "auto") }
  var childCount: Int { children ?? (direct ? 10 : 100) }

  var childBackend: ChildBackend? {
    switch backendName {
    case "file": .file
    case "uffd": .uffd(policy: .restart)
    case "shmem": .shmem(policy: .restart)
    default: nil
    }
  }

  func validate() throws {
    if backendName == "auto" && direct {
      throw ValidationError("--backend auto is the daemon's per-spawn choice; --direct needs file, uffd or shmem")
    }
    guard childBackend != nil || backendName == "auto" else {
      throw ValidationError("--backend \(backendName): expected auto, file, uffd or shmem")
    }
    guard (1...1000).contains(childCount) else {
      throw ValidationError("--children \(childCount): must be 1...1000")
    }
    guard pages > 0, pages * 4096 + (4 << 20) <= memoryMib << 20 else {
      throw ValidationError("--pages \(pages): the data area starts at 4 MiB and must fit in --memory-mib \(memoryMib)")
    }
  }

  func run() throws {
    if direct { try runDirect() } else { try runThroughDaemon() }
  }

  /// Boots, snapshots and restores with forkd-vmm processes of its own, no daemon.
  func runDirect() throws {
    let scratch = try ScratchDirectory(prefix: "forkd-demo", base: workDir)
    defer { if keep { print("kept \(scratch.path)") } else { scratch.remove() } }
    let seed: UInt64 = 0x5EED_F0_4D
    let expected = TestGuestMath.checksum(pages: pages, seed: seed)
    print(
      "forkd demo: warm a parent, snapshot it, fork \(childCount) children, backend \(backendName) (work dir \(scratch.path))"
    )

    // 1. Boot and warm the parent.
    var t0 = Clock.monotonicNanoseconds()
    let parent = try VMMProcess.launch(
      .boot(image: "builtin:test-guest", memoryMiB: memoryMib, vcpus: 1), runDirectory: scratch.path + "/parent-run")
    let parentAgent = try parent.agent()
    let pong = try parentAgent.ping()
    print(
      "parent  pid \(parent.pid) booted, agent answered ping in \(format(ms(Clock.monotonicNanoseconds() - t0))) ms (agent kind \(pong.kind) v\(pong.agentVersion))"
    )
    t0 = Clock.monotonicNanoseconds()
    _ = try parentAgent.fill(pages: pages, seed: seed)
    let fillMS = ms(Clock.monotonicNanoseconds() - t0)
    t0 = Clock.monotonicNanoseconds()
    let parentChecksum = try parentAgent.checksum(pages: pages)
    let checksumMS = ms(Clock.monotonicNanoseconds() - t0)
    let counter = try parentAgent.counter(add: 41)
    try parentAgent.set("greeting", "hello from the parent")
    print(
      "parent  filled \(pages) pages (seed \(hex(seed))) in \(format(fillMS)) ms; checksum \(hex(parentChecksum)) in \(format(checksumMS)) ms "
        + (parentChecksum == expected ? "(matches the host's computation)" : "(HOST EXPECTED \(hex(expected)))"))
    print("parent  counter = \(counter), kv greeting = \"hello from the parent\"")

    // 2. Snapshot once.
    let snapshotDir = scratch.path + "/parent-snapshot"
    let snap = try parent.control().snapshot(directory: snapshotDir, parentTag: nil)
    print(
      "snapshot \(snapshotDir): \(format(Double(snap.written?.memoryDataBytes ?? 0) / 1048576)) MiB of data in a \(memoryMib) MiB memory.bin, "
        + "guest paused \(format(Double(snap.pauseMicroseconds) / 1000)) ms, written in \(format(Double(snap.written?.totalMicroseconds ?? 0) / 1000)) ms"
    )
    parent.stop()

    // 3. Restore the children, each its own forkd-vmm process.
    defer { ShmemImage.remove(for: snapshotDir) }
    var vms: [Child] = []
    var agents: [AgentClient] = []
    var readyMS: [Double] = []
    var firstReplyMS: [Double] = []
    let fanOutStart = Clock.monotonicNanoseconds()
    for index in 0..<childCount {
      let started = Clock.monotonicNanoseconds()
      let vm = try Child.restore(
        snapshot: snapshotDir, runDirectory: scratch.path + "/child-\(index)", backend: childBackend!)
      let agent = try vm.vmm.agent()
      _ = try agent.ping()
      let answered = Clock.monotonicNanoseconds()
      readyMS.append(ms(vm.vmm.ready.observedAt - started))
      firstReplyMS.append(ms(answered - started))
      vms.append(vm)
      agents.append(agent)
    }
    let fanOutMS = ms(Clock.monotonicNanoseconds() - fanOutStart)

    // 4. Talk to every child: checksums run in all guests at once.
    t0 = Clock.monotonicNanoseconds()
    let pendingChecksums = try agents.map { try $0.send(.checksum(pages: pages)) }
    let checksums = try zip(agents, pendingChecksums).map { try $0.checksumResult($0.receive($1, timeoutMS: 300_000)) }
    let checksumAllMS = ms(Clock.monotonicNanoseconds() - t0)
    var failures = 0
    print("")
    print("child     pid  restore→ready ms  restore→first reply ms  checksum            counter+1  greeting")
    for (index, agent) in agents.enumerated() {
      let next = try agent.counter(add: 1)
      let greeting = try agent.get("greeting") ?? "(missing)"
      try agent.set("greeting", "child \(index) was here")
      let ok = checksums[index] == parentChecksum && next == counter + 1 && greeting == "hello from the parent"
      if !ok { failures += 1 }
      print(
        "\(pad("\(index)", 5)) \(pad("\(vms[index].vmm.pid)", 7))  \(pad(format(readyMS[index]), 16))  \(pad(format(firstReplyMS[index]), 22))  \(hex(checksums[index]))  \(pad("\(next)", 9))  \(greeting)\(ok ? "" : "  <-- MISMATCH")"
      )
    }
    // A child's writes are its own: its sibling still sees the parent's value.
    if agents.count > 1,
      try agents[1].get("greeting") != "child 1 was here" || agents[0].get("greeting") != "child 0 was here"
    {
      failures += 1
      print("isolation check failed: a child saw its sibling's write")
    }
    let ready = Summary(readyMS)
    let reply = Summary(firstReplyMS)
    print("")
    print(
      "restore→ready       p50 \(format(ready.p50)) ms  p90 \(Summary.text(ready.p90IfEnough)) ms  (process spawn to control socket ready)"
    )
    print(
      "restore→first reply p50 \(format(reply.p50)) ms  p90 \(Summary.text(reply.p90IfEnough)) ms  (spawn to the agent's first ping reply)"
    )
    print(
      "fan-out: \(childCount) children restored and answering in \(format(fanOutMS)) ms; all checksums (\(pages) pages each) in \(format(checksumAllMS)) ms"
    )

    for vm in vms { vm.stop() }
    if failures == 0 {
      print("all \(childCount) children returned the parent's checksum and kv value, and their writes stayed private")
    } else {
      print("\(failures) children disagreed with the parent")
      throw ExitCode(ExitStatus.checkFailed)
    }
  }
}

func hex(_ value: UInt64) -> String {
  let digits = String(value, radix: 16)
  return "0x" + String(repeating: "0", count: max(0, 16 - digits.count)) + digits
}
