/// `manifest.json` of a snapshot directory: what a restore needs to know before touching
/// memory or state, and what it must check (image and state digests) so a snapshot is never
/// restored onto the wrong guest or from a damaged state file.
public struct SnapshotManifest: Equatable, Sendable {
  /// 1: full snapshots. 2: adds diff layers (`memory_layer: "diff"`); full snapshots are still
  /// written as 1 so older builds keep reading them.
  public static let currentFormatVersion: UInt32 = 2
  public static let diffFormatVersion: UInt32 = 2

  /// A full snapshot holds every page; a diff layer only the pages in its `pages.idx`, the rest
  /// come from its parent chain.
  public enum MemoryLayer: String, Sendable {
    case full, diff
  }
  /// Guest memory is mapped in whole pages.
  public static let pageSize: UInt64 = 4096
  public static let maxVCPUs: UInt32 = 64
  public static let guestKinds: Set<String> = ["test-guest", "linux"]
  public static let defaultMemoryFile = "memory.bin"
  public static let defaultStateFile = "vmstate.bin"

  public var formatVersion: UInt32
  /// Bytes of guest RAM: > 0 and a multiple of 4096.
  public var memorySize: UInt64
  /// 1...64.
  public var vcpuCount: UInt32
  /// "test-guest" or "linux".
  public var guestKind: String
  /// "sha256:" + 64 lowercase hex of the guest image the snapshot was taken from.
  public var guestImageDigest: String
  public var createdAtUnix: Int64
  /// Tag of the snapshot this one was branched/derived from.
  public var parentTag: String?
  /// Plain file name inside the snapshot directory.
  public var memoryFile: String
  /// Plain file name inside the snapshot directory.
  public var stateFile: String
  /// "sha256:…" of the state file, checked at restore.
  public var stateDigest: String
  /// "sha256:…" over this layer's memory (page numbers and data pages), computed once while the
  /// snapshot is written: children of diff layers record it and spawns compare it, no memory is
  /// hashed again. Absent in snapshots written before diff layers existed.
  public var contentDigest: String?
  public var memoryLayer: MemoryLayer
  /// Diff layers: the parent's `content_digest` when the layer was taken.
  public var parentContentDigest: String?
  /// Diff layers: the page index file (plain name).
  public var pageIndexFile: String?

  public init(
    formatVersion: UInt32? = nil,
    memorySize: UInt64,
    vcpuCount: UInt32,
    guestKind: String,
    guestImageDigest: String,
    createdAtUnix: Int64,
    parentTag: String? = nil,
    memoryFile: String = SnapshotManifest.defaultMemoryFile,
    stateFile: String = SnapshotManifest.defaultStateFile,
    stateDigest: String,
    contentDigest: String? = nil,
    memoryLayer: MemoryLayer = .full,
    parentContentDigest: String? = nil,
    pageIndexFile: String? = nil
  ) {
    self.formatVersion = formatVersion ?? (memoryLayer == .diff ? SnapshotManifest.diffFormatVersion : 1)
    self.memorySize = memorySize
    self.vcpuCount = vcpuCount
    self.guestKind = guestKind
    self.guestImageDigest = guestImageDigest
    self.createdAtUnix = createdAtUnix
    self.parentTag = parentTag
    self.memoryFile = memoryFile
    self.stateFile = stateFile
    self.stateDigest = stateDigest
    self.contentDigest = contentDigest
    self.memoryLayer = memoryLayer
    self.parentContentDigest = parentContentDigest
    self.pageIndexFile = pageIndexFile
  }

  enum Key {
    static let formatVersion = "format_version"
    static let memorySize = "memory_size"
    static let vcpuCount = "vcpu_count"
    static let guestKind = "guest_kind"
    static let guestImageDigest = "guest_image_digest"
    static let createdAtUnix = "created_at_unix"
    static let parentTag = "parent_tag"
    static let memoryFile = "memory_file"
    static let stateFile = "state_file"
    static let stateDigest = "state_digest"
    static let contentDigest = "content_digest"
    static let memoryLayer = "memory_layer"
    static let parentContentDigest = "parent_content_digest"
    static let pageIndexFile = "page_index_file"
  }

  /// The manifest as JSON. `parent_tag` is omitted when nil.
  public var jsonValue: JSONValue {
    var o: [String: JSONValue] = [
      Key.formatVersion: .integer(Int64(formatVersion)),
      // Memory sizes beyond Int64.max are not representable and fail validation anyway.
      Key.memorySize: .integer(Int64(truncatingIfNeeded: memorySize)),
      Key.vcpuCount: .integer(Int64(vcpuCount)),
      Key.guestKind: .string(guestKind),
      Key.guestImageDigest: .string(guestImageDigest),
      Key.createdAtUnix: .integer(createdAtUnix),
      Key.memoryFile: .string(memoryFile),
      Key.stateFile: .string(stateFile),
      Key.stateDigest: .string(stateDigest),
    ]
    if let parentTag { o[Key.parentTag] = .string(parentTag) }
    if let contentDigest { o[Key.contentDigest] = .string(contentDigest) }
    if memoryLayer == .diff { o[Key.memoryLayer] = .string(memoryLayer.rawValue) }
    if let parentContentDigest { o[Key.parentContentDigest] = .string(parentContentDigest) }
    if let pageIndexFile { o[Key.pageIndexFile] = .string(pageIndexFile) }
    return .object(o)
  }

  /// Pretty JSON with sorted snake_case keys and a trailing newline; deterministic for equal values.
  public func jsonText() -> String {
    jsonValue.serialized(pretty: true) + "\n"
  }

  /// Parses and validates a manifest. Unknown keys are ignored so older forkd builds can read
  /// manifests that gained optional fields; a newer `format_version` is refused outright.
  public static func decode(_ text: [UInt8], source: String) throws(ProtocolError) -> SnapshotManifest {
    let r = try JSONObjectReader(JSONValue.parse(text, source: source), source: source)
    // Version first: a newer format may have changed any other field.
    let version = try r.uint32(Key.formatVersion)
    try checkVersion(version, source: source)
    let manifest = SnapshotManifest(
      formatVersion: version,
      memorySize: try r.uint64(Key.memorySize),
      vcpuCount: try r.uint32(Key.vcpuCount),
      guestKind: try r.string(Key.guestKind),
      guestImageDigest: try r.string(Key.guestImageDigest),
      createdAtUnix: try r.int64(Key.createdAtUnix),
      parentTag: try r.optionalString(Key.parentTag),
      memoryFile: try r.optionalString(Key.memoryFile) ?? defaultMemoryFile,
      stateFile: try r.optionalString(Key.stateFile) ?? defaultStateFile,
      stateDigest: try r.string(Key.stateDigest),
      contentDigest: try r.optionalString(Key.contentDigest),
      memoryLayer: try layer(r.optionalString(Key.memoryLayer), source: source),
      parentContentDigest: try r.optionalString(Key.parentContentDigest),
      pageIndexFile: try r.optionalString(Key.pageIndexFile))
    try manifest.validate(source: source)
    return manifest
  }

  private static func layer(_ name: String?, source: String) throws(ProtocolError) -> MemoryLayer {
    guard let name else { return .full }
    guard let layer = MemoryLayer(rawValue: name) else {
      var quoted = ""
      JSONValue.writeString(name, to: &quoted)
      throw ProtocolError(
        .badValue, "\(source): field \"\(Key.memoryLayer)\": expected \"full\" or \"diff\", got \(quoted)")
    }
    return layer
  }

  private static func checkVersion(_ version: UInt32, source: String) throws(ProtocolError) {
    if version > currentFormatVersion {
      throw ProtocolError(
        .unsupportedVersion,
        "\(source): format_version \(version) is newer than this forkd supports (\(currentFormatVersion))")
    }
    if version == 0 {
      throw ProtocolError(
        .unsupportedVersion, "\(source): format_version 0 is not a valid version (expected 1...\(currentFormatVersion))"
      )
    }
  }

  /// Checks every field's range and format; writers call it before saving, `decode` after parsing.
  public func validate(source: String = "manifest.json") throws(ProtocolError) {
    func bad(_ key: String, _ expected: String, _ got: JSONValue) -> ProtocolError {
      ProtocolError(.badValue, "\(source): field \"\(key)\": expected \(expected), got \(got.briefText)")
    }
    try SnapshotManifest.checkVersion(formatVersion, source: source)
    if memorySize == 0 || memorySize % SnapshotManifest.pageSize != 0 || memorySize > UInt64(Int64.max) {
      throw bad(Key.memorySize, "a positive multiple of 4096", .integer(Int64(truncatingIfNeeded: memorySize)))
    }
    if vcpuCount < 1 || vcpuCount > SnapshotManifest.maxVCPUs {
      throw bad(Key.vcpuCount, "1...\(SnapshotManifest.maxVCPUs)", .integer(Int64(vcpuCount)))
    }
    if !SnapshotManifest.guestKinds.contains(guestKind) {
      throw bad(Key.guestKind, "\"test-guest\" or \"linux\"", .string(guestKind))
    }
    if !SHA256.isDigestString(guestImageDigest) {
      throw bad(Key.guestImageDigest, "\"sha256:\" followed by 64 lowercase hex digits", .string(guestImageDigest))
    }
    if let parentTag, !SnapshotTag.isValid(parentTag) {
      throw bad(Key.parentTag, SnapshotTag.ruleDescription, .string(parentTag))
    }
    if !SnapshotManifest.isPlainFileName(memoryFile) {
      throw bad(Key.memoryFile, SnapshotManifest.plainNameRule, .string(memoryFile))
    }
    if !SnapshotManifest.isPlainFileName(stateFile) {
      throw bad(Key.stateFile, SnapshotManifest.plainNameRule, .string(stateFile))
    }
    if !SHA256.isDigestString(stateDigest) {
      throw bad(Key.stateDigest, "\"sha256:\" followed by 64 lowercase hex digits", .string(stateDigest))
    }
    for (key, digest) in [(Key.contentDigest, contentDigest), (Key.parentContentDigest, parentContentDigest)] {
      if let digest, !SHA256.isDigestString(digest) {
        throw bad(key, "\"sha256:\" followed by 64 lowercase hex digits", .string(digest))
      }
    }
    if let pageIndexFile, !SnapshotManifest.isPlainFileName(pageIndexFile) {
      throw bad(Key.pageIndexFile, SnapshotManifest.plainNameRule, .string(pageIndexFile))
    }
    if memoryLayer == .diff {
      if formatVersion < SnapshotManifest.diffFormatVersion {
        throw bad(
          Key.formatVersion, "\(SnapshotManifest.diffFormatVersion) or later for a diff layer",
          .integer(Int64(formatVersion)))
      }
      if parentTag == nil { throw ProtocolError(.missingField, "\(source): a diff layer needs \"\(Key.parentTag)\"") }
      if parentContentDigest == nil {
        throw ProtocolError(.missingField, "\(source): a diff layer needs \"\(Key.parentContentDigest)\"")
      }
      if pageIndexFile == nil {
        throw ProtocolError(.missingField, "\(source): a diff layer needs \"\(Key.pageIndexFile)\"")
      }
    }
  }

  static let plainNameRule = "a plain file name (not empty, no \"/\", not \".\" or \"..\", at most 255 bytes)"

  /// A name that stays inside the directory it is joined to.
  public static func isPlainFileName(_ name: String) -> Bool {
    let utf8 = name.utf8
    return !utf8.isEmpty && utf8.count <= 255 && name != "." && name != ".."
      && !utf8.contains(UInt8(ascii: "/")) && !utf8.contains(0)
  }
}

/// Snapshot tags name directories and appear on command lines, so they are restricted to
/// `^[A-Za-z0-9_-]{1,64}$`: no path separators, no shell metacharacters, no dot-names.
public enum SnapshotTag {
  public static let maxLength = 64
  static let ruleDescription = "1 to 64 characters from A-Z a-z 0-9 _ -"

  public static func isValid(_ tag: String) -> Bool {
    let utf8 = tag.utf8
    guard (1...maxLength).contains(utf8.count) else { return false }
    return utf8.allSatisfy { b in
      switch b {
      case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
        UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "_"), UInt8(ascii: "-"):
        return true
      default:
        return false
      }
    }
  }

  public static func validate(_ tag: String) throws(ProtocolError) {
    if !isValid(tag) {
      var quoted = ""
      JSONValue.writeString(tag, to: &quoted)
      throw ProtocolError(.badValue, "snapshot tag \(quoted): expected \(ruleDescription)")
    }
  }
}
