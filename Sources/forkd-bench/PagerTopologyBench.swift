import ArgumentParser
import CLISupport
import Protocol
import Syscalls
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// Per-child pagers against one shared (daemon-wide) pager for the children of one snapshot, in
/// the same run: memory, pager CPU, faults under load, and the blast radius of a pager crash.
struct PagerTopologyBench: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "pagers",
    abstract:
      "Per-child forkd-pager vs one shared pager (--shared) for N children of one snapshot: PSS, pager CPU, fault service under load, and what a pager SIGKILL stalls."
  )

  @Option(parsing: .upToNextOption, help: "Numbers of children.") var children: [Int] = [1, 10, 100]
  @Option(help: "Pages each child checksums in the workload (the blast-radius run reads the next as many).")
  var pages: UInt64 = 256
  @Option(help: "Guest memory in MiB.") var memoryMib: UInt64 = 64
  @Option(help: "Rounds per number of children (medians are reported; the topology order alternates).")
  var rounds: Int = 3
  @Option(help: "Pages each child reads in the handler comparison (at most 2 × --pages).")
  var handlerPages: UInt64 = 512
  @Option(help: "Directory for run directories and the snapshot.") var workDir: String?
  @Option(help: "Rounds of the handler comparison (forkd-pager vs the minimal C handler vs file); 0 skips it.")
  var handlerRounds: Int = 10
  @Option(help: "Source of the minimal C userfaultfd handler, compiled with clang at run time.")
  var cHandler: String = "bench/uffd-min-handler.c"
  @Flag(help: "Print JSON instead of tables.") var json = false

  /// `sharedNice`: the shared pager at nice -10 (one thread serving every child competes with
  /// all their vCPU threads for the CPU; per-child pagers each get the scheduler's wake-up credit).
  enum Topology: String, CaseIterable {
    case perChild = "per-child"
    case shared
    case sharedNice = "shared, nice -10"
  }

  struct Row {
    var topology: Topology
    var children: Int
    var spawnMS: Double
    var pagerProcesses: Int
    var idlePSSMiB: Double
    var idlePagerPSSMiB: Double
    var workloadPSSMiB: Double
    var workloadPagerPSSMiB: Double
    var pagerCPUStartMS: Double
    var pagerCPUWorkloadMS: Double
    var pagerTicksWorkload: UInt64
    var workloadMS: Double
    var faults: Int64
    var serviceP50US: Double
    var serviceP99US: Double
    var pagerStartMS: Double
    // Blast radius.
    var stalled: Int
    var failed: Int
    var detectMS: Double
    var recoverMS: Double
    var lastAffectedDoneMS: Double
    var blastWorkloadMS: Double
  }

  func run() throws {
    guard handlerPages <= 2 * pages || handlerRounds == 0 else {
      throw ValidationError(
        "--handler-pages \(handlerPages) exceeds the \(2 * pages) pages the parent fills (2 × --pages)")
    }
    let scratch = try ScratchDirectory(prefix: "forkd-bench-pagers", base: workDir)
    defer { scratch.remove() }
    let parent = try VMMProcess.launch(
      .boot(image: "builtin:test-guest", memoryMiB: memoryMib, vcpus: 1), runDirectory: scratch.path + "/parent-run")
    let parentAgent = try parent.agent()
    _ = try parentAgent.fill(pages: 2 * pages, seed: 23)
    let firstSum = try parentAgent.checksum(pages: pages)
    let fullSum = try parentAgent.checksum(pages: 2 * pages)
    let handlerSum = try parentAgent.checksum(pages: handlerPages)
    let snapshot = scratch.path + "/snapshot"
    try parent.control().snapshot(directory: snapshot, parentTag: nil)
    parent.stop()

    var handlers: [HandlerRow] = []
    if handlerRounds > 0 {
      handlers = try compareHandlers(
        snapshot: snapshot, base: scratch.path + "/handlers",
        expected: handlerPages == pages ? firstSum : handlerPages == 2 * pages ? fullSum : handlerSum)
    }
    var rows: [Row] = []
    var run = 0
    for n in children {
      var samples: [Topology: [Row]] = [:]
      for round in 0..<rounds {
        for topology in round % 2 == 0 ? Topology.allCases : Topology.allCases.reversed() {
          run += 1
          samples[topology, default: []].append(
            try measure(
              topology, n: n, snapshot: snapshot, base: scratch.path + "/\(run)", sums: (firstSum, fullSum)))
        }
      }
      for topology in Topology.allCases { rows.append(Row.median(samples[topology]!)) }
    }
    print(json ? renderJSON(rows, handlers) : renderTables(rows) + "\n\n" + renderHandlers(handlers))
  }

  struct HandlerRow {
    var handler: String
    var rounds: Int
    var faults: Double
    var serviceP50US: Summary
    var serviceP99US: Summary
    var workloadMS: Summary
  }

  /// One child at a time reads `pages` pages, served by forkd-pager, by the minimal C handler, or
  /// by the kernel (file backend), interleaved round by round so drift hits all three alike.
  private func compareHandlers(snapshot: String, base: String, expected: UInt64) throws -> [HandlerRow] {
    try FileSystem.makeDirectories(base)
    let binary = base + "/uffd-min-handler"
    let source = FileSystem.exists(cHandler) ? cHandler : executableDirectory() + "/../../" + cHandler
    guard FileSystem.exists(source) else {
      throw ValidationError("--c-handler \(cHandler): no such file (run from the repository root)")
    }
    let clang = ["/opt/swift/usr/bin/clang", "/usr/bin/clang", "/usr/bin/cc"].first { FileSystem.exists($0) }
    guard let clang else { throw ValidationError("no clang or cc to build \(source)") }
    let pid = try ChildProcess.spawn(path: clang, arguments: [clang, "-O2", "-o", binary, source])
    guard ChildProcess.waitOrKill(pid, timeoutMS: 60_000) == .exited(0) else {
      throw ValidationError("\(clang) could not build \(source)")
    }
    var samples: [String: (faults: [Double], p50: [Double], p99: [Double], wall: [Double])] = [:]
    for round in 0..<handlerRounds {
      for handler in ["forkd-pager", "minimal C", "file (no pager)"] {
        let dir = base + "/r\(round)-\(samples.count)-\(handler.prefix(4))"
        var cPager: PagerProcess? = nil
        if handler == "minimal C" {
          cPager = try PagerProcess.launch(
            socket: base + "/c-\(round).sock", logPath: base + "/c-\(round).log", binary: binary,
            extraArguments: ["--memory", snapshot + "/" + SnapshotManifest.defaultMemoryFile])
        }
        let child = try Child.restore(
          snapshot: snapshot, runDirectory: dir, backend: handler.hasPrefix("file") ? .file : .uffd(policy: .fail),
          sharedPager: cPager)
        let agent = try child.vmm.agent()
        _ = try agent.ping()
        let t0 = Clock.monotonicNanoseconds()
        guard try agent.checksum(pages: handlerPages) == expected else {
          throw ValidationError("\(handler): wrong checksum")
        }
        let wall = ms(Clock.monotonicNanoseconds() - t0)
        var stats: [String: JSONValue] = [:]
        if let pager = child.pager { stats = try pager.stats() }
        child.stop()
        if let cPager {
          cPager.wait(timeoutMS: 5000)
          let log = String(decoding: (try? FileSystem.readFile(cPager.logPath)) ?? [], as: UTF8.self)
          if let line = log.split(separator: "\n").last(where: { $0.contains("stats {") }),
            let start = line.firstIndex(of: "{")
          {
            stats = (try? JSONValue.parse(Array(line[start...].utf8), source: "C handler stats"))?.objectValue ?? [:]
          }
        }
        let service = stats["service_ns"]?.objectValue
        var entry = samples[handler] ?? ([], [], [], [])
        entry.faults.append(Double(stats["faults"]?.int64Value ?? 0))
        entry.p50.append(Double(service?["p50"]?.int64Value ?? 0) / 1000)
        entry.p99.append(Double(service?["p99"]?.int64Value ?? 0) / 1000)
        entry.wall.append(wall)
        samples[handler] = entry
      }
    }
    return ["forkd-pager", "minimal C", "file (no pager)"].map { name in
      let s = samples[name]!
      return HandlerRow(
        handler: name, rounds: handlerRounds, faults: Summary(s.faults).p50, serviceP50US: Summary(s.p50),
        serviceP99US: Summary(s.p99), workloadMS: Summary(s.wall))
    }
  }

  private func renderHandlers(_ rows: [HandlerRow]) -> String {
    guard let pager = rows.first(where: { $0.handler == "forkd-pager" }),
      let c = rows.first(where: { $0.handler == "minimal C" })
    else { return "" }
    var lines = [
      "handler comparison: one child at a time reads \(handlerPages) pages; \(handlerRounds) rounds, interleaved; medians over rounds (p90 in brackets)",
      "| handler | faults per child | service p50 µs | service p99 µs | workload ms | workload per page µs |",
      "|---|---|---|---|---|---|",
    ]
    for r in rows {
      lines.append(
        "| \(r.handler) | \(Int(r.faults)) | \(format(r.serviceP50US.p50)) (\(format(r.serviceP50US.p90))) | \(format(r.serviceP99US.p50)) (\(format(r.serviceP99US.p90))) | \(format(r.workloadMS.p50, decimals: 1)) (\(format(r.workloadMS.p90, decimals: 1))) | \(format(r.workloadMS.p50 * 1000 / Double(handlerPages), decimals: 1)) |"
      )
    }
    lines.append(
      "forkd-pager / minimal C: service p50 \(format(pager.serviceP50US.p50 / max(c.serviceP50US.p50, 0.001)))×, p99 \(format(pager.serviceP99US.p50 / max(c.serviceP99US.p50, 0.001)))×, end to end (workload) \(format(pager.workloadMS.p50 / max(c.workloadMS.p50, 0.001)))×"
    )
    return lines.joined(separator: "\n")
  }

  private func measure(_ topology: Topology, n: Int, snapshot: String, base: String, sums: (UInt64, UInt64)) throws
    -> Row
  {
    try FileSystem.makeDirectories(base)
    var shared: PagerProcess? = nil
    var pagerStartMS = 0.0
    let t0 = Clock.monotonicNanoseconds()
    if topology != .perChild {
      shared = try launchShared(base + "/shared-0", topology)
      pagerStartMS = ms(Clock.monotonicNanoseconds() - t0)
    }
    var kids: [Child] = []
    defer {
      for kid in kids { kid.stop() }
      if let shared {
        shared.signal(SIGTERM)
        shared.wait(timeoutMS: 5000)
      }
    }
    for index in 0..<n {
      let started = Clock.monotonicNanoseconds()
      kids.append(
        try Child.restore(
          snapshot: snapshot, runDirectory: base + "/c\(index)", backend: .uffd(policy: .restart),
          sharedPager: shared))
      if topology == .perChild && index == 0 { pagerStartMS = ms(kids[0].vmm.ready.spawnedAt - started) }
    }
    let agents = try kids.map { try $0.vmm.agent() }
    for agent in agents { _ = try agent.ping() }
    let spawnMS = ms(Clock.monotonicNanoseconds() - t0)

    var pagers: [PagerProcess] { shared.map { [$0] } ?? kids.compactMap(\.pager) }
    func pss(_ pids: [pid_t]) -> Double { Double(pids.reduce(0) { $0 + (smapsRollupField($1, "Pss") ?? 0) }) / 1024 }
    func allPIDs() -> [pid_t] { kids.map(\.vmm.pid) + pagers.map(\.pid) }
    let idlePSS = pss(allPIDs())
    let idlePagerPSS = pss(pagers.map(\.pid))
    let cpuStart = pagers.reduce(0) { $0 + (cpuNanoseconds($1.pid) ?? 0) }
    let ticksStart = pagers.reduce(0) { $0 + (cpuTicks($1.pid) ?? 0) }

    // Workload: every child checksums `pages` at once; every page is a fault.
    let w0 = Clock.monotonicNanoseconds()
    let pending = try agents.map { try $0.send(.checksum(pages: pages)) }
    var wrong = 0
    for (agent, request) in zip(agents, pending) {
      if try agent.checksumResult(agent.receive(request, timeoutMS: 600_000)) != sums.0 { wrong += 1 }
    }
    guard wrong == 0 else { throw ValidationError("\(wrong) of \(n) children returned a wrong checksum") }
    let workloadMS = ms(Clock.monotonicNanoseconds() - w0)
    let cpuWorkload = pagers.reduce(0) { $0 + (cpuNanoseconds($1.pid) ?? 0) } - cpuStart
    let ticksWorkload = pagers.reduce(0) { $0 + (cpuTicks($1.pid) ?? 0) } - ticksStart
    let workloadPSS = pss(allPIDs())
    let workloadPagerPSS = pss(pagers.map(\.pid))
    // Service time over every fault of every pager: the pagers' histograms merged.
    var histogram: [UInt64: UInt64] = [:]
    var faults: Int64 = 0
    for pager in pagers {
      let stats = try pager.stats()
      faults += stats["faults"]?.int64Value ?? 0
      for pair in stats["histogram"]?.arrayValue ?? [] {
        guard let bound = pair.arrayValue?.first?.int64Value, let count = pair.arrayValue?.last?.int64Value else {
          continue
        }
        histogram[UInt64(bound), default: 0] += UInt64(count)
      }
    }
    func percentile(_ p: Double) -> Double {
      let total = histogram.values.reduce(0, +)
      guard total > 0 else { return 0 }
      let rank = UInt64((p * Double(total)).rounded(.up))
      var seen: UInt64 = 0
      for bound in histogram.keys.sorted() {
        seen += histogram[bound]!
        if seen >= rank { return Double(bound) / 1000 }
      }
      return 0
    }

    // Blast radius: all children read the next `pages` pages; one pager is SIGKILLed once it
    // has served a few of them; count the children that lose their pager and time the recovery.
    let victimPager = pagers[0]
    let before = try victimPager.stats()["faults"]?.int64Value ?? 0
    let done = CompletionTimes(count: n)
    let b0 = Clock.monotonicNanoseconds()
    let blastPending = try agents.map { try $0.send(.checksum(pages: 2 * pages)) }
    var threads: [OSThread] = []
    for (index, (agent, request)) in zip(agents, blastPending).enumerated() {
      let expected = sums.1
      threads.append(
        try OSThread.start(name: "bench-\(index)") {
          let sum = try? agent.checksumResult(agent.receive(request, timeoutMS: 600_000))
          done.finish(index, ok: sum == expected)
        })
    }
    let deadline = Clock.monotonicNanoseconds() + 30_000_000_000
    while Clock.monotonicNanoseconds() < deadline {
      if ((try? victimPager.stats())?["faults"]?.int64Value ?? 0) >= before + 8 { break }
      Clock.sleep(milliseconds: 1)
    }
    let killedAt = Clock.monotonicNanoseconds()
    victimPager.signal(SIGKILL)
    var detectMS = 0.0
    var recoverMS = 0.0
    var stalled = 0
    switch topology {
    case .perChild:
      let victim = kids[0]
      _ = victim.waitForPagerExit(timeoutMS: 5000)
      detectMS = ms(Clock.monotonicNanoseconds() - killedAt)
      stalled = countDetached(kids)
      _ = try victim.handlePagerExit()
      recoverMS = ms(Clock.monotonicNanoseconds() - killedAt)
    case .shared, .sharedNice:
      victimPager.wait(timeoutMS: 5000)
      detectMS = ms(Clock.monotonicNanoseconds() - killedAt)
      stalled = countDetached(kids)
      let replacement = try launchShared(base + "/shared-1", topology)
      // Every child is re-attached at once (a daemon would do the same), one thread each.
      let errors = CompletionTimes(count: n)
      let attachers = try kids.enumerated().map { (index, kid) in
        try OSThread.start(name: "attach-\(index)") {
          let ok = (try? kid.attachPager(socket: replacement.socket)) != nil
          errors.finish(index, ok: ok)
        }
      }
      for thread in attachers { thread.join() }
      shared = replacement
      let notAttached = errors.snapshot().filter { !$0.ok }.count
      guard notAttached == 0 else {
        throw ValidationError("\(notAttached) children could not attach the new shared pager")
      }
      recoverMS = ms(Clock.monotonicNanoseconds() - killedAt)
    }
    for thread in threads { thread.join() }
    let finished = done.snapshot()
    let blastWorkloadMS = ms((finished.compactMap(\.at).max() ?? b0) - b0)
    let affected = topology == .perChild ? [0] : Array(0..<n)
    let lastAffected = affected.compactMap { finished[$0].at }.max() ?? killedAt
    return Row(
      topology: topology, children: n, spawnMS: spawnMS, pagerProcesses: topology == .perChild ? n : 1,
      idlePSSMiB: idlePSS, idlePagerPSSMiB: idlePagerPSS, workloadPSSMiB: workloadPSS,
      workloadPagerPSSMiB: workloadPagerPSS, pagerCPUStartMS: Double(cpuStart) / 1e6,
      pagerCPUWorkloadMS: Double(cpuWorkload) / 1e6,
      pagerTicksWorkload: ticksWorkload, workloadMS: workloadMS, faults: faults, serviceP50US: percentile(0.50),
      serviceP99US: percentile(0.99), pagerStartMS: pagerStartMS, stalled: stalled,
      failed: finished.filter { !$0.ok }.count, detectMS: detectMS, recoverMS: recoverMS,
      lastAffectedDoneMS: lastAffected > killedAt ? ms(lastAffected - killedAt) : 0, blastWorkloadMS: blastWorkloadMS)
  }

  private func launchShared(_ path: String, _ topology: Topology) throws -> PagerProcess {
    let pager = try PagerProcess.launch(socket: path + ".sock", logPath: path + ".log", shared: true)
    if topology == .sharedNice && setpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(pager.pid), -10) != 0 {
      throw ValidationError("cannot renice the shared pager \(pager.pid) to -10 (errno \(errno))")
    }
    return pager
  }

  /// Children whose VM reports no attached pager right now.
  /// (Row.median is below.)
  private func countDetached(_ kids: [Child]) -> Int {
    kids.filter { kid in
      guard let status = try? kid.vmm.control().status(timeoutMS: 5000) else { return true }
      return status.pager?.attached == false
    }.count
  }

  private func renderTables(_ rows: [Row]) -> String {
    var lines = [
      "pagers bench: \(memoryMib) MiB guest; medians of \(rounds) rounds; workload: every child checksums \(pages) snapshot pages at once (each a fault); blast: the next \(pages), one pager SIGKILLed after 8 of its faults",
      "",
      "| topology | N | pager processes | pager start ms | pager CPU until idle ms | spawn N + ping ms | PSS per child idle MiB (pager share) | PSS per child after workload MiB (pager share) | pager CPU in workload ms (per child) | workload ms | faults | service p50 / p99 µs |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows {
      let n = Double(r.children)
      lines.append(
        "| \(r.topology.rawValue) | \(r.children) | \(r.pagerProcesses) | \(format(r.pagerStartMS)) | \(format(r.pagerCPUStartMS)) | \(format(r.spawnMS, decimals: 1)) | \(format(r.idlePSSMiB / n)) (\(format(r.idlePagerPSSMiB / n))) | \(format(r.workloadPSSMiB / n)) (\(format(r.workloadPagerPSSMiB / n))) | \(format(r.pagerCPUWorkloadMS, decimals: 1)) (\(format(r.pagerCPUWorkloadMS / n, decimals: 2))) | \(format(r.workloadMS, decimals: 0)) | \(r.faults) | \(format(r.serviceP50US)) / \(format(r.serviceP99US)) |"
      )
    }
    lines += [
      "",
      "| topology | N | children stalled by the kill | failed | kill → death seen ms | kill → new pager serving ms | kill → last stalled child done ms | blast workload ms |",
      "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows {
      lines.append(
        "| \(r.topology.rawValue) | \(r.children) | \(r.stalled) | \(r.failed) | \(format(r.detectMS)) | \(format(r.recoverMS)) | \(format(r.lastAffectedDoneMS, decimals: 0)) | \(format(r.blastWorkloadMS, decimals: 0)) |"
      )
    }
    return lines.joined(separator: "\n")
  }

  private func renderJSON(_ rows: [Row], _ handlers: [HandlerRow]) -> String {
    JSONValue.object([
      "handlers": .array(
        handlers.map { h in
          .object([
            "handler": .string(h.handler), "rounds": .integer(Int64(h.rounds)), "faults": .double(h.faults),
            "service_p50_us": .object(["p50": .double(h.serviceP50US.p50), "p90": .double(h.serviceP50US.p90)]),
            "service_p99_us": .object(["p50": .double(h.serviceP99US.p50), "p90": .double(h.serviceP99US.p90)]),
            "workload_ms": .object(["p50": .double(h.workloadMS.p50), "p90": .double(h.workloadMS.p90)]),
          ])
        }),
      "bench": .string("pagers"), "memory_mib": .integer(Int64(memoryMib)), "pages": .integer(Int64(pages)),
      "rows": .array(
        rows.map { r in
          .object([
            "topology": .string(r.topology.rawValue), "children": .integer(Int64(r.children)),
            "pager_processes": .integer(Int64(r.pagerProcesses)), "spawn_ms": .double(r.spawnMS),
            "pss_idle_mib": .double(r.idlePSSMiB), "pss_idle_pagers_mib": .double(r.idlePagerPSSMiB),
            "pss_after_workload_mib": .double(r.workloadPSSMiB),
            "pss_after_workload_pagers_mib": .double(r.workloadPagerPSSMiB),
            "pager_cpu_workload_ms": .double(r.pagerCPUWorkloadMS),
            "pager_cpu_until_idle_ms": .double(r.pagerCPUStartMS),
            "pager_start_ms": .double(r.pagerStartMS),
            "pager_cpu_workload_ticks": .integer(Int64(r.pagerTicksWorkload)), "workload_ms": .double(r.workloadMS),
            "faults": .integer(r.faults),
            "service_us": .object(["p50": .double(r.serviceP50US), "p99": .double(r.serviceP99US)]),
            "blast": .object([
              "stalled": .integer(Int64(r.stalled)), "failed": .integer(Int64(r.failed)),
              "detect_ms": .double(r.detectMS), "recover_ms": .double(r.recoverMS),
              "last_stalled_done_ms": .double(r.lastAffectedDoneMS), "workload_ms": .double(r.blastWorkloadMS),
            ]),
          ])
        }),
    ]).serialized(pretty: true)
  }
}

/// When each child's reply arrived (threads write, the bench reads after joining them).
final class CompletionTimes: @unchecked Sendable {
  private let lock = ConditionLock()
  private var times: [(at: UInt64?, ok: Bool)]
  init(count: Int) { times = Array(repeating: (nil, false), count: count) }
  func finish(_ index: Int, ok: Bool) {
    let now = Clock.monotonicNanoseconds()
    lock.withLock { times[index] = (now, ok) }
  }
  func snapshot() -> [(at: UInt64?, ok: Bool)] { lock.withLock { times } }
}

/// CPU time a process has run (ns), from /proc/<pid>/schedstat (exact, unlike clock ticks).
func cpuNanoseconds(_ pid: pid_t) -> UInt64? {
  guard let bytes = try? FileSystem.readFile("/proc/\(pid)/schedstat") else { return nil }
  return String(decoding: bytes, as: UTF8.self).split(separator: " ").first.flatMap { UInt64($0) }
}

/// utime + stime of a process in clock ticks, from /proc/<pid>/stat (fields 14 and 15).
func cpuTicks(_ pid: pid_t) -> UInt64? {
  guard let bytes = try? FileSystem.readFile("/proc/\(pid)/stat") else { return nil }
  let text = String(decoding: bytes, as: UTF8.self)
  guard let close = text.lastIndex(of: ")") else { return nil }
  let fields = text[text.index(after: close)...].split(separator: " ")
  // After "pid (comm)": field 3 is fields[0]; utime (14) and stime (15) are fields[11] and [12].
  guard fields.count > 12, let user = UInt64(fields[11]), let system = UInt64(fields[12]) else { return nil }
  return user + system
}

/// The directory of the running executable (to find repository files from .build/<config>/).
func executableDirectory() -> String {
  var buffer = [CChar](repeating: 0, count: 4096)
  let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
  guard n > 0 else { return "." }
  let path = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
  return String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)])
}

extension PagerTopologyBench.Row {
  /// Field by field medians over rounds (the counts are the same in every round, or nearly).
  static func median(_ rows: [Self]) -> Self {
    func m(_ key: (Self) -> Double) -> Double { Summary(rows.map(key)).p50 }
    var r = rows[0]
    r.spawnMS = m(\.spawnMS)
    r.idlePSSMiB = m(\.idlePSSMiB)
    r.idlePagerPSSMiB = m(\.idlePagerPSSMiB)
    r.workloadPSSMiB = m(\.workloadPSSMiB)
    r.workloadPagerPSSMiB = m(\.workloadPagerPSSMiB)
    r.pagerCPUStartMS = m(\.pagerCPUStartMS)
    r.pagerCPUWorkloadMS = m(\.pagerCPUWorkloadMS)
    r.pagerTicksWorkload = UInt64(m { Double($0.pagerTicksWorkload) })
    r.workloadMS = m(\.workloadMS)
    r.faults = Int64(m { Double($0.faults) })
    r.serviceP50US = m(\.serviceP50US)
    r.serviceP99US = m(\.serviceP99US)
    r.pagerStartMS = m(\.pagerStartMS)
    r.stalled = Int(m { Double($0.stalled) })
    r.failed = rows.map(\.failed).max() ?? 0
    r.detectMS = m(\.detectMS)
    r.recoverMS = m(\.recoverMS)
    r.lastAffectedDoneMS = m(\.lastAffectedDoneMS)
    r.blastWorkloadMS = m(\.blastWorkloadMS)
    return r
  }
}
