import Syscalls
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// The nested-SVM lane (scripts/nested-lane/run, docs/nested-lane.md): an L1 VM under QEMU TCG
/// with a hardware-style KVM runs forkd-lane, which boots the Debian kernel under forkd-vmm,
/// snapshots it and forks it. Fails the run when the lane fails; skipped only on a machine
/// without /dev/kvm.
@Suite("Nested lane")
struct NestedLaneTests {
  static let packageRoot: String = {
    var parts = String(#filePath).split(separator: "/", omittingEmptySubsequences: false)
    parts.removeLast(3)
    return parts.joined(separator: "/")
  }()

  @Test(
    "L2 Linux under forkd-vmm in an L1 with nested SVM: boot, exec, snapshot, children",
    .enabled(if: FileSystem.exists("/dev/kvm"), "no /dev/kvm on this machine"))
  func lane() throws {
    var template = Array("/tmp/forkd-lane-test-XXXXXX".utf8CString)
    guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
      throw SyscallError("mkdtemp", .current)
    }
    let scratch = String(cString: made)
    defer { FileSystem.removeTree(scratch) }
    let logPath = scratch + "/lane.log"
    let log = try FileDescriptor.open(logPath, [.writeOnly, .create, .truncate], mode: 0o600)
    let script = Self.packageRoot + "/scripts/nested-lane/run"
    // The script builds release binaries of this tree (.build-lane-release) and bounds L1 with
    // `timeout`; this wait is only a backstop.
    let pid = try ChildProcess.spawn(
      path: "/usr/bin/env",
      arguments: ["env", "bash", script, "--timeout", "900"],
      stdoutFD: log, stderrFD: log)
    log.close()
    let termination = ChildProcess.waitOrKill(pid, timeoutMS: 1_800_000)
    let output = String(decoding: (try? FileSystem.readFile(logPath)) ?? [], as: UTF8.self)
    let laneLines = output.split(separator: "\n").filter { $0.hasPrefix("LANE") || $0.hasPrefix("nested-lane:") }
    print(laneLines.joined(separator: "\n"))
    #expect(
      termination == .exited(0),
      "the lane failed (\(termination.map { "\($0)" } ?? "killed")): \(laneLines.suffix(12).joined(separator: " | "))")
    #expect(laneLines.contains { $0.hasPrefix("LANE SUMMARY test-guest") && $0.contains("failed=0") })
    #expect(laneLines.contains { $0.hasPrefix("LANE SUMMARY linux") && $0.contains("failed=0") })
    #expect(laneLines.contains { $0.hasPrefix("LANE PASS linux: exec uname -r is the Debian kernel") })
    #expect(laneLines.contains { $0.hasPrefix("LANE PASS linux: a write in child 0 is invisible") })
    #expect(!laneLines.contains { $0.hasPrefix("LANE FAIL") })
    #expect(laneLines.contains { $0 == "nested-lane: PASS" })
  }
}
