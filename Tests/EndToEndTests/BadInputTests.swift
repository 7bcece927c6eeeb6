import Foundation
import Protocol
import Syscalls
import TestGuestImage
import Testing
import VMMControl
import VMMCore

#if canImport(Glibc)
  import Glibc
#endif

/// Every bad input gets a clear error naming what was wrong, and leaves nothing behind.
@Suite("Bad input", .serialized)
struct BadInputTests {
  /// Launches forkd-vmm expecting failure; checks the message and that nothing is left.
  func expectLaunchFailure(_ mode: VMMProcess.Mode, in scratch: Scratch, mentions fragments: [String]) {
    let run = scratch.path + "/run-\(UInt64.random(in: 0...UInt64.max))"
    do {
      let vm = try VMMProcess.launch(mode, runDirectory: run)
      vm.stop()
      Issue.record("forkd-vmm started despite bad input")
    } catch {
      for fragment in fragments {
        #expect(error.description.contains(fragment), "\(error.description)")
      }
    }
    #expect(!FileSystem.exists(run), "the failed launch left its run directory behind")
  }

  @Test("no /dev/kvm, or a device that is not KVM")
  func noKVM() {
    do {
      _ = try KVMSystem(path: "/nonexistent/kvm")
      Issue.record("opened a missing device")
    } catch {
      #expect(error.code == .kvmUnavailable)
      #expect(error.message.contains("/nonexistent/kvm"))
      #expect(error.message.contains("no such device"))
    }
    do {
      _ = try KVMSystem(path: "/dev/null")
      Issue.record("/dev/null passed as KVM")
    } catch {
      #expect(error.message.contains("KVM_GET_API_VERSION"))
    }
  }

  @Test("no permission on /dev/kvm: forkd-vmm run as an unprivileged user says so and exits 1")
  func noPermission() throws {
    let scratch = try Scratch("perm")
    _ = chmod(scratch.path, 0o777)
    let vmm = try ForkdBinaries.path(of: "forkd-vmm")
    let log = try FileDescriptor.open(scratch.path + "/err", [.writeOnly, .create], mode: 0o666)
    let pid = try ChildProcess.spawn(
      path: "/usr/bin/setpriv",
      arguments: [
        "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", vmm, "boot", "--image", "builtin:test-guest",
        "--api-sock", scratch.path + "/api.sock", "--vsock-sock", scratch.path + "/vsock.sock",
      ], stdoutFD: log, stderrFD: log)
    log.close()
    #expect(try ChildProcess.wait(pid) == .exited(1))
    let message = String(decoding: try FileSystem.readFile(scratch.path + "/err"), as: UTF8.self)
    #expect(message.contains("/dev/kvm: permission denied"), "\(message)")
    #expect(!FileSystem.exists(scratch.path + "/api.sock") && !FileSystem.exists(scratch.path + "/vsock.sock"))
  }

  @Test("an image that is not ELF, or is truncated")
  func badImages() throws {
    let scratch = try Scratch("image")
    let script = scratch.path + "/not-elf"
    try FileSystem.writeAtomically(script, Array("#!/bin/sh\necho hello\n".utf8) + [UInt8](repeating: 0, count: 80))
    expectLaunchFailure(
      .boot(image: script, memoryMiB: 32, vcpus: 1), in: scratch, mentions: [script, "not an ELF image"])

    let truncated = scratch.path + "/truncated.elf"
    try FileSystem.writeAtomically(truncated, Array(TestGuestBytes.elf.prefix(200)))
    expectLaunchFailure(
      .boot(image: truncated, memoryMiB: 32, vcpus: 1), in: scratch, mentions: [truncated, "truncated"])

    expectLaunchFailure(
      .boot(image: scratch.path + "/missing.elf", memoryMiB: 32, vcpus: 1), in: scratch, mentions: ["missing.elf"])
  }

  @Test("broken snapshots: truncated memory.bin, newer manifest format, memory size mismatch, corrupt state")
  func badSnapshots() throws {
    let scratch = try Scratch("snap")
    let parent = try WarmParent(in: scratch, pages: 16, memoryMiB: 32)

    func copy(_ name: String, edit: (String) throws -> Void) throws -> String {
      let dir = scratch.path + "/" + name
      try FileSystem.makeDirectory(dir)
      for file in ["manifest.json", "vmstate.bin", "memory.bin"] {
        let bytes = try FileSystem.readFile(parent.snapshot + "/" + file, limit: 64 << 20)
        try FileSystem.writeAtomically(dir + "/" + file, bytes)
      }
      try edit(dir)
      return dir
    }
    func editManifest(_ dir: String, _ change: (String) -> String) throws {
      let text = String(decoding: try FileSystem.readFile(dir + "/manifest.json"), as: UTF8.self)
      try FileSystem.writeAtomically(dir + "/manifest.json", Array(change(text).utf8))
    }

    let truncated = try copy("truncated") { dir in
      let fd = try FileDescriptor.open(dir + "/memory.bin", .readWrite)
      defer { fd.close() }
      try fd.truncate(to: 1 << 20)
    }
    expectLaunchFailure(.restore(snapshot: truncated), in: scratch, mentions: ["memory.bin", "truncated"])

    let newer = try copy("newer") { dir in
      try editManifest(dir) { $0.replacingOccurrences(of: "\"format_version\": 1", with: "\"format_version\": 99") }
    }
    expectLaunchFailure(.restore(snapshot: newer), in: scratch, mentions: ["format_version 99", "newer"])

    let mismatch = try copy("mismatch") { dir in
      try editManifest(dir) {
        $0.replacingOccurrences(of: "\"memory_size\": \(32 << 20)", with: "\"memory_size\": \(64 << 20)")
      }
    }
    expectLaunchFailure(.restore(snapshot: mismatch), in: scratch, mentions: ["memory.bin", "memory_size"])

    // A manifest claiming more vCPUs than vmstate.bin saved: refused, never restored half.
    let vcpus = try copy("vcpus") { dir in
      try editManifest(dir) { $0.replacingOccurrences(of: "\"vcpu_count\": 1", with: "\"vcpu_count\": 2") }
    }
    expectLaunchFailure(.restore(snapshot: vcpus), in: scratch, mentions: ["1 vCPU sections", "vcpu_count 2"])

    let corrupt = try copy("corrupt") { dir in
      var bytes = try FileSystem.readFile(dir + "/vmstate.bin")
      bytes[bytes.count / 2] ^= 0xFF
      try FileSystem.writeAtomically(dir + "/vmstate.bin", bytes)
    }
    expectLaunchFailure(.restore(snapshot: corrupt), in: scratch, mentions: ["vmstate.bin", "digest"])

    expectLaunchFailure(
      .restore(snapshot: scratch.path + "/absent"), in: scratch, mentions: ["absent", "manifest.json"])
  }

  @Test("a snapshot never overwrites an existing one, and a failed snapshot leaves no staging directory")
  func existingTag() throws {
    let scratch = try Scratch("exists")
    let vm = try VMMProcess.launch(
      .boot(image: "builtin:test-guest", memoryMiB: 32, vcpus: 1), runDirectory: scratch.path + "/vm")
    defer { vm.stop() }
    _ = try vm.agent().ping()
    let target = scratch.path + "/tag"
    try vm.control().snapshot(directory: target, parentTag: nil)
    let before = try FileSystem.readFile(target + "/manifest.json")
    do {
      try vm.control().snapshot(directory: target, parentTag: nil)
      Issue.record("overwrote an existing snapshot")
    } catch {
      #expect(error.description.contains("snapshot_exists"))
      #expect(error.description.contains(target))
    }
    #expect(try FileSystem.readFile(target + "/manifest.json") == before)
    do {
      try vm.control().snapshot(directory: scratch.path + "/no/such/parent/tag", parentTag: nil)
      Issue.record("snapshot into a missing directory succeeded")
    } catch {
      #expect(error.description.contains("does not exist"))
    }
    #expect(try FileSystem.listDirectory(scratch.path).filter { $0.contains("staging") }.isEmpty)
    // The VM still runs after both failures.
    _ = try vm.agent().ping()
  }

  @Test("a guest that triple-faults: the VM process reports it and exits non-zero; a sibling is unaffected")
  func tripleFault() throws {
    let scratch = try Scratch("fault")
    let sibling = try VMMProcess.launch(
      .boot(image: "builtin:test-guest", memoryMiB: 32, vcpus: 1), runDirectory: scratch.path + "/sibling")
    defer { sibling.stop() }
    let siblingAgent = try sibling.agent()
    _ = try siblingAgent.ping()

    // ud2 with no IDT: #UD → #DF → triple fault.
    let image = scratch.path + "/fault.elf"
    try FileSystem.writeAtomically(image, TestGuestBytes.minimalELF(code: [0x0F, 0x0B]))
    let faulty = try VMMProcess.launch(
      .boot(image: image, memoryMiB: 32, vcpus: 1), runDirectory: scratch.path + "/faulty")
    faulty.keepRunDirectory()
    #expect(faulty.wait(timeoutMS: 30_000) == .exited(3))
    let log = lastLines(of: faulty.vmmLog, count: 20)
    #expect(log.contains("triple-faulted"), "\(log)")
    #expect(log.contains("rip=0x"), "\(log)")
    FileSystem.removeTree(faulty.runDirectory)

    #expect(try siblingAgent.ping().kind == AgentPong.testGuestKind)
    #expect(try siblingAgent.counter(add: 2) == 2)
  }
}

/// Test images: the built-in guest's bytes and a one-segment ELF of arbitrary code.
enum TestGuestBytes {
  static var elf: [UInt8] { TestGuestImage.elf }

  static func minimalELF(code: [UInt8], address: UInt64 = 0x10_0000) -> [UInt8] {
    var b = [UInt8](repeating: 0, count: 120)
    func put<T: FixedWidthInteger>(_ v: T, _ at: Int) {
      withUnsafeBytes(of: v.littleEndian) { for (i, x) in $0.enumerated() { b[at + i] = x } }
    }
    b[0...3] = [0x7F, 0x45, 0x4C, 0x46]
    b[4] = 2
    b[5] = 1
    b[6] = 1
    put(UInt16(2), 16)
    put(UInt16(62), 18)
    put(UInt32(1), 20)
    put(address, 24)
    put(UInt64(64), 32)
    put(UInt16(64), 52)
    put(UInt16(56), 54)
    put(UInt16(1), 56)
    put(UInt32(1), 64)
    put(UInt32(5), 68)
    put(UInt64(120), 72)
    put(address, 80)
    put(address, 88)
    put(UInt64(code.count), 96)
    put(UInt64(code.count), 104)
    return b + code
  }
}
