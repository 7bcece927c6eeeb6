import Protocol
import Syscalls
import Testing
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// The experimental daemon-wide pager: one forkd-pager process serving every child of a snapshot.
@Suite("forkd-pager --shared: one pager for every child of a snapshot", .serialized)
struct SharedPagerTests {
  @Test(
    "5 children served by one shared pager return the parent's checksum; killing it stalls all of them; a new one recovers them"
  )
  func fiveChildrenOnePager() throws {
    let scratch = try Scratch("shared-pager")
    let parent = try WarmParent(in: scratch, pages: 1024)
    let pager = try PagerProcess.launch(
      socket: scratch.path + "/shared-0.sock", logPath: scratch.path + "/shared-0.log", shared: true)
    var pagers = [pager]
    defer {
      for p in pagers {
        p.signal(SIGTERM)
        p.wait(timeoutMS: 5000)
      }
    }
    var children: [Child] = []
    defer { for child in children { child.stop() } }
    for index in 0..<5 {
      children.append(
        try Child.restore(
          snapshot: parent.snapshot, runDirectory: scratch.path + "/child-\(index)", backend: .uffd(policy: .restart),
          sharedPager: pager))
    }
    for child in children { #expect(child.pager == nil, "a child of a shared pager owns no pager process") }
    let status = String(decoding: try FileSystem.readFile("/proc/\(pager.pid)/status"), as: UTF8.self)
    #expect(status.contains("Seccomp:\t2"), "the shared pager serves under its seccomp filter")

    // Round 1: all five checksum at once through the one pager.
    let agents = try children.map { try $0.vmm.agent() }
    let half = parent.pages / 2
    var pending = try agents.map { try $0.send(.checksum(pages: half)) }
    var partial: [UInt64] = []
    for (agent, request) in zip(agents, pending) {
      partial.append(try agent.checksumResult(agent.receive(request, timeoutMS: 300_000)))
    }
    #expect(Set(partial).count == 1, "every child read the same memory: \(partial)")
    let stats = try pager.stats()
    #expect(stats["shared"] == .bool(true))
    #expect(stats["vms_attached"]?.int64Value == 5, "\(stats)")
    #expect((stats["faults"]?.int64Value ?? 0) >= 5 * Int64(half), "every child's faults went to the one pager")
    let vms = try #require(stats["vms"]?.arrayValue)
    #expect(Set(vms.compactMap { $0["vm_pid"]?.int64Value }) == Set(children.map { Int64($0.vmm.pid) }))

    // Round 2: the whole filled range (the second half is new to every child); kill the pager
    // mid-run: every child stalls.
    pending = try agents.map { try $0.send(.checksum(pages: parent.pages)) }
    let before = stats["faults"]?.int64Value ?? 0
    let deadline = Clock.monotonicNanoseconds() + 20_000_000_000
    while Clock.monotonicNanoseconds() < deadline {
      if ((try? pager.stats())?["faults"]?.int64Value ?? 0) >= before + 20 { break }
      Clock.sleep(milliseconds: 1)
    }
    pager.signal(SIGKILL)
    #expect(pager.wait(timeoutMS: 5000) == .signaled(SIGKILL))
    // 20-odd pages served in total, each child needs 512 more: none can finish.
    for (index, agent) in agents.enumerated() {
      #expect(throws: ControlError.self, "child \(index) stalls without a pager") {
        try agent.receive(pending[index], timeoutMS: 300)
      }
    }
    for child in children {
      let vmStatus = try child.vmm.control().status()
      #expect(vmStatus.pager?.attached == false, "the VM saw its pager go: \(vmStatus)")
      #expect(processExists(child.vmm.pid), "restart policy: the VM waits for a new pager")
    }

    // Recovery: one new shared pager, attached to every child.
    let replacement = try PagerProcess.launch(
      socket: scratch.path + "/shared-1.sock", logPath: scratch.path + "/shared-1.log", shared: true)
    pagers.append(replacement)
    for child in children { try child.attachPager(socket: replacement.socket) }
    for (index, agent) in agents.enumerated() {
      let sum = try agent.checksumResult(agent.receive(pending[index], timeoutMS: 300_000))
      #expect(sum == parent.checksum, "child \(index) recovered with the parent's checksum")
    }
    let after = try replacement.stats()
    #expect(after["vms_attached"]?.int64Value == 5)
    #expect((after["faults"]?.int64Value ?? 0) >= 5 * 400, "the new pager served the rest: \(after)")
  }
}
