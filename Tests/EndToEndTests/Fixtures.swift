import Protocol
import Syscalls
import Testing
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// A scratch directory per test, removed at the end.
final class Scratch: @unchecked Sendable {
  let path: String

  init(_ name: String) throws {
    var template = Array("/tmp/forkd-test-\(name)-XXXXXX".utf8CString)
    guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
      throw SyscallError("mkdtemp", .current)
    }
    path = String(cString: made)
  }

  deinit { FileSystem.removeTree(path) }
}

/// Boots the built-in test guest, fills `pages` with `seed`, sets a counter and a key, snapshots.
struct WarmParent {
  static let seed: UInt64 = 0xC0FFEE
  static let counter: UInt64 = 41
  let snapshot: String
  let checksum: UInt64
  let pages: UInt64

  init(in scratch: Scratch, pages: UInt64 = 1024, memoryMiB: UInt64 = 64) throws {
    let parent = try VMMProcess.launch(
      .boot(image: "builtin:test-guest", memoryMiB: memoryMiB, vcpus: 1), runDirectory: scratch.path + "/parent")
    defer { parent.stop() }
    let agent = try parent.agent()
    let pong = try agent.ping()
    #expect(pong.kind == AgentPong.testGuestKind)
    #expect(try agent.fill(pages: pages, seed: Self.seed) == pages)
    checksum = try agent.checksum(pages: pages)
    #expect(try agent.counter(add: Int64(Self.counter)) == Self.counter)
    try agent.set("greeting", "from the parent")
    snapshot = scratch.path + "/snap"
    try parent.control().snapshot(directory: snapshot, parentTag: nil)
    self.pages = pages
  }
}

/// Whether a process with this pid still exists (zombies included).
func processExists(_ pid: pid_t) -> Bool { kill(pid, 0) == 0 }

/// Fields of /proc/<pid>/smaps_rollup in KiB.
/// True when this test binary runs under ASan or TSan (scripts/sanitize): their runtimes keep freed
/// memory in quarantine and add shadow memory, so memory bounds are widened by the caller.
let sanitizerRuntimeLinked = ["__asan_init", "__tsan_init"].contains { (symbol: String) in dlsym(nil, symbol) != nil }

/// The smaps counters (KiB) summed over the mappings of `pid` whose path ends with `suffix`: the
/// guest memory alone, without the process's heap (or a sanitizer's shadow memory).
func smapsOfMapping(_ pid: pid_t, pathSuffix suffix: String) throws -> [String: UInt64] {
  let text = String(decoding: try FileSystem.readFile("/proc/\(pid)/smaps", limit: 64 << 20), as: UTF8.self)
  var result: [String: UInt64] = [:]
  var inside = false
  for line in text.split(separator: "\n") {
    let parts = line.split(separator: " ", omittingEmptySubsequences: true)
    guard let first = parts.first else { continue }
    if first.contains("-") && !first.hasSuffix(":") {
      // A mapping's header: "start-end perms offset dev inode [path]".
      inside = parts.count >= 6 && parts[5...].joined(separator: " ").hasSuffix(suffix)
    } else if inside, parts.count >= 2, first.hasSuffix(":"), let value = UInt64(parts[1]) {
      result[String(first.dropLast()), default: 0] += value
    }
  }
  return result
}

func smapsRollup(_ pid: pid_t) throws -> [String: UInt64] {
  let text = String(decoding: try FileSystem.readFile("/proc/\(pid)/smaps_rollup"), as: UTF8.self)
  var result: [String: UInt64] = [:]
  for line in text.split(separator: "\n") {
    let parts = line.split(separator: " ", omittingEmptySubsequences: true)
    if parts.count >= 2, parts[0].hasSuffix(":"), let value = UInt64(parts[1]) {
      result[String(parts[0].dropLast())] = value
    }
  }
  return result
}
