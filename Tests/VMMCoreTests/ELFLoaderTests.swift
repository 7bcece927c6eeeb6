import Testing

@testable import VMMCore

/// Builds a minimal ELF64 executable: one PT_LOAD of `code` at `address`, plus `bss` bytes.
func makeELF(
  address: UInt64 = 0x10_0000, code: [UInt8] = [0xF4], bss: UInt64 = 0, entry: UInt64? = nil, machine: UInt16 = 62,
  type: UInt16 = 2, flags: UInt32 = 5
) -> [UInt8] {
  var b = [UInt8](repeating: 0, count: 64 + 56)
  func put<T: FixedWidthInteger>(_ v: T, _ at: Int) {
    withUnsafeBytes(of: v.littleEndian) { for (i, x) in $0.enumerated() { b[at + i] = x } }
  }
  b[0...3] = [0x7F, 0x45, 0x4C, 0x46]
  b[4] = 2
  b[5] = 1
  b[6] = 1
  put(type, 16)
  put(machine, 18)
  put(UInt32(1), 20)
  put(entry ?? address, 24)
  put(UInt64(64), 32)  // phoff
  put(UInt16(64), 52)
  put(UInt16(56), 54)
  put(UInt16(1), 56)
  let ph = 64
  put(UInt32(1), ph)  // PT_LOAD
  put(flags, ph + 4)
  put(UInt64(120), ph + 8)  // offset
  put(address, ph + 16)
  put(address, ph + 24)
  put(UInt64(code.count), ph + 32)
  put(UInt64(code.count) + bss, ph + 40)
  return b + code
}

@Suite("ELF loader")
struct ELFLoaderTests {
  @Test("loads PT_LOAD segments and zeroes .bss")
  func loads() throws {
    let image = makeELF(code: [0x90, 0x90, 0xF4], bss: 16)
    let elf = try ELFImage(parsing: image, source: "t.elf")
    #expect(elf.entry == 0x10_0000)
    #expect(elf.segments.count == 1)
    let memory = try GuestMemory.create(size: 2 << 20, backend: .anonymous)
    memory.write(UInt64.max, at: 0x10_0003)
    try elf.load(image, into: memory, source: "t.elf")
    #expect(memory.readBytes(at: 0x10_0000, count: 3) == [0x90, 0x90, 0xF4])
    #expect(memory.read(UInt64.self, at: 0x10_0003) == 0)
  }

  @Test(
    "rejects bad images with an error naming the problem",
    arguments: [
      (Array("#!/bin/sh\necho not an elf\n".utf8) + [UInt8](repeating: 0, count: 64), "bad magic"),
      ([0x7F, 0x45, 0x4C], "not an ELF image"),
      (makeELF(machine: 3), "EM_X86_64"),
      (makeELF(type: 3), "ET_EXEC"),
      (makeELF(entry: 0x20_0000), "entry point"),
      (makeELF(flags: 4), "entry point"),
      (Array(makeELF(code: [UInt8](repeating: 0x90, count: 64)).prefix(150)), "truncated"),
    ])
  func rejects(image: [UInt8], fragment: String) {
    do {
      _ = try ELFImage(parsing: image, source: "bad.elf")
      Issue.record("accepted a bad image")
    } catch {
      #expect(error.code == .invalidImage)
      #expect(error.message.contains("bad.elf"))
      #expect(error.message.contains(fragment), "\(error.message)")
    }
  }

  @Test("refuses segments below 1 MiB or beyond guest RAM")
  func placement() throws {
    let memory = try GuestMemory.create(size: 2 << 20, backend: .anonymous)
    for address: UInt64 in [0x1000, 0x1F_FFFF] {
      let image = makeELF(address: address, code: [0xF4, 0xF4])
      let elf = try ELFImage(parsing: image, source: "p.elf")
      #expect(throws: VMMError.self) { try elf.load(image, into: memory, source: "p.elf") }
    }
  }
}
