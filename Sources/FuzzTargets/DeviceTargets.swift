import Protocol
import Syscalls
import VMMCore

#if canImport(Glibc)
  import Glibc
#endif

/// Fuzz targets of what a guest controls: virtqueue descriptor tables and rings, virtio-mmio
/// register writes, vsock packets, virtio-blk requests and virtio-net frames; plus the device
/// sections of vmstate.bin.
enum DeviceTargets {
  /// 2 MiB of guest RAM, mapped once. The first `window` bytes are where inputs place data.
  static let memory: GuestMemory = {
    do { return try GuestMemory.create(size: 2 << 20, backend: .anonymous) } catch { fatalError("\(error)") }
  }()
  static let window: UInt64 = 64 << 10

  static func clearWindow() {
    guard let p = memory.host(0, length: window) else { fatalError("guest memory window") }
    memset(p, 0, Int(window))
  }

  /// An address the input picks: mostly inside the window, sometimes anywhere (edges, past RAM).
  static func address(_ input: inout FuzzInput) -> UInt64 {
    switch input.u8() % 8 {
    case 0: return input.u64()
    case 1: return memory.size - UInt64(input.u8())
    default: return UInt64(input.u16()) % window
    }
  }

  /// A queue laid out by the input: size, addresses, ring and descriptor contents; then every
  /// available chain is popped. Invariant: each accepted buffer lies inside guest RAM, chains are
  /// readable-then-writable, no longer than the queue and under the byte cap.
  static func virtqueue(_ bytes: [UInt8]) {
    clearWindow()
    var input = FuzzInput(bytes)
    var queue = Virtqueue(maxSize: 256)
    let sizeChoice = input.u8()
    queue.size = sizeChoice & 0x80 != 0 ? UInt16(input.u16()) : UInt16(1) << (sizeChoice % 9)
    let layout = input.u8()
    if layout & 1 == 0 {
      queue.descriptorTable = 0x1000
      queue.availableRing = 0x3000
      queue.usedRing = 0x4000
    } else {
      queue.descriptorTable = address(&input)
      queue.availableRing = address(&input)
      queue.usedRing = address(&input)
    }
    queue.lastAvailable = layout & 2 != 0 ? input.u16() : 0
    queue.nextUsed = queue.lastAvailable
    // The rest of the input is written at the descriptor table / available ring, in chunks.
    while !input.isAtEnd {
      let target = input.u8() % 3
      let at: UInt64 =
        target == 0 ? queue.descriptorTable : target == 1 ? queue.availableRing : address(&input)
      let chunk = input.take(Int(input.u8()))
      memory.writeBytes(chunk, at: at)
    }
    do {
      try queue.validate(memory: memory)
    } catch {
      return
    }
    queue.ready = true
    var popped = 0
    do {
      while let chain = try queue.popAvailable(memory: memory) {
        popped += 1
        check(popped <= Int(queue.size), "popped more chains than the queue holds")
        check(chain.buffers.count <= Int(queue.size), "chain longer than the queue")
        var total: UInt64 = 0
        var seenWritable = false
        for buffer in chain.buffers {
          check(memory.host(buffer.address, length: UInt64(buffer.length)) != nil, "buffer outside guest RAM")
          check(!(seenWritable && !buffer.deviceWritable), "readable after writable")
          seenWritable = seenWritable || buffer.deviceWritable
          total += UInt64(buffer.length)
        }
        check(total <= Virtqueue.maxChainBytes, "chain of \(total) bytes")
        try queue.pushUsed(head: chain.head, length: UInt32(truncatingIfNeeded: total), memory: memory)
      }
    } catch {}
  }

  /// A register program against a virtio device: setup macros, raw register writes, memory
  /// writes (descriptors, rings, packets, requests) and queue notifications.
  static func runDevice(_ device: any MMIODevice, queues: Int, _ bytes: [UInt8]) {
    var input = FuzzInput(bytes)
    var steps = 0
    while !input.isAtEnd && steps < 256 {
      steps += 1
      switch input.u8() % 8 {
      case 0:
        // A driver bring-up: ACK, DRIVER, VERSION_1, FEATURES_OK, each queue at a fixed layout
        // (queue q: descriptors at 0x1000+q*0x4000, avail +0x1000, used +0x2000), DRIVER_OK.
        let size = UInt64(1) << (input.u8() % 9)
        device.mmioWrite(offset: 0x070, size: 4, value: 1)
        device.mmioWrite(offset: 0x070, size: 4, value: 3)
        device.mmioWrite(offset: 0x024, size: 4, value: 1)
        device.mmioWrite(offset: 0x020, size: 4, value: 1)
        device.mmioWrite(offset: 0x070, size: 4, value: 11)
        for q in 0..<queues {
          let base = 0x1000 + UInt64(q) * 0x4000
          device.mmioWrite(offset: 0x030, size: 4, value: UInt64(q))
          device.mmioWrite(offset: 0x038, size: 4, value: size)
          device.mmioWrite(offset: 0x080, size: 4, value: base)
          device.mmioWrite(offset: 0x090, size: 4, value: base + 0x1000)
          device.mmioWrite(offset: 0x0A0, size: 4, value: base + 0x2000)
          device.mmioWrite(offset: 0x044, size: 4, value: 1)
        }
        device.mmioWrite(offset: 0x070, size: 4, value: 15)
      case 1:
        let offset = UInt64(input.u16()) % 0x200
        device.mmioWrite(offset: offset, size: Int(input.u8() % 8) + 1, value: input.u64())
      case 2:
        _ = device.mmioRead(offset: UInt64(input.u16()) % 0x200, size: Int(input.u8() % 8) + 1)
      case 3:
        // A descriptor: queue, index, then address (often in the data area), length, flags, next.
        let q = UInt64(input.u8()) % UInt64(max(queues, 1))
        let index = UInt64(input.u8())
        let at = 0x1000 + q * 0x4000 + 16 * (index % 256)
        let address = input.u8() & 1 == 0 ? 0x8000 + UInt64(input.u16()) % 0x6000 : Self.address(&input)
        memory.write(address, at: at)
        memory.write(UInt32(input.u16()), at: at + 8)
        memory.write(input.u16() & 7, at: at + 12)
        memory.write(input.u16(), at: at + 14)
      case 4:
        // Make a head available on a queue.
        let q = UInt64(input.u8()) % UInt64(max(queues, 1))
        let avail = 0x2000 + q * 0x4000
        let index = memory.read(UInt16.self, at: avail + 2) ?? 0
        memory.write(input.u16(), at: avail + 4 + 2 * UInt64(index % 256))
        memory.write(index &+ UInt16(input.u8() % 3), at: avail + 2)
      case 5:
        // Data for buffers to point at (packets, requests).
        let at = 0x8000 + UInt64(input.u16()) % 0x6000
        memory.writeBytes(input.take(Int(input.u8())), at: at)
      case 6:
        device.mmioWrite(offset: 0x050, size: 4, value: UInt64(input.u8()) % UInt64(queues + 1))
      default:
        memory.writeBytes(input.take(Int(input.u8() % 32)), at: address(&input))
      }
    }
  }

  /// virtio-vsock driven by a register program (its host side has no sockets: a guest connect
  /// fails and is answered with a reset).
  static func vsock(_ bytes: [UInt8]) {
    clearWindow()
    let device = VirtioVsock(
      base: 0xd000_0000, guestCID: 3, memory: memory, socketPath: "/nonexistent/forkd-fuzz/vsock.sock",
      onGuestWork: {}, onHostWork: {}, onError: { _ in })
    runDevice(device, queues: 3, bytes)
    device.kick()
    device.queueTransportReset()
    device.kick()
    let state = device.saveState()
    let restored = VirtioVsock(
      base: 0xd000_0000, guestCID: 3, memory: memory, socketPath: "/nonexistent/forkd-fuzz/vsock.sock",
      onGuestWork: {}, onHostWork: {}, onError: { _ in })
    do {
      try restored.restoreState(state)
    } catch {
      check(false, "vsock state it saved does not restore: \(error)")
    }
    check(restored.saveState().count == state.count, "vsock state round trip changed size")
    device.shutdown()
  }

  /// virtio-net driven by a register program, its backend one end of a SOCK_SEQPACKET pair (one
  /// frame per read/write, as a TAP). After the program, frames arrive from the wire into whatever
  /// receive buffers it posted. Invariants: every frame the device put on the wire is an Ethernet
  /// frame no longer than the limit; the state it saves restores.
  static func net(_ bytes: [UInt8]) {
    clearWindow()
    var fds: [Int32] = [0, 0]
    guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
      fatalError("socketpair: \(errno)")
    }
    let wire = FileDescriptor(rawValue: fds[0])
    let end = FileDescriptor(rawValue: fds[1])
    defer { wire.close() }
    try? end.setNonBlocking()
    try? wire.setNonBlocking()
    let device = VirtioNet(
      base: 0xd000_2000, config: NetworkConfig(backend: end), memory: memory, onGuestWork: {}, onHostWork: {},
      onError: { _ in })
    defer { device.shutdown() }
    runDevice(device, queues: 2, bytes)
    var frame = Array(bytes.suffix(64))
    frame += [UInt8](repeating: 0, count: max(0, 14 - frame.count))
    for size in [frame.count, 1514, 9000] {
      let payload = (0..<size).map { frame[$0 % frame.count] }
      _ = payload.withUnsafeBytes { Glibc.write(wire.rawValue, $0.baseAddress, $0.count) }
      for (fd, _) in device.pollDescriptors() { device.handle(fd, .readable) }
    }
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
      let n = buffer.withUnsafeMutableBytes { Glibc.read(wire.rawValue, $0.baseAddress, $0.count) }
      guard n > 0 else { break }
      check(n >= 14 && n <= VirtioNet.maxFrame, "a \(n)-byte frame reached the wire")
    }
    let state = device.saveState()
    let restored = VirtioNet(
      base: 0xd000_2000, config: NetworkConfig(backend: nil), memory: memory, onGuestWork: {}, onHostWork: {},
      onError: { _ in })
    do {
      try restored.restoreState(state, source: "fuzz")
    } catch {
      check(false, "virtio-net state it saved does not restore: \(error)")
    }
    check(restored.saveState() == state, "virtio-net state round trip changed")
  }

  /// A 64 KiB disk image shared by every virtio-blk run.
  static let diskPath: String = {
    let path = "/tmp/forkd-fuzz-disk-\(getpid()).img"
    let fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0o600)
    guard fd >= 0 else { fatalError("cannot create \(path)") }
    var block = [UInt8](repeating: 0, count: 64 << 10)
    for i in block.indices { block[i] = UInt8(truncatingIfNeeded: i * 7) }
    _ = block.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
    return path
  }()

  /// virtio-blk driven by a register program: requests with guest-chosen types, sectors, buffers.
  static func block(_ bytes: [UInt8]) {
    clearWindow()
    let device: VirtioBlock
    do {
      device = try VirtioBlock(
        base: 0xd000_1000, config: BlockDeviceConfig(basePath: diskPath), memory: memory, interrupt: {},
        onError: { _ in })
    } catch {
      fatalError("virtio-blk device: \(error)")
    }
    runDevice(device, queues: 1, bytes)
    check(device.store.size == 64 << 10, "disk size changed")
  }

  /// Device sections of vmstate.bin: transport + queues (vsock, blk) restored, then used.
  static func deviceState(_ bytes: [UInt8]) {
    guard let selector = bytes.first else { return }
    let body = Array(bytes.dropFirst())
    clearWindow()
    switch selector % 6 {
    case 0:
      var r = ByteReader(body, source: "fuzz")
      guard var transport = try? VirtioMMIOTransport.restore(from: &r, expectedDeviceID: 19),
        (try? transport.checkRestoredQueues(memory: memory, source: "fuzz")) != nil
      else { return }
      // As the devices do: a used entry only for a chain that was popped.
      for q in transport.queues.indices {
        if let chain = try? transport.queues[q].popAvailable(memory: memory) {
          _ = try? transport.queues[q].pushUsed(head: chain.head, length: 0, memory: memory)
        }
      }
    case 1:
      let device = VirtioVsock(
        base: 0xd000_0000, guestCID: 3, memory: memory, socketPath: "/nonexistent/forkd-fuzz/vsock.sock",
        onGuestWork: {}, onHostWork: {}, onError: { _ in })
      guard (try? device.restoreState(body)) != nil else { return }
      device.kick()
      for q in 0..<3 { device.mmioWrite(offset: 0x050, size: 4, value: UInt64(q)) }
    case 3:
      // One vCPU's saved registers (VCPU sections): decode → encode → decode is the identity.
      guard let state = try? VCPUState.decode(body, source: "fuzz") else { return }
      var w = ByteWriter()
      state.encode(into: &w)
      check((try? VCPUState.decode(w.bytes, source: "again")) == state, "vCPU state round trip")
    case 5:
      // The VNET section: restored, then the guest's rings are used through notifications.
      _ = try? VirtioNet.savedMAC(body, source: "fuzz")
      let device = VirtioNet(
        base: 0xd000_2000, config: NetworkConfig(backend: nil), memory: memory, onGuestWork: {}, onHostWork: {},
        onError: { _ in })
      guard (try? device.restoreState(body, source: "fuzz")) != nil else { return }
      for q in 0..<2 { device.mmioWrite(offset: 0x050, size: 4, value: UInt64(q)) }
      device.resumeDelivery()
    case 4:
      // The UART section: restore → save → restore gives the same bytes.
      let uart = UART16550(sink: { _ in })
      guard (try? uart.restoreState(body)) != nil else { return }
      let saved = uart.saveState()
      let again = UART16550(sink: { _ in })
      check((try? again.restoreState(saved)) != nil && again.saveState() == saved, "UART state round trip")
    default:
      _ = try? VirtioBlock.savedDisk(body, source: "fuzz")
      let device = try? VirtioBlock(
        base: 0xd000_1000, config: BlockDeviceConfig(basePath: diskPath), memory: memory, interrupt: {},
        onError: { _ in })
      if let device, (try? device.restoreState(body, source: "fuzz")) != nil {
        device.mmioWrite(offset: 0x050, size: 4, value: 0)
      }
    }
  }
}
