import Protocol
import Syscalls
import Testing
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// Bad handshakes are rejected with a clear error and never hang the pager.
@Suite("Pager handshake: bad input", .serialized)
struct PagerHandshakeTests {
  /// A pager with a short handshake timeout and a 1 MiB memory file beside it.
  struct Fixture {
    let scratch: Scratch
    let pager: PagerProcess
    let memoryFile: String

    init(_ name: String) throws {
      scratch = try Scratch("handshake-\(name)")
      memoryFile = scratch.path + "/memory.bin"
      try FileSystem.writeAtomically(memoryFile, [UInt8](repeating: 1, count: 1 << 20))
      pager = try PagerProcess.launch(
        socket: scratch.path + "/pager.sock", logPath: scratch.path + "/pager.log", handshakeTimeoutMS: 700)
    }

    func hello(regionSize: UInt64 = 1 << 20, fileOffset: UInt64 = 0) -> PagerHello {
      PagerHello(
        vmPID: getpid(),
        regions: [
          PagerRegion(
            guestPhysicalAddress: 0, hostVirtualAddress: 0x7000_0000_0000, size: regionSize, fileOffset: fileOffset,
            pageSize: 4096)
        ], memory: PagerMemorySource(mode: .copy, layers: [memoryFile]))
    }

    /// Expects the pager to exit 1 within a bounded time, having logged `fragment`.
    func expectRejected(_ fragment: String, reply connection: FileDescriptor? = nil) {
      let started = Clock.monotonicNanoseconds()
      #expect(pager.wait(timeoutMS: 5000) == .exited(1))
      #expect(Clock.monotonicNanoseconds() - started < 3_000_000_000, "the pager did not hang")
      let log = lastLines(of: pager.logPath, count: 10)
      #expect(log.contains(fragment), "\(log)")
      if let connection {
        // The VM side gets the reason too, as an error frame.
        var bytes: [UInt8] = []
        while let chunk = try? connection.read(upTo: 4096), !chunk.isEmpty { bytes += chunk }
        if let frame = try? PagerFrame.decode(bytes, source: "nack"),
          let ack = try? PagerAck.decode(frame, source: "nack")
        {
          #expect(!ack.ok)
          #expect(ack.error?.message.contains(fragment) == true)
        } else {
          Issue.record("no error frame for the VM (\(bytes.count) bytes)")
        }
      }
    }
  }

  @Test("no descriptor attached")
  func noDescriptor() throws {
    let f = try Fixture("nofd")
    let c = try UnixSocket.connect(path: f.pager.socket)
    defer { c.close() }
    try c.writeAll(PagerFrame.encode(f.hello().jsonValue))
    f.expectRejected("carried no userfaultfd", reply: c)
  }

  @Test("a descriptor that is not a userfaultfd")
  func notUserfault() throws {
    let f = try Fixture("notuffd")
    let c = try UnixSocket.connect(path: f.pager.socket)
    defer { c.close() }
    let file = try FileDescriptor.open(f.memoryFile, .readOnly)
    defer { file.close() }
    try UnixSocket.send(PagerFrame.encode(f.hello().jsonValue), fd: file, on: c)
    f.expectRejected("is not a userfaultfd", reply: c)
  }

  @Test("wrong frame version")
  func wrongVersion() throws {
    let f = try Fixture("version")
    let c = try UnixSocket.connect(path: f.pager.socket)
    defer { c.close() }
    var frame = PagerFrame.encode(f.hello().jsonValue)
    frame[4] = 9
    try c.writeAll(frame)
    f.expectRejected("frame version 9", reply: c)
  }

  @Test("wrong handshake version in the body")
  func wrongBodyVersion() throws {
    let f = try Fixture("bodyversion")
    let c = try UnixSocket.connect(path: f.pager.socket)
    defer { c.close() }
    guard case .object(var body) = f.hello().jsonValue else { return }
    body["version"] = .integer(2)
    let (uffd, _) = try Userfault.create(features: [])
    defer { uffd.fd.close() }
    try UnixSocket.send(PagerFrame.encode(.object(body)), fd: uffd.fd, on: c)
    f.expectRejected("handshake version 2", reply: c)
  }

  @Test("truncated frame: the peer closes mid-body")
  func truncated() throws {
    let f = try Fixture("truncated")
    let c = try UnixSocket.connect(path: f.pager.socket)
    let frame = PagerFrame.encode(f.hello().jsonValue)
    try c.writeAll(frame.prefix(frame.count / 2))
    c.close()
    f.expectRejected("closed the connection after")
  }

  @Test("oversized frame")
  func oversized() throws {
    let f = try Fixture("oversized")
    let c = try UnixSocket.connect(path: f.pager.socket)
    defer { c.close() }
    var w = ByteWriter()
    w.u32(PagerHandshake.magic)
    w.u16(PagerHandshake.version)
    w.u16(0)
    w.u32(16 << 20)
    try c.writeAll(w.bytes)
    f.expectRejected("exceeds", reply: c)
  }

  @Test("a region outside the memory file")
  func regionOutsideFile() throws {
    let f = try Fixture("outside")
    let c = try UnixSocket.connect(path: f.pager.socket)
    defer { c.close() }
    let (uffd, _) = try Userfault.create(features: [])
    defer { uffd.fd.close() }
    try UnixSocket.send(PagerFrame.encode(f.hello(regionSize: 2 << 20).jsonValue), fd: uffd.fd, on: c)
    f.expectRejected("lies outside", reply: c)
  }

  @Test("a peer that connects and never sends")
  func silentPeer() throws {
    let f = try Fixture("silent")
    let c = try UnixSocket.connect(path: f.pager.socket)
    defer { c.close() }
    f.expectRejected("sent no handshake within 700 ms", reply: c)
  }

  @Test("nobody connects")
  func nobody() throws {
    let f = try Fixture("nobody")
    f.expectRejected("no VM connected within 700 ms")
    #expect(!FileSystem.exists(f.pager.socket), "the pager removed its socket")
  }
}
