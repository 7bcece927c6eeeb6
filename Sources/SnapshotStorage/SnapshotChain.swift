import Protocol
import Syscalls

/// A snapshot and the layers below it, base first, loaded and checked for a restore: every
/// layer names its parent by tag (a sibling directory) and by the parent's content digest, which
/// must match what the parent's manifest says now — no memory is hashed.
public struct SnapshotChain: Sendable {
  public struct Layer: Sendable {
    public let directory: String
    public let manifest: SnapshotManifest
    public var memoryPath: String { directory + "/" + manifest.memoryFile }
    public var pageIndexPath: String? { manifest.pageIndexFile.map { directory + "/" + $0 } }
  }

  /// Base (a full snapshot) first, the requested snapshot last.
  public let layers: [Layer]
  public var depth: Int { layers.count - 1 }

  public static func load(top directory: String) throws(SnapshotStorageError) -> SnapshotChain {
    var chain: [Layer] = []
    var current = directory
    var seen: Set<String> = []
    while true {
      let manifest = try SnapshotManifest.read(directory: current)
      chain.append(Layer(directory: current, manifest: manifest))
      guard manifest.memoryLayer == .diff else { break }
      guard chain.count <= PagerHandshake.maxLayers else {
        throw SnapshotStorageError(
          .invalidSnapshot, "\(directory): the diff chain is deeper than \(PagerHandshake.maxLayers) layers; compact it"
        )
      }
      let parentTag = manifest.parentTag!
      let parent = parentDirectory(of: current) + "/" + parentTag
      guard seen.insert(parent).inserted else {
        throw SnapshotStorageError(.invalidSnapshot, "\(current): the diff chain loops back to \(parentTag)")
      }
      guard FileSystem.isDirectory(parent) else {
        throw SnapshotStorageError(
          .invalidSnapshot, "\(current)/manifest.json: parent snapshot \(parentTag) (\(parent)) does not exist")
      }
      let parentManifest = try SnapshotManifest.read(directory: parent)
      guard parentManifest.contentDigest == manifest.parentContentDigest else {
        throw SnapshotStorageError(
          .invalidSnapshot,
          "\(current)/manifest.json: parent_content_digest \(manifest.parentContentDigest ?? "-") does not match \(parent)/manifest.json content_digest \(parentManifest.contentDigest ?? "(none)"): the parent changed after this layer was taken"
        )
      }
      guard parentManifest.memorySize == manifest.memorySize else {
        throw SnapshotStorageError(
          .invalidSnapshot,
          "\(current): memory_size \(manifest.memorySize) differs from its parent \(parentTag)'s \(parentManifest.memorySize)"
        )
      }
      current = parent
    }
    return SnapshotChain(layers: chain.reversed())
  }
}

extension SnapshotManifest {
  /// Reads and validates `directory/manifest.json`.
  public static func read(directory: String) throws(SnapshotStorageError) -> SnapshotManifest {
    let manifestPath = directory + "/manifest.json"
    let bytes: [UInt8]
    do {
      bytes = try FileSystem.readFile(manifestPath, limit: 1 << 20)
    } catch {
      throw SnapshotStorageError(.invalidSnapshot, "\(manifestPath): cannot read the snapshot manifest", cause: error)
    }
    do {
      return try SnapshotManifest.decode(bytes, source: manifestPath)
    } catch {
      throw SnapshotStorageError(.invalidSnapshot, error.message)
    }
  }
}

/// The directory containing `path` ("/" for a top-level entry, "." for a bare name).
public func parentDirectory(of path: String) -> String {
  guard let slash = path.lastIndex(of: "/") else { return "." }
  return slash == path.startIndex ? "/" : String(path[..<slash])
}
