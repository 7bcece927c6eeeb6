/// A `WWW-Authenticate` challenge: `Basic realm="…"` or `Bearer realm="…",service="…",scope="…"`.
public struct AuthChallenge: Equatable, Sendable {
  public var scheme: String
  public var parameters: [String: String]

  /// Parses the first challenge of a header value; nil when it has no scheme.
  public static func parse(_ header: String) -> AuthChallenge? {
    var chars = Substring(header.trimmingSpaces())
    let scheme = chars.prefix { $0 != " " }
    guard !scheme.isEmpty else { return nil }
    chars = chars.dropFirst(scheme.count)
    var parameters: [String: String] = [:]
    while true {
      chars = chars.drop { $0 == " " || $0 == "," }
      let key = chars.prefix { $0 != "=" && $0 != " " && $0 != "," }
      guard !key.isEmpty else { break }
      chars = chars.dropFirst(key.count)
      guard chars.first == "=" else { break }
      chars = chars.dropFirst()
      var value = ""
      if chars.first == "\"" {
        chars = chars.dropFirst()
        var escaped = false
        while let c = chars.first {
          chars = chars.dropFirst()
          if escaped {
            value.append(c)
            escaped = false
          } else if c == "\\" {
            escaped = true
          } else if c == "\"" {
            break
          } else {
            value.append(c)
          }
        }
      } else {
        let token = chars.prefix { $0 != "," && $0 != " " }
        value = String(token)
        chars = chars.dropFirst(token.count)
      }
      parameters[key.lowercased()] = value
    }
    return AuthChallenge(scheme: scheme.lowercased(), parameters: parameters)
  }
}

extension String {
  func trimmingSpaces() -> String {
    String(drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" || $0 == "\r" }.reversed())
  }
}
