/// A snapshot that cannot be packed, transferred or unpacked: a stable code and a message that
/// names the blob, field or value that was wrong.
public struct PackError: Error, Sendable, CustomStringConvertible {
  public enum Code: String, Sendable {
    /// The artifact (OCI manifest, config, a layer) is malformed or inconsistent.
    case invalidArtifact = "invalid_artifact"
    /// A blob's bytes do not hash to its descriptor's digest.
    case digestMismatch = "digest_mismatch"
    /// A blob is shorter or longer than its descriptor says.
    case sizeMismatch = "size_mismatch"
    /// The blob or manifest is not in the store.
    case notFound = "not_found"
    /// The target tag exists already.
    case exists = "exists"
    /// Reading or writing local files failed.
    case io = "io"
    /// The store (registry) failed: connection, HTTP status, authentication.
    case transport = "transport"
  }

  public let code: Code
  public let message: String

  public init(_ code: Code, _ message: String) {
    self.code = code
    self.message = message
  }

  public var description: String { message }
}
