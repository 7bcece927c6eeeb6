import Protocol
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// virtio-vsock (device id 19) with Firecracker's host side: one Unix socket per VM; the host
/// connects, writes `CONNECT <port>\n`, gets `OK <hostport>\n` and then a byte stream to that
/// guest port. A guest connecting to host port P reaches `<socket path>_P`.
public final class VirtioVsock: MMIODevice, PollSource, @unchecked Sendable {
  public static let deviceID: UInt32 = 19
  public static let hostCID: UInt64 = 2
  public static let headerSize = 44
  public static let queueSize: UInt16 = 256
  /// Receive buffer the VMM advertises per connection (guest → host credit).
  public static let bufferAllocation: UInt32 = 256 << 10
  static let maxHandshakeBytes = 64
  static let firstHostPort: UInt32 = 1 << 30

  enum Op: UInt16 {
    case request = 1, response, reset, shutdown, readWrite, creditUpdate, creditRequest
  }

  struct Header: Equatable {
    var sourceCID: UInt64
    var destinationCID: UInt64
    var sourcePort: UInt32
    var destinationPort: UInt32
    var length: UInt32
    var type: UInt16
    var op: UInt16
    var flags: UInt32
    var bufferAllocation: UInt32
    var forwardCount: UInt32

    init(
      sourceCID: UInt64, destinationCID: UInt64, sourcePort: UInt32, destinationPort: UInt32, length: UInt32 = 0,
      op: Op, flags: UInt32 = 0, bufferAllocation: UInt32 = 0, forwardCount: UInt32 = 0
    ) {
      self.sourceCID = sourceCID
      self.destinationCID = destinationCID
      self.sourcePort = sourcePort
      self.destinationPort = destinationPort
      self.length = length
      type = 1
      self.op = op.rawValue
      self.flags = flags
      self.bufferAllocation = bufferAllocation
      self.forwardCount = forwardCount
    }

    init?(_ bytes: [UInt8]) {
      guard bytes.count >= VirtioVsock.headerSize else { return nil }
      var r = ByteReader(bytes, source: "vsock header")
      guard let sc = try? r.u64(), let dc = try? r.u64(), let sp = try? r.u32(), let dp = try? r.u32(),
        let len = try? r.u32(), let type = try? r.u16(), let op = try? r.u16(), let flags = try? r.u32(),
        let buf = try? r.u32(), let fwd = try? r.u32()
      else { return nil }
      (sourceCID, destinationCID, sourcePort, destinationPort, length) = (sc, dc, sp, dp, len)
      (self.type, self.op, self.flags, bufferAllocation, forwardCount) = (type, op, flags, buf, fwd)
    }

    var bytes: [UInt8] {
      var w = ByteWriter()
      w.u64(sourceCID)
      w.u64(destinationCID)
      w.u32(sourcePort)
      w.u32(destinationPort)
      w.u32(length)
      w.u16(type)
      w.u16(op)
      w.u32(flags)
      w.u32(bufferAllocation)
      w.u32(forwardCount)
      return w.bytes
    }
  }

  struct ConnectionKey: Hashable {
    var guestPort: UInt32
    var hostPort: UInt32
  }

  final class Connection {
    enum State { case connecting, established }
    var state: State
    var fd: FileDescriptor
    var toHost: [UInt8] = []
    var toGuest: [UInt8] = []
    var peerBufferAllocation: UInt32 = 0
    var peerForwardCount: UInt32 = 0
    var sentToGuest: UInt32 = 0
    var forwarded: UInt32 = 0
    var lastReportedForward: UInt32 = 0
    var hostClosed = false
    /// Leading bytes of `toHost` that are the VMM's own "OK <port>\n", not guest data.
    var handshakeBytesPending = 0

    init(state: State, fd: FileDescriptor) {
      self.state = state
      self.fd = fd
    }

    /// Bytes the guest can still take (virtio-vsock credit, §5.10.6.3).
    var guestCredit: UInt32 { peerBufferAllocation &- (sentToGuest &- peerForwardCount) }
  }

  public let mmioRange: Range<UInt64>
  public let guestCID: UInt64
  public let socketPath: String
  private let memory: GuestMemory
  private let lock = ConditionLock()
  private var transport: VirtioMMIOTransport
  private var listener: FileDescriptor?
  private var handshakes: [FileDescriptor: [UInt8]] = [:]
  private var connections: [ConnectionKey: Connection] = [:]
  private var keyByFD: [FileDescriptor: ConnectionKey] = [:]
  private var controlPackets: [Header] = []
  private var nextHostPort = firstHostPort
  private var transportResetPending = false
  /// Set from delivering the transport reset until the guest refills its event queue (Linux
  /// handles the event first, then refills and notifies): packets sent in between, such as a
  /// new host connection, would be reset along with the stale ones.
  private var awaitingTransportResetAck = false
  /// Set while the VM is paused: the event loop must not write into guest memory behind a
  /// snapshot's back; host data waits in the connection buffers until `resumeDelivery`.
  private var deliverySuspended = false
  private let onGuestWork: @Sendable () -> Void
  private let onHostWork: @Sendable () -> Void
  private let onError: @Sendable (String) -> Void

  /// - Parameters:
  ///   - onGuestWork: a used ring changed: wake a vCPU parked on HLT.
  ///   - onHostWork: the set of descriptors to poll changed: wake the event loop.
  public init(
    base: UInt64, guestCID: UInt64, memory: GuestMemory, socketPath: String,
    onGuestWork: @escaping @Sendable () -> Void, onHostWork: @escaping @Sendable () -> Void,
    onError: @escaping @Sendable (String) -> Void
  ) {
    mmioRange = base..<(base + X86Layout.virtioMMIOStride)
    self.guestCID = guestCID
    self.memory = memory
    self.socketPath = socketPath
    self.onGuestWork = onGuestWork
    self.onHostWork = onHostWork
    self.onError = onError
    transport = VirtioMMIOTransport(
      deviceID: Self.deviceID, deviceFeatures: 0, queueSizes: [Self.queueSize, Self.queueSize, Self.queueSize])
  }

  /// Binds the per-VM Unix socket the host connects to.
  public func listen() throws(VMMError) {
    do {
      listener = try UnixSocket.listen(path: socketPath)
      try listener?.setNonBlocking()
    } catch {
      throw VMMError(.io, "cannot listen on the vsock socket \(socketPath)", cause: error)
    }
  }

  /// Closes every host connection and removes the socket file.
  public func shutdown() {
    lock.withLock {
      for (fd, _) in handshakes { fd.close() }
      handshakes.removeAll()
      for (_, c) in connections { c.fd.close() }
      connections.removeAll()
      keyByFD.removeAll()
      if let listener {
        listener.close()
        _ = try? FileSystem.unlink(socketPath)
      }
      listener = nil
    }
  }

  // MARK: MMIO

  public func mmioRead(offset: UInt64, size: Int) -> UInt64 {
    lock.withLock {
      if offset >= 0x100 {
        // Config space: guest_cid (le64).
        let config = guestCID
        let shift = (offset - 0x100) * 8
        guard offset - 0x100 < 8 else { return 0 }
        let mask: UInt64 = size >= 8 ? ~0 : (1 << (UInt64(size) * 8)) - 1
        return (config >> shift) & mask
      }
      return UInt64(transport.read(offset: offset))
    }
  }

  public func mmioWrite(offset: UInt64, size: Int, value: UInt64) {
    guard offset < 0x100 else { return }  // config space is read-only
    lock.withLock {
      switch transport.write(offset: offset, value: UInt32(truncatingIfNeeded: value), memory: memory) {
      case .notify(queue: 0), .activated:
        deliverToGuestLocked()
      case .notify(queue: 1):
        processTransmitLocked()
      case .notify(queue: 2) where awaitingTransportResetAck:
        awaitingTransportResetAck = false
        deliverToGuestLocked()
      case .reset:
        awaitingTransportResetAck = false
        resetConnectionsLocked()
      default:
        break
      }
    }
  }

  // MARK: Guest → host

  private func processTransmitLocked() {
    do throws(VirtqueueError) {
      while let chain = try transport.queues[1].popAvailable(memory: memory) {
        let bytes = gatherReadable(chain, memory: memory, limit: Self.headerSize + Int(Self.bufferAllocation))
        try transport.queues[1].pushUsed(head: chain.head, length: 0, memory: memory)
        guard let header = Header(bytes) else { continue }
        guard Int(header.length) <= bytes.count - Self.headerSize else {
          onError(
            "vsock: packet claims \(header.length) payload bytes but carries \(bytes.count - Self.headerSize); dropped")
          continue
        }
        handleLocked(header, payload: bytes[Self.headerSize..<(Self.headerSize + Int(header.length))])
      }
    } catch {
      failLocked(error)
    }
    deliverToGuestLocked()
    onHostWork()
  }

  private func handleLocked(_ header: Header, payload: ArraySlice<UInt8>) {
    guard header.type == 1, header.sourceCID == guestCID, header.destinationCID == Self.hostCID else {
      if header.op != Op.reset.rawValue {
        queueResetLocked(guestPort: header.sourcePort, hostPort: header.destinationPort)
      }
      return
    }
    let key = ConnectionKey(guestPort: header.sourcePort, hostPort: header.destinationPort)
    guard let op = Op(rawValue: header.op) else {
      closeLocked(key, notifyGuest: true)
      return
    }
    if op == .request {
      acceptGuestConnectLocked(key)
      return
    }
    guard let connection = connections[key] else {
      if op != .reset { queueResetLocked(guestPort: key.guestPort, hostPort: key.hostPort) }
      return
    }
    connection.peerBufferAllocation = header.bufferAllocation
    connection.peerForwardCount = header.forwardCount
    switch op {
    case .response:
      guard connection.state == .connecting else { return }
      connection.state = .established
      let ok = Array("OK \(key.hostPort)\n".utf8)
      connection.toHost.insert(contentsOf: ok, at: 0)
      connection.handshakeBytesPending = ok.count
      flushLocked(key, connection)
    case .readWrite:
      guard connection.state == .established else { return }
      guard connection.toHost.count + payload.count <= Int(Self.bufferAllocation) else {
        onError("vsock: guest port \(key.guestPort) overran its credit; connection reset")
        closeLocked(key, notifyGuest: true)
        return
      }
      connection.toHost.append(contentsOf: payload)
      flushLocked(key, connection)
    case .shutdown, .reset:
      closeLocked(key, notifyGuest: op == .shutdown)
    case .creditRequest:
      queueControlLocked(key, .creditUpdate)
    case .creditUpdate, .request:
      break
    }
  }

  private func acceptGuestConnectLocked(_ key: ConnectionKey) {
    guard connections[key] == nil,
      let fd = try? UnixSocket.connect(path: "\(socketPath)_\(key.hostPort)"),
      (try? fd.setNonBlocking()) != nil
    else {
      queueResetLocked(guestPort: key.guestPort, hostPort: key.hostPort)
      return
    }
    let connection = Connection(state: .established, fd: fd)
    connections[key] = connection
    keyByFD[fd] = key
    queueControlLocked(key, .response)
  }

  /// Writes what the guest sent to the host socket, as far as it takes it without blocking.
  private func flushLocked(_ key: ConnectionKey, _ connection: Connection) {
    while !connection.toHost.isEmpty {
      let n = connection.toHost.withUnsafeBytes {
        Glibc.send(connection.fd.rawValue, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
      }
      if n < 0 {
        if errno == EAGAIN || errno == EINTR { break }
        closeLocked(key, notifyGuest: true)
        return
      }
      connection.toHost.removeFirst(n)
      // The "OK <port>\n" line is not guest data; only count what came from the guest.
      let handshake = min(n, connection.handshakeBytesPending)
      connection.handshakeBytesPending -= handshake
      connection.forwarded &+= UInt32(n - handshake)
    }
    if connection.forwarded &- connection.lastReportedForward >= Self.bufferAllocation / 4 {
      queueControlLocked(key, .creditUpdate)
    }
  }

  // MARK: Host → guest

  private func header(_ key: ConnectionKey, _ op: Op, length: UInt32 = 0, flags: UInt32 = 0) -> Header {
    let forwarded = connections[key]?.forwarded ?? 0
    return Header(
      sourceCID: Self.hostCID, destinationCID: guestCID, sourcePort: key.hostPort, destinationPort: key.guestPort,
      length: length, op: op, flags: flags, bufferAllocation: Self.bufferAllocation, forwardCount: forwarded)
  }

  private func queueControlLocked(_ key: ConnectionKey, _ op: Op, flags: UInt32 = 0) {
    controlPackets.append(header(key, op, flags: flags))
  }

  private func queueResetLocked(guestPort: UInt32, hostPort: UInt32) {
    controlPackets.append(header(ConnectionKey(guestPort: guestPort, hostPort: hostPort), .reset))
  }

  private func closeLocked(_ key: ConnectionKey, notifyGuest: Bool) {
    if notifyGuest { queueResetLocked(guestPort: key.guestPort, hostPort: key.hostPort) }
    if let connection = connections.removeValue(forKey: key) {
      keyByFD[connection.fd] = nil
      connection.fd.close()
    }
  }

  /// Fills the guest's receive buffers: control packets first, then connection data within credit.
  private func deliverToGuestLocked() {
    guard transport.isActive, transport.queues[0].ready, !awaitingTransportResetAck, !deliverySuspended else {
      return
    }
    var delivered = false
    do throws(VirtqueueError) {
      while true {
        var packet: [UInt8]
        var dataKey: ConnectionKey? = nil
        var dataCount = 0
        if let control = controlPackets.first {
          packet = control.bytes
        } else if let (key, connection) = connections.first(where: {
          $0.value.state == .established && !$0.value.toGuest.isEmpty && $0.value.guestCredit > 0
        }) {
          dataKey = key
          dataCount = min(connection.toGuest.count, Int(connection.guestCredit))
          packet = []
          _ = connection
        } else {
          break
        }
        guard let chain = try transport.queues[0].popAvailable(memory: memory) else { break }
        let capacity = chain.writable.reduce(0) { $0 + Int($1.length) }
        guard capacity >= Self.headerSize else {
          throw VirtqueueError(message: "receive buffer of \(capacity) bytes cannot hold a vsock header")
        }
        if let key = dataKey, let connection = connections[key] {
          dataCount = min(dataCount, capacity - Self.headerSize)
          packet = header(key, .readWrite, length: UInt32(dataCount)).bytes + connection.toGuest.prefix(dataCount)
          connection.toGuest.removeFirst(dataCount)
          connection.sentToGuest &+= UInt32(dataCount)
          connection.lastReportedForward = connection.forwarded
        } else {
          controlPackets.removeFirst()
        }
        let written = scatterWritable(packet, into: chain, memory: memory)
        try transport.queues[0].pushUsed(head: chain.head, length: UInt32(written), memory: memory)
        delivered = true
      }
    } catch {
      failLocked(error)
    }
    if delivered {
      transport.interruptStatus |= 1
      onGuestWork()
    }
  }

  private func failLocked(_ error: VirtqueueError) {
    transport.markNeedsReset()
    onError("vsock: \(error.message); device needs reset")
  }

  /// A device reset makes the guest forget every connection: established ones lose their host
  /// end; connects the guest has not seen yet are offered again once the driver is back.
  private func resetConnectionsLocked() {
    controlPackets.removeAll()
    for (key, connection) in connections {
      if connection.state == .connecting {
        queueControlLocked(key, .request)
      } else {
        closeLocked(key, notifyGuest: false)
      }
    }
  }

  // MARK: Event loop

  public func pollDescriptors() -> [(FileDescriptor, Poll.Events)] {
    lock.withLock {
      var result: [(FileDescriptor, Poll.Events)] = []
      if let listener { result.append((listener, .readable)) }
      for fd in handshakes.keys { result.append((fd, .readable)) }
      for connection in connections.values {
        var events: Poll.Events = []
        // Read from the host only while the guest has credit and the previous chunk is delivered.
        if connection.state == .established, connection.toGuest.isEmpty, connection.guestCredit > 0,
          !connection.hostClosed
        {
          events.insert(.readable)
        }
        if !connection.toHost.isEmpty { events.insert(.writable) }
        result.append((connection.fd, events))
      }
      return result
    }
  }

  public func handle(_ fd: FileDescriptor, _ events: Poll.Events) {
    lock.withLock {
      if fd == listener {
        acceptHostLocked()
      } else if handshakes[fd] != nil {
        readHandshakeLocked(fd)
      } else if let key = keyByFD[fd], let connection = connections[key] {
        if connection.state == .connecting, events.contains(.hangup) || events.contains(.error) {
          // The host gave up before the guest answered: withdraw the request, reset the guest
          // side (poll would report the hang-up again and again otherwise).
          controlPackets.removeAll {
            $0.op == Op.request.rawValue && $0.sourcePort == key.hostPort && $0.destinationPort == key.guestPort
          }
          closeLocked(key, notifyGuest: true)
          deliverToGuestLocked()
          return
        }
        if events.contains(.writable) { flushLocked(key, connection) }
        if events.contains(.readable) || events.contains(.hangup) || events.contains(.error) {
          readHostLocked(key, connection)
        }
        deliverToGuestLocked()
      }
    }
  }

  private func acceptHostLocked() {
    guard let listener else { return }
    while let fd = try? UnixSocket.accept(listener) {
      handshakes[fd] = []
    }
  }

  private func readHandshakeLocked(_ fd: FileDescriptor) {
    var buffer = [UInt8](repeating: 0, count: Self.maxHandshakeBytes)
    // Read one byte at a time up to the newline so no stream data is consumed with the line.
    let n = buffer.withUnsafeMutableBytes { Glibc.read(fd.rawValue, $0.baseAddress, 1) }
    if n < 0 && (errno == EAGAIN || errno == EINTR) { return }
    guard n == 1 else {
      handshakes[fd] = nil
      fd.close()
      return
    }
    var line = handshakes[fd]!
    line.append(buffer[0])
    guard buffer[0] == UInt8(ascii: "\n") else {
      if line.count >= Self.maxHandshakeBytes {
        handshakes[fd] = nil
        fd.close()
      } else {
        handshakes[fd] = line
      }
      return
    }
    handshakes[fd] = nil
    let text = String(decoding: line.dropLast(), as: UTF8.self)
    guard text.hasPrefix("CONNECT "), let port = UInt32(text.dropFirst(8)) else {
      _ = Array("ERROR bad handshake\n".utf8).withUnsafeBytes { Glibc.write(fd.rawValue, $0.baseAddress, $0.count) }
      fd.close()
      return
    }
    while connections.keys.contains(where: { $0.hostPort == nextHostPort }) { nextHostPort &+= 1 }
    let key = ConnectionKey(guestPort: port, hostPort: nextHostPort)
    nextHostPort = nextHostPort == UInt32.max ? Self.firstHostPort : nextHostPort + 1
    let connection = Connection(state: .connecting, fd: fd)
    connections[key] = connection
    keyByFD[fd] = key
    queueControlLocked(key, .request)
    deliverToGuestLocked()
  }

  private func readHostLocked(_ key: ConnectionKey, _ connection: Connection) {
    let want = min(Int(connection.guestCredit), 64 << 10)
    guard want > 0, connection.state == .established else { return }
    var buffer = [UInt8](repeating: 0, count: want)
    let n = buffer.withUnsafeMutableBytes { Glibc.read(connection.fd.rawValue, $0.baseAddress, $0.count) }
    if n < 0 {
      if errno == EAGAIN || errno == EINTR { return }
      closeLocked(key, notifyGuest: true)
    } else if n == 0 {
      // The host closed: tell the guest no more data comes either way; it answers with RST.
      queueControlLocked(key, .shutdown, flags: 3)
      closeLocked(key, notifyGuest: false)
    } else {
      connection.toGuest.append(contentsOf: buffer[0..<n])
    }
  }

  // MARK: State

  public static let stateVersion: UInt32 = 1

  /// Transport and queues, plus the connections the guest believes open: a restored VM has no
  /// host end for them, so it resets them in the guest.
  public func saveState() -> [UInt8] {
    lock.withLock {
      var w = ByteWriter()
      transport.save(into: &w)
      w.u32(nextHostPort)
      let keys = connections.keys.sorted { ($0.guestPort, $0.hostPort) < ($1.guestPort, $1.hostPort) }
      w.u32(UInt32(keys.count))
      for key in keys {
        w.u32(key.guestPort)
        w.u32(key.hostPort)
      }
      return w.bytes
    }
  }

  public func restoreState(_ bytes: [UInt8]) throws(ProtocolError) {
    var r = ByteReader(bytes, source: "vmstate.bin section VSCK")
    let restored = try VirtioMMIOTransport.restore(from: &r, expectedDeviceID: Self.deviceID)
    guard restored.queues.map(\.maxSize) == [Self.queueSize, Self.queueSize, Self.queueSize] else {
      throw ProtocolError(.badValue, "vmstate.bin section VSCK: \(restored.queues.count) virtqueues, expected 3")
    }
    try restored.checkRestoredQueues(memory: memory, source: "vmstate.bin section VSCK")
    let port = try r.u32()
    let count = try r.u32()
    guard count <= 4096 else { throw ProtocolError(.badValue, "vmstate.bin section VSCK: \(count) connections") }
    var stale: [ConnectionKey] = []
    for _ in 0..<count { stale.append(ConnectionKey(guestPort: try r.u32(), hostPort: try r.u32())) }
    try r.expectEnd()
    lock.withLock {
      transport = restored
      nextHostPort = port
      controlPackets = stale.map { header($0, .reset) }
    }
  }

  /// Delivers queued packets (the resets of a restore) once the vCPUs run.
  public func kick() {
    lock.withLock {
      deliverEventsLocked()
      deliverToGuestLocked()
    }
  }

  /// Stops writing into guest memory until `resumeDelivery` (the VM is paused).
  public func suspendDelivery() {
    lock.withLock { deliverySuspended = true }
  }

  /// Delivers what waited while the VM was paused.
  public func resumeDelivery() {
    lock.withLock {
      deliverySuspended = false
      deliverEventsLocked()
      deliverToGuestLocked()
    }
  }

  /// Queues VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (event id 0) for the event queue: after a restore
  /// the guest drops every connection (their host ends are gone) and keeps its listeners.
  public func queueTransportReset() {
    lock.withLock { transportResetPending = true }
  }

  private func deliverEventsLocked() {
    guard transportResetPending, transport.isActive, transport.queues[2].ready, !deliverySuspended else { return }
    do throws(VirtqueueError) {
      guard let chain = try transport.queues[2].popAvailable(memory: memory) else { return }
      let written = scatterWritable([0, 0, 0, 0], into: chain, memory: memory)
      try transport.queues[2].pushUsed(head: chain.head, length: UInt32(written), memory: memory)
      transportResetPending = false
      awaitingTransportResetAck = true
      transport.interruptStatus |= 1
      onGuestWork()
    } catch {
      failLocked(error)
    }
  }
}
