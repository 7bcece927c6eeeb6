import Protocol
import Synchronization

/// Why a virtqueue could not be processed. The device then asks the driver for a reset
/// (DEVICE_NEEDS_RESET) instead of touching anything outside guest RAM.
public struct VirtqueueError: Error, Equatable, Sendable, CustomStringConvertible {
  public let message: String
  public var description: String { message }
}

/// One buffer of a descriptor chain, already checked to lie inside guest RAM.
public struct VirtqueueBuffer: Equatable, Sendable {
  public let address: UInt64
  public let length: UInt32
  public let deviceWritable: Bool
}

public struct DescriptorChain: Equatable, Sendable {
  public let head: UInt16
  public let buffers: [VirtqueueBuffer]

  public var readable: [VirtqueueBuffer] { buffers.filter { !$0.deviceWritable } }
  public var writable: [VirtqueueBuffer] { buffers.filter { $0.deviceWritable } }
}

/// A split virtqueue (virtio 1.x §2.7) as the device sees it.
public struct Virtqueue: Equatable, Sendable {
  public static let descriptorNext: UInt16 = 1
  public static let descriptorWrite: UInt16 = 2
  public static let descriptorIndirect: UInt16 = 4
  /// Bound on the bytes one chain may describe, so a hostile guest cannot make the device copy GBs.
  public static let maxChainBytes: UInt64 = 1 << 20

  public let maxSize: UInt16
  public var size: UInt16
  public var ready = false
  public var descriptorTable: UInt64 = 0
  public var availableRing: UInt64 = 0
  public var usedRing: UInt64 = 0
  /// Next available-ring slot the device will consume.
  public var lastAvailable: UInt16 = 0
  /// Next used-ring slot the device will fill.
  public var nextUsed: UInt16 = 0

  public init(maxSize: UInt16) {
    self.maxSize = maxSize
    size = maxSize
  }

  public mutating func reset() { self = Virtqueue(maxSize: maxSize) }

  /// Checks what the driver configured before the queue is used.
  public func validate(memory: GuestMemory) throws(VirtqueueError) {
    guard size > 0, size <= maxSize, size & (size - 1) == 0 else {
      throw VirtqueueError(message: "queue size \(size) is not a power of two up to \(maxSize)")
    }
    let n = UInt64(size)
    guard memory.host(descriptorTable, length: 16 * n) != nil, descriptorTable % 16 == 0 else {
      throw VirtqueueError(message: "descriptor table at \(hex64(descriptorTable)) is outside guest RAM or misaligned")
    }
    guard memory.host(availableRing, length: 6 + 2 * n) != nil, availableRing % 2 == 0 else {
      throw VirtqueueError(message: "available ring at \(hex64(availableRing)) is outside guest RAM or misaligned")
    }
    guard memory.host(usedRing, length: 6 + 8 * n) != nil, usedRing % 4 == 0 else {
      throw VirtqueueError(message: "used ring at \(hex64(usedRing)) is outside guest RAM or misaligned")
    }
  }

  /// Chains the driver has made available and the device has not consumed yet.
  public func pendingCount(memory: GuestMemory) throws(VirtqueueError) -> UInt16 {
    guard let availableIndex = memory.read(UInt16.self, at: availableRing + 2) else {
      throw VirtqueueError(message: "available ring index unreadable")
    }
    let pending = availableIndex &- lastAvailable
    guard pending <= size else {
      throw VirtqueueError(
        message: "available index \(availableIndex) is \(pending) ahead of the device (queue size \(size))")
    }
    return pending
  }

  /// Takes the next available chain, validating every descriptor; nil when none is pending.
  public mutating func popAvailable(memory: GuestMemory) throws(VirtqueueError) -> DescriptorChain? {
    guard ready else { return nil }
    guard try pendingCount(memory: memory) > 0 else { return nil }
    let slot = availableRing + 4 + 2 * UInt64(lastAvailable % size)
    guard let head = memory.read(UInt16.self, at: slot) else {
      throw VirtqueueError(message: "available ring slot unreadable")
    }
    lastAvailable &+= 1
    return try chain(from: head, memory: memory)
  }

  /// Walks a chain from `head`; loops, out-of-range indices and out-of-RAM buffers are errors.
  public func chain(from head: UInt16, memory: GuestMemory) throws(VirtqueueError) -> DescriptorChain {
    var buffers: [VirtqueueBuffer] = []
    var index = head
    var total: UInt64 = 0
    var seenWritable = false
    for _ in 0..<Int(size) {
      guard index < size else {
        throw VirtqueueError(message: "descriptor index \(index) is outside the queue (size \(size))")
      }
      let entry = descriptorTable + 16 * UInt64(index)
      guard let address = memory.read(UInt64.self, at: entry), let length = memory.read(UInt32.self, at: entry + 8),
        let flags = memory.read(UInt16.self, at: entry + 12), let next = memory.read(UInt16.self, at: entry + 14)
      else { throw VirtqueueError(message: "descriptor \(index) unreadable") }
      guard flags & Self.descriptorIndirect == 0 else {
        throw VirtqueueError(message: "descriptor \(index) is indirect, a feature this device did not offer")
      }
      guard memory.host(address, length: UInt64(length)) != nil else {
        throw VirtqueueError(message: "descriptor \(index) points outside guest RAM (\(hex64(address)) + \(length))")
      }
      let writable = flags & Self.descriptorWrite != 0
      guard !(seenWritable && !writable) else {
        throw VirtqueueError(message: "descriptor \(index) is device-readable after a device-writable one")
      }
      seenWritable = seenWritable || writable
      total += UInt64(length)
      guard total <= Self.maxChainBytes else {
        throw VirtqueueError(message: "descriptor chain from \(head) describes more than \(Self.maxChainBytes) bytes")
      }
      buffers.append(VirtqueueBuffer(address: address, length: length, deviceWritable: writable))
      guard flags & Self.descriptorNext != 0 else { return DescriptorChain(head: head, buffers: buffers) }
      index = next
    }
    throw VirtqueueError(message: "descriptor chain from \(head) is longer than the queue: a loop")
  }

  /// Returns a chain to the driver with `length` bytes written into it.
  public mutating func pushUsed(head: UInt16, length: UInt32, memory: GuestMemory) throws(VirtqueueError) {
    let element = usedRing + 4 + 8 * UInt64(nextUsed % size)
    guard memory.write(UInt32(head), at: element), memory.write(length, at: element + 4) else {
      throw VirtqueueError(message: "used ring element unwritable")
    }
    nextUsed &+= 1
    // The index store publishes the element; x86 keeps stores in order, Swift must not reorder.
    atomicFence()
    guard memory.write(nextUsed, at: usedRing + 2) else { throw VirtqueueError(message: "used ring index unwritable") }
  }

  // MARK: State

  public func save(into w: inout ByteWriter) {
    w.u16(maxSize)
    w.u16(size)
    w.u8(ready ? 1 : 0)
    w.u64(descriptorTable)
    w.u64(availableRing)
    w.u64(usedRing)
    w.u16(lastAvailable)
    w.u16(nextUsed)
  }

  public static func restore(from r: inout ByteReader) throws(ProtocolError) -> Virtqueue {
    var q = Virtqueue(maxSize: try r.u16())
    q.size = try r.u16()
    q.ready = try r.u8() != 0
    q.descriptorTable = try r.u64()
    q.availableRing = try r.u64()
    q.usedRing = try r.u64()
    q.lastAvailable = try r.u16()
    q.nextUsed = try r.u16()
    // A live queue only becomes ready after `validate`; a saved one must obey the same rule, or
    // ring indexing (`% size`) would trap on a corrupt or hostile vmstate.bin.
    guard q.maxSize > 0, q.maxSize & (q.maxSize - 1) == 0 else {
      throw ProtocolError(.badValue, "\(r.source): virtqueue max size \(q.maxSize) is not a power of two")
    }
    if q.ready, q.size == 0 || q.size > q.maxSize || q.size & (q.size - 1) != 0 {
      throw ProtocolError(
        .badValue, "\(r.source): ready virtqueue of size \(q.size), expected a power of two up to \(q.maxSize)")
    }
    return q
  }
}

/// Gathers the device-readable bytes of a chain (at most `limit`).
func gatherReadable(_ chain: DescriptorChain, memory: GuestMemory, limit: Int) -> [UInt8] {
  var result: [UInt8] = []
  for buffer in chain.readable {
    let take = min(Int(buffer.length), limit - result.count)
    if take <= 0 { break }
    if let bytes = memory.readBytes(at: buffer.address, count: take) { result += bytes }
  }
  return result
}

/// Scatters `bytes` into the device-writable buffers of a chain; returns how many fit.
func scatterWritable(_ bytes: [UInt8], into chain: DescriptorChain, memory: GuestMemory) -> Int {
  var offset = 0
  for buffer in chain.writable where offset < bytes.count {
    let take = min(Int(buffer.length), bytes.count - offset)
    memory.writeBytes(bytes[offset..<offset + take], at: buffer.address)
    offset += take
  }
  return offset
}

@inline(__always)
func atomicFence() {
  // A sequentially consistent fence via a dummy atomic exchange keeps the compiler and CPU from
  // reordering the ring stores around it.
  _fenceCounter.wrappingAdd(1, ordering: .sequentiallyConsistent)
}

private let _fenceCounter = Atomic<Int>(0)
