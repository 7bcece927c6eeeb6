import Protocol
import SnapshotPack
import SnapshotStorage
import Syscalls
import Testing

@Suite struct PackRoundTripTests {
  @Test func fullSnapshotRoundTripsThroughAnOCILayout() async throws {
    let tmp = try TempDirectory("full")
    let src = tmp.path + "/a"
    try FileSystem.makeDirectories(src)
    try FakeSnapshot.writeFull(src + "/base", memoryMiB: 16, pages: [0, 1, 700, 2000, 4095])
    let store = try OCILayoutStore(directory: tmp.path + "/layout")
    let pushed = try await SnapshotPush(store: store).push(directory: src + "/base", reference: "v1")
    // 3 non-zero 2 MiB chunks (pages 0-1, 700, 2000 share chunk 3, 4095 is in chunk 7) … count:
    // page 0,1 -> chunk 0; 700 -> chunk 1; 2000 -> chunk 3; 4095 -> chunk 7.
    #expect(pushed.progress.chunksTransferred == 4)
    #expect(pushed.progress.chunksSkipped == 0)

    let dst = tmp.path + "/b"
    try FileSystem.makeDirectories(dst)
    let pulled = try await SnapshotPull(store: store, snapshotsDirectory: dst).pull(reference: "v1", tag: "copy")
    #expect(pulled.createdTags == ["copy"])
    #expect(pulled.digest == pushed.digest)
    #expect(try FakeSnapshot.bytes(dst + "/copy/memory.bin") == FakeSnapshot.bytes(src + "/base/memory.bin"))
    #expect(try FakeSnapshot.bytes(dst + "/copy/vmstate.bin") == FakeSnapshot.bytes(src + "/base/vmstate.bin"))
    let original = try SnapshotManifest.read(directory: src + "/base")
    #expect(try SnapshotManifest.read(directory: dst + "/copy") == original)
    // Zero pages stay holes: 5 pages of data allocated, not 16 MiB.
    #expect(FakeSnapshot.allocatedBytes(dst + "/copy/memory.bin") <= 5 * 4096 + 65536)
    // The layer digest recomputed from the pulled file is the one in the manifest.
    #expect(try LayerDigest.compute(memoryPath: dst + "/copy/memory.bin", index: nil) == original.contentDigest)
    #expect(try !FileSystem.listDirectory(dst).contains { $0.contains("staging") })
  }

  @Test func zeroChunksAreElided() async throws {
    let tmp = try TempDirectory("zero")
    // Page 10 is written with data then zeroed: allocated but all zero, so not a chunk.
    try FakeSnapshot.writeFull(tmp.path + "/s", memoryMiB: 8, pages: [10, 1500])
    let fd = try FileDescriptor.open(tmp.path + "/s/memory.bin", .writeOnly)
    try fd.pwriteAll([UInt8](repeating: 0, count: 4096), at: 10 * 4096)
    fd.close()
    let packed = try PackedSnapshot(directory: tmp.path + "/s")
    #expect(packed.chunks.map(\.offset) == [4 << 20])  // page 1500 is in the third 2 MiB chunk
    let (_, manifest) = packed.artifact(parent: nil, sourceTag: "s")
    #expect(manifest.layers.filter { $0.mediaType == ForkdMediaType.memoryChunk }.count == 1)
    #expect(manifest.config.mediaType == ForkdMediaType.config)
  }

  @Test func twoTagsWithSharedContentShareBlobs() async throws {
    let tmp = try TempDirectory("dedupe")
    // Same pages in chunks 0 and 1; b differs only in chunk 2.
    try FakeSnapshot.writeFull(tmp.path + "/a", memoryMiB: 8, pages: [1, 600], seed: 3)
    try FakeSnapshot.writeFull(tmp.path + "/b", memoryMiB: 8, pages: [1, 600, 1100], seed: 3)
    let store = try OCILayoutStore(directory: tmp.path + "/layout")
    let first = try await SnapshotPush(store: store).push(directory: tmp.path + "/a", reference: "a")
    #expect(first.progress.chunksTransferred == 2)
    let second = try await SnapshotPush(store: store).push(directory: tmp.path + "/b", reference: "b")
    #expect(second.progress.chunksTransferred == 1)
    #expect(second.progress.chunksSkipped == 2)
  }

  @Test func diffChainTravelsAsAChainAndUploadsOnlyItsOwnChunks() async throws {
    let tmp = try TempDirectory("chain")
    let src = tmp.path + "/a"
    try FileSystem.makeDirectories(src)
    try FakeSnapshot.writeFull(src + "/base", memoryMiB: 16, pages: Array(0..<64) + [900, 3000], seed: 1)
    try FakeSnapshot.writeDiff(src + "/mid", parent: "base", pages: [5, 1200], seed: 9)
    try FakeSnapshot.writeDiff(src + "/top", parent: "mid", pages: [3001], seed: 11)
    let store = try OCILayoutStore(directory: tmp.path + "/layout")
    let base = try await SnapshotPush(store: store).push(directory: src + "/base", reference: "base")
    let top = try await SnapshotPush(store: store).push(directory: src + "/top", reference: "top")
    #expect(top.layerDigests.count == 3)
    #expect(top.layerDigests[0] == base.digest)
    // mid: chunks 0 (page 5) and 2 (page 1200); top: chunk 5 (page 3001). Base chunks skipped.
    #expect(top.progress.chunksTransferred == 3)
    #expect(top.progress.chunksSkipped == 3)

    // Pulled into an empty host: three tags, the chain rewired to the new names and restorable.
    let dst = tmp.path + "/b"
    try FileSystem.makeDirectories(dst)
    let pulled = try await SnapshotPull(store: store, snapshotsDirectory: dst).pull(reference: "top", tag: "t")
    #expect(pulled.createdTags == ["t-base2", "t-base1", "t"])
    let chain = try SnapshotChain.load(top: dst + "/t")
    #expect(chain.layers.count == 3)
    let flatSrc = try SnapshotCompaction.flatten(try SnapshotChain.load(top: src + "/top"), into: tmp.path + "/flat-a")
    let flatDst = try SnapshotCompaction.flatten(chain, into: tmp.path + "/flat-b")
    _ = (flatSrc, flatDst)
    #expect(
      try FakeSnapshot.bytes(tmp.path + "/flat-a/memory.bin") == FakeSnapshot.bytes(tmp.path + "/flat-b/memory.bin"))

    // A second host that already has the base (under another tag) pulls only the two layers.
    let third = tmp.path + "/c"
    try FileSystem.makeDirectories(third)
    _ = try await SnapshotPull(store: store, snapshotsDirectory: third).pull(reference: "base", tag: "mine")
    let partial = try await SnapshotPull(store: store, snapshotsDirectory: third).pull(reference: "top", tag: "t")
    #expect(partial.reusedTag == "mine")
    #expect(partial.createdTags == ["t-base1", "t"])
    #expect(try SnapshotChain.load(top: third + "/t").layers.first?.directory == third + "/mine")
  }

  @Test func tamperedBlobLeavesNothingAndNamesTheDigest() async throws {
    let tmp = try TempDirectory("tamper")
    try FakeSnapshot.writeFull(tmp.path + "/s", memoryMiB: 8, pages: [1, 1000])
    let store = try OCILayoutStore(directory: tmp.path + "/layout")
    _ = try await SnapshotPush(store: store).push(directory: tmp.path + "/s", reference: "s")
    let chunk = try PackedSnapshot(directory: tmp.path + "/s").chunks[1]
    var bytes = try FileSystem.readFile(store.blobPath(chunk.digest), limit: 8 << 20)
    bytes[100] ^= 0xff
    try FileSystem.writeAtomically(store.blobPath(chunk.digest), bytes)
    let dst = try TempDirectory("tamper-dst")
    let error = await #expect(throws: PackError.self) {
      _ = try await SnapshotPull(store: store, snapshotsDirectory: dst.path).pull(reference: "s", tag: "x")
    }
    #expect(error?.code == .digestMismatch)
    #expect(error?.message.contains(chunk.digest) == true)
    #expect(try FileSystem.listDirectory(dst.path).isEmpty)
  }

  @Test func truncatedBlobLeavesNothing() async throws {
    let tmp = try TempDirectory("trunc")
    try FakeSnapshot.writeFull(tmp.path + "/s", memoryMiB: 8, pages: [1, 1000])
    let store = try OCILayoutStore(directory: tmp.path + "/layout")
    _ = try await SnapshotPush(store: store).push(directory: tmp.path + "/s", reference: "s")
    let chunk = try PackedSnapshot(directory: tmp.path + "/s").chunks[0]
    let bytes = try FileSystem.readFile(store.blobPath(chunk.digest), limit: 8 << 20)
    try FileSystem.writeAtomically(store.blobPath(chunk.digest), Array(bytes.prefix(1000)))
    let dst = try TempDirectory("trunc-dst")
    let error = await #expect(throws: PackError.self) {
      _ = try await SnapshotPull(store: store, snapshotsDirectory: dst.path).pull(reference: "s", tag: "x")
    }
    #expect(error?.code == .sizeMismatch)
    #expect(try FileSystem.listDirectory(dst.path).isEmpty)
  }

  @Test func hostileChunkOffsetsAreRefused() async throws {
    let tmp = try TempDirectory("hostile")
    try FakeSnapshot.writeFull(tmp.path + "/s", memoryMiB: 8, pages: [1])
    let store = try OCILayoutStore(directory: tmp.path + "/layout")
    let pushed = try await SnapshotPush(store: store).push(directory: tmp.path + "/s", reference: "s")
    let original = try ArtifactManifest.decode(
      await store.fetchManifest(pushed.digest), source: "test")
    for bad in ["18446744073709551615", "-1", "4096", "8388608", "x", "99999999999999999999999"] {
      var m = original
      let i = m.layers.firstIndex { $0.mediaType == ForkdMediaType.memoryChunk }!
      m.layers[i].annotations[ForkdMediaType.chunkOffsetAnnotation] = bad
      try await store.putManifest(m.serialized(), mediaType: ForkdMediaType.ociManifest, reference: "bad")
      let dst = try TempDirectory("hostile-dst")
      let error = await #expect(throws: PackError.self) {
        _ = try await SnapshotPull(store: store, snapshotsDirectory: dst.path).pull(reference: "bad", tag: "x")
      }
      #expect(error?.code == .invalidArtifact)
      #expect(error?.message.contains("offset") == true)
      #expect(try FileSystem.listDirectory(dst.path).isEmpty)
    }
  }

  @Test func configOfAnotherVersionIsRefused() throws {
    let config = ArtifactConfig(chunkSize: 2 << 20, memorySize: 4096, memoryLayer: "full")
    let text = String(decoding: config.serialized(), as: UTF8.self).split(separator: "\"pack_version\":1")
      .joined(separator: "\"pack_version\":2")
    let error = #expect(throws: PackError.self) { _ = try ArtifactConfig.decode(Array(text.utf8), source: "cfg") }
    #expect(error?.message.contains("pack_version 2") == true)
    let badChunk = ArtifactConfig(chunkSize: 3 << 20, memorySize: 4096, memoryLayer: "full").serialized()
    #expect(throws: PackError.self) { _ = try ArtifactConfig.decode(badChunk, source: "cfg") }
  }
}
