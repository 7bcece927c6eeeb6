import Protocol
import Testing

@testable import VMMCore

/// A split virtqueue laid out in guest memory by hand, as a driver would.
struct SyntheticQueue {
  let memory: GuestMemory
  let size: UInt16 = 8
  let desc: UInt64 = 0x1_0000
  let avail: UInt64 = 0x1_1000
  let used: UInt64 = 0x1_2000
  var queue: Virtqueue
  var availIndex: UInt16 = 0

  init() throws {
    memory = try GuestMemory.create(size: 2 << 20, backend: .anonymous)
    queue = Virtqueue(maxSize: 256)
    queue.size = size
    queue.descriptorTable = desc
    queue.availableRing = avail
    queue.usedRing = used
    queue.ready = true
  }

  func setDescriptor(_ i: UInt16, address: UInt64, length: UInt32, flags: UInt16 = 0, next: UInt16 = 0) {
    let at = desc + 16 * UInt64(i)
    memory.write(address, at: at)
    memory.write(length, at: at + 8)
    memory.write(flags, at: at + 12)
    memory.write(next, at: at + 14)
  }

  mutating func makeAvailable(_ head: UInt16) {
    memory.write(head, at: avail + 4 + 2 * UInt64(availIndex % size))
    availIndex &+= 1
    memory.write(availIndex, at: avail + 2)
  }
}

@Suite("Virtqueue")
struct VirtqueueTests {
  @Test("walks a chain of readable then writable buffers and publishes used entries")
  func chain() throws {
    var q = try SyntheticQueue()
    q.setDescriptor(0, address: 0x2_0000, length: 44, flags: Virtqueue.descriptorNext, next: 3)
    q.setDescriptor(3, address: 0x2_1000, length: 100, flags: Virtqueue.descriptorNext, next: 5)
    q.setDescriptor(5, address: 0x2_2000, length: 4096, flags: Virtqueue.descriptorWrite)
    q.makeAvailable(0)
    let chain = try #require(try q.queue.popAvailable(memory: q.memory))
    #expect(chain.head == 0)
    #expect(chain.readable.map(\.length) == [44, 100])
    #expect(chain.writable.map(\.address) == [0x2_2000])
    #expect(try q.queue.popAvailable(memory: q.memory) == nil)
    try q.queue.pushUsed(head: chain.head, length: 77, memory: q.memory)
    #expect(q.memory.read(UInt16.self, at: q.used + 2) == 1)
    #expect(q.memory.read(UInt32.self, at: q.used + 4) == 0)
    #expect(q.memory.read(UInt32.self, at: q.used + 8) == 77)
  }

  @Test("a descriptor loop is detected instead of spinning")
  func loop() throws {
    var q = try SyntheticQueue()
    q.setDescriptor(0, address: 0x2_0000, length: 8, flags: Virtqueue.descriptorNext, next: 1)
    q.setDescriptor(1, address: 0x2_0000, length: 8, flags: Virtqueue.descriptorNext, next: 0)
    q.makeAvailable(0)
    #expect(throws: VirtqueueError.self) { try q.queue.popAvailable(memory: q.memory) }
  }

  @Test(
    "malformed descriptors are refused",
    arguments: [
      (UInt64(0x1F_FFF0), UInt32(64), UInt16(0), UInt16(0)),  // runs past the end of RAM
      (UInt64(0xD000_0000), UInt32(8), UInt16(0), UInt16(0)),  // points at the MMIO window
      (UInt64.max - 4, UInt32(16), UInt16(0), UInt16(0)),  // address overflow
      (UInt64(0x2_0000), UInt32(8), Virtqueue.descriptorIndirect, UInt16(0)),  // indirect not offered
      (UInt64(0x2_0000), UInt32(8), Virtqueue.descriptorNext, UInt16(200)),  // next outside the queue
      (UInt64(0x2_0000), UInt32.max, UInt16(0), UInt16(0)),  // huge length
    ])
  func malformed(address: UInt64, length: UInt32, flags: UInt16, next: UInt16) throws {
    var q = try SyntheticQueue()
    q.setDescriptor(0, address: address, length: length, flags: flags, next: next)
    q.makeAvailable(0)
    #expect(throws: VirtqueueError.self) { try q.queue.popAvailable(memory: q.memory) }
  }

  @Test("a readable buffer after a writable one violates the spec")
  func ordering() throws {
    var q = try SyntheticQueue()
    q.setDescriptor(
      0, address: 0x2_0000, length: 8, flags: Virtqueue.descriptorNext | Virtqueue.descriptorWrite, next: 1)
    q.setDescriptor(1, address: 0x2_1000, length: 8)
    q.makeAvailable(0)
    #expect(throws: VirtqueueError.self) { try q.queue.popAvailable(memory: q.memory) }
  }

  @Test("an available index too far ahead is an error, not a wild read")
  func badIndex() throws {
    let q = try SyntheticQueue()
    q.memory.write(UInt16(100), at: q.avail + 2)
    var queue = q.queue
    #expect(throws: VirtqueueError.self) { try queue.popAvailable(memory: q.memory) }
  }

  @Test("the ring index wraps at 2^16")
  func wrap() throws {
    var q = try SyntheticQueue()
    q.queue.lastAvailable = UInt16.max
    q.availIndex = UInt16.max
    q.memory.write(UInt16.max, at: q.avail + 2)
    q.setDescriptor(2, address: 0x2_0000, length: 8)
    q.makeAvailable(2)
    let chain = try #require(try q.queue.popAvailable(memory: q.memory))
    #expect(chain.head == 2)
    #expect(q.queue.lastAvailable == 0)
  }

  @Test("queue configuration outside RAM is refused when the driver sets it ready")
  func transportValidation() throws {
    let memory = try GuestMemory.create(size: 2 << 20, backend: .anonymous)
    var t = VirtioMMIOTransport(deviceID: 19, deviceFeatures: 0, queueSizes: [256])
    #expect(t.read(offset: 0) == VirtioMMIOTransport.magic)
    #expect(t.read(offset: 4) == 2)
    #expect(t.read(offset: 8) == 19)
    _ = t.write(offset: 0x30, value: 0, memory: memory)
    _ = t.write(offset: 0x38, value: 16, memory: memory)
    _ = t.write(offset: 0x80, value: 0xFFFF_0000, memory: memory)  // descriptor table past RAM
    _ = t.write(offset: 0x44, value: 1, memory: memory)
    #expect(t.read(offset: 0x44) == 0)
    #expect(t.status & VirtioMMIOTransport.Status.needsReset != 0)
    // A reset clears it.
    #expect(t.write(offset: 0x70, value: 0, memory: memory) == .reset)
    #expect(t.status == 0)
  }

  @Test("FEATURES_OK sticks only for offered features including VERSION_1")
  func features() throws {
    let memory = try GuestMemory.create(size: 2 << 20, backend: .anonymous)
    var t = VirtioMMIOTransport(deviceID: 19, deviceFeatures: 0, queueSizes: [256])
    _ = t.write(offset: 0x70, value: 3, memory: memory)
    _ = t.write(offset: 0x70, value: 3 | 8, memory: memory)  // no VERSION_1 negotiated
    #expect(t.read(offset: 0x70) & 8 == 0)
    _ = t.write(offset: 0x24, value: 1, memory: memory)
    _ = t.write(offset: 0x20, value: 1, memory: memory)
    _ = t.write(offset: 0x70, value: 3 | 8, memory: memory)
    #expect(t.read(offset: 0x70) & 8 == 8)
  }

  @Test("queue and transport state round-trip through the state encoding")
  func stateRoundTrip() throws {
    var t = VirtioMMIOTransport(deviceID: 19, deviceFeatures: 0, queueSizes: [256, 256, 256])
    t.status = 0xF
    t.queues[1].size = 64
    t.queues[1].descriptorTable = 0x1234_0000
    t.queues[1].lastAvailable = 65000
    t.queues[1].ready = true
    var w = ByteWriter()
    t.save(into: &w)
    var r = ByteReader(w.bytes, source: "test")
    let back = try VirtioMMIOTransport.restore(from: &r, expectedDeviceID: 19)
    #expect(back == t)
    var r2 = ByteReader(w.bytes, source: "test")
    #expect(throws: ProtocolError.self) { try VirtioMMIOTransport.restore(from: &r2, expectedDeviceID: 2) }
  }
}
