/// Appends little-endian binary values to a byte array.
///
/// All forkd binary formats (agent frames, `vmstate.bin`) are little endian, matching the
/// x86-64 guest, so nothing here is configurable.
public struct ByteWriter: Sendable {
  public private(set) var bytes: [UInt8]

  public init() {
    bytes = []
  }

  /// Starts with reserved capacity, to avoid regrowing for large sections.
  public init(capacity: Int) {
    bytes = []
    bytes.reserveCapacity(capacity)
  }

  public mutating func u8(_ v: UInt8) {
    bytes.append(v)
  }

  public mutating func u16(_ v: UInt16) {
    bytes.append(UInt8(truncatingIfNeeded: v))
    bytes.append(UInt8(truncatingIfNeeded: v >> 8))
  }

  public mutating func u32(_ v: UInt32) {
    for shift in stride(from: 0 as UInt32, to: 32, by: 8) {
      bytes.append(UInt8(truncatingIfNeeded: v >> shift))
    }
  }

  public mutating func u64(_ v: UInt64) {
    for shift in stride(from: 0 as UInt64, to: 64, by: 8) {
      bytes.append(UInt8(truncatingIfNeeded: v >> shift))
    }
  }

  public mutating func i32(_ v: Int32) {
    u32(UInt32(bitPattern: v))
  }

  public mutating func i64(_ v: Int64) {
    u64(UInt64(bitPattern: v))
  }

  /// Raw bytes, no length.
  public mutating func bytes(_ b: some Sequence<UInt8>) {
    bytes.append(contentsOf: b)
  }

  /// A u32 length followed by the bytes. More than 4 GiB cannot be represented and traps.
  public mutating func lengthPrefixed(_ b: [UInt8]) {
    precondition(b.count <= Int(UInt32.max), "lengthPrefixed: \(b.count) bytes do not fit a u32 length")
    u32(UInt32(b.count))
    bytes.append(contentsOf: b)
  }

  /// A u32 byte length followed by the UTF-8 bytes of `s`.
  public mutating func string(_ s: String) {
    lengthPrefixed(Array(s.utf8))
  }

  /// Overwrites 4 bytes at `offset` (for lengths or counts known only after writing).
  public mutating func patchU32(at offset: Int, _ v: UInt32) {
    for i in 0..<4 {
      bytes[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))
    }
  }
}

/// Reads little-endian binary values with bounds checks.
///
/// Every failure throws a `ProtocolError` naming `source` and the byte offset, so a corrupt
/// `vmstate.bin` or agent frame can be diagnosed from the message alone.
public struct ByteReader: Sendable {
  private let storage: [UInt8]
  /// Name used in error messages, e.g. "vmstate.bin".
  public let source: String
  /// Index of the next byte to read.
  public private(set) var offset: Int

  public init(_ bytes: [UInt8], source: String = "input") {
    storage = bytes
    self.source = source
    offset = 0
  }

  public var remaining: Int { storage.count - offset }
  public var isAtEnd: Bool { offset >= storage.count }

  private func need(_ n: Int) throws(ProtocolError) {
    if n > remaining {
      throw ProtocolError(
        .truncated, "\(source): truncated at offset \(offset): need \(n) bytes, \(remaining) left")
    }
  }

  private mutating func uint<T: FixedWidthInteger & UnsignedInteger>(_: T.Type) throws(ProtocolError) -> T {
    let size = MemoryLayout<T>.size
    try need(size)
    var v: T = 0
    for i in 0..<size {
      v |= T(storage[offset + i]) << (8 * i)
    }
    offset += size
    return v
  }

  public mutating func u8() throws(ProtocolError) -> UInt8 {
    try need(1)
    defer { offset += 1 }
    return storage[offset]
  }

  public mutating func u16() throws(ProtocolError) -> UInt16 { try uint(UInt16.self) }
  public mutating func u32() throws(ProtocolError) -> UInt32 { try uint(UInt32.self) }
  public mutating func u64() throws(ProtocolError) -> UInt64 { try uint(UInt64.self) }
  public mutating func i32() throws(ProtocolError) -> Int32 { Int32(bitPattern: try u32()) }
  public mutating func i64() throws(ProtocolError) -> Int64 { Int64(bitPattern: try u64()) }

  /// Exactly `n` raw bytes.
  public mutating func bytes(_ n: Int) throws(ProtocolError) -> [UInt8] {
    if n < 0 {
      throw ProtocolError(.badValue, "\(source): negative byte count \(n) at offset \(offset)")
    }
    try need(n)
    defer { offset += n }
    return Array(storage[offset..<offset + n])
  }

  /// All bytes up to the end.
  public mutating func rest() -> [UInt8] {
    defer { offset = storage.count }
    return Array(storage[offset...])
  }

  /// A u32 length (at most `max`) followed by that many bytes.
  public mutating func lengthPrefixed(max: Int) throws(ProtocolError) -> [UInt8] {
    let at = offset
    let length = try u32()
    if UInt64(length) > UInt64(Swift.max(max, 0)) {
      throw ProtocolError(
        .tooLarge, "\(source): length \(length) at offset \(at) exceeds the limit of \(max) bytes")
    }
    return try bytes(Int(length))
  }

  /// A u32 length (at most `max` bytes) followed by valid UTF-8.
  public mutating func string(max: Int) throws(ProtocolError) -> String {
    let at = offset
    let raw = try lengthPrefixed(max: max)
    guard let s = String(validating: raw, as: UTF8.self) else {
      throw ProtocolError(.badValue, "\(source): string at offset \(at) is not valid UTF-8")
    }
    return s
  }

  /// Throws unless every byte was consumed: trailing bytes mean the writer and reader disagree.
  public func expectEnd() throws(ProtocolError) {
    if !isAtEnd {
      throw ProtocolError(
        .malformed, "\(source): \(remaining) unexpected trailing bytes at offset \(offset)")
    }
  }
}
