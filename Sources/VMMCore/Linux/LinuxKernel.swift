/// A Linux x86-64 kernel as the VMM loads it, detected by content: a bzImage (the setup header
/// "HdrS" at 0x202, Documentation/arch/x86/boot.rst) or an ELF vmlinux. Either way the vCPU enters
/// the kernel in 64-bit mode with `rsi` pointing at the zero page (`struct boot_params`).
public struct LinuxKernel: Sendable, Equatable {
  public enum Format: String, Sendable { case bzImage, elf }

  /// Boot protocol 2.12 introduced `xloadflags` (XLF_KERNEL_64): the 64-bit entry point this VMM uses.
  public static let minimumProtocol: UInt16 = 0x020C
  /// Where a bzImage's protected-mode kernel is loaded (its 64-bit entry is 0x200 further).
  public static let bzImageLoadAddress: UInt64 = 0x10_0000

  /// Setup header offsets (the same in the bzImage file and in boot_params).
  enum Header {
    static let setupSects = 0x1F1
    static let bootFlag = 0x1FE
    static let jump = 0x200
    static let magic = 0x202
    static let version = 0x206
    static let typeOfLoader = 0x210
    static let loadFlags = 0x211
    static let ramdiskImage = 0x218
    static let ramdiskSize = 0x21C
    static let heapEndPointer = 0x224
    static let commandLinePointer = 0x228
    static let initrdAddressMax = 0x22C
    static let kernelAlignment = 0x230
    static let xloadFlags = 0x236
    static let commandLineSize = 0x238
    static let initSize = 0x260
  }

  public let format: Format
  /// Boot protocol version (0x020F is 2.15); for an ELF vmlinux the version this VMM speaks.
  public let protocolVersion: UInt16
  /// Guest-physical entry point (64-bit).
  public let entry: UInt64
  /// The longest command line the kernel takes, NUL excluded.
  public let maxCommandLineLength: Int
  /// Highest address the initrd may occupy (inclusive).
  public let initrdAddressMax: UInt64
  /// First byte above everything the kernel occupies (or decompresses into), for initrd placement.
  public let kernelEnd: UInt64
  /// The setup header bytes (0x1F1 ..< end) a bzImage asks the loader to copy into boot_params.
  public let setupHeader: [UInt8]
  /// For a bzImage: the protected-mode part; for an ELF image: its parsed segments.
  let payloadOffset: Int
  let elf: ELFImage?

  public init(parsing bytes: [UInt8], source: String) throws(VMMError) {
    func fail(_ what: String) -> VMMError { VMMError(.invalidImage, "\(source): \(what)") }
    if bytes.count >= 4, bytes[0] == 0x7F, bytes[1] == 0x45, bytes[2] == 0x4C, bytes[3] == 0x46 {
      let image = try ELFImage(parsing: bytes, source: source)
      format = .elf
      protocolVersion = 0x020F
      entry = image.entry
      maxCommandLineLength = 2047
      initrdAddressMax = 0x7FFF_FFFF
      kernelEnd = image.segments.map { $0.physicalAddress + $0.memorySize }.max() ?? 0
      setupHeader = []
      payloadOffset = 0
      elf = image
      return
    }
    func u8(_ at: Int) -> UInt8 { bytes[at] }
    func u16(_ at: Int) -> UInt16 { UInt16(bytes[at]) | UInt16(bytes[at + 1]) << 8 }
    func u32(_ at: Int) -> UInt32 { (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[at + $1]) << (8 * $1) } }
    guard bytes.count >= 0x268, bytes[Header.magic..<Header.magic + 4].elementsEqual("HdrS".utf8) else {
      throw fail(
        "not a Linux kernel: neither an ELF vmlinux (no \\x7fELF magic) nor a bzImage (no \"HdrS\" setup header at offset 0x202; \(bytes.count) bytes)"
      )
    }
    let version = u16(Header.version)
    guard version >= Self.minimumProtocol else {
      throw fail(
        "boot protocol version \(version >> 8).\(version & 0xFF) (setup header field 'version' = 0x\(String(version, radix: 16))) is too old: forkd needs \(Self.minimumProtocol >> 8).\(Self.minimumProtocol & 0xFF) or newer for the 64-bit entry point"
      )
    }
    let xloadFlags = u16(Header.xloadFlags)
    guard xloadFlags & 1 != 0 else {
      throw fail(
        "setup header field 'xloadflags' = 0x\(String(xloadFlags, radix: 16)) lacks XLF_KERNEL_64: not a 64-bit kernel")
    }
    guard u8(Header.loadFlags) & 1 != 0 else {
      throw fail("setup header field 'loadflags' lacks LOADED_HIGH: the kernel cannot be loaded at 1 MiB")
    }
    var setupSectors = Int(u8(Header.setupSects))
    if setupSectors == 0 { setupSectors = 4 }
    let payload = (setupSectors + 1) * 512
    guard payload < bytes.count else {
      throw fail(
        "setup_sects \(setupSectors) puts the protected-mode kernel at offset \(payload), past the end of the file (\(bytes.count) bytes): truncated?"
      )
    }
    let headerEnd = Header.jump + 2 + Int(u8(Header.jump + 1))
    guard headerEnd <= min(bytes.count, 0x1000) else {
      throw fail("setup header ends at \(headerEnd), outside the first page of the file")
    }
    format = .bzImage
    protocolVersion = version
    entry = Self.bzImageLoadAddress + 0x200
    maxCommandLineLength = Int(u32(Header.commandLineSize))
    initrdAddressMax = UInt64(u32(Header.initrdAddressMax))
    // The decompressor runs in place at the load address, then moves the kernel to at least
    // LOAD_PHYSICAL_ADDR (16 MiB) with init_size bytes of room.
    let initSize = UInt64(u32(Header.initSize))
    kernelEnd = max(Self.bzImageLoadAddress + UInt64(bytes.count - payload), 0x100_0000 + initSize)
    setupHeader = Array(bytes[Header.setupSects..<headerEnd])
    payloadOffset = payload
    elf = nil
  }

  /// Copies the kernel into guest memory.
  public func load(_ bytes: [UInt8], into memory: GuestMemory, source: String) throws(VMMError) {
    if let elf {
      try elf.load(bytes, into: memory, source: source)
      return
    }
    guard memory.size >= kernelEnd else {
      throw VMMError(
        .invalidConfig,
        "\(source): the kernel needs \(kernelEnd >> 20) MiB of guest memory to decompress (init_size), the VM has \(memory.size >> 20) MiB"
      )
    }
    memory.writeBytes(bytes[payloadOffset...], at: Self.bzImageLoadAddress)
  }
}

/// Where a Linux guest's boot structures go, and the builders of the zero page.
public enum LinuxLayout {
  /// Linux's 64-bit entry wants __BOOT_CS 0x10 and __BOOT_DS 0x18 in a flat GDT.
  public static let gdtAddress: UInt64 = 0x500
  public static let codeSelector: UInt16 = 0x10
  public static let dataSelector: UInt16 = 0x18
  public static let gdtEntries: [UInt64] = [0, 0, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF]
  public static let zeroPageAddress: UInt64 = 0x7000
  public static let commandLineAddress: UInt64 = 0x2_0000
  public static let commandLineCapacity = 0x1_0000
  public static let stackPointer: UInt64 = 0x8FF0
  /// Low RAM ends where the EBDA would begin; 0x9FC00..1 MiB is reserved (ACPI tables live there).
  public static let lowMemoryEnd: UInt64 = 0x9_FC00
  public static let acpiTablesAddress: UInt64 = 0xE_0000
  public static let highMemoryStart: UInt64 = 0x10_0000

  public struct E820Entry: Sendable, Equatable {
    public var address: UInt64
    public var size: UInt64
    public var type: UInt32
    public static let ram: UInt32 = 1
    public static let reserved: UInt32 = 2
  }

  /// `base` plus `virtio_mmio.device=<size>@<base>:<irq>` per device, for kernels built with
  /// VIRTIO_MMIO_CMDLINE_DEVICES (Debian's is not: it finds the devices through ACPI).
  public static func commandLine(_ base: String, declaring devices: [ACPITables.VirtioDevice]) -> String {
    devices.reduce(base) { line, device in
      line + " virtio_mmio.device=\(device.size >> 10)K@\(hex64(device.base)):\(device.gsi)"
    }
  }

  public static func e820(memorySize: UInt64) -> [E820Entry] {
    [
      E820Entry(address: 0, size: lowMemoryEnd, type: E820Entry.ram),
      E820Entry(address: lowMemoryEnd, size: highMemoryStart - lowMemoryEnd, type: E820Entry.reserved),
      E820Entry(address: highMemoryStart, size: memorySize - highMemoryStart, type: E820Entry.ram),
    ]
  }

  /// Where the initrd goes: as high as allowed (below the kernel's initrd_addr_max and the end of
  /// RAM), page aligned, above the kernel.
  public static func initrdAddress(size: UInt64, kernel: LinuxKernel, memorySize: UInt64, source: String)
    throws(VMMError) -> UInt64
  {
    let top = min(kernel.initrdAddressMax &+ 1, memorySize)
    guard size <= top, (top - size) & ~0xFFF >= kernel.kernelEnd else {
      throw VMMError(
        .invalidConfig,
        "\(source): the initrd (\(size) bytes) does not fit in guest memory: it must lie between the kernel's end at \(hex64(kernel.kernelEnd)) and \(hex64(top)) (memory \(memorySize >> 20) MiB, initrd_addr_max \(hex64(kernel.initrdAddressMax))); use a larger --memory-mib"
      )
    }
    return (top - size) & ~0xFFF
  }

  /// `struct boot_params` (4 KiB): the kernel's setup header plus what the loader fills in.
  public static func zeroPage(
    kernel: LinuxKernel, initrd: (address: UInt64, size: UInt64)?, memorySize: UInt64,
    rsdpAddress: UInt64
  ) -> [UInt8] {
    var page = [UInt8](repeating: 0, count: 4096)
    func put(_ value: UInt64, at offset: Int, size: Int) {
      for i in 0..<size { page[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
    }
    typealias H = LinuxKernel.Header
    if kernel.format == .bzImage {
      page.replaceSubrange(H.setupSects..<H.setupSects + kernel.setupHeader.count, with: kernel.setupHeader)
    } else {
      // An ELF vmlinux has no setup header: write the fields the kernel reads.
      put(0xAA55, at: H.bootFlag, size: 2)
      page.replaceSubrange(H.magic..<H.magic + 4, with: Array("HdrS".utf8))
      put(UInt64(kernel.protocolVersion), at: H.version, size: 2)
      put(0x100_0000, at: H.kernelAlignment, size: 4)
      put(UInt64(kernel.maxCommandLineLength), at: H.commandLineSize, size: 4)
    }
    page[H.typeOfLoader] = 0xFF  // undefined boot loader
    page[H.loadFlags] |= 0x01 | 0x80  // LOADED_HIGH, CAN_USE_HEAP
    put(0xFE00, at: H.heapEndPointer, size: 2)
    put(commandLineAddress, at: H.commandLinePointer, size: 4)
    if let initrd {
      put(initrd.address, at: H.ramdiskImage, size: 4)
      put(initrd.size, at: H.ramdiskSize, size: 4)
    }
    put(rsdpAddress, at: 0x070, size: 8)  // acpi_rsdp_addr (protocol 2.14)
    let table = e820(memorySize: memorySize)
    page[0x1E8] = UInt8(table.count)
    for (i, entry) in table.enumerated() {
      put(entry.address, at: 0x2D0 + i * 20, size: 8)
      put(entry.size, at: 0x2D0 + i * 20 + 8, size: 8)
      put(UInt64(entry.type), at: 0x2D0 + i * 20 + 16, size: 4)
    }
    return page
  }
}
