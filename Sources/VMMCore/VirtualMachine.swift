import CKVM
import Logging
import Protocol
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// How a VM ended.
public enum MachineExit: Sendable, Equatable, CustomStringConvertible {
  case poweredOff(exitCode: UInt8)
  case reset
  case stopped
  case crashed(String)
  /// The memory pager went away and the policy was to fail.
  case pagerLost(String)

  public var description: String {
    switch self {
    case .pagerLost(let reason): "memory pager lost: \(reason)"
    case .poweredOff(let code): "guest powered off (exit code \(code))"
    case .reset: "guest reset"
    case .stopped: "stopped by the VMM's owner"
    case .crashed(let reason): "guest crashed: \(reason)"
    }
  }
}

/// What a VM is made of besides memory: the knobs of one microVM.
public struct MachineConfig: Sendable {
  public var memorySize: UInt64
  public var vcpuCount: UInt32
  public var guestCID: UInt32
  /// The per-VM Unix socket of the vsock device (Firecracker's `uds_path`).
  public var vsockSocketPath: String
  /// Receives each console line of the guest.
  public var consoleSink: @Sendable (String) -> Void
  /// The virtio-blk disk of a Linux guest (none for the test guest).
  public var disk: BlockDeviceConfig?
  /// The virtio-net NIC (none: the VM has no network device).
  public var network: NetworkConfig?

  public init(
    memorySize: UInt64 = 64 << 20, vcpuCount: UInt32 = 1, guestCID: UInt32 = 3, vsockSocketPath: String,
    disk: BlockDeviceConfig? = nil, network: NetworkConfig? = nil, consoleSink: @escaping @Sendable (String) -> Void
  ) {
    self.memorySize = memorySize
    self.vcpuCount = vcpuCount
    self.guestCID = guestCID
    self.vsockSocketPath = vsockSocketPath
    self.disk = disk
    self.network = network
    self.consoleSink = consoleSink
  }
}

/// Interrupt lines of a Linux guest's devices (GSIs of the in-kernel IOAPIC, ISA-style edges).
public enum LinuxIRQ {
  public static let uart: UInt32 = 4
  public static let vsock: UInt32 = 5
  public static let block: UInt32 = 6
  public static let net: UInt32 = 7
}

/// One microVM: KVM VM, guest memory, vCPU threads and devices.
public final class VirtualMachine: @unchecked Sendable {
  public static let kickSignal = SIGUSR1

  public let config: MachineConfig
  public let memory: GuestMemory
  public let guestKind: String
  public let guestImageDigest: String
  /// The snapshot this VM was restored from (its tag, i.e. directory name), if any.
  public let restoredFrom: String?
  let kvm: KVMSystem
  let vm: VMHandle
  let vcpus: [VCPU]
  let uart: UART16550
  let vsock: VirtioVsock
  /// The virtio-blk device of a Linux guest with a disk.
  let block: VirtioBlock?
  /// The virtio-net NIC, in the third virtio-mmio window whether or not a disk exists.
  let net: VirtioNet?
  let bus: IOBus
  /// A Linux guest: in-kernel irqchip and PIT, device interrupts through irqfds, ACPI.
  public let isLinux: Bool
  /// The irqfds of the devices (kept open for the VM's life).
  private let interruptFDs: [EventFD]
  let cpuid: [kvm_cpuid_entry2]
  let logger: Logger
  public let eventLoop: EventLoop

  // Run control, guarded by `control`.
  private let control = ConditionLock()
  private var threads: [OSThread] = []
  private var liveThreads = 0
  private var pauseRequested = false
  private var stopRequested = false
  private var parkedForPause = 0
  /// Bumped by every device wake; each vCPU parked on HLT resumes once it sees a value it has
  /// not consumed yet, so one wake reaches every vCPU (the test guest's APs park in hlt too).
  private var wakeGeneration: UInt64 = 0
  private var wakeSeen: [UInt64]
  private var exitReason: MachineExit?
  private var exitHandlers: [@Sendable (MachineExit) -> Void] = []

  // MARK: Construction

  init(
    config: MachineConfig, memory: GuestMemory, kvm: KVMSystem, guestKind: String, guestImageDigest: String,
    restoredFrom: String?, logger: Logger
  ) throws(VMMError) {
    self.config = config
    self.memory = memory
    self.kvm = kvm
    self.guestKind = guestKind
    self.guestImageDigest = guestImageDigest
    self.restoredFrom = restoredFrom
    self.logger = logger
    if guestKind == "linux" && kvm.flavor == .pvm {
      // Measured: the irqchip and PIT are created, then a stock kernel runs without ever
      // printing; refuse instead of hanging.
      throw VMMError(
        .kvmUnavailable,
        "this host's /dev/kvm is PVM (kvm_pvm, no hardware virtualization): a stock Linux kernel cannot run on it; Linux guests need KVM on VMX/SVM (see docs/linux-guests.md)"
      )
    }
    eventLoop = try EventLoop()
    let vm = try kvm.createVM()
    self.vm = vm
    let linux = guestKind == "linux"
    isLinux = linux
    try vm.setMemoryRegion(slot: 0, guestPhysical: 0, size: memory.size, host: memory.regions[0].host)
    if linux {
      // Both live in the 4 GiB hole below the IOAPIC, outside guest RAM; the irqchip must exist
      // before the vCPUs so each gets its local APIC.
      try vm.setIdentityMapAddress(0xFFFB_C000)
      try vm.setTSSAddress(0xFFFB_D000)
      try vm.createInterruptControllers()
    } else if kvm.flavor == .hardware {
      try vm.setTSSAddress(0xFFFB_D000)
    }
    var created: [VCPU] = []
    for index in 0..<config.vcpuCount { created.append(try VCPU(vm: vm, index: index)) }
    vcpus = created
    wakeSeen = Array(repeating: 0, count: created.count)
    cpuid = try kvm.supportedCPUID()

    // Devices call back into the VM weakly: they must not keep it alive.
    let wake = WeakBox<VirtualMachine>()
    let loop = eventLoop
    let log = logger
    var irqfds: [EventFD] = []
    /// An edge on `gsi` per call (Linux), or a wake of a vCPU parked on HLT (test guest).
    func interruptLine(_ gsi: UInt32) throws(VMMError) -> @Sendable () -> Void {
      guard linux else { return { wake.value?.notifyGuestWork() } }
      let fd: EventFD
      do { fd = try EventFD() } catch { throw VMMError(.io, "cannot create an irqfd eventfd", cause: error) }
      try vm.registerIrqfd(fd, gsi: gsi)
      irqfds.append(fd)
      return { fd.signal() }
    }
    uart = UART16550(sink: config.consoleSink, interruptLine: linux ? try interruptLine(LinuxIRQ.uart) : nil)
    vsock = VirtioVsock(
      base: X86Layout.virtioMMIOBase, guestCID: UInt64(config.guestCID), memory: memory,
      socketPath: config.vsockSocketPath,
      onGuestWork: try interruptLine(LinuxIRQ.vsock),
      onHostWork: { loop.wake() },
      onError: { log.warning("\($0)") })
    if let disk = config.disk {
      block = try VirtioBlock(
        base: X86Layout.virtioMMIOBase + X86Layout.virtioMMIOStride, config: disk, memory: memory,
        interrupt: try interruptLine(LinuxIRQ.block), onError: { log.warning("\($0)") })
    } else {
      block = nil
    }
    if let network = config.network {
      net = VirtioNet(
        base: X86Layout.virtioMMIOBase + 2 * X86Layout.virtioMMIOStride, config: network, memory: memory,
        onGuestWork: try interruptLine(LinuxIRQ.net), onHostWork: { loop.wake() }, onError: { log.warning("\($0)") })
    } else {
      net = nil
    }
    interruptFDs = irqfds
    let power = PowerControl { event in
      switch event {
      case .powerOff(let code): wake.value?.finish(.poweredOff(exitCode: code))
      case .reset: wake.value?.finish(.reset)
      }
    }
    let reset = I8042ResetPort { wake.value?.finish(.reset) }
    var ports: [any PortIODevice] = [uart, power, reset]
    if !linux { ports.append(VCPUWakePort { wake.value?.notifyGuestWork() }) }
    if linux { ports.append(ACPISleepControl { wake.value?.finish(.poweredOff(exitCode: 0)) }) }
    var mmio: [any MMIODevice] = [vsock]
    if let block { mmio.append(block) }
    if let net { mmio.append(net) }
    bus = IOBus(portDevices: ports, mmioDevices: mmio)
    wake.value = self
    eventLoop.add(vsock)
    if let net { eventLoop.add(net) }
  }

  deinit {
    vsock.shutdown()
    net?.shutdown()
    for fd in interruptFDs { fd.fd.close() }
  }

  /// The virtio-mmio devices in window order (vsock, the disk, the NIC), as ACPI lists them.
  var virtioDevices: [ACPITables.VirtioDevice] { Self.virtioDevices(hasDisk: block != nil, hasNIC: net != nil) }

  /// Windows the test guest's boot info announces: the NIC always has the third window, so a
  /// VM with a NIC announces three (the second is empty without a disk: it reads magic 0).
  var virtioWindowCount: UInt32 { net != nil ? 3 : block != nil ? 2 : 1 }

  static func virtioDevices(hasDisk: Bool, hasNIC: Bool = false) -> [ACPITables.VirtioDevice] {
    var devices = [
      ACPITables.VirtioDevice(base: X86Layout.virtioMMIOBase, size: X86Layout.virtioMMIOStride, gsi: LinuxIRQ.vsock)
    ]
    if hasDisk {
      devices.append(
        ACPITables.VirtioDevice(
          base: X86Layout.virtioMMIOBase + X86Layout.virtioMMIOStride, size: X86Layout.virtioMMIOStride,
          gsi: LinuxIRQ.block))
    }
    if hasNIC {
      devices.append(
        ACPITables.VirtioDevice(
          base: X86Layout.virtioMMIOBase + 2 * X86Layout.virtioMMIOStride, size: X86Layout.virtioMMIOStride,
          gsi: LinuxIRQ.net))
    }
    return devices
  }

  /// Boots `image` (an ELF64 test guest) into fresh memory; the VM is ready to `start()`.
  public static func boot(
    config: MachineConfig, image: [UInt8], imageSource: String, guestKind: String = "test-guest", logger: Logger
  ) throws(VMMError) -> VirtualMachine {
    let elf = try ELFImage(parsing: image, source: imageSource)
    let kvm = try KVMSystem()
    let memory = try GuestMemory.create(size: config.memorySize, backend: .anonymous)
    try X86Boot.writeBootStructures(
      into: memory, vcpuCount: config.vcpuCount, virtioDevices: config.network == nil ? 1 : 3,
      guestCID: config.guestCID)
    try elf.load(image, into: memory, source: imageSource)
    var digest = SHA256()
    digest.update(image)
    let machine = try VirtualMachine(
      config: config, memory: memory, kvm: kvm, guestKind: guestKind,
      guestImageDigest: "sha256:" + SHA256.hex(of: digest.finalize()), restoredFrom: nil, logger: logger)
    for vcpu in machine.vcpus {
      try vcpu.setCPUID(machine.cpuid)
      try vcpu.setupLongMode(entry: elf.entry, bootInfo: X86Layout.bootInfoAddress)
    }
    try machine.vsock.listen()
    return machine
  }

  // MARK: Running

  /// Starts one thread per vCPU.
  public func start() throws(VMMError) {
    do {
      try OSThread.installKickHandler(signal: Self.kickSignal)
      for vcpu in vcpus {
        control.withLock { liveThreads += 1 }
        let thread = try OSThread.start(name: "vcpu\(vcpu.index)") { [self] in runLoop(vcpu) }
        control.withLock { threads.append(thread) }
      }
    } catch {
      finish(.crashed("cannot start vCPU threads: \(error)"))
      throw VMMError(.kvmCall, "cannot start vCPU threads", cause: error)
    }
    vsock.kick()
  }

  /// Registers a handler for the VM's end (called once, from the thread that ended it).
  public func onExit(_ handler: @escaping @Sendable (MachineExit) -> Void) {
    control.withLock { exitHandlers.append(handler) }
  }

  public var exit: MachineExit? { control.withLock { exitReason } }

  public var isPaused: Bool { control.withLock { pauseRequested } }

  /// Stops every vCPU at an instruction boundary and waits until all are parked; the vsock
  /// device then stops writing into guest memory (host data waits in its buffers), so a
  /// snapshot of a paused VM sees device state and memory that agree.
  public func pause() {
    control.withLock {
      pauseRequested = true
      for vcpu in vcpus { vcpu.run.pointee.immediate_exit = 1 }
      for thread in threads { thread.kick(signal: Self.kickSignal) }
      control.broadcast()
      while parkedForPause < liveThreads { control.wait() }
    }
    // Outside the run-control lock: the device takes its own lock and may wake vCPUs (lock order
    // device → control).
    vsock.suspendDelivery()
    net?.suspendDelivery()
  }

  public func resume() {
    control.withLock {
      pauseRequested = false
      control.broadcast()
    }
    vsock.resumeDelivery()
    net?.resumeDelivery()
  }

  /// Ends the VM with `reason` (the first reason wins) and releases every vCPU thread.
  func finish(_ reason: MachineExit) {
    let handlers: [@Sendable (MachineExit) -> Void] = control.withLock {
      guard exitReason == nil else { return [] }
      exitReason = reason
      stopRequested = true
      for vcpu in vcpus { vcpu.run.pointee.immediate_exit = 1 }
      for thread in threads where thread.handle != pthread_self() { thread.kick(signal: Self.kickSignal) }
      control.broadcast()
      return exitHandlers
    }
    if !handlers.isEmpty {
      uart.flush()
      eventLoop.wake()
      for handler in handlers { handler(reason) }
    }
  }

  public func stop() { finish(.stopped) }

  /// Ends the VM for a reason found outside the vCPUs (e.g. its pager is gone).
  public func terminate(_ reason: MachineExit) { finish(reason) }

  /// Interrupts every vCPU once (pause and resume): a vCPU stalled in a page fault whose event
  /// was taken by a pager that died re-raises the fault, so a new pager sees it.
  public func kickVCPUs() {
    guard !isPaused else { return }
    pause()
    resume()
  }

  /// Releases host-side resources that outlive the vCPUs: the vsock socket file and connections.
  public func close() {
    vsock.shutdown()
    net?.shutdown()
  }

  /// What the NIC counted (nil without a NIC).
  public var networkStatistics: NetStatistics? { net?.statistics }

  /// Joins the vCPU threads after the VM has finished.
  public func join() {
    let all = control.withLock { threads }
    for thread in all where thread.handle != pthread_self() { thread.join() }
  }

  /// A device put something in a used ring: a vCPU parked on HLT may continue.
  func notifyGuestWork() {
    control.withLock {
      wakeGeneration &+= 1
      control.broadcast()
    }
  }

  private func runLoop(_ vcpu: VCPU) {
    defer {
      control.withLock {
        liveThreads -= 1
        control.broadcast()
      }
    }
    while true {
      let proceed: Bool = control.withLock {
        while pauseRequested && !stopRequested {
          parkedForPause += 1
          control.broadcast()
          control.wait()
          parkedForPause -= 1
        }
        if stopRequested { return false }
        // Cleared under the lock: a pause that comes after this sets it again before the kick.
        vcpu.run.pointee.immediate_exit = 0
        return true
      }
      guard proceed else { return }
      let rc = ckvm_ioctl(vcpu.fd.rawValue, CKVM_RUN, nil)
      if rc < 0 {
        let err = Errno.current
        if err == .interrupted || err == .wouldBlock { continue }
        finish(.crashed("KVM_RUN on vCPU \(vcpu.index) failed: \(err) at rip=\(hex64(vcpu.instructionPointer))"))
        return
      }
      if let failure = handleExit(vcpu) {
        finish(failure)
        return
      }
    }
  }

  /// Handles one exit; returns a reason when the VM must end.
  private func handleExit(_ vcpu: VCPU) -> MachineExit? {
    let run = vcpu.run
    let raw = UnsafeMutableRawPointer(run)
    switch Int32(run.pointee.exit_reason) {
    case KVM_EXIT_IO:
      let io = run.pointee.io
      let size = Int(io.size)
      for i in 0..<Int(io.count) {
        let p = raw + Int(io.data_offset) + i * size
        if io.direction == UInt8(KVM_EXIT_IO_OUT) {
          let value: UInt32 =
            switch size {
            case 1: UInt32(p.load(as: UInt8.self))
            case 2: UInt32(p.loadUnaligned(as: UInt16.self))
            default: p.loadUnaligned(as: UInt32.self)
            }
          bus.portWrite(io.port, size: size, value: value)
        } else {
          let value = bus.portRead(io.port, size: size)
          switch size {
          case 1: p.storeBytes(of: UInt8(truncatingIfNeeded: value), as: UInt8.self)
          case 2: p.storeBytes(of: UInt16(truncatingIfNeeded: value), toByteOffset: 0, as: UInt16.self)
          default: p.storeBytes(of: value, toByteOffset: 0, as: UInt32.self)
          }
        }
      }
      return nil
    case KVM_EXIT_MMIO:
      let mmio = run.pointee.mmio
      let length = Int(min(mmio.len, 8))
      withUnsafeMutableBytes(of: &run.pointee.mmio.data) { data in
        if mmio.is_write != 0 {
          var value: UInt64 = 0
          for i in 0..<length { value |= UInt64(data[i]) << (8 * UInt64(i)) }
          bus.mmioWrite(mmio.phys_addr, size: length, value: value)
        } else {
          let value = bus.mmioRead(mmio.phys_addr, size: length)
          for i in 0..<length { data[i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
        }
      }
      return nil
    case KVM_EXIT_HLT:
      // No in-kernel irqchip: the guest halts when idle; park until a device has work for it.
      control.withLock {
        let index = Int(vcpu.index)
        while wakeSeen[index] == wakeGeneration && !pauseRequested && !stopRequested { control.wait() }
        wakeSeen[index] = wakeGeneration
      }
      return nil
    case KVM_EXIT_SHUTDOWN:
      return .crashed(
        "guest triple-faulted (KVM_EXIT_SHUTDOWN) on vCPU \(vcpu.index) at rip=\(hex64(vcpu.instructionPointer))")
    case KVM_EXIT_INTERNAL_ERROR:
      return .crashed(
        "KVM_EXIT_INTERNAL_ERROR (suberror \(run.pointee.internal.suberror)) on vCPU \(vcpu.index) at rip=\(hex64(vcpu.instructionPointer))"
      )
    case KVM_EXIT_FAIL_ENTRY:
      return .crashed(
        "KVM_EXIT_FAIL_ENTRY (hardware reason \(hex64(run.pointee.fail_entry.hardware_entry_failure_reason))) on vCPU \(vcpu.index) at rip=\(hex64(vcpu.instructionPointer))"
      )
    case KVM_EXIT_SYSTEM_EVENT:
      switch Int32(run.pointee.system_event.type) {
      case KVM_SYSTEM_EVENT_SHUTDOWN: return .poweredOff(exitCode: 0)
      case KVM_SYSTEM_EVENT_RESET: return .reset
      default:
        return .crashed(
          "KVM_EXIT_SYSTEM_EVENT type \(run.pointee.system_event.type) at rip=\(hex64(vcpu.instructionPointer))")
      }
    case KVM_EXIT_INTR:
      return nil
    default:
      return .crashed(
        "unhandled KVM exit reason \(run.pointee.exit_reason) on vCPU \(vcpu.index) at rip=\(hex64(vcpu.instructionPointer))"
      )
    }
  }
}

/// A weak reference that closures can capture (devices must not keep their VM alive).
final class WeakBox<T: AnyObject>: @unchecked Sendable {
  weak var value: T?
}
