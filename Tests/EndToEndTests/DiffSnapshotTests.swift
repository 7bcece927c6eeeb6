import Protocol
import Syscalls
import Testing
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// Diff snapshots: a layer holds only what a child changed since its restore; a chain of layers
/// restores through the pager exactly as the source was when it was paused.
@Suite("Diff snapshots and chains", .serialized)
struct DiffSnapshotTests {
  struct Observed: Equatable {
    var checksum: UInt64
    var counter: UInt64
    var note: String?
  }

  /// What the agent reports about memory: checksum of all filled pages, the counter and a key.
  static func observe(_ agent: AgentClient, pages: UInt64) throws -> Observed {
    Observed(
      checksum: try agent.checksum(pages: pages), counter: try agent.counter(add: 0), note: try agent.get("note"))
  }

  /// Restores `snapshot`, changes `pages` pages, the counter and a key, and takes a diff layer
  /// into `layer`; returns what the source looked like when it was paused.
  static func mutateAndBranch(
    from snapshot: String, parentTag: String, into layer: String, scratch: Scratch, backend: ChildBackend,
    seed: UInt64, pages: UInt64, totalPages: UInt64
  ) throws -> (Observed, SnapshotReply) {
    let source = try Child.restore(
      snapshot: snapshot, runDirectory: scratch.path + "/src-\(lastComponent(layer))", backend: backend)
    defer { source.stop() }
    let agent = try source.vmm.agent()
    #expect(try agent.fill(pages: pages, seed: seed) == pages)
    _ = try agent.counter(add: Int64(seed % 7 + 1))
    try agent.set("note", "written before \(lastComponent(layer))")
    let before = try observe(agent, pages: totalPages)
    let result = try source.vmm.control().snapshot(directory: layer, parentTag: parentTag, diff: true)
    // The source keeps running after the branch, and what it sees did not change.
    #expect(try observe(agent, pages: totalPages) == before)
    return (before, result)
  }

  @Test(
    "a 3-deep chain: each layer holds only its changes; the head restores with the uffd backend to exactly the paused state"
  )
  func chain() throws {
    let scratch = try Scratch("diff")
    let parent = try WarmParent(in: scratch, pages: 256, memoryMiB: 32)
    let base = parent.snapshot
    let root = scratch.path + "/snaps"
    try FileSystem.makeDirectories(root)
    try FileSystem.rename(base, to: root + "/base")

    var previous = "base"
    var expected: [Observed] = []
    // Layer 1 from a file-backend child (exact dirty pages), 2 and 3 from uffd children.
    for (depth, backend) in [(1, ChildBackend.file), (2, .uffd(policy: .fail)), (3, .uffd(policy: .fail))] {
      let tag = "layer\(depth)"
      let (seen, result) = try Self.mutateAndBranch(
        from: root + "/" + previous, parentTag: previous, into: root + "/" + tag, scratch: scratch, backend: backend,
        seed: UInt64(depth) * 1000 + 3, pages: UInt64(depth) * 8, totalPages: parent.pages)
      #expect(result.memoryLayer == "diff")
      let layerPages = try #require(result.written?.layerPages, "\(tag): \(result)")
      // A diff holds what the child touched, far less than the 8192 pages of guest memory.
      #expect(layerPages >= UInt64(depth) * 8 && layerPages < 2048, "\(tag): \(layerPages) pages")
      let manifest = try SnapshotManifest.decode(
        FileSystem.readFile(root + "/" + tag + "/manifest.json"), source: tag)
      let parentManifest = try SnapshotManifest.decode(
        FileSystem.readFile(root + "/" + previous + "/manifest.json"), source: previous)
      #expect(manifest.memoryLayer == .diff && manifest.parentTag == previous)
      #expect(manifest.parentContentDigest != nil && manifest.parentContentDigest == parentManifest.contentDigest)
      expected.append(seen)
      previous = tag
    }
    #expect(Set(expected.map(\.checksum)).count == 3, "each layer changed memory")

    // Every layer restores, through its chain, to what its source saw when paused.
    for (depth, seen) in expected.enumerated() {
      for child in 0..<2 {
        let vm = try Child.restore(
          snapshot: root + "/layer\(depth + 1)", runDirectory: scratch.path + "/c\(depth)-\(child)",
          backend: .uffd(policy: .fail))
        defer { vm.stop() }
        #expect(try Self.observe(vm.vmm.agent(), pages: parent.pages) == seen, "layer\(depth + 1) child \(child)")
      }
    }

    // The File backend maps one memory.bin: a layer is refused with a reason, not misread.
    let refused = #expect(throws: ControlError.self) {
      try Child.restore(snapshot: root + "/layer2", runDirectory: scratch.path + "/file", backend: .file)
    }
    #expect(refused?.description.contains("diff layer") == true, "\(String(describing: refused))")
    #expect(refused?.description.contains("uffd") == true)

    // A parent whose content changed after a layer was taken breaks the chain loudly.
    let manifestPath = root + "/layer1/manifest.json"
    let original = String(decoding: try FileSystem.readFile(manifestPath), as: UTF8.self)
    var edited = try SnapshotManifest.decode(Array(original.utf8), source: "layer1")
    edited.contentDigest = "sha256:" + String(repeating: "00", count: 32)
    try FileSystem.writeAtomically(manifestPath, Array(edited.jsonText().utf8))
    let broken = #expect(throws: ControlError.self) {
      try Child.restore(
        snapshot: root + "/layer3", runDirectory: scratch.path + "/broken", backend: .uffd(policy: .fail))
    }
    #expect(broken?.description.contains("parent_content_digest") == true, "\(String(describing: broken))")
  }
}

private func lastComponent(_ path: String) -> String { String(path.split(separator: "/").last ?? "") }
