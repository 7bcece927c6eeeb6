/// The query parameters of `/v1/sandboxes/:id/files` and the body of `/v1/sandboxes/:id/timeout`.
/// Every 400 names the parameter and the value that was wrong.
public enum SandboxFiles {
  /// Largest file a PUT or GET moves (the HTTP server's body limit); larger ones answer 413.
  public static let maxFileBytes = 1 << 20
  /// Longest path accepted (Linux's PATH_MAX).
  public static let maxPathBytes = 4096
  /// Mode of a file PUT without `mode`.
  public static let defaultMode: UInt32 = 0o644

  /// The `path` parameter: percent-decoded, absolute, without empty, "." or ".." components
  /// and without NUL; a trailing "/" is dropped ("/" itself stays).
  public static func path(_ raw: String?) throws(ProtocolError) -> String {
    guard let raw, !raw.isEmpty else { throw ProtocolError(.missingField, "query: missing parameter \"path\"") }
    let bytes = try percentDecoded(raw, parameter: "path")
    let shown = String(decoding: bytes.prefix(200), as: UTF8.self)
    guard bytes.first == UInt8(ascii: "/") else {
      throw ProtocolError(.badValue, "query: parameter \"path\": expected an absolute path, got \"\(shown)\"")
    }
    guard bytes.count <= maxPathBytes else {
      throw ProtocolError(.badValue, "query: parameter \"path\": longer than \(maxPathBytes) bytes")
    }
    guard !bytes.contains(0) else {
      throw ProtocolError(.badValue, "query: parameter \"path\": contains a NUL byte: \"\(shown)\"")
    }
    var components = bytes.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false).dropFirst()
    if components.last?.isEmpty == true { components = components.dropLast() }
    for c in components where c.isEmpty || c.elementsEqual([0x2e]) || c.elementsEqual([0x2e, 0x2e]) {
      throw ProtocolError(
        .badValue, "query: parameter \"path\": expected no empty, \".\" or \"..\" components, got \"\(shown)\"")
    }
    guard let text = String(validating: bytes, as: UTF8.self) else {
      throw ProtocolError(.badValue, "query: parameter \"path\": not valid UTF-8")
    }
    // Bytes, not Characters: "/" followed by a combining mark is one Character.
    if components.isEmpty { return "/" }
    return bytes.last == UInt8(ascii: "/") ? String(decoding: bytes.dropLast(), as: UTF8.self) : text
  }

  /// The `mode` parameter: octal permission bits, 0...7777 ("0644", "755").
  public static func mode(_ raw: String?) throws(ProtocolError) -> UInt32 {
    guard let raw else { return defaultMode }
    guard !raw.isEmpty, raw.utf8.count <= 6, let value = UInt32(raw, radix: 8), value <= 0o7777 else {
      throw ProtocolError(
        .badValue, "query: parameter \"mode\": expected octal permission bits 0...7777, got \"\(raw.prefix(40))\"")
    }
    return value
  }

  /// `%XX` escapes decoded; a malformed escape is an error naming the parameter.
  static func percentDecoded(_ raw: String, parameter: String) throws(ProtocolError) -> [UInt8] {
    let input = Array(raw.utf8)
    var out: [UInt8] = []
    out.reserveCapacity(input.count)
    var i = 0
    func hex(_ b: UInt8) -> UInt8? {
      switch b {
      case 0x30...0x39: b - 0x30
      case 0x41...0x46: b - 0x41 + 10
      case 0x61...0x66: b - 0x61 + 10
      default: nil
      }
    }
    while i < input.count {
      if input[i] == UInt8(ascii: "%") {
        guard i + 2 < input.count, let hi = hex(input[i + 1]), let lo = hex(input[i + 2]) else {
          throw ProtocolError(
            .badValue, "query: parameter \"\(parameter)\": malformed percent escape at offset \(i)")
        }
        out.append(hi << 4 | lo)
        i += 3
      } else {
        out.append(input[i])
        i += 1
      }
    }
    return out
  }
}

/// `timeout_secs` of a spawn and of POST /v1/sandboxes/:id/timeout.
public enum SandboxTimeout {
  public static let maxSeconds: UInt64 = 7 * 24 * 3600

  static func read(_ r: JSONObjectReader) throws(ProtocolError) -> UInt64? {
    guard let value = try r.optionalUInt64("timeout_secs") else { return nil }
    guard (1...maxSeconds).contains(value) else { throw r.invalid("timeout_secs", expected: "1...\(maxSeconds)") }
    return value
  }

  /// The body of POST /v1/sandboxes/:id/timeout: `{"timeout_secs": N}`, required.
  public static func decode(_ body: [UInt8]) throws(ProtocolError) -> UInt64 {
    let source = "request body"
    let r = try JSONObjectReader(JSONValue.parse(body, source: source), source: source)
    guard let value = try read(r) else { throw r.missing("timeout_secs") }
    return value
  }
}
