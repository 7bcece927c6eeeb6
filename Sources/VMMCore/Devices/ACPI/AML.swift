/// A small encoder for the ACPI Machine Language subset a microVM's DSDT needs (ACPI 6.x §20):
/// scopes, devices, named objects, integers, strings, packages, buffers and resource templates.
/// Each value knows its own bytes; containers wrap their children with a PkgLength.
public indirect enum AML: Sendable, Equatable {
  case integer(UInt64)
  case string(String)
  /// A compressed EISA id such as "PNP0501", encoded as a DWord.
  case eisaID(String)
  case buffer([UInt8])
  case package([AML])
  /// `Name(seg, value)`.
  case name(String, AML)
  /// `Scope(path) { ... }`.
  case scope(String, [AML])
  /// `Device(seg) { ... }`.
  case device(String, [AML])
  /// `ResourceTemplate() { ... }`: a buffer of resource descriptors plus the end tag.
  case resources([ResourceDescriptor])

  public enum ResourceDescriptor: Sendable, Equatable {
    /// Memory32Fixed(ReadWrite or ReadOnly, base, length).
    case memory32Fixed(base: UInt32, length: UInt32, writable: Bool)
    /// Interrupt(ResourceConsumer, Edge|Level, ActiveHigh|ActiveLow, Exclusive) { gsi }.
    case extendedInterrupt(UInt32, edgeTriggered: Bool, activeLow: Bool)
    /// IO(Decode16, base, base, 1, length).
    case io(base: UInt16, length: UInt8)
    /// IRQNoFlags() { irq } (edge, active high, exclusive: an ISA interrupt).
    case irqNoFlags(UInt8)
  }

  // MARK: Encoding

  public var bytes: [UInt8] {
    switch self {
    case .integer(let value):
      switch value {
      case 0: return [0x00]  // ZeroOp
      case 1: return [0x01]  // OneOp
      case ...0xFF: return [0x0A, UInt8(value)]
      case ...0xFFFF: return [0x0B] + Self.le(value, 2)
      case ...0xFFFF_FFFF: return [0x0C] + Self.le(value, 4)
      default: return [0x0E] + Self.le(value, 8)
      }
    case .string(let text):
      return [0x0D] + Array(text.utf8) + [0]
    case .eisaID(let id):
      return [0x0C] + Self.le(UInt64(Self.compressedEISAID(id)), 4)
    case .buffer(let data):
      let body = AML.integer(UInt64(data.count)).bytes + data
      return [0x11] + Self.packageLength(body.count) + body
    case .package(let elements):
      precondition(elements.count <= 255, "AML Package holds at most 255 elements")
      let body = [UInt8(elements.count)] + elements.flatMap(\.bytes)
      return [0x12] + Self.packageLength(body.count) + body
    case .name(let path, let value):
      return [0x08] + Self.nameString(path) + value.bytes
    case .scope(let path, let children):
      let body = Self.nameString(path) + children.flatMap(\.bytes)
      return [0x10] + Self.packageLength(body.count) + body
    case .device(let path, let children):
      let body = Self.nameString(path) + children.flatMap(\.bytes)
      return [0x5B, 0x82] + Self.packageLength(body.count) + body
    case .resources(let descriptors):
      // End tag with a zero checksum: "the resource data is treated as if it summed to zero".
      let data = descriptors.flatMap(\.bytes) + [0x79, 0x00]
      return AML.buffer(data).bytes
    }
  }

  /// PkgLength (§20.2.4): the length counts its own encoding bytes. Up to 63 fits one byte;
  /// longer lengths put the low nibble in the lead byte and the rest in 1–3 following bytes.
  public static func packageLength(_ contentLength: Int) -> [UInt8] {
    if contentLength + 1 < 0x40 { return [UInt8(contentLength + 1)] }
    for extra in 1...3 {
      let total = contentLength + 1 + extra
      if total < 1 << (4 + 8 * extra) {
        var out = [UInt8(extra << 6) | UInt8(total & 0x0F)]
        for i in 0..<extra { out.append(UInt8(truncatingIfNeeded: total >> (4 + 8 * i))) }
        return out
      }
    }
    preconditionFailure("AML package of \(contentLength) bytes exceeds the 256 MiB PkgLength limit")
  }

  /// A NameString: an optional root prefix "\" and one or more 4-character segments separated
  /// by "."; segments shorter than four characters are padded with "_".
  public static func nameString(_ path: String) -> [UInt8] {
    var rest = Substring(path)
    var prefix: [UInt8] = []
    if rest.hasPrefix("\\") {
      prefix = [0x5C]
      rest = rest.dropFirst()
    }
    let segments = rest.split(separator: ".").map { segment -> [UInt8] in
      var bytes = Array(segment.utf8.prefix(4))
      while bytes.count < 4 { bytes.append(UInt8(ascii: "_")) }
      return bytes
    }
    switch segments.count {
    case 0: return prefix + [0x00]  // NullName
    case 1: return prefix + segments[0]
    case 2: return prefix + [0x2E] + segments[0] + segments[1]  // DualNamePrefix
    default: return prefix + [0x2F, UInt8(segments.count)] + segments.flatMap { $0 }  // MultiNamePrefix
    }
  }

  /// "PNP0501" → the 32-bit compressed form: three 5-bit letters and four hex digits, stored
  /// big-endian (as ASL's EISAID() produces it).
  public static func compressedEISAID(_ id: String) -> UInt32 {
    let chars = Array(id.utf8)
    precondition(chars.count == 7, "an EISA id has 7 characters, got '\(id)'")
    func letter(_ c: UInt8) -> UInt32 { UInt32(c - 0x40) & 0x1F }
    func digit(_ c: UInt8) -> UInt32 {
      switch c {
      case UInt8(ascii: "0")...UInt8(ascii: "9"): UInt32(c - UInt8(ascii: "0"))
      case UInt8(ascii: "A")...UInt8(ascii: "F"): UInt32(c - UInt8(ascii: "A") + 10)
      default: 0
      }
    }
    let high = letter(chars[0]) << 10 | letter(chars[1]) << 5 | letter(chars[2])
    let low = digit(chars[3]) << 12 | digit(chars[4]) << 8 | digit(chars[5]) << 4 | digit(chars[6])
    let value = high << 16 | low
    return value.byteSwapped
  }

  static func le(_ value: UInt64, _ count: Int) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) }
  }
}

extension AML.ResourceDescriptor {
  public var bytes: [UInt8] {
    switch self {
    case .memory32Fixed(let base, let length, let writable):
      // Large item 0x06, 9 bytes of data.
      return [0x86, 0x09, 0x00, writable ? 1 : 0] + AML.le(UInt64(base), 4) + AML.le(UInt64(length), 4)
    case .extendedInterrupt(let gsi, let edge, let activeLow):
      // Large item 0x09: flags (bit 0 consumer, bit 1 edge, bit 2 active low), a table of one.
      let flags: UInt8 = 0x01 | (edge ? 0x02 : 0) | (activeLow ? 0x04 : 0)
      return [0x89, 0x06, 0x00, flags, 0x01] + AML.le(UInt64(gsi), 4)
    case .io(let base, let length):
      // Small item 0x08, 7 bytes: decode16, min, max, alignment, length.
      return [0x47, 0x01] + AML.le(UInt64(base), 2) + AML.le(UInt64(base), 2) + [0x01, length]
    case .irqNoFlags(let irq):
      // Small item 0x04, 2 bytes: the IRQ mask.
      return [0x22] + AML.le(UInt64(1) << UInt64(irq), 2)
    }
  }
}
