/// The ACPI tables a Linux guest reads to find its CPUs, interrupt controllers and devices
/// (ACPI 6.x §5.2): RSDP → XSDT → FADT (hardware-reduced) → DSDT, and the MADT.
///
/// Hardware-reduced ACPI has no SCI, PM timer or fixed event blocks: power off goes through the
/// FADT sleep control register with the `\_S5_` package, reset through the FADT reset register.
public enum ACPITables {
  public static let oemID = Array("FORKD ".utf8)
  public static let oemTableID = Array("FORKDVMM".utf8)
  public static let creatorID = Array("FKDV".utf8)

  /// Ports of the hardware-reduced sleep registers (see `ACPISleepControl`).
  public static let sleepControlPort: UInt16 = 0x600
  public static let sleepStatusPort: UInt16 = 0x601
  public static let ioapicAddress: UInt32 = 0xFEC0_0000
  public static let localAPICAddress: UInt32 = 0xFEE0_0000

  /// One virtio-mmio device as the DSDT describes it.
  public struct VirtioDevice: Sendable, Equatable {
    public var base: UInt64
    public var size: UInt64
    public var gsi: UInt32
    public init(base: UInt64, size: UInt64, gsi: UInt32) {
      self.base = base
      self.size = size
      self.gsi = gsi
    }
  }

  public struct Built: Sendable {
    /// Every table laid out from `base`: write `bytes` at `base`, the RSDP is first.
    public var base: UInt64
    public var bytes: [UInt8]
    public var rsdpAddress: UInt64 { base }
  }

  /// Lays out RSDP, XSDT, FADT, DSDT and MADT contiguously from `base` (each 16-byte aligned).
  public static func build(base: UInt64, vcpuCount: UInt32, virtio: [VirtioDevice], uartIRQ: UInt8 = 4) -> Built {
    let dsdt = self.dsdt(virtio: virtio, uartIRQ: uartIRQ)
    let madt = self.madt(vcpuCount: vcpuCount)
    // Fixed order: RSDP (36) | XSDT | FADT | DSDT | MADT.
    func align(_ v: UInt64) -> UInt64 { (v + 15) & ~15 }
    let xsdtAddress = align(base + 36)
    let xsdtLength = UInt64(36 + 8 * 2)
    let fadtAddress = align(xsdtAddress + xsdtLength)
    let dsdtAddress = align(fadtAddress + 276)
    let madtAddress = align(dsdtAddress + UInt64(dsdt.count))
    let fadt = self.fadt(dsdtAddress: dsdtAddress)
    let xsdt = table("XSDT", revision: 1, body: AML.le(fadtAddress, 8) + AML.le(madtAddress, 8))
    var out = [UInt8](repeating: 0, count: Int(madtAddress - base) + madt.count)
    func put(_ bytes: [UInt8], at address: UInt64) {
      out.replaceSubrange(Int(address - base)..<Int(address - base) + bytes.count, with: bytes)
    }
    put(rsdp(xsdtAddress: xsdtAddress), at: base)
    put(xsdt, at: xsdtAddress)
    put(fadt, at: fadtAddress)
    put(dsdt, at: dsdtAddress)
    put(madt, at: madtAddress)
    return Built(base: base, bytes: out)
  }

  /// Sum of all bytes modulo 256; a valid table sums to zero.
  public static func checksum(_ bytes: some Sequence<UInt8>) -> UInt8 {
    bytes.reduce(0, &+)
  }

  /// RSDP revision 2 (ACPI 2.0+): 36 bytes, two checksums.
  public static func rsdp(xsdtAddress: UInt64) -> [UInt8] {
    var b = Array("RSD PTR ".utf8)
    b += [0] + oemID + [2]  // checksum placeholder, OEM id, revision
    b += AML.le(0, 4)  // no RSDT: XSDT only
    b += AML.le(36, 4)
    b += AML.le(xsdtAddress, 8)
    b += [0, 0, 0, 0]  // extended checksum, reserved
    b[8] = 0 &- checksum(b[0..<20])
    b[32] = 0 &- checksum(b)
    return b
  }

  /// A system description table: the 36-byte header, then `body`, checksummed.
  public static func table(_ signature: String, revision: UInt8, body: [UInt8]) -> [UInt8] {
    var b = Array(signature.utf8)
    b += AML.le(UInt64(36 + body.count), 4)
    b += [revision, 0]
    b += oemID + oemTableID
    b += AML.le(1, 4)  // OEM revision
    b += creatorID + AML.le(1, 4)
    b += body
    b[9] = 0 &- checksum(b)
    return b
  }

  /// FADT revision 6 (276 bytes), hardware-reduced, with sleep and reset registers.
  public static func fadt(dsdtAddress: UInt64) -> [UInt8] {
    var body = [UInt8](repeating: 0, count: 276 - 36)
    func put(_ bytes: [UInt8], at offset: Int) {
      body.replaceSubrange((offset - 36)..<(offset - 36 + bytes.count), with: bytes)
    }
    /// Generic Address Structure for one byte-wide I/O port.
    func ioPort(_ port: UInt16) -> [UInt8] { [1, 8, 0, 1] + AML.le(UInt64(port), 8) }
    put(AML.le(dsdtAddress, 4), at: 40)  // DSDT (32-bit)
    // IAPC_BOOT_ARCH: VGA not present (bit 2), CMOS RTC not present (bit 5); no 8042 bit, so
    // the i8042 driver does not probe a keyboard controller that only has a reset line.
    put(AML.le(1 << 2 | 1 << 5, 2), at: 109)
    // Flags: WBINVD (0), RESET_REG_SUP (10), HW_REDUCED_ACPI (20).
    put(AML.le(1 << 0 | 1 << 10 | 1 << 20, 4), at: 112)
    put(ioPort(0x64), at: 116)  // RESET_REG: the i8042 command port
    put([0xFE], at: 128)  // RESET_VALUE: pulse the reset line
    put([5], at: 131)  // FADT minor version (6.5)
    put(AML.le(dsdtAddress, 8), at: 140)  // X_DSDT
    put(ioPort(sleepControlPort), at: 244)
    put(ioPort(sleepStatusPort), at: 256)
    put(Array("FORKDVMM".utf8), at: 268)  // hypervisor vendor identity
    return table("FACP", revision: 6, body: body)
  }

  /// MADT: one enabled local APIC per vCPU (APIC id = index), the IOAPIC at GSI 0, and the ISA
  /// override that routes the PIT's IRQ 0 to GSI 2 (the in-kernel IOAPIC's wiring).
  public static func madt(vcpuCount: UInt32) -> [UInt8] {
    var body = AML.le(UInt64(localAPICAddress), 4) + AML.le(1, 4)  // PCAT_COMPAT: 8259s present
    for index in 0..<vcpuCount {
      body += [0, 8, UInt8(truncatingIfNeeded: index), UInt8(truncatingIfNeeded: index)] + AML.le(1, 4)
    }
    body += [1, 12, 0, 0] + AML.le(UInt64(ioapicAddress), 4) + AML.le(0, 4)
    body += [2, 10, 0, 0] + AML.le(2, 4) + AML.le(0, 2)  // bus ISA, IRQ 0 → GSI 2, conforming
    return table("APIC", revision: 6, body: body)
  }

  /// The DSDT's AML: the serial port, the virtio-mmio devices (`LNRO0005`, what Linux's
  /// virtio_mmio driver matches through ACPI) and the S5 sleep type for power off.
  public static func dsdtAML(virtio: [VirtioDevice], uartIRQ: UInt8) -> [UInt8] {
    var devices: [AML] = [
      .device(
        "COM1",
        [
          .name("_HID", .eisaID("PNP0501")),
          .name("_UID", .integer(0)),
          .name("_CRS", .resources([.io(base: UART16550.com1, length: 8), .irqNoFlags(uartIRQ)])),
        ])
    ]
    for (index, device) in virtio.enumerated() {
      devices.append(
        .device(
          "V" + hexDigits(index, width: 3),
          [
            .name("_HID", .string("LNRO0005")),
            .name("_UID", .integer(UInt64(index))),
            .name("_CCA", .integer(1)),  // cache coherent DMA
            .name(
              "_CRS",
              .resources([
                .memory32Fixed(base: UInt32(device.base), length: UInt32(device.size), writable: true),
                .extendedInterrupt(device.gsi, edgeTriggered: true, activeLow: false),
              ])),
          ]))
    }
    let s5 = AML.name("_S5_", .package([.integer(5), .integer(0), .integer(0), .integer(0)]))
    return s5.bytes + AML.scope("\\_SB_", devices).bytes
  }

  public static func dsdt(virtio: [VirtioDevice], uartIRQ: UInt8) -> [UInt8] {
    table("DSDT", revision: 2, body: dsdtAML(virtio: virtio, uartIRQ: uartIRQ))
  }

  static func hexDigits(_ value: Int, width: Int) -> String {
    let digits = String(value, radix: 16, uppercase: true)
    return String(repeating: "0", count: max(0, width - digits.count)) + digits
  }
}

/// The hardware-reduced ACPI sleep registers: Linux powers off by writing SLP_TYP 5 with
/// SLP_EN (0x20) to the control register; the status register reads as "woken" (never asleep).
public final class ACPISleepControl: PortIODevice, @unchecked Sendable {
  public let portRange: Range<UInt16> = ACPITables.sleepControlPort..<(ACPITables.sleepStatusPort + 1)
  private let onPowerOff: @Sendable () -> Void

  public init(onPowerOff: @escaping @Sendable () -> Void) { self.onPowerOff = onPowerOff }

  public func portRead(offset: UInt16, size: Int) -> UInt32 { 0 }

  public func portWrite(offset: UInt16, size: Int, value: UInt32) {
    // Offset 0: control. SLP_EN with sleep type 5 (S5, soft off); other sleep states are not offered.
    if offset == 0, value & 0x20 != 0, (value >> 2) & 0x7 == 5 { onPowerOff() }
  }
}
