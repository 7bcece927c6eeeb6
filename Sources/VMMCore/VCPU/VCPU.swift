import CKVM
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// One KVM vCPU: its fd, its shared `kvm_run` page, and every piece of state KVM exposes.
public final class VCPU: @unchecked Sendable {
  public let index: UInt32
  public let fd: FileDescriptor
  let run: UnsafeMutablePointer<kvm_run>
  let runSize: Int

  init(vm: VMHandle, index: UInt32) throws(VMMError) {
    self.index = index
    fd = try vm.createVCPU(index: index)
    runSize = vm.system.vcpuMmapSize
    do {
      let p = try MemoryMapping.sharedFile(fd, size: runSize)
      run = p.assumingMemoryBound(to: kvm_run.self)
    } catch {
      fd.close()
      throw VMMError(.kvmCall, "mmap of kvm_run for vCPU \(index) failed", cause: error)
    }
  }

  deinit {
    MemoryMapping.unmap(UnsafeMutableRawPointer(run), size: runSize)
    fd.close()
  }

  // MARK: Registers

  public func getRegs() throws(VMMError) -> kvm_regs {
    var regs = kvm_regs()
    try kvmIoctl(fd, CKVM_GET_REGS, "KVM_GET_REGS", &regs)
    return regs
  }

  public func setRegs(_ regs: kvm_regs) throws(VMMError) {
    var copy = regs
    try kvmIoctl(fd, CKVM_SET_REGS, "KVM_SET_REGS", &copy)
  }

  public func getSregs() throws(VMMError) -> kvm_sregs {
    var sregs = kvm_sregs()
    try kvmIoctl(fd, CKVM_GET_SREGS, "KVM_GET_SREGS", &sregs)
    return sregs
  }

  public func setSregs(_ sregs: kvm_sregs) throws(VMMError) {
    var copy = sregs
    try kvmIoctl(fd, CKVM_SET_SREGS, "KVM_SET_SREGS", &copy)
  }

  /// RIP for error messages; 0 if it cannot be read.
  public var instructionPointer: UInt64 { (try? getRegs().rip) ?? 0 }

  public func setCPUID(_ entries: [kvm_cpuid_entry2]) throws(VMMError) {
    let size = ckvm_cpuid2_size(UInt32(entries.count))
    let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
    defer { raw.deallocate() }
    raw.initializeMemory(as: UInt8.self, repeating: 0, count: size)
    let cpuid = raw.assumingMemoryBound(to: kvm_cpuid2.self)
    cpuid.pointee.nent = UInt32(entries.count)
    let out = ckvm_cpuid2_entries(cpuid)!
    for (i, e) in entries.enumerated() { out[i] = e }
    _ = try kvmIoctl(fd, CKVM_SET_CPUID2, "KVM_SET_CPUID2", raw)
  }

  /// Puts the vCPU straight into 64-bit long mode with the VMM's identity page tables.
  public func setupLongMode(entry: UInt64, bootInfo: UInt64) throws(VMMError) {
    var sregs = try getSregs()
    func segment(_ selector: UInt16, type: UInt8, long: Bool) -> kvm_segment {
      kvm_segment(
        base: 0, limit: 0xFFFF_FFFF, selector: selector, type: type, present: 1, dpl: 0, db: long ? 0 : 1, s: 1,
        l: long ? 1 : 0, g: 1, avl: 0, unusable: 0, padding: 0)
    }
    sregs.cs = segment(X86Layout.codeSelector, type: 0xB, long: true)
    let data = segment(X86Layout.dataSelector, type: 0x3, long: false)
    sregs.ds = data
    sregs.es = data
    sregs.fs = data
    sregs.gs = data
    sregs.ss = data
    sregs.gdt.base = X86Layout.gdtAddress
    sregs.gdt.limit = UInt16(X86Boot.gdtEntries.count * 8 - 1)
    sregs.cr3 = X86Layout.pml4Address
    sregs.cr4 = 1 << 5  // PAE
    sregs.cr0 = 0x8005_0033  // PG | WP | NE | ET | MP | PE
    sregs.efer = 0x500  // LMA | LME
    try setSregs(sregs)
    var regs = kvm_regs()
    regs.rip = entry
    regs.rsp = X86Layout.initialStackPointer
    regs.rdi = bootInfo
    regs.rflags = 2
    try setRegs(regs)
  }

  // MARK: Generic struct get/set

  func get<T>(_ request: UInt, _ name: StaticString, _ initial: T) throws(VMMError) -> T {
    var value = initial
    try kvmIoctl(fd, request, name, &value)
    return value
  }

  func set<T>(_ request: UInt, _ name: StaticString, _ value: T) throws(VMMError) {
    var copy = value
    try kvmIoctl(fd, request, name, &copy)
  }

  /// Reads as many of `indices` as KVM allows; MSRs it refuses are skipped.
  func getMSRs(_ indices: [UInt32]) throws(VMMError) -> [(index: UInt32, value: UInt64)] {
    var remaining = indices[...]
    var result: [(UInt32, UInt64)] = []
    while !remaining.isEmpty {
      let count = UInt32(remaining.count)
      let raw = UnsafeMutableRawPointer.allocate(byteCount: ckvm_msrs_size(count), alignment: 8)
      defer { raw.deallocate() }
      raw.initializeMemory(as: UInt8.self, repeating: 0, count: ckvm_msrs_size(count))
      let msrs = raw.assumingMemoryBound(to: kvm_msrs.self)
      msrs.pointee.nmsrs = count
      let entries = ckvm_msrs_entries(msrs)!
      for (i, index) in remaining.enumerated() { entries[i].index = index }
      let read = Int(try kvmIoctl(fd, CKVM_GET_MSRS, "KVM_GET_MSRS", raw))
      for i in 0..<read { result.append((entries[i].index, entries[i].data)) }
      // KVM stops at the first MSR it cannot read: skip that one and go on.
      remaining = remaining.dropFirst(read + 1)
    }
    return result
  }

  /// Writes MSRs; returns the indices KVM refused (stops at each failure and continues after it).
  @discardableResult
  func setMSRs(_ values: [(index: UInt32, value: UInt64)]) throws(VMMError) -> [UInt32] {
    var remaining = values[...]
    var refused: [UInt32] = []
    while !remaining.isEmpty {
      let count = UInt32(remaining.count)
      let raw = UnsafeMutableRawPointer.allocate(byteCount: ckvm_msrs_size(count), alignment: 8)
      defer { raw.deallocate() }
      raw.initializeMemory(as: UInt8.self, repeating: 0, count: ckvm_msrs_size(count))
      let msrs = raw.assumingMemoryBound(to: kvm_msrs.self)
      msrs.pointee.nmsrs = count
      let entries = ckvm_msrs_entries(msrs)!
      for (i, msr) in remaining.enumerated() {
        entries[i].index = msr.index
        entries[i].data = msr.value
      }
      let written = Int(try kvmIoctl(fd, CKVM_SET_MSRS, "KVM_SET_MSRS", raw))
      if written < remaining.count { refused.append(remaining[remaining.startIndex + written].index) }
      remaining = remaining.dropFirst(written + 1)
    }
    return refused
  }
}
