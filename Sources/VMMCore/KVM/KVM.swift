import CKVM
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// Issues one KVM ioctl with EINTR retry, naming the request in the error.
@inline(__always)
func kvmIoctl(_ fd: FileDescriptor, _ request: UInt, _ name: StaticString, _ arg: UnsafeMutableRawPointer?)
  throws(VMMError) -> Int32
{
  do {
    return try retryingEINTR("\(name)") { ckvm_ioctl(fd.rawValue, request, arg) }
  } catch {
    throw VMMError(.kvmCall, "\(name) failed", cause: error)
  }
}

@inline(__always)
func kvmIoctl(_ fd: FileDescriptor, _ request: UInt, _ name: StaticString, value: UInt) throws(VMMError) -> Int32 {
  do {
    return try retryingEINTR("\(name)") { ckvm_ioctl_value(fd.rawValue, request, value) }
  } catch {
    throw VMMError(.kvmCall, "\(name) failed", cause: error)
  }
}

/// Typed wrapper over a struct-argument ioctl.
@inline(__always)
func kvmIoctl<T>(_ fd: FileDescriptor, _ request: UInt, _ name: StaticString, _ value: inout T) throws(VMMError) {
  let rc = withUnsafeMutableBytes(of: &value) { raw in
    Result<Int32, VMMError> { () throws(VMMError) -> Int32 in try kvmIoctl(fd, request, name, raw.baseAddress) }
  }
  _ = try rc.get()
}

/// The /dev/kvm system handle.
public final class KVMSystem: @unchecked Sendable {
  public let fd: FileDescriptor
  public let vcpuMmapSize: Int

  /// The KVM flavour this host has: PVM (no hardware virtualization) or hardware-assisted.
  public enum Flavor: String, Sendable { case pvm, hardware }
  public let flavor: Flavor

  public init(path: String = "/dev/kvm") throws(VMMError) {
    flavor = FileSystem.exists("/sys/module/kvm_pvm") ? .pvm : .hardware
    do {
      fd = try FileDescriptor.open(path, .readWrite)
    } catch {
      let hint =
        switch error.errno {
        case .noEntry: "no such device: is the kvm module loaded?"
        case .permission, .notPermitted: "permission denied: run as root or join the kvm group"
        default: "cannot open it"
        }
      throw VMMError(.kvmUnavailable, "\(path): \(hint)", cause: error)
    }
    do throws(VMMError) {
      let version = try kvmIoctl(fd, CKVM_GET_API_VERSION, "KVM_GET_API_VERSION", value: 0)
      guard version == 12 else { throw VMMError(.kvmUnavailable, "\(path): KVM API version \(version), need 12") }
      vcpuMmapSize = Int(try kvmIoctl(fd, CKVM_GET_VCPU_MMAP_SIZE, "KVM_GET_VCPU_MMAP_SIZE", value: 0))
      guard try check(CKVM_CAP_USER_MEMORY) > 0 else {
        throw VMMError(.kvmUnavailable, "\(path): KVM_CAP_USER_MEMORY missing")
      }
    } catch {
      fd.close()
      throw error
    }
  }

  deinit { fd.close() }

  public func check(_ capability: Int32) throws(VMMError) -> Int32 {
    try kvmIoctl(fd, CKVM_CHECK_EXTENSION, "KVM_CHECK_EXTENSION", value: UInt(capability))
  }

  /// CPUID entries KVM supports on this host, to hand to every vCPU.
  public func supportedCPUID() throws(VMMError) -> [kvm_cpuid_entry2] {
    var capacity: UInt32 = 128
    while true {
      let size = ckvm_cpuid2_size(capacity)
      let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
      defer { raw.deallocate() }
      raw.initializeMemory(as: UInt8.self, repeating: 0, count: size)
      let cpuid = raw.assumingMemoryBound(to: kvm_cpuid2.self)
      cpuid.pointee.nent = capacity
      do {
        _ = try kvmIoctl(fd, CKVM_GET_SUPPORTED_CPUID, "KVM_GET_SUPPORTED_CPUID", raw)
      } catch {
        if case let cause as SyscallError = error.cause, cause.errno == Errno(E2BIG), capacity < 4096 {
          capacity *= 2
          continue
        }
        throw error
      }
      let entries = ckvm_cpuid2_entries(cpuid)!
      return (0..<Int(cpuid.pointee.nent)).map { entries[$0] }
    }
  }

  /// MSR indices KVM can save and restore for a vCPU.
  public func msrIndexList() throws(VMMError) -> [UInt32] {
    var capacity: UInt32 = 256
    while true {
      let size = ckvm_msr_list_size(capacity)
      let raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
      defer { raw.deallocate() }
      let list = raw.assumingMemoryBound(to: kvm_msr_list.self)
      list.pointee.nmsrs = capacity
      do {
        _ = try kvmIoctl(fd, CKVM_GET_MSR_INDEX_LIST, "KVM_GET_MSR_INDEX_LIST", raw)
      } catch {
        if case let cause as SyscallError = error.cause, cause.errno == Errno(E2BIG), capacity < 8192 {
          capacity = max(capacity * 2, list.pointee.nmsrs)
          continue
        }
        throw error
      }
      let indices = ckvm_msr_list_indices(list)!
      return (0..<Int(list.pointee.nmsrs)).map { indices[$0] }
    }
  }

  public func createVM() throws(VMMError) -> VMHandle {
    let vmfd = try kvmIoctl(fd, CKVM_CREATE_VM, "KVM_CREATE_VM", value: 0)
    return VMHandle(fd: FileDescriptor(rawValue: vmfd), system: self)
  }
}

/// A KVM virtual machine: memory slots and vCPUs.
public final class VMHandle: @unchecked Sendable {
  public let fd: FileDescriptor
  public let system: KVMSystem
  public internal(set) var hasIrqchip = false

  init(fd: FileDescriptor, system: KVMSystem) {
    self.fd = fd
    self.system = system
  }

  deinit { fd.close() }

  public func setMemoryRegion(slot: UInt32, guestPhysical: UInt64, size: UInt64, host: UnsafeMutableRawPointer)
    throws(VMMError)
  {
    var region = kvm_userspace_memory_region(
      slot: slot, flags: 0, guest_phys_addr: guestPhysical, memory_size: size,
      userspace_addr: UInt64(UInt(bitPattern: host)))
    try kvmIoctl(fd, CKVM_SET_USER_MEMORY_REGION, "KVM_SET_USER_MEMORY_REGION", &region)
  }

  /// Intel VMX needs a TSS region below 4 GiB; PVM and AMD accept and ignore it.
  public func setTSSAddress(_ address: UInt64) throws(VMMError) {
    _ = try kvmIoctl(fd, CKVM_SET_TSS_ADDR, "KVM_SET_TSS_ADDR", value: UInt(address))
  }

  public func createVCPU(index: UInt32) throws(VMMError) -> FileDescriptor {
    FileDescriptor(rawValue: try kvmIoctl(fd, CKVM_CREATE_VCPU, "KVM_CREATE_VCPU", value: UInt(index)))
  }
}

// MARK: In-kernel interrupt controllers and timers (Linux guests on hardware KVM)

extension VMHandle {
  /// Intel VMX needs an identity-mapped page for real mode below 4 GiB; AMD ignores it.
  public func setIdentityMapAddress(_ address: UInt64) throws(VMMError) {
    var value = address
    try kvmIoctl(fd, CKVM_SET_IDENTITY_MAP_ADDR, "KVM_SET_IDENTITY_MAP_ADDR", &value)
  }

  /// Creates the in-kernel PIC pair, IOAPIC and per-vCPU local APICs (before any vCPU exists),
  /// then the PIT. GSIs 0–23 are routed to the IOAPIC pins (0–15 also to the PICs).
  public func createInterruptControllers() throws(VMMError) {
    _ = try kvmIoctl(fd, CKVM_CREATE_IRQCHIP, "KVM_CREATE_IRQCHIP", value: 0)
    hasIrqchip = true
    var pit = kvm_pit_config()
    pit.flags = CKVM_PIT_SPEAKER_DUMMY
    try kvmIoctl(fd, CKVM_CREATE_PIT2, "KVM_CREATE_PIT2", &pit)
  }

  /// Makes every write to `eventFD` an edge on `gsi` (KVM raises and lowers the line).
  public func registerIrqfd(_ eventFD: EventFD, gsi: UInt32) throws(VMMError) {
    var request = kvm_irqfd()
    request.fd = UInt32(bitPattern: eventFD.fd.rawValue)
    request.gsi = gsi
    try kvmIoctl(fd, CKVM_IRQFD, "KVM_IRQFD", &request)
  }

  /// The raw `kvm_irqchip` of one chip (PIC master, PIC slave, IOAPIC).
  public func irqchipState(_ chip: UInt32) throws(VMMError) -> [UInt8] {
    var state = kvm_irqchip()
    state.chip_id = chip
    try kvmIoctl(fd, CKVM_GET_IRQCHIP, "KVM_GET_IRQCHIP", &state)
    return rawBytes(of: state)
  }

  public func setIrqchipState(_ bytes: [UInt8]) throws(VMMError) {
    var state = value(kvm_irqchip.self, from: bytes)
    try kvmIoctl(fd, CKVM_SET_IRQCHIP, "KVM_SET_IRQCHIP", &state)
  }

  public func pitState() throws(VMMError) -> [UInt8] {
    var state = kvm_pit_state2()
    try kvmIoctl(fd, CKVM_GET_PIT2, "KVM_GET_PIT2", &state)
    return rawBytes(of: state)
  }

  public func setPITState(_ bytes: [UInt8]) throws(VMMError) {
    var state = value(kvm_pit_state2.self, from: bytes)
    try kvmIoctl(fd, CKVM_SET_PIT2, "KVM_SET_PIT2", &state)
  }

  /// kvmclock as the guest sees it now.
  public func clockState() throws(VMMError) -> [UInt8] {
    var clock = kvm_clock_data()
    try kvmIoctl(fd, CKVM_GET_CLOCK, "KVM_GET_CLOCK", &clock)
    return rawBytes(of: clock)
  }

  /// Continues kvmclock from the saved value (KVM only takes the clock value; flags must be 0).
  public func setClockState(_ bytes: [UInt8]) throws(VMMError) {
    var clock = value(kvm_clock_data.self, from: bytes)
    clock.flags = 0
    try kvmIoctl(fd, CKVM_SET_CLOCK, "KVM_SET_CLOCK", &clock)
  }
}
