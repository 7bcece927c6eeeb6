/// `HOST[:PORT]/REPOSITORY[:TAG|@sha256:…]`, the registry host always written out.
public struct ImageReference: Equatable, Sendable, CustomStringConvertible {
  public var host: String
  public var repository: String
  /// A tag or a `sha256:` digest.
  public var reference: String

  public init(host: String, repository: String, reference: String) {
    self.host = host
    self.repository = repository
    self.reference = reference
  }

  public var description: String {
    host + "/" + repository + (reference.hasPrefix("sha256:") ? "@" : ":") + reference
  }

  /// Parses `text`; the error names what is wrong with it.
  public static func parse(_ text: String) throws(RegistryError) -> ImageReference {
    func bad(_ why: String) -> RegistryError {
      RegistryError(.badReference, "bad reference \"\(text.prefix(200))\": \(why)")
    }
    guard text.utf8.count <= 512 else { throw bad("longer than 512 bytes") }
    guard let slash = text.firstIndex(of: "/") else { throw bad("expected HOST[:PORT]/REPOSITORY[:TAG]") }
    let host = String(text[..<slash])
    var rest = String(text[text.index(after: slash)...])
    guard !host.isEmpty, host.utf8.allSatisfy({ isHostByte($0) }) else {
      throw bad("host \"\(host)\" is not a host[:port]")
    }
    var reference = "latest"
    if let at = rest.firstIndex(of: "@") {
      reference = String(rest[rest.index(after: at)...])
      rest = String(rest[..<at])
      guard reference.hasPrefix("sha256:"), reference.utf8.count == 71,
        reference.utf8.dropFirst(7).allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) })
      else { throw bad("digest must be sha256:<64 lowercase hex>") }
    } else if let colon = rest.lastIndex(of: ":") {
      reference = String(rest[rest.index(after: colon)...])
      rest = String(rest[..<colon])
      guard isTag(reference) else { throw bad("tag \"\(reference)\" must match [A-Za-z0-9_][A-Za-z0-9._-]{0,127}") }
    }
    guard isRepository(rest) else {
      throw bad("repository \"\(rest)\" must be lowercase path components [a-z0-9]+([._-][a-z0-9]+)* joined by /")
    }
    return ImageReference(host: host, repository: rest, reference: reference)
  }

  /// Loopback registries are reached over plain HTTP, every other one over HTTPS.
  public var isLoopback: Bool {
    let name = host.hasPrefix("[") ? String(host.prefix { $0 != "]" }.dropFirst()) : String(host.prefix { $0 != ":" })
    return name == "localhost" || name == "::1" || name.hasPrefix("127.")
  }

  static func isHostByte(_ b: UInt8) -> Bool {
    switch b {
    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
      UInt8(ascii: "0")...UInt8(ascii: "9"):
      true
    case UInt8(ascii: "."), UInt8(ascii: "-"), UInt8(ascii: ":"), UInt8(ascii: "["), UInt8(ascii: "]"): true
    default: false
    }
  }

  static func isTag(_ s: String) -> Bool {
    let u = Array(s.utf8)
    guard (1...128).contains(u.count), u[0] != UInt8(ascii: "."), u[0] != UInt8(ascii: "-") else { return false }
    return u.allSatisfy { b in
      isHostByte(b) && b != UInt8(ascii: ":") && b != UInt8(ascii: "[") && b != UInt8(ascii: "]")
        || b == UInt8(ascii: "_")
    }
  }

  static func isRepository(_ s: String) -> Bool {
    guard !s.isEmpty, s.utf8.count <= 255 else { return false }
    for component in s.split(separator: "/", omittingEmptySubsequences: false) {
      let u = Array(component.utf8)
      guard let first = u.first, let last = u.last else { return false }
      func alnum(_ b: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(b) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(b)
      }
      guard alnum(first), alnum(last) else { return false }
      guard
        u.allSatisfy({ alnum($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-") })
      else { return false }
    }
    return true
  }
}
