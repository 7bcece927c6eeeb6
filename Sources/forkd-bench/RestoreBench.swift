import ArgumentParser
import CLISupport
import Protocol
import Syscalls
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// Restore-to-first-agent-reply for one child at a time, split into its phases.
struct RestoreBench: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "restore",
    abstract: "Restore one child at a time from a warmed snapshot and time each phase until its first agent reply.")

  @Option(help: "Children to restore (sequentially).")
  var iterations: Int = 50

  @Option(help: "Guest memory in MiB.")
  var memoryMib: UInt64 = 64

  @Option(help: "Pages the parent fills before the snapshot (its warm working set).")
  var pages: UInt64 = 256

  @Option(help: "Directory for run directories and the snapshot.")
  var workDir: String?

  @Flag(help: "Print JSON instead of a table.")
  var json = false

  @Flag(help: "Skip the same-run C loop baseline (bench/restore-loop.c).")
  var noBaseline = false

  @Flag(help: "Jail each child as the daemon does (docs/jail.md) and report the jail's own time.")
  var jail = false

  @Flag(help: "Restore each child with its own forkd-pager (uffd backend) instead of mapping memory.bin.")
  var uffd = false

  func run() throws {
    let jails = jail ? try JailPool() : nil
    let scratch = try ScratchDirectory(prefix: "forkd-bench", base: workDir)
    defer { scratch.remove() }
    let parent = try VMMProcess.launch(
      .boot(image: "builtin:test-guest", memoryMiB: memoryMib, vcpus: 1), runDirectory: scratch.path + "/parent-run")
    let agent = try parent.agent()
    _ = try agent.fill(pages: pages, seed: 7)
    let snapshotDir = scratch.path + "/snapshot"
    try parent.control().snapshot(directory: snapshotDir, parentTag: nil)
    parent.stop()

    var phases: [String: [Double]] = [:]
    var memory: [Double] = []
    var order = [
      "process_start", "read_files", "kvm_setup", "state_restore", "to_ready", "first_reply", "restore_to_first_reply",
    ]
    if jail { order.insert("jail", at: 4) }
    if jail && uffd { order.insert("pager_jail", at: 5) }
    for index in 0..<iterations {
      let runDirectory = scratch.path + "/child-\(index)"
      var lease: JailLease? = nil
      if let jails, !uffd {
        try FileSystem.makeDirectories(runDirectory)
        lease = try jails.lease()
        try lease?.prepareCell(runDirectory)
      }
      let vm: VMMProcess
      var child: Child? = nil
      if uffd {
        child = try Child.restore(snapshot: snapshotDir, runDirectory: runDirectory, backend: .uffd(), jail: jails)
        vm = child!.vmm
      } else {
        vm = try VMMProcess.launch(
          .restore(snapshot: snapshotDir), runDirectory: runDirectory, jail: lease?.spec(cell: runDirectory))
      }
      defer { withExtendedLifetime(lease) {} }
      _ = try vm.agent().ping()
      let answered = Clock.monotonicNanoseconds()
      let r = vm.ready
      phases["process_start", default: []].append(ms(r.mainEnteredAt - r.spawnedAt))
      phases["read_files", default: []].append(ms(r.readFiles))
      phases["kvm_setup", default: []].append(ms(r.kvmSetup))
      phases["state_restore", default: []].append(ms(r.stateRestore))
      phases["jail", default: []].append(ms(r.jail))
      if let pagerJail = try? child?.pager?.stats()["jail_ns"]?.int64Value {
        phases["pager_jail", default: []].append(ms(UInt64(clamping: pagerJail)))
      }
      phases["to_ready", default: []].append(ms(r.observedAt - r.spawnedAt))
      phases["first_reply", default: []].append(ms(answered - r.observedAt))
      phases["restore_to_first_reply", default: []].append(ms(answered - r.spawnedAt))
      if let pss = proportionalSetSizeKiB(vm.pid) { memory.append(Double(pss)) }
      if let child { child.stop() } else { vm.stop() }
    }

    var host = [UInt8](repeating: 0, count: 256)
    gethostname(&host, host.count)
    let hostname = String(decoding: host.prefix(while: { $0 != 0 }), as: UTF8.self)
    // The floor: the same snapshot restored in-process by the C loop, one child at a time to its
    // first exit (its per-child figure is what restore_to_first_reply compares with).
    let baseline =
      try noBaseline
      ? nil
      : RestoreLoopBaseline(snapshot: snapshotDir, directory: scratch.path + "/c-loop")
        .run(children: iterations, rounds: 1).first.map { Summary($0.firstExitMS) }
    let ratio = baseline.map { Summary(phases["restore_to_first_reply"] ?? []).p50 / max($0.p50, 0.001) }

    if json {
      var object: [String: JSONValue] = [
        "bench": .string("restore"), "iterations": .integer(Int64(iterations)),
        "memory_mib": .integer(Int64(memoryMib)), "warm_pages": .integer(Int64(pages)), "host": .string(hostname),
        "jailed": .bool(jail), "backend": .string(uffd ? "uffd" : "file"),
      ]
      for name in order {
        let s = Summary(phases[name] ?? [])
        object[name + "_ms"] = .object(percentiles(s))
      }
      let pss = Summary(memory)
      object["vmm_pss_kib"] = .object(percentiles(pss))
      if let baseline, let ratio {
        object["c_loop_first_exit_ms"] = .object(percentiles(baseline))
        object["restore_to_first_reply_vs_c_loop"] = .double(ratio)
      }
      print(JSONValue.object(object).serialized(pretty: true))
    } else {
      print(
        "restore bench: \(iterations) children, \(memoryMib) MiB guest, \(pages) warm pages, host \(hostname)"
          + (jail ? ", jailed" : "") + (uffd ? ", uffd (a forkd-pager per child)" : ""))
      print("phase                         p50 ms    p90 ms    p99 ms")
      for name in order {
        let s = Summary(phases[name] ?? [])
        print(
          "\(name.padding(28)) \(pad(format(s.p50, decimals: 3), 8))  \(pad(Summary.text(s.p90IfEnough, decimals: 3), 8))  \(pad(Summary.text(s.p99IfEnough, decimals: 3), 8))"
        )
      }
      let pss = Summary(memory)
      print(
        "forkd-vmm PSS after first reply: p50 \(format(pss.p50 / 1024)) MiB, p90 \(Summary.text(pss.p90IfEnough.map { $0 / 1024 })) MiB"
      )
      if let baseline, let ratio {
        print(
          "\("c_loop_first_exit".padding(28)) \(pad(format(baseline.p50, decimals: 3), 8))  \(pad(Summary.text(baseline.p90IfEnough, decimals: 3), 8))  \(pad(Summary.text(baseline.p99IfEnough, decimals: 3), 8))"
        )
        print("restore_to_first_reply / c_loop_first_exit (p50): \(format(ratio))x")
      }
      if iterations < Summary.samplesForP99 {
        print(
          "(p90 needs \(Summary.samplesForP90) samples and p99 \(Summary.samplesForP99); \"-\" where there are fewer)")
      }
    }
  }
}

/// Pss of a process in KiB (from /proc/<pid>/smaps_rollup), nil if it cannot be read.
func proportionalSetSizeKiB(_ pid: pid_t) -> UInt64? {
  guard let bytes = try? FileSystem.readFile("/proc/\(pid)/smaps_rollup") else { return nil }
  for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") where line.hasPrefix("Pss:") {
    return line.split(separator: " ").dropFirst().first.flatMap { UInt64($0) }
  }
  return nil
}

/// p50, max, the sample count, and p90/p99 only when there are enough samples for them.
func percentiles(_ s: Summary) -> [String: JSONValue] {
  var o: [String: JSONValue] = ["p50": .double(s.p50), "max": .double(s.max), "samples": .integer(Int64(s.count))]
  if let p90 = s.p90IfEnough { o["p90"] = .double(p90) }
  if let p99 = s.p99IfEnough { o["p99"] = .double(p99) }
  return o
}
