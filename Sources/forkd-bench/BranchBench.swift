import ArgumentParser
import CLISupport
import Protocol
import Syscalls
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// The branch modes side by side: how long the source is paused for a full, a diff and a live
/// snapshot at several guest sizes, and what a spawn from a diff chain costs against a flat one.
struct BranchBench: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "branch",
    abstract: "Pause window of full, diff and live branches at several guest sizes; spawn at chain depth 0...3 (uffd).")

  @Option(parsing: .upToNextOption, help: "Guest sizes in MiB.") var sizes: [UInt64] = [64, 512, 2048]
  @Option(help: "Branches per mode and size.") var iterations: Int = 5
  @Option(help: "Pages the parent fills; each source child rewrites 64 of them before branching.")
  var pages: UInt64 = 256
  @Option(help: "Spawns per chain depth.") var spawns: Int = 20
  @Option(help: "Directory for snapshots and run directories.") var workDir: String?
  @Flag(help: "Print JSON instead of tables.") var json = false

  func run() throws {
    let scratch = try ScratchDirectory(prefix: "forkd-bench-branch", base: workDir)
    defer { scratch.remove() }
    var pauseRows: [(size: UInt64, backend: String, mode: String, pause: Summary, total: Summary, layerPages: Int)] =
      []
    var spawnRows: [(depth: Int, restore: Summary, workload: Summary)] = []
    var noWaitRows: [(size: UInt64, roundTrip: Summary, pause: Summary)] = []

    for size in sizes {
      let root = scratch.path + "/\(size)"
      try FileSystem.makeDirectories(root + "/snaps")
      let parent = try VMMProcess.launch(
        .boot(image: "builtin:test-guest", memoryMiB: size, vcpus: 1), runDirectory: root + "/parent")
      _ = try parent.agent().fill(pages: pages, seed: 1)
      try parent.control().snapshot(directory: root + "/snaps/base", parentTag: nil)
      parent.stop()

      for backend in [ChildBackend.file, .uffd(policy: .fail)] {
        let source = try Child.restore(snapshot: root + "/snaps/base", runDirectory: root + "/src", backend: backend)
        let agent = try source.vmm.agent()
        for mode in ["full", "diff", "live"] where mode != "live" || backend.servesChains {
          var pauses: [Double] = []
          var totals: [Double] = []
          var layerPages = 0
          for i in 0..<iterations {
            // The source keeps changing between branches, like an agent mid-thought.
            _ = try agent.fill(pages: 64, seed: UInt64(i + 2))
            let dir = root + "/snaps/\(backend.name)-\(mode)-\(i)"
            let result = try source.vmm.control().snapshot(
              directory: dir, parentTag: "base", diff: mode == "diff", live: mode == "live", timeoutMS: 600_000)
            pauses.append(Double(result.pauseMicroseconds) / 1000)
            totals.append(Double(result.written?.totalMicroseconds ?? 0) / 1000)
            layerPages = Int(clamping: result.written?.layerPages ?? 0)
            FileSystem.removeTree(dir)
          }
          pauseRows.append((size, backend.name, mode, Summary(pauses), Summary(totals), layerPages))
        }
        if backend.servesChains {
          // Live with wait:false: the request's round trip, answered once the source runs again.
          var trips: [Double] = []
          var pauses: [Double] = []
          for i in 0..<iterations {
            _ = try agent.fill(pages: 64, seed: UInt64(i + 50))
            let dir = root + "/snaps/nowait-\(i)"
            let t0 = Clock.monotonicNanoseconds()
            let started = try source.vmm.control().snapshot(
              directory: dir, parentTag: "base", live: true, wait: false, timeoutMS: 600_000)
            trips.append(ms(Clock.monotonicNanoseconds() - t0))
            pauses.append(Double(started.pauseMicroseconds) / 1000)
            try source.vmm.control().snapshotWait(directory: dir, timeoutMS: 600_000)
            FileSystem.removeTree(dir)
          }
          noWaitRows.append((size, Summary(trips), Summary(pauses)))
        }
        source.stop()
      }

      // Spawn at chain depth 0...3 (smallest size only: the chain cost does not depend on it).
      guard size == sizes.first else {
        FileSystem.removeTree(root)
        continue
      }
      var previous = "base"
      for depth in 1...3 {
        let source = try Child.restore(
          snapshot: root + "/snaps/" + previous, runDirectory: root + "/chain-src", backend: .uffd(policy: .fail))
        _ = try source.vmm.agent().fill(pages: 16, seed: UInt64(depth + 100))
        try source.vmm.control().snapshot(directory: root + "/snaps/d\(depth)", parentTag: previous, diff: true)
        source.stop()
        previous = "d\(depth)"
      }
      for (depth, tag) in ["base", "d1", "d2", "d3"].enumerated() {
        var samples: [Double] = []
        var workloads: [Double] = []
        for i in 0..<(spawns + 1) {
          let t0 = Clock.monotonicNanoseconds()
          let child = try Child.restore(
            snapshot: root + "/snaps/" + tag, runDirectory: root + "/spawn-\(tag)-\(i)", backend: .uffd(policy: .fail))
          let agent = try child.vmm.agent()
          _ = try agent.ping()
          let t1 = Clock.monotonicNanoseconds()
          _ = try agent.checksum(pages: pages)
          let t2 = Clock.monotonicNanoseconds()
          child.stop()
          if i > 0 {  // the first one warms the page cache
            samples.append(ms(t1 - t0))
            workloads.append(ms(t2 - t1))
          }
        }
        spawnRows.append((depth, Summary(samples), Summary(workloads)))
      }
      FileSystem.removeTree(root)
    }

    if json {
      print(
        JSONValue.object([
          "bench": .string("branch"), "pages": .integer(Int64(pages)),
          "pause": .array(
            pauseRows.map {
              .object([
                "memory_mib": .integer(Int64($0.size)), "backend": .string($0.backend), "mode": .string($0.mode),
                "pause_ms_p50": .double($0.pause.p50), "pause_ms_p90": .double($0.pause.p90),
                "total_ms_p50": .double($0.total.p50), "layer_pages": .integer(Int64($0.layerPages)),
              ])
            }),
          "live_no_wait": .array(
            noWaitRows.map {
              .object([
                "memory_mib": .integer(Int64($0.size)), "round_trip_ms_p50": .double($0.roundTrip.p50),
                "round_trip_ms_p90": .double($0.roundTrip.p90), "pause_ms_p50": .double($0.pause.p50),
              ])
            }),
          "spawn_from_chain": .array(
            spawnRows.map {
              .object([
                "depth": .integer(Int64($0.depth)), "restore_to_first_reply_ms_p50": .double($0.restore.p50),
                "restore_to_first_reply_ms_p90": .double($0.restore.p90),
                "checksum_ms_p50": .double($0.workload.p50),
              ])
            }),
        ]).serialized(pretty: true))
      return
    }
    print(
      "branch pause window (source paused), \(iterations) branches each, \(pages) pages filled, 64 rewritten per branch"
    )
    print("| guest MiB | source backend | mode | pause p50 ms | pause p90 ms | branch total p50 ms | layer pages |")
    print("|---|---|---|---|---|---|---|")
    for r in pauseRows {
      print(
        "| \(r.size) | \(r.backend) | \(r.mode) | \(format(r.pause.p50)) | \(format(r.pause.p90)) | \(format(r.total.p50)) | \(r.mode == "diff" ? "\(r.layerPages)" : "all") |"
      )
    }
    print("")
    print("live branch with wait:false (uffd source): control request → answer, the source running again")
    print("| guest MiB | round trip p50 ms | p90 ms | pause p50 ms |")
    print("|---|---|---|---|")
    for r in noWaitRows {
      print("| \(r.size) | \(format(r.roundTrip.p50)) | \(format(r.roundTrip.p90)) | \(format(r.pause.p50)) |")
    }
    print("")
    print(
      "spawn from a diff chain (uffd backend): restore → first agent reply, then a checksum of \(pages) pages (every page faulted through the chain), \(spawns) spawns each"
    )
    print("| chain depth | restore → first reply p50 ms | p90 ms | vs flat | checksum p50 ms | vs flat |")
    print("|---|---|---|---|---|---|")
    let flat = spawnRows.first?.restore.p50 ?? 1
    let flatWork = spawnRows.first?.workload.p50 ?? 1
    for r in spawnRows {
      print(
        "| \(r.depth) | \(format(r.restore.p50)) | \(format(r.restore.p90)) | \(format(r.restore.p50 / flat))× | \(format(r.workload.p50)) | \(format(r.workload.p50 / flatWork))× |"
      )
    }
  }
}
