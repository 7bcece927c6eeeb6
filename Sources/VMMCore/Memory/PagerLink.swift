import Protocol
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// The VM side of the per-child pager: the VM creates and keeps the userfaultfd, registers its
/// memory, and hands the uffd to a `forkd-pager` over a Unix socket (SCM_RIGHTS). Because the VM
/// keeps its copy, a pager that dies can be replaced: a new one receives the same uffd.
public final class PagerLink: PollSource, @unchecked Sendable {
  public enum Policy: String, Sendable {
    /// Wait for a new pager (`attach_pager`); faulting vCPUs stall until it arrives.
    case restart
    /// Stop the VM with an error.
    case fail
  }

  public let uffd: Userfault
  public let regions: [PagerRegion]
  public let source: PagerMemorySource
  public let policy: Policy
  private let lock = ConditionLock()
  private var socket: FileDescriptor?
  private var socketPath: String?
  public private(set) var pagerPID: Int32 = 0
  public private(set) var attachments = 0
  private let onLost: @Sendable (String) -> Void

  /// Creates the uffd and registers every region of `memory` for MISSING faults.
  public init(
    memory: GuestMemory, source: PagerMemorySource, policy: Policy, onLost: @escaping @Sendable (String) -> Void
  )
    throws(VMMError)
  {
    // MINOR mode on shmem: the page is in the page cache, the pager decides when it is mapped.
    // MISSING stays registered for holes (no page-cache page), answered with zero pages.
    let minor = source.mode == .minor
    let wanted: Userfault.Features = minor ? [.eventRemove, .minorShmem, .missingShmem] : [.eventRemove]
    let created: (Userfault, Userfault.Features)
    do {
      created = try Userfault.create(features: wanted)
    } catch {
      throw VMMError(.guestMemory, "cannot create a userfaultfd for guest memory", cause: error)
    }
    uffd = created.0
    guard created.1.isSuperset(of: wanted) else {
      uffd.fd.close()
      throw VMMError(
        .guestMemory,
        "this kernel's userfaultfd lacks features \(Userfault.Features(rawValue: wanted.rawValue & ~created.1.rawValue))"
      )
    }
    do {
      for region in memory.regions {
        try uffd.register(
          start: UInt64(UInt(bitPattern: region.host)), length: region.size,
          // Copy mode also registers write-protection: a live snapshot arms it to copy each page
          // before the guest's first write after the pause lands.
          mode: minor ? [.missing, .minor] : [.missing, .writeProtect])
      }
    } catch {
      uffd.fd.close()
      throw VMMError(.guestMemory, "cannot register guest memory with the userfaultfd", cause: error)
    }
    regions = memory.regions.map {
      PagerRegion(
        guestPhysicalAddress: $0.guestPhysical, hostVirtualAddress: UInt64(UInt(bitPattern: $0.host)), size: $0.size,
        fileOffset: $0.fileOffset, pageSize: GuestMemory.pageSize)
    }
    self.source = source
    self.policy = policy
    self.onLost = onLost
  }

  deinit {
    socket?.close()
    uffd.fd.close()
  }

  /// Connects to the pager at `path`, sends the handshake with the uffd, and waits for its ack.
  /// Returns the pager's pid.
  @discardableResult
  public func attach(socketPath path: String, timeoutMS: Int32 = 5000) throws(VMMError) -> Int32 {
    let fd: FileDescriptor
    do {
      fd = try UnixSocket.connect(path: path)
    } catch {
      throw VMMError(.guestMemory, "cannot reach the pager at \(path)", cause: error)
    }
    do throws(VMMError) {
      let hello = PagerHello(vmPID: getpid(), regions: regions, memory: source)
      do {
        try UnixSocket.send(PagerFrame.encode(hello.jsonValue), fd: uffd.fd, on: fd)
      } catch {
        throw VMMError(.guestMemory, "cannot send the handshake to the pager at \(path)", cause: error)
      }
      KillPoint.reached("handshake-sent")
      let ack = try readAck(fd, timeoutMS: timeoutMS, path: path)
      guard ack.ok else {
        throw VMMError(
          .guestMemory,
          "the pager at \(path) refused the handshake: \(ack.error.map { "[\($0.code)] \($0.message)" } ?? "no reason")"
        )
      }
      let previous: FileDescriptor? = lock.withLock {
        defer {
          socket = fd
          socketPath = path
          pagerPID = ack.pagerPID
          attachments += 1
        }
        return socket
      }
      previous?.close()
      return ack.pagerPID
    } catch {
      fd.close()
      throw error
    }
  }

  private func readAck(_ fd: FileDescriptor, timeoutMS: Int32, path: String) throws(VMMError) -> PagerAck {
    var bytes: [UInt8] = []
    var want = PagerHandshake.headerSize
    let deadline = Clock.monotonicNanoseconds() + UInt64(timeoutMS) * 1_000_000
    do {
      while bytes.count < want {
        let now = Clock.monotonicNanoseconds()
        guard now < deadline else {
          throw VMMError(.guestMemory, "the pager at \(path) did not answer within \(timeoutMS) ms")
        }
        let ready = try Poll.wait([(fd, .readable)], timeoutMS: Int32((deadline - now) / 1_000_000) + 1)
        if ready[0].isEmpty { continue }
        let chunk = try fd.read(upTo: want - bytes.count)
        guard !chunk.isEmpty else {
          throw VMMError(.guestMemory, "the pager at \(path) closed the connection instead of answering")
        }
        bytes += chunk
        if bytes.count == PagerHandshake.headerSize {
          want += try PagerFrame.bodyLength(header: bytes, source: "pager ack")
        }
      }
      return try PagerAck.decode(try PagerFrame.decode(bytes, source: "pager ack"), source: "pager ack")
    } catch let error as VMMError {
      throw error
    } catch {
      throw VMMError(.guestMemory, "bad answer from the pager at \(path)", cause: error as? SyscallError)
    }
  }

  // MARK: Watching the pager

  public func pollDescriptors() -> [(FileDescriptor, Poll.Events)] {
    lock.withLock { socket.map { [($0, Poll.Events.readable)] } ?? [] }
  }

  /// After its ack the pager writes only suspend acknowledgements (read by `suspendPager`); end
  /// of file means it closed (it exited or died).
  public func handle(_ fd: FileDescriptor, _ events: Poll.Events) {
    var byte: UInt8 = 0
    let n = Glibc.read(fd.rawValue, &byte, 1)
    if n > 0 { return }
    let pid: Int32 = lock.withLock {
      guard socket == fd else { return 0 }
      socket = nil
      fd.close()
      return pagerPID
    }
    if pid != 0 { onLost("memory pager (pid \(pid)) closed its connection") }
  }

  public var isAttached: Bool { lock.withLock { socket != nil } }

  // MARK: Taking the uffd over (live snapshots)

  /// Asks the pager to stop reading the uffd, after serving what it has read; returns when it
  /// acknowledged. Called from the loop that watches this link (the control loop), which is
  /// therefore not reading the socket meanwhile: the acknowledgement is read here.
  public func suspendPager(timeoutMS: Int = 5000) throws(VMMError) {
    guard let fd = lock.withLock({ socket }) else {
      throw VMMError(.guestMemory, "no pager is attached: the uffd cannot be handed over")
    }
    var command = PagerHandshake.suspendCommand
    guard Glibc.write(fd.rawValue, &command, 1) == 1 else {
      throw VMMError(
        .guestMemory, "cannot ask the pager (pid \(pagerPID)) to suspend", cause: SyscallError("write", .current))
    }
    let deadline = Clock.monotonicNanoseconds() + UInt64(timeoutMS) * 1_000_000
    while true {
      let now = Clock.monotonicNanoseconds()
      guard now < deadline else {
        throw VMMError(.guestMemory, "the pager (pid \(pagerPID)) did not acknowledge suspend within \(timeoutMS) ms")
      }
      let ready = (try? Poll.wait([(fd, .readable)], timeoutMS: Int32((deadline - now) / 1_000_000) + 1)) ?? [[]]
      if ready[0].isEmpty { continue }
      var byte: UInt8 = 0
      let n = Glibc.read(fd.rawValue, &byte, 1)
      if n == 1 && byte == PagerHandshake.suspendCommand { return }
      if n <= 0 {
        throw VMMError(.guestMemory, "the pager (pid \(pagerPID)) closed its connection instead of suspending")
      }
    }
  }

  /// Lets the pager read the uffd again.
  public func resumePager() {
    guard let fd = lock.withLock({ socket }) else { return }
    var command = PagerHandshake.resumeCommand
    _ = Glibc.write(fd.rawValue, &command, 1)
  }
}
