import Testing

@testable import VMMCore

@Suite("ACPI tables and AML")
struct ACPITests {
  @Test("integers use the shortest AML encoding")
  func integers() {
    #expect(AML.integer(0).bytes == [0x00])
    #expect(AML.integer(1).bytes == [0x01])
    #expect(AML.integer(5).bytes == [0x0A, 5])
    #expect(AML.integer(0x1234).bytes == [0x0B, 0x34, 0x12])
    #expect(AML.integer(0xD000_0000).bytes == [0x0C, 0, 0, 0, 0xD0])
    #expect(AML.integer(1 << 40).bytes == [0x0E, 0, 0, 0, 0, 0, 1, 0, 0])
  }

  @Test("PkgLength counts its own bytes and switches to multi-byte at 63")
  func packageLength() {
    #expect(AML.packageLength(0) == [0x01])
    #expect(AML.packageLength(62) == [0x3F])
    // 63 content bytes + 2 length bytes = 65 = 0x41: lead 0x41 (1 extra byte, nibble 1), then 0x04.
    #expect(AML.packageLength(63) == [0x41, 0x04])
    #expect(AML.packageLength(4000) == [0x42, 0xFA])  // 4002 = 0xFA2
    let long = AML.packageLength(5000)
    let decoded = Int(long[0] & 0x0F) | Int(long[1]) << 4 | (long.count > 2 ? Int(long[2]) << 12 : 0)
    #expect(decoded == 5000 + long.count)
  }

  @Test("names pad segments and encode root and dual paths")
  func names() {
    #expect(AML.nameString("_SB") == Array("_SB_".utf8))
    #expect(AML.nameString("\\_SB_") == [0x5C] + Array("_SB_".utf8))
    #expect(AML.nameString("\\_SB_.COM1") == [0x5C, 0x2E] + Array("_SB_COM1".utf8))
  }

  @Test("EISA ids compress like ASL's EISAID()")
  func eisaID() {
    // EISAID("PNP0501") is 0x0105D041 (stored little endian: 41 D0 05 01).
    #expect(AML.compressedEISAID("PNP0501") == 0x0105_D041)
    #expect(AML.eisaID("PNP0501").bytes == [0x0C, 0x41, 0xD0, 0x05, 0x01])
  }

  @Test("a virtio-mmio device carries _HID LNRO0005 and a Memory32Fixed + Interrupt _CRS")
  func virtioDevice() {
    let aml = ACPITables.dsdtAML(
      virtio: [.init(base: 0xD000_0000, size: 0x1000, gsi: 5)], uartIRQ: 4)
    let hid = AML.name("_HID", .string("LNRO0005")).bytes
    #expect(aml.firstRange(of: hid) != nil)
    let memory: [UInt8] = [0x86, 0x09, 0x00, 0x01, 0x00, 0x00, 0x00, 0xD0, 0x00, 0x10, 0x00, 0x00]
    #expect(aml.firstRange(of: memory) != nil)
    let interrupt: [UInt8] = [0x89, 0x06, 0x00, 0x03, 0x01, 0x05, 0x00, 0x00, 0x00]
    #expect(aml.firstRange(of: interrupt) != nil)
    // The serial port: IO(Decode16, 0x3F8, 0x3F8, 1, 8) and IRQNoFlags() {4}.
    #expect(aml.firstRange(of: [0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x01, 0x08]) != nil)
    #expect(aml.firstRange(of: [0x22, 0x10, 0x00]) != nil)
    #expect(aml.firstRange(of: [0x08] + Array("_S5_".utf8) + [0x12]) != nil)
  }

  @Test("a NIC is described in the third virtio-mmio window on GSI 7, with or without a disk")
  func nicDevice() {
    for hasDisk in [false, true] {
      let devices = VirtualMachine.virtioDevices(hasDisk: hasDisk, hasNIC: true)
      #expect(devices.count == (hasDisk ? 3 : 2))
      #expect(devices.last == .init(base: 0xD000_2000, size: 0x1000, gsi: LinuxIRQ.net))
      let aml = ACPITables.dsdtAML(virtio: devices, uartIRQ: 4)
      #expect(aml.firstRange(of: [0x86, 0x09, 0x00, 0x01, 0x00, 0x20, 0x00, 0xD0, 0x00, 0x10, 0x00, 0x00]) != nil)
      #expect(aml.firstRange(of: [0x89, 0x06, 0x00, 0x03, 0x01, 0x07, 0x00, 0x00, 0x00]) != nil)
    }
    #expect(VirtualMachine.virtioDevices(hasDisk: false).count == 1)
  }

  @Test("every table checksums to zero and the RSDP points at the XSDT")
  func checksums() {
    let built = ACPITables.build(
      base: 0xE_0000, vcpuCount: 2, virtio: [.init(base: 0xD000_0000, size: 0x1000, gsi: 5)])
    let b = built.bytes
    #expect(Array(b[0..<8]) == Array("RSD PTR ".utf8))
    #expect(ACPITables.checksum(b[0..<20]) == 0)
    #expect(ACPITables.checksum(b[0..<36]) == 0)
    func u32(_ at: Int) -> Int { (0..<4).reduce(0) { $0 | Int(b[at + $1]) << (8 * $1) } }
    func u64(_ at: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(b[at + $1]) << (8 * UInt64($1)) } }
    let xsdt = Int(u64(24) - 0xE_0000)
    #expect(Array(b[xsdt..<xsdt + 4]) == Array("XSDT".utf8))
    var tables = [xsdt]
    for i in 0..<2 { tables.append(Int(u64(xsdt + 36 + 8 * i) - 0xE_0000)) }
    let fadt = tables[1]
    #expect(Array(b[fadt..<fadt + 4]) == Array("FACP".utf8))
    #expect(u32(fadt + 4) == 276)
    #expect(u32(fadt + 112) & (1 << 20) != 0)  // HW_REDUCED_ACPI
    tables.append(Int(u64(fadt + 140) - 0xE_0000))  // X_DSDT
    for t in tables {
      let length = u32(t + 4)
      #expect(ACPITables.checksum(b[t..<t + length]) == 0, "table at \(t)")
    }
    let madt = tables[2]
    #expect(Array(b[madt..<madt + 4]) == Array("APIC".utf8))
    // Two local APICs (type 0), one IOAPIC (type 1), one override (type 2).
    #expect(u32(madt + 4) == 44 + 2 * 8 + 12 + 10)
    #expect(Array(b[madt + 44..<madt + 48]) == [0, 8, 0, 0])
    #expect(Array(b[madt + 52..<madt + 56]) == [0, 8, 1, 1])
  }

  @Test("the sleep control register powers off only on SLP_EN with S5")
  func sleepControl() {
    final class Flag: @unchecked Sendable { var count = 0 }
    let flag = Flag()
    let device = ACPISleepControl { flag.count += 1 }
    device.portWrite(offset: 0, size: 1, value: 5 << 2)  // type without SLP_EN
    device.portWrite(offset: 0, size: 1, value: 3 << 2 | 0x20)  // S3 is not offered
    #expect(flag.count == 0)
    device.portWrite(offset: 0, size: 1, value: 5 << 2 | 0x20)
    #expect(flag.count == 1)
  }
}

extension Array where Element == UInt8 {
  func firstRange(of needle: [UInt8]) -> Range<Int>? {
    guard needle.count <= count else { return nil }
    for start in 0...(count - needle.count) where self[start..<start + needle.count].elementsEqual(needle) {
      return start..<start + needle.count
    }
    return nil
  }
}
