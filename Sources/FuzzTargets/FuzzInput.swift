/// Reads structured values out of fuzz bytes: never fails, returns zeros past the end, so every
/// input is a valid program for a structured target.
struct FuzzInput {
  let bytes: [UInt8]
  var offset = 0

  init(_ bytes: [UInt8]) { self.bytes = bytes }

  var isAtEnd: Bool { offset >= bytes.count }
  var remaining: Int { max(bytes.count - offset, 0) }

  mutating func u8() -> UInt8 {
    guard offset < bytes.count else { return 0 }
    defer { offset += 1 }
    return bytes[offset]
  }

  mutating func u16() -> UInt16 { UInt16(u8()) | UInt16(u8()) << 8 }
  mutating func u32() -> UInt32 { UInt32(u16()) | UInt32(u16()) << 16 }
  mutating func u64() -> UInt64 { UInt64(u32()) | UInt64(u32()) << 32 }

  /// Up to `count` bytes (fewer at the end of the input).
  mutating func take(_ count: Int) -> [UInt8] {
    let n = min(max(count, 0), remaining)
    defer { offset += n }
    return Array(bytes[offset..<offset + n])
  }

  mutating func rest() -> [UInt8] { take(remaining) }
}

/// A violated invariant: the fuzzer reports it as a crash with this message.
func check(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
  if !condition() { fatalError("fuzz invariant violated: \(message())") }
}
