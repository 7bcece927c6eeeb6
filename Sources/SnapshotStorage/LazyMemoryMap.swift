import CSharedBytes
import Protocol
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// `lazy.map` beside the `memory.bin` of a snapshot pulled with `--lazy` (docs/fleet.md): which
/// chunks of memory.bin have arrived. The supervisor's fill writes chunks and marks them present;
/// a pager that faults on a page of a missing chunk marks it requested (so the fill fetches it
/// next) and waits until it is present or failed. Both map the file shared.
///
/// Layout (little-endian): u32 magic `FKLZ`, u16 version (1), u16 flags (0), u64 chunk size,
/// u64 chunk count, then one state byte per chunk, then one request byte per chunk.
public final class LazyMemoryMap: @unchecked Sendable {
  public static let fileName = "lazy.map"
  static let magic: UInt32 = 0x5A4C_4B46  // "FKLZ" in memory order
  static let headerSize = 24

  public enum State: UInt8, Sendable {
    case missing = 0
    case present = 1
    case failed = 2
    /// An all-zero chunk the artifact left out: a hole, never fetched.
    case zero = 3
  }

  public let path: String
  public let chunkSize: UInt64
  public let chunkCount: Int
  private let base: UnsafeMutableRawPointer
  private let length: Int

  /// Writes a new map (all chunks in `states`) at `path`.
  public static func create(_ path: String, chunkSize: UInt64, states: [State]) throws(SnapshotStorageError) {
    var bytes = [UInt8](repeating: 0, count: headerSize + 2 * states.count)
    func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
      withUnsafeBytes(of: value.littleEndian) { for (i, b) in $0.enumerated() { bytes[offset + i] = b } }
    }
    put(magic, at: 0)
    put(UInt16(1), at: 4)
    put(chunkSize, at: 8)
    put(UInt64(states.count), at: 16)
    for (i, state) in states.enumerated() { bytes[headerSize + i] = state.rawValue }
    try SnapshotFiles.write(path, bytes)
  }

  public init(path: String) throws(SnapshotStorageError) {
    self.path = path
    do {
      let fd = try FileDescriptor.open(path, .readWrite)
      defer { fd.close() }
      let size = Int(try fd.size())
      guard size >= LazyMemoryMap.headerSize else {
        throw SnapshotStorageError(.invalidSnapshot, "\(path): \(size) bytes, shorter than its header")
      }
      base = try MemoryMapping.sharedFile(fd, size: size, protection: .readWrite)
      length = size
    } catch let error as SnapshotStorageError {
      throw error
    } catch {
      throw SnapshotStorageError(.io, "\(path): cannot map the lazy chunk map", cause: error)
    }
    let magic = base.loadUnaligned(as: UInt32.self).littleEndian
    let version = base.loadUnaligned(fromByteOffset: 4, as: UInt16.self).littleEndian
    let chunkSize = base.loadUnaligned(fromByteOffset: 8, as: UInt64.self).littleEndian
    let count = base.loadUnaligned(fromByteOffset: 16, as: UInt64.self).littleEndian
    self.chunkSize = chunkSize
    chunkCount = Int(clamping: count)
    guard magic == LazyMemoryMap.magic, version == 1, chunkSize >= 4096, chunkSize <= 1 << 30, chunkSize % 4096 == 0,
      count <= 1 << 28,
      count <= UInt64((length - LazyMemoryMap.headerSize) / 2),
      UInt64(LazyMemoryMap.headerSize) + 2 * count == UInt64(length)
    else {
      MemoryMapping.unmap(base, size: length)
      throw SnapshotStorageError(
        .invalidSnapshot, "\(path): not a lazy chunk map (magic, version, chunk size \(chunkSize) or count \(count))")
    }
  }

  deinit { MemoryMapping.unmap(base, size: length) }

  public func state(_ chunk: Int) -> State {
    guard chunk >= 0, chunk < chunkCount else { return .failed }
    let byte = forkd_shared_load(base.assumingMemoryBound(to: UInt8.self) + LazyMemoryMap.headerSize + chunk)
    return State(rawValue: byte) ?? .failed
  }

  public func set(_ chunk: Int, _ state: State) {
    guard chunk >= 0, chunk < chunkCount else { return }
    forkd_shared_store(base.assumingMemoryBound(to: UInt8.self) + LazyMemoryMap.headerSize + chunk, state.rawValue)
  }

  public func isRequested(_ chunk: Int) -> Bool {
    guard chunk >= 0, chunk < chunkCount else { return false }
    return forkd_shared_load(base.assumingMemoryBound(to: UInt8.self) + LazyMemoryMap.headerSize + chunkCount + chunk)
      != 0
  }

  public func request(_ chunk: Int) {
    guard chunk >= 0, chunk < chunkCount else { return }
    forkd_shared_store(base.assumingMemoryBound(to: UInt8.self) + LazyMemoryMap.headerSize + chunkCount + chunk, 1)
  }

  /// The chunk holding byte `offset` of memory.bin.
  public func chunk(containing offset: UInt64) -> Int { Int(clamping: offset / chunkSize) }

  /// Asks for `chunk` and waits until it is present (true) or failed / not there after
  /// `timeoutMS` (false).
  public func waitPresent(_ chunk: Int, timeoutMS: Int = 120_000) -> Bool {
    switch state(chunk) {
    case .present, .zero: return true
    case .failed: return false
    case .missing: break
    }
    request(chunk)
    let deadline = Clock.monotonicNanoseconds() + UInt64(timeoutMS) * 1_000_000
    while Clock.monotonicNanoseconds() < deadline {
      switch state(chunk) {
      case .present, .zero: return true
      case .failed: return false
      case .missing:
        var pause = timespec(tv_sec: 0, tv_nsec: 100_000)
        _ = nanosleep(&pause, nil)
      }
    }
    return false
  }

  /// Chunks not yet present (missing or failed).
  public var outstanding: Int { (0..<chunkCount).filter { state($0) == .missing || state($0) == .failed }.count }
}
