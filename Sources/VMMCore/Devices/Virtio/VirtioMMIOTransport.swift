import Protocol

/// The virtio-mmio register file (virtio 1.x §4.2.2, version 2 "modern" layout) as plain state.
/// Devices embed it and run it under their own lock; register writes return what the device
/// must do next.
public struct VirtioMMIOTransport: Equatable, Sendable {
  public static let magic: UInt32 = 0x7472_6976  // "virt"
  public static let vendorID: UInt32 = 0x464B_4430  // "0DKF": forkd
  public static let featureVersion1: UInt64 = 1 << 32

  public enum Status {
    public static let acknowledge: UInt32 = 1
    public static let driver: UInt32 = 2
    public static let driverOK: UInt32 = 4
    public static let featuresOK: UInt32 = 8
    public static let needsReset: UInt32 = 0x40
    public static let failed: UInt32 = 0x80
  }

  /// What a register write asks of the device.
  public enum Action: Equatable, Sendable {
    case none
    case notify(queue: Int)
    case reset
    case activated
  }

  public let deviceID: UInt32
  public let deviceFeatures: UInt64
  public var queues: [Virtqueue]
  public var status: UInt32 = 0
  public var driverFeatures: UInt64 = 0
  public var deviceFeaturesSelect: UInt32 = 0
  public var driverFeaturesSelect: UInt32 = 0
  public var queueSelect: UInt32 = 0
  public var interruptStatus: UInt32 = 0
  public var configGeneration: UInt32 = 0

  public init(deviceID: UInt32, deviceFeatures: UInt64, queueSizes: [UInt16]) {
    self.deviceID = deviceID
    self.deviceFeatures = deviceFeatures | Self.featureVersion1
    queues = queueSizes.map { Virtqueue(maxSize: $0) }
  }

  public var isActive: Bool { status & Status.driverOK != 0 && status & Status.needsReset == 0 }

  private var selected: Int? { Int(queueSelect) < queues.count ? Int(queueSelect) : nil }

  /// Reads a register at `offset` < 0x100 (config space is the device's).
  public func read(offset: UInt64) -> UInt32 {
    switch offset {
    case 0x000: return Self.magic
    case 0x004: return 2
    case 0x008: return deviceID
    case 0x00C: return Self.vendorID
    case 0x010:
      return deviceFeaturesSelect < 2
        ? UInt32(truncatingIfNeeded: deviceFeatures >> (32 * UInt64(deviceFeaturesSelect))) : 0
    case 0x034: return selected.map { UInt32(queues[$0].maxSize) } ?? 0
    case 0x044: return selected.map { queues[$0].ready ? 1 : 0 } ?? 0
    case 0x060: return interruptStatus
    case 0x070: return status
    case 0x0FC: return configGeneration
    default: return 0
    }
  }

  public mutating func write(offset: UInt64, value: UInt32, memory: GuestMemory) -> Action {
    switch offset {
    case 0x014: deviceFeaturesSelect = value
    case 0x020:
      // Features can change only before FEATURES_OK, and only to ones the device offered.
      guard status & Status.featuresOK == 0, driverFeaturesSelect < 2 else { return .none }
      let shift = 32 * UInt64(driverFeaturesSelect)
      driverFeatures = (driverFeatures & ~(0xFFFF_FFFF << shift)) | (UInt64(value) << shift)
    case 0x024: driverFeaturesSelect = value
    case 0x030: queueSelect = value
    case 0x038:
      if let q = selected, !queues[q].ready { queues[q].size = UInt16(truncatingIfNeeded: value) }
    case 0x044:
      guard let q = selected else { return .none }
      if value == 1 {
        do {
          try queues[q].validate(memory: memory)
          queues[q].ready = true
        } catch {
          status |= Status.needsReset
        }
      } else {
        queues[q].ready = false
      }
    case 0x050:
      guard isActive, Int(value) < queues.count else { return .none }
      return .notify(queue: Int(value))
    case 0x064: interruptStatus &= ~value
    case 0x070: return writeStatus(value)
    case 0x080: setAddress(\.descriptorTable, low: value)
    case 0x084: setAddress(\.descriptorTable, high: value)
    case 0x090: setAddress(\.availableRing, low: value)
    case 0x094: setAddress(\.availableRing, high: value)
    case 0x0A0: setAddress(\.usedRing, low: value)
    case 0x0A4: setAddress(\.usedRing, high: value)
    default: break
    }
    return .none
  }

  private mutating func writeStatus(_ value: UInt32) -> Action {
    if value == 0 {
      let sizes = queues.map(\.maxSize)
      self = VirtioMMIOTransport(deviceID: deviceID, deviceFeatures: deviceFeatures, queueSizes: sizes)
      return .reset
    }
    var newStatus = value
    if value & Status.featuresOK != 0 && status & Status.featuresOK == 0 {
      // Refuse FEATURES_OK for features never offered or without VERSION_1 (no legacy mode).
      if driverFeatures & ~deviceFeatures != 0 || driverFeatures & Self.featureVersion1 == 0 {
        newStatus &= ~Status.featuresOK
      }
    }
    let becameActive = newStatus & Status.driverOK != 0 && status & Status.driverOK == 0
    status = newStatus | (status & Status.needsReset)
    return becameActive ? .activated : .none
  }

  private mutating func setAddress(_ field: WritableKeyPath<Virtqueue, UInt64>, low: UInt32) {
    guard let q = selected, !queues[q].ready else { return }
    queues[q][keyPath: field] = (queues[q][keyPath: field] & 0xFFFF_FFFF_0000_0000) | UInt64(low)
  }

  private mutating func setAddress(_ field: WritableKeyPath<Virtqueue, UInt64>, high: UInt32) {
    guard let q = selected, !queues[q].ready else { return }
    queues[q][keyPath: field] = (queues[q][keyPath: field] & 0xFFFF_FFFF) | (UInt64(high) << 32)
  }

  /// A restored queue that is ready must pass the checks a live one passed when the driver set
  /// it ready (size, rings inside guest RAM and aligned): vmstate.bin is input like any other.
  public func checkRestoredQueues(memory: GuestMemory, source: String) throws(ProtocolError) {
    for (index, queue) in queues.enumerated() where queue.ready {
      do {
        try queue.validate(memory: memory)
      } catch {
        throw ProtocolError(.badValue, "\(source): virtqueue \(index): \(error.message)")
      }
    }
  }

  /// Marks the device broken so the driver resets it (virtio §2.1.2).
  public mutating func markNeedsReset() {
    status |= Status.needsReset
    configGeneration &+= 1
  }

  // MARK: State

  public func save(into w: inout ByteWriter) {
    w.u32(deviceID)
    w.u64(deviceFeatures)
    w.u32(status)
    w.u64(driverFeatures)
    w.u32(deviceFeaturesSelect)
    w.u32(driverFeaturesSelect)
    w.u32(queueSelect)
    w.u32(interruptStatus)
    w.u32(configGeneration)
    w.u32(UInt32(queues.count))
    for q in queues { q.save(into: &w) }
  }

  public static func restore(from r: inout ByteReader, expectedDeviceID: UInt32) throws(ProtocolError)
    -> VirtioMMIOTransport
  {
    let deviceID = try r.u32()
    guard deviceID == expectedDeviceID else {
      throw ProtocolError(.badValue, "\(r.source): virtio device id \(deviceID), expected \(expectedDeviceID)")
    }
    let features = try r.u64()
    var t = VirtioMMIOTransport(deviceID: deviceID, deviceFeatures: features, queueSizes: [])
    t.status = try r.u32()
    t.driverFeatures = try r.u64()
    t.deviceFeaturesSelect = try r.u32()
    t.driverFeaturesSelect = try r.u32()
    t.queueSelect = try r.u32()
    t.interruptStatus = try r.u32()
    t.configGeneration = try r.u32()
    let count = try r.u32()
    guard count <= 16 else { throw ProtocolError(.badValue, "\(r.source): \(count) virtqueues") }
    for _ in 0..<count { t.queues.append(try Virtqueue.restore(from: &r)) }
    return t
  }
}
