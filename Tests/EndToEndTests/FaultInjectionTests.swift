import ForkdClient
import Protocol
import Syscalls
import Testing
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// Faults injected into spawns and snapshots: the supervisor killed mid-spawn and mid-snapshot,
/// a full disk and a read-only state directory. After each: no half-written tag is visible, no
/// process, run directory or mount is left, and the daemon (or a restarted one) serves a
/// consistent state.
@Suite("Fault injection: spawn and snapshot", .serialized)
struct FaultInjectionTests {
  /// A small tmpfs for the state directory of a test; unmounted at the end.
  final class SmallFilesystem {
    let path: String
    init(at path: String, sizeKiB: Int) throws {
      self.path = path
      try FileSystem.makeDirectories(path)
      guard mount("tmpfs", path, "tmpfs", 0, "size=\(sizeKiB)k,mode=0700") == 0 else {
        throw SyscallError("mount", .current, detail: path)
      }
    }
    deinit { _ = umount2(path, Int32(MNT_DETACH)) }
  }

  /// A read-only bind mount of a directory over itself; undone at the end.
  final class ReadOnlyBind {
    let path: String
    init(_ path: String) throws {
      self.path = path
      guard mount(path, path, nil, UInt(MS_BIND), nil) == 0 else { throw SyscallError("mount", .current, detail: path) }
      guard mount(nil, path, nil, UInt(MS_BIND | MS_REMOUNT | MS_RDONLY), nil) == 0 else {
        _ = umount2(path, Int32(MNT_DETACH))
        throw SyscallError("mount", .current, detail: path)
      }
    }
    deinit { _ = umount2(path, Int32(MNT_DETACH)) }
  }

  static func isMounted(_ path: String) -> Bool {
    let text = String(decoding: (try? FileSystem.readFile("/proc/self/mounts")) ?? [], as: UTF8.self)
    return text.split(separator: "\n").contains { $0.split(separator: " ").dropFirst().first.map(String.init) == path }
  }

  @Test("a full disk during snapshot create: 500 naming ENOSPC, no tag or staging left; with space it works")
  func fullDisk() throws {
    let scratch = try Scratch("enospc")
    var small: SmallFilesystem? = try SmallFilesystem(at: scratch.path + "/state", sizeKiB: 2048)
    defer { withExtendedLifetime(small) {} }
    let sup = try TestSupervisor("enospc", reusing: scratch)
    defer { sup.stop() }
    let api = sup.unix
    // 8 MiB of data pages cannot fit in 2 MiB.
    let big = #"{"tag":"big","memory_mib":32,"warmup":[{"op":"fill","pages":2048,"seed":3}]}"#
    let r = try api.request("POST", "/v1/snapshots", body: big)
    #expect(r.status == 500, "\(r.text)")
    #expect(r.text.contains("ENOSPC"), "\(r.text)")
    #expect(try api.request("GET", "/v1/snapshots/big/info").status == 404)
    let left = try FileSystem.listDirectory(scratch.path + "/state/snapshots")
    #expect(left.isEmpty, "half-written snapshots: \(left)")
    #expect(processes(mentioning: scratch.path + "/run/parents").isEmpty, "the parent VM is stopped")
    // The daemon still serves, and a snapshot that fits is created.
    let fits = try api.request("POST", "/v1/snapshots", body: #"{"tag":"small","memory_mib":32}"#)
    #expect(fits.status == 201, "\(fits.text)")
    #expect(sup.stop() == .exited(0))
    small = nil
    #expect(!Self.isMounted(scratch.path + "/state"))
  }

  @Test("a read-only state directory during snapshot create: 500 naming EROFS, the daemon keeps serving")
  func readOnlyState() throws {
    let scratch = try Scratch("erofs")
    let sup = try TestSupervisor("erofs", reusing: scratch)
    defer { sup.stop() }
    let api = sup.unix
    var readOnly: ReadOnlyBind? = try ReadOnlyBind(scratch.path + "/state/snapshots")
    defer { withExtendedLifetime(readOnly) {} }
    let r = try api.request("POST", "/v1/snapshots", body: #"{"tag":"ro","memory_mib":32}"#)
    #expect(r.status == 500, "\(r.text)")
    #expect(r.text.contains("EROFS") || r.text.contains("read-only"), "\(r.text)")
    #expect(processes(mentioning: scratch.path + "/run/parents").isEmpty)
    readOnly = nil
    #expect(!Self.isMounted(scratch.path + "/state/snapshots"))
    #expect(try api.request("POST", "/v1/snapshots", body: #"{"tag":"rw","memory_mib":32}"#).status == 201)
    #expect(try api.request("GET", "/v1/snapshots").json?.arrayValue?.count == 1)
  }

  @Test("SIGKILL the supervisor mid-snapshot and mid-spawn: the next one leaves no process, tag or run directory")
  func supervisorKilledMidOperation() throws {
    let first = try TestSupervisor("midop")
    let api = first.unix
    #expect(try api.request("POST", "/v1/snapshots", body: #"{"tag":"base","memory_mib":32}"#).status == 201)
    // A snapshot whose warm-up runs for seconds, and a spawn of many children, both in flight.
    let slow = #"{"tag":"slow","memory_mib":32,"warmup":[{"op":"fill","pages":6000,"seed":1}]}"#
    let socket = first.socket
    let requests = try [slow, nil].map { body in
      try OSThread.start(name: "req") {
        let client = HTTPTestClient(target: .unix(socket))
        if let body {
          _ = try? client.request("POST", "/v1/snapshots", body: body)
        } else {
          _ = try? client.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"base","n":40}"#)
        }
      }
    }
    // Wait until both operations have processes running, then kill the supervisor.
    let deadline = Clock.monotonicNanoseconds() + 20_000_000_000
    while Clock.monotonicNanoseconds() < deadline
      && (processes(mentioning: first.scratch.path + "/run/parents").isEmpty
        || processes(mentioning: first.scratch.path + "/run/sandboxes").count < 4)
    {
      Clock.sleep(milliseconds: 5)
    }
    let orphans = processes(mentioning: first.scratch.path + "/run/")
    #expect(!orphans.isEmpty)
    kill(first.pid, SIGKILL)
    _ = ChildProcess.waitOrKill(first.pid, timeoutMS: 10_000)
    requests.forEach { $0.join() }

    let second = try TestSupervisor("midop", reusing: first.scratch)
    defer { second.stop() }
    var alive = processes(mentioning: first.scratch.path + "/run/")
    for _ in 0..<250 where !alive.isEmpty {
      Clock.sleep(milliseconds: 20)
      alive = processes(mentioning: first.scratch.path + "/run/").filter { !isZombieProcess($0) }
    }
    #expect(alive.isEmpty, "left running after the restart: \(alive)")
    #expect(try second.unix.request("GET", "/v1/snapshots/slow/info").status == 404, "no half-made tag")
    let snapshots = try FileSystem.listDirectory(first.scratch.path + "/state/snapshots")
    #expect(snapshots == ["base"], "only the complete snapshot: \(snapshots)")
    #expect(try second.unix.request("GET", "/v1/sandboxes").json?.arrayValue?.isEmpty == true)
    for dir in ["run/sandboxes", "run/parents"] {
      let left = (try? FileSystem.listDirectory(first.scratch.path + "/" + dir)) ?? []
      #expect(left.isEmpty, "\(dir) left: \(left)")
    }
    #expect(try second.unix.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"base","n":2}"#).status == 201)
  }
}

func isZombieProcess(_ pid: pid_t) -> Bool {
  guard let bytes = try? FileSystem.readFile("/proc/\(pid)/stat") else { return true }
  let text = String(decoding: bytes, as: UTF8.self)
  guard let close = text.lastIndex(of: ")") else { return false }
  return text[text.index(after: close)...].dropFirst().first == "Z"
}
