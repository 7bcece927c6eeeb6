/// The `vmstate.bin` container: tagged, individually versioned sections (vCPU registers, device
/// state, …) so each device can evolve its own layout, plus a CRC-32 trailer so a torn or
/// corrupted file is refused instead of restoring a broken VM.
///
/// Layout (little endian): magic "FKDSTATE", u32 format version, u32 section count, then per
/// section `u32 tag, u32 version, u64 length, bytes`, then u32 CRC-32 (IEEE) of everything before it.
///
/// Version 2 has the same layout; it marks files that may hold Linux-guest sections (in-kernel
/// irqchip, PIT, kvmclock, virtio-blk), so a forkd that only knows version 1 refuses them with a
/// clear "newer than supported" instead of restoring half a VM. Version 3, the same again, may
/// hold a NIC (`VNET`): a forkd without virtio-net refuses it rather than restore a guest whose
/// network device is gone. Versions 1 and 2 are still read.
public struct StateFile: Equatable, Sendable {
  public static let currentVersion: UInt32 = 3
  public static let magic: [UInt8] = Array("FKDSTATE".utf8)
  /// Magic + version + count + CRC: the size of an empty file.
  public static let minimumSize = 8 + 4 + 4 + 4

  public struct Section: Equatable, Sendable {
    public var tag: UInt32
    public var version: UInt32
    public var bytes: [UInt8]

    public init(tag: UInt32, version: UInt32 = 1, bytes: [UInt8]) {
      self.tag = tag
      self.version = version
      self.bytes = bytes
    }
  }

  public var sections: [Section]

  public init(sections: [Section] = []) {
    self.sections = sections
  }

  public mutating func append(tag: UInt32, version: UInt32 = 1, _ bytes: [UInt8]) {
    sections.append(Section(tag: tag, version: version, bytes: bytes))
  }

  /// The first section with `tag`.
  public func section(_ tag: UInt32) -> Section? {
    sections.first { $0.tag == tag }
  }

  /// All sections with `tag`, in file order (e.g. one per vCPU).
  public func sections(_ tag: UInt32) -> [Section] {
    sections.filter { $0.tag == tag }
  }

  public func serialized() -> [UInt8] {
    let size = StateFile.minimumSize + sections.reduce(0) { $0 + 16 + $1.bytes.count }
    var w = ByteWriter(capacity: size)
    w.bytes(StateFile.magic)
    w.u32(StateFile.currentVersion)
    w.u32(UInt32(sections.count))
    for s in sections {
      w.u32(s.tag)
      w.u32(s.version)
      w.u64(UInt64(s.bytes.count))
      w.bytes(s.bytes)
    }
    w.u32(CRC32.checksum(w.bytes))
    return w.bytes
  }

  /// Parses and verifies a state file. Structure is checked before the CRC so a short file
  /// reports where it ends rather than only "checksum mismatch".
  public static func parse(_ bytes: [UInt8], source: String) throws(ProtocolError) -> StateFile {
    if bytes.count < 8 || !bytes.starts(with: magic) {
      if bytes.count < 8 && magic.starts(with: bytes) {
        throw ProtocolError(.truncated, "\(source): truncated: \(bytes.count) bytes, shorter than the 8-byte magic")
      }
      let shown = SHA256.hex(of: Array(bytes.prefix(8)))
      throw ProtocolError(.badMagic, "\(source): bad magic 0x\(shown), expected \"FKDSTATE\": not a forkd state file")
    }
    if bytes.count < minimumSize {
      throw ProtocolError(
        .truncated, "\(source): truncated: \(bytes.count) bytes, a state file has at least \(minimumSize)")
    }
    // The CRC trailer is not part of the section data.
    var r = ByteReader(Array(bytes[..<(bytes.count - 4)]), source: source)
    _ = try r.bytes(8)
    let version = try r.u32()
    if version > currentVersion {
      throw ProtocolError(
        .unsupportedVersion,
        "\(source): format version \(version) is newer than this forkd supports (\(currentVersion))")
    }
    if version == 0 {
      throw ProtocolError(.unsupportedVersion, "\(source): format version 0 is not a valid version")
    }
    let count = try r.u32()
    if UInt64(count) * 16 > UInt64(r.remaining) {
      throw ProtocolError(
        .truncated,
        "\(source): truncated: \(count) sections need at least \(UInt64(count) * 16) bytes of headers, \(r.remaining) left"
      )
    }
    var sections: [Section] = []
    sections.reserveCapacity(Int(count))
    for index in 0..<Int(count) {
      let at = r.offset
      let tag = try r.u32()
      let sectionVersion = try r.u32()
      let length = try r.u64()
      if length > UInt64(r.remaining) {
        throw ProtocolError(
          .truncated,
          "\(source): section \(index) (\(StateSectionTag.name(tag))) at offset \(at) declares \(length) bytes, past the end of the data (\(r.remaining) left)"
        )
      }
      sections.append(Section(tag: tag, version: sectionVersion, bytes: try r.bytes(Int(length))))
    }
    if !r.isAtEnd {
      throw ProtocolError(
        .malformed,
        "\(source): \(r.remaining) unexpected bytes after the last of \(count) sections at offset \(r.offset)")
    }
    let stored =
      UInt32(bytes[bytes.count - 4]) | UInt32(bytes[bytes.count - 3]) << 8
      | UInt32(bytes[bytes.count - 2]) << 16 | UInt32(bytes[bytes.count - 1]) << 24
    let computed = CRC32.checksum(bytes[..<(bytes.count - 4)])
    if stored != computed {
      throw ProtocolError(
        .badChecksum,
        "\(source): CRC-32 mismatch: stored 0x\(hex32(stored)), computed 0x\(hex32(computed)); the file is corrupt")
    }
    return StateFile(sections: sections)
  }

  private static func hex32(_ v: UInt32) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: 8 - s.count) + s
  }
}

/// Section tags: four ASCII characters read as a big-endian u32, so "VCPU" is 0x56435055
/// and tags are readable in hex dumps of the constants.
public enum StateSectionTag {
  /// Registers of one vCPU (one section per vCPU, in index order).
  public static let vcpu: UInt32 = 0x5643_5055  // "VCPU"
  /// 16550 UART registers.
  public static let uart: UInt32 = 0x5541_5254  // "UART"
  /// virtio-mmio transport state (queues, features, status) of one device.
  public static let virtioMMIO: UInt32 = 0x4D4D_494F  // "MMIO"
  /// virtio-vsock device state (connections, credit).
  public static let vsock: UInt32 = 0x5653_434B  // "VSCK"
  /// VM configuration (memory size, vCPU count, guest kind) as recorded at snapshot time.
  public static let vmConfig: UInt32 = 0x5643_4647  // "VCFG"
  /// In-kernel interrupt controller state (PIC/IOAPIC/LAPIC).
  public static let irqchip: UInt32 = 0x4952_5143  // "IRQC"
  /// KVM clock.
  public static let clock: UInt32 = 0x434C_434B  // "CLCK"
  /// In-kernel i8254 PIT (`kvm_pit_state2`).
  public static let pit: UInt32 = 0x5049_5432  // "PIT2"
  /// virtio-blk device state (transport, base image, overlay blocks).
  public static let block: UInt32 = 0x5642_4C4B  // "VBLK"
  /// virtio-net device state (transport, queues, MAC).
  public static let net: UInt32 = 0x564E_4554  // "VNET"

  /// The tag of a four-character ASCII code; traps unless `code` is exactly 4 bytes.
  public static func fourCC(_ code: String) -> UInt32 {
    let utf8 = Array(code.utf8)
    precondition(utf8.count == 4, "fourCC needs exactly 4 bytes, got \(utf8.count)")
    return utf8.reduce(0) { $0 << 8 | UInt32($1) }
  }

  /// "VCPU" for printable tags, otherwise "0x…", for messages.
  public static func name(_ tag: UInt32) -> String {
    let chars = [24, 16, 8, 0].map { UInt8(truncatingIfNeeded: tag >> UInt32($0)) }
    if chars.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) {
      return String(decoding: chars, as: UTF8.self)
    }
    return "0x" + String(tag, radix: 16)
  }
}
