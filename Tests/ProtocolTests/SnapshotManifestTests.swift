import Protocol
import Testing

@Suite("Snapshot manifest")
struct SnapshotManifestTests {
  static let imageDigest = "sha256:" + String(repeating: "ab", count: 32)
  static let stateDigest = "sha256:" + String(repeating: "0123456789abcdef", count: 4)

  static func sample(parentTag: String? = "base-1") -> SnapshotManifest {
    SnapshotManifest(
      memorySize: 256 << 20, vcpuCount: 2, guestKind: "test-guest", guestImageDigest: imageDigest,
      createdAtUnix: 1_700_000_000, parentTag: parentTag, stateDigest: stateDigest)
  }

  func decode(_ text: String) throws(ProtocolError) -> SnapshotManifest {
    try SnapshotManifest.decode(Array(text.utf8), source: "manifest.json")
  }

  /// The sample as a JSON object, with one member replaced or removed.
  func text(_ key: String, _ value: JSONValue?) -> String {
    guard case .object(var o) = Self.sample().jsonValue else { fatalError() }
    o[key] = value
    return JSONValue.object(o).serialized(pretty: true)
  }

  func error(_ key: String, _ value: JSONValue?, sourceLocation: SourceLocation = #_sourceLocation) -> ProtocolError? {
    #expect(throws: ProtocolError.self, sourceLocation: sourceLocation) { try decode(text(key, value)) }
  }

  @Test func defaults() {
    let m = Self.sample(parentTag: nil)
    // Full snapshots are still written as format 1, so older builds keep reading them.
    #expect(m.formatVersion == 1)
    #expect(m.memoryLayer == .full)
    #expect(SnapshotManifest.currentFormatVersion == 2)
    #expect(m.memoryFile == "memory.bin")
    #expect(m.stateFile == "vmstate.bin")
    #expect(m.parentTag == nil)
  }

  @Test func jsonTextIsPrettySnakeCaseAndDeterministic() {
    let expected = """
      {
        "created_at_unix": 1700000000,
        "format_version": 1,
        "guest_image_digest": "\(Self.imageDigest)",
        "guest_kind": "test-guest",
        "memory_file": "memory.bin",
        "memory_size": 268435456,
        "parent_tag": "base-1",
        "state_digest": "\(Self.stateDigest)",
        "state_file": "vmstate.bin",
        "vcpu_count": 2
      }

      """
    #expect(Self.sample().jsonText() == expected)
    #expect(!Self.sample(parentTag: nil).jsonText().contains("parent_tag"))
  }

  @Test func roundTrip() throws {
    for m in [
      Self.sample(), Self.sample(parentTag: nil),
      SnapshotManifest(
        memorySize: 4096, vcpuCount: 64, guestKind: "linux", guestImageDigest: Self.imageDigest,
        createdAtUnix: -1, memoryFile: "mem.raw", stateFile: "state", stateDigest: Self.stateDigest),
    ] {
      #expect(try decode(m.jsonText()) == m)
      try m.validate()
    }
  }

  @Test func unknownKeysIgnoredAndNullParentIsNil() throws {
    #expect(try decode(text("future_field", .object(["x": .integer(1)]))) == Self.sample())
    #expect(try decode(text("parent_tag", .null)) == Self.sample(parentTag: nil))
  }

  @Test func fileNamesDefaultWhenAbsent() throws {
    guard case .object(var o) = Self.sample().jsonValue else { fatalError() }
    o["memory_file"] = nil
    o["state_file"] = nil
    #expect(try decode(JSONValue.object(o).serialized()) == Self.sample())
  }

  @Test func newerVersionRefused() {
    let e = error("format_version", .integer(3))
    #expect(
      e == ProtocolError(.unsupportedVersion, "manifest.json: format_version 3 is newer than this forkd supports (2)"))
    // Checked before anything else: a v2 manifest missing v1 fields still reports the version.
    let e2 = #expect(throws: ProtocolError.self) { try decode(#"{"format_version": 7}"#) }
    #expect(e2?.code == .unsupportedVersion)
    #expect(error("format_version", .integer(0))?.code == .unsupportedVersion)
    #expect(error("format_version", .string("1"))?.code == .badField)
    #expect(error("format_version", nil)?.code == .missingField)
  }

  static func diffSample() -> SnapshotManifest {
    SnapshotManifest(
      memorySize: 256 << 20, vcpuCount: 2, guestKind: "test-guest", guestImageDigest: imageDigest,
      createdAtUnix: 1_700_000_000, parentTag: "base-1", stateDigest: stateDigest,
      contentDigest: "sha256:" + String(repeating: "cd", count: 32), memoryLayer: .diff,
      parentContentDigest: "sha256:" + String(repeating: "ef", count: 32), pageIndexFile: PageIndex.fileName)
  }

  @Test func diffLayerRoundTripsAsFormat2() throws {
    let m = Self.diffSample()
    #expect(m.formatVersion == 2)
    let text = m.jsonText()
    #expect(text.contains("\"memory_layer\": \"diff\"") && text.contains("\"parent_content_digest\""))
    #expect(try decode(text) == m)
  }

  @Test func diffLayerNeedsItsParentAndIndex() {
    func failure(_ edit: (inout SnapshotManifest) -> Void) -> ProtocolError? {
      var m = Self.diffSample()
      edit(&m)
      return #expect(throws: ProtocolError.self) { try decode(m.jsonText()) }
    }
    #expect(failure { $0.parentTag = nil }?.message.contains("parent_tag") == true)
    #expect(failure { $0.parentContentDigest = nil }?.message.contains("parent_content_digest") == true)
    #expect(failure { $0.pageIndexFile = nil }?.message.contains("page_index_file") == true)
    #expect(failure { $0.pageIndexFile = "../pages.idx" }?.message.contains("page_index_file") == true)
    #expect(failure { $0.parentContentDigest = "md5:x" }?.message.contains("parent_content_digest") == true)
    #expect(failure { $0.formatVersion = 1 }?.message.contains("format_version") == true)
    #expect(error("memory_layer", .string("partial"))?.message.contains("memory_layer") == true)
  }

  @Test func memorySizeValidated() {
    #expect(
      error("memory_size", .integer(1234))
        == ProtocolError(
          .badValue, "manifest.json: field \"memory_size\": expected a positive multiple of 4096, got 1234"))
    #expect(error("memory_size", .integer(0))?.code == .badValue)
    #expect(error("memory_size", .integer(-4096))?.code == .badValue)
    #expect(error("memory_size", .double(4096))?.code == .badField)
    #expect(error("memory_size", nil) == ProtocolError(.missingField, "manifest.json: missing field \"memory_size\""))
  }

  @Test func vcpuCountValidated() {
    #expect(
      error("vcpu_count", .integer(0))
        == ProtocolError(.badValue, "manifest.json: field \"vcpu_count\": expected 1...64, got 0"))
    #expect(error("vcpu_count", .integer(65))?.code == .badValue)
    #expect(error("vcpu_count", .integer(1 << 40))?.code == .badValue)
    #expect(error("vcpu_count", .bool(true))?.code == .badField)
  }

  @Test func guestKindValidated() {
    #expect(
      error("guest_kind", .string("windows"))
        == ProtocolError(
          .badValue, "manifest.json: field \"guest_kind\": expected \"test-guest\" or \"linux\", got \"windows\""))
    #expect(error("guest_kind", nil)?.code == .missingField)
  }

  @Test func digestsValidated() {
    for bad in [
      "", "sha256:", "sha256:" + String(repeating: "A", count: 64), "md5:" + String(repeating: "a", count: 64),
      String(repeating: "a", count: 64), "sha256:" + String(repeating: "a", count: 63),
    ] {
      let e = error("guest_image_digest", .string(bad))
      #expect(e?.code == .badValue)
      #expect(
        e?.message.hasPrefix(
          "manifest.json: field \"guest_image_digest\": expected \"sha256:\" followed by 64 lowercase hex digits, got")
          == true)
      #expect(error("state_digest", .string(bad))?.code == .badValue)
    }
    #expect(error("state_digest", nil)?.code == .missingField)
  }

  @Test func fileNamesMustBePlain() {
    for key in ["memory_file", "state_file"] {
      for bad in ["", ".", "..", "../memory.bin", "a/b", "/abs", "x\u{0}y", String(repeating: "n", count: 256)] {
        let e = error(key, .string(bad))
        #expect(e?.code == .badValue, "\(key) = \(bad)")
        #expect(e?.message.hasPrefix("manifest.json: field \"\(key)\": expected a plain file name") == true)
      }
      #expect(error(key, .integer(1))?.code == .badField)
    }
    #expect(SnapshotManifest.isPlainFileName("memory.bin"))
    #expect(SnapshotManifest.isPlainFileName("..hidden"))
    #expect(SnapshotManifest.isPlainFileName(".memory"))
  }

  @Test func parentTagValidated() {
    let e = error("parent_tag", .string("a/b"))
    #expect(
      e
        == ProtocolError(
          .badValue,
          "manifest.json: field \"parent_tag\": expected 1 to 64 characters from A-Z a-z 0-9 _ -, got \"a/b\""))
    #expect(error("parent_tag", .string(""))?.code == .badValue)
    #expect(error("parent_tag", .integer(3))?.code == .badField)
  }

  @Test func createdAtValidated() {
    #expect(error("created_at_unix", .string("now"))?.code == .badField)
    #expect(error("created_at_unix", nil)?.code == .missingField)
  }

  @Test func malformedInputs() {
    #expect(throws: ProtocolError.self) { try decode("") }
    #expect(throws: ProtocolError.self) { try decode("[]") }
    #expect(throws: ProtocolError.self) { try decode(String(Self.sample().jsonText().dropLast(5))) }
    let e = #expect(throws: ProtocolError.self) { try decode("{\"format_version\": 1,}") }
    #expect(e?.message.hasPrefix("manifest.json:1:") == true)
  }

  @Test func validateCatchesWriterMistakes() {
    var m = Self.sample()
    m.memorySize = 4095
    #expect(throws: ProtocolError.self) { try m.validate() }
    m = Self.sample()
    m.stateFile = "../x"
    let e = #expect(throws: ProtocolError.self) { try m.validate(source: "snap/manifest.json") }
    #expect(e?.message.hasPrefix("snap/manifest.json: field \"state_file\"") == true)
  }
}

@Suite("Snapshot tags")
struct SnapshotTagTests {
  @Test func validTags() throws {
    for tag in ["a", "Z", "0", "base", "my_snap-2", String(repeating: "x", count: 64), "-", "_"] {
      try SnapshotTag.validate(tag)
      #expect(SnapshotTag.isValid(tag))
    }
  }

  @Test func invalidTags() {
    for tag in [
      "", String(repeating: "x", count: 65), "a b", "a/b", "..", ".", "a.b", "é", "tag\n", "a\u{0}", "😀", "$x",
    ] {
      let e = #expect(throws: ProtocolError.self, "\(tag)") { try SnapshotTag.validate(tag) }
      #expect(e?.code == .badValue)
      #expect(!SnapshotTag.isValid(tag))
    }
    let e = #expect(throws: ProtocolError.self) { try SnapshotTag.validate("a/b") }
    #expect(e?.message == "snapshot tag \"a/b\": expected 1 to 64 characters from A-Z a-z 0-9 _ -")
  }
}
