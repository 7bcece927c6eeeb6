import Protocol
import SnapshotStorage
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// A handshake that could not be accepted: a code for the VM, a message for people.
struct PagerError: Error, CustomStringConvertible {
  let code: String
  let message: String
  var description: String { "[\(code)] \(message)" }
}

/// A page-aligned bitset over the pages of the memory source.
struct PageBitmap {
  private var words: [UInt64]
  init(pages: Int) { words = [UInt64](repeating: 0, count: (pages + 63) / 64) }
  @inline(__always) func contains(_ page: Int) -> Bool { words[page >> 6] & (1 << UInt64(page & 63)) != 0 }
  @inline(__always) mutating func insert(_ page: Int) { words[page >> 6] |= 1 << UInt64(page & 63) }
  mutating func insert(range: Range<Int>) { for page in range { insert(page) } }
}

/// What the handshake established.
struct Session {
  let uffd: Userfault
  let hello: PagerHello
  let vmSocket: FileDescriptor
  let source: ChainImage
}

/// How a handshake checks its peer and finds the memory source. A per-child pager validates
/// before its seccomp filter (readlink and SO_PEERCRED allowed, the image opened for this VM); a
/// shared pager validates its later VMs under the filter: the uffd is probed with an allowed ioctl,
/// and the image is the one opened for its first VM.
struct HandshakePolicy {
  /// Whether the filter is not installed yet (readlink of /proc/self/fd, SO_PEERCRED).
  var unconfined = true
  /// The memory source for a VM's layers.
  var openImage: (PagerMemorySource) throws(PagerError) -> ChainImage = { source throws(PagerError) in
    do throws(SnapshotStorageError) {
      return try ChainImage(layers: source.chain.map { ChainImage.Layer(memory: $0.memory, pageIndex: $0.pageIndex) })
    } catch {
      throw PagerError(code: "invalid_source", message: error.description)
    }
  }
}

enum Handshake {
  /// Waits for the VM, receives the uffd and region table, validates them against the memory
  /// source, and acknowledges. Any failure is answered with an error frame before it is thrown.
  /// `lockDown` runs after validation and before the ack: a pager that cannot sandbox itself
  /// refuses the VM instead of serving it unconfined.
  static func accept(on listener: FileDescriptor, timeoutMS: Int32, lockDown: () throws(PagerError) -> Void)
    throws(PagerError) -> Session
  {
    let deadline = Clock.monotonicNanoseconds() + UInt64(timeoutMS) * 1_000_000
    var connection: FileDescriptor? = nil
    while connection == nil {
      let remaining = remainingMS(until: deadline)
      guard remaining > 0 else {
        throw PagerError(code: "timeout", message: "no VM connected within \(timeoutMS) ms")
      }
      _ = try? Poll.wait([(listener, .readable)], timeoutMS: remaining)
      connection = try? UnixSocket.accept(listener)
    }
    KillPoint.reached("connected")
    return try complete(
      on: connection!, deadline: deadline, timeoutMS: timeoutMS, policy: HandshakePolicy(), lockDown: lockDown)
  }

  static func remainingMS(until deadline: UInt64) -> Int32 {
    let now = Clock.monotonicNanoseconds()
    return now >= deadline ? 0 : Int32((deadline - now) / 1_000_000) + 1
  }

  /// The handshake on an accepted connection `vm`: receive, validate, `lockDown`, ack. The
  /// connection is closed if it fails.
  static func complete(
    on vm: FileDescriptor, deadline: UInt64, timeoutMS: Int32, policy: HandshakePolicy,
    lockDown: () throws(PagerError) -> Void
  ) throws(PagerError) -> Session {
    do throws(PagerError) {
      let session = try receive(on: vm, deadline: deadline, timeoutMS: timeoutMS, policy: policy)
      KillPoint.reached("received-uffd")
      do throws(PagerError) {
        try lockDown()
        let ack = PagerAck(ok: true, pagerPID: getpid())
        do {
          try vm.writeAll(PagerFrame.encode(ack.jsonValue))
        } catch {
          throw PagerError(code: "io", message: "cannot acknowledge the handshake: \(error)")
        }
        KillPoint.reached("acked")
      } catch {
        session.uffd.fd.close()
        throw error
      }
      return session
    } catch {
      let nack = PagerAck(
        ok: false, pagerPID: getpid(), error: ControlErrorBody(code: error.code, message: error.message))
      try? vm.writeAll(PagerFrame.encode(nack.jsonValue))
      vm.close()
      throw error
    }
  }

  private static func receive(
    on vm: FileDescriptor, deadline: UInt64, timeoutMS: Int32, policy: HandshakePolicy
  ) throws(PagerError) -> Session {
    func remainingMS() -> Int32 { Handshake.remainingMS(until: deadline) }
    var bytes: [UInt8] = []
    var uffdFD: FileDescriptor? = nil
    var want = PagerHandshake.headerSize
    var closeOnFailure: FileDescriptor? = nil
    defer { closeOnFailure?.close() }
    while bytes.count < want {
      guard remainingMS() > 0 else {
        throw PagerError(
          code: "timeout",
          message: bytes.isEmpty
            ? "the VM connected but sent no handshake within \(timeoutMS) ms"
            : "handshake truncated: \(bytes.count) of \(want) bytes within \(timeoutMS) ms")
      }
      let ready = (try? Poll.wait([(vm, .readable)], timeoutMS: remainingMS())) ?? [[]]
      if ready[0].isEmpty { continue }
      let received: (bytes: [UInt8], fd: FileDescriptor?, truncated: Bool)
      do {
        received = try UnixSocket.receive(capacity: want - bytes.count, on: vm)
      } catch {
        throw PagerError(code: "io", message: "cannot read the handshake: \(error)")
      }
      if let fd = received.fd {
        if uffdFD != nil {
          fd.close()
          throw PagerError(code: "bad_handshake", message: "more than one descriptor attached")
        }
        uffdFD = fd
        closeOnFailure = fd
      }
      if received.truncated {
        throw PagerError(code: "bad_handshake", message: "more than one descriptor or oversized ancillary data")
      }
      if received.bytes.isEmpty {
        throw PagerError(
          code: "bad_handshake", message: "the VM closed the connection after \(bytes.count) of \(want) handshake bytes"
        )
      }
      bytes += received.bytes
      if bytes.count == PagerHandshake.headerSize && want == PagerHandshake.headerSize {
        do {
          want += try PagerFrame.bodyLength(header: bytes, source: "handshake")
        } catch {
          throw PagerError(code: "bad_handshake", message: error.message)
        }
      }
    }
    guard let uffdFD else {
      throw PagerError(code: "bad_handshake", message: "the handshake carried no userfaultfd (SCM_RIGHTS)")
    }
    guard policy.unconfined ? isUserfaultfd(uffdFD) : probeUserfaultfd(uffdFD) else {
      throw PagerError(code: "bad_handshake", message: "the descriptor attached to the handshake is not a userfaultfd")
    }
    let hello: PagerHello
    do {
      hello = try PagerHello.decode(try PagerFrame.decode(bytes, source: "handshake"), source: "handshake")
    } catch {
      throw PagerError(
        code: error.code == .unsupportedVersion ? "unsupported_version" : "bad_handshake", message: error.message)
    }
    if policy.unconfined, let peer = try? UnixSocket.peerPID(vm), peer != hello.vmPID {
      throw PagerError(code: "bad_handshake", message: "vm_pid \(hello.vmPID) is not the connected process (\(peer))")
    }
    let source = try policy.openImage(hello.memory)
    for (index, region) in hello.regions.enumerated() where region.fileOffset + region.size > source.size {
      throw PagerError(
        code: "bad_handshake",
        message:
          "region \(index) (file offset \(region.fileOffset) + \(region.size) bytes) lies outside \(source.path) (\(source.size) bytes)"
      )
    }
    closeOnFailure = nil
    return Session(uffd: Userfault(fd: uffdFD), hello: hello, vmSocket: vm, source: source)
  }

  /// Under the filter (no readlink): UFFDIO_WAKE over zero bytes is EINVAL on a userfaultfd (an
  /// empty range) and ENOTTY on anything else; it wakes nobody.
  private static func probeUserfaultfd(_ fd: FileDescriptor) -> Bool {
    do {
      try Userfault(fd: fd).wake(start: 0, length: 0)
      return true
    } catch {
      return error.errno.rawValue == EINVAL
    }
  }

  /// A uffd shows as "anon_inode:[userfaultfd]" in /proc/self/fd.
  private static func isUserfaultfd(_ fd: FileDescriptor) -> Bool {
    var buffer = [CChar](repeating: 0, count: 128)
    let n = readlink("/proc/self/fd/\(fd.rawValue)", &buffer, buffer.count - 1)
    guard n > 0 else { return false }
    return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) == "anon_inode:[userfaultfd]"
  }
}
