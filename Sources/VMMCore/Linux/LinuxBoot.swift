import CKVM
import Logging
import Protocol
import Syscalls

/// What a Linux VM boots: the kernel, an optional initrd, and its command line.
public struct LinuxBootSource: Sendable {
  /// The default command line: serial console, reboot through the i8042 (so a panic with
  /// panic=-1 ends the VM at once), no PCI probing (devices are virtio-mmio from ACPI).
  public static let defaultCommandLine = "console=ttyS0 reboot=k panic=-1 pci=off quiet"

  public var kernel: [UInt8]
  public var kernelSource: String
  public var initrd: [UInt8]?
  public var initrdSource: String
  public var commandLine: String
  /// Also declare the virtio-mmio devices on the command line (`virtio_mmio.device=4K@0x…:IRQ`),
  /// for kernels built with VIRTIO_MMIO_CMDLINE_DEVICES; ACPI describes them either way.
  public var commandLineDevices: Bool

  public init(
    kernel: [UInt8], kernelSource: String, initrd: [UInt8]? = nil, initrdSource: String = "",
    commandLine: String = LinuxBootSource.defaultCommandLine, commandLineDevices: Bool = false
  ) {
    self.kernel = kernel
    self.kernelSource = kernelSource
    self.initrd = initrd
    self.initrdSource = initrdSource
    self.commandLine = commandLine
    self.commandLineDevices = commandLineDevices
  }
}

extension VirtualMachine {
  public static let linuxGuestKind = "linux"

  /// Boots a Linux kernel (bzImage or ELF vmlinux) into fresh memory with the in-kernel irqchip,
  /// ACPI tables describing the devices, and the zero page; the VM is ready to `start()`.
  public static func bootLinux(config: MachineConfig, source: LinuxBootSource, logger: Logger) throws(VMMError)
    -> VirtualMachine
  {
    // Everything that can be checked without KVM first, so bad input is reported on any host.
    let kernel = try LinuxKernel(parsing: source.kernel, source: source.kernelSource)
    let devices = virtioDevices(hasDisk: config.disk != nil, hasNIC: config.network != nil)
    let commandLine =
      source.commandLineDevices
      ? LinuxLayout.commandLine(source.commandLine, declaring: devices) : source.commandLine
    let commandLineBytes = Array(commandLine.utf8)
    guard commandLineBytes.count <= kernel.maxCommandLineLength,
      commandLineBytes.count < LinuxLayout.commandLineCapacity
    else {
      throw VMMError(
        .invalidConfig,
        "kernel command line is \(commandLineBytes.count) bytes; \(source.kernelSource) takes at most \(kernel.maxCommandLineLength) (setup header field cmdline_size)"
      )
    }
    let memory = try GuestMemory.create(size: config.memorySize, backend: .anonymous)
    try kernel.load(source.kernel, into: memory, source: source.kernelSource)
    var initrdPlacement: (address: UInt64, size: UInt64)? = nil
    if let initrd = source.initrd {
      let address = try LinuxLayout.initrdAddress(
        size: UInt64(initrd.count), kernel: kernel, memorySize: memory.size, source: source.initrdSource)
      memory.writeBytes(initrd, at: address)
      initrdPlacement = (address, UInt64(initrd.count))
    }
    if let disk = config.disk { _ = try BlockStore(disk) }

    let kvm = try KVMSystem()
    var digest = SHA256()
    digest.update(source.kernel)
    let machine = try VirtualMachine(
      config: config, memory: memory, kvm: kvm, guestKind: linuxGuestKind,
      guestImageDigest: "sha256:" + SHA256.hex(of: digest.finalize()), restoredFrom: nil, logger: logger)
    let acpi = ACPITables.build(
      base: LinuxLayout.acpiTablesAddress, vcpuCount: config.vcpuCount, virtio: machine.virtioDevices)
    let zeroPage = LinuxLayout.zeroPage(
      kernel: kernel, initrd: initrdPlacement, memorySize: memory.size, rsdpAddress: acpi.rsdpAddress)
    var placed = memory.writeBytes(acpi.bytes, at: acpi.base)
    placed = placed && memory.writeBytes(commandLineBytes + [0], at: LinuxLayout.commandLineAddress)
    placed = placed && memory.writeBytes(zeroPage, at: LinuxLayout.zeroPageAddress)
    for (i, entry) in LinuxLayout.gdtEntries.enumerated() {
      placed = placed && memory.write(entry, at: LinuxLayout.gdtAddress + UInt64(i) * 8)
    }
    for (address, entry) in X86Boot.identityPageTables() { placed = placed && memory.write(entry, at: address) }
    guard placed else { throw VMMError(.guestMemory, "the Linux boot structures do not fit in guest memory") }

    for vcpu in machine.vcpus {
      try vcpu.setCPUID(LinuxCPUID.entries(machine.cpuid, vcpuIndex: vcpu.index, vcpuCount: config.vcpuCount))
      try vcpu.setupLinuxRegisters()
      if vcpu.index == 0 { try vcpu.setupLinuxEntry(entry: kernel.entry, zeroPage: LinuxLayout.zeroPageAddress) }
    }
    try machine.vsock.listen()
    return machine
  }
}

/// CPUID for a Linux vCPU: what KVM supports, with this vCPU's APIC id and the hypervisor bit
/// (KVM_GET_SUPPORTED_CPUID already carries the KVM signature leaves 0x40000000+).
public enum LinuxCPUID {
  public static func entries(_ supported: [kvm_cpuid_entry2], vcpuIndex: UInt32, vcpuCount: UInt32)
    -> [kvm_cpuid_entry2]
  {
    supported.map { entry in
      var e = entry
      switch e.function {
      case 1:
        // EBX[31:24] initial APIC id, [23:16] logical processors; ECX[31] running under a hypervisor.
        e.ebx = (e.ebx & 0x0000_FFFF) | (vcpuIndex << 24) | (min(vcpuCount, 255) << 16)
        e.ecx |= 1 << 31
        if vcpuCount > 1 { e.edx |= 1 << 28 }  // HTT: the logical processor count is valid
      case 0xB, 0x1F:
        e.edx = vcpuIndex  // x2APIC id
      default:
        break
      }
      return e
    }
  }
}

extension VCPU {
  /// MSRs, FPU and local APIC wiring every Linux vCPU starts with (boot CPU and APs alike).
  func setupLinuxRegisters() throws(VMMError) {
    let msrs: [(index: UInt32, value: UInt64)] = [
      (0x174, 0), (0x175, 0), (0x176, 0),  // SYSENTER_CS/ESP/EIP
      (0xC000_0081, 0), (0xC000_0082, 0), (0xC000_0083, 0), (0xC000_0084, 0),  // STAR, LSTAR, CSTAR, SFMASK
      (0xC000_0102, 0),  // KERNEL_GS_BASE
      (0x10, 0),  // TSC
      (0x1A0, 1),  // MISC_ENABLE: fast strings
      (0x2FF, 1 << 11 | 6),  // MTRRdefType: MTRRs on, default write-back
    ]
    try setMSRs(msrs)
    var fpu = kvm_fpu()
    fpu.fcw = 0x37F
    fpu.mxcsr = 0x1F80
    try set(CKVM_SET_FPU, "KVM_SET_FPU", fpu)
    // LINT0 as ExtINT (the PIC's output) and LINT1 as NMI, as a PC's firmware leaves them.
    var lapic = try get(CKVM_GET_LAPIC, "KVM_GET_LAPIC", kvm_lapic_state())
    withUnsafeMutableBytes(of: &lapic.regs) { regs in
      for (offset, mode) in [(0x350, UInt32(7)), (0x360, UInt32(4))] {
        let old = regs.load(fromByteOffset: offset, as: UInt32.self)
        regs.storeBytes(of: (old & ~0x700) | (mode << 8), toByteOffset: offset, as: UInt32.self)
      }
    }
    try set(CKVM_SET_LAPIC, "KVM_SET_LAPIC", lapic)
  }

  /// The 64-bit boot protocol's entry state: long mode with identity paging, __BOOT_CS/__BOOT_DS
  /// flat segments, interrupts off, `rsi` = the zero page.
  func setupLinuxEntry(entry: UInt64, zeroPage: UInt64) throws(VMMError) {
    var sregs = try getSregs()
    func segment(_ selector: UInt16, type: UInt8, long: Bool) -> kvm_segment {
      kvm_segment(
        base: 0, limit: 0xFFFF_FFFF, selector: selector, type: type, present: 1, dpl: 0, db: long ? 0 : 1, s: 1,
        l: long ? 1 : 0, g: 1, avl: 0, unusable: 0, padding: 0)
    }
    sregs.cs = segment(LinuxLayout.codeSelector, type: 0xB, long: true)
    let data = segment(LinuxLayout.dataSelector, type: 0x3, long: false)
    sregs.ds = data
    sregs.es = data
    sregs.fs = data
    sregs.gs = data
    sregs.ss = data
    sregs.gdt.base = LinuxLayout.gdtAddress
    sregs.gdt.limit = UInt16(LinuxLayout.gdtEntries.count * 8 - 1)
    sregs.cr3 = X86Layout.pml4Address
    sregs.cr4 = 1 << 5  // PAE
    sregs.cr0 = 0x8000_0011 | 0x20  // PG | ET | PE | NE
    sregs.efer = 0x500  // LMA | LME
    try setSregs(sregs)
    var regs = kvm_regs()
    regs.rip = entry
    regs.rsi = zeroPage
    regs.rsp = LinuxLayout.stackPointer
    regs.rflags = 2
    try setRegs(regs)
  }
}
