import Protocol
import Syscalls
import Testing
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// One field of /proc/<pid>/status ("Uid", "CapEff", "NoNewPrivs", "Seccomp").
func procStatusField(_ pid: pid_t, _ field: String) -> String? {
  guard let bytes = try? FileSystem.readFile("/proc/\(pid)/status") else { return nil }
  for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") where line.hasPrefix(field + ":") {
    return line.dropFirst(field.count + 1).trimmingPrefix(while: { $0 == "\t" || $0 == " " }).description
  }
  return nil
}

/// The namespace link of /proc/<pid>/ns/<kind>, e.g. "mnt:[4026531841]".
func namespaceLink(_ pid: pid_t, _ kind: String) -> String? {
  var buffer = [CChar](repeating: 0, count: 256)
  let n = readlink("/proc/\(pid)/ns/\(kind)", &buffer, buffer.count - 1)
  guard n > 0 else { return nil }
  return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

extension Substring {
  fileprivate func trimmingPrefix(while predicate: (Character) -> Bool) -> Substring {
    var result = self
    while let first = result.first, predicate(first) { result = result.dropFirst() }
    return result
  }
}

/// Sanitizer builds enter a relaxed jail (no root or uid change, docs/jail.md): nothing to prove.
@Suite("Jail: every per-child process in its own cell", .serialized, .enabled(if: !sanitizerRuntimeLinked))
struct JailTests {
  /// A uid range no other suite uses, so leases never meet another test's children.
  static func pool() throws -> JailPool { try JailPool(base: 1_900_500_000, count: 8) }

  @Test("a jailed child's forkd-vmm and forkd-pager: own uid, own mount namespace, no capabilities, no_new_privs")
  func processesAreJailed() throws {
    let scratch = try Scratch("jail-proc")
    let parent = try WarmParent(in: scratch, pages: 64)
    let pool = try Self.pool()
    let first = try Child.restore(
      snapshot: parent.snapshot, runDirectory: scratch.path + "/a", backend: .uffd(), jail: pool)
    defer { first.stop() }
    let second = try Child.restore(
      snapshot: parent.snapshot, runDirectory: scratch.path + "/b", backend: .file, jail: pool)
    defer { second.stop() }
    // The guests run and answer from inside the cell.
    #expect(try first.vmm.agent().checksum(pages: parent.pages) == parent.checksum)
    #expect(try second.vmm.agent().checksum(pages: parent.pages) == parent.checksum)

    let uids = [first.jailUID, second.jailUID].compactMap { $0 }
    #expect(uids.count == 2 && uids[0] != uids[1], "each live child has a uid of its own")
    #expect(pool.leased == 2)
    let ownMountNamespace = try #require(namespaceLink(getpid(), "mnt"))
    for (child, uid) in zip([first, second], uids) {
      var pids = [child.vmm.pid]
      if let pager = child.pager { pids.append(pager.pid) }
      for pid in pids {
        #expect(procStatusField(pid, "Uid") == "\(uid)\t\(uid)\t\(uid)\t\(uid)", "pid \(pid)")
        #expect(procStatusField(pid, "Gid") == "\(uid)\t\(uid)\t\(uid)\t\(uid)", "pid \(pid)")
        #expect(procStatusField(pid, "CapEff") == "0000000000000000", "pid \(pid)")
        #expect(procStatusField(pid, "CapPrm") == "0000000000000000", "pid \(pid)")
        #expect(procStatusField(pid, "CapInh") == "0000000000000000", "pid \(pid)")
        #expect(procStatusField(pid, "CapAmb") == "0000000000000000", "pid \(pid)")
        #expect(procStatusField(pid, "NoNewPrivs") == "1", "pid \(pid)")
        #expect(procStatusField(pid, "Seccomp") == "2", "pid \(pid)")
        let mount = namespaceLink(pid, "mnt")
        #expect(mount != nil && mount != ownMountNamespace, "pid \(pid) has its own mount namespace")
      }
      // Its command line still names its run directory: how a restarted supervisor finds it.
      #expect(Set(processes(mentioning: child.runDirectory)) == Set(pids))
      // The process's root is its run directory.
      var buffer = [CChar](repeating: 0, count: 4096)
      let n = readlink("/proc/\(child.vmm.pid)/root", &buffer, buffer.count - 1)
      #expect(n > 0 && String(cString: Array(buffer[0..<n]) + [0]) == child.runDirectory)
    }
    first.stop()
    second.stop()
    #expect(pool.leased == 0, "stopped children give their uids back")
  }

  @Test(
    "probes from inside a jailed forkd-vmm: another child's files, a sibling's /proc/<pid>/mem, API sockets, snapshots for writing — each fails"
  )
  func probesFromInsideTheCell() throws {
    let scratch = try Scratch("jail-probe")
    let parent = try WarmParent(in: scratch, pages: 64)
    let pool = try Self.pool()
    let sibling = try Child.restore(
      snapshot: parent.snapshot, runDirectory: scratch.path + "/sibling", backend: .uffd(), jail: pool)
    defer { sibling.stop() }
    // An API socket like the supervisor's, listening outside every cell.
    let api = try UnixSocket.listen(path: scratch.path + "/forkd.sock", mode: 0o666)
    defer { api.close() }
    let probes: [(probe: String, expected: String)] = [
      ("write:\(parent.snapshot)/memory.bin", "denied ENOENT"),
      ("write:\(parent.snapshot)/manifest.json", "denied ENOENT"),
      ("read:\(sibling.runDirectory)/console.log", "denied ENOENT"),
      ("read:\(sibling.runDirectory)/pager-0.log", "denied ENOENT"),
      ("connect:\(sibling.vmm.controlSocket)", "denied ENOENT"),
      ("connect:\(scratch.path)/forkd.sock", "denied ENOENT"),
      ("read:/proc/\(sibling.vmm.pid)/mem", "denied ENOENT"),
      ("write:/proc/\(sibling.vmm.pid)/mem", "denied ENOENT"),
      ("read:/etc/shadow", "denied ENOENT"),
      ("read:/dev/kvm", "denied ENOENT"),
      ("kill:\(sibling.vmm.pid)", "denied EPERM"),
      ("kill:\(sibling.pager!.pid)", "denied EPERM"),
      ("userns:", "denied EPERM"),
      ("chroot:", "denied EPERM"),
      ("setuid0:", "denied EPERM"),
      // Controls: paths resolve inside the cell (EACCES, not ENOENT: the files the process opened
      // as root before the jail stay root's), and the probe can succeed there.
      ("connect:vsock.sock", "denied EACCES"),
      ("read:console.log", "denied EACCES"),
      ("create:probe-file", "ok"),
    ]
    setenv("FORKD_TEST_JAIL_PROBES", probes.map(\.probe).joined(separator: ";"), 1)
    let prober: Child
    do {
      defer { unsetenv("FORKD_TEST_JAIL_PROBES") }
      prober = try Child.restore(
        snapshot: parent.snapshot, runDirectory: scratch.path + "/prober", backend: .uffd(), jail: pool)
    }
    defer { prober.stop() }
    let log = String(decoding: try FileSystem.readFile(prober.vmm.vmmLog), as: UTF8.self)
    var outcomes: [String: String] = [:]
    for line in log.split(separator: "\n") where line.hasPrefix("jail-probe ") {
      let rest = line.dropFirst("jail-probe ".count)
      for (probe, _) in probes where rest.hasPrefix(probe + " ") {
        outcomes[probe] = String(rest.dropFirst(probe.count + 1))
      }
    }
    for (probe, expected) in probes {
      #expect(outcomes[probe] == expected, "\(probe)")
    }
    // The file the control created is in the prober's run directory, owned by its jail uid.
    var st = stat()
    #expect(lstat(prober.runDirectory + "/probe-file", &st) == 0 && st.st_uid == prober.jailUID)
    // The snapshot is intact and the sibling still serves its guest.
    #expect(try sibling.vmm.agent().checksum(pages: parent.pages) == parent.checksum)
  }

  @Test(
    "through the daemon: a child runs jailed by default, branches full and diff from its cell into the store as root's files; --no-jail runs it as root"
  )
  func daemonChildren() throws {
    let sup = try TestSupervisor("jail", backend: "auto")
    defer { sup.stop() }
    let api = sup.unix
    #expect(
      try api.request(
        "POST", "/v1/snapshots",
        body: #"{"tag":"base","memory_mib":32,"warmup":[{"op":"fill","pages":64,"seed":3},{"op":"counter","delta":2}]}"#
      ).status == 201)
    let spawned = try api.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"base","n":2}"#)
    #expect(spawned.status == 201, "\(spawned.text)")
    let children = try #require(spawned.json?.arrayValue)
    let pids = children.compactMap { $0["pid"]?.int64Value }.map { pid_t($0) }
    #expect(pids.count == 2)
    let ownMountNamespace = namespaceLink(getpid(), "mnt")
    var uids: [String] = []
    for pid in pids {
      let uid = try #require(procStatusField(pid, "Uid"))
      #expect(!uid.hasPrefix("0\t"), "forkd-vmm \(pid) runs as \(uid)")
      uids.append(uid)
      #expect(namespaceLink(pid, "mnt") != ownMountNamespace)
    }
    #expect(Set(uids).count == 2, "two live children, two uids")

    let id = try #require(children.first?["id"]?.stringValue)
    for (tag, mode) in [("jfull", "full"), ("jdiff", "diff")] {
      let r = try api.request("POST", "/v1/sandboxes/\(id)/branch", body: #"{"tag":"\#(tag)","mode":"\#(mode)"}"#)
      #expect(r.status == 201, "\(r.text)")
      let directory = sup.scratch.path + "/state/snapshots/" + tag
      for name in try FileSystem.listDirectory(directory) + ["."] {
        var st = stat()
        #expect(lstat(directory + "/" + name, &st) == 0 && st.st_uid == 0 && st.st_mode & 0o077 == 0, "\(tag)/\(name)")
      }
    }
    // The branch spawns and answers with the source's state.
    let fromBranch = try api.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"jdiff"}"#)
    #expect(fromBranch.status == 201, "\(fromBranch.text)")
    let branchChild = try #require(fromBranch.json?.arrayValue?.first?["id"]?.stringValue)
    #expect(try api.request("POST", "/v1/sandboxes/\(branchChild)/ping").json?["counter"]?.int64Value == 2)
    // Deleting children removes their branch directories.
    for child in children.compactMap({ $0["id"]?.stringValue }) + [branchChild] {
      #expect(try api.request("DELETE", "/v1/sandboxes/\(child)").status == 204)
    }
    #expect(((try? FileSystem.listDirectory(sup.scratch.path + "/state/branches")) ?? []).isEmpty)

    let unjailed = try TestSupervisor("nojail", backend: "auto", extra: ["--no-jail"])
    defer { unjailed.stop() }
    #expect(
      try unjailed.unix.request(
        "POST", "/v1/snapshots", body: #"{"tag":"base","memory_mib":32,"warmup":[{"op":"counter","delta":1}]}"#
      ).status == 201)
    let plain = try unjailed.unix.request("POST", "/v1/sandboxes", body: #"{"snapshot_tag":"base"}"#)
    let plainPID = try #require(plain.json?.arrayValue?.first?["pid"]?.int64Value)
    #expect(procStatusField(pid_t(plainPID), "Uid")?.hasPrefix("0\t") == true)
  }

  @Test("a jailed child's pager killed mid-run is replaced by a pager in the same jail; the guest goes on")
  func pagerRestartInJail() throws {
    let scratch = try Scratch("jail-restart")
    let parent = try WarmParent(in: scratch, pages: 128)
    let pool = try Self.pool()
    let child = try Child.restore(
      snapshot: parent.snapshot, runDirectory: scratch.path + "/child", backend: .uffd(policy: .restart), jail: pool)
    defer { child.stop() }
    let uid = try #require(child.jailUID)
    let old = try #require(child.pager)
    old.signal(SIGKILL)
    #expect(child.waitForPagerExit(timeoutMS: 5000))
    guard case .restarted(_, let newPID, _) = try #require(try child.handlePagerExit()) else {
      Issue.record("expected a restart")
      return
    }
    #expect(procStatusField(newPID, "Uid") == "\(uid)\t\(uid)\t\(uid)\t\(uid)")
    #expect(namespaceLink(newPID, "mnt") != namespaceLink(getpid(), "mnt"))
    #expect(try child.vmm.agent().checksum(pages: parent.pages) == parent.checksum)
  }

  @Test(
    "the uid pool: never one uid for two live children, a freed uid is reused last, a full range is refused by name")
  func uidPool() throws {
    let pool = try JailPool(base: 1_900_600_000, count: 3)
    var leases = try (0..<3).map { _ in try pool.lease() }
    #expect(Set(leases.map(\.uid)) == [1_900_600_000, 1_900_600_001, 1_900_600_002])
    do {
      _ = try pool.lease()
      Issue.record("a fourth lease from a range of three")
    } catch {
      #expect(error.message.contains("--jail-uid-count"), "\(error)")
    }
    let freed = leases.remove(at: 0).uid
    #expect(pool.leased == 2)
    leases.append(try pool.lease())
    #expect(leases.last?.uid == freed, "the only free uid")
    leases.removeAll()
    #expect(pool.leased == 0)
    // After a release, the next lease takes the uid after the last one handed out, not the freed one.
    leases = [try pool.lease(), try pool.lease()]
    #expect(leases[0].uid != leases[1].uid)
    let released = leases.remove(at: 0).uid
    #expect(try pool.lease().uid != released)

    for (base, count, fragment) in [
      (UInt32(0), UInt32(10), "root"), (1000, 0, "no uid"), (UInt32.max - 5, 10, "4294967294"),
    ] {
      do {
        _ = try JailPool(base: base, count: count)
        Issue.record("base \(base) count \(count) accepted")
      } catch {
        #expect(error.description.contains(fragment), "\(error)")
      }
    }
  }
}
