import Protocol
import SnapshotStorage
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// A temporary directory removed at deinit.
final class TempDirectory: @unchecked Sendable {
  let path: String
  init(_ name: String) throws {
    path = "/tmp/forkd-pack-\(name)-\(getpid())-\(Clock.monotonicNanoseconds())"
    try FileSystem.makeDirectories(path)
  }
  deinit { FileSystem.removeTree(path) }
}

/// Snapshot directories written without KVM: a manifest, a state file of arbitrary bytes and a
/// sparse memory.bin with chosen pages filled (as forkd-vmm leaves them: zero pages are holes).
enum FakeSnapshot {
  static let page = 4096

  /// The byte every filled page `p` holds (never zero).
  static func fill(_ page: Int, seed: UInt8) -> UInt8 { UInt8(truncatingIfNeeded: page &* 31 &+ Int(seed)) | 1 }

  @discardableResult
  static func writeFull(_ dir: String, memoryMiB: Int, pages: [Int], seed: UInt8 = 7) throws -> SnapshotManifest {
    try FileSystem.makeDirectories(dir)
    let size = UInt64(memoryMiB) << 20
    try writeMemory(dir + "/memory.bin", size: size, pages: pages, seed: seed)
    let state = [UInt8](repeating: seed, count: 3000)
    try FileSystem.writeAtomically(dir + "/vmstate.bin", state)
    let content = try LayerDigest.compute(memoryPath: dir + "/memory.bin", index: nil)
    let m = SnapshotManifest(
      memorySize: size, vcpuCount: 1, guestKind: "test-guest", guestImageDigest: SHA256.digestString(of: [1, 2]),
      createdAtUnix: 1_700_000_000, stateDigest: SHA256.digestString(of: state), contentDigest: content)
    try FileSystem.writeAtomically(dir + "/manifest.json", Array(m.jsonText().utf8))
    return m
  }

  /// A diff layer over `parent` (a sibling directory) holding `pages`.
  @discardableResult
  static func writeDiff(_ dir: String, parent: String, pages: [Int], seed: UInt8) throws -> SnapshotManifest {
    let pm = try SnapshotManifest.read(directory: parentDirectory(of: dir) + "/" + parent)
    try FileSystem.makeDirectories(dir)
    try writeMemory(dir + "/memory.bin", size: pm.memorySize, pages: pages, seed: seed)
    var index = PageIndex(pageCount: Int(pm.memorySize) / page)
    for p in pages { index.insert(p) }
    try FileSystem.writeAtomically(dir + "/" + PageIndex.fileName, index.serialized())
    let state = [UInt8](repeating: seed, count: 2000)
    try FileSystem.writeAtomically(dir + "/vmstate.bin", state)
    let content = try LayerDigest.compute(memoryPath: dir + "/memory.bin", index: index)
    let m = SnapshotManifest(
      memorySize: pm.memorySize, vcpuCount: 1, guestKind: "test-guest", guestImageDigest: pm.guestImageDigest,
      createdAtUnix: 1_700_000_100, parentTag: parent, stateDigest: SHA256.digestString(of: state),
      contentDigest: content, memoryLayer: .diff, parentContentDigest: pm.contentDigest,
      pageIndexFile: PageIndex.fileName)
    try FileSystem.writeAtomically(dir + "/manifest.json", Array(m.jsonText().utf8))
    return m
  }

  static func writeMemory(_ path: String, size: UInt64, pages: [Int], seed: UInt8) throws {
    let fd = try FileDescriptor.open(path, [.writeOnly, .create, .truncate], mode: 0o600)
    defer { fd.close() }
    try fd.truncate(to: Int64(size))
    for p in pages {
      try fd.pwriteAll([UInt8](repeating: fill(p, seed: seed), count: page), at: Int64(p) * Int64(page))
    }
  }

  /// The whole file, holes read as zeros.
  static func bytes(_ path: String) throws -> [UInt8] { try FileSystem.readFile(path, limit: 1 << 30) }

  /// Allocated bytes (holes excluded).
  static func allocatedBytes(_ path: String) -> Int {
    var st = stat()
    return stat(path, &st) == 0 ? Int(st.st_blocks) * 512 : -1
  }
}
