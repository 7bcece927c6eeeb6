import Protocol
import Syscalls
import Testing
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

@Suite("Boot, snapshot and fork the test guest on real KVM", .serialized)
struct ForkTests {
  @Test(
    "the parent's state is inherited by 10 children, each in its own forkd-vmm process, and stays isolated",
    arguments: [ChildBackend.file, .uffd(policy: .fail), .shmem(policy: .fail)])
  func tenChildren(backend: ChildBackend) throws {
    let scratch = try Scratch("fork-\(backend.name)")
    let parent = try WarmParent(in: scratch)
    defer { ShmemImage.remove(for: parent.snapshot) }
    #expect(parent.checksum == TestGuestMath.checksum(pages: parent.pages, seed: WarmParent.seed))
    let memoryFile = parent.snapshot + "/memory.bin"
    let snapshotDigest = SHA256.digestString(of: try FileSystem.readFile(memoryFile, limit: 128 << 20))

    var children: [Child] = []
    var agents: [AgentClient] = []
    for index in 0..<10 {
      let child = try Child.restore(
        snapshot: parent.snapshot, runDirectory: scratch.path + "/child-\(index)", backend: backend)
      children.append(child)
      agents.append(try child.vmm.agent())
    }
    #expect(Set(children.map(\.vmm.pid)).count == 10, "one process per child")
    if backend != .file {
      #expect(Set(children.compactMap { $0.pager?.pid }).count == 10, "one pager per child")
    }

    // Every child computes the parent's checksum over the inherited pages (all at once).
    let pending = try agents.map { try $0.send(.checksum(pages: parent.pages)) }
    for (agent, request) in zip(agents, pending) {
      #expect(try agent.checksumResult(agent.receive(request, timeoutMS: 300_000)) == parent.checksum)
    }
    for agent in agents {
      #expect(try agent.counter(add: 1) == WarmParent.counter + 1, "each child continues from the parent's counter")
      #expect(try agent.get("greeting") == "from the parent")
    }

    // A write in child A is invisible to child B and to the snapshot.
    try agents[0].set("greeting", "child A")
    #expect(try agents[0].fill(pages: 16, seed: 99) == 16)
    #expect(try agents[0].checksum(pages: parent.pages) != parent.checksum)
    #expect(try agents[1].get("greeting") == "from the parent")
    #expect(try agents[1].checksum(pages: parent.pages) == parent.checksum)
    #expect(try agents[1].counter(add: 0) == WarmParent.counter + 1)
    #expect(SHA256.digestString(of: try FileSystem.readFile(memoryFile, limit: 128 << 20)) == snapshotDigest)

    let rollup = try smapsRollup(children[2].vmm.pid)
    let dataKiB = parent.pages * 4
    switch backend {
    case .file, .shmem:
      // Snapshot pages are shared through the page cache, not copied into each child. Counted on
      // the guest memory mapping: a sanitizer build has megabytes of private shadow memory, and
      // the shmem image's tmpfs pages may be clean or dirty in the page cache (both are shared).
      let guestPath = backend == .file ? memoryFile : try ShmemImage.path(for: parent.snapshot)
      let guest = try smapsOfMapping(children[2].vmm.pid, pathSuffix: guestPath)
      #expect((guest["Size"] ?? 0) >= dataKiB, "the guest memory is mapped from \(guestPath): \(guest)")
      #expect(
        (guest["Shared_Clean"] ?? 0) + (guest["Shared_Dirty"] ?? 0) >= dataKiB,
        "other children map the same page-cache pages: \(guest)")
      #expect((guest["Private_Dirty"] ?? .max) < dataKiB, "the child did not copy the pages it only read: \(guest)")
      if backend == .file {
        #expect((guest["Shared_Clean"] ?? 0) >= dataKiB, "memory.bin pages are clean file pages: \(guest)")
      }
      if case .shmem = backend {
        // ...and yet the pager saw every first touch (MINOR faults answered with UFFDIO_CONTINUE).
        let stats = try #require(children[2].pager).stats()
        #expect((stats["continues"]?.int64Value ?? 0) >= Int64(parent.pages), "\(stats)")
        #expect((stats["copies"]?.int64Value ?? -1) == 0, "nothing is copied in shmem-minor mode")
      }
    case .uffd:
      // UFFDIO_COPY gives each child its own copy of every page it touched: the cost of control.
      #expect((rollup["Anonymous"] ?? 0) >= dataKiB, "uffd pages are private anonymous memory: \(rollup)")
      let stats = try #require(children[2].pager).stats()
      #expect((stats["copies"]?.int64Value ?? 0) >= Int64(parent.pages), "every filled page came from the pager")
    }

    for child in children {
      let pids = [child.vmm.pid] + (child.pager.map { [$0.pid] } ?? [])
      #expect(child.stop() == .exited(0))
      for pid in pids { #expect(!processExists(pid)) }
      #expect(!FileSystem.exists(child.runDirectory))
    }
  }

  @Test("a child restored from a child's snapshot (a branch) sees the branch's state")
  func snapshotOfChild() throws {
    let scratch = try Scratch("branch")
    let parent = try WarmParent(in: scratch, pages: 64)
    let child = try VMMProcess.launch(.restore(snapshot: parent.snapshot), runDirectory: scratch.path + "/child")
    defer { child.stop() }
    let agent = try child.agent()
    try agent.set("greeting", "from the branch")
    let branch = scratch.path + "/branch"
    let result = try child.control().snapshot(directory: branch, parentTag: "snap")
    #expect(result.directory == branch && result.status == .ready)
    // The source keeps running after the snapshot.
    #expect(try agent.counter(add: 1) == WarmParent.counter + 1)
    let manifest = try SnapshotManifest.decode(
      try FileSystem.readFile(branch + "/manifest.json"), source: "manifest.json")
    #expect(manifest.parentTag == "snap")
    let grandchild = try VMMProcess.launch(.restore(snapshot: branch), runDirectory: scratch.path + "/grandchild")
    defer { grandchild.stop() }
    let g = try grandchild.agent()
    #expect(try g.get("greeting") == "from the branch")
    #expect(try g.counter(add: 0) == WarmParent.counter)
  }

  @Test("pause and resume over the control socket; status reports the state")
  func pauseResume() throws {
    let scratch = try Scratch("pause")
    let vm = try VMMProcess.launch(
      .boot(image: "builtin:test-guest", memoryMiB: 32, vcpus: 1), runDirectory: scratch.path + "/vm")
    defer { vm.stop() }
    let control = try vm.control()
    let agent = try vm.agent()
    #expect(try control.status().state == .running)
    try control.pause()
    #expect(try control.status().state == .paused)
    let pending = try agent.send(.ping)
    // A paused guest does not answer.
    #expect(throws: ControlError.self) { try agent.receive(pending, timeoutMS: 300) }
    try control.resume()
    if case .pong = try agent.receive(pending) {} else { Issue.record("no pong after resume") }
    #expect(try control.status().state == .running)
  }

  @Test("the guest's exit command powers the VM off with its exit code")
  func guestExit() throws {
    let scratch = try Scratch("exit")
    let vm = try VMMProcess.launch(
      .boot(image: "builtin:test-guest", memoryMiB: 32, vcpus: 1), runDirectory: scratch.path + "/vm")
    let agent = try vm.agent()
    _ = try? agent.request(.exit(code: 7), timeoutMS: 5000)
    #expect(vm.wait(timeoutMS: 10_000) == .exited(7))
    #expect(lastLines(of: vm.consoleLog).contains("forkd-test-guest"))
  }
}
