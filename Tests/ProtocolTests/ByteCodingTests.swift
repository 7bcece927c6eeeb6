import Protocol
import Testing

@Suite("ByteWriter / ByteReader")
struct ByteCodingTests {
  @Test func writesLittleEndian() {
    var w = ByteWriter()
    w.u8(0xAB)
    w.u16(0x0102)
    w.u32(0x0304_0506)
    w.u64(0x0708_090A_0B0C_0D0E)
    w.i64(-2)
    #expect(
      w.bytes == [
        0xAB, 0x02, 0x01, 0x06, 0x05, 0x04, 0x03, 0x0E, 0x0D, 0x0C, 0x0B, 0x0A, 0x09, 0x08, 0x07,
        0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
      ])
  }

  @Test func writesLengthPrefixedAndStrings() {
    var w = ByteWriter()
    w.bytes([9, 8])
    w.lengthPrefixed([1, 2, 3])
    w.string("hé")
    #expect(w.bytes == [9, 8, 3, 0, 0, 0, 1, 2, 3, 3, 0, 0, 0, 0x68, 0xC3, 0xA9])
  }

  @Test func roundTrip() throws {
    var w = ByteWriter()
    w.u8(.max)
    w.u16(.max)
    w.u32(0xDEAD_BEEF)
    w.u64(.max)
    w.i64(.min)
    w.i32(-7)
    w.lengthPrefixed([])
    w.lengthPrefixed([0, 255])
    w.string("")
    w.string("snapshot ✓")
    w.bytes([42])
    var r = ByteReader(w.bytes, source: "t")
    #expect(try r.u8() == .max)
    #expect(try r.u16() == .max)
    #expect(try r.u32() == 0xDEAD_BEEF)
    #expect(try r.u64() == .max)
    #expect(try r.i64() == .min)
    #expect(try r.i32() == -7)
    #expect(try r.lengthPrefixed(max: 0) == [])
    #expect(try r.lengthPrefixed(max: 2) == [0, 255])
    #expect(try r.string(max: 10) == "")
    #expect(try r.string(max: 100) == "snapshot ✓")
    #expect(r.remaining == 1)
    #expect(!r.isAtEnd)
    #expect(try r.bytes(1) == [42])
    #expect(r.isAtEnd)
    try r.expectEnd()
  }

  @Test func truncatedNamesSourceOffsetAndCounts() throws {
    var r = ByteReader(Array(repeating: 0, count: 123), source: "vmstate.bin")
    _ = try r.bytes(120)
    let e = #expect(throws: ProtocolError.self) { try r.u64() }
    #expect(e?.code == .truncated)
    #expect(e?.message == "vmstate.bin: truncated at offset 120: need 8 bytes, 3 left")
    // A failed read consumes nothing.
    #expect(r.offset == 120)
    #expect(try r.u16() == 0)
  }

  @Test func everyReaderChecksBounds() {
    let empty = ByteReader([], source: "x")
    var r = empty
    #expect(throws: ProtocolError(.truncated, "x: truncated at offset 0: need 1 bytes, 0 left")) { try r.u8() }
    #expect(throws: ProtocolError.self) { try r.u16() }
    #expect(throws: ProtocolError.self) { try r.u32() }
    #expect(throws: ProtocolError.self) { try r.i64() }
    #expect(throws: ProtocolError.self) { try r.bytes(1) }
    #expect(throws: ProtocolError.self) { try r.bytes(-1) }
    #expect(throws: ProtocolError.self) { try r.string(max: 10) }
    #expect(r.isAtEnd)
    #expect(r.remaining == 0)
  }

  @Test func defaultSourceIsInput() {
    var r = ByteReader([1])
    let e = #expect(throws: ProtocolError.self) { try r.u32() }
    #expect(e?.message.hasPrefix("input: truncated at offset 0") == true)
  }

  @Test func lengthPrefixedLimits() throws {
    var w = ByteWriter()
    w.lengthPrefixed([1, 2, 3, 4, 5])
    var r = ByteReader(w.bytes, source: "frame")
    let e = #expect(throws: ProtocolError.self) { try r.lengthPrefixed(max: 4) }
    #expect(e?.code == .tooLarge)
    #expect(e?.message == "frame: length 5 at offset 0 exceeds the limit of 4 bytes")

    // A length beyond the data is truncation, even when under the limit.
    var r2 = ByteReader([10, 0, 0, 0, 1, 2], source: "frame")
    let e2 = #expect(throws: ProtocolError.self) { try r2.lengthPrefixed(max: 100) }
    #expect(e2?.code == .truncated)

    // A huge length must not be trusted for allocation.
    var r3 = ByteReader([0xFF, 0xFF, 0xFF, 0xFF], source: "frame")
    #expect(throws: ProtocolError.self) { try r3.lengthPrefixed(max: .max) }
  }

  @Test func stringRejectsInvalidUTF8() {
    var r = ByteReader([2, 0, 0, 0, 0xC3, 0x28], source: "s")
    let e = #expect(throws: ProtocolError.self) { try r.string(max: 10) }
    #expect(e?.code == .badValue)
    #expect(e?.message == "s: string at offset 0 is not valid UTF-8")
  }

  @Test func expectEndReportsTrailingBytes() throws {
    var r = ByteReader([1, 2, 3], source: "p")
    _ = try r.u8()
    let e = #expect(throws: ProtocolError.self) { try r.expectEnd() }
    #expect(e?.code == .malformed)
    #expect(e?.message == "p: 2 unexpected trailing bytes at offset 1")
  }

  @Test func patchU32() {
    var w = ByteWriter()
    w.u32(0)
    w.u8(7)
    w.patchU32(at: 0, 0x0A0B_0C0D)
    #expect(w.bytes == [0x0D, 0x0C, 0x0B, 0x0A, 7])
  }

  @Test func errorDescriptionIsTheMessage() {
    let e = ProtocolError(.badValue, "manifest.json: field \"x\": expected y, got z")
    #expect(e.description == e.message)
    #expect(ProtocolError(code: .badValue, message: "m") == ProtocolError(.badValue, "m"))
    #expect(ProtocolError.Code.unsupportedVersion.rawValue == "unsupportedVersion")
  }
}
