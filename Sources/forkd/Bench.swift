import ArgumentParser
import Protocol
import Syscalls
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

struct Bench: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Benchmarks (results go to stdout as a table, or JSON with --json).",
    subcommands: [
      RestoreBench.self, BackendBench.self, SpawnBench.self, BranchBench.self, LoadBench.self, PagerTopologyBench.self,
      RegistryBench.self,
    ])
}

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

  func run() throws {
    let scratch = try ScratchDirectory(prefix: "forkd-bench", base: workDir)
    defer { scratch.remove() }
    let parent = try VMMProcess.launch(
      .boot(image: "builtin:test-guest", memoryMiB: memoryMib, vcpus: 1), runDirectory: scratch.path + "/parent-run")
    let agent = try parent.agent()
    _ = try agent.fill(pages: pages, seed: 7)
    let snapshotDir = scratch.path + "/snapshot"
    try parent.control().call(.snapshot(directory: snapshotDir, parentTag: nil))
    parent.stop()

    var phases: [String: [Double]] = [:]
    var memory: [Double] = []
    let order = [
      "process_start", "read_files", "kvm_setup", "state_restore", "to_ready", "first_reply", "restore_to_first_reply",
    ]
    for index in 0..<iterations {
      let vm = try VMMProcess.launch(.restore(snapshot: snapshotDir), runDirectory: scratch.path + "/child-\(index)")
      let child = try vm.agent()
      _ = try child.ping()
      let answered = Clock.monotonicNanoseconds()
      let r = vm.ready
      phases["process_start", default: []].append(ms(r.mainEnteredAt - r.spawnedAt))
      phases["read_files", default: []].append(ms(r.readFiles))
      phases["kvm_setup", default: []].append(ms(r.kvmSetup))
      phases["state_restore", default: []].append(ms(r.stateRestore))
      phases["to_ready", default: []].append(ms(r.observedAt - r.spawnedAt))
      phases["first_reply", default: []].append(ms(answered - r.observedAt))
      phases["restore_to_first_reply", default: []].append(ms(answered - r.spawnedAt))
      if let pss = proportionalSetSizeKiB(vm.pid) { memory.append(Double(pss)) }
      vm.stop()
    }

    var host = [UInt8](repeating: 0, count: 256)
    gethostname(&host, host.count)
    let hostname = String(decoding: host.prefix(while: { $0 != 0 }), as: UTF8.self)
    if json {
      var object: [String: JSONValue] = [
        "bench": .string("restore"), "iterations": .integer(Int64(iterations)),
        "memory_mib": .integer(Int64(memoryMib)), "warm_pages": .integer(Int64(pages)), "host": .string(hostname),
      ]
      for name in order {
        let s = Summary(phases[name] ?? [])
        object[name + "_ms"] = .object([
          "p50": .double(s.p50), "p90": .double(s.p90), "p99": .double(s.p99), "max": .double(s.max),
        ])
      }
      let pss = Summary(memory)
      object["vmm_pss_kib"] = .object(["p50": .double(pss.p50), "p90": .double(pss.p90), "max": .double(pss.max)])
      print(JSONValue.object(object).serialized(pretty: true))
    } else {
      print("restore bench: \(iterations) children, \(memoryMib) MiB guest, \(pages) warm pages, host \(hostname)")
      print("phase                         p50 ms    p90 ms    p99 ms")
      for name in order {
        let s = Summary(phases[name] ?? [])
        print(
          "\(name.padding(28)) \(pad(format(s.p50, decimals: 3), 8))  \(pad(format(s.p90, decimals: 3), 8))  \(pad(format(s.p99, decimals: 3), 8))"
        )
      }
      let pss = Summary(memory)
      print("forkd-vmm PSS after first reply: p50 \(format(pss.p50 / 1024)) MiB, p90 \(format(pss.p90 / 1024)) MiB")
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

extension String {
  func padding(_ width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }
}
