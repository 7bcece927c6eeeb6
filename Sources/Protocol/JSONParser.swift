extension JSONValue {
  /// Nesting deeper than this is rejected, so hostile input cannot exhaust the stack.
  public static let maxDepth = 64
  /// Default input size limit for `parse`.
  public static let defaultMaxBytes = 1 << 20

  /// Parses strict RFC 8259 JSON (no comments, no trailing commas, no BOM, no NaN/Infinity,
  /// duplicate object keys rejected). Errors carry `source:line:column`.
  public static func parse(
    _ bytes: [UInt8], source: String, maxBytes: Int = defaultMaxBytes
  ) throws(ProtocolError) -> JSONValue {
    if bytes.count > maxBytes {
      throw ProtocolError(
        .tooLarge, "\(source): \(bytes.count) bytes exceeds the limit of \(maxBytes) bytes")
    }
    var parser = JSONParser(bytes: bytes, source: source)
    return try parser.parseDocument()
  }

  /// Parses the UTF-8 of `text`; see `parse(_:source:maxBytes:)` for the rules.
  public static func parse(
    _ text: some StringProtocol, source: String, maxBytes: Int = defaultMaxBytes
  ) throws(ProtocolError) -> JSONValue {
    try parse(Array(text.utf8), source: source, maxBytes: maxBytes)
  }
}

private struct JSONParser {
  let bytes: [UInt8]
  let source: String
  var pos = 0
  var depth = 0

  init(bytes: [UInt8], source: String) {
    self.bytes = bytes
    self.source = source
  }

  // MARK: errors

  /// 1-based line and column (in Unicode scalars) of byte offset `at`.
  func location(_ at: Int) -> (line: Int, column: Int) {
    var line = 1
    var column = 1
    for b in bytes[0..<min(at, bytes.count)] {
      if b == UInt8(ascii: "\n") {
        line += 1
        column = 1
      } else if b & 0xC0 != 0x80 {
        column += 1
      }
    }
    return (line, column)
  }

  func error(_ code: ProtocolError.Code, _ what: String, at: Int? = nil) -> ProtocolError {
    let (line, column) = location(at ?? pos)
    return ProtocolError(code, "\(source):\(line):\(column): \(what)")
  }

  func describeByte(at i: Int) -> String {
    guard i < bytes.count else { return "end of input" }
    let b = bytes[i]
    if b >= 0x20 && b < 0x7F { return "'\(Character(Unicode.Scalar(b)))'" }
    return "byte 0x\(String(b, radix: 16))"
  }

  func unexpected(_ expected: String) -> ProtocolError {
    if pos >= bytes.count {
      return error(.truncated, "unexpected end of input, expected \(expected)")
    }
    return error(.malformed, "expected \(expected), got \(describeByte(at: pos))")
  }

  // MARK: grammar

  mutating func skipWhitespace() {
    while pos < bytes.count {
      switch bytes[pos] {
      case 0x20, 0x09, 0x0A, 0x0D: pos += 1
      default: return
      }
    }
  }

  mutating func parseDocument() throws(ProtocolError) -> JSONValue {
    if bytes.starts(with: [0xEF, 0xBB, 0xBF]) {
      throw error(.malformed, "byte order mark is not allowed")
    }
    skipWhitespace()
    let value = try parseValue()
    skipWhitespace()
    if pos < bytes.count {
      throw error(.malformed, "unexpected \(describeByte(at: pos)) after the JSON value")
    }
    return value
  }

  mutating func parseValue() throws(ProtocolError) -> JSONValue {
    guard pos < bytes.count else { throw unexpected("a value") }
    switch bytes[pos] {
    case UInt8(ascii: "{"): return try parseObject()
    case UInt8(ascii: "["): return try parseArray()
    case UInt8(ascii: "\""): return .string(try parseString())
    case UInt8(ascii: "t"): try literal("true"); return .bool(true)
    case UInt8(ascii: "f"): try literal("false"); return .bool(false)
    case UInt8(ascii: "n"): try literal("null"); return .null
    case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try parseNumber()
    default: throw unexpected("a value")
    }
  }

  mutating func literal(_ word: String) throws(ProtocolError) {
    let start = pos
    let expected = Array(word.utf8)
    for i in 0..<expected.count {
      if pos >= bytes.count {
        throw error(.truncated, "unexpected end of input in literal '\(word)'")
      }
      if bytes[pos] != expected[i] {
        throw error(.malformed, "invalid literal, expected '\(word)'", at: start)
      }
      pos += 1
    }
  }

  mutating func enter() throws(ProtocolError) {
    depth += 1
    if depth > JSONValue.maxDepth {
      throw error(.tooLarge, "nesting deeper than \(JSONValue.maxDepth) levels")
    }
  }

  mutating func parseArray() throws(ProtocolError) -> JSONValue {
    try enter()
    pos += 1  // [
    var elements: [JSONValue] = []
    skipWhitespace()
    if pos < bytes.count && bytes[pos] == UInt8(ascii: "]") {
      pos += 1
      depth -= 1
      return .array(elements)
    }
    while true {
      skipWhitespace()
      elements.append(try parseValue())
      skipWhitespace()
      guard pos < bytes.count else { throw unexpected("',' or ']' in array") }
      if bytes[pos] == UInt8(ascii: ",") {
        pos += 1
        continue
      }
      if bytes[pos] == UInt8(ascii: "]") {
        pos += 1
        depth -= 1
        return .array(elements)
      }
      throw unexpected("',' or ']' in array")
    }
  }

  mutating func parseObject() throws(ProtocolError) -> JSONValue {
    try enter()
    pos += 1  // {
    var members: [String: JSONValue] = [:]
    skipWhitespace()
    if pos < bytes.count && bytes[pos] == UInt8(ascii: "}") {
      pos += 1
      depth -= 1
      return .object(members)
    }
    while true {
      skipWhitespace()
      guard pos < bytes.count, bytes[pos] == UInt8(ascii: "\"") else {
        throw unexpected("a string key in object")
      }
      let keyStart = pos
      let key = try parseString()
      skipWhitespace()
      guard pos < bytes.count, bytes[pos] == UInt8(ascii: ":") else {
        throw unexpected("':' after object key")
      }
      pos += 1
      skipWhitespace()
      let value = try parseValue()
      if members.updateValue(value, forKey: key) != nil {
        var quoted = ""
        JSONValue.writeString(key, to: &quoted)
        throw error(.malformed, "duplicate key \(quoted)", at: keyStart)
      }
      skipWhitespace()
      guard pos < bytes.count else { throw unexpected("',' or '}' in object") }
      if bytes[pos] == UInt8(ascii: ",") {
        pos += 1
        continue
      }
      if bytes[pos] == UInt8(ascii: "}") {
        pos += 1
        depth -= 1
        return .object(members)
      }
      throw unexpected("',' or '}' in object")
    }
  }

  mutating func hex4() throws(ProtocolError) -> UInt32 {
    var v: UInt32 = 0
    for _ in 0..<4 {
      guard pos < bytes.count else {
        throw error(.truncated, "unexpected end of input in \\u escape")
      }
      let b = bytes[pos]
      let d: UInt8
      switch b {
      case UInt8(ascii: "0")...UInt8(ascii: "9"): d = b - UInt8(ascii: "0")
      case UInt8(ascii: "a")...UInt8(ascii: "f"): d = b - UInt8(ascii: "a") + 10
      case UInt8(ascii: "A")...UInt8(ascii: "F"): d = b - UInt8(ascii: "A") + 10
      default: throw error(.malformed, "invalid hex digit \(describeByte(at: pos)) in \\u escape")
      }
      v = v << 4 | UInt32(d)
      pos += 1
    }
    return v
  }

  mutating func parseString() throws(ProtocolError) -> String {
    let start = pos
    pos += 1  // opening quote
    var out: [UInt8] = []
    while true {
      guard pos < bytes.count else {
        throw error(.truncated, "unterminated string (started at \(location(start).line):\(location(start).column))")
      }
      let b = bytes[pos]
      switch b {
      case UInt8(ascii: "\""):
        pos += 1
        // Every byte was validated on the way in.
        return String(decoding: out, as: UTF8.self)
      case UInt8(ascii: "\\"):
        let escapeStart = pos
        pos += 1
        guard pos < bytes.count else {
          throw error(.truncated, "unexpected end of input in escape sequence")
        }
        let e = bytes[pos]
        pos += 1
        switch e {
        case UInt8(ascii: "\""): out.append(0x22)
        case UInt8(ascii: "\\"): out.append(0x5C)
        case UInt8(ascii: "/"): out.append(0x2F)
        case UInt8(ascii: "b"): out.append(0x08)
        case UInt8(ascii: "f"): out.append(0x0C)
        case UInt8(ascii: "n"): out.append(0x0A)
        case UInt8(ascii: "r"): out.append(0x0D)
        case UInt8(ascii: "t"): out.append(0x09)
        case UInt8(ascii: "u"):
          var code = try hex4()
          if (0xD800...0xDBFF).contains(code) {
            guard pos + 1 < bytes.count, bytes[pos] == UInt8(ascii: "\\"), bytes[pos + 1] == UInt8(ascii: "u")
            else {
              throw error(
                .malformed, "high surrogate \\u\(String(code, radix: 16)) not followed by a low surrogate",
                at: escapeStart)
            }
            pos += 2
            let low = try hex4()
            guard (0xDC00...0xDFFF).contains(low) else {
              throw error(
                .malformed,
                "high surrogate \\u\(String(code, radix: 16)) followed by \\u\(String(low, radix: 16)), not a low surrogate",
                at: escapeStart)
            }
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
          } else if (0xDC00...0xDFFF).contains(code) {
            throw error(.malformed, "lone low surrogate \\u\(String(code, radix: 16))", at: escapeStart)
          }
          out.append(contentsOf: Unicode.UTF8.encode(Unicode.Scalar(code)!)!)
        default:
          throw error(.malformed, "invalid escape sequence '\\\(describeByte(at: pos - 1))'", at: escapeStart)
        }
      case 0x00..<0x20:
        throw error(.malformed, "unescaped control character \(describeByte(at: pos)) in string")
      case 0x20..<0x80:
        out.append(b)
        pos += 1
      default:
        let n = try utf8SequenceLength()
        out.append(contentsOf: bytes[pos..<pos + n])
        pos += n
      }
    }
  }

  /// Validates the multi-byte UTF-8 sequence at `pos` (no overlongs, no surrogates, ≤ U+10FFFF).
  func utf8SequenceLength() throws(ProtocolError) -> Int {
    let b0 = bytes[pos]
    let n: Int
    var lo: UInt8 = 0x80
    var hi: UInt8 = 0xBF
    switch b0 {
    case 0xC2...0xDF: n = 2
    case 0xE0: n = 3; lo = 0xA0
    case 0xE1...0xEC, 0xEE...0xEF: n = 3
    case 0xED: n = 3; hi = 0x9F
    case 0xF0: n = 4; lo = 0x90
    case 0xF1...0xF3: n = 4
    case 0xF4: n = 4; hi = 0x8F
    default: throw error(.malformed, "invalid UTF-8 byte 0x\(String(b0, radix: 16))")
    }
    guard pos + n <= bytes.count else {
      throw error(.truncated, "truncated UTF-8 sequence")
    }
    for i in 1..<n {
      let b = bytes[pos + i]
      let (l, h) = i == 1 ? (lo, hi) : (UInt8(0x80), UInt8(0xBF))
      guard b >= l && b <= h else {
        throw error(.malformed, "invalid UTF-8 sequence")
      }
    }
    return n
  }

  mutating func digits() -> Int {
    let start = pos
    while pos < bytes.count, bytes[pos] >= UInt8(ascii: "0"), bytes[pos] <= UInt8(ascii: "9") {
      pos += 1
    }
    return pos - start
  }

  mutating func parseNumber() throws(ProtocolError) -> JSONValue {
    let start = pos
    if bytes[pos] == UInt8(ascii: "-") { pos += 1 }
    guard pos < bytes.count else { throw unexpected("a digit") }
    if bytes[pos] == UInt8(ascii: "0") {
      pos += 1
      if pos < bytes.count, bytes[pos] >= UInt8(ascii: "0"), bytes[pos] <= UInt8(ascii: "9") {
        throw error(.malformed, "leading zeros are not allowed in numbers", at: start)
      }
    } else if digits() == 0 {
      throw unexpected("a digit")
    }
    var isInteger = true
    if pos < bytes.count, bytes[pos] == UInt8(ascii: ".") {
      isInteger = false
      pos += 1
      if digits() == 0 { throw unexpected("a digit after '.'") }
    }
    if pos < bytes.count, bytes[pos] == UInt8(ascii: "e") || bytes[pos] == UInt8(ascii: "E") {
      isInteger = false
      pos += 1
      if pos < bytes.count, bytes[pos] == UInt8(ascii: "+") || bytes[pos] == UInt8(ascii: "-") {
        pos += 1
      }
      if digits() == 0 { throw unexpected("a digit in exponent") }
    }
    let text = String(decoding: bytes[start..<pos], as: UTF8.self)
    if isInteger, let i = Int64(text) {
      return .integer(i)
    }
    // Fractions, exponents and integers beyond Int64 become doubles, as in most JSON readers.
    guard let d = Double(text), d.isFinite else {
      throw error(.badValue, "number \(text) is out of range", at: start)
    }
    return .double(d)
  }
}
