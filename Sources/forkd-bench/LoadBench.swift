import ArgumentParser
import CLISupport
import ForkdClient
import Protocol
import Syscalls
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// Load on one supervisor (issue 8, item 4): spawn/delete cycles, then many concurrent API
/// clients over loopback TCP. Records the supervisor's descriptors and RSS before and after and
/// fails unless every request was answered with a documented status and neither grew past its
/// bound. Starts its own forkd-supervisor in a scratch directory.
struct LoadBench: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "load",
    abstract: "Spawn/delete cycles and concurrent API clients against one supervisor; checks fds, RSS and statuses.")

  @Option(help: "Spawn/delete cycles (one child each).") var cycles: Int = 1000
  @Option(help: "Concurrent API clients over loopback TCP.") var clients: Int = 200
  @Option(help: "Requests per client.") var requestsPerClient: Int = 20
  @Option(help: "Backend of the supervisor: auto (its default), file, uffd or shmem.") var backend: String = "auto"
  @Option(help: "Guest memory in MiB.") var memoryMib: Int = 16
  @Option(help: "Allowed growth of the supervisor's open descriptors.") var fdBound: Int = 8
  @Option(help: "Allowed growth of the supervisor's RSS in MiB.") var rssBoundMib: Double = 64
  @Option(help: "Directory for the supervisor's state and run directories.") var workDir: String?
  @Flag(help: "Print JSON.") var json = false

  /// Statuses the v1 API documents (docs/api.md); anything else, or no answer, is a failure.
  static let documented: Set<Int> = [200, 201, 204, 400, 401, 404, 405, 409, 503]

  func run() throws {
    guard cycles >= 0, clients >= 0, requestsPerClient >= 1 else {
      throw ValidationError("--cycles and --clients must be >= 0, --requests-per-client >= 1")
    }
    let scratch = try ScratchDirectory(prefix: "forkd-bench-load", base: workDir)
    defer { scratch.remove() }
    let port = UInt16(20000 + getpid() % 20000)
    let daemon = try LocalDaemon(
      directory: scratch.path, backend: backend,
      extraArguments: ["--listen-tcp", "127.0.0.1:\(port)"])
    defer { daemon.stop() }
    _ = try daemon.expect(
      201, "POST", "/v1/snapshots", body: .object(["tag": .string("load"), "memory_mib": .integer(Int64(memoryMib))]))
    // One cycle first, so lazily created state (thread pools, caches) is not counted as growth.
    try cycle(daemon.api, statuses: StatusCounts())
    let before = Footprint(daemon.pid)

    let cycleStatuses = StatusCounts()
    let t0 = Clock.monotonicNanoseconds()
    for _ in 0..<cycles { try cycle(daemon.api, statuses: cycleStatuses) }
    let cycleSeconds = Double(Clock.monotonicNanoseconds() - t0) / 1e9
    let afterCycles = Footprint(daemon.pid)

    // Concurrent clients: reads, pings of live children, refusals (404/400/405), spawn + delete.
    let live = try daemon.expect(
      201, "POST", "/v1/sandboxes", body: .object(["snapshot_tag": .string("load"), "n": .integer(4)]))
    let ids = (live.json?.arrayValue ?? []).compactMap { $0["id"]?.stringValue }
    let tcp = APIClient(endpoint: .tcp(host: "127.0.0.1", port: port))
    let clientStatuses = StatusCounts()
    let t1 = Clock.monotonicNanoseconds()
    let requests = requestsPerClient
    _ = try concurrently(clients, width: clients) { client in
      for r in 0..<requests {
        let (method, path, body): (String, String, JSONValue?) =
          switch (client + r) % 8 {
          case 0: ("GET", "/healthz", nil)
          case 1: ("GET", "/v1/sandboxes", nil)
          case 2: ("GET", "/v1/snapshots/load/info", nil)
          case 3: ("POST", "/v1/sandboxes/\(ids[(client + r) % ids.count])/ping", nil)
          case 4: ("GET", "/v1/sandboxes/sb-000000000000", nil)
          case 5: ("POST", "/v1/snapshots", .object(["tag": .string("../x")]))
          case 6: ("PUT", "/v1/snapshots", nil)
          default: ("GET", "/metrics", nil)
          }
        do {
          clientStatuses.add(try tcp.request(method, path, body: body).status)
        } catch {
          clientStatuses.add(-1)
        }
      }
      if client % 20 == 0 {
        do {
          let spawned = try tcp.request(
            "POST", "/v1/sandboxes", body: .object(["snapshot_tag": .string("load")]))
          clientStatuses.add(spawned.status)
          if let id = spawned.json?.arrayValue?.first?["id"]?.stringValue {
            clientStatuses.add(try tcp.request("DELETE", "/v1/sandboxes/\(id)").status)
          }
        } catch {
          clientStatuses.add(-1)
        }
      }
    }
    let clientSeconds = Double(Clock.monotonicNanoseconds() - t1) / 1e9
    for id in ids { _ = try? daemon.api.request("DELETE", "/v1/sandboxes/\(id)") }
    // Let closed connections and exited children be reaped before the last measurement.
    var after = Footprint(daemon.pid)
    for _ in 0..<50 where after.fds > before.fds {
      Clock.sleep(milliseconds: 100)
      after = Footprint(daemon.pid)
    }
    let leftover = (try? FileSystem.listDirectory(scratch.path + "/run/sandboxes"))?.count ?? -1

    let cycleCounts = cycleStatuses.counts
    let clientCounts = clientStatuses.counts
    let undocumented = (cycleCounts.merging(clientCounts, uniquingKeysWith: +)).filter {
      !Self.documented.contains($0.key)
    }
    let fdGrowth = after.fds - before.fds
    let rssGrowth = after.rssMiB - before.rssMiB
    let passed = undocumented.isEmpty && fdGrowth <= fdBound && rssGrowth <= rssBoundMib && leftover == 0

    func countsJSON(_ c: [Int: Int]) -> JSONValue {
      .object(Dictionary(uniqueKeysWithValues: c.map { (String($0.key), JSONValue.integer(Int64($0.value))) }))
    }
    if json {
      print(
        JSONValue.object([
          "bench": .string("load"), "backend": .string(backend), "cycles": .integer(Int64(cycles)),
          "clients": .integer(Int64(clients)), "requests_per_client": .integer(Int64(requestsPerClient)),
          "cycle_seconds": .double(cycleSeconds), "client_seconds": .double(clientSeconds),
          "fds_before": .integer(Int64(before.fds)), "fds_after_cycles": .integer(Int64(afterCycles.fds)),
          "fds_after": .integer(Int64(after.fds)), "rss_mib_before": .double(before.rssMiB),
          "rss_mib_after_cycles": .double(afterCycles.rssMiB), "rss_mib_after": .double(after.rssMiB),
          "fd_bound": .integer(Int64(fdBound)), "rss_bound_mib": .double(rssBoundMib),
          "cycle_statuses": countsJSON(cycleCounts), "client_statuses": countsJSON(clientCounts),
          "undocumented": countsJSON(undocumented), "leftover_run_dirs": .integer(Int64(leftover)),
          "passed": .bool(passed),
        ]).serialized(pretty: true))
    } else {
      func show(_ c: [Int: Int]) -> String {
        c.sorted { $0.key < $1.key }.map { "\($0.key == -1 ? "no answer" : String($0.key))×\($0.value)" }
          .joined(separator: " ")
      }
      print("load bench: backend \(backend), \(memoryMib) MiB guest, supervisor pid \(daemon.pid)")
      print("| phase | requests | statuses | seconds | supervisor fds | supervisor RSS MiB |")
      print("|---|---|---|---|---|---|")
      print("| start (after one warm-up cycle) | | | | \(before.fds) | \(format(before.rssMiB)) |")
      print(
        "| \(cycles) spawn/delete cycles | \(cycleCounts.values.reduce(0, +)) | \(show(cycleCounts)) | \(format(cycleSeconds)) | \(afterCycles.fds) | \(format(afterCycles.rssMiB)) |"
      )
      print(
        "| \(clients) concurrent TCP clients × \(requestsPerClient) | \(clientCounts.values.reduce(0, +)) | \(show(clientCounts)) | \(format(clientSeconds)) | \(after.fds) | \(format(after.rssMiB)) |"
      )
      print(
        "growth: fds \(fdGrowth) (bound \(fdBound)), RSS \(format(rssGrowth)) MiB (bound \(format(rssBoundMib))); undocumented statuses: \(undocumented.isEmpty ? "none" : show(undocumented)); leftover run dirs: \(leftover)"
      )
    }
    if !passed { throw ExitCode(1) }
  }

  private func cycle(_ api: APIClient, statuses: StatusCounts) throws {
    let spawned = try api.request("POST", "/v1/sandboxes", body: .object(["snapshot_tag": .string("load")]))
    statuses.add(spawned.status)
    guard spawned.status == 201, let id = spawned.json?.arrayValue?.first?["id"]?.stringValue else {
      throw ValidationError("spawn: \(spawned.status) \(spawned.text)")
    }
    statuses.add(try api.request("DELETE", "/v1/sandboxes/\(id)").status)
  }
}

/// A process's open descriptors and resident set.
struct Footprint {
  let fds: Int
  let rssMiB: Double

  init(_ pid: pid_t) {
    fds = (try? FileSystem.listDirectory("/proc/\(pid)/fd"))?.count ?? -1
    var rss = 0.0
    if let bytes = try? FileSystem.readFile("/proc/\(pid)/status") {
      for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") where line.hasPrefix("VmRSS:") {
        rss = Double(line.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0) / 1024
      }
    }
    rssMiB = rss
  }
}

/// Status codes seen, thread-safe (-1: no answer).
final class StatusCounts: @unchecked Sendable {
  private let lock = ConditionLock()
  private var values: [Int: Int] = [:]
  func add(_ status: Int) { lock.withLock { values[status, default: 0] += 1 } }
  var counts: [Int: Int] { lock.withLock { values } }
}
