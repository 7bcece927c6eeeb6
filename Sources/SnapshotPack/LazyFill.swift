import Protocol
import SnapshotStorage
import Synchronization
import Syscalls

/// The fill's shared bookkeeping across its workers.
/// `@unchecked Sendable`: `state` is touched only under `lock`, a pthread mutex (ThreadSanitizer
/// models it; it reported races on the same state behind Synchronization's Mutex).
final class FillState: @unchecked Sendable {
  private let lock = ConditionLock()
  private var state: (inFlight: Set<Int>, next: Int, outcome: LazyFill.Outcome) = ([], 0, .init())
  func withLock<T>(_ body: (inout (inFlight: Set<Int>, next: Int, outcome: LazyFill.Outcome)) -> T) -> T {
    lock.withLock { body(&state) }
  }
}

/// `lazy-chunks.json` of a lazily pulled layer: the chunks still to fetch and where from.
public struct LazyPlan: Sendable, Equatable {
  public static let fileName = "lazy-chunks.json"
  /// `HOST[:PORT]/REPOSITORY` of the registry the layer came from.
  public var origin: String
  public var chunkSize: UInt64
  public var memoryFile: String
  public var chunks: [Descriptor]

  public init(origin: String, chunkSize: UInt64, memoryFile: String, chunks: [Descriptor]) {
    self.origin = origin
    self.chunkSize = chunkSize
    self.memoryFile = memoryFile
    self.chunks = chunks
  }

  public func serialized() -> [UInt8] {
    Array(
      JSONValue.object([
        "origin": .string(origin), "chunk_size": .integer(Int64(clamping: chunkSize)),
        "memory_file": .string(memoryFile), "chunks": .array(chunks.map(\.jsonValue)),
      ]).serialized().utf8)
  }

  public static func read(directory: String) throws(PackError) -> LazyPlan {
    let path = directory + "/" + fileName
    let bytes: [UInt8]
    do {
      bytes = try FileSystem.readFile(path, limit: maxBytes)
    } catch {
      throw PackError(.io, "\(path): \(error)")
    }
    return try decode(bytes, source: path)
  }

  /// The largest plan read: a 1 TiB memory in 2 MiB chunks is about 100 MiB of descriptors, far
  /// past any snapshot forkd pulls; 16 MiB covers 128 GiB.
  public static let maxBytes = 16 << 20

  /// Parses and checks a plan: the chunk size as the artifact config allows, every chunk with a
  /// chunk-aligned offset annotation and a size within one chunk.
  public static func decode(_ bytes: [UInt8], source: String) throws(PackError) -> LazyPlan {
    do {
      let r = try JSONObjectReader(JSONValue.parse(bytes, source: source, maxBytes: maxBytes), source: source)
      let memoryFile = try r.string("memory_file")
      guard SnapshotManifest.isPlainFileName(memoryFile) else {
        throw PackError(.invalidArtifact, "\(source): memory_file is not a plain file name")
      }
      let chunkSize = try r.uint64("chunk_size")
      guard ArtifactConfig.chunkSizes.contains(chunkSize), chunkSize & (chunkSize - 1) == 0 else {
        throw PackError(.invalidArtifact, "\(source): chunk_size \(chunkSize) is not a power of two in 64 KiB…64 MiB")
      }
      var chunks: [Descriptor] = []
      for (i, c) in try r.array("chunks").enumerated() {
        let d = try Descriptor.decode(c, source: "\(source) chunks[\(i)]")
        guard let offset = d.annotations[ForkdMediaType.chunkOffsetAnnotation].flatMap(UInt64.init),
          offset % chunkSize == 0, d.size <= chunkSize
        else {
          throw PackError(
            .invalidArtifact,
            "\(source) chunks[\(i)]: chunk \(d.digest) needs a \(ForkdMediaType.chunkOffsetAnnotation) that is a multiple of \(chunkSize) and a size of at most \(chunkSize)"
          )
        }
        chunks.append(d)
      }
      return LazyPlan(origin: try r.string("origin"), chunkSize: chunkSize, memoryFile: memoryFile, chunks: chunks)
    } catch let error as PackError {
      throw error
    } catch {
      throw PackError(.invalidArtifact, "\(source): \(error)")
    }
  }
}

/// Completes the memory of lazily pulled layers in the background: chunks a pager asked for
/// first, then the rest in order, a few at a time. Each chunk is verified, written into the
/// sparse memory.bin and marked present; when a layer is complete its memory.bin is synced and
/// its lazy.map removed, and it is an ordinary snapshot from then on. A chunk that cannot be
/// fetched (after retries) is marked failed: the children that fault on it fail, the others go on.
public struct LazyFill: Sendable {
  public let store: any BlobStore
  public let directory: String
  public let workers: Int

  public init(store: any BlobStore, directory: String, workers: Int = 4) {
    self.store = store
    self.directory = directory
    self.workers = workers
  }

  public struct Outcome: Sendable {
    public var fetched = 0
    public var failed: [String] = []
    public var progress = TransferProgress()
  }

  public func run(progress: ProgressHandler? = nil) async throws(PackError) -> Outcome {
    let plan = try LazyPlan.read(directory: directory)
    let map: LazyMemoryMap
    do {
      map = try LazyMemoryMap(path: directory + "/" + LazyMemoryMap.fileName)
    } catch {
      throw PackError(.io, error.description)
    }
    let memoryPath = directory + "/" + plan.memoryFile
    var chunkTable: [Int: Descriptor] = [:]
    for d in plan.chunks {
      guard let offset = d.annotations[ForkdMediaType.chunkOffsetAnnotation].flatMap(UInt64.init),
        offset % plan.chunkSize == 0, d.size <= plan.chunkSize, map.chunkSize == plan.chunkSize,
        map.chunk(containing: offset) < map.chunkCount
      else { throw PackError(.invalidArtifact, "\(directory)/\(LazyPlan.fileName): bad chunk \(d.digest)") }
      chunkTable[map.chunk(containing: offset)] = d
    }
    let state = FillState()
    let byChunk = chunkTable
    state.withLock { s in
      s.outcome.progress.totalBytes = plan.chunks.reduce(0) {
        $0.addingReportingOverflow($1.size).overflow ? .max : $0 + $1.size
      }
    }
    let order = byChunk.keys.sorted()
    /// The next chunk to fetch: one a pager asked for, else the next in order.
    @Sendable func claim() -> Int? {
      state.withLock { s -> Int? in
        if let asked = order.first(where: {
          map.isRequested($0) && map.state($0) == .missing && !s.inFlight.contains($0)
        }) {
          s.inFlight.insert(asked)
          return asked
        }
        while s.next < order.count {
          let c = order[s.next]
          s.next += 1
          if map.state(c) == .missing, !s.inFlight.contains(c) {
            s.inFlight.insert(c)
            return c
          }
        }
        return nil
      }
    }
    let store = self.store
    await withTaskGroup(of: Void.self) { group in
      for _ in 0..<max(1, workers) {
        group.addTask {
          while let chunk = claim(), let d = byChunk[chunk] {
            var ok = false
            var lastError = ""
            for attempt in 0..<3 where !ok {
              if attempt > 0 { try? await Task.sleep(nanoseconds: 200_000_000) }
              do {
                let bytes = try await SnapshotUnpack.fetchVerified(
                  store, d, what: "memory chunk \(chunk) of \(directory)")
                let fd = try FileDescriptor.open(memoryPath, .writeOnly)
                defer { fd.close() }
                try SnapshotUnpack.writeNonZeroRuns(bytes, to: fd, at: UInt64(chunk) * plan.chunkSize)
                ok = true
              } catch {
                lastError = "\(error)"
              }
            }
            map.set(chunk, ok ? .present : .failed)
            let snapshot = state.withLock { s -> TransferProgress in
              s.inFlight.remove(chunk)
              if ok {
                s.outcome.fetched += 1
                s.outcome.progress.chunksTransferred += 1
                s.outcome.progress.blobsTransferred += 1
                s.outcome.progress.transferredBytes += d.size
              } else {
                s.outcome.failed.append(lastError)
              }
              return s.outcome.progress
            }
            progress?(snapshot)
          }
        }
      }
    }
    let outcome = state.withLock { $0.outcome }
    if outcome.failed.isEmpty && map.outstanding == 0 {
      do {
        let fd = try FileDescriptor.open(memoryPath, .readOnly)
        try fd.sync()
        fd.close()
        try FileSystem.unlink(directory + "/" + LazyMemoryMap.fileName)
        try FileSystem.unlink(directory + "/" + LazyPlan.fileName)
        try FileSystem.syncDirectory(directory)
      } catch {
        throw PackError(.io, "\(directory): cannot finish the lazy fill: \(error)")
      }
    }
    return outcome
  }

  /// Whether the snapshot in `directory` is still being filled.
  public static func isFilling(_ directory: String) -> Bool {
    FileSystem.exists(directory + "/" + LazyMemoryMap.fileName)
  }
}
