import ArgumentParser
import CLISupport
import Protocol
import Syscalls
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// Compares the memory backends side by side in one run: restore latency, fault service,
/// workload time and memory per child, with a cold and a warm page cache.
struct BackendBench: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "backends",
    abstract: "Compare file, uffd, uffd+prefetch and shmem-minor: restore, faults, workload, PSS; cold and warm cache.")

  @Option(help: "Sequential restores per backend for the restore→first-reply figures.")
  var iterations: Int = 20

  @Option(help: "Children alive at once for the workload and memory figures.")
  var children: Int = 10

  @Option(help: "Pages the parent fills and each child checksums (the fixed workload).")
  var pages: UInt64 = 1024

  @Option(help: "Guest memory in MiB.")
  var memoryMib: UInt64 = 64

  @Option(help: "Directory for run directories and the snapshot.")
  var workDir: String?

  @Flag(help: "Print JSON instead of a table.")
  var json = false

  struct Row {
    var backend: String
    var cache: String
    var restore: Summary
    var workloadMS: Double
    var serviceP50: Double
    var serviceP99: Double
    var faultsPerSecond: Double
    var faultsPerChild: Double
    var pssPerChildMiB: Double
    /// Restoring all `children` one after another until each answered ping (the fan-out).
    var spawnAllMS: Double
    var idlePSSPerChildMiB: Double
  }

  func run() throws {
    let scratch = try ScratchDirectory(prefix: "forkd-bench-backends", base: workDir)
    defer { scratch.remove() }
    let parent = try VMMProcess.launch(
      .boot(image: "builtin:test-guest", memoryMiB: memoryMib, vcpus: 1), runDirectory: scratch.path + "/parent-run")
    _ = try parent.agent().fill(pages: pages, seed: 11)
    let snapshot = scratch.path + "/snapshot"
    try parent.control().snapshot(directory: snapshot, parentTag: nil)
    parent.stop()
    defer { ShmemImage.remove(for: snapshot) }

    let backends: [ChildBackend] = [
      .file, .uffd(policy: .fail), .uffd(policy: .fail, prefetch: true, recordWorkingSet: true), .shmem(policy: .fail),
    ]
    var rows: [Row] = []
    var run = 0
    for cold in [false, true] {
      for backend in backends {
        if case .uffd(_, true, _) = backend, !FileSystem.exists(snapshot + "/" + WorkingSet.fileName) {
          // The first child records the working set; it is not measured.
          let recorder = try Child.restore(
            snapshot: snapshot, runDirectory: scratch.path + "/recorder", backend: backend)
          _ = try recorder.vmm.agent().checksum(pages: pages)
          recorder.stop()
        }
        var restoreMS: [Double] = []
        for _ in 0..<iterations {
          if cold { try evict(snapshot) }
          run += 1
          let child = try Child.restore(snapshot: snapshot, runDirectory: scratch.path + "/r\(run)", backend: backend)
          let started = child.pager.map { _ in child.vmm.ready.spawnedAt } ?? child.vmm.ready.spawnedAt
          _ = try child.vmm.agent().ping()
          restoreMS.append(ms(Clock.monotonicNanoseconds() - started))
          child.stop()
        }
        if cold { try evict(snapshot) }
        let launchStart = Clock.monotonicNanoseconds()
        var kids: [Child] = []
        for index in 0..<children {
          run += 1
          kids.append(
            try Child.restore(snapshot: snapshot, runDirectory: scratch.path + "/w\(run)-\(index)", backend: backend))
        }
        let agents = try kids.map { try $0.vmm.agent() }
        for agent in agents { _ = try agent.ping() }
        let spawnAllMS = ms(Clock.monotonicNanoseconds() - launchStart)
        let idlePSS = kids.map { Double($0.proportionalSetSizeKiB()) / 1024 }
        let t0 = Clock.monotonicNanoseconds()
        let pending = try agents.map { try $0.send(.checksum(pages: pages)) }
        for (agent, request) in zip(agents, pending) { _ = try agent.receive(request, timeoutMS: 600_000) }
        let workloadMS = ms(Clock.monotonicNanoseconds() - t0)
        let pss = kids.map { Double($0.proportionalSetSizeKiB()) / 1024 }
        var p50s: [Double] = []
        var p99s: [Double] = []
        var rates: [Double] = []
        var faults: [Double] = []
        for kid in kids {
          guard let stats = try? kid.pager?.stats(), let service = stats["service_ns"]?.objectValue else { continue }
          p50s.append(Double(service["p50"]?.int64Value ?? 0) / 1000)
          p99s.append(Double(service["p99"]?.int64Value ?? 0) / 1000)
          rates.append(stats["faults_per_second"]?.doubleValue ?? 0)
          faults.append(Double(stats["faults"]?.int64Value ?? 0))
        }
        for kid in kids { kid.stop() }
        rows.append(
          Row(
            backend: backend.name, cache: cold ? "cold" : "warm", restore: Summary(restoreMS), workloadMS: workloadMS,
            serviceP50: Summary(p50s).p50, serviceP99: Summary(p99s).p50, faultsPerSecond: Summary(rates).p50,
            faultsPerChild: Summary(faults).p50, pssPerChildMiB: Summary(pss).p50, spawnAllMS: spawnAllMS,
            idlePSSPerChildMiB: Summary(idlePSS).p50))
      }
    }
    print(json ? renderJSON(rows) : renderTable(rows))
  }

  private func evict(_ snapshot: String) throws {
    for name in [SnapshotManifest.defaultMemoryFile, SnapshotManifest.defaultStateFile, "manifest.json"] {
      let fd = try FileDescriptor.open(snapshot + "/" + name, .readOnly)
      defer { fd.close() }
      try fd.evictFromPageCache()
    }
  }

  private func renderTable(_ rows: [Row]) -> String {
    var lines = [
      "backends bench: \(memoryMib) MiB guest, \(pages) data pages, \(iterations) restores, \(children) children for the workload",
      "| backend | cache | restore→first reply p50 / p90 ms | workload (\(children)× checksum of \(pages) pages) ms | faults per child | fault service p50 / p99 µs | faults/s per pager | PSS per child MiB | spawn \(children) + ping ms | idle PSS per child MiB |",
      "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows {
      let pager = r.faultsPerChild > 0
      lines.append(
        "| \(r.backend) | \(r.cache) | \(format(r.restore.p50)) / \(format(r.restore.p90)) | \(format(r.workloadMS, decimals: 0)) | "
          + (pager
            ? "\(Int(r.faultsPerChild)) | \(format(r.serviceP50)) / \(format(r.serviceP99)) | \(Int(r.faultsPerSecond))"
            : "– | – | –")
          + " | \(format(r.pssPerChildMiB)) | \(format(r.spawnAllMS, decimals: 1)) | \(format(r.idlePSSPerChildMiB)) |")
    }
    return lines.joined(separator: "\n")
  }

  private func renderJSON(_ rows: [Row]) -> String {
    JSONValue.array(
      rows.map { r in
        .object([
          "backend": .string(r.backend), "cache": .string(r.cache),
          "restore_ms": .object(["p50": .double(r.restore.p50), "p90": .double(r.restore.p90)]),
          "workload_ms": .double(r.workloadMS), "faults_per_child": .double(r.faultsPerChild),
          "fault_service_us": .object(["p50": .double(r.serviceP50), "p99": .double(r.serviceP99)]),
          "faults_per_second": .double(r.faultsPerSecond), "pss_per_child_mib": .double(r.pssPerChildMiB),
          "spawn_all_ms": .double(r.spawnAllMS), "idle_pss_per_child_mib": .double(r.idlePSSPerChildMiB),
        ])
      }
    ).serialized(pretty: true)
  }
}
