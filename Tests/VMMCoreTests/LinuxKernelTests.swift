import CKVM
import Testing

@testable import VMMCore

/// A crafted bzImage: a setup header with the fields the loader reads, then a payload.
func craftedBzImage(
  version: UInt16 = 0x020F, xloadFlags: UInt16 = 0x1, loadFlags: UInt8 = 0x01, setupSectors: UInt8 = 4,
  commandLineSize: UInt32 = 2048, initSize: UInt32 = 0x200_0000, payload: Int = 4096
) -> [UInt8] {
  var b = [UInt8](repeating: 0, count: (Int(setupSectors) + 1) * 512 + payload)
  func put(_ value: UInt64, at offset: Int, size: Int) {
    for i in 0..<size { b[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
  }
  b[0x1F1] = setupSectors
  put(0xAA55, at: 0x1FE, size: 2)
  b[0x200] = 0xEB
  b[0x201] = 0x66  // jump over the header: it ends at 0x268
  b.replaceSubrange(0x202..<0x206, with: Array("HdrS".utf8))
  put(UInt64(version), at: 0x206, size: 2)
  b[0x211] = loadFlags
  put(0x7FFF_FFFF, at: 0x22C, size: 4)
  put(0x20_0000, at: 0x230, size: 4)
  put(UInt64(xloadFlags), at: 0x236, size: 2)
  put(UInt64(commandLineSize), at: 0x238, size: 4)
  put(UInt64(initSize), at: 0x260, size: 4)
  if payload > 0 { b[(Int(setupSectors) + 1) * 512] = 0xE9 }  // first payload byte
  return b
}

@Suite("Linux boot protocol")
struct LinuxKernelTests {
  @Test("a bzImage's setup header is parsed and its 64-bit entry is load address + 0x200")
  func parsesBzImage() throws {
    let kernel = try LinuxKernel(parsing: craftedBzImage(), source: "k")
    #expect(kernel.format == .bzImage)
    #expect(kernel.protocolVersion == 0x020F)
    #expect(kernel.entry == 0x10_0200)
    #expect(kernel.maxCommandLineLength == 2048)
    #expect(kernel.setupHeader.count == 0x268 - 0x1F1)
    #expect(kernel.kernelEnd == 0x100_0000 + 0x200_0000)
  }

  @Test("setup_sects 0 means 4")
  func zeroSetupSectors() throws {
    var image = craftedBzImage(setupSectors: 4)
    image[0x1F1] = 0
    let kernel = try LinuxKernel(parsing: image, source: "k")
    #expect(kernel.payloadOffset == 5 * 512)
  }

  @Test(
    "bad kernels are refused with the field that is wrong",
    arguments: [
      (craftedBzImage(version: 0x020B), "version"),
      (craftedBzImage(xloadFlags: 0), "XLF_KERNEL_64"),
      (craftedBzImage(loadFlags: 0), "LOADED_HIGH"),
      (Array(craftedBzImage(setupSectors: 30, payload: 0).prefix(0x300)), "setup_sects"),
      ([UInt8](repeating: 0x90, count: 8192), "not a Linux kernel"),
      ([UInt8](repeating: 0, count: 10), "not a Linux kernel"),
    ])
  func refuses(image: [UInt8], expected: String) {
    do {
      _ = try LinuxKernel(parsing: image, source: "/k/vmlinuz")
      Issue.record("accepted a bad kernel")
    } catch {
      #expect(error.message.contains(expected), "\(error.message)")
      #expect(error.message.hasPrefix("/k/vmlinuz"))
      #expect(error.code == .invalidImage)
    }
  }

  @Test("the zero page carries the header, loader fields, RSDP, initrd and e820")
  func zeroPage() throws {
    let kernel = try LinuxKernel(parsing: craftedBzImage(), source: "k")
    let page = LinuxLayout.zeroPage(
      kernel: kernel, initrd: (0x0F00_0000, 0x12345), memorySize: 256 << 20, rsdpAddress: 0xE_0000)
    func u(_ at: Int, _ size: Int) -> UInt64 { (0..<size).reduce(0) { $0 | UInt64(page[at + $1]) << (8 * UInt64($1)) } }
    #expect(page.count == 4096)
    #expect(Array(page[0x202..<0x206]) == Array("HdrS".utf8))
    #expect(page[0x210] == 0xFF)
    #expect(page[0x211] & 0x81 == 0x81)
    #expect(u(0x228, 4) == LinuxLayout.commandLineAddress)
    #expect(u(0x218, 4) == 0x0F00_0000)
    #expect(u(0x21C, 4) == 0x12345)
    #expect(u(0x070, 8) == 0xE_0000)
    #expect(page[0x1E8] == 3)
    // RAM below the EBDA, the reserved BIOS area, RAM from 1 MiB.
    #expect(u(0x2D0, 8) == 0 && u(0x2D8, 8) == 0x9_FC00 && u(0x2E0, 4) == 1)
    #expect(u(0x2E4, 8) == 0x9_FC00 && u(0x2EC, 8) == 0x6_0400 && u(0x2F4, 4) == 2)
    #expect(u(0x2F8, 8) == 0x10_0000 && u(0x300, 8) == (256 << 20) - 0x10_0000 && u(0x308, 4) == 1)
  }

  @Test("the initrd goes to the top of RAM, page aligned, or fails naming the sizes")
  func initrdPlacement() throws {
    let kernel = try LinuxKernel(parsing: craftedBzImage(), source: "k")
    let address = try LinuxLayout.initrdAddress(size: 0x1801, kernel: kernel, memorySize: 256 << 20, source: "i")
    #expect(address == (256 << 20) - 0x2000)
    #expect(throws: VMMError.self) {
      // 64 MiB of RAM, the kernel decompresses up to 48 MiB: 20 MiB of initrd cannot fit.
      try LinuxLayout.initrdAddress(size: 20 << 20, kernel: kernel, memorySize: 64 << 20, source: "i")
    }
    do {
      _ = try LinuxLayout.initrdAddress(size: 20 << 20, kernel: kernel, memorySize: 64 << 20, source: "/i.gz")
    } catch {
      #expect(error.message.contains("/i.gz") && error.message.contains("does not fit"))
    }
  }

  @Test("virtio_mmio.device= entries for kernels that take devices on the command line")
  func commandLineDevices() {
    let line = LinuxLayout.commandLine(
      "console=ttyS0",
      declaring: [.init(base: 0xD000_0000, size: 0x1000, gsi: 5), .init(base: 0xD000_1000, size: 0x1000, gsi: 6)])
    #expect(line == "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6")
  }

  @Test("CPUID gets the vCPU's APIC id and the hypervisor bit")
  func cpuid() {
    var leaf1 = kvm_cpuid_entry2()
    leaf1.function = 1
    leaf1.ebx = 0xFFFF_FFFF
    var leafB = kvm_cpuid_entry2()
    leafB.function = 0xB
    let fixed = LinuxCPUID.entries([leaf1, leafB], vcpuIndex: 3, vcpuCount: 4)
    #expect(fixed[0].ebx >> 24 == 3)
    #expect((fixed[0].ebx >> 16) & 0xFF == 4)
    #expect(fixed[0].ecx & (1 << 31) != 0)
    #expect(fixed[1].edx == 3)
  }
}
