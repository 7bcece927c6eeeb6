/// A JSON document, parsed and written without Foundation.
///
/// Integers are kept apart from doubles so 64-bit sizes and counters survive exactly
/// (a `Double` loses precision above 2^53).
public enum JSONValue: Equatable, Sendable {
  case null
  case bool(Bool)
  case integer(Int64)
  case double(Double)
  case string(String)
  case array([JSONValue])
  case object([String: JSONValue])
}

// MARK: - Accessors

extension JSONValue {
  /// The member `key` of an object; nil for a missing key or a non-object.
  public subscript(key: String) -> JSONValue? {
    if case .object(let o) = self { return o[key] }
    return nil
  }

  public var isNull: Bool {
    if case .null = self { return true }
    return false
  }

  public var stringValue: String? {
    if case .string(let s) = self { return s }
    return nil
  }

  public var int64Value: Int64? {
    if case .integer(let i) = self { return i }
    return nil
  }

  /// The value of a non-negative integer.
  public var uint64Value: UInt64? {
    if case .integer(let i) = self, i >= 0 { return UInt64(i) }
    return nil
  }

  /// A double, or an integer converted to one.
  public var doubleValue: Double? {
    switch self {
    case .double(let d): return d
    case .integer(let i): return Double(i)
    default: return nil
    }
  }

  public var boolValue: Bool? {
    if case .bool(let b) = self { return b }
    return nil
  }

  public var arrayValue: [JSONValue]? {
    if case .array(let a) = self { return a }
    return nil
  }

  public var objectValue: [String: JSONValue]? {
    if case .object(let o) = self { return o }
    return nil
  }

  /// "string", "integer", … for error messages.
  public var typeName: String {
    switch self {
    case .null: return "null"
    case .bool: return "boolean"
    case .integer: return "integer"
    case .double: return "number"
    case .string: return "string"
    case .array: return "array"
    case .object: return "object"
    }
  }

  /// The JSON text, shortened for error messages ("1234", "\"abc\"", "array of 3 elements").
  var briefText: String {
    switch self {
    case .array(let a): return "array of \(a.count) elements"
    case .object(let o): return "object with \(o.count) members"
    default:
      let text = serialized()
      if text.unicodeScalars.count > 64 {
        return String(String.UnicodeScalarView(text.unicodeScalars.prefix(61))) + "..."
      }
      return text
    }
  }

  /// Type plus value for type-mismatch messages ("string \"abc\"", "null").
  var briefDescription: String {
    switch self {
    case .array, .object, .null: return briefText
    default: return "\(typeName) \(briefText)"
    }
  }
}

// MARK: - Serialization

extension JSONValue {
  /// The JSON text of this value.
  ///
  /// Object keys are sorted so equal values always produce identical bytes (manifests can be
  /// diffed and hashed). `pretty` indents by two spaces; without it there is no whitespace at all,
  /// so the result fits on one line (as the control protocol requires). Non-finite doubles, which
  /// JSON cannot represent, are written as `null`.
  public func serialized(pretty: Bool = false) -> String {
    var out = ""
    write(to: &out, pretty: pretty, indent: 0)
    return out
  }

  private func write(to out: inout String, pretty: Bool, indent: Int) {
    switch self {
    case .null:
      out += "null"
    case .bool(let b):
      out += b ? "true" : "false"
    case .integer(let i):
      out += String(i)
    case .double(let d):
      // Swift's description is the shortest text that round-trips, and is valid JSON for
      // finite values ("1.0", "1e-05", "1e+17", "-0.0").
      out += d.isFinite ? d.description : "null"
    case .string(let s):
      JSONValue.writeString(s, to: &out)
    case .array(let a):
      if a.isEmpty {
        out += "[]"
        return
      }
      out += "["
      for (i, element) in a.enumerated() {
        if i > 0 { out += "," }
        if pretty { JSONValue.newline(&out, indent + 1) }
        element.write(to: &out, pretty: pretty, indent: indent + 1)
      }
      if pretty { JSONValue.newline(&out, indent) }
      out += "]"
    case .object(let o):
      if o.isEmpty {
        out += "{}"
        return
      }
      out += "{"
      for (i, key) in o.keys.sorted().enumerated() {
        if i > 0 { out += "," }
        if pretty { JSONValue.newline(&out, indent + 1) }
        JSONValue.writeString(key, to: &out)
        out += pretty ? ": " : ":"
        o[key]!.write(to: &out, pretty: pretty, indent: indent + 1)
      }
      if pretty { JSONValue.newline(&out, indent) }
      out += "}"
    }
  }

  private static func newline(_ out: inout String, _ indent: Int) {
    out += "\n"
    out += String(repeating: " ", count: 2 * indent)
  }

  private static let hexDigits: [Character] = Array("0123456789abcdef")

  static func writeString(_ s: String, to out: inout String) {
    out += "\""
    for scalar in s.unicodeScalars {
      switch scalar {
      case "\"": out += "\\\""
      case "\\": out += "\\\\"
      case "\n": out += "\\n"
      case "\r": out += "\\r"
      case "\t": out += "\\t"
      case "\u{08}": out += "\\b"
      case "\u{0C}": out += "\\f"
      case "\u{00}"..."\u{1F}", "\u{7F}":
        let v = Int(scalar.value)
        out += "\\u00"
        out.append(hexDigits[v >> 4])
        out.append(hexDigits[v & 0xF])
      default:
        out.unicodeScalars.append(scalar)
      }
    }
    out += "\""
  }
}
