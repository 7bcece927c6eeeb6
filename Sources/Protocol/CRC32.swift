/// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), as used by zlib and the
/// `vmstate.bin` trailer. Catches torn or bit-flipped state files before restore.
public struct CRC32: Sendable {
  private static let table: [UInt32] = (0..<256).map { (n: UInt32) -> UInt32 in
    var c = n
    for _ in 0..<8 {
      c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1
    }
    return c
  }

  private var crc: UInt32 = 0xFFFF_FFFF

  public init() {}

  public mutating func update(_ bytes: some Sequence<UInt8>) {
    var c = crc
    CRC32.table.withUnsafeBufferPointer { table in
      for b in bytes {
        c = table[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8)
      }
    }
    crc = c
  }

  public var value: UInt32 { crc ^ 0xFFFF_FFFF }

  public static func checksum(_ bytes: some Sequence<UInt8>) -> UInt32 {
    var c = CRC32()
    c.update(bytes)
    return c.value
  }
}
