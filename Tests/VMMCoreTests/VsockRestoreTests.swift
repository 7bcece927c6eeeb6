import Protocol
import Syscalls
import Testing

@testable import VMMCore

#if canImport(Glibc)
  import Glibc
#endif

/// Drives a vsock device through its MMIO registers as a virtio driver would: three queues in
/// guest memory, features negotiated, DRIVER_OK.
struct VsockDriver {
  let memory: GuestMemory
  let device: VirtioVsock
  static let queueSize: UInt16 = 8
  /// Queue q's descriptor table, available ring and used ring.
  func rings(_ q: Int) -> (desc: UInt64, avail: UInt64, used: UInt64) {
    let base = UInt64(0x1_0000 + q * 0x4000)
    return (base, base + 0x1000, base + 0x2000)
  }

  init() throws {
    memory = try GuestMemory.create(size: 2 << 20, backend: .anonymous)
    device = VirtioVsock(
      base: X86Layout.virtioMMIOBase, guestCID: 3, memory: memory, socketPath: "/tmp/unused-vsock-test",
      onGuestWork: {}, onHostWork: {}, onError: { _ in })
    write(0x70, 1 | 2)  // ACKNOWLEDGE | DRIVER
    write(0x24, 1)
    write(0x20, 1)  // VERSION_1
    write(0x70, 1 | 2 | 8)  // FEATURES_OK
    for q in 0..<3 {
      let r = rings(q)
      write(0x30, UInt32(q))
      write(0x38, UInt32(Self.queueSize))
      write(0x80, UInt32(r.desc))
      write(0x90, UInt32(r.avail))
      write(0xA0, UInt32(r.used))
      write(0x44, 1)
    }
    write(0x70, 1 | 2 | 8 | 4)  // DRIVER_OK
  }

  func write(_ offset: UInt64, _ value: UInt32) { device.mmioWrite(offset: offset, size: 4, value: UInt64(value)) }

  /// Offers one device-writable buffer of `length` bytes on queue q.
  func offer(queue q: Int, at address: UInt64, length: UInt32) {
    let r = rings(q)
    memory.write(address, at: r.desc)
    memory.write(length, at: r.desc + 8)
    memory.write(Virtqueue.descriptorWrite, at: r.desc + 12)
    let index = memory.read(UInt16.self, at: r.avail + 2)!
    memory.write(UInt16(0), at: r.avail + 4 + 2 * UInt64(index % Self.queueSize))
    memory.write(index &+ 1, at: r.avail + 2)
  }

  func usedCount(queue q: Int) -> UInt16 { memory.read(UInt16.self, at: rings(q).used + 2)! }
}

@Suite("vsock restore of a Linux guest")
struct VsockRestoreTests {
  @Test("the transport reset event goes first; other packets wait until the guest refills its event queue")
  func transportResetHoldsPackets() throws {
    let driver = try VsockDriver()
    // A saved state with one connection the guest believes open: restore queues its RST.
    var saved = driver.device.saveState()
    saved.removeLast(4)  // connection count 0
    var w = ByteWriter()
    w.u32(1)
    w.u32(1024)
    w.u32(1 << 30)
    saved += w.bytes
    try driver.device.restoreState(saved)
    driver.device.queueTransportReset()
    driver.offer(queue: 0, at: 0x8_0000, length: 4096)
    driver.offer(queue: 2, at: 0x9_0000, length: 8)
    driver.memory.write(UInt32(0xFFFF_FFFF), at: 0x9_0000)

    driver.device.kick()
    #expect(driver.usedCount(queue: 2) == 1)
    #expect(driver.memory.read(UInt32.self, at: 0x9_0000) == 0)  // VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
    #expect(driver.memory.read(UInt32.self, at: driver.rings(2).used + 8) == 4)  // used length
    #expect(driver.usedCount(queue: 0) == 0, "nothing reaches the guest before it handled the event")

    driver.write(0x50, 0)  // a receive-queue kick is not the acknowledgement
    #expect(driver.usedCount(queue: 0) == 0)
    driver.write(0x50, 2)  // the guest refilled its event queue: it handled the reset
    #expect(driver.usedCount(queue: 0) == 1)
    let op = driver.memory.read(UInt16.self, at: 0x8_0000 + 30)
    #expect(op == 3)  // VIRTIO_VSOCK_OP_RST for the stale connection
  }

  @Test("while the VM is paused nothing is written into guest memory; resuming delivers")
  func suspendedDelivery() throws {
    let driver = try VsockDriver()
    var saved = driver.device.saveState()
    saved.removeLast(4)
    var w = ByteWriter()
    w.u32(1)
    w.u32(7)
    w.u32(1 << 30)
    saved += w.bytes
    try driver.device.restoreState(saved)
    driver.offer(queue: 0, at: 0x8_0000, length: 4096)
    driver.device.suspendDelivery()
    driver.device.kick()
    #expect(driver.usedCount(queue: 0) == 0)
    driver.device.resumeDelivery()
    #expect(driver.usedCount(queue: 0) == 1)
  }

  @Test("without a transport reset (the test guest) packets flow at once")
  func noResetNoHold() throws {
    let driver = try VsockDriver()
    var saved = driver.device.saveState()
    saved.removeLast(4)
    var w = ByteWriter()
    w.u32(1)
    w.u32(7)
    w.u32(1 << 30)
    saved += w.bytes
    try driver.device.restoreState(saved)
    driver.offer(queue: 0, at: 0x8_0000, length: 4096)
    driver.device.kick()
    #expect(driver.usedCount(queue: 0) == 1)
  }
}

@Suite("vsock host connections")
struct VsockHostConnectionTests {
  /// Runs the device's poll sources a few rounds, as the event loop would.
  func pump(_ device: VirtioVsock, rounds: Int = 60) {
    for _ in 0..<rounds {
      let entries = device.pollDescriptors()
      guard let ready = try? Poll.wait(entries, timeoutMS: 5) else { return }
      for (i, events) in ready.enumerated() where !events.isEmpty { device.handle(entries[i].0, events) }
    }
  }

  @Test("a host that hangs up before the guest answers its CONNECT is dropped, and the guest gets a reset")
  func hangUpWhileConnecting() throws {
    let path = "/tmp/forkd-vsock-test-\(getpid())-\(Clock.monotonicNanoseconds())"
    let memory = try GuestMemory.create(size: 2 << 20, backend: .anonymous)
    let device = VirtioVsock(
      base: X86Layout.virtioMMIOBase, guestCID: 3, memory: memory, socketPath: path, onGuestWork: {},
      onHostWork: {}, onError: { _ in })
    try device.listen()
    defer { device.shutdown() }
    let client = try UnixSocket.connect(path: path)
    try client.writeAll(Array("CONNECT 5\n".utf8))
    pump(device)
    // Listener + the connection waiting for the guest's answer.
    #expect(device.pollDescriptors().count == 2)
    client.close()
    pump(device)
    #expect(device.pollDescriptors().count == 1, "the hung-up connection is gone from the poll set")
  }
}
