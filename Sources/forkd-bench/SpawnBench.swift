import ArgumentParser
import CLISupport
import ForkdClient
import Protocol
import Syscalls
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// Spawn through the API: wall time until every child answered ping, PSS per child, and the
/// supervisor's own footprint. Starts its own forkd-supervisor in a scratch directory.
struct SpawnBench: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "spawn", abstract: "Spawn 1, 10 and 100 children through the v1 API until all answer ping.")

  @Option(parsing: .upToNextOption, help: "Fan-out sizes.") var sizes: [Int] = [1, 10, 100]
  @Option(help: "Rounds per size.") var rounds: Int = 3
  @Option(help: "Backend of the supervisor: auto (its default), file, uffd or shmem.") var backend: String = "auto"
  @Option(help: "Guest memory in MiB.") var memoryMib: Int = 32
  @Option(help: "Directory for the supervisor's state and run directories.") var workDir: String?
  @Flag(help: "Print JSON.") var json = false
  @Flag(help: "Skip the same-run C loop baseline (bench/restore-loop.c).") var noBaseline = false
  @Flag(help: "Run the supervisor with --no-jail (children unjailed), to measure what the jail costs.")
  var noJail = false

  func run() throws {
    let scratch = try ScratchDirectory(prefix: "forkd-bench-spawn", base: workDir)
    defer { scratch.remove() }
    let daemon = try LocalDaemon(
      directory: scratch.path, backend: backend, extraArguments: noJail ? ["--no-jail"] : [])
    defer { daemon.stop() }
    let api = daemon.api
    let idlePSS = Double(smapsRollupField(daemon.pid, "Pss") ?? 0) / 1024
    let created = try api.request(
      "POST", "/v1/snapshots", body: .object(["tag": .string("bench"), "memory_mib": .integer(Int64(memoryMib))]))
    guard created.status == 201 else { throw ValidationError("snapshot: \(created.text)") }

    let baseline =
      noBaseline
      ? nil
      : try RestoreLoopBaseline(
        snapshot: scratch.path + "/state/snapshots/bench", directory: scratch.path + "/c-loop")

    var results:
      [(size: Int, wall: Summary, spawn: Summary, pssPerChild: Double, supervisorPSS: Double, cLoop: Summary?)] = []
    for size in sizes {
      var walls: [Double] = []
      var spawns: [Double] = []
      var pss: [Double] = []
      var supervisorPSS = 0.0
      for _ in 0..<rounds {
        let t0 = Clock.monotonicNanoseconds()
        let response = try api.request(
          "POST", "/v1/sandboxes", body: .object(["snapshot_tag": .string("bench"), "n": .integer(Int64(size))]))
        guard response.status == 201, let list = response.json?.arrayValue else {
          throw ValidationError("spawn \(size): \(response.text)")
        }
        spawns.append(ms(Clock.monotonicNanoseconds() - t0))
        let ids = list.compactMap { $0["id"]?.stringValue }
        // Ping every child, 8 requests in flight at a time.
        let failed = try concurrently(ids.count, width: 8) { index in
          guard try api.request("POST", "/v1/sandboxes/\(ids[index])/ping").status == 200 else {
            throw ValidationError("no pong")
          }
        }
        if let first = failed.first { throw ValidationError("child \(ids[first]) did not answer ping") }
        walls.append(ms(Clock.monotonicNanoseconds() - t0))
        var total: UInt64 = 0
        for entry in list {
          for key in ["pid", "pager_pid"] {
            if let pid = entry[key]?.int64Value { total += smapsRollupField(pid_t(pid), "Pss") ?? 0 }
          }
        }
        pss.append(Double(total) / 1024 / Double(max(ids.count, 1)))
        supervisorPSS = Double(smapsRollupField(daemon.pid, "Pss") ?? 0) / 1024
        for id in ids { _ = try? api.request("DELETE", "/v1/sandboxes/\(id)") }
      }
      // The floor for this size, run right after forkd's rounds so both see the same machine.
      let cLoop = try baseline.map { Summary(try $0.run(children: size, rounds: rounds).map(\.totalMS)) }
      results.append((size, Summary(walls), Summary(spawns), Summary(pss).p50, supervisorPSS, cLoop))
    }
    func resultJSON(
      _ r: (size: Int, wall: Summary, spawn: Summary, pssPerChild: Double, supervisorPSS: Double, cLoop: Summary?)
    )
      -> JSONValue
    {
      var o: [String: JSONValue] = [
        "n": .integer(Int64(r.size)), "wall_ms_p50": .double(r.wall.p50), "wall_ms_max": .double(r.wall.max),
        "spawn_response_ms_p50": .double(r.spawn.p50), "pss_per_child_mib": .double(r.pssPerChild),
        "supervisor_pss_mib": .double(r.supervisorPSS),
      ]
      if let c = r.cLoop {
        o["c_loop_ms_p50"] = .double(c.p50)
        o["wall_vs_c_loop"] = .double(r.wall.p50 / max(c.p50, 0.001))
        o["spawn_response_vs_c_loop"] = .double(r.spawn.p50 / max(c.p50, 0.001))
      }
      return .object(o)
    }
    if json {
      print(
        JSONValue.object([
          "bench": .string("spawn"), "backend": .string(backend), "memory_mib": .integer(Int64(memoryMib)),
          "supervisor_idle_pss_mib": .double(idlePSS),
          "results": .array(results.map(resultJSON)),
        ]).serialized(pretty: true))
    } else {
      print(
        "spawn bench through the API: backend \(backend), \(memoryMib) MiB guest, \(rounds) rounds; supervisor idle PSS \(format(idlePSS)) MiB"
      )
      print(
        "| children | spawn + every child answered ping, p50 ms (max) | of which the spawn request, p50 ms | C loop, same run, p50 ms | ping-all / C loop | spawn / C loop | PSS per child MiB (vmm + pager) | supervisor PSS MiB |"
      )
      print("|---|---|---|---|---|---|---|---|")
      for r in results {
        let c = r.cLoop.map { format($0.p50) } ?? "-"
        let wallRatio = r.cLoop.map { format(r.wall.p50 / max($0.p50, 0.001)) + "x" } ?? "-"
        let spawnRatio = r.cLoop.map { format(r.spawn.p50 / max($0.p50, 0.001)) + "x" } ?? "-"
        print(
          "| \(r.size) | \(format(r.wall.p50)) (\(format(r.wall.max))) | \(format(r.spawn.p50)) | \(c) | \(wallRatio) | \(spawnRatio) | \(format(r.pssPerChild)) | \(format(r.supervisorPSS)) |"
        )
      }
    }
  }
}
