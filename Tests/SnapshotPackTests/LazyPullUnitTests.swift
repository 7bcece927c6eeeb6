import Foundation
import Protocol
import SnapshotPack
import SnapshotStorage
import Syscalls
import Testing

@Suite struct LazyPullUnitTests {
  @Test func lazyPullLeavesASparseLayerThatTheFillCompletes() async throws {
    let tmp = try TempDirectory("lazy")
    try FileSystem.makeDirectories(tmp.path + "/a")
    try FakeSnapshot.writeFull(tmp.path + "/a/base", memoryMiB: 16, pages: [0, 1, 700, 2000, 4095], seed: 4)
    let store = try OCILayoutStore(directory: tmp.path + "/layout")
    _ = try await SnapshotPush(store: store).push(directory: tmp.path + "/a/base", reference: "v1")
    try FileSystem.makeDirectories(tmp.path + "/b")
    let pulled = try await SnapshotPull(store: store, snapshotsDirectory: tmp.path + "/b").pull(
      reference: "v1", tag: "lz", lazy: true, origin: "127.0.0.1:1/x")
    let dir = tmp.path + "/b/lz"
    #expect(pulled.lazyDirectories == [dir])
    #expect(pulled.progress.chunksTransferred == 0)
    #expect(FakeSnapshot.allocatedBytes(dir + "/memory.bin") == 0)
    let map = try LazyMemoryMap(path: dir + "/" + LazyMemoryMap.fileName)
    #expect(map.chunkCount == 8)
    #expect((0..<8).map { map.state($0) } == [.missing, .missing, .zero, .missing, .zero, .zero, .zero, .missing])
    #expect(try LazyPlan.read(directory: dir).origin == "127.0.0.1:1/x")

    // A reader of the chain image waits for its chunk while the fill runs.
    let image = try ChainImage(layers: [.init(memory: dir + "/memory.bin", pageIndex: nil)])
    #expect(image.isLazy)
    let fill = Task { try await LazyFill(store: store, directory: dir, workers: 2).run() }
    // The wait blocks its thread: off the cooperative pool, which the fill needs (with 2 cores
    // and other suites' tests on it, a blocked pool thread starved the fill into a timeout).
    let first = await withCheckedContinuation { (resumed: CheckedContinuation<UInt8?, Never>) in
      Thread.detachNewThread { resumed.resume(returning: image.page(2000)?.load(as: UInt8.self)) }
    }
    #expect(first == FakeSnapshot.fill(2000, seed: 4))
    let outcome = try await fill.value
    #expect(outcome.failed.isEmpty)
    #expect(outcome.fetched == 4)
    #expect(!FileSystem.exists(dir + "/" + LazyMemoryMap.fileName))
    #expect(try FakeSnapshot.bytes(dir + "/memory.bin") == FakeSnapshot.bytes(tmp.path + "/a/base/memory.bin"))
  }

  @Test func aChunkThatCannotBeFetchedFailsItsReadersOnly() async throws {
    let tmp = try TempDirectory("lazy-fail")
    try FileSystem.makeDirectories(tmp.path + "/a")
    try FakeSnapshot.writeFull(tmp.path + "/a/base", memoryMiB: 8, pages: [1, 1500], seed: 6)
    let store = try OCILayoutStore(directory: tmp.path + "/layout")
    _ = try await SnapshotPush(store: store).push(directory: tmp.path + "/a/base", reference: "v1")
    let lost = try PackedSnapshot(directory: tmp.path + "/a/base").chunks[1]
    try FileSystem.makeDirectories(tmp.path + "/b")
    _ = try await SnapshotPull(store: store, snapshotsDirectory: tmp.path + "/b").pull(
      reference: "v1", tag: "lz", lazy: true)
    try FileSystem.unlink(store.blobPath(lost.digest))
    let dir = tmp.path + "/b/lz"
    let outcome = try await LazyFill(store: store, directory: dir).run()
    #expect(outcome.failed.count == 1)
    #expect(outcome.failed.first?.contains(lost.digest) == true)
    // The layer stays lazy; the page of the good chunk reads, the lost one's reports why.
    #expect(FileSystem.exists(dir + "/" + LazyMemoryMap.fileName))
    let image = try ChainImage(layers: [.init(memory: dir + "/memory.bin", pageIndex: nil)])
    #expect(image.page(1)?.load(as: UInt8.self) == FakeSnapshot.fill(1, seed: 6))
    #expect(image.page(1500) == nil)
    #expect(image.failure?.contains("could not be fetched") == true)
  }
}
