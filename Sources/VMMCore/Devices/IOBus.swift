/// A device reachable through port I/O.
public protocol PortIODevice: AnyObject, Sendable {
  /// Ports [base, base + count) belong to the device.
  var portRange: Range<UInt16> { get }
  func portRead(offset: UInt16, size: Int) -> UInt32
  func portWrite(offset: UInt16, size: Int, value: UInt32)
}

/// A device reachable through MMIO (no memslot backs its window, so accesses exit to the VMM).
public protocol MMIODevice: AnyObject, Sendable {
  var mmioRange: Range<UInt64> { get }
  func mmioRead(offset: UInt64, size: Int) -> UInt64
  func mmioWrite(offset: UInt64, size: Int, value: UInt64)
}

/// Routes vCPU I/O exits to devices. Built once before the vCPUs start, then read-only.
public final class IOBus: Sendable {
  let portDevices: [any PortIODevice]
  let mmioDevices: [any MMIODevice]

  public init(portDevices: [any PortIODevice], mmioDevices: [any MMIODevice]) {
    self.portDevices = portDevices
    self.mmioDevices = mmioDevices
  }

  /// Reads from an unclaimed port return all ones, as on real hardware; writes are dropped.
  public func portRead(_ port: UInt16, size: Int) -> UInt32 {
    for device in portDevices where device.portRange.contains(port) {
      return device.portRead(offset: port - device.portRange.lowerBound, size: size)
    }
    return size >= 4 ? 0xFFFF_FFFF : (1 << (size * 8)) - 1
  }

  public func portWrite(_ port: UInt16, size: Int, value: UInt32) {
    for device in portDevices where device.portRange.contains(port) {
      device.portWrite(offset: port - device.portRange.lowerBound, size: size, value: value)
      return
    }
  }

  public func mmioRead(_ address: UInt64, size: Int) -> UInt64 {
    for device in mmioDevices where device.mmioRange.contains(address) {
      return device.mmioRead(offset: address - device.mmioRange.lowerBound, size: size)
    }
    return 0
  }

  public func mmioWrite(_ address: UInt64, size: Int, value: UInt64) {
    for device in mmioDevices where device.mmioRange.contains(address) {
      device.mmioWrite(offset: address - device.mmioRange.lowerBound, size: size, value: value)
      return
    }
  }
}
