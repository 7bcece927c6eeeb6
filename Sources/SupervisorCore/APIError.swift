/// An API failure: the HTTP status and the `{"error": …}` message.
public struct APIError: Error, Sendable, CustomStringConvertible {
  public let status: Int
  public let message: String

  public init(_ status: Int, _ message: String) {
    self.status = status
    self.message = message
  }

  public static func badRequest(_ m: String) -> APIError { APIError(400, m) }
  public static func notFound(_ m: String) -> APIError { APIError(404, m) }
  public static func conflict(_ m: String) -> APIError { APIError(409, m) }
  public static func internalError(_ m: String) -> APIError { APIError(500, m) }
  public static func unavailable(_ m: String) -> APIError { APIError(503, m) }

  public var description: String { "\(status): \(message)" }
}
