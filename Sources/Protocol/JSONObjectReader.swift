/// Reads typed fields out of a JSON object, producing errors that name source, field and value.
///
/// Decoders (manifest, control protocol) use it so every error reads like
/// `manifest.json: field "memory_size": expected a positive multiple of 4096, got 1234`.
/// A member whose value is `null` counts as absent for the `optional…` readers.
public struct JSONObjectReader: Sendable {
  public let members: [String: JSONValue]
  /// File or stream name used in messages.
  public let source: String
  /// Dotted path of this object inside the document ("" at top level, "error." below "error").
  public let path: String

  public init(_ v: JSONValue, source: String) throws(ProtocolError) {
    guard case .object(let members) = v else {
      throw ProtocolError(.badField, "\(source): expected a JSON object, got \(v.briefDescription)")
    }
    self.init(members: members, source: source, path: "")
  }

  init(members: [String: JSONValue], source: String, path: String) {
    self.members = members
    self.source = source
    self.path = path
  }

  /// `"path.key"`, quoted, for messages.
  public func fieldName(_ key: String) -> String {
    var out = ""
    JSONValue.writeString(path + key, to: &out)
    return out
  }

  /// The raw member, or nil when absent.
  public func value(_ key: String) -> JSONValue? { members[key] }

  /// Whether `key` is present with a non-null value.
  public func has(_ key: String) -> Bool {
    if let v = members[key], !v.isNull { return true }
    return false
  }

  // MARK: errors decoders can reuse

  public func missing(_ key: String) -> ProtocolError {
    ProtocolError(.missingField, "\(source): missing field \(fieldName(key))")
  }

  /// A type mismatch: `field "k": expected a string, got integer 3`.
  public func wrongType(_ key: String, expected: String) -> ProtocolError {
    let got = members[key]?.briefDescription ?? "nothing"
    return ProtocolError(.badField, "\(source): field \(fieldName(key)): expected \(expected), got \(got)")
  }

  /// A value outside its allowed range or format: `field "k": expected …, got 1234`.
  public func invalid(_ key: String, expected: String) -> ProtocolError {
    let got = members[key]?.briefText ?? "nothing"
    return ProtocolError(.badValue, "\(source): field \(fieldName(key)): expected \(expected), got \(got)")
  }

  // MARK: typed readers

  private func required(_ key: String) throws(ProtocolError) -> JSONValue {
    guard let v = members[key] else { throw missing(key) }
    return v
  }

  public func string(_ key: String) throws(ProtocolError) -> String {
    guard let s = try required(key).stringValue else { throw wrongType(key, expected: "a string") }
    return s
  }

  public func optionalString(_ key: String) throws(ProtocolError) -> String? {
    has(key) ? try string(key) : nil
  }

  public func int64(_ key: String) throws(ProtocolError) -> Int64 {
    guard let i = try required(key).int64Value else { throw wrongType(key, expected: "an integer") }
    return i
  }

  public func optionalInt64(_ key: String) throws(ProtocolError) -> Int64? {
    has(key) ? try int64(key) : nil
  }

  public func uint64(_ key: String) throws(ProtocolError) -> UInt64 {
    let i = try int64(key)
    guard i >= 0 else { throw invalid(key, expected: "a non-negative integer") }
    return UInt64(i)
  }

  public func optionalUInt64(_ key: String) throws(ProtocolError) -> UInt64? {
    has(key) ? try uint64(key) : nil
  }

  public func uint32(_ key: String) throws(ProtocolError) -> UInt32 {
    let i = try int64(key)
    guard let v = UInt32(exactly: i) else { throw invalid(key, expected: "an integer in 0...\(UInt32.max)") }
    return v
  }

  public func optionalUInt32(_ key: String) throws(ProtocolError) -> UInt32? {
    has(key) ? try uint32(key) : nil
  }

  public func bool(_ key: String) throws(ProtocolError) -> Bool {
    guard let b = try required(key).boolValue else { throw wrongType(key, expected: "true or false") }
    return b
  }

  public func optionalBool(_ key: String) throws(ProtocolError) -> Bool? {
    has(key) ? try bool(key) : nil
  }

  public func array(_ key: String) throws(ProtocolError) -> [JSONValue] {
    guard let a = try required(key).arrayValue else { throw wrongType(key, expected: "an array") }
    return a
  }

  public func optionalArray(_ key: String) throws(ProtocolError) -> [JSONValue]? {
    has(key) ? try array(key) : nil
  }

  /// A nested object; its errors name the field as "outer.inner".
  public func object(_ key: String) throws(ProtocolError) -> JSONObjectReader {
    guard let o = try required(key).objectValue else { throw wrongType(key, expected: "an object") }
    return JSONObjectReader(members: o, source: source, path: path + key + ".")
  }

  public func optionalObject(_ key: String) throws(ProtocolError) -> JSONObjectReader? {
    has(key) ? try object(key) : nil
  }

  /// For closed formats: the first unknown key (in sorted order, for stable messages) is an error.
  public func rejectUnknownKeys(allowed: Set<String>) throws(ProtocolError) {
    if let key = members.keys.filter({ !allowed.contains($0) }).sorted().first {
      throw ProtocolError(.badField, "\(source): unknown field \(fieldName(key))")
    }
  }
}
