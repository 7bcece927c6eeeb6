import Testing

@testable import VMMCore

@Suite("Boot structures")
struct BootTests {
  @Test("identity page tables map 4 GiB with 2 MiB pages, MMIO window included")
  func pageTables() throws {
    let memory = try GuestMemory.create(size: 8 << 20, backend: .anonymous)
    try X86Boot.writeBootStructures(into: memory, vcpuCount: 1, virtioDevices: 1, guestCID: 3)
    #expect(X86Boot.translate(0x10_0000, in: memory) == 0x10_0000)
    #expect(X86Boot.translate(0x40_1234, in: memory) == 0x40_1234)
    #expect(X86Boot.translate(X86Layout.virtioMMIOBase + 0x70, in: memory) == X86Layout.virtioMMIOBase + 0x70)
    #expect(X86Boot.translate(0xFFFF_F000, in: memory) == 0xFFFF_F000)
    // Nothing above 4 GiB is mapped.
    #expect(X86Boot.translate(4 << 30, in: memory) == nil)
    let entries = X86Boot.identityPageTables()
    #expect(entries.count == 1 + 4 + 4 * 512)
    #expect(entries.allSatisfy { $0.entry & 3 == 3 })
  }

  @Test("GDT has a 64-bit code segment and a flat data segment")
  func gdt() throws {
    let code = X86Boot.gdtEntries[1]
    #expect(code >> 53 & 1 == 1, "L bit")
    #expect(code >> 47 & 1 == 1, "present")
    #expect(code >> 43 & 1 == 1, "executable")
    let data = X86Boot.gdtEntries[2]
    #expect(data >> 43 & 1 == 0, "not executable")
    #expect(data >> 41 & 1 == 1, "writable")
  }

  @Test("boot info carries the contract's fields at fixed offsets")
  func bootInfo() {
    let bytes = X86Boot.bootInfo(memorySize: 64 << 20, vcpuCount: 2, virtioDevices: 1, guestCID: 7)
    func u64(_ at: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(bytes[at + $1]) << (8 * UInt64($1)) } }
    func u32(_ at: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(bytes[at + $1]) << (8 * UInt32($1)) } }
    #expect(bytes.count == 40)
    #expect(u64(0) == 0x3154_4F4F_4244_4B46)
    #expect(u32(8) == 1)
    #expect(u32(12) == 2)
    #expect(u64(16) == 64 << 20)
    #expect(u64(24) == 0xD000_0000)
    #expect(u32(32) == 1)
    #expect(u32(36) == 7)
  }

  @Test("guest memory sizes are validated")
  func memorySize() {
    #expect(throws: VMMError.self) { try GuestMemory.create(size: 0, backend: .anonymous) }
    #expect(throws: VMMError.self) { try GuestMemory.create(size: 3 << 20, backend: .anonymous) }
    #expect(throws: VMMError.self) { try GuestMemory.create(size: 4 << 30, backend: .anonymous) }
  }

  @Test("guest memory accessors refuse anything outside RAM")
  func memoryBounds() throws {
    let memory = try GuestMemory.create(size: 2 << 20, backend: .anonymous)
    #expect(memory.write(UInt64(0x1122_3344_5566_7788), at: 0x1000))
    #expect(memory.read(UInt64.self, at: 0x1000) == 0x1122_3344_5566_7788)
    #expect(memory.read(UInt32.self, at: (2 << 20) - 2) == nil)
    #expect(memory.host((2 << 20) - 4, length: 4) != nil)
    #expect(memory.host((2 << 20) - 4, length: 5) == nil)
    #expect(memory.host(UInt64.max - 2, length: 8) == nil, "overflowing ranges are rejected")
    #expect(!memory.writeBytes([1, 2, 3], at: 2 << 20))
  }
}
