import Logging
import OCIDistribution
import Protocol
import SnapshotPack
import Synchronization
import Syscalls

/// `POST /v1/snapshots/:tag/push`, `POST /v1/snapshots/pull` and `GET /v1/transfers` (the
/// progress of running ones). Registry logins come from `--registry-auth` (read at each
/// transfer, so a rotated Secret applies without a restart).
public final class SnapshotTransfers: Sendable {
  struct Running: Sendable {
    let id: Int
    let kind: String
    let tag: String
    let reference: String
    var progress: TransferProgress
  }

  let store: SnapshotStore
  let authFile: String?
  let logger: Logger
  private let running = Mutex<(next: Int, items: [Int: Running])>((1, [:]))

  init(store: SnapshotStore, authFile: String?, logger: Logger) {
    self.store = store
    self.authFile = authFile
    self.logger = logger
    // Lazy pulls a previous run did not finish: their fills go on.
    for name in ((try? FileSystem.listDirectory(store.directory)) ?? []).sorted()
    where SnapshotTag.isValid(name) && LazyFill.isFilling(store.path(name)) {
      guard let plan = try? LazyPlan.read(directory: store.path(name)),
        let reference = try? ImageReference.parse(plan.origin + ":resume")
      else {
        logger.error("snapshot \(name): its lazy pull cannot be resumed (lazy-chunks.json unreadable)")
        continue
      }
      startFill(directory: store.path(name), tag: name, reference: reference)
    }
  }

  /// Completes a lazily pulled layer in the background (listed in GET /v1/transfers as `fill`).
  func startFill(directory: String, tag: String, reference: ImageReference) {
    let id = track("fill", tag, reference)
    Task.detached { [self] in
      defer { finish(id) }
      do {
        let client = try client(for: reference)
        let outcome = try await LazyFill(store: RegistryBlobStore(client: client), directory: directory).run {
          [weak self] in self?.update(id, $0)
        }
        if outcome.failed.isEmpty {
          logger.info("lazy pull of \(tag): memory complete (\(outcome.fetched) chunks fetched)")
        } else {
          logger.error(
            "lazy pull of \(tag): \(outcome.failed.count) chunks could not be fetched; children that need them fail: \(outcome.failed.first ?? "")"
          )
        }
      } catch {
        logger.error("lazy pull of \(tag): the fill failed: \(error)")
      }
    }
  }

  /// Handles the transfer routes; nil for any other request.
  func route(_ method: String, _ parts: [String], body: [UInt8]) async throws -> HTTPResponseValue? {
    if method == "GET", parts == ["v1", "transfers"] {
      let items = running.withLock { $0.items.values.sorted { $0.id < $1.id } }
      return (200, .array(items.map(Self.json)))
    }
    if method == "POST", parts == ["v1", "snapshots", "pull"] {
      let r = try JSONObjectReader(JSONValue.parse(body, source: "request body"), source: "request body")
      try r.rejectUnknownKeys(allowed: ["ref", "tag", "lazy"])
      let lazy = try r.optionalBool("lazy") ?? false
      let reference = try Self.reference(try r.string("ref"))
      let tag = try r.optionalString("tag") ?? Self.defaultTag(reference)
      guard SnapshotTag.isValid(tag) else {
        throw APIError.badRequest("bad tag \"\(tag.prefix(80))\": tags match ^[A-Za-z0-9_-]{1,64}$")
      }
      return (201, try await pull(reference, tag: tag, lazy: lazy))
    }
    if method == "POST", parts.count == 4, parts[0] == "v1", parts[1] == "snapshots", parts[3] == "push" {
      let tag = parts[2]
      guard SnapshotTag.isValid(tag) else {
        throw APIError.badRequest("bad tag \"\(tag.prefix(80))\": tags match ^[A-Za-z0-9_-]{1,64}$")
      }
      let r = try JSONObjectReader(JSONValue.parse(body, source: "request body"), source: "request body")
      try r.rejectUnknownKeys(allowed: ["ref"])
      let reference = try Self.reference(try r.string("ref"))
      guard store.exists(tag) else { throw APIError.notFound("unknown snapshot tag \(tag)") }
      try refuseWhileFilling(tag, "push it")
      return (200, try await push(tag, to: reference))
    }
    return nil
  }

  /// 409 while a layer of `tag`'s chain is still being filled by a lazy pull; `action` says what
  /// to do once the fill is done. A fill only ever completes, so a check that passes stays true.
  func refuseWhileFilling(_ tag: String, _ action: String) throws(APIError) {
    if let filling = try store.chain(tag).layers.first(where: { LazyFill.isFilling($0.directory) }) {
      throw APIError.conflict(
        "snapshot \(tag) is still being filled by a lazy pull (\(filling.directory)); \(action) when the fill is done")
    }
  }

  static func reference(_ text: String) throws(APIError) -> ImageReference {
    do { return try ImageReference.parse(text) } catch { throw APIError.badRequest("ref: \(error.message)") }
  }

  typealias HTTPResponseValue = (status: Int, body: JSONValue)

  /// A registry tag that is also a valid snapshot tag, else the repository's last component.
  static func defaultTag(_ reference: ImageReference) -> String {
    if SnapshotTag.isValid(reference.reference) { return reference.reference }
    let last = reference.repository.split(separator: "/").last.map(String.init) ?? "pulled"
    return String(last.filter { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }.prefix(64))
  }

  private func client(for reference: ImageReference) throws(APIError) -> RegistryClient {
    var credentials = RegistryCredentials()
    if let authFile {
      do {
        credentials = try RegistryCredentials.parse(try FileSystem.readFile(authFile, limit: 1 << 20), source: authFile)
      } catch let error as RegistryError {
        throw APIError.internalError("registry credentials: \(error.message)")
      } catch {
        throw APIError.internalError("registry credentials \(authFile): \(error)")
      }
    }
    return RegistryClient(host: reference.host, repository: reference.repository, credentials: credentials)
  }

  private func track(_ kind: String, _ tag: String, _ reference: ImageReference) -> Int {
    running.withLock { state in
      let id = state.next
      state.next += 1
      state.items[id] = Running(id: id, kind: kind, tag: tag, reference: reference.description, progress: .init())
      return id
    }
  }

  private func update(_ id: Int, _ progress: TransferProgress) {
    running.withLock { $0.items[id]?.progress = progress }
  }

  private func finish(_ id: Int) { _ = running.withLock { $0.items.removeValue(forKey: id) } }

  func push(_ tag: String, to reference: ImageReference) async throws -> JSONValue {
    let client = try client(for: reference)
    let id = track("push", tag, reference)
    defer { finish(id) }
    let started = Clock.monotonicNanoseconds()
    let result: SnapshotPush.Result
    do {
      result = try await SnapshotPush(store: RegistryBlobStore(client: client)).push(
        directory: store.path(tag), reference: reference.reference
      ) { [weak self] in self?.update(id, $0) }
    } catch {
      logger.warning("push \(tag) to \(reference) failed: \(error.message)")
      throw Self.apiError(error, "push \(tag) to \(reference)")
    }
    let seconds = Double(Clock.monotonicNanoseconds() - started) / 1e9
    logger.info("pushed \(tag) to \(reference) (\(result.digest)) in \(seconds) s")
    var o = Self.counters(result.progress, seconds: seconds)
    o["tag"] = .string(tag)
    o["ref"] = .string(reference.description)
    o["digest"] = .string(result.digest)
    o["layers"] = .array(result.layerDigests.map(JSONValue.string))
    return .object(o)
  }

  func pull(_ reference: ImageReference, tag: String, lazy: Bool = false) async throws -> JSONValue {
    let client = try client(for: reference)
    try store.reserve(tag, existsStatus: 409)
    defer { store.release(tag) }
    let id = track("pull", tag, reference)
    defer { finish(id) }
    let started = Clock.monotonicNanoseconds()
    let result: SnapshotPull.Result
    do {
      result = try await SnapshotPull(store: RegistryBlobStore(client: client), snapshotsDirectory: store.directory)
        .pull(
          reference: reference.reference, tag: tag, lazy: lazy, origin: reference.host + "/" + reference.repository
        ) { [weak self] in self?.update(id, $0) }
    } catch {
      logger.warning("pull \(reference) as \(tag) failed: \(error.message)")
      throw Self.apiError(error, "pull \(reference)")
    }
    let seconds = Double(Clock.monotonicNanoseconds() - started) / 1e9
    logger.info("pulled \(reference) (\(result.digest)) as \(tag) in \(seconds) s")
    var o = Self.counters(result.progress, seconds: seconds)
    o["tag"] = .string(tag)
    o["ref"] = .string(reference.description)
    o["digest"] = .string(result.digest)
    o["created"] = .array(result.createdTags.map(JSONValue.string))
    o["reused"] = result.reusedTag.map(JSONValue.string) ?? .null
    o["lazy"] = .bool(lazy)
    for directory in result.lazyDirectories {
      startFill(directory: directory, tag: String(directory.split(separator: "/").last ?? ""), reference: reference)
    }
    return .object(o)
  }

  static func counters(_ p: TransferProgress, seconds: Double) -> [String: JSONValue] {
    [
      "total_bytes": .integer(Int64(clamping: p.totalBytes)),
      "transferred_bytes": .integer(Int64(clamping: p.transferredBytes)),
      "blobs_transferred": .integer(Int64(p.blobsTransferred)), "blobs_skipped": .integer(Int64(p.blobsSkipped)),
      "chunks_transferred": .integer(Int64(p.chunksTransferred)), "chunks_skipped": .integer(Int64(p.chunksSkipped)),
      "seconds": .double(seconds),
    ]
  }

  static func json(_ r: Running) -> JSONValue {
    var o = counters(r.progress, seconds: 0)
    o.removeValue(forKey: "seconds")
    o["id"] = .integer(Int64(r.id))
    o["kind"] = .string(r.kind)
    o["tag"] = .string(r.tag)
    o["ref"] = .string(r.reference)
    return .object(o)
  }

  /// Bad content from the registry is 502 (the registry, not the request, was wrong).
  static func apiError(_ error: PackError, _ what: String) -> APIError {
    let status =
      switch error.code {
      case .notFound: 404
      case .exists: 409
      case .io: 500
      case .invalidArtifact, .digestMismatch, .sizeMismatch, .transport: 502
      }
    return APIError(status, "\(what) failed (\(error.code.rawValue)): \(error.message)")
  }
}
