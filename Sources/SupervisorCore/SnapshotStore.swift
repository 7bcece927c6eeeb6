import Protocol
import SnapshotStorage
import Syscalls
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// The snapshot registry: one directory per tag under `snapshots/`, each written by forkd-vmm
/// into a staging directory and renamed into place, so a directory that exists is complete.
public final class SnapshotStore: @unchecked Sendable {
  public let directory: String
  private let lock = ConditionLock()
  /// Tags being created (snapshot create or branch): a second request for one gets 409.
  private var inFlight: Set<String> = []
  /// Why recent background writes (live branches with wait false) of tags that never appeared
  /// failed: the 404 for such a tag says so. The latest `maxFailures` are kept.
  private var failures: [String: String] = [:]
  private var failureOrder: [String] = []
  static let maxFailures = 256

  public init(directory: String) throws {
    self.directory = directory
    try FileSystem.makeDirectories(directory)
    // Leftovers of writes that never finished (a crash mid-snapshot): never visible as tags.
    for name in (try? FileSystem.listDirectory(directory)) ?? [] where name.contains(".staging-") || name.hasPrefix(".")
    {
      FileSystem.removeTree(directory + "/" + name)
    }
  }

  public func path(_ tag: String) -> String { directory + "/" + tag }

  public func exists(_ tag: String) -> Bool { FileSystem.isDirectory(path(tag)) }

  /// Claims `tag` for a new snapshot; released by `release` whatever the outcome.
  public func reserve(_ tag: String, existsStatus: Int) throws(APIError) {
    try lock.withLock { () throws(APIError) in
      guard !inFlight.contains(tag) else { throw APIError(409, "snapshot \(tag) is being created") }
      guard !exists(tag) else { throw APIError(existsStatus, "snapshot \(tag) already exists") }
      inFlight.insert(tag)
      if failures.removeValue(forKey: tag) != nil { failureOrder.removeAll { $0 == tag } }
    }
  }

  /// Removes the staging directories of `tag` (`<tag>.staging-*`) a writer that died left behind.
  /// Only while the tag is reserved and its writer is known to be gone.
  public func removeStaging(of tag: String) {
    for name in (try? FileSystem.listDirectory(directory)) ?? [] where name.hasPrefix(tag + ".staging-") {
      FileSystem.removeTree(directory + "/" + name)
    }
  }

  /// After the writer of reserved `tag` died: removes what it left in staging and tells whether
  /// it had already renamed the snapshot into place (the commit point: then it is complete).
  public func settleAfterWriterDied(_ tag: String) -> Bool {
    removeStaging(of: tag)
    return exists(tag)
  }

  /// A background write of `tag` failed: kept so the tag's 404 reads `status "failed"` and why.
  public func recordFailure(_ tag: String, _ reason: String) {
    lock.withLock {
      if failures.updateValue(reason, forKey: tag) == nil { failureOrder.append(tag) }
      if failureOrder.count > Self.maxFailures { failures.removeValue(forKey: failureOrder.removeFirst()) }
    }
  }

  /// Why `tag` is not there: still being written, failed (and why), or unknown.
  func absence(_ tag: String) -> String {
    lock.withLock {
      if inFlight.contains(tag) { return "snapshot \(tag) is being written (status \"writing\")" }
      if let reason = failures[tag] { return "snapshot \(tag) does not exist (status \"failed\"): \(reason)" }
      return "unknown snapshot tag \(tag)"
    }
  }

  public func release(_ tag: String) {
    lock.withLock { _ = inFlight.remove(tag) }
  }

  private func manifest(_ tag: String) -> SnapshotManifest? {
    guard let bytes = try? FileSystem.readFile(path(tag) + "/manifest.json", limit: 1 << 20) else { return nil }
    return try? SnapshotManifest.decode(bytes, source: path(tag) + "/manifest.json")
  }

  private func tags() -> [String] {
    ((try? FileSystem.listDirectory(directory)) ?? []).filter { SnapshotTag.isValid($0) && exists($0) }
  }

  public func list() -> [SnapshotInfo] {
    let all = tags()
    let manifests = Dictionary(uniqueKeysWithValues: all.compactMap { tag in manifest(tag).map { (tag, $0) } })
    return all.compactMap { tag in manifests[tag].map { info(tag, $0, manifests) } }
  }

  public func count() -> Int { tags().count }

  public func info(_ tag: String) throws(APIError) -> SnapshotInfo {
    guard exists(tag), let m = manifest(tag) else { throw .notFound(absence(tag)) }
    let all = tags()
    let manifests = Dictionary(uniqueKeysWithValues: all.compactMap { t in manifest(t).map { (t, $0) } })
    return info(tag, m, manifests)
  }

  private func info(_ tag: String, _ m: SnapshotManifest, _ manifests: [String: SnapshotManifest]) -> SnapshotInfo {
    var ancestors: [String] = []
    var cursor = m.parentTag
    while let parent = cursor, !ancestors.contains(parent), let pm = manifests[parent] {
      ancestors.insert(parent, at: 0)
      cursor = pm.parentTag
    }
    let dependents = manifests.filter { $0.value.parentTag == tag }.map(\.key).sorted()
    var st = stat()
    let physical = stat(path(tag) + "/" + m.memoryFile, &st) == 0 ? UInt64(st.st_blocks) * 512 : 0
    let stateBytes = stat(path(tag) + "/" + m.stateFile, &st) == 0 ? UInt64(st.st_size) : 0
    var info = SnapshotInfo(
      tag: tag, dir: path(tag), createdAtUnix: m.createdAtUnix, memoryLogicalBytes: m.memorySize,
      memoryPhysicalBytes: physical, vmstateBytes: stateBytes, parentTag: m.parentTag, ancestors: ancestors,
      dependents: dependents)
    info.memoryLayer = m.memoryLayer.rawValue
    info.parentContentHash = m.parentContentDigest
    var depth = 0
    var layer = m
    while layer.memoryLayer == .diff, let parent = layer.parentTag.flatMap({ manifests[$0] }), depth < 64 {
      depth += 1
      layer = parent
    }
    info.chainDepth = depth
    info.vcpus = m.vcpuCount
    return info
  }

  /// The diff chain under `tag` (just the snapshot itself when it is flat), checked.
  public func chain(_ tag: String) throws(APIError) -> SnapshotChain {
    do {
      return try SnapshotChain.load(top: path(tag))
    } catch {
      throw .conflict("snapshot \(tag) is not restorable: \(error.message)")
    }
  }

  /// POST /v1/snapshots/:tag/compact: a new flat snapshot `to` with the chain's content.
  public func compact(_ tag: String, to newTag: String) throws(APIError) -> SnapshotInfo {
    guard exists(tag) else { throw .notFound("unknown snapshot tag \(tag)") }
    try reserve(newTag, existsStatus: 409)
    defer { release(newTag) }
    let loaded = try chain(tag)
    if loaded.layers.contains(where: { FileSystem.exists($0.directory + "/" + LazyMemoryMap.fileName) }) {
      throw .conflict("snapshot \(tag) is still being filled by a lazy pull; compact it when the fill is done")
    }
    do {
      _ = try SnapshotCompaction.flatten(loaded, into: path(newTag))
    } catch {
      throw .internalError("compact \(tag) to \(newTag) failed: \(error)")
    }
    return try info(newTag)
  }

  /// 404 for an unknown tag; 409 naming the missing file when it cannot be restored.
  public func checkRestorable(_ tag: String) throws(APIError) {
    guard exists(tag) else { throw .notFound("unknown snapshot tag \(tag)") }
    for file in ["manifest.json", "vmstate.bin", "memory.bin"] where !FileSystem.exists(path(tag) + "/" + file) {
      throw .conflict("snapshot \(tag) is not restorable: \(file) is missing")
    }
    guard manifest(tag) != nil else { throw .conflict("snapshot \(tag) is not restorable: manifest.json is invalid") }
  }

  /// Deletes `tag`: 409 when other snapshots name it as parent, unless `cascade` (delete them
  /// too) or `force` (leave them orphaned). Returns the deleted tags.
  public func delete(_ tag: String, cascade: Bool, force: Bool) throws(APIError) -> [String] {
    guard !(cascade && force) else { throw .badRequest("cascade and force are exclusive") }
    let (doomed, trash) = try lock.withLock { () throws(APIError) -> ([String], [String]) in
      guard exists(tag) else { throw .notFound("unknown snapshot tag \(tag)") }
      guard !inFlight.contains(tag) else { throw .conflict("snapshot \(tag) is being created") }
      let manifests = Dictionary(uniqueKeysWithValues: tags().compactMap { t in manifest(t).map { (t, $0) } })
      var subtree: [String] = []
      var frontier = [tag]
      while let next = frontier.popLast() {
        let children = manifests.filter { $0.value.parentTag == next }.map(\.key).sorted()
        subtree += children
        frontier += children
      }
      if !subtree.isEmpty && !cascade && !force {
        throw .conflict(
          "snapshot \(tag) is the parent of \(subtree.joined(separator: ", ")); use ?cascade=true or ?force=true")
      }
      let doomed = [tag] + (cascade ? subtree : [])
      return (doomed, doomed.reversed().map { unpublish($0) })
    }
    // The files go outside the lock: removing gigabytes must not hold up the registry.
    for path in trash { FileSystem.removeTree(path) }
    return doomed
  }

  /// Renames the directory away, so the tag disappears atomically; returns what to remove.
  private func unpublish(_ tag: String) -> String {
    ShmemImage.remove(for: path(tag))
    let trash = directory + "/.deleting-\(tag)-\(Clock.monotonicNanoseconds())"
    return (try? FileSystem.rename(path(tag), to: trash)) != nil ? trash : path(tag)
  }
}
