import Protocol
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// What a VM's NIC is: its MAC and, optionally, the packet descriptor behind it (a TAP device, or
/// in tests one end of a SOCK_SEQPACKET pair: both carry one Ethernet frame per read/write).
/// Without a backend the NIC is a cable unplugged: transmitted frames are dropped.
public struct NetworkConfig: Sendable {
  /// Locally administered, unicast: 02:fd:00:00:00:02. Every clone of a snapshot keeps its
  /// parent's MAC (and the guest its IP); each child's own namespace keeps them apart.
  public static let defaultMAC: [UInt8] = [0x02, 0xFD, 0x00, 0x00, 0x00, 0x02]

  public var mac: [UInt8]
  public var backend: FileDescriptor?

  public init(mac: [UInt8] = NetworkConfig.defaultMAC, backend: FileDescriptor?) {
    self.mac = mac
    self.backend = backend
  }
}

/// Frames and drops the NIC counted since it started.
public struct NetStatistics: Equatable, Sendable {
  public var rxFrames: UInt64 = 0
  public var txFrames: UInt64 = 0
  public var rxDropped: UInt64 = 0
  public var txDropped: UInt64 = 0
}

/// virtio-net (device id 1, virtio 1.x §5.1): queue 0 receive, queue 1 transmit, VIRTIO_NET_F_MAC
/// and VERSION_1 only (no offloads, no mergeable buffers, no control queue). Transmit runs on the
/// notifying vCPU; receive runs on the event loop, which polls the backend only while the guest
/// has a receive buffer for the frame it would read. A malformed ring sets DEVICE_NEEDS_RESET; a
/// malformed frame is dropped and counted.
public final class VirtioNet: MMIODevice, PollSource, @unchecked Sendable {
  public static let deviceID: UInt32 = 1
  public static let queueSize: UInt16 = 256
  public static let featureMAC: UInt64 = 1 << 5
  /// `struct virtio_net_hdr` with `num_buffers`, as VERSION_1 always has it.
  public static let headerSize = 12
  /// Ethernet header + 1500 bytes MTU + a VLAN tag: the most a guest without offloads sends.
  public static let maxFrame = 1518
  /// Frames read from the backend per event-loop wakeup, so one busy NIC cannot starve the rest.
  static let receiveBudget = 64

  public let mmioRange: Range<UInt64>
  public let mac: [UInt8]
  private let memory: GuestMemory
  private let lock = ConditionLock()
  private var transport: VirtioMMIOTransport
  private var backend: FileDescriptor?
  /// A frame read from the backend that waits for a receive buffer (at most one: while it waits
  /// the backend is not polled, so the kernel queues the rest).
  private var pendingFrame: [UInt8]?
  private var deliverySuspended = false
  private var stats = NetStatistics()
  /// Where the event loop reads frames (one allocation for the device's life).
  private var receiveBuffer = [UInt8](repeating: 0, count: 65536)
  private let onGuestWork: @Sendable () -> Void
  private let onHostWork: @Sendable () -> Void
  private let onError: @Sendable (String) -> Void

  /// - Parameters:
  ///   - onGuestWork: the receive used ring changed: interrupt, or wake a vCPU parked on HLT.
  ///   - onHostWork: what the backend should be polled for changed: wake the event loop.
  public init(
    base: UInt64, config: NetworkConfig, memory: GuestMemory, onGuestWork: @escaping @Sendable () -> Void,
    onHostWork: @escaping @Sendable () -> Void, onError: @escaping @Sendable (String) -> Void
  ) {
    mmioRange = base..<(base + X86Layout.virtioMMIOStride)
    mac = config.mac.count == 6 ? config.mac : NetworkConfig.defaultMAC
    backend = config.backend
    self.memory = memory
    self.onGuestWork = onGuestWork
    self.onHostWork = onHostWork
    self.onError = onError
    transport = VirtioMMIOTransport(
      deviceID: Self.deviceID, deviceFeatures: Self.featureMAC, queueSizes: [Self.queueSize, Self.queueSize])
  }

  public var statistics: NetStatistics { lock.withLock { stats } }

  /// Closes the backend (the TAP disappears with its last descriptor unless it is persistent).
  public func shutdown() {
    lock.withLock {
      backend?.close()
      backend = nil
      pendingFrame = nil
    }
  }

  // MARK: MMIO

  public func mmioRead(offset: UInt64, size: Int) -> UInt64 {
    lock.withLock {
      guard offset >= 0x100 else { return UInt64(transport.read(offset: offset)) }
      // Config space: mac[6]; nothing else was offered, so the rest reads 0.
      let start = offset - 0x100
      var value: UInt64 = 0
      for i in 0..<UInt64(min(max(size, 0), 8)) where start + i < 6 {
        value |= UInt64(mac[Int(start + i)]) << (8 * i)
      }
      return value
    }
  }

  public func mmioWrite(offset: UInt64, size: Int, value: UInt64) {
    guard offset < 0x100 else { return }  // the MAC is read-only (no VIRTIO_NET_F_CTRL_MAC_ADDR)
    lock.withLock {
      switch transport.write(offset: offset, value: UInt32(truncatingIfNeeded: value), memory: memory) {
      case .notify(queue: 0), .activated:
        // New receive buffers: a waiting frame can go, and the backend may be polled again. The
        // ring index is checked now, not when a frame happens to arrive, so a lying guest is
        // refused at the notification that lied.
        if transport.queues[0].ready {
          do throws(VirtqueueError) {
            _ = try transport.queues[0].pendingCount(memory: memory)
          } catch {
            failLocked(error)
            return
          }
        }
        deliverPendingLocked()
        onHostWork()
      case .notify(queue: 1):
        transmitLocked()
      case .reset:
        pendingFrame = nil
      default:
        break
      }
    }
  }

  // MARK: Guest → backend

  private func transmitLocked() {
    var completed = false
    defer {
      // Linux frees sent buffers from its tx interrupt; without one a full ring would stall.
      if completed {
        transport.interruptStatus |= 1
        onGuestWork()
      }
    }
    do throws(VirtqueueError) {
      // At most one ring's worth per notification: completing a chain can make another appear
      // when the guest overlaps its rings.
      var budget = Int(transport.queues[1].size)
      while budget > 0, let chain = try transport.queues[1].popAvailable(memory: memory) {
        budget -= 1
        let bytes = gatherReadable(chain, memory: memory, limit: Self.headerSize + Self.maxFrame + 1)
        try transport.queues[1].pushUsed(head: chain.head, length: 0, memory: memory)
        completed = true
        send(bytes)
      }
    } catch {
      failLocked(error)
    }
  }

  /// One transmitted chain: the header (no offloads were negotiated, so it carries nothing the
  /// device must act on), then the frame.
  private func send(_ bytes: [UInt8]) {
    let frameLength = bytes.count - Self.headerSize
    guard frameLength >= 14 else {
      stats.txDropped += 1
      onError(
        "virtio-net: tx chain of \(bytes.count) bytes cannot hold the \(Self.headerSize)-byte header and an Ethernet header; dropped"
      )
      return
    }
    guard frameLength <= Self.maxFrame else {
      stats.txDropped += 1
      onError("virtio-net: tx frame longer than \(Self.maxFrame) bytes (no offloads were negotiated); dropped")
      return
    }
    guard let backend else {
      stats.txDropped += 1
      return
    }
    let written = bytes.withUnsafeBytes { raw in
      Glibc.write(backend.rawValue, raw.baseAddress! + Self.headerSize, frameLength)
    }
    // A full or gone backend loses the frame, as a wire would; the guest's protocols retry.
    if written == frameLength { stats.txFrames += 1 } else { stats.txDropped += 1 }
  }

  // MARK: Backend → guest

  /// Puts the waiting frame into the next receive buffer; returns whether it went (or was dropped).
  @discardableResult
  private func deliverPendingLocked() -> Bool {
    guard let frame = pendingFrame else { return true }
    guard transport.isActive, transport.queues[0].ready, !deliverySuspended else { return false }
    do throws(VirtqueueError) {
      guard let chain = try transport.queues[0].popAvailable(memory: memory) else { return false }
      pendingFrame = nil
      let capacity = chain.writable.reduce(0) { $0 + Int($1.length) }
      guard capacity >= Self.headerSize + frame.count else {
        stats.rxDropped += 1
        onError(
          "virtio-net: rx buffer of \(capacity) bytes cannot hold a \(frame.count)-byte frame and its header; frame dropped"
        )
        try transport.queues[0].pushUsed(head: chain.head, length: 0, memory: memory)
        return true
      }
      var header = [UInt8](repeating: 0, count: Self.headerSize)
      header[10] = 1  // num_buffers: one chain per frame
      let written = scatterWritable(header + frame, into: chain, memory: memory)
      try transport.queues[0].pushUsed(head: chain.head, length: UInt32(written), memory: memory)
      stats.rxFrames += 1
      transport.interruptStatus |= 1
      onGuestWork()
    } catch {
      pendingFrame = nil
      failLocked(error)
    }
    return true
  }

  private func receiveLocked() {
    guard let backend else { return }
    for _ in 0..<Self.receiveBudget {
      guard deliverPendingLocked() else { return }
      let n = receiveBuffer.withUnsafeMutableBytes { Glibc.read(backend.rawValue, $0.baseAddress, $0.count) }
      if n < 0 && (errno == EAGAIN || errno == EINTR) { return }
      guard n > 0 else {
        // The backend is gone (EOF or an error other than "nothing to read"): unplug the cable.
        onError("virtio-net: the backend \(backend) failed (read returned \(n), errno \(errno)); NIC unplugged")
        backend.close()
        self.backend = nil
        return
      }
      pendingFrame = Array(receiveBuffer[0..<n])
    }
    deliverPendingLocked()
  }

  private func failLocked(_ error: VirtqueueError) {
    transport.markNeedsReset()
    onError("virtio-net: \(error.message); device needs reset")
  }

  // MARK: Event loop

  public func pollDescriptors() -> [(FileDescriptor, Poll.Events)] {
    lock.withLock {
      guard let backend, pendingFrame == nil, !deliverySuspended, transport.isActive, transport.queues[0].ready
      else { return [] }
      return [(backend, .readable)]
    }
  }

  public func handle(_ fd: FileDescriptor, _ events: Poll.Events) {
    lock.withLock {
      guard fd == backend else { return }
      receiveLocked()
    }
  }

  /// Stops writing into guest memory until `resumeDelivery` (the VM is paused for a snapshot).
  public func suspendDelivery() {
    lock.withLock { deliverySuspended = true }
  }

  public func resumeDelivery() {
    lock.withLock {
      deliverySuspended = false
      deliverPendingLocked()
    }
    onHostWork()
  }

  // MARK: State

  public static let stateVersion: UInt32 = 1

  /// Transport, queues and MAC. A frame waiting for a receive buffer is not saved: in-flight
  /// frames may be lost across a snapshot, never half-delivered.
  public func saveState() -> [UInt8] {
    lock.withLock {
      var w = ByteWriter()
      transport.save(into: &w)
      for byte in mac { w.u8(byte) }
      return w.bytes
    }
  }

  /// The MAC a saved state carries (needed before the device exists).
  public static func savedMAC(_ bytes: [UInt8], source: String) throws(ProtocolError) -> [UInt8] {
    var r = ByteReader(bytes, source: source)
    _ = try VirtioMMIOTransport.restore(from: &r, expectedDeviceID: deviceID)
    var mac: [UInt8] = []
    for _ in 0..<6 { mac.append(try r.u8()) }
    try r.expectEnd()
    return mac
  }

  public func restoreState(_ bytes: [UInt8], source: String) throws(ProtocolError) {
    var r = ByteReader(bytes, source: source)
    let restored = try VirtioMMIOTransport.restore(from: &r, expectedDeviceID: Self.deviceID)
    guard restored.queues.map(\.maxSize) == [Self.queueSize, Self.queueSize] else {
      throw ProtocolError(.badValue, "\(source): \(restored.queues.count) virtqueues, expected 2")
    }
    guard restored.deviceFeatures & ~(Self.featureMAC | VirtioMMIOTransport.featureVersion1) == 0 else {
      throw ProtocolError(
        .badValue, "\(source): device features \(hex64(restored.deviceFeatures)) this NIC never offers")
    }
    try restored.checkRestoredQueues(memory: memory, source: source)
    var saved: [UInt8] = []
    for _ in 0..<6 { saved.append(try r.u8()) }
    try r.expectEnd()
    guard saved == mac else {
      throw ProtocolError(.badValue, "\(source): the saved MAC differs from this NIC's")
    }
    lock.withLock {
      transport = restored
      pendingFrame = nil
    }
  }
}
