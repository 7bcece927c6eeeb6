import ArgumentParser
import CLISupport
import ForkdClient
import OCIDistribution
import Protocol
import SnapshotPack
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// Snapshots through a registry on loopback between two supervisors on this machine ("two
/// hosts"): push and pull throughput, the first reply of a child after a pull, what a diff layer
/// pushed after its base sends, and the same at several chunk sizes (docs/benchmarks.md).
struct RegistryBench: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "registry",
    abstract:
      "Push/pull MiB/s through docker-registry on 127.0.0.1, first reply after a pull, diff dedupe, chunk sizes.")

  @Option(parsing: .upToNextOption, help: "Guest sizes in MiB.") var sizes: [UInt64] = [256, 1024]
  @Option(help: "Percent of guest pages the parent fills with data.") var fillPercent: UInt64 = 50
  @Option(parsing: .upToNextOption, help: "Chunk sizes in MiB for the in-process comparison.")
  var chunkMib: [UInt64] = [1, 2, 4]
  @Option(help: "The registry binary (Debian's docker-registry).") var registryBinary = "/usr/bin/docker-registry"
  @Option(help: "Directory for the registry storage and both supervisors.") var workDir: String?

  func run() throws {
    let scratch = try ScratchDirectory(prefix: "forkd-bench-registry", base: workDir)
    defer { scratch.remove() }
    let registry = try BenchRegistry(binary: registryBinary, directory: scratch.path + "/registry")
    defer { registry.stop() }
    try FileSystem.makeDirectories(scratch.path + "/a")
    try FileSystem.makeDirectories(scratch.path + "/b")
    let a = try LocalDaemon(directory: scratch.path + "/a", backend: "auto")
    defer { a.stop() }
    let b = try LocalDaemon(directory: scratch.path + "/b", backend: "auto")
    defer { b.stop() }

    func call(_ d: LocalDaemon, _ method: String, _ path: String, _ body: JSONValue? = nil, _ expected: Int) throws
      -> JSONValue
    {
      let r = try d.api.request(method, path, body: body)
      guard r.status == expected else { throw ValidationError("\(method) \(path): \(r.status) \(r.text)") }
      return r.json ?? .null
    }
    func mibps(_ v: JSONValue) -> Double {
      Double(v["transferred_bytes"]?.int64Value ?? 0) / 1_048_576 / max(v["seconds"]?.doubleValue ?? 1, 1e-9)
    }
    print("size MiB  data MiB  push s  push MiB/s  pull s  pull MiB/s  first reply ms: full pull  lazy pull")
    var largest = ""
    for size in sizes {
      let tag = "s\(size)"
      let pages = size * 256 * fillPercent / 100
      _ = try call(
        a, "POST", "/v1/snapshots",
        .object([
          "tag": .string(tag), "memory_mib": .integer(Int64(size)),
          "warmup": .array([.object(["op": .string("fill"), "pages": .integer(Int64(pages)), "seed": .integer(3)])]),
        ]), 201)
      let push = try call(
        a, "POST", "/v1/snapshots/\(tag)/push", .object(["ref": .string("\(registry.host)/bench/\(tag):v1")]), 200)
      let pull = try call(
        b, "POST", "/v1/snapshots/pull",
        .object(["ref": .string("\(registry.host)/bench/\(tag):v1"), "tag": .string(tag)]),
        201)
      // First reply: from the start of the pull to a child's first answer. Full: the pull's
      // time plus spawn and ping; lazy: all three measured together.
      func spawnAndPing(_ tag: String) throws -> Double {
        let started = Clock.monotonicNanoseconds()
        let spawned = try call(b, "POST", "/v1/sandboxes", .object(["snapshot_tag": .string(tag)]), 201)
        let id = spawned.arrayValue?.first?["id"]?.stringValue ?? ""
        _ = try call(b, "POST", "/v1/sandboxes/\(id)/ping", nil, 200)
        let elapsed = Double(Clock.monotonicNanoseconds() - started) / 1e6
        _ = try? b.api.request("DELETE", "/v1/sandboxes/\(id)")
        return elapsed
      }
      let firstReply = (pull["seconds"]?.doubleValue ?? 0) * 1000 + (try spawnAndPing(tag))
      let lazyStarted = Clock.monotonicNanoseconds()
      _ = try call(
        b, "POST", "/v1/snapshots/pull",
        .object([
          "ref": .string("\(registry.host)/bench/\(tag):v1"), "tag": .string(tag + "-lazy"), "lazy": .bool(true),
        ]), 201)
      _ = try spawnAndPing(tag + "-lazy")
      let lazyReply = Double(Clock.monotonicNanoseconds() - lazyStarted) / 1e6
      let data = Double(push["total_bytes"]?.int64Value ?? 0) / 1_048_576
      print(
        "\(size)".padding(8) + "  " + format(data, decimals: 0).padding(8) + "  "
          + format(push["seconds"]?.doubleValue ?? 0, decimals: 2).padding(6) + "  "
          + format(mibps(push), decimals: 0).padding(10)
          + "  " + format(pull["seconds"]?.doubleValue ?? 0, decimals: 2).padding(6) + "  "
          + format(mibps(pull), decimals: 0).padding(10) + "  " + format(firstReply, decimals: 1).padding(25) + "  "
          + format(lazyReply, decimals: 1))
      largest = tag
    }

    // A diff layer of the largest parent, after a child ran: what its push sends.
    let spawned = try call(a, "POST", "/v1/sandboxes", .object(["snapshot_tag": .string(largest)]), 201)
    let child = spawned.arrayValue?.first?["id"]?.stringValue ?? ""
    for _ in 0..<3 { _ = try call(a, "POST", "/v1/sandboxes/\(child)/ping", nil, 200) }
    _ = try call(
      a, "POST", "/v1/sandboxes/\(child)/branch", .object(["tag": .string("diff"), "mode": .string("diff")]), 201)
    let diff = try call(
      a, "POST", "/v1/snapshots/diff/push", .object(["ref": .string("\(registry.host)/bench/\(largest):diff")]), 200)
    let sent = Double(diff["transferred_bytes"]?.int64Value ?? 0)
    let chain = Double(diff["total_bytes"]?.int64Value ?? 1)
    print(
      "\ndiff push over \(largest): sent \(format(sent / 1_048_576, decimals: 2)) MiB of the chain's \(format(chain / 1_048_576, decimals: 1)) MiB"
        + " (\(format(100 * sent / chain, decimals: 2)) %), \(string(diff["chunks_transferred"])) chunks sent, \(string(diff["chunks_skipped"])) skipped,"
        + " \(format(diff["seconds"]?.doubleValue ?? 0, decimals: 3)) s")

    // The same chain at several chunk sizes, pushed in-process into fresh repositories.
    print("\nchunk MiB  base blobs  base push s  base MiB/s  diff chunks  diff MiB sent")
    let snapshots = scratch.path + "/a/state/snapshots"
    let baseDirectory = snapshots + "/" + largest
    for mib in chunkMib {
      let store = RegistryBlobStore(client: RegistryClient(host: registry.host, repository: "chunks/c\(mib)"))
      let push = SnapshotPush(store: store, chunkSize: mib << 20)
      let started = Clock.monotonicNanoseconds()
      let base = try runBlocking { try await push.push(directory: baseDirectory, reference: "base") }
      let seconds = Double(Clock.monotonicNanoseconds() - started) / 1e9
      let layer = try runBlocking { try await push.push(directory: snapshots + "/diff", reference: "diff") }
      print(
        "\(mib)".padding(9) + "  " + "\(base.progress.chunksTransferred)".padding(10) + "  "
          + format(seconds, decimals: 2).padding(11) + "  "
          + format(Double(base.progress.transferredBytes) / 1_048_576 / seconds, decimals: 0).padding(10) + "  "
          + "\(layer.progress.chunksTransferred)".padding(11) + "  "
          + format(Double(layer.progress.transferredBytes) / 1_048_576, decimals: 2))
    }
  }
}

/// Runs async work to completion from synchronous code (the bench's ParsableCommand).
func runBlocking<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
  let lock = ConditionLock()
  nonisolated(unsafe) var result: Result<T, any Error>?
  Task.detached {
    let r: Result<T, any Error>
    do { r = .success(try await body()) } catch { r = .failure(error) }
    lock.withLock { result = r }
    lock.broadcast()
  }
  return try lock.withLock {
    while result == nil { lock.wait() }
    return result!
  }.get()
}

/// docker-registry on 127.0.0.1 with an ephemeral port and filesystem storage in `directory`.
final class BenchRegistry {
  let pid: pid_t
  let host: String

  init(binary: String, directory: String) throws {
    guard FileSystem.exists(binary) else { throw ValidationError("\(binary) is missing: run scripts/install-deps") }
    try FileSystem.makeDirectories(directory)
    let config = directory + "/config.yml"
    let log = directory + "/registry.log"
    try FileSystem.writeAtomically(
      config,
      Array(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: \(directory)/storage\nhttp:\n  addr: 127.0.0.1:0\n  secret: bench\n"
          .utf8))
    let fd = try FileDescriptor.open(log, [.writeOnly, .create])
    pid = try ChildProcess.spawn(
      path: binary, arguments: ["docker-registry", "serve", config], stdoutFD: fd, stderrFD: fd)
    fd.close()
    var found: String?
    for _ in 0..<1000 where found == nil {
      let text = String(decoding: (try? FileSystem.readFile(log)) ?? [], as: UTF8.self)
      if let range = text.range(of: "listening on 127.0.0.1:") {
        found = "127.0.0.1:" + text[range.upperBound...].prefix { $0.isNumber }
      } else {
        Clock.sleep(milliseconds: 20)
      }
    }
    guard let found else {
      kill(pid, SIGKILL)
      _ = ChildProcess.waitOrKill(pid, timeoutMS: 5000)
      throw ValidationError("docker-registry did not start; see \(log)")
    }
    host = found
  }

  func stop() {
    kill(pid, SIGTERM)
    _ = ChildProcess.waitOrKill(pid, timeoutMS: 10_000)
  }
}
