import CUffd
import Syscalls
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// The userfaultfd wrappers against the running kernel, in this process: a helper thread faults,
/// the test thread serves it. Serialized: FaultInjection is process-global, and every wait is bounded.
@Suite("Userfault wrappers", .serialized)
struct UserfaultTests {
  // MARK: - 1. Features

  @Test("supportedFeatures reports what this kernel offers")
  func supportedFeatures() throws {
    let supported = try Userfault.supportedFeatures()
    let expected: Userfault.Features = [
      .pagefaultFlagWP, .eventRemove, .eventUnmap, .eventRemap, .missingShmem, .minorShmem, .threadID,
      .exactAddress, .wpUnpopulated, .wpAsync, .move,
    ]
    #expect(
      supported.isSuperset(of: expected),
      "missing \(Userfault.Features(rawValue: expected.rawValue & ~supported.rawValue)) in \(supported)")
  }

  @Test("create(features:) enables exactly what was asked; the kernel answers with all it supports")
  func createGrantsRequestedFeatures() throws {
    let supported = try Userfault.supportedFeatures()
    let wanted: Userfault.Features = [.eventRemove, .minorShmem, .missingShmem, .threadID]
    let (uffd, granted) = try Userfault.create(features: wanted)
    defer { uffd.fd.close() }
    #expect(granted.isSuperset(of: wanted))
    #expect(supported.isSuperset(of: granted))
    // The context itself has only the requested features on (fdinfo prints ctx->features).
    #expect(try enabledFeatures(uffd) == wanted.rawValue)
    #expect(readLink("/proc/self/fd/\(uffd.fd.rawValue)") == "anon_inode:[userfaultfd]")
    // Created non-blocking: readEvents must be able to return [] instead of sleeping.
    #expect(fcntl(uffd.fd.rawValue, F_GETFL) & O_NONBLOCK != 0)
    #expect(fcntl(uffd.fd.rawValue, F_GETFD) & FD_CLOEXEC != 0)
  }

  @Test("an impossible feature bit fails UFFDIO_API with EINVAL")
  func impossibleFeatureFails() throws {
    let error = try #require(
      syscallError {
        _ = try Userfault.create(features: Userfault.Features(rawValue: 1 << 40))
      })
    #expect(error.call == "UFFDIO_API")
    #expect(error.errno == .invalid)
    #expect(error.detail.contains("0x10000000000"))
  }

  @Test("UFFDIO_API twice on one uffd is refused")
  func negotiateTwiceFails() throws {
    let (uffd, _) = try Userfault.create(features: [.eventRemove])
    defer { uffd.fd.close() }
    let error = try #require(syscallError { _ = try uffd.negotiate([.eventRemove]) })
    #expect(error.call == "UFFDIO_API")
    #expect(error.errno == .invalid)
  }

  @Test("REGISTER refuses MINOR on anonymous memory; COPY outside any registered range is ENOENT")
  func registerAndCopyRefusals() throws {
    let error = try #require(syscallError { _ = try Lab(pages: 2, features: [.minorShmem], mode: .minor) })
    #expect(error.call == "UFFDIO_REGISTER")
    #expect(error.errno == .invalid)

    let (uffd, _) = try Userfault.create(features: [])
    defer { uffd.fd.close() }
    let plain = try MemoryMapping.anonymous(size: pageSize)
    defer { MemoryMapping.unmap(plain, size: pageSize) }
    let source = SourcePage(seed: 3)
    let copy = try #require(
      syscallError { _ = try uffd.copy(to: UInt64(UInt(bitPattern: plain)), from: source.pointer, length: 4096) })
    #expect(copy.call == "UFFDIO_COPY")
    #expect(copy.errno == .noEntry)
  }

  // MARK: - 2. MISSING + COPY / ZEROPAGE

  @Test("a missing fault is reported for its page and resolved by COPY; a second COPY is EEXIST")
  func missingCopy() throws {
    let lab = try Lab(pages: 8, features: [.threadID])
    defer { lab.close() }
    let source = SourcePage(seed: 0x42)

    let reader = try lab.touch(page: 3, offset: 123)
    let events = try awaitEvents(lab.uffd)
    try #require(reader.waitStarted())
    // Without EXACT_ADDRESS the kernel reports the page, not the byte.
    #expect(
      events == [
        .pageFault(address: lab.address(3), write: false, writeProtect: false, minor: false, threadID: reader.threadID)
      ])
    #expect(!reader.isDone)

    let copied = try lab.uffd.copy(to: lab.address(3), from: source.pointer, length: UInt64(pageSize))
    #expect(copied == Int64(pageSize))
    let touch = try #require(reader.wait(), "the reader was not woken by UFFDIO_COPY")
    #expect(touch.value == SourcePage.byte(123, seed: 0x42))
    #expect(pageBytes(lab.pointer(3)) == source.bytes)

    let again = try #require(
      syscallError { _ = try lab.uffd.copy(to: lab.address(3), from: source.pointer, length: UInt64(pageSize)) })
    #expect(again.call == "UFFDIO_COPY")
    #expect(again.errno == .exists)
    #expect(try readNow(lab.uffd) == [])
  }

  @Test("ZEROPAGE maps a zero page: a later read needs no handler and sees zero")
  func zeroPage() throws {
    let lab = try Lab(pages: 8)
    defer { lab.close() }
    #expect(try lab.uffd.zeroPage(at: lab.address(5), length: UInt64(pageSize)) == Int64(pageSize))
    let reader = try lab.touch(page: 5, offset: 4000)
    let touch = try #require(reader.wait(), "a read of the zero page faulted to the uffd")
    #expect(touch.value == 0)
    #expect(try readNow(lab.uffd) == [])
    #expect(pageBytes(lab.pointer(5)) == [UInt8](repeating: 0, count: pageSize))
    // The zero page counts as mapped: a COPY onto it is refused.
    let source = SourcePage(seed: 1)
    let error = try #require(
      syscallError { _ = try lab.uffd.copy(to: lab.address(5), from: source.pointer, length: UInt64(pageSize)) })
    #expect(error.errno == .exists)
  }

  @Test("a COPY that meets a mapped page part-way reports how much it copied (the kernel's EAGAIN)")
  func partialCopy() throws {
    let lab = try Lab(pages: 4)
    defer { lab.close() }
    let source = SourcePage(seed: 7)
    _ = try lab.uffd.zeroPage(at: lab.address(1), length: UInt64(pageSize))
    let twoPages = UnsafeMutableRawPointer.allocate(byteCount: 2 * pageSize, alignment: pageSize)
    defer { twoPages.deallocate() }
    twoPages.copyMemory(from: source.pointer, byteCount: pageSize)
    twoPages.advanced(by: pageSize).copyMemory(from: source.pointer, byteCount: pageSize)

    // The kernel reports the short copy as EAGAIN with uffdio_copy.copy = 4096 (not EEXIST); the
    // wrapper returns that count so the caller can compare it with the length.
    let copied = try lab.uffd.copy(to: lab.address(0), from: twoPages, length: UInt64(2 * pageSize))
    #expect(copied == Int64(pageSize))
    #expect(pageBytes(lab.pointer(0)) == source.bytes)
    #expect(pageBytes(lab.pointer(1)) == [UInt8](repeating: 0, count: pageSize))
  }

  // MARK: - 3. DONTWAKE + WAKE

  @Test("COPY with wake: false leaves the faulting thread asleep until UFFDIO_WAKE")
  func dontWakeThenWake() throws {
    let lab = try Lab(pages: 4)
    defer { lab.close() }
    let source = SourcePage(seed: 9)
    let reader = try lab.touch(page: 2, offset: 10)
    let events = try awaitEvents(lab.uffd)
    #expect(events.count == 1)
    #expect(try uffdCounter(lab.uffd, "total") == 1)

    #expect(try lab.uffd.copy(to: lab.address(2), from: source.pointer, length: UInt64(pageSize), wake: false) == 4096)
    // The page is mapped, yet the thread still sleeps in handle_userfault.
    Clock.sleep(milliseconds: 100)
    #expect(!reader.isDone, "the reader ran although the COPY asked not to wake it")
    #expect(try uffdCounter(lab.uffd, "total") == 1)
    #expect(pageBytes(lab.pointer(2)) == source.bytes)

    let wokenAt = Clock.monotonicNanoseconds()
    try lab.uffd.wake(start: lab.address(2), length: UInt64(pageSize))
    let touch = try #require(reader.wait(), "UFFDIO_WAKE did not wake the reader")
    #expect(touch.finishedAt >= wokenAt)
    #expect(touch.value == SourcePage.byte(10, seed: 9))
    #expect(try uffdCounter(lab.uffd, "total") == 0)
  }

  // MARK: - 4. MINOR + CONTINUE on shmem

  @Test("a MINOR fault on a private memfd mapping is resolved by CONTINUE; a later write stays private")
  func minorContinue() throws {
    let pages = 4
    let size = pages * pageSize
    let memfd = FileDescriptor(rawValue: try retryingEINTR("memfd_create") { cuffd_memfd_create("uffd-minor", 0) })
    defer { memfd.close() }
    try memfd.truncate(to: Int64(size))
    var content = [UInt8](repeating: 0, count: size)
    for i in 0..<size { content[i] = SourcePage.byte(i, seed: 0x5C) }
    try memfd.pwriteAll(content, at: 0)
    // A shared mapping puts every page in the page cache (pwrite already did; touch them anyway).
    let shared = try MemoryMapping.sharedFile(memfd, size: size)
    defer { MemoryMapping.unmap(shared, size: size) }
    for p in 0..<pages {
      #expect(shared.load(fromByteOffset: p * pageSize + 1, as: UInt8.self) == content[p * pageSize + 1])
    }

    let lab = try Lab(size: size, features: [.minorShmem], mode: .minor) {
      try MemoryMapping.privateFile(memfd, size: size)
    }
    defer { lab.close() }
    #expect(lab.granted.contains(.minorShmem))

    // A read: minor fault, CONTINUE maps the page-cache page.
    let reader = try lab.touch(page: 1, offset: 77)
    #expect(
      try awaitEvents(lab.uffd) == [
        .pageFault(address: lab.address(1), write: false, writeProtect: false, minor: true, threadID: 0)
      ])
    #expect(try lab.uffd.continue(at: lab.address(1), length: UInt64(pageSize)) == Int64(pageSize))
    let touch = try #require(reader.wait(), "CONTINUE did not wake the reader")
    #expect(touch.value == content[pageSize + 77])
    #expect(pageBytes(lab.pointer(1)) == Array(content[pageSize..<2 * pageSize]))

    // A write to the now-mapped page copies it on write, without a uffd event.
    let writer = try lab.touch(page: 1, offset: 77, write: 0xEE)
    #expect(writer.wait() != nil, "a write to a CONTINUE-mapped private page faulted to the uffd")
    #expect(lab.pointer(1).load(fromByteOffset: 77, as: UInt8.self) == 0xEE)

    // A first write to another page: a minor fault flagged as a write; after CONTINUE it lands privately.
    let writer2 = try lab.touch(page: 2, offset: 5, write: 0xDD)
    #expect(
      try awaitEvents(lab.uffd) == [
        .pageFault(address: lab.address(2), write: true, writeProtect: false, minor: true, threadID: 0)
      ])
    #expect(try lab.uffd.continue(at: lab.address(2), length: UInt64(pageSize)) == Int64(pageSize))
    #expect(writer2.wait() != nil, "CONTINUE did not wake the writer")
    #expect(lab.pointer(2).load(fromByteOffset: 5, as: UInt8.self) == 0xDD)

    // The memfd and its shared mapping never saw the private writes.
    var file = [UInt8](repeating: 0, count: size)
    _ = try file.withUnsafeMutableBytes { try memfd.pread(into: $0, at: 0) }
    #expect(file == content)
    #expect(shared.load(fromByteOffset: pageSize + 77, as: UInt8.self) == content[pageSize + 77])
    #expect(shared.load(fromByteOffset: 2 * pageSize + 5, as: UInt8.self) == content[2 * pageSize + 5])
    #expect(try readNow(lab.uffd) == [])
  }

  // MARK: - 5. WRITEPROTECT

  @Test("a write to a write-protected page faults with writeProtect; un-protecting wakes the writer")
  func writeProtect() throws {
    let lab = try Lab(pages: 4, mode: [.missing, .writeProtect]) { base in
      for p in 0..<4 { base.storeBytes(of: 0xA0 + UInt8(p), toByteOffset: p * pageSize + 100, as: UInt8.self) }
    }
    defer { lab.close() }
    try lab.uffd.writeProtect(start: lab.address(1), length: UInt64(pageSize), protect: true)

    let writer = try lab.touch(page: 1, offset: 100, write: 0x5A)
    #expect(
      try awaitEvents(lab.uffd) == [
        .pageFault(address: lab.address(1), write: true, writeProtect: true, minor: false, threadID: 0)
      ])
    // Reads still work: a live-branch copier records the old contents before letting the write in.
    let old = lab.pointer(1).load(fromByteOffset: 100, as: UInt8.self)
    #expect(old == 0xA1)
    #expect(!writer.isDone)

    try lab.uffd.writeProtect(start: lab.address(1), length: UInt64(pageSize), protect: false)
    #expect(writer.wait() != nil, "un-protecting did not wake the writer")
    #expect(lab.pointer(1).load(fromByteOffset: 100, as: UInt8.self) == 0x5A)

    // An unprotected neighbour is written without any event.
    let other = try lab.touch(page: 2, offset: 100, write: 0x6B)
    #expect(other.wait() != nil)
    #expect(lab.pointer(2).load(fromByteOffset: 100, as: UInt8.self) == 0x6B)
    #expect(try readNow(lab.uffd) == [])
  }

  // MARK: - 6. MOVE

  @Test("MOVE takes a populated page into a missing range; the source becomes an empty (zero) page")
  func move() throws {
    let lab = try Lab(pages: 4, features: [.move])
    defer { lab.close() }
    #expect(lab.granted.contains(.move))
    let sourceSize = 2 * pageSize
    let sourceMap = try MemoryMapping.anonymous(size: sourceSize)
    defer { MemoryMapping.unmap(sourceMap, size: sourceSize) }
    let pattern = SourcePage(seed: 0x33)
    sourceMap.copyMemory(from: pattern.pointer, byteCount: pageSize)
    let source = UInt64(UInt(bitPattern: sourceMap))

    let reader = try lab.touch(page: 2, offset: 999)
    #expect(
      try awaitEvents(lab.uffd) == [
        .pageFault(address: lab.address(2), write: false, writeProtect: false, minor: false, threadID: 0)
      ])
    #expect(try lab.uffd.move(to: lab.address(2), from: source, length: UInt64(pageSize)) == Int64(pageSize))
    let touch = try #require(reader.wait(), "MOVE did not wake the reader")
    #expect(touch.value == SourcePage.byte(999, seed: 0x33))
    #expect(pageBytes(lab.pointer(2)) == pattern.bytes)
    // The page left the source: its PTE is gone, so the (unregistered) source reads as zeros.
    #expect(pageBytes(sourceMap) == [UInt8](repeating: 0, count: pageSize))

    // Onto a mapped destination: EEXIST. From a hole (no ALLOW_SRC_HOLES): ENOENT.
    sourceMap.copyMemory(from: pattern.pointer, byteCount: pageSize)
    let onto = try #require(syscallError { _ = try lab.uffd.move(to: lab.address(2), from: source, length: 4096) })
    #expect(onto.call == "UFFDIO_MOVE")
    #expect(onto.errno == .exists)
    let hole = try #require(
      syscallError { _ = try lab.uffd.move(to: lab.address(3), from: source + UInt64(pageSize), length: 4096) })
    #expect(hole.errno == .noEntry)
    #expect(try readNow(lab.uffd) == [])
  }

  // MARK: - 7. EVENT_REMOVE

  @Test("MADV_DONTNEED reports REMOVE with its range; until it is read, COPY is EAGAIN")
  func eventRemove() throws {
    let lab = try Lab(pages: 8, features: [.eventRemove]) { base in
      for p in 0..<4 { base.storeBytes(of: 0x77, toByteOffset: p * pageSize, as: UInt8.self) }
    }
    defer { lab.close() }
    let source = SourcePage(seed: 0x11)
    let start = UInt(lab.address(1))
    let madvised = Shared<Int32?>(nil)
    try lab.start(name: "uffd-madvise") {
      let rc = madvise(UnsafeMutableRawPointer(bitPattern: start), 2 * pageSize, MADV_DONTNEED)
      madvised.value = rc == 0 ? 0 : errno
    }

    try #require(try becomesReadable(lab.uffd.fd), "no REMOVE event")
    // madvise sleeps until the event is read, and the kernel refuses to fill pages meanwhile.
    #expect(madvised.value == nil)
    let refused = try #require(
      syscallError { _ = try lab.uffd.copy(to: lab.address(6), from: source.pointer, length: UInt64(pageSize)) })
    #expect(refused.call == "UFFDIO_COPY")
    #expect(refused.errno == .wouldBlock)

    #expect(try readNow(lab.uffd) == [.remove(start: lab.address(1), end: lab.address(3))])
    #expect(waitUntil { madvised.value != nil }, "madvise did not return once the event was read")
    #expect(madvised.value == 0)
    #expect(try lab.uffd.copy(to: lab.address(6), from: source.pointer, length: UInt64(pageSize)) == Int64(pageSize))
    #expect(pageBytes(lab.pointer(6)) == source.bytes)
    // Pages outside the range kept their contents (those inside now fault again: not touched here).
    #expect(lab.pointer(0).load(as: UInt8.self) == 0x77)
    #expect(lab.pointer(3).load(as: UInt8.self) == 0x77)
  }

  // MARK: - 8. readEvents

  @Test("readEvents is [] when nothing is pending and decodes several events per read")
  func readEventsBatches() throws {
    let lab = try Lab(pages: 4)
    defer { lab.close() }
    #expect(try readNow(lab.uffd) == [])

    let readers = try [0, 2, 3].map { try lab.touch(page: $0, offset: 8) }
    let queued = try waitUntil { try uffdCounter(lab.uffd, "pending") == 3 }
    try #require(queued, "three faults were not queued")

    let first = try #require(try readNow(lab.uffd, max: 2))
    #expect(first.count == 2)
    let rest = try #require(try readNow(lab.uffd))
    #expect(rest.count == 1)
    #expect(try readNow(lab.uffd) == [])
    var addresses: [UInt64] = []
    for event in first + rest {
      guard case .pageFault(let address, let write, let wp, let minor, _) = event else {
        Issue.record("unexpected event \(event)")
        continue
      }
      #expect(!write && !wp && !minor)
      addresses.append(address)
    }
    #expect(addresses.sorted() == [lab.address(0), lab.address(2), lab.address(3)])
    #expect(try uffdCounter(lab.uffd, "pending") == 0)
    #expect(try uffdCounter(lab.uffd, "total") == 3)

    let source = SourcePage(seed: 0x21)
    for page in [0, 2, 3] { _ = try lab.uffd.copy(to: lab.address(page), from: source.pointer, length: 4096) }
    for reader in readers { #expect(reader.wait()?.value == SourcePage.byte(8, seed: 0x21)) }
  }

  // MARK: - 9. SCM_RIGHTS

  @Test("a uffd passed over a Unix socket arrives as a working userfaultfd")
  func passUffdOverSocket() throws {
    let (a, b) = try UnixSocket.pair()
    defer {
      a.close()
      b.close()
    }
    let lab = try Lab(pages: 2)
    defer { lab.close() }

    try UnixSocket.send([1, 2, 3], fd: lab.uffd.fd, on: a)
    let message = try UnixSocket.receive(capacity: 16, on: b)
    #expect(message.bytes == [1, 2, 3])
    #expect(!message.truncated)
    let received = try #require(message.fd)
    defer { received.close() }
    #expect(received != lab.uffd.fd)
    #expect(readLink("/proc/self/fd/\(received.rawValue)") == "anon_inode:[userfaultfd]")
    #expect(fcntl(received.rawValue, F_GETFD) & FD_CLOEXEC != 0)

    // Same context: the fault on the original's range is read and served through the copy.
    let remote = Userfault(fd: received)
    let reader = try lab.touch(page: 1, offset: 3)
    #expect(try awaitEvents(remote).count == 1)
    let source = SourcePage(seed: 0x44)
    #expect(try remote.copy(to: lab.address(1), from: source.pointer, length: UInt64(pageSize)) == Int64(pageSize))
    #expect(reader.wait()?.value == SourcePage.byte(3, seed: 0x44))

    try UnixSocket.send([9], fd: nil, on: a)
    let plain = try UnixSocket.receive(capacity: 16, on: b)
    #expect(plain.bytes == [9])
    #expect(plain.fd == nil)
    #expect(!plain.truncated)
  }

  // MARK: - 10. pidfd

  @Test("a pidfd becomes readable when its process is killed")
  func pidFDReadableOnExit() throws {
    let pid = try ChildProcess.spawn(path: "/bin/sleep", arguments: ["sleep", "5"])
    var reaped = false
    defer { if !reaped { ChildProcess.waitOrKill(pid, timeoutMS: 0) } }
    let pidfd = try ChildProcess.pidFD(pid)
    defer { pidfd.close() }

    #expect(try !becomesReadable(pidfd, timeoutMS: 50), "the pidfd was readable while sleep ran")
    #expect(kill(pid, SIGKILL) == 0)
    #expect(try becomesReadable(pidfd), "the pidfd did not become readable after SIGKILL")
    #expect(try ChildProcess.wait(pid) == .signaled(SIGKILL))
    reaped = true
  }

  // MARK: - 11. Fault injection

  @Test("an injected EIO on UFFDIO_COPY is thrown without reaching the kernel")
  func faultInjection() throws {
    let lab = try Lab(pages: 2)
    defer { lab.close() }
    let source = SourcePage(seed: 0x66)
    // Only this thread's UFFDIO_COPY fails: other suites may run concurrently in this process.
    let me = pthread_self()
    FaultInjection.install { call in
      call == "UFFDIO_COPY" && pthread_equal(pthread_self(), me) != 0 ? Errno(EIO) : nil
    }
    defer { FaultInjection.install(nil) }

    let error = try #require(
      syscallError { _ = try lab.uffd.copy(to: lab.address(0), from: source.pointer, length: UInt64(pageSize)) })
    #expect(error == SyscallError("UFFDIO_COPY", Errno(EIO), detail: "(injected)"))
    // Other calls go through.
    #expect(try lab.uffd.zeroPage(at: lab.address(1), length: UInt64(pageSize)) == Int64(pageSize))

    FaultInjection.install(nil)
    // The injected failure never reached the kernel: the page is still missing, so COPY works now.
    #expect(try lab.uffd.copy(to: lab.address(0), from: source.pointer, length: UInt64(pageSize)) == Int64(pageSize))
    #expect(pageBytes(lab.pointer(0)) == source.bytes)
  }
}
