import CKVM
import Syscalls
import Testing

@testable import VMMCore

/// The in-kernel irqchip, PIT and kvmclock state calls work on any KVM (this host's PVM
/// included): what a Linux snapshot saves can be written back into a fresh VM.
@Suite("In-kernel irqchip state", .enabled(if: FileSystem.exists("/dev/kvm"), "no /dev/kvm on this machine"))
struct IrqchipStateTests {
  @Test("PIC, IOAPIC, PIT and kvmclock state round-trip into a second VM")
  func roundTrip() throws {
    let kvm = try KVMSystem()
    let first = try kvm.createVM()
    try first.createInterruptControllers()
    #expect(first.hasIrqchip)
    let chips = [CKVM_IRQCHIP_PIC_MASTER, CKVM_IRQCHIP_PIC_SLAVE, CKVM_IRQCHIP_IOAPIC]
    var saved: [[UInt8]] = []
    for chip in chips { saved.append(try first.irqchipState(chip)) }
    let pit = try first.pitState()
    let clock = try first.clockState()
    #expect(pit.count == MemoryLayout<kvm_pit_state2>.size)

    let second = try kvm.createVM()
    try second.createInterruptControllers()
    for state in saved { try second.setIrqchipState(state) }
    try second.setPITState(pit)
    try second.setClockState(clock)
    for (chip, state) in zip(chips, saved) { #expect(try second.irqchipState(chip) == state) }
    let record = StoredIrqchips(chips: saved)
    #expect(try StoredIrqchips(record.bytes, source: "t").chips == saved)
  }

  @Test("an irqfd can be registered on a GSI of the in-kernel IOAPIC")
  func irqfd() throws {
    let kvm = try KVMSystem()
    let vm = try kvm.createVM()
    try vm.createInterruptControllers()
    let fd = try EventFD()
    defer { fd.fd.close() }
    try vm.registerIrqfd(fd, gsi: LinuxIRQ.vsock)
    fd.signal()
  }
}
