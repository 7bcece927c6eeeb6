import ArgumentParser
import CLISupport
import Protocol
import Syscalls
import VMMControl
import VMMCore

/// The same-run physical floor (bench/restore-loop.c): one C process restoring N children
/// in a loop (VM, MAP_PRIVATE memslot, vCPUs with the snapshot's state, first exit), with no
/// process, pager, socket or agent per child. Built with clang at bench time.
struct RestoreLoopBaseline {
  let binary: String
  let stateFile: String
  let memoryFile: String

  /// Builds the C loop into `directory` and writes the vCPU state of `snapshot` for it.
  init(snapshot: String, directory: String, source: String = "bench/restore-loop.c") throws {
    try FileSystem.makeDirectories(directory)
    binary = directory + "/restore-loop"
    stateFile = directory + "/restore-loop.state"
    let path = FileSystem.exists(source) ? source : executableDirectory() + "/../../" + source
    guard FileSystem.exists(path) else {
      throw ValidationError("\(source): no such file (run from the repository root)")
    }
    let clang = ["/opt/swift/usr/bin/clang", "/usr/bin/clang", "/usr/bin/cc"].first { FileSystem.exists($0) }
    guard let clang else { throw ValidationError("no clang or cc to build \(path)") }
    let pid = try ChildProcess.spawn(path: clang, arguments: [clang, "-O2", "-o", binary, path])
    guard ChildProcess.waitOrKill(pid, timeoutMS: 60_000) == .exited(0) else {
      throw ValidationError("\(clang) could not build \(path)")
    }
    let loaded = try LoadedSnapshot(directory: snapshot)
    memoryFile = snapshot + "/" + loaded.manifest.memoryFile
    try FileSystem.writeAtomically(stateFile, try Self.flatState(loaded))
  }

  /// The layout restore-loop.c reads: "FCL1", vCPU count, memory size, then each vCPU's KVM
  /// structs as length-prefixed blobs (kvm_msrs and kvm_cpuid2 with their headers).
  static func flatState(_ loaded: LoadedSnapshot) throws -> [UInt8] {
    let sections = loaded.state.sections(StateSectionTag.vcpu)
    var w = ByteWriter()
    w.bytes(Array("FCL1".utf8))
    w.u32(UInt32(sections.count))
    w.u64(loaded.manifest.memorySize)
    func blob(_ bytes: [UInt8]?) {
      w.u32(UInt32(bytes?.count ?? 0))
      w.bytes(bytes ?? [])
    }
    for section in sections {
      let state = try VCPUState.decode(section.bytes, source: loaded.stateSource)
      blob(state.regs)
      blob(state.sregs)
      w.u32(state.fpuIsXsave ? 1 : 0)
      blob(state.fpu)
      blob(state.xcrs)
      var msrs = ByteWriter()
      msrs.u32(UInt32(state.msrs.count))
      msrs.u32(0)
      for msr in state.msrs {
        msrs.u32(msr.index)
        msrs.u32(0)
        msrs.u64(msr.value)
      }
      blob(state.msrs.isEmpty ? nil : msrs.bytes)
      blob(state.events)
      blob(state.mpState)
      blob(state.debugRegs)
      var cpuid = ByteWriter()
      cpuid.u32(UInt32(state.cpuid.count / 40))  // sizeof(struct kvm_cpuid_entry2)
      cpuid.u32(0)
      cpuid.bytes(state.cpuid)
      blob(state.cpuid.isEmpty ? nil : cpuid.bytes)
    }
    return w.bytes
  }

  struct Round {
    /// Wall time of the whole round (every child restored and at its first exit).
    var totalMS: Double
    /// Each child's restore to first exit.
    var firstExitMS: [Double]
  }

  /// Runs `rounds` rounds of `children` restores.
  func run(children: Int, rounds: Int) throws -> [Round] {
    let outPath = stateFile + ".out"
    let errPath = stateFile + ".err"
    let out = try FileDescriptor.open(outPath, [.writeOnly, .create, .truncate])
    let err = try FileDescriptor.open(errPath, [.writeOnly, .create, .truncate])
    let pid = try ChildProcess.spawn(
      path: binary,
      arguments: [
        binary, "--state", stateFile, "--memory", memoryFile, "--children", "\(children)", "--rounds", "\(rounds)",
      ], stdoutFD: out, stderrFD: err)
    out.close()
    err.close()
    let status = ChildProcess.waitOrKill(pid, timeoutMS: 300_000)
    guard status == .exited(0) else {
      throw ValidationError("restore-loop failed (\(String(describing: status))): \(lastLines(of: errPath))")
    }
    let text = String(decoding: try FileSystem.readFile(outPath), as: UTF8.self)
    return try text.split(separator: "\n").map { line in
      let value = try JSONValue.parse(Array(line.utf8), source: "restore-loop output")
      guard let total = value["total_ms"]?.doubleValue, let each = value["first_exit_us"]?.arrayValue else {
        throw ValidationError("restore-loop: \(line)")
      }
      // A child whose first exit is a triple fault, a failed entry or an internal error was not
      // restored: its time would flatter the floor.
      let broken = ["8": "shutdown", "9": "fail entry", "17": "internal error"]
      for (reason, name) in broken where value["exit_reasons"]?[reason] != nil {
        throw ValidationError("restore-loop: children ended in KVM_EXIT \(name) (\(line.prefix(200)))")
      }
      return Round(totalMS: total, firstExitMS: each.compactMap { $0.doubleValue.map { $0 / 1000 } })
    }
  }
}
