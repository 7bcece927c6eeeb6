import Protocol
import Syscalls

/// virtio-blk (device id 2, virtio 1.x §5.2) over a `BlockStore`: one request queue, requests
/// served synchronously on the notifying vCPU. Every request is bounds-checked; a bad one gets
/// an IOERR or UNSUPP status byte, never a host failure.
public final class VirtioBlock: MMIODevice, @unchecked Sendable {
  public static let deviceID: UInt32 = 2
  public static let queueSize: UInt16 = 256
  public static let featureSizeMax: UInt64 = 1 << 1
  public static let featureSegMax: UInt64 = 1 << 2
  public static let featureFlush: UInt64 = 1 << 9
  /// Segments of at most 4 KiB, at most 128 of them: a request stays under the 1 MiB chain cap.
  public static let sizeMax: UInt32 = 4096
  public static let segMax: UInt32 = 128
  /// The id GET_ID returns (20 bytes, NUL padded).
  public static let serial = Array("forkd-disk".utf8)

  enum RequestType: UInt32 {
    case read = 0, write = 1, flush = 4, getID = 8
  }

  public enum Status {
    public static let ok: UInt8 = 0
    public static let ioError: UInt8 = 1
    public static let unsupported: UInt8 = 2
  }

  public let mmioRange: Range<UInt64>
  public let store: BlockStore
  private let memory: GuestMemory
  private let lock = ConditionLock()
  private var transport: VirtioMMIOTransport
  private let interrupt: @Sendable () -> Void
  private let onError: @Sendable (String) -> Void

  public init(
    base: UInt64, config: BlockDeviceConfig, memory: GuestMemory, interrupt: @escaping @Sendable () -> Void,
    onError: @escaping @Sendable (String) -> Void
  ) throws(VMMError) {
    mmioRange = base..<(base + X86Layout.virtioMMIOStride)
    store = try BlockStore(config)
    self.memory = memory
    self.interrupt = interrupt
    self.onError = onError
    transport = VirtioMMIOTransport(
      deviceID: Self.deviceID, deviceFeatures: Self.featureSizeMax | Self.featureSegMax | Self.featureFlush,
      queueSizes: [Self.queueSize])
  }

  // MARK: MMIO

  public func mmioRead(offset: UInt64, size: Int) -> UInt64 {
    lock.withLock {
      guard offset >= 0x100 else { return UInt64(transport.read(offset: offset)) }
      // Config space: capacity (le64 sectors), size_max (le32), seg_max (le32); the rest reads 0.
      var config = [UInt8](repeating: 0, count: 0x20)
      for i in 0..<8 { config[i] = UInt8(truncatingIfNeeded: store.sectorCount >> (8 * UInt64(i))) }
      for i in 0..<4 {
        config[8 + i] = UInt8(truncatingIfNeeded: Self.sizeMax >> (8 * UInt32(i)))
        config[12 + i] = UInt8(truncatingIfNeeded: Self.segMax >> (8 * UInt32(i)))
      }
      let start = Int(offset - 0x100)
      var value: UInt64 = 0
      for i in 0..<min(size, 8) where start + i < config.count {
        value |= UInt64(config[start + i]) << (8 * UInt64(i))
      }
      return value
    }
  }

  public func mmioWrite(offset: UInt64, size: Int, value: UInt64) {
    guard offset < 0x100 else { return }  // config space is read-only
    let raise: Bool = lock.withLock {
      switch transport.write(offset: offset, value: UInt32(truncatingIfNeeded: value), memory: memory) {
      case .notify(queue: 0): return processQueueLocked()
      default: return false
      }
    }
    if raise { interrupt() }
  }

  // MARK: Requests

  /// Serves every available request; returns whether the used ring changed.
  func processQueueLocked() -> Bool {
    var served = false
    do throws(VirtqueueError) {
      while let chain = try transport.queues[0].popAvailable(memory: memory) {
        let written = serve(chain)
        try transport.queues[0].pushUsed(head: chain.head, length: UInt32(written), memory: memory)
        served = true
      }
    } catch {
      transport.markNeedsReset()
      onError("virtio-blk: \(error.message); device needs reset")
    }
    if served { transport.interruptStatus |= 1 }
    return served
  }

  /// Serves one request; returns the bytes written into the chain (data and status).
  func serve(_ chain: DescriptorChain) -> Int {
    let header = gatherReadable(chain, memory: memory, limit: 16)
    // The status byte is the chain's last writable byte; without one there is no way to answer.
    guard let statusBuffer = chain.writable.last, statusBuffer.length >= 1 else {
      onError("virtio-blk: request without a status byte; dropped")
      return 0
    }
    let statusAddress = statusBuffer.address + UInt64(statusBuffer.length) - 1
    var dataBuffers = chain.writable
    dataBuffers.removeLast()
    if statusBuffer.length > 1 {
      dataBuffers.append(
        VirtqueueBuffer(address: statusBuffer.address, length: statusBuffer.length - 1, deviceWritable: true))
    }
    func finish(_ status: UInt8, written: Int = 0) -> Int {
      memory.write(status, at: statusAddress)
      return written + 1
    }
    guard header.count == 16 else { return finish(Status.ioError) }
    let type = UInt32(header[0]) | UInt32(header[1]) << 8 | UInt32(header[2]) << 16 | UInt32(header[3]) << 24
    let sector = (0..<8).reduce(UInt64(0)) { $0 | UInt64(header[8 + $1]) << (8 * UInt64($1)) }
    guard let request = RequestType(rawValue: type) else { return finish(Status.unsupported) }
    let (offset, overflow) = sector.multipliedReportingOverflow(by: BlockStore.sectorSize)
    switch request {
    case .read:
      let count = dataBuffers.reduce(0) { $0 + Int($1.length) }
      guard !overflow, count % Int(BlockStore.sectorSize) == 0, store.contains(offset: offset, count: UInt64(count))
      else { return finish(Status.ioError) }
      guard let data = try? store.read(offset: offset, count: count) else { return finish(Status.ioError) }
      var at = 0
      for buffer in dataBuffers {
        memory.writeBytes(data[at..<at + Int(buffer.length)], at: buffer.address)
        at += Int(buffer.length)
      }
      return finish(Status.ok, written: count)
    case .write:
      let payload = Array(gatherReadable(chain, memory: memory, limit: Int(Virtqueue.maxChainBytes)).dropFirst(16))
      guard !overflow, payload.count % Int(BlockStore.sectorSize) == 0,
        store.contains(offset: offset, count: UInt64(payload.count))
      else { return finish(Status.ioError) }
      guard (try? store.write(offset: offset, bytes: payload)) != nil else { return finish(Status.ioError) }
      return finish(Status.ok)
    case .flush:
      // Writes live in memory until a snapshot persists them: nothing to flush to.
      return finish(Status.ok)
    case .getID:
      guard let buffer = dataBuffers.first else { return finish(Status.ioError) }
      var id = Self.serial + [UInt8](repeating: 0, count: 20 - Self.serial.count)
      id = Array(id.prefix(Int(min(buffer.length, 20))))
      memory.writeBytes(id, at: buffer.address)
      return finish(Status.ok, written: id.count)
    }
  }

  // MARK: State

  public static let stateVersion: UInt32 = 1

  /// Transport and queue state plus the disk's identity: the base image path and size, and the
  /// overlay blocks the snapshot's overlay file holds.
  public func saveState(overlayBlocks: [UInt64]) -> [UInt8] {
    lock.withLock {
      var w = ByteWriter()
      transport.save(into: &w)
      w.string(store.config.basePath)
      w.u64(store.size)
      w.u32(UInt32(overlayBlocks.count))
      for block in overlayBlocks { w.u64(block) }
      return w.bytes
    }
  }

  /// Writes the overlay (every block that differs from the base) to `overlayPath` and returns the
  /// device's state; the vCPUs are paused, the lock keeps the event loop out too.
  public func snapshot(overlayPath: String) throws(VMMError) -> [UInt8] {
    let blocks: [UInt64] = try lock.withLock { () throws(VMMError) -> [UInt64] in
      try store.writeOverlay(to: overlayPath)
    }
    return saveState(overlayBlocks: blocks)
  }

  /// The parts of a saved state needed before the device exists (which disk, which overlay).
  public struct SavedDisk: Sendable, Equatable {
    public var basePath: String
    public var size: UInt64
    public var overlayBlocks: [UInt64]
  }

  public static func savedDisk(_ bytes: [UInt8], source: String) throws(ProtocolError) -> SavedDisk {
    var r = ByteReader(bytes, source: source)
    _ = try VirtioMMIOTransport.restore(from: &r, expectedDeviceID: deviceID)
    let path = try r.string(max: 4096)
    let size = try r.u64()
    let count = try r.u32()
    guard UInt64(count) <= size / BlockStore.blockSize + 1 else {
      throw ProtocolError(.badValue, "\(source): \(count) overlay blocks for a disk of \(size) bytes")
    }
    var blocks: [UInt64] = []
    for _ in 0..<count { blocks.append(try r.u64()) }
    try r.expectEnd()
    return SavedDisk(basePath: path, size: size, overlayBlocks: blocks)
  }

  public func restoreState(_ bytes: [UInt8], source: String) throws(ProtocolError) {
    var r = ByteReader(bytes, source: source)
    let restored = try VirtioMMIOTransport.restore(from: &r, expectedDeviceID: Self.deviceID)
    guard restored.queues.map(\.maxSize) == [Self.queueSize] else {
      throw ProtocolError(.badValue, "\(source): \(restored.queues.count) virtqueues, expected 1")
    }
    try restored.checkRestoredQueues(memory: memory, source: source)
    lock.withLock { transport = restored }
  }
}
