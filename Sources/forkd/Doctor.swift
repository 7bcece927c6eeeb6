import ArgumentParser
import CLISupport
import Protocol
import Syscalls
import SystemdSupport
import VMMControl
import VMMCore

/// `forkd doctor`: what this host offers forkd, each check with a verdict.
struct Doctor: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Check KVM, userfaultfd, seccomp, journald, cgroups and binaries.")
  @Flag(help: "Print JSON.") var json = false

  func run() throws {
    var checks: [(name: String, ok: Bool, detail: String)] = []
    do {
      let kvm = try KVMSystem()
      checks.append(
        (
          "kvm", true,
          "/dev/kvm API 12, \(kvm.flavor == .pvm ? "PVM (no hardware virtualization: only the test guest runs directly)" : "hardware-assisted")"
        ))
    } catch {
      checks.append(("kvm", false, error.description))
    }
    do {
      let features = try Userfault.supportedFeatures()
      let wanted: [(String, Userfault.Features)] = [
        ("minor-shmem", .minorShmem), ("wp-async", .wpAsync), ("move", .move), ("event-remove", .eventRemove),
      ]
      checks.append(
        (
          "userfaultfd", true,
          "features \(features): "
            + wanted.map { "\($0.0) \(features.contains($0.1) ? "yes" : "no")" }.joined(separator: ", ")
        ))
    } catch {
      checks.append(("userfaultfd", false, "\(error)"))
    }
    for binary in ["forkd-vmm", "forkd-pager", "forkd-supervisor", "forkd-sandbox-probe"] {
      do {
        checks.append((binary, true, try ForkdBinaries.path(of: binary)))
      } catch {
        checks.append((binary, false, error.description))
      }
    }
    if let probe = try? ForkdBinaries.path(of: "forkd-sandbox-probe"),
      let out = try? FileDescriptor.pipe(),
      let pid = try? ChildProcess.spawn(
        path: probe, arguments: [probe, "pager", "allowed"], stdoutFD: out.write, stderrFD: out.write)
    {
      out.write.close()
      var text: [UInt8] = []
      while let chunk = try? out.read.read(upTo: 4096), !chunk.isEmpty { text += chunk }
      out.read.close()
      let ended = try? ChildProcess.wait(pid)
      let filtered = String(decoding: text, as: UTF8.self).contains("Seccomp:\t2")
      checks.append(
        (
          "seccomp", ended == .exited(0) && filtered,
          filtered ? "the pager policy loads (Seccomp: 2)" : "the probe failed: \(ended.map { "\($0)" } ?? "?")"
        ))
    }
    checks.append(
      (
        "journald", true,
        Journal.isAvailable()
          ? "available: per-child logs go to the journal" : "not running: logs go to files under the state directory"
      ))
    let cgroup =
      FileSystem.exists("/sys/fs/cgroup/cgroup.controllers")
      ? "cgroup v2"
      : FileSystem.isDirectory("/sys/fs/cgroup/memory") ? "cgroup v1 memory controller" : "no memory controller"
    checks.append(("cgroups", !cgroup.hasPrefix("no"), cgroup + " (memory_limit_mib)"))

    if json {
      print(
        JSONValue.array(
          checks.map { .object(["check": .string($0.name), "ok": .bool($0.ok), "detail": .string($0.detail)]) }
        ).serialized(pretty: true))
    } else {
      for c in checks { print("\(c.ok ? "ok  " : "FAIL") \(c.name.padding(20)) \(c.detail)") }
    }
    if checks.contains(where: { !$0.ok }) { throw ExitCode(CLIExit.failure) }
  }
}
