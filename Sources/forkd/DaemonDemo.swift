import ArgumentParser
import CLISupport
import ForkdClient
import Protocol
import Syscalls
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

extension Demo {
  /// `forkd serve` in the background, a warmed parent, `childCount` children spawned and pinged
  /// through the v1 API, spawn time and memory per child, then everything removed again.
  func runThroughDaemon() throws {
    let scratch = try ScratchDirectory(prefix: "forkd-demo", base: workDir)
    defer { if keep { print("kept \(scratch.path)") } else { scratch.remove() } }
    let seed: UInt64 = 0x5EED_F0_4D
    let counter: Int64 = 41
    print(
      "forkd demo: forkd serve in the background, a warmed parent, \(childCount) children through the v1 API (backend \(backendName), work dir \(scratch.path))"
    )

    var t0 = Clock.monotonicNanoseconds()
    let daemon = try LocalDaemon(directory: scratch.path, backend: backendName)
    var daemonStopped = false
    defer { if !daemonStopped { daemon.stop() } }
    print(
      "daemon    forkd serve pid \(daemon.pid) answering on \(daemon.socket) after \(format(ms(Clock.monotonicNanoseconds() - t0))) ms"
    )

    // 1. The warmed parent: boot the test guest, run the warm-up steps, snapshot it.
    t0 = Clock.monotonicNanoseconds()
    let warmup: [WarmupStep] = [
      .fill(pages: pages, seed: seed), .counter(delta: counter),
      .kvSet(key: "greeting", value: "hello from the parent"),
    ]
    _ = try daemon.expect(
      201, "POST", "/v1/snapshots",
      body: .object([
        "tag": .string("demo"), "memory_mib": .integer(Int64(memoryMib)), "warmup": .array(warmup.map(\.jsonValue)),
      ]))
    let createMS = ms(Clock.monotonicNanoseconds() - t0)
    let info = try daemon.expect(200, "GET", "/v1/snapshots/demo/info").json
    let dataMiB = Double(info?["memory_physical_bytes"]?.int64Value ?? 0) / 1_048_576
    print(
      "parent    snapshot \"demo\" created in \(format(createMS)) ms: booted, filled \(pages) pages, counter \(counter), kv greeting; \(format(dataMiB)) MiB of data in a \(memoryMib) MiB memory.bin"
    )

    // 2. Fan out: one request for every child, then every child pinged, 8 requests in flight.
    t0 = Clock.monotonicNanoseconds()
    let spawned = try daemon.expect(
      201, "POST", "/v1/sandboxes",
      body: .object(["snapshot_tag": .string("demo"), "n": .integer(Int64(childCount))]))
    let spawnMS = ms(Clock.monotonicNanoseconds() - t0)
    let entries = spawned.json?.arrayValue ?? []
    let ids = entries.compactMap { $0["id"]?.stringValue }
    guard ids.count == childCount else {
      throw ValidationError("spawn returned \(ids.count) of \(childCount) children")
    }
    print("spawn     \(childCount) children in \(format(spawnMS)) ms (POST /v1/sandboxes, n=\(childCount))")

    let pongs = PongTable(count: ids.count)
    let api = daemon.api
    let failed = try concurrently(ids.count, width: 8) { index in
      let response = try api.request("POST", "/v1/sandboxes/\(ids[index])/ping")
      guard response.status == 200, let body = response.json else {
        throw ValidationError("\(ids[index]): \(response.status) \(response.text)")
      }
      pongs.set(
        index, counter: body["counter"]?.int64Value ?? -1, rttMS: Double(body["rtt_us"]?.int64Value ?? 0) / 1000)
    }
    let allAnsweredMS = ms(Clock.monotonicNanoseconds() - t0)
    let rtt = Summary(pongs.rtts)
    print(
      "ping      all \(ids.count - failed.count) of \(ids.count) answered \(format(allAnsweredMS)) ms after the spawn request began (agent round trip p50 \(format(rtt.p50)) ms, p90 \(Summary.text(rtt.p90IfEnough)) ms)"
    )

    // 3. Memory per child: the PSS of its forkd-vmm and forkd-pager, summed.
    var perChild: [Double] = []
    for entry in entries {
      var kib: UInt64 = 0
      for key in ["pid", "pager_pid"] {
        if let pid = entry[key]?.int64Value { kib += smapsRollupField(pid_t(pid), "Pss") ?? 0 }
      }
      perChild.append(Double(kib) / 1024)
    }
    let pss = Summary(perChild)
    print(
      "memory    PSS per child p50 \(format(pss.p50)) MiB, max \(format(pss.max)) MiB (vmm + pager); supervisor \(format(daemon.pssMiB)) MiB"
    )
    print("")
    print("child            vmm pid  pager pid  counter  ping rtt ms  PSS MiB")
    let shown = Array(0..<min(5, ids.count)) + (ids.count > 5 ? [ids.count - 1] : [])
    for (position, index) in shown.enumerated() {
      if position == 5 { print("… \(ids.count - 6) more") }
      let entry = entries[index]
      print(
        "\(ids[index].padding(toLength: 15))  \(pad(string(entry["pid"]), 7))  \(pad(string(entry["pager_pid"]), 9))  \(pad("\(pongs.counters[index])", 7))  \(pad(format(pongs.rtts[index]), 11))  \(pad(format(perChild[index]), 7))"
      )
    }
    print("")
    let wrong = (0..<ids.count).filter { !failed.contains($0) && pongs.counters[$0] != counter }

    // 4. Clean up: every child, the snapshot, the daemon; then check nothing of them is left.
    t0 = Clock.monotonicNanoseconds()
    _ = try concurrently(ids.count, width: 4) { index in _ = try api.request("DELETE", "/v1/sandboxes/\(ids[index])") }
    _ = try daemon.expect(204, "DELETE", "/v1/snapshots/demo")
    daemon.stop()
    daemonStopped = true
    let leftovers = processes(mentioning: scratch.path)
    print(
      "cleanup   \(ids.count) children and the snapshot deleted, daemon stopped in \(format(ms(Clock.monotonicNanoseconds() - t0))) ms; \(leftovers.isEmpty ? "no process left" : "LEFT RUNNING: \(leftovers)")"
    )

    if failed.isEmpty, wrong.isEmpty, leftovers.isEmpty {
      print("all \(ids.count) children answered with the parent's counter \(counter): they run from its memory")
    } else {
      if !failed.isEmpty { print("\(failed.count) children did not answer ping: \(failed.map { ids[$0] })") }
      if !wrong.isEmpty { print("\(wrong.count) children reported another counter than the parent's \(counter)") }
      throw ExitCode(ExitStatus.checkFailed)
    }
  }
}

/// What each child's pong said, filled from the ping threads.
final class PongTable: @unchecked Sendable {
  private let lock = ConditionLock()
  private var counterValues: [Int64]
  private var rttValues: [Double]
  init(count: Int) {
    counterValues = Array(repeating: -1, count: count)
    rttValues = Array(repeating: 0, count: count)
  }
  func set(_ index: Int, counter: Int64, rttMS: Double) {
    lock.withLock {
      counterValues[index] = counter
      rttValues[index] = rttMS
    }
  }
  var counters: [Int64] { lock.withLock { counterValues } }
  var rtts: [Double] { lock.withLock { rttValues } }
}

extension String {
  fileprivate func padding(toLength width: Int) -> String {
    count >= width ? self : self + String(repeating: " ", count: width - count)
  }
}
