/// A registry operation that failed: a stable code and a message naming the request and cause.
public struct RegistryError: Error, Sendable, CustomStringConvertible {
  public enum Code: String, Sendable {
    case badReference = "bad_reference"
    case badCredentials = "bad_credentials"
    /// Connection refused, dropped, timed out, TLS failure.
    case connection = "connection"
    /// 401/403 after authenticating.
    case unauthorized = "unauthorized"
    case notFound = "not_found"
    /// Any other unexpected HTTP status or response.
    case http = "http"
    /// A manifest or blob larger than its limit (the descriptor's size, or the manifest cap).
    case tooLarge = "too_large"
  }

  public let code: Code
  public let message: String

  public init(_ code: Code, _ message: String) {
    self.code = code
    self.message = message
  }

  public var description: String { message }
}
