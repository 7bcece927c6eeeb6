/// `pages.idx` of a diff snapshot: which guest pages the layer holds. A diff layer's memory.bin
/// has the full logical size but only these pages are its own; every other page comes from the
/// layers below it. Pages that are in the index but read as a hole are zero in this layer.
///
/// Format (little-endian): u32 magic "FKPI", u16 version, u16 flags (0), u64 page count,
/// u64 pages present, the bitmap (bit `p % 8` of byte `p / 8` is page p), u32 CRC-32 of
/// everything before it.
public struct PageIndex: Equatable, Sendable {
  public static let magic: UInt32 = 0x4950_4B46  // "FKPI" in memory order
  public static let version: UInt16 = 1
  public static let fileName = "pages.idx"
  /// 1 TiB of 4 KiB pages: bigger indices are refused before anything is allocated.
  public static let maxPages: UInt64 = 1 << 28

  public private(set) var words: [UInt64]
  public let pageCount: Int
  public private(set) var presentCount: Int

  public init(pageCount: Int) {
    self.pageCount = pageCount
    words = [UInt64](repeating: 0, count: (pageCount + 63) / 64)
    presentCount = 0
  }

  @inline(__always) public func contains(_ page: Int) -> Bool {
    page >= 0 && page < pageCount && words[page >> 6] & (1 << UInt64(page & 63)) != 0
  }

  public mutating func insert(_ page: Int) {
    precondition(page >= 0 && page < pageCount, "page \(page) outside an index of \(pageCount) pages")
    let bit: UInt64 = 1 << UInt64(page & 63)
    if words[page >> 6] & bit == 0 {
      words[page >> 6] |= bit
      presentCount += 1
    }
  }

  /// The pages in the index, ascending.
  public var pages: [Int] {
    var result: [Int] = []
    result.reserveCapacity(presentCount)
    for (w, word) in words.enumerated() where word != 0 {
      var bits = word
      while bits != 0 {
        result.append(w * 64 + bits.trailingZeroBitCount)
        bits &= bits - 1
      }
    }
    return result
  }

  public func serialized() -> [UInt8] {
    var w = ByteWriter()
    w.u32(Self.magic)
    w.u16(Self.version)
    w.u16(0)
    w.u64(UInt64(pageCount))
    w.u64(UInt64(presentCount))
    var bitmap = [UInt8](repeating: 0, count: (pageCount + 7) / 8)
    for (i, word) in words.enumerated() {
      for b in 0..<8 where i * 8 + b < bitmap.count { bitmap[i * 8 + b] = UInt8(truncatingIfNeeded: word >> (8 * b)) }
    }
    w.bytes(bitmap)
    w.u32(CRC32.checksum(w.bytes))
    return w.bytes
  }

  /// Parses and checks an index; `expectedPages` is the snapshot's memory size in pages.
  public static func parse(_ bytes: [UInt8], source: String, expectedPages: Int) throws(ProtocolError) -> PageIndex {
    var r = ByteReader(bytes, source: source)
    let magic = try r.u32()
    guard magic == Self.magic else {
      throw ProtocolError(.badMagic, "\(source): bad magic 0x\(String(magic, radix: 16)), expected FKPI")
    }
    let version = try r.u16()
    guard version == Self.version else {
      throw ProtocolError(
        .unsupportedVersion, "\(source): page index version \(version), this forkd reads \(Self.version)")
    }
    _ = try r.u16()
    let count = try r.u64()
    guard count <= Self.maxPages, Int(count) == expectedPages else {
      throw ProtocolError(
        .badValue, "\(source): page count \(count) does not match the snapshot's \(expectedPages) pages")
    }
    let present = try r.u64()
    let bitmap = try r.bytes((Int(count) + 7) / 8)
    let stored = try r.u32()
    try r.expectEnd()
    let computed = CRC32.checksum(bytes.prefix(bytes.count - 4))
    guard stored == computed else {
      throw ProtocolError(
        .badChecksum,
        "\(source): CRC-32 0x\(String(stored, radix: 16)) does not match the content (0x\(String(computed, radix: 16)))"
      )
    }
    var index = PageIndex(pageCount: Int(count))
    for (i, byte) in bitmap.enumerated() where byte != 0 {
      for b in 0..<8 where byte & (1 << b) != 0 {
        let page = i * 8 + b
        guard page < Int(count) else {
          throw ProtocolError(.badValue, "\(source): bit for page \(page) set beyond the page count \(count)")
        }
        index.insert(page)
      }
    }
    guard UInt64(index.presentCount) == present else {
      throw ProtocolError(
        .badValue, "\(source): header says \(present) pages present, the bitmap has \(index.presentCount)")
    }
    return index
  }
}
