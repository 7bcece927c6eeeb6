/// Where the VMM puts the structures a 64-bit guest needs before its first instruction.
/// The test guest's boot contract (docs/test-guest.md) depends on these numbers.
public enum X86Layout {
  public static let gdtAddress: UInt64 = 0x500
  public static let pml4Address: UInt64 = 0x1000
  public static let pdptAddress: UInt64 = 0x2000
  /// Four page directories (0x3000–0x6fff) map 4 GiB with 2 MiB pages, MMIO window included.
  public static let pageDirectoryAddress: UInt64 = 0x3000
  public static let bootInfoAddress: UInt64 = 0x7000
  public static let initialStackPointer: UInt64 = 0x8_0000
  public static let imageLowestAddress: UInt64 = 0x10_0000
  public static let identityMappedBytes: UInt64 = 4 << 30

  public static let codeSelector: UInt16 = 0x08
  public static let dataSelector: UInt16 = 0x10

  /// The first virtio-mmio device; each device has a 4 KiB window.
  public static let virtioMMIOBase: UInt64 = 0xD000_0000
  public static let virtioMMIOStride: UInt64 = 0x1000
}

/// Pure builders for the boot structures, so they can be unit-tested byte for byte.
public enum X86Boot {
  /// Null, 64-bit code (L=1, P=1, DPL 0, execute/read), data (read/write, 4 GiB flat).
  public static let gdtEntries: [UInt64] = [0, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF]

  /// Identity page tables: PML4[0] → PDPT, PDPT[0..3] → four PDs of 2 MiB pages.
  /// Returns (guest address, 64-bit entry) pairs to write.
  public static func identityPageTables() -> [(address: UInt64, entry: UInt64)] {
    let present: UInt64 = 1
    let writable: UInt64 = 2
    let huge: UInt64 = 0x80
    var result: [(UInt64, UInt64)] = [(X86Layout.pml4Address, X86Layout.pdptAddress | present | writable)]
    for gib in 0..<UInt64(4) {
      let pd = X86Layout.pageDirectoryAddress + gib * 0x1000
      result.append((X86Layout.pdptAddress + gib * 8, pd | present | writable))
      for i in 0..<UInt64(512) {
        let physical = (gib << 30) + (i << 21)
        result.append((pd + i * 8, physical | present | writable | huge))
      }
    }
    return result
  }

  /// Translates a guest virtual address through the identity tables in `memory` (for tests and
  /// for diagnostics); nil when not mapped.
  public static func translate(_ virtual: UInt64, in memory: GuestMemory) -> UInt64? {
    guard let pml4e = memory.read(UInt64.self, at: X86Layout.pml4Address + ((virtual >> 39) & 0x1FF) * 8),
      pml4e & 1 == 1,
      let pdpte = memory.read(UInt64.self, at: (pml4e & 0x000F_FFFF_FFFF_F000) + ((virtual >> 30) & 0x1FF) * 8),
      pdpte & 1 == 1,
      let pde = memory.read(UInt64.self, at: (pdpte & 0x000F_FFFF_FFFF_F000) + ((virtual >> 21) & 0x1FF) * 8),
      pde & 1 == 1, pde & 0x80 != 0
    else { return nil }
    return (pde & 0x000F_FFFF_FFE0_0000) | (virtual & 0x1F_FFFF)
  }

  public static let bootInfoMagic: UInt64 = 0x3154_4F4F_4244_4B46  // "FKDBOOT1"

  /// The `forkd_boot_info` block the test guest reads at 0x7000.
  public static func bootInfo(memorySize: UInt64, vcpuCount: UInt32, virtioDevices: UInt32, guestCID: UInt32) -> [UInt8]
  {
    var bytes: [UInt8] = []
    func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    put(bootInfoMagic)
    put(UInt32(1))
    put(vcpuCount)
    put(memorySize)
    put(X86Layout.virtioMMIOBase)
    put(virtioDevices)
    put(guestCID)
    return bytes
  }

  /// Writes GDT, page tables and boot info into guest memory.
  public static func writeBootStructures(
    into memory: GuestMemory, vcpuCount: UInt32, virtioDevices: UInt32, guestCID: UInt32
  )
    throws(VMMError)
  {
    for (i, entry) in gdtEntries.enumerated() {
      guard memory.write(entry, at: X86Layout.gdtAddress + UInt64(i) * 8) else {
        throw VMMError(.guestMemory, "GDT does not fit in guest memory")
      }
    }
    for (address, entry) in identityPageTables() {
      guard memory.write(entry, at: address) else {
        throw VMMError(.guestMemory, "page tables do not fit in guest memory")
      }
    }
    let info = bootInfo(memorySize: memory.size, vcpuCount: vcpuCount, virtioDevices: virtioDevices, guestCID: guestCID)
    guard memory.writeBytes(info, at: X86Layout.bootInfoAddress) else {
      throw VMMError(.guestMemory, "boot info does not fit in guest memory")
    }
  }
}
