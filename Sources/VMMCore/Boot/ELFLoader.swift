/// An ELF64 x86-64 executable reduced to what a VMM loads: PT_LOAD segments and the entry point.
public struct ELFImage: Sendable, Equatable {
  public struct Segment: Sendable, Equatable {
    public let physicalAddress: UInt64
    public let fileOffset: UInt64
    public let fileSize: UInt64
    public let memorySize: UInt64
    public let executable: Bool
  }

  public let entry: UInt64
  public let segments: [Segment]

  /// Parses and validates `bytes`; `source` names the image in errors.
  public init(parsing bytes: [UInt8], source: String) throws(VMMError) {
    func fail(_ what: String) -> VMMError { VMMError(.invalidImage, "\(source): \(what)") }
    func u16(_ at: Int) -> UInt16 { UInt16(bytes[at]) | UInt16(bytes[at + 1]) << 8 }
    func u32(_ at: Int) -> UInt32 { (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[at + $1]) << (8 * $1) } }
    func u64(_ at: Int) -> UInt64 { (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[at + $1]) << (8 * $1) } }

    guard bytes.count >= 64 else { throw fail("not an ELF image: \(bytes.count) bytes, an ELF64 header needs 64") }
    guard bytes[0] == 0x7F, bytes[1] == 0x45, bytes[2] == 0x4C, bytes[3] == 0x46 else {
      throw fail("not an ELF image (bad magic \(bytes[0..<4].map { hex($0) }.joined(separator: " ")))")
    }
    guard bytes[4] == 2 else { throw fail("ELF class \(bytes[4]): only ELF64 (2) is supported") }
    guard bytes[5] == 1 else { throw fail("ELF data encoding \(bytes[5]): only little endian (1) is supported") }
    let type = u16(16)
    guard type == 2 else { throw fail("ELF type \(type): only ET_EXEC (2) images can be loaded") }
    let machine = u16(18)
    guard machine == 62 else { throw fail("ELF machine \(machine): only EM_X86_64 (62) is supported") }
    let phoff = u64(32)
    let phentsize = Int(u16(54))
    let phnum = Int(u16(56))
    guard phentsize >= 56 else { throw fail("e_phentsize \(phentsize) is smaller than an ELF64 program header (56)") }
    guard phnum > 0 else { throw fail("no program headers") }
    let (tableEnd, overflow) = phoff.addingReportingOverflow(UInt64(phnum * phentsize))
    guard !overflow, tableEnd <= UInt64(bytes.count) else {
      throw fail(
        "program header table (offset \(phoff), \(phnum) entries) runs past the end of the file (\(bytes.count) bytes): truncated?"
      )
    }

    var segments: [Segment] = []
    for index in 0..<phnum {
      let base = Int(phoff) + index * phentsize
      guard u32(base) == 1 else { continue }  // PT_LOAD only
      let flags = u32(base + 4)
      let segment = Segment(
        physicalAddress: u64(base + 24), fileOffset: u64(base + 8), fileSize: u64(base + 32),
        memorySize: u64(base + 40), executable: flags & 1 != 0)
      guard segment.fileSize <= segment.memorySize else {
        throw fail("segment \(index): p_filesz \(segment.fileSize) exceeds p_memsz \(segment.memorySize)")
      }
      let (fileEnd, o1) = segment.fileOffset.addingReportingOverflow(segment.fileSize)
      guard !o1, fileEnd <= UInt64(bytes.count) else {
        throw fail(
          "segment \(index): file range \(segment.fileOffset)+\(segment.fileSize) runs past the end of the file (\(bytes.count) bytes): truncated?"
        )
      }
      let (_, o2) = segment.physicalAddress.addingReportingOverflow(segment.memorySize)
      guard !o2 else { throw fail("segment \(index): address range overflows") }
      segments.append(segment)
    }
    guard !segments.isEmpty else { throw fail("no PT_LOAD segments") }
    let entry = u64(24)
    guard
      segments.contains(where: {
        $0.executable && entry >= $0.physicalAddress && entry < $0.physicalAddress + $0.memorySize
      })
    else { throw fail("entry point 0x\(String(entry, radix: 16)) is not inside an executable segment") }
    self.entry = entry
    self.segments = segments
  }

  /// Copies the segments into guest memory (zeroing the .bss part) after checking they fit above
  /// the VMM's boot structures and inside RAM.
  public func load(_ bytes: [UInt8], into memory: GuestMemory, source: String) throws(VMMError) {
    for (index, segment) in segments.enumerated() {
      guard segment.physicalAddress >= X86Layout.imageLowestAddress,
        memory.host(segment.physicalAddress, length: segment.memorySize) != nil
      else {
        throw VMMError(
          .invalidImage,
          "\(source): segment \(index) at 0x\(String(segment.physicalAddress, radix: 16)) (+\(segment.memorySize) bytes) does not fit in guest memory between 1 MiB and \(memory.size >> 20) MiB"
        )
      }
      let start = Int(segment.fileOffset)
      memory.writeBytes(bytes[start..<start + Int(segment.fileSize)], at: segment.physicalAddress)
      let bss = segment.memorySize - segment.fileSize
      if bss > 0, let p = memory.host(segment.physicalAddress + segment.fileSize, length: bss) {
        p.initializeMemory(as: UInt8.self, repeating: 0, count: Int(bss))
      }
    }
  }
}

func hex(_ byte: UInt8) -> String {
  let digits = Array("0123456789abcdef")
  return String([digits[Int(byte >> 4)], digits[Int(byte & 0xF)]])
}

func hex64(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }
