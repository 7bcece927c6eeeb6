/// The single error type of every wire and file format in forkd.
///
/// `code` lets callers branch (e.g. map to an agent error code or an exit status);
/// `message` is for humans and always names where the problem was (file or stream,
/// field, offset) and what was found, so a log line is enough to diagnose it.
public struct ProtocolError: Error, Equatable, Sendable, CustomStringConvertible {
  public enum Code: String, Sendable {
    /// The input does not follow the format's grammar (bad JSON, trailing bytes, …).
    case malformed
    /// The input ended before a complete value.
    case truncated
    /// A length, count, size or nesting depth exceeds its limit.
    case tooLarge
    /// The input declares a format version this build does not understand.
    case unsupportedVersion
    /// The magic number at the start of a file or frame is wrong.
    case badMagic
    /// A required field is absent.
    case missingField
    /// A field is present but has the wrong type.
    case badField
    /// A field has the right type but an invalid value.
    case badValue
    /// A stored checksum (CRC, digest) does not match the data.
    case badChecksum
    /// A message type or operation is not known.
    case unknownType
    /// A message type is known but not the one expected here (e.g. a response to another request).
    case unexpectedType
  }

  public var code: Code
  public var message: String

  public init(_ code: Code, _ message: String) {
    self.code = code
    self.message = message
  }

  public init(code: Code, message: String) {
    self.init(code, message)
  }

  /// The message alone: it already names source, field and value.
  public var description: String { message }
}
