/// The working set a child touched first after restore, recorded by its pager beside the
/// snapshot (`working-set.bin`) so later pagers can copy those pages before they are asked.
///
/// Format: "FKDWSET1", u32 version (1), u32 count, u64 page indices (file offset / 4096) in
/// first-fault order.
public struct WorkingSet: Equatable, Sendable {
  public static let magic: [UInt8] = Array("FKDWSET1".utf8)
  public static let version: UInt32 = 1
  public static let maxPages = 1 << 24
  public static let fileName = "working-set.bin"

  public var pages: [UInt64]

  public init(pages: [UInt64]) { self.pages = pages }

  public func serialized() -> [UInt8] {
    var w = ByteWriter(capacity: 16 + pages.count * 8)
    w.bytes(Self.magic)
    w.u32(Self.version)
    w.u32(UInt32(pages.count))
    for page in pages { w.u64(page) }
    return w.bytes
  }

  public static func parse(_ bytes: [UInt8], source: String) throws(ProtocolError) -> WorkingSet {
    var r = ByteReader(bytes, source: source)
    guard try r.bytes(8) == magic else { throw ProtocolError(.badMagic, "\(source): not a working-set file") }
    let version = try r.u32()
    guard version == Self.version else {
      throw ProtocolError(
        .unsupportedVersion, "\(source): working-set version \(version), this forkd reads \(Self.version)")
    }
    let count = Int(try r.u32())
    guard count <= maxPages, count * 8 == r.remaining else {
      throw ProtocolError(.truncated, "\(source): announces \(count) pages but carries \(r.remaining) bytes")
    }
    var pages: [UInt64] = []
    pages.reserveCapacity(count)
    for _ in 0..<count { pages.append(try r.u64()) }
    return WorkingSet(pages: pages)
  }
}
