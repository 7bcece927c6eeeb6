import Foundation
import Protocol

/// Credentials for registries, read from a Docker-style `config.json` (the format of a Kubernetes
/// `kubernetes.io/dockerconfigjson` Secret): `{"auths": {"HOST[:PORT]": {"auth": base64("user:password")}}}`
/// or `{"username": …, "password": …}` in place of `auth`. A registry without an entry is used
/// anonymously.
public struct RegistryCredentials: Sendable, Equatable {
  public struct Login: Sendable, Equatable {
    public var username: String
    public var password: String
    public init(username: String, password: String) {
      self.username = username
      self.password = password
    }
  }

  public var logins: [String: Login]

  public init(logins: [String: Login] = [:]) { self.logins = logins }

  public func login(for host: String) -> Login? { logins[host] }

  public static func parse(_ bytes: [UInt8], source: String) throws(RegistryError) -> RegistryCredentials {
    do {
      let root = try JSONObjectReader(JSONValue.parse(bytes, source: source, maxBytes: 1 << 20), source: source)
      var logins: [String: Login] = [:]
      guard let auths = try root.optionalObject("auths") else { return RegistryCredentials() }
      for (host, entry) in auths.members {
        let e = try JSONObjectReader(entry, source: "\(source) auths.\(host)")
        if let encoded = try e.optionalString("auth") {
          guard let data = Data(base64Encoded: encoded), let text = String(data: data, encoding: .utf8),
            let colon = text.firstIndex(of: ":")
          else {
            throw RegistryError(.badCredentials, "\(source): auths.\(host).auth is not base64 of user:password")
          }
          logins[host] = Login(username: String(text[..<colon]), password: String(text[text.index(after: colon)...]))
        } else {
          logins[host] = Login(username: try e.string("username"), password: try e.string("password"))
        }
      }
      return RegistryCredentials(logins: logins)
    } catch let error as RegistryError {
      throw error
    } catch {
      throw RegistryError(.badCredentials, "\(error)")
    }
  }
}
