import Protocol
import Syscalls
import Testing
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// Open descriptors of this process and what they point at (for leak checks).
func openDescriptors() -> [String: String] {
  var result: [String: String] = [:]
  for name in (try? FileSystem.listDirectory("/proc/self/fd")) ?? [] {
    var buffer = [CChar](repeating: 0, count: 512)
    let n = readlink("/proc/self/fd/\(name)", &buffer, buffer.count - 1)
    // Gone by now: the listing's own directory descriptor (or one closed meanwhile).
    guard n > 0 else { continue }
    result[name] = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
  }
  return result
}

@Suite("forkd-pager: userfaultfd per child", .serialized)
struct PagerTests {
  @Test(
    "20 children fault concurrently; SIGKILL one pager mid-run: the policy applies to that child only",
    arguments: [PagerPolicy.restart, .fail])
  func killOnePager(policy: PagerPolicy) throws {
    let scratch = try Scratch("pager-kill-\(policy.rawValue)")
    let parent = try WarmParent(in: scratch, pages: 512)
    let descriptorsBefore = openDescriptors()
    var children: [Child] = []
    var agents: [AgentClient] = []
    for index in 0..<20 {
      let child = try Child.restore(
        snapshot: parent.snapshot, runDirectory: scratch.path + "/child-\(index)", backend: .uffd(policy: policy))
      children.append(child)
      agents.append(try child.vmm.agent())
    }
    // Every child now faults its 512 data pages in through its own pager, all at once.
    let pending = try agents.map { try $0.send(.checksum(pages: parent.pages)) }
    let victim = 7
    let victimChild = children[victim]
    let victimPIDs = [victimChild.vmm.pid, victimChild.pager!.pid]
    // Kill the victim's pager once it has served some faults but (almost surely) not all:
    // mid-run, whatever the machine's load.
    var servedBeforeKill: Int64 = 0
    let deadline = Clock.monotonicNanoseconds() + 10_000_000_000
    while servedBeforeKill < 20 && Clock.monotonicNanoseconds() < deadline {
      servedBeforeKill = (try? victimChild.pager!.stats())?["faults"]?.int64Value ?? 0
      if servedBeforeKill < 20 { Clock.sleep(milliseconds: 1) }
    }
    victimChild.pager!.signal(SIGKILL)
    #expect(victimChild.waitForPagerExit(timeoutMS: 5000))
    let event = try #require(try victimChild.handlePagerExit())

    switch policy {
    case .restart:
      guard case .restarted(let old, let new, let termination) = event else {
        Issue.record("expected a restart, got \(event)")
        return
      }
      #expect(old != new)
      #expect(termination == .signaled(SIGKILL))
      #expect(victimChild.pagerRestarts == 1)
    case .fail:
      guard case .failed(let termination, let vmmEnd) = event else {
        Issue.record("expected a failure, got \(event)")
        return
      }
      #expect(termination == .signaled(SIGKILL))
      #expect(vmmEnd == .exited(5), "forkd-vmm stops with the pager-lost status")
      for pid in victimPIDs { #expect(!processExists(pid)) }
      #expect(!FileSystem.exists(victimChild.runDirectory), "no socket file or log of the dead child is left")
    }

    for (index, agent) in agents.enumerated() {
      if index == victim && policy == .fail {
        #expect(throws: ControlError.self) { try agent.receive(pending[index], timeoutMS: 5000) }
        continue
      }
      let sum = try agent.checksumResult(agent.receive(pending[index], timeoutMS: 300_000))
      #expect(sum == parent.checksum, "child \(index) finished with the parent's checksum")
    }
    if policy == .restart && servedBeforeKill < Int64(parent.pages) {
      let stats = try #require(victimChild.pager).stats()
      #expect((stats["faults"]?.int64Value ?? 0) > 0, "the new pager served the stalled child")
    }
    agents.removeAll()
    for child in children {
      child.stop()
      #expect(!FileSystem.exists(child.runDirectory))
    }
    children.removeAll()
    let leaked = openDescriptors().filter { descriptorsBefore[$0.key] != $0.value }
    #expect(leaked.isEmpty, "no descriptor of any child is left open: \(leaked)")
  }

  @Test("stats match the pages touched, and holes are answered with zero pages, never read from memory.bin")
  func statsAndHoles() throws {
    let scratch = try Scratch("pager-stats")
    let parent = try WarmParent(in: scratch, pages: 64)
    let child = try Child.restore(
      snapshot: parent.snapshot, runDirectory: scratch.path + "/child", backend: .uffd(policy: .fail))
    defer { child.stop() }
    let pager = try #require(child.pager)
    let agent = try child.vmm.agent()
    _ = try agent.ping()
    // Both per-child processes run under their seccomp filter (mode 2).
    for pid in [pager.pid, child.vmm.pid] {
      let status = String(decoding: try FileSystem.readFile("/proc/\(pid)/status"), as: UTF8.self)
      #expect(status.contains("Seccomp:\t2"), "pid \(pid) is not filtered")
      #expect(status.contains("NoNewPrivs:\t1"))
    }
    let s0 = try pager.stats()
    #expect(try agent.checksum(pages: 64) == parent.checksum)
    let s1 = try pager.stats()
    // Pages 64..<320 were never written by the parent: holes in the sparse memory.bin.
    _ = try agent.checksum(pages: 64 + 256)
    let s2 = try pager.stats()
    func v(_ s: [String: JSONValue], _ key: String) -> Int64 { s[key]?.int64Value ?? -1 }
    #expect(v(s1, "copies") - v(s0, "copies") >= 64, "the 64 filled pages were copied in")
    #expect(v(s2, "zero_pages") - v(s1, "zero_pages") >= 256, "the 256 hole pages were zero-filled")
    #expect(v(s2, "copies") - v(s1, "copies") <= 4, "holes are never copied from the file")
    #expect(v(s2, "copies") <= v(s2, "data_pages_in_source"), "only data pages are ever read from memory.bin")
    #expect(v(s2, "bytes_copied") == v(s2, "copies") * 4096)
    #expect(
      v(s2, "faults") == v(s2, "copies") + v(s2, "zero_pages") + v(s2, "already_mapped"),
      "every fault was served exactly once: \(s2)")
    let service = try #require(s2["service_ns"]?.objectValue)
    #expect((service["p50"]?.int64Value ?? 0) > 0)
    #expect((service["p99"]?.int64Value ?? 0) >= (service["p50"]?.int64Value ?? 0))
  }

  @Test(
    "working-set prefetch: the first child records, later pagers copy those pages before they are asked (jailed: the owner publishes the record)",
    arguments: [false, true])
  func prefetch(jailed: Bool) throws {
    let scratch = try Scratch("pager-prefetch")
    let jail = jailed ? try JailPool(base: 1_900_400_000, count: 4) : nil
    let parent = try WarmParent(in: scratch, pages: 256)
    let recordPath = parent.snapshot + "/" + WorkingSet.fileName
    let first = try Child.restore(
      snapshot: parent.snapshot, runDirectory: scratch.path + "/first",
      backend: .uffd(policy: .fail, prefetch: true, recordWorkingSet: true), jail: jail)
    #expect(try first.vmm.agent().checksum(pages: parent.pages) == parent.checksum)
    let firstStats = try #require(first.pager).stats()
    first.stop()
    let recorded = try WorkingSet.parse(try FileSystem.readFile(recordPath, limit: 16 << 20), source: recordPath)
    let leftovers = try FileSystem.listDirectory(parent.snapshot).filter { $0.contains(".tmp-") }
    #expect(leftovers.isEmpty, "no staging record is left: \(leftovers)")
    #expect(recorded.pages.count >= 256, "the record holds every page the first child faulted")
    // Saved when the pager exits, so it may hold a few pages faulted after the stats were read.
    #expect(recorded.pages.count >= Int(firstStats["distinct_pages_faulted"]?.int64Value ?? .max))
    #expect(Set(recorded.pages).count == recorded.pages.count, "each page is recorded once")

    let second = try Child.restore(
      snapshot: parent.snapshot, runDirectory: scratch.path + "/second",
      backend: .uffd(policy: .fail, prefetch: true, recordWorkingSet: true), jail: jail)
    defer { second.stop() }
    #expect(try second.vmm.agent().checksum(pages: parent.pages) == parent.checksum)
    let stats = try #require(second.pager).stats()
    #expect((stats["prefetched_pages"]?.int64Value ?? 0) > 0)
    #expect(
      (stats["faults"]?.int64Value ?? .max) < (firstStats["faults"]?.int64Value ?? 0) / 2,
      "prefetch removed most faults: \(stats["faults"] ?? .null) vs \(firstStats["faults"] ?? .null)")
  }
}
