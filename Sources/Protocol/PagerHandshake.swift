/// The handshake between a VM process and its `forkd-pager` (a superset of Firecracker's
/// handler_sock message): one frame carrying the userfaultfd as SCM_RIGHTS, the region table and
/// the memory source; the pager answers with one acknowledgement frame before the VM resumes.
///
/// Frame: u32 magic "FKDP", u16 version, u16 flags (0), u32 body length, JSON body.
public enum PagerHandshake {
  public static let magic: UInt32 = 0x5044_4B46  // "FKDP" in memory order
  public static let version: UInt16 = 1
  public static let headerSize = 12
  public static let maxBody = 64 << 10
  public static let maxRegions = 64
  /// Deepest diff chain a pager serves (base + 63 layers).
  public static let maxLayers = 64
  /// The pager's exit status when memory it must serve cannot be had (a lazily pulled chunk
  /// that could not be fetched): the child stops whatever the pager policy, a restart cannot help.
  public static let memoryUnavailableStatus: Int32 = 75
  /// After the ack the VM may send one-byte commands on the same socket. Suspend: the pager
  /// serves the faults it has read, answers with the same byte and stops reading the uffd (the
  /// VM reads it itself during a live snapshot). Resume: the pager reads the uffd again.
  public static let suspendCommand: UInt8 = 0x53  // "S"
  public static let resumeCommand: UInt8 = 0x52  // "R"
}

/// One memory layer: the base is a full snapshot's memory.bin; every later layer is a diff
/// snapshot's memory.bin with its page index (the pages it holds).
public struct PagerLayer: Equatable, Sendable {
  public var memory: String
  public var pageIndex: String?

  public init(memory: String, pageIndex: String? = nil) {
    self.memory = memory
    self.pageIndex = pageIndex
  }
}

/// One guest memory region as mapped by the VM process.
public struct PagerRegion: Equatable, Sendable {
  public var guestPhysicalAddress: UInt64
  public var hostVirtualAddress: UInt64
  public var size: UInt64
  /// Offset of the region's first byte in the memory source.
  public var fileOffset: UInt64
  public var pageSize: UInt64

  public init(
    guestPhysicalAddress: UInt64, hostVirtualAddress: UInt64, size: UInt64, fileOffset: UInt64, pageSize: UInt64
  ) {
    self.guestPhysicalAddress = guestPhysicalAddress
    self.hostVirtualAddress = hostVirtualAddress
    self.size = size
    self.fileOffset = fileOffset
    self.pageSize = pageSize
  }
}

/// Where the pager reads guest memory from and how it resolves faults.
public struct PagerMemorySource: Equatable, Sendable {
  public enum Mode: String, Sendable {
    /// Anonymous VM memory, MISSING faults answered with UFFDIO_COPY / UFFDIO_ZEROPAGE.
    case copy
    /// VM memory is a private mapping of a shmem file holding the snapshot; MINOR faults are
    /// answered with UFFDIO_CONTINUE (page-cache sharing), MISSING ones with UFFDIO_ZEROPAGE.
    case minor
  }

  public var mode: Mode
  /// Layers from the base (first, a full memory.bin) to the top (last): a page comes from the
  /// topmost layer whose index holds it.
  public var chain: [PagerLayer]
  /// The memory files, base first.
  public var layers: [String] { chain.map(\.memory) }

  /// A flat snapshot (or, with more paths, layers without indices — only valid for one).
  public init(mode: Mode, layers: [String]) {
    self.mode = mode
    chain = layers.map { PagerLayer(memory: $0) }
  }

  public init(mode: Mode, chain: [PagerLayer]) {
    self.mode = mode
    self.chain = chain
  }
}

public struct PagerHello: Equatable, Sendable {
  public var vmPID: Int32
  public var regions: [PagerRegion]
  public var memory: PagerMemorySource

  public init(vmPID: Int32, regions: [PagerRegion], memory: PagerMemorySource) {
    self.vmPID = vmPID
    self.regions = regions
    self.memory = memory
  }

  public var jsonValue: JSONValue {
    .object([
      "version": .integer(Int64(PagerHandshake.version)),
      "vm_pid": .integer(Int64(vmPID)),
      "regions": .array(
        regions.map {
          .object([
            "guest_phys_addr": .integer(Int64(bitPattern: $0.guestPhysicalAddress)),
            "host_virt_addr": .integer(Int64(bitPattern: $0.hostVirtualAddress)),
            "size": .integer(Int64(bitPattern: $0.size)),
            "file_offset": .integer(Int64(bitPattern: $0.fileOffset)),
            "page_size": .integer(Int64(bitPattern: $0.pageSize)),
          ])
        }),
      "memory": .object([
        "mode": .string(memory.mode.rawValue),
        "layers": .array(
          memory.chain.map { layer in
            guard let index = layer.pageIndex else { return .string(layer.memory) }
            return .object(["memory": .string(layer.memory), "page_index": .string(index)])
          }),
      ]),
    ])
  }

  /// Validates structure and values; the pager checks regions against the file it opens.
  public static func decode(_ value: JSONValue, source: String) throws(ProtocolError) -> PagerHello {
    let r = try JSONObjectReader(value, source: source)
    let version = try r.uint32("version")
    guard version == UInt32(PagerHandshake.version) else {
      throw ProtocolError(
        .unsupportedVersion, "\(source): handshake version \(version), this pager speaks \(PagerHandshake.version)")
    }
    let pid = try r.int64("vm_pid")
    guard pid > 0, pid <= Int64(Int32.max) else { throw r.invalid("vm_pid", expected: "a process id") }
    let rawRegions = try r.array("regions")
    guard !rawRegions.isEmpty, rawRegions.count <= PagerHandshake.maxRegions else {
      throw r.invalid("regions", expected: "1 to \(PagerHandshake.maxRegions) regions")
    }
    var regions: [PagerRegion] = []
    for (index, raw) in rawRegions.enumerated() {
      let o = try JSONObjectReader(raw, source: "\(source) regions[\(index)]")
      let region = PagerRegion(
        guestPhysicalAddress: try o.uint64("guest_phys_addr"), hostVirtualAddress: try o.uint64("host_virt_addr"),
        size: try o.uint64("size"), fileOffset: try o.uint64("file_offset"), pageSize: try o.uint64("page_size"))
      guard region.pageSize == 4096 else { throw o.invalid("page_size", expected: "4096") }
      guard region.size > 0, region.size % region.pageSize == 0 else {
        throw o.invalid("size", expected: "a non-zero multiple of page_size")
      }
      guard region.hostVirtualAddress % region.pageSize == 0, region.fileOffset % region.pageSize == 0 else {
        throw o.invalid("host_virt_addr", expected: "page-aligned addresses and offsets")
      }
      guard region.hostVirtualAddress.addingReportingOverflow(region.size).overflow == false,
        region.fileOffset.addingReportingOverflow(region.size).overflow == false
      else { throw o.invalid("size", expected: "a range that does not overflow") }
      regions.append(region)
    }
    let m = try r.object("memory")
    let modeName = try m.string("mode")
    guard let mode = PagerMemorySource.Mode(rawValue: modeName) else {
      throw m.invalid("mode", expected: "\"copy\" or \"minor\"")
    }
    func path(_ value: JSONValue?, _ what: String) throws(ProtocolError) -> String {
      guard let path = value?.stringValue, !path.isEmpty, !path.utf8.contains(0) else {
        throw m.invalid("layers", expected: "\(what) as non-empty paths")
      }
      return path
    }
    let rawLayers = try m.array("layers")
    guard !rawLayers.isEmpty, rawLayers.count <= PagerHandshake.maxLayers else {
      throw m.invalid("layers", expected: "1 to \(PagerHandshake.maxLayers) layers")
    }
    var chain: [PagerLayer] = []
    for (index, raw) in rawLayers.enumerated() {
      if case .object = raw {
        chain.append(
          PagerLayer(
            memory: try path(raw["memory"], "memory files"), pageIndex: try path(raw["page_index"], "page indices")))
      } else {
        chain.append(PagerLayer(memory: try path(raw, "memory files")))
      }
      // The base holds every page; each layer above it must say which pages it holds.
      guard (index == 0) == (chain[index].pageIndex == nil) else {
        throw m.invalid("layers", expected: "a base without a page index, then layers each with one")
      }
    }
    if mode == .minor && chain.count > 1 {
      throw m.invalid("layers", expected: "one layer in minor mode (diff chains are served in copy mode)")
    }
    return PagerHello(vmPID: Int32(pid), regions: regions, memory: PagerMemorySource(mode: mode, chain: chain))
  }
}

/// The pager's answer: ok with its pid, or an error the VM reports.
public struct PagerAck: Equatable, Sendable {
  public var ok: Bool
  public var pagerPID: Int32
  public var error: ControlErrorBody?

  public init(ok: Bool, pagerPID: Int32, error: ControlErrorBody? = nil) {
    self.ok = ok
    self.pagerPID = pagerPID
    self.error = error
  }

  public var jsonValue: JSONValue {
    var o: [String: JSONValue] = ["ok": .bool(ok), "pager_pid": .integer(Int64(pagerPID))]
    if let error { o["error"] = .object(["code": .string(error.code), "message": .string(error.message)]) }
    return .object(o)
  }

  public static func decode(_ value: JSONValue, source: String) throws(ProtocolError) -> PagerAck {
    let r = try JSONObjectReader(value, source: source)
    var error: ControlErrorBody?
    if let e = try r.optionalObject("error") {
      error = ControlErrorBody(code: try e.string("code"), message: try e.string("message"))
    }
    return PagerAck(ok: try r.bool("ok"), pagerPID: Int32(truncatingIfNeeded: try r.int64("pager_pid")), error: error)
  }
}

/// Frame encoding shared by both ends.
public enum PagerFrame {
  public static func encode(_ body: JSONValue) -> [UInt8] {
    let json = Array(body.serialized().utf8)
    var w = ByteWriter()
    w.u32(PagerHandshake.magic)
    w.u16(PagerHandshake.version)
    w.u16(0)
    w.u32(UInt32(json.count))
    w.bytes(json)
    return w.bytes
  }

  /// The body length announced by a header, after checking magic, version and size.
  public static func bodyLength(header: [UInt8], source: String) throws(ProtocolError) -> Int {
    guard header.count >= PagerHandshake.headerSize else {
      throw ProtocolError(
        .truncated, "\(source): frame header of \(header.count) bytes, need \(PagerHandshake.headerSize)")
    }
    var r = ByteReader(Array(header.prefix(PagerHandshake.headerSize)), source: source)
    let magic = try r.u32()
    guard magic == PagerHandshake.magic else {
      throw ProtocolError(.badMagic, "\(source): bad magic 0x\(String(magic, radix: 16)), expected FKDP")
    }
    let version = try r.u16()
    guard version == PagerHandshake.version else {
      throw ProtocolError(
        .unsupportedVersion, "\(source): frame version \(version), this side speaks \(PagerHandshake.version)")
    }
    _ = try r.u16()
    let length = Int(try r.u32())
    guard length <= PagerHandshake.maxBody else {
      throw ProtocolError(.tooLarge, "\(source): body of \(length) bytes exceeds \(PagerHandshake.maxBody)")
    }
    return length
  }

  /// Decodes a complete frame (header + body).
  public static func decode(_ bytes: [UInt8], source: String) throws(ProtocolError) -> JSONValue {
    let length = try bodyLength(header: bytes, source: source)
    guard bytes.count == PagerHandshake.headerSize + length else {
      throw ProtocolError(
        .truncated,
        "\(source): frame announces \(length) body bytes but carries \(bytes.count - PagerHandshake.headerSize)")
    }
    return try JSONValue.parse(
      Array(bytes[PagerHandshake.headerSize...]), source: source, maxBytes: PagerHandshake.maxBody)
  }
}
