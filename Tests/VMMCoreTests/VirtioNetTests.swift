import Protocol
import Synchronization
import Syscalls
import Testing

@testable import VMMCore

#if canImport(Glibc)
  import Glibc
#endif

/// Errors the device reported, collected for assertions.
final class ErrorLog: Sendable {
  private let lines = Mutex<[String]>([])
  func append(_ line: String) { lines.withLock { $0.append(line) } }
  var all: [String] { lines.withLock { $0 } }
}

/// A virtio-net device driven through its registers as a guest driver would, with one end of a
/// SOCK_SEQPACKET pair as its backend (one frame per read and write, like a TAP) and the other
/// end held by the test as "the wire".
final class NetHarness {
  static let queueSize: UInt16 = 16
  static let bufferSize: UInt32 = 2048
  let memory: GuestMemory
  let device: VirtioNet
  let wire: FileDescriptor
  let deviceEnd: FileDescriptor
  let errors = ErrorLog()
  /// Next avail index the driver will publish, and next used entry it will read, per queue.
  var availIndex: [UInt16] = [0, 0]
  var usedSeen: [UInt16] = [0, 0]

  static func descriptorTable(_ q: Int) -> UInt64 { 0x1_0000 + UInt64(q) * 0x4000 }
  static func availRing(_ q: Int) -> UInt64 { descriptorTable(q) + 0x1000 }
  static func usedRing(_ q: Int) -> UInt64 { descriptorTable(q) + 0x2000 }
  static func buffer(_ q: Int, _ i: Int) -> UInt64 { 0x2_0000 + UInt64(q) * 0x1_0000 + UInt64(i) * UInt64(bufferSize) }

  init(memory: GuestMemory? = nil, mac: [UInt8] = NetworkConfig.defaultMAC, bringUp: Bool = true) throws {
    self.memory = try memory ?? GuestMemory.create(size: 2 << 20, backend: .anonymous)
    var fds: [Int32] = [0, 0]
    guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
      throw Errno.current
    }
    wire = FileDescriptor(rawValue: fds[0])
    deviceEnd = FileDescriptor(rawValue: fds[1])
    try deviceEnd.setNonBlocking()
    let errors = self.errors
    device = VirtioNet(
      base: 0xD000_2000, config: NetworkConfig(mac: mac, backend: deviceEnd), memory: self.memory, onGuestWork: {},
      onHostWork: {}, onError: { errors.append($0) })
    if bringUp { self.bringUp() }
  }

  deinit {
    device.shutdown()
    wire.close()
  }

  func write(_ offset: UInt64, _ value: UInt64) { device.mmioWrite(offset: offset, size: 4, value: value) }
  var status: UInt32 { UInt32(device.mmioRead(offset: 0x070, size: 4)) }

  /// ACK, DRIVER, features (word 0: `features0`, word 1: VERSION_1), FEATURES_OK, both queues, DRIVER_OK.
  func bringUp(features0: UInt32 = UInt32(VirtioNet.featureMAC)) {
    write(0x070, 1)
    write(0x070, 3)
    write(0x024, 0)
    write(0x020, UInt64(features0))
    write(0x024, 1)
    write(0x020, 1)
    write(0x070, 11)
    for q in 0..<2 {
      write(0x030, UInt64(q))
      write(0x038, UInt64(Self.queueSize))
      write(0x080, Self.descriptorTable(q))
      write(0x090, Self.availRing(q))
      write(0x0A0, Self.usedRing(q))
      write(0x044, 1)
    }
    write(0x070, 15)
  }

  func setDescriptor(_ q: Int, _ i: UInt16, address: UInt64, length: UInt32, flags: UInt16 = 0, next: UInt16 = 0) {
    let at = Self.descriptorTable(q) + 16 * UInt64(i)
    memory.write(address, at: at)
    memory.write(length, at: at + 8)
    memory.write(flags, at: at + 12)
    memory.write(next, at: at + 14)
  }

  func makeAvailable(_ q: Int, _ head: UInt16, notify: Bool = true) {
    memory.write(head, at: Self.availRing(q) + 4 + 2 * UInt64(availIndex[q] % Self.queueSize))
    availIndex[q] &+= 1
    memory.write(availIndex[q], at: Self.availRing(q) + 2)
    if notify { write(0x050, UInt64(q)) }
  }

  /// Posts receive buffer `i` (descriptor i of queue 0).
  func postReceive(_ i: UInt16, length: UInt32 = bufferSize) {
    setDescriptor(0, i, address: Self.buffer(0, Int(i)), length: length, flags: Virtqueue.descriptorWrite)
    makeAvailable(0, i)
  }

  /// Transmits `frame` behind a zeroed virtio-net header from tx buffer `i`.
  func transmit(_ frame: [UInt8], slot i: UInt16 = 0) {
    let at = Self.buffer(1, Int(i))
    memory.writeBytes([UInt8](repeating: 0, count: VirtioNet.headerSize) + frame, at: at)
    setDescriptor(1, i, address: at, length: UInt32(VirtioNet.headerSize + frame.count))
    makeAvailable(1, i)
  }

  /// The next used element of queue `q`, if the device published one.
  func nextUsed(_ q: Int) -> (id: UInt32, length: UInt32)? {
    guard let index = memory.read(UInt16.self, at: Self.usedRing(q) + 2), index != usedSeen[q] else { return nil }
    let element = Self.usedRing(q) + 4 + 8 * UInt64(usedSeen[q] % Self.queueSize)
    usedSeen[q] &+= 1
    return (memory.read(UInt32.self, at: element)!, memory.read(UInt32.self, at: element + 4)!)
  }

  /// A frame from the wire into the device, as the event loop would hand it over.
  func arrive(_ frame: [UInt8]) throws {
    try wire.writeAll(frame)
    pump()
  }

  /// Runs the event loop's part once if the device wants its backend polled.
  func pump() {
    for (fd, _) in device.pollDescriptors() { device.handle(fd, .readable) }
  }

  /// What the device sent on the wire (nil if nothing waits).
  func fromWire() throws -> [UInt8]? {
    guard try Poll.wait([(wire, .readable)], timeoutMS: 0)[0].contains(.readable) else { return nil }
    return try wire.read(upTo: 65536)
  }
}

/// A minimal Ethernet frame: broadcast destination, the test's source, type, payload.
func ethernetFrame(type: UInt16 = 0x0800, payload: [UInt8]) -> [UInt8] {
  [UInt8](repeating: 0xFF, count: 6) + [0x02, 0, 0, 0, 0, 1] + [UInt8(type >> 8), UInt8(type & 0xFF)] + payload
}

@Suite("virtio-net")
struct VirtioNetTests {
  @Test("config space holds the MAC; only MAC and VERSION_1 are offered; an unoffered feature is refused")
  func configAndFeatures() throws {
    let h = try NetHarness(mac: [0x02, 0x11, 0x22, 0x33, 0x44, 0x55], bringUp: false)
    #expect(h.device.mmioRead(offset: 0x008, size: 4) == 1)
    #expect(h.device.mmioRead(offset: 0x100, size: 4) == 0x3322_1102)
    #expect(h.device.mmioRead(offset: 0x104, size: 2) == 0x5544)
    #expect(h.device.mmioRead(offset: 0x106, size: 2) == 0, "no status field: VIRTIO_NET_F_STATUS is not offered")
    h.write(0x014, 0)
    #expect(h.device.mmioRead(offset: 0x010, size: 4) == UInt64(VirtioNet.featureMAC))
    // A driver asking for checksum offload (bit 0) is refused FEATURES_OK.
    h.bringUp(features0: 1 | UInt32(VirtioNet.featureMAC))
    #expect(h.status & VirtioMMIOTransport.Status.featuresOK == 0)
    // The MAC is read-only.
    h.device.mmioWrite(offset: 0x100, size: 4, value: 0)
    #expect(h.device.mmioRead(offset: 0x100, size: 4) == 0x3322_1102)
  }

  @Test("a transmitted chain reaches the wire as one frame without the virtio-net header")
  func transmit() throws {
    let h = try NetHarness()
    let frame = ethernetFrame(payload: Array(0..<60))
    h.transmit(frame)
    #expect(try h.fromWire() == frame)
    let used = try #require(h.nextUsed(1))
    #expect(used.id == 0)
    #expect(h.device.statistics.txFrames == 1)
    // A frame split over two descriptors is joined.
    let at = NetHarness.buffer(1, 1)
    h.memory.writeBytes([UInt8](repeating: 0, count: 12) + frame, at: at)
    h.setDescriptor(1, 1, address: at, length: 20, flags: Virtqueue.descriptorNext, next: 2)
    h.setDescriptor(1, 2, address: at + 20, length: UInt32(12 + frame.count - 20))
    h.makeAvailable(1, 1)
    #expect(try h.fromWire() == frame)
    #expect(h.errors.all.isEmpty, "\(h.errors.all)")
  }

  @Test("a frame from the wire lands in the next receive buffer behind a header with num_buffers = 1")
  func receive() throws {
    let h = try NetHarness()
    h.postReceive(0)
    h.postReceive(1)
    let frame = ethernetFrame(payload: [UInt8](repeating: 0xAB, count: 100))
    try h.arrive(frame)
    let used = try #require(h.nextUsed(0))
    #expect(used.id == 0)
    #expect(Int(used.length) == VirtioNet.headerSize + frame.count)
    let bytes = try #require(h.memory.readBytes(at: NetHarness.buffer(0, 0), count: Int(used.length)))
    #expect(bytes[0..<10].allSatisfy { $0 == 0 } && bytes[10] == 1 && bytes[11] == 0)
    #expect(Array(bytes[12...]) == frame)
    try h.arrive(frame)
    #expect(h.nextUsed(0)?.id == 1)
    #expect(h.device.statistics.rxFrames == 2)
  }

  @Test("without a receive buffer a frame waits, the backend is not polled, and it goes with the next buffer")
  func receiveWaitsForBuffer() throws {
    let h = try NetHarness()
    let first = ethernetFrame(payload: [1, 2, 3])
    let second = ethernetFrame(payload: [4, 5, 6])
    try h.wire.writeAll(first)
    try h.wire.writeAll(second)
    h.pump()
    #expect(h.nextUsed(0) == nil)
    #expect(h.device.pollDescriptors().isEmpty, "a frame is waiting: the wire is left alone")
    h.postReceive(3)
    let used = try #require(h.nextUsed(0))
    #expect(used.id == 3)
    #expect(h.memory.readBytes(at: NetHarness.buffer(0, 3) + 12, count: first.count) == first)
    // The second frame stayed in the kernel's queue and is read when asked for.
    h.postReceive(4)
    h.pump()
    #expect(h.nextUsed(0)?.id == 4)
    #expect(h.memory.readBytes(at: NetHarness.buffer(0, 4) + 12, count: second.count) == second)
  }

  @Test("malformed frames are dropped and counted; the device keeps working")
  func badFrames() throws {
    let h = try NetHarness()
    // Shorter than the header plus an Ethernet header.
    h.memory.writeBytes([1, 2, 3, 4, 5], at: NetHarness.buffer(1, 0))
    h.setDescriptor(1, 0, address: NetHarness.buffer(1, 0), length: 5)
    h.makeAvailable(1, 0)
    #expect(h.nextUsed(1) != nil, "the chain is returned")
    #expect(try h.fromWire() == nil)
    // Longer than the largest frame without offloads.
    h.transmit(ethernetFrame(payload: [UInt8](repeating: 0, count: VirtioNet.maxFrame)), slot: 1)
    #expect(try h.fromWire() == nil)
    #expect(h.device.statistics.txDropped == 2)
    #expect(h.errors.all.count == 2 && h.errors.all.allSatisfy { $0.contains("dropped") }, "\(h.errors.all)")
    // A receive buffer too small for the frame: the frame is dropped, the buffer comes back empty.
    h.postReceive(0, length: 20)
    try h.arrive(ethernetFrame(payload: [UInt8](repeating: 7, count: 200)))
    let used = try #require(h.nextUsed(0))
    #expect(used.length == 0)
    #expect(h.device.statistics.rxDropped == 1)
    // Still working.
    h.transmit(ethernetFrame(payload: [9]), slot: 2)
    #expect(try h.fromWire() == ethernetFrame(payload: [9]))
    #expect(h.status & VirtioMMIOTransport.Status.needsReset == 0)
  }

  @Test(
    "bad descriptors and ring indices set DEVICE_NEEDS_RESET with a named reason",
    arguments: ["outside RAM", "loop", "avail index backward", "avail entry beyond the queue"])
  func badRings(_ attack: String) throws {
    let h = try NetHarness()
    switch attack {
    case "outside RAM":
      h.setDescriptor(1, 0, address: 0x7FF0_0000_0000, length: 100)
      h.makeAvailable(1, 0)
    case "loop":
      h.setDescriptor(1, 0, address: NetHarness.buffer(1, 0), length: 64, flags: Virtqueue.descriptorNext, next: 0)
      h.makeAvailable(1, 0)
    case "avail index backward":
      h.memory.write(UInt16(0xFFFF), at: NetHarness.availRing(0) + 2)
      h.write(0x050, 0)
    default:
      h.memory.write(UInt16(0xFFF0), at: NetHarness.availRing(1) + 4)
      h.memory.write(UInt16(1), at: NetHarness.availRing(1) + 2)
      h.write(0x050, 1)
    }
    #expect(h.status & VirtioMMIOTransport.Status.needsReset != 0, "\(attack)")
    #expect(
      h.errors.all.contains { $0.hasPrefix("virtio-net: ") && $0.hasSuffix("device needs reset") }, "\(h.errors.all)")
    #expect(try h.fromWire() == nil)
    // Notifications after the failure do nothing.
    h.transmit(ethernetFrame(payload: [1]), slot: 3)
    #expect(try h.fromWire() == nil)
  }

  @Test("saved state restores the queues: the restored device continues at the next buffer of the same rings")
  func stateRoundTrip() throws {
    let h = try NetHarness()
    for i: UInt16 in 0..<4 { h.postReceive(i) }
    try h.arrive(ethernetFrame(payload: [1]))
    #expect(h.nextUsed(0)?.id == 0)
    h.transmit(ethernetFrame(payload: [2]))
    #expect(try h.fromWire() != nil)
    #expect(h.nextUsed(1)?.id == 0)
    // A frame arrives while the guest is paused for the snapshot: it waits, and is not saved.
    h.device.suspendDelivery()
    try h.wire.writeAll(ethernetFrame(payload: [0xEE]))
    #expect(h.device.pollDescriptors().isEmpty, "paused: the wire is not read")
    let state = h.device.saveState()

    // A child: same guest memory (as a restored snapshot has), a fresh wire.
    let child = try NetHarness(memory: h.memory, bringUp: false)
    try child.device.restoreState(state, source: "test")
    child.availIndex = h.availIndex
    child.usedSeen = h.usedSeen
    #expect(child.status == h.status)
    let frame = ethernetFrame(payload: [3, 3, 3])
    try child.arrive(frame)
    let used = try #require(child.nextUsed(0))
    #expect(used.id == 1, "the next posted buffer, not the first again")
    #expect(child.memory.readBytes(at: NetHarness.buffer(0, 1) + 12, count: frame.count) == frame)
    child.transmit(ethernetFrame(payload: [4]), slot: 1)
    #expect(try child.fromWire() == ethernetFrame(payload: [4]))
    #expect(child.nextUsed(1)?.id == 1)
    #expect(child.errors.all.isEmpty, "\(child.errors.all)")
  }

  @Test("restore refuses a state for another MAC, another device, a truncated or padded section")
  func restoreRefusesBadState() throws {
    let h = try NetHarness()
    let state = h.device.saveState()
    let other = try NetHarness(memory: h.memory, mac: [0x02, 9, 9, 9, 9, 9], bringUp: false)
    #expect(throws: ProtocolError.self) { try other.device.restoreState(state, source: "s") }
    #expect(throws: ProtocolError.self) { try h.device.restoreState(Array(state.dropLast()), source: "s") }
    #expect(throws: ProtocolError.self) { try h.device.restoreState(state + [0], source: "s") }
    var vsockState = ByteWriter()
    VirtioMMIOTransport(deviceID: 19, deviceFeatures: 0, queueSizes: [256, 256, 256]).save(into: &vsockState)
    #expect(throws: ProtocolError.self) {
      try h.device.restoreState(vsockState.bytes + NetworkConfig.defaultMAC, source: "s")
    }
    #expect(try VirtioNet.savedMAC(state, source: "s") == NetworkConfig.defaultMAC)
  }

  @Test("a NIC without a backend drops what the guest sends and never polls")
  func unplugged() throws {
    let memory = try GuestMemory.create(size: 2 << 20, backend: .anonymous)
    let device = VirtioNet(
      base: 0xD000_2000, config: NetworkConfig(backend: nil), memory: memory, onGuestWork: {}, onHostWork: {},
      onError: { _ in })
    #expect(device.pollDescriptors().isEmpty)
    #expect(device.mmioRead(offset: 0x100, size: 4) == 0x0000_FD02)
  }

  @Test("a backend that goes away unplugs the NIC instead of failing the VM")
  func backendGone() throws {
    let h = try NetHarness()
    h.postReceive(0)
    _ = Glibc.shutdown(h.wire.rawValue, Int32(SHUT_RDWR))
    h.pump()
    #expect(h.device.pollDescriptors().isEmpty)
    #expect(h.errors.all.contains { $0.contains("NIC unplugged") }, "\(h.errors.all)")
    h.transmit(ethernetFrame(payload: [1]))
    #expect(h.device.statistics.txDropped == 1)
  }
}
