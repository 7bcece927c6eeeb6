import CKVM
import Protocol
import Testing

@testable import VMMCore

@Suite("Linux snapshot records")
struct LinuxStateTests {
  @Test("VM config v2 carries the irqchip flag; v1 reads as a test guest; newer is refused")
  func vmConfig() throws {
    let config = StoredVMConfig(guestCID: 7, virtioDevices: 2, flags: StoredVMConfig.flagInKernelIrqchip)
    #expect(try StoredVMConfig(config.bytes, source: "t") == config)
    var v1 = ByteWriter()
    v1.u32(3)
    v1.u32(1)
    let old = try StoredVMConfig(v1.bytes, version: 1, source: "t")
    #expect(old == StoredVMConfig(guestCID: 3, virtioDevices: 1, flags: 0))
    #expect(throws: ProtocolError.self) { try StoredVMConfig(config.bytes, version: 3, source: "t") }
  }

  @Test("irqchip records round-trip and refuse a wrong count or size")
  func irqchips() throws {
    let size = MemoryLayout<kvm_irqchip>.size
    let chips = (0..<3).map { [UInt8](repeating: UInt8($0), count: size) }
    let record = StoredIrqchips(chips: chips)
    #expect(try StoredIrqchips(record.bytes, source: "t") == record)
    #expect(throws: ProtocolError.self) {
      try StoredIrqchips(StoredIrqchips(chips: Array(chips.prefix(2))).bytes, source: "t")
    }
    #expect(throws: ProtocolError.self) {
      try StoredIrqchips(StoredIrqchips(chips: [[1], [2], [3]]).bytes, source: "t")
    }
  }
}
