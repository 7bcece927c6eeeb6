/// Standard base64 (RFC 4648 §4) decoding for request fields such as `content_b64`.
public enum Base64 {
  /// The bytes of `text`, or nil if it is not base64: characters outside the alphabet, a
  /// length that is not a multiple of 4 once padded, padding anywhere but the end, or
  /// non-zero bits after the last byte.
  public static func decode(_ text: String) -> [UInt8]? {
    var input = Array(text.utf8)
    while input.count % 4 != 0 { input.append(UInt8(ascii: "=")) }
    var out: [UInt8] = []
    out.reserveCapacity(input.count / 4 * 3)
    var index = 0
    while index < input.count {
      var quad: UInt32 = 0
      var padding = 0
      for k in 0..<4 {
        let c = input[index + k]
        let value: UInt32
        switch c {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"): value = UInt32(c - UInt8(ascii: "A"))
        case UInt8(ascii: "a")...UInt8(ascii: "z"): value = UInt32(c - UInt8(ascii: "a")) + 26
        case UInt8(ascii: "0")...UInt8(ascii: "9"): value = UInt32(c - UInt8(ascii: "0")) + 52
        case UInt8(ascii: "+"): value = 62
        case UInt8(ascii: "/"): value = 63
        case UInt8(ascii: "=") where k >= 2 && index + 4 == input.count:
          padding += 1
          value = 0
        default: return nil
        }
        // Data after padding ("A=A=") is not base64.
        if padding > 0 && c != UInt8(ascii: "=") { return nil }
        quad = quad << 6 | value
      }
      let bytes = [
        UInt8(truncatingIfNeeded: quad >> 16), UInt8(truncatingIfNeeded: quad >> 8), UInt8(truncatingIfNeeded: quad),
      ]
      // Bits past the last byte must be zero, so each byte string has one encoding.
      if padding == 2 && quad & 0xFFFF != 0 || padding == 1 && quad & 0xFF != 0 { return nil }
      out += bytes.prefix(3 - padding)
      index += 4
    }
    return out
  }
}
