import Protocol
import Testing

@Suite("State file container")
struct StateFileTests {
  static func sample() -> StateFile {
    var f = StateFile()
    f.append(tag: StateSectionTag.vmConfig, [1, 2, 3])
    f.append(tag: StateSectionTag.vcpu, version: 2, Array(repeating: 0xAA, count: 100))
    f.append(tag: StateSectionTag.vcpu, version: 2, Array(repeating: 0xBB, count: 100))
    f.append(tag: StateSectionTag.uart, [])
    return f
  }

  func parse(_ bytes: [UInt8]) throws(ProtocolError) -> StateFile {
    try StateFile.parse(bytes, source: "vmstate.bin")
  }

  /// Recomputes the CRC trailer after a deliberate edit, so structural checks are what fails.
  func resealed(_ bytes: [UInt8]) -> [UInt8] {
    var body = Array(bytes.dropLast(4))
    var w = ByteWriter()
    w.u32(CRC32.checksum(body))
    body += w.bytes
    return body
  }

  @Test func layout() {
    var f = StateFile()
    f.append(tag: 0x0102_0304, version: 5, [0xEE])
    let bytes = f.serialized()
    let body: [UInt8] =
      Array("FKDSTATE".utf8) + [3, 0, 0, 0] + [1, 0, 0, 0] + [4, 3, 2, 1] + [5, 0, 0, 0] + [1, 0, 0, 0, 0, 0, 0, 0] + [
        0xEE
      ]
    var crc = ByteWriter()
    crc.u32(CRC32.checksum(body))
    #expect(bytes == body + crc.bytes)
    #expect(StateFile().serialized().count == StateFile.minimumSize)
  }

  @Test func roundTrip() throws {
    let f = Self.sample()
    let back = try parse(f.serialized())
    #expect(back == f)
    #expect(try parse(StateFile().serialized()) == StateFile())
  }

  @Test func lookup() {
    let f = Self.sample()
    #expect(f.section(StateSectionTag.vcpu)?.bytes.first == 0xAA)
    #expect(f.sections(StateSectionTag.vcpu).map(\.bytes.first) == [0xAA, 0xBB])
    #expect(f.section(StateSectionTag.clock) == nil)
    #expect(f.sections(StateSectionTag.clock).isEmpty)
    #expect(f.section(StateSectionTag.uart) == StateFile.Section(tag: StateSectionTag.uart, version: 1, bytes: []))
  }

  @Test func badMagic() {
    var bytes = Self.sample().serialized()
    bytes[0] = UInt8(ascii: "X")
    let e = #expect(throws: ProtocolError.self) { try parse(bytes) }
    #expect(e?.code == .badMagic)
    #expect(e?.message.hasPrefix("vmstate.bin: bad magic") == true)
    #expect(throws: ProtocolError.self) { try parse(Array("{\"json\": true}\n".utf8)) }
    #expect((#expect(throws: ProtocolError.self) { try parse([0x7F, 0x45]) })?.code == .badMagic)
  }

  @Test func tooShort() {
    for n in [0, 5, 8, 12, 19] {
      let bytes = Array(Self.sample().serialized().prefix(n))
      let e = #expect(throws: ProtocolError.self) { try parse(bytes) }
      #expect(e?.code == .truncated, "\(n) bytes")
    }
  }

  @Test func newerVersion() {
    var bytes = Self.sample().serialized()
    bytes[8] = 4
    let e = #expect(throws: ProtocolError.self) { try parse(resealed(bytes)) }
    #expect(
      e == ProtocolError(.unsupportedVersion, "vmstate.bin: format version 4 is newer than this forkd supports (3)"))
    bytes[8] = 0
    #expect((#expect(throws: ProtocolError.self) { try parse(resealed(bytes)) })?.code == .unsupportedVersion)
  }

  /// Version 1 files (written before Linux guests) and version 2 files (before the NIC) have the
  /// same layout and are still read.
  @Test func olderVersionsStillRead() throws {
    var bytes = Self.sample().serialized()
    #expect(bytes[8] == 3)
    for older: UInt8 in [1, 2] {
      bytes[8] = older
      #expect(try parse(resealed(bytes)) == Self.sample())
    }
  }

  @Test func truncatedAnywhere() {
    let full = Self.sample().serialized()
    for n in StateFile.minimumSize..<full.count {
      let e = #expect(throws: ProtocolError.self) { try parse(Array(full.prefix(n))) }
      #expect(e?.code == .truncated || e?.code == .badChecksum || e?.code == .malformed, "\(n) bytes")
    }
    // Cutting a section body short names the section.
    let cut = resealed(Array(full.prefix(full.count - 50)))
    let e = #expect(throws: ProtocolError.self) { try parse(cut) }
    #expect(e?.code == .truncated)
    #expect(e?.message.contains("section 2 (VCPU)") == true)
  }

  @Test func sectionLengthPastEnd() {
    var f = StateFile()
    f.append(tag: StateSectionTag.clock, [1, 2, 3, 4])
    var bytes = f.serialized()
    // Section length field at 16 + 8.
    bytes[24] = 0xFF
    bytes[31] = 0x7F
    let e = #expect(throws: ProtocolError.self) { try parse(resealed(bytes)) }
    #expect(e?.code == .truncated)
    #expect(e?.message.contains("section 0 (CLCK) at offset 16 declares") == true)
    #expect(e?.message.contains("past the end of the data (4 left)") == true)
  }

  @Test func hugeSectionCount() {
    var bytes = StateFile().serialized()
    bytes[12] = 0xFF
    bytes[13] = 0xFF
    bytes[14] = 0xFF
    bytes[15] = 0xFF
    let e = #expect(throws: ProtocolError.self) { try parse(resealed(bytes)) }
    #expect(e?.code == .truncated)
  }

  @Test func trailingBytesBeforeCRC() {
    let body = Array(StateFile().serialized().dropLast(4)) + [0, 0, 0]
    let e = #expect(throws: ProtocolError.self) { try parse(resealed(body + [0, 0, 0, 0])) }
    #expect(e?.code == .malformed)
  }

  @Test func crcMismatch() {
    var bytes = Self.sample().serialized()
    bytes[60] ^= 0x01  // inside a section body
    let e = #expect(throws: ProtocolError.self) { try parse(bytes) }
    #expect(e?.code == .badChecksum)
    #expect(e?.message.hasPrefix("vmstate.bin: CRC-32 mismatch: stored 0x") == true)
    var trailer = Self.sample().serialized()
    trailer[trailer.count - 1] ^= 0x80
    #expect((#expect(throws: ProtocolError.self) { try parse(trailer) })?.code == .badChecksum)
  }

  @Test func tagsAreFourCC() {
    #expect(StateSectionTag.vcpu == 0x5643_5055)
    #expect(StateSectionTag.vcpu == StateSectionTag.fourCC("VCPU"))
    #expect(StateSectionTag.uart == StateSectionTag.fourCC("UART"))
    #expect(StateSectionTag.virtioMMIO == StateSectionTag.fourCC("MMIO"))
    #expect(StateSectionTag.vsock == StateSectionTag.fourCC("VSCK"))
    #expect(StateSectionTag.vmConfig == StateSectionTag.fourCC("VCFG"))
    #expect(StateSectionTag.irqchip == StateSectionTag.fourCC("IRQC"))
    #expect(StateSectionTag.clock == StateSectionTag.fourCC("CLCK"))
    let all = [
      StateSectionTag.vcpu, StateSectionTag.uart, StateSectionTag.virtioMMIO, StateSectionTag.vsock,
      StateSectionTag.vmConfig, StateSectionTag.irqchip, StateSectionTag.clock,
    ]
    #expect(Set(all).count == all.count)
    #expect(StateSectionTag.name(StateSectionTag.vcpu) == "VCPU")
    #expect(StateSectionTag.name(0x0102_0304) == "0x1020304")
  }
}
