import Logging

/// Journal field names and values as forkd writes them.
///
/// journald accepts field names of 1–64 characters from `A–Z`, `0–9` and `_`, not starting with a
/// digit; names starting with `_` are trusted fields only journald itself may set. swift-log
/// metadata keys are mapped onto that: uppercased, every other character becomes `_`, leading
/// underscores are dropped, a leading digit gets an `F` in front, and the result is cut to 64
/// characters. `forkd_sandbox_id` → `FORKD_SANDBOX_ID`, `vm.exit-code` → `VM_EXIT_CODE`.
public enum JournalFields {
  public static let maximumNameLength = 64

  /// The journal field name for a swift-log metadata key (or any other text).
  public static func name(_ key: String) -> String {
    var bytes: [UInt8] = []
    bytes.reserveCapacity(key.utf8.count)
    for byte in key.utf8 {
      switch byte {
      case UInt8(ascii: "a")...UInt8(ascii: "z"): bytes.append(byte - 32)
      case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "_"):
        bytes.append(byte)
      default:
        // A multi-byte UTF-8 character becomes one `_` (its continuation bytes add nothing).
        if byte & 0xC0 != 0x80 { bytes.append(UInt8(ascii: "_")) }
      }
    }
    let firstKept = bytes.firstIndex { $0 != UInt8(ascii: "_") } ?? bytes.endIndex
    bytes.removeSubrange(..<firstKept)
    if bytes.isEmpty { return "FIELD" }
    if (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[0]) { bytes.insert(UInt8(ascii: "F"), at: 0) }
    if bytes.count > maximumNameLength { bytes.removeSubrange(maximumNameLength...) }
    return String(decoding: bytes, as: UTF8.self)
  }

  /// True if journald accepts `name` from a client as it is.
  public static func isValidName(_ name: String) -> Bool {
    let bytes = Array(name.utf8)
    guard !bytes.isEmpty, bytes.count <= maximumNameLength, bytes[0] != UInt8(ascii: "_") else { return false }
    guard !(UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[0]) else { return false }
    return bytes.allSatisfy {
      (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0)
        || $0 == UInt8(ascii: "_")
    }
  }

  /// The text of a metadata value: strings as they are, everything else as swift-log prints it.
  public static func value(_ metadata: Logger.MetadataValue) -> String {
    switch metadata {
    case .string(let string): string
    case .stringConvertible(let convertible): convertible.description
    case .array, .dictionary: metadata.description
    }
  }

  /// Metadata as journal fields, sorted by name. A key whose name is in `reserved` (a field the
  /// handler sets itself, e.g. MESSAGE) is kept as `META_<NAME>` instead of overriding it; two
  /// keys that map to the same name keep the value of the key that sorts last.
  public static func fields(_ metadata: Logger.Metadata, reserved: Set<String> = []) -> [(name: String, value: String)]
  {
    var byName: [String: String] = [:]
    for key in metadata.keys.sorted() {
      var name = name(key)
      if reserved.contains(name) { name = String(("META_" + name).prefix(maximumNameLength)) }
      byName[name] = value(metadata[key]!)
    }
    return byName.keys.sorted().map { (name: $0, value: byName[$0]!) }
  }

  /// Merges handler metadata, the metadata provider's and the log call's (later ones win).
  static func merged(
    handler: Logger.Metadata, provider: Logger.MetadataProvider?, event: Logger.Metadata?
  ) -> Logger.Metadata {
    var result = handler
    if let provided = provider?.get(), !provided.isEmpty { result.merge(provided) { _, new in new } }
    if let event, !event.isEmpty { result.merge(event) { _, new in new } }
    return result
  }
}

/// Syslog priorities, as journald's PRIORITY field carries them.
public enum JournalPriority: Int32, Sendable, Hashable, Comparable, CaseIterable {
  case emergency = 0
  case alert = 1
  case critical = 2
  case error = 3
  case warning = 4
  case notice = 5
  case info = 6
  case debug = 7

  /// swift-log level → priority: trace and debug → debug (7), info → info (6), notice → notice (5),
  /// warning → warning (4), error → err (3), critical → crit (2).
  public init(_ level: Logger.Level) {
    switch level {
    case .trace, .debug: self = .debug
    case .info: self = .info
    case .notice: self = .notice
    case .warning: self = .warning
    case .error: self = .error
    case .critical: self = .critical
    }
  }

  public static func < (lhs: JournalPriority, rhs: JournalPriority) -> Bool { lhs.rawValue < rhs.rawValue }
}
