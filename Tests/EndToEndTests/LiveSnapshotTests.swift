import Protocol
import Syscalls
import Testing
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// Live snapshots: the source is paused only to capture state and arm write-protection; what it
/// writes afterwards must not reach the snapshot.
@Suite("Live snapshots", .serialized)
struct LiveSnapshotTests {
  @Test("the guest keeps writing after the pause: children see exactly the paused state, the source its new one")
  func writesAfterThePauseStayOut() throws {
    let scratch = try Scratch("live")
    let parent = try WarmParent(in: scratch, pages: 256, memoryMiB: 32)
    let root = scratch.path + "/snaps"
    try FileSystem.makeDirectories(root)
    try FileSystem.rename(parent.snapshot, to: root + "/base")

    // Slow the copier down (20 ms per 64 pages) so the guest's writes land while it runs.
    setenv("FORKD_TEST_LIVE_COPY_DELAY_US", "20000", 1)
    defer { unsetenv("FORKD_TEST_LIVE_COPY_DELAY_US") }
    let source = try Child.restore(
      snapshot: root + "/base", runDirectory: scratch.path + "/source", backend: .uffd(policy: .fail))
    defer { source.stop() }
    let agent = try source.vmm.agent()
    _ = try agent.fill(pages: 64, seed: 0xAAAA)
    _ = try agent.counter(add: 5)
    try agent.set("note", "before the branch")
    let before = try DiffSnapshotTests.observe(agent, pages: parent.pages)

    let started = try source.vmm.control().snapshot(
      directory: root + "/live", parentTag: "base", live: true, wait: false)
    #expect(started.status == .writing, "\(started)")
    let pauseUS = started.pauseMicroseconds
    #expect(!FileSystem.exists(root + "/live"), "not visible before the copy is complete")

    // While the copy runs the guest rewrites the pages it had written (held, write-protected),
    // 64 it had never touched (first touches served from the origin, then written), its counter
    // and a key.
    _ = try agent.fill(pages: 128, seed: 0xBBBB)
    _ = try agent.counter(add: 100)
    try agent.set("note", "after the branch")
    let after = try DiffSnapshotTests.observe(agent, pages: parent.pages)
    #expect(after != before)

    let finished = try source.vmm.control().snapshotWait(directory: root + "/live", timeoutMS: 120_000)
    #expect(finished.status == .ready)
    let totalUS = try #require(finished.written?.totalMicroseconds, "\(finished)")
    // The copy outlasted the guest's writes: they raced it and lost.
    #expect(totalUS > 1_000_000, "\(finished)")
    #expect(pauseUS < totalUS)

    for (index, backend) in [ChildBackend.uffd(policy: .fail), .file].enumerated() {
      let child = try Child.restore(
        snapshot: root + "/live", runDirectory: scratch.path + "/c\(index)", backend: backend)
      defer { child.stop() }
      #expect(try DiffSnapshotTests.observe(child.vmm.agent(), pages: parent.pages) == before, "\(backend.name) child")
    }
    #expect(try DiffSnapshotTests.observe(agent, pages: parent.pages) == after, "the source kept its own writes")
    // And it can be branched again, live or not.
    let again = try source.vmm.control().snapshot(directory: root + "/live2", parentTag: "base", live: true)
    #expect(again.status == .ready)
  }

  @Test("live needs a pager-backed VM; waiting for an unknown live snapshot is an error")
  func refusals() throws {
    let scratch = try Scratch("live-bad")
    let parent = try WarmParent(in: scratch, pages: 16, memoryMiB: 32)
    let child = try Child.restore(snapshot: parent.snapshot, runDirectory: scratch.path + "/file", backend: .file)
    defer { child.stop() }
    let refused = #expect(throws: ControlError.self) {
      try child.vmm.control().snapshot(directory: scratch.path + "/x", parentTag: nil, live: true)
    }
    #expect(refused?.description.contains("uffd") == true, "\(String(describing: refused))")
    #expect(throws: ControlError.self) { try child.vmm.control().snapshotWait(directory: scratch.path + "/x") }
    #expect(try child.vmm.agent().ping().kind == AgentPong.testGuestKind, "the VM still runs")
    #expect(!FileSystem.exists(scratch.path + "/x"))
  }
}
