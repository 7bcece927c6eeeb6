import Foundation
import Protocol
import Synchronization

#if canImport(FoundationNetworking)
  import FoundationNetworking
#endif

/// A client of one repository on an OCI distribution registry (HTTP API v2): blobs (HEAD, GET,
/// monolithic upload) and manifests (GET, PUT). HTTP/1.1 through URLSession (libcurl on Linux):
/// HTTPS verifies against the system trust store; loopback registries are plain HTTP. A 401
/// is answered once per request from its `WWW-Authenticate` challenge: Basic with the
/// configured login, or Bearer with a token fetched from the challenge's realm (with the login
/// when there is one), cached for the scope.
public final class RegistryClient: Sendable {
  public let host: String
  public let repository: String
  public let baseURL: String
  let login: RegistryCredentials.Login?
  let session: URLSession
  let challenges = ChallengeCapture()
  /// The Authorization header that last worked (Basic or Bearer).
  private let authorization = Mutex<String?>(nil)

  public init(host: String, repository: String, credentials: RegistryCredentials = .init(), plainHTTP: Bool? = nil) {
    self.host = host
    self.repository = repository
    let loopback = ImageReference(host: host, repository: repository, reference: "latest").isLoopback
    baseURL = ((plainHTTP ?? loopback) ? "http://" : "https://") + host
    login = credentials.login(for: host)
    let configuration = URLSessionConfiguration.ephemeral
    configuration.timeoutIntervalForRequest = 60
    configuration.httpMaximumConnectionsPerHost = 4
    configuration.urlCache = nil
    // Challenges are answered here, from WWW-Authenticate: URLSession's own 401 handling is
    // turned off (without a delegate, corelibs-foundation waits on it and never completes).
    session = URLSession(configuration: configuration, delegate: challenges, delegateQueue: nil)
  }

  deinit { session.finishTasksAndInvalidate() }

  public struct Response: Sendable {
    public var status: Int
    public var headers: [String: String]
    public var body: [UInt8]
    public func header(_ name: String) -> String? {
      headers.first { $0.key.caseInsensitiveCompare(name) == .orderedSame }?.value
    }
  }

  // MARK: - Blobs

  public func blobExists(_ digest: String) async throws(RegistryError) -> Bool {
    let r = try await send("HEAD", "/v2/\(repository)/blobs/\(digest)")
    switch r.status {
    case 200: return true
    case 404: return false
    default: throw failure("HEAD blob \(digest)", r)
    }
  }

  /// The blob's bytes; `expectedSize` bounds what is accepted while it arrives: a registry that
  /// announces or sends more is cut off at that size (the caller checks the digest).
  public func fetchBlob(_ digest: String, expectedSize: UInt64) async throws(RegistryError) -> [UInt8] {
    let r = try await send(
      "GET", "/v2/\(repository)/blobs/\(digest)", limit: (Int(clamping: expectedSize), "blob \(digest)"))
    guard r.status == 200 else {
      if r.status == 404 { throw RegistryError(.notFound, "blob \(digest) is not in \(host)/\(repository)") }
      throw failure("GET blob \(digest)", r)
    }
    if let length = r.header("Content-Length").flatMap(UInt64.init), length != UInt64(r.body.count) {
      throw RegistryError(
        .connection, "GET blob \(digest): the connection ended after \(r.body.count) of \(length) bytes")
    }
    return r.body
  }

  /// Uploads a blob in one PUT after opening an upload session (POST).
  public func putBlob(_ bytes: [UInt8], digest: String) async throws(RegistryError) {
    let start = try await send("POST", "/v2/\(repository)/blobs/uploads/")
    guard start.status == 202, let location = start.header("Location") else {
      throw failure("POST blob upload", start)
    }
    var target = location.hasPrefix("/") ? baseURL + location : location
    target += (target.contains("?") ? "&" : "?") + "digest=" + digest
    let r = try await send(
      "PUT", target, body: bytes, headers: ["Content-Type": "application/octet-stream"], absolute: true)
    guard r.status == 201 else { throw failure("PUT blob \(digest)", r) }
  }

  // MARK: - Manifests

  public func fetchManifest(_ reference: String, accept: String) async throws(RegistryError) -> [UInt8] {
    let r = try await send(
      "GET", "/v2/\(repository)/manifests/\(reference)", headers: ["Accept": accept],
      limit: (Self.maxManifestBytes, "manifest \(reference)"))
    guard r.status == 200 else {
      if r.status == 404 { throw RegistryError(.notFound, "\(host)/\(repository): no manifest \(reference)") }
      throw failure("GET manifest \(reference)", r)
    }
    return r.body
  }

  /// The largest manifest fetched (docs/snapshot-format.md): a 1 GiB memory in 2 MiB chunks is
  /// about 100 KiB of JSON.
  public static let maxManifestBytes = 4 << 20

  public func putManifest(_ bytes: [UInt8], mediaType: String, reference: String) async throws(RegistryError) {
    let r = try await send(
      "PUT", "/v2/\(repository)/manifests/\(reference)", body: bytes, headers: ["Content-Type": mediaType])
    guard r.status == 201 else { throw failure("PUT manifest \(reference)", r) }
  }

  // MARK: - Requests and authentication

  /// Sends a request, answering one 401 challenge. With `limit`, a response body (of a
  /// request without a body) is cut off as soon as it passes `limit.bytes`, and the error names
  /// `limit.what`.
  public func send(
    _ method: String, _ path: String, body: [UInt8]? = nil, headers: [String: String] = [:], absolute: Bool = false,
    limit: (bytes: Int, what: String)? = nil
  ) async throws(RegistryError) -> Response {
    let url = absolute ? path : baseURL + path
    let current = authorization.withLock { $0 }
    let first = try await perform(method, url, body: body, headers: headers, authorization: current, limit: limit)
    guard first.status == 401, let header = first.header("WWW-Authenticate") else { return first }
    guard let challenge = AuthChallenge.parse(header) else {
      throw RegistryError(
        .unauthorized, "\(method) \(url): 401 with an unreadable WWW-Authenticate \"\(header.prefix(200))\"")
    }
    let answer = try await authorize(challenge, for: "\(method) \(url)")
    authorization.withLock { $0 = answer }
    let second = try await perform(method, url, body: body, headers: headers, authorization: answer, limit: limit)
    if second.status == 401 || second.status == 403 {
      throw RegistryError(
        .unauthorized,
        "\(method) \(url): \(second.status) after authenticating as \(login?.username ?? "anonymous")\(errorText(second))"
      )
    }
    return second
  }

  private func authorize(_ challenge: AuthChallenge, for what: String) async throws(RegistryError) -> String {
    switch challenge.scheme {
    case "basic":
      guard let login else {
        throw RegistryError(.unauthorized, "\(what): the registry asks for a login and none is configured for \(host)")
      }
      return "Basic " + Data("\(login.username):\(login.password)".utf8).base64EncodedString()
    case "bearer":
      guard let realm = challenge.parameters["realm"], var components = URLComponents(string: realm),
        components.scheme == "https" || components.scheme == "http"
      else {
        throw RegistryError(.unauthorized, "\(what): Bearer challenge without a usable realm")
      }
      var items = components.queryItems ?? []
      if let service = challenge.parameters["service"] { items.append(URLQueryItem(name: "service", value: service)) }
      if let scope = challenge.parameters["scope"] { items.append(URLQueryItem(name: "scope", value: scope)) }
      components.queryItems = items.isEmpty ? nil : items
      guard let tokenURL = components.string else {
        throw RegistryError(.unauthorized, "\(what): cannot build the token URL from realm \(realm.prefix(200))")
      }
      let basic = login.map { "Basic " + Data("\($0.username):\($0.password)".utf8).base64EncodedString() }
      let r = try await perform("GET", tokenURL, body: nil, headers: [:], authorization: basic)
      guard r.status == 200 else {
        throw RegistryError(.unauthorized, "\(what): the token service \(realm.prefix(200)) answered \(r.status)")
      }
      guard let json = try? JSONValue.parse(r.body, source: "token response", maxBytes: 1 << 20),
        let token = json["token"]?.stringValue ?? json["access_token"]?.stringValue, !token.isEmpty
      else {
        throw RegistryError(.unauthorized, "\(what): the token service's answer has no token")
      }
      return "Bearer " + token
    default:
      throw RegistryError(.unauthorized, "\(what): unsupported authentication scheme \(challenge.scheme.prefix(40))")
    }
  }

  private func perform(
    _ method: String, _ url: String, body: [UInt8]?, headers: [String: String], authorization: String?,
    limit: (bytes: Int, what: String)? = nil
  ) async throws(RegistryError) -> Response {
    guard let target = URL(string: url) else { throw RegistryError(.http, "\(method) \(url.prefix(300)): not a URL") }
    var request = URLRequest(url: target)
    request.httpMethod = method
    for (name, value) in headers { request.setValue(value, forHTTPHeaderField: name) }
    if let authorization { request.setValue(authorization, forHTTPHeaderField: "Authorization") }
    request.setValue("forkd", forHTTPHeaderField: "User-Agent")
    let id = UUID().uuidString
    request.setValue(id, forHTTPHeaderField: ChallengeCapture.header)
    do {
      let (data, response): (Data, URLResponse)
      if let limit, body == nil {
        (data, response) = try await challenges.collect(
          session: session, request: request, limit: limit.bytes, what: "\(method) \(limit.what)")
      } else if let body {
        (data, response) = try await session.upload(for: request, from: Data(body))
      } else {
        (data, response) = try await session.data(for: request)
      }
      _ = challenges.take(id)
      guard let http = response as? HTTPURLResponse else {
        throw RegistryError(.http, "\(method) \(url): not an HTTP response")
      }
      return Response(status: http.statusCode, headers: Self.fields(http), body: [UInt8](data))
    } catch let error as RegistryError {
      throw error
    } catch let error as URLError {
      if let challenged = challenges.take(id) {
        return Response(status: challenged.statusCode, headers: Self.fields(challenged), body: [])
      }
      throw RegistryError(.connection, "\(method) \(url): \(describe(error))")
    } catch {
      throw RegistryError(.connection, "\(method) \(url): \(error)")
    }
  }

  static func fields(_ http: HTTPURLResponse) -> [String: String] {
    var fields: [String: String] = [:]
    for (key, value) in http.allHeaderFields {
      if let k = key as? String, let v = value as? String { fields[k] = v }
    }
    return fields
  }

  private func describe(_ error: URLError) -> String {
    switch error.code {
    case .networkConnectionLost: "the connection was dropped mid-transfer"
    case .cannotConnectToHost: "cannot connect (is the registry running?)"
    case .timedOut: "timed out"
    case .secureConnectionFailed, .serverCertificateUntrusted, .serverCertificateHasBadDate,
      .serverCertificateNotYetValid, .serverCertificateHasUnknownRoot:
      "TLS failed (certificate not trusted by the system trust store?)"
    default: "\(error.localizedDescription) (URLError \(error.code.rawValue))"
    }
  }

  private func errorText(_ r: Response) -> String {
    guard let json = try? JSONValue.parse(r.body, source: "registry error", maxBytes: 1 << 20),
      let errors = json["errors"]?.arrayValue, !errors.isEmpty
    else { return "" }
    return ": "
      + errors.prefix(3).map { e in
        "\(e["code"]?.stringValue ?? "?") \(e["message"]?.stringValue ?? "")"
      }.joined(separator: "; ")
  }

  private func failure(_ what: String, _ r: Response) -> RegistryError {
    RegistryError(
      r.status == 404 ? .notFound : .http, "\(what) on \(host)/\(repository): HTTP \(r.status)\(errorText(r))")
  }
}

/// Takes a 401's challenge away from URLSession's credential logic (which, without credentials
/// of its own, never completes in corelibs-foundation): keeps the response with its
/// WWW-Authenticate header under the request's id and cancels the task; RegistryClient answers
/// the challenge itself.
final class ChallengeCapture: NSObject, URLSessionDataDelegate, @unchecked Sendable {
  static let header = "X-Forkd-Request"
  private let lock = NSLock()
  private var captured: [String: HTTPURLResponse] = [:]
  /// Bodies of capped requests (`collect`), by task identifier.
  private var collecting: [Int: Collecting] = [:]

  private struct Collecting {
    var limit: Int
    var what: String
    var data = Data()
    var response: URLResponse?
    var overLimit: String?
    var continuation: CheckedContinuation<(Data, URLResponse), any Error>

    func failTooLarge() {
      continuation.resume(throwing: RegistryError(.tooLarge, "\(what): \(overLimit ?? "too large")"))
    }
  }

  func take(_ id: String) -> HTTPURLResponse? { lock.withLock { captured.removeValue(forKey: id) } }

  /// Runs `request` as a delegate-driven data task whose body is cut off (the task cancelled)
  /// as soon as it announces (Content-Length) or delivers more than `limit` bytes; that ends in
  /// a RegistryError naming `what`. Other failures are thrown as URLSession reports them.
  func collect(session: URLSession, request: URLRequest, limit: Int, what: String) async throws -> (Data, URLResponse) {
    try await withCheckedThrowingContinuation { continuation in
      let task = session.dataTask(with: request)
      lock.withLock {
        collecting[task.taskIdentifier] = Collecting(limit: limit, what: what, continuation: continuation)
      }
      task.resume()
    }
  }

  func urlSession(
    _ session: URLSession, dataTask: URLSessionDataTask, didReceive response: URLResponse,
    completionHandler: @escaping @Sendable (URLSession.ResponseDisposition) -> Void
  ) {
    let refused = lock.withLock { () -> Collecting? in
      guard var c = collecting[dataTask.taskIdentifier] else { return nil }
      c.response = response
      let announced = response.expectedContentLength
      if let http = response as? HTTPURLResponse, http.statusCode == 200, announced > Int64(c.limit) {
        c.overLimit = "the registry announced \(announced) bytes, more than the \(c.limit) expected"
        return collecting.removeValue(forKey: dataTask.taskIdentifier).map { _ in c }
      }
      collecting[dataTask.taskIdentifier] = c
      return nil
    }
    completionHandler(refused == nil ? .allow : .cancel)
    refused?.failTooLarge()
  }

  func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive data: Data) {
    // Past the limit the caller fails at once and the entry is gone: whatever else arrives
    // before the cancellation takes effect is dropped here, never held.
    let cut = lock.withLock { () -> Collecting? in
      guard var c = collecting[dataTask.taskIdentifier] else { return nil }
      guard c.data.count + data.count <= c.limit else {
        c.overLimit =
          "the registry sent more than the \(c.limit) bytes expected (cut off after \(c.data.count + data.count) bytes)"
        collecting.removeValue(forKey: dataTask.taskIdentifier)
        return c
      }
      c.data.append(data)
      collecting[dataTask.taskIdentifier] = c
      return nil
    }
    if let cut {
      dataTask.cancel()
      cut.failTooLarge()
    }
  }

  func urlSession(_ session: URLSession, task: URLSessionTask, didCompleteWithError error: (any Error)?) {
    guard let c = lock.withLock({ collecting.removeValue(forKey: task.taskIdentifier) }) else { return }
    if let error {
      c.continuation.resume(throwing: error)
    } else if let response = c.response ?? task.response {
      c.continuation.resume(returning: (c.data, response))
    } else {
      c.continuation.resume(throwing: URLError(.badServerResponse))
    }
  }

  func urlSession(
    _ session: URLSession, task: URLSessionTask, didReceive challenge: URLAuthenticationChallenge,
    completionHandler: @escaping @Sendable (URLSession.AuthChallengeDisposition, URLCredential?) -> Void
  ) {
    if let id = task.originalRequest?.value(forHTTPHeaderField: ChallengeCapture.header),
      let response = challenge.failureResponse as? HTTPURLResponse
    {
      lock.withLock { captured[id] = response }
    }
    completionHandler(.cancelAuthenticationChallenge, nil)
  }
}
