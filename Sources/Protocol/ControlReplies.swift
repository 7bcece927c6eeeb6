/// Typed `result` objects of control responses, one per request. forkd-vmm encodes them and
/// clients decode them with the same code here, so the JSON keys live in one place.
///
/// Decoding treats the reply as untrusted (a guest that escaped into forkd-vmm may lie): a
/// missing, mistyped, negative or out-of-range value is a `ProtocolError` naming the field.
/// Unknown keys are ignored for forward compatibility.
public protocol ControlReplyBody: Equatable, Sendable {
  /// The members of `result`.
  func encodeResult() -> [String: JSONValue]
  init(result: JSONObjectReader) throws(ProtocolError)
}

extension ControlReplyBody {
  /// Decodes `result` members read off a response.
  public static func decode(_ result: [String: JSONValue]) throws(ProtocolError) -> Self {
    try Self(result: JSONObjectReader(.object(result), source: "control response result"))
  }
}

/// A VM's run state as `status`, `pause`, `resume` and `stop` report it.
public enum VMRunState: String, Equatable, Sendable {
  case running, paused, exited, stopping
}

enum ReplyKey {
  static let state = "state"
  static let pid = "pid"
  static let memorySize = "memory_size"
  static let vcpus = "vcpus"
  static let guestKind = "guest_kind"
  static let guestImageDigest = "guest_image_digest"
  static let backend = "backend"
  static let restoredFrom = "restored_from"
  static let pagerPID = "pager_pid"
  static let pagerAttached = "pager_attached"
  static let pagerPolicy = "pager_policy"
  static let net = "net"
  static let rxFrames = "rx_frames"
  static let txFrames = "tx_frames"
  static let rxDropped = "rx_dropped"
  static let txDropped = "tx_dropped"
  static let exit = "exit"
  static let pauseMicroseconds = "pause_us"
  static let totalMicroseconds = "total_us"
  static let dir = "dir"
  static let status = "status"
  static let memoryDataBytes = "memory_data_bytes"
  static let stateBytes = "state_bytes"
  static let memoryLayer = "memory_layer"
  static let layerPages = "layer_pages"
  static let contentDigest = "content_digest"
  static let attachments = "attachments"
}

/// Unsigned values go out as JSON integers (signed 64-bit); larger ones saturate rather than trap.
@inline(__always) func wire(_ v: UInt64) -> JSONValue { .integer(Int64(clamping: v)) }

extension JSONObjectReader {
  func runState(_ key: String, allowed: [VMRunState]) throws(ProtocolError) -> VMRunState {
    guard let state = VMRunState(rawValue: try string(key)), allowed.contains(state) else {
      throw invalid(key, expected: allowed.map { "\"\($0.rawValue)\"" }.joined(separator: " or "))
    }
    return state
  }

  /// A process id: 1...Int32.max.
  func processID(_ key: String) throws(ProtocolError) -> Int32 {
    guard let pid = Int32(exactly: try int64(key)), pid > 0 else {
      throw invalid(key, expected: "a process id in 1...\(Int32.max)")
    }
    return pid
  }
}

/// `status`.
public struct VMStatusReply: ControlReplyBody {
  public struct Pager: Equatable, Sendable {
    public var pid: Int32
    public var attached: Bool
    public var policy: String
    public init(pid: Int32, attached: Bool, policy: String) {
      self.pid = pid
      self.attached = attached
      self.policy = policy
    }
  }

  /// The virtio-net device's counters.
  public struct Network: Equatable, Sendable {
    public var rxFrames: UInt64
    public var txFrames: UInt64
    public var rxDropped: UInt64
    public var txDropped: UInt64
    public init(rxFrames: UInt64, txFrames: UInt64, rxDropped: UInt64, txDropped: UInt64) {
      self.rxFrames = rxFrames
      self.txFrames = txFrames
      self.rxDropped = rxDropped
      self.txDropped = txDropped
    }
  }

  /// running, paused or exited.
  public var state: VMRunState
  public var pid: Int32
  public var memorySize: UInt64
  public var vcpus: UInt32
  public var guestKind: String
  public var guestImageDigest: String
  public var backend: String
  public var restoredFrom: String?
  /// Only for pager-backed VMs.
  public var pager: Pager?
  /// Only for VMs with a NIC.
  public var network: Network?
  /// Why the VM ended, once it has.
  public var exit: String?

  public init(
    state: VMRunState, pid: Int32, memorySize: UInt64, vcpus: UInt32, guestKind: String, guestImageDigest: String,
    backend: String, restoredFrom: String? = nil, pager: Pager? = nil, network: Network? = nil, exit: String? = nil
  ) {
    self.state = state
    self.pid = pid
    self.memorySize = memorySize
    self.vcpus = vcpus
    self.guestKind = guestKind
    self.guestImageDigest = guestImageDigest
    self.backend = backend
    self.restoredFrom = restoredFrom
    self.pager = pager
    self.network = network
    self.exit = exit
  }

  public func encodeResult() -> [String: JSONValue] {
    var o: [String: JSONValue] = [
      ReplyKey.state: .string(state.rawValue), ReplyKey.pid: .integer(Int64(pid)),
      ReplyKey.memorySize: wire(memorySize), ReplyKey.vcpus: .integer(Int64(vcpus)),
      ReplyKey.guestKind: .string(guestKind), ReplyKey.guestImageDigest: .string(guestImageDigest),
      ReplyKey.backend: .string(backend),
    ]
    if let restoredFrom { o[ReplyKey.restoredFrom] = .string(restoredFrom) }
    if let pager {
      o[ReplyKey.pagerPID] = .integer(Int64(pager.pid))
      o[ReplyKey.pagerAttached] = .bool(pager.attached)
      o[ReplyKey.pagerPolicy] = .string(pager.policy)
    }
    if let network {
      o[ReplyKey.net] = .object([
        ReplyKey.rxFrames: wire(network.rxFrames), ReplyKey.txFrames: wire(network.txFrames),
        ReplyKey.rxDropped: wire(network.rxDropped), ReplyKey.txDropped: wire(network.txDropped),
      ])
    }
    if let exit { o[ReplyKey.exit] = .string(exit) }
    return o
  }

  public init(result r: JSONObjectReader) throws(ProtocolError) {
    state = try r.runState(ReplyKey.state, allowed: [.running, .paused, .exited])
    pid = try r.processID(ReplyKey.pid)
    memorySize = try r.uint64(ReplyKey.memorySize)
    vcpus = try r.uint32(ReplyKey.vcpus)
    guestKind = try r.string(ReplyKey.guestKind)
    guestImageDigest = try r.string(ReplyKey.guestImageDigest)
    backend = try r.string(ReplyKey.backend)
    restoredFrom = try r.optionalString(ReplyKey.restoredFrom)
    if r.has(ReplyKey.pagerPID) {
      pager = Pager(
        pid: try r.processID(ReplyKey.pagerPID), attached: try r.bool(ReplyKey.pagerAttached),
        policy: try r.string(ReplyKey.pagerPolicy))
    }
    if let n = try r.optionalObject(ReplyKey.net) {
      network = Network(
        rxFrames: try n.uint64(ReplyKey.rxFrames), txFrames: try n.uint64(ReplyKey.txFrames),
        rxDropped: try n.uint64(ReplyKey.rxDropped), txDropped: try n.uint64(ReplyKey.txDropped))
    }
    exit = try r.optionalString(ReplyKey.exit)
  }
}

/// `pause`: how long stopping the vCPUs took.
public struct PauseReply: ControlReplyBody {
  public var pauseMicroseconds: UInt64
  public init(pauseMicroseconds: UInt64) { self.pauseMicroseconds = pauseMicroseconds }

  public func encodeResult() -> [String: JSONValue] {
    [ReplyKey.state: .string(VMRunState.paused.rawValue), ReplyKey.pauseMicroseconds: wire(pauseMicroseconds)]
  }

  public init(result r: JSONObjectReader) throws(ProtocolError) {
    _ = try r.runState(ReplyKey.state, allowed: [.paused])
    pauseMicroseconds = try r.uint64(ReplyKey.pauseMicroseconds)
  }
}

/// `resume`: no data (the wire carries `"state":"running"`).
public struct ResumeReply: ControlReplyBody {
  public init() {}
  public func encodeResult() -> [String: JSONValue] { [ReplyKey.state: .string(VMRunState.running.rawValue)] }
  public init(result r: JSONObjectReader) throws(ProtocolError) {
    _ = try r.runState(ReplyKey.state, allowed: [.running])
  }
}

/// `stop`: no data (the wire carries `"state":"stopping"`).
public struct StopReply: ControlReplyBody {
  public init() {}
  public func encodeResult() -> [String: JSONValue] { [ReplyKey.state: .string(VMRunState.stopping.rawValue)] }
  public init(result r: JSONObjectReader) throws(ProtocolError) {
    _ = try r.runState(ReplyKey.state, allowed: [.stopping])
  }
}

/// `attach_pager`: the new pager and how many pagers this VM has had.
public struct AttachPagerReply: ControlReplyBody {
  public var pagerPID: Int32
  public var attachments: UInt64
  public init(pagerPID: Int32, attachments: UInt64) {
    self.pagerPID = pagerPID
    self.attachments = attachments
  }

  public func encodeResult() -> [String: JSONValue] {
    [ReplyKey.pagerPID: .integer(Int64(pagerPID)), ReplyKey.attachments: wire(attachments)]
  }

  public init(result r: JSONObjectReader) throws(ProtocolError) {
    pagerPID = try r.processID(ReplyKey.pagerPID)
    attachments = try r.uint64(ReplyKey.attachments)
  }
}

/// `snapshot` and `snapshot_wait`. A live snapshot answered before its copy finished
/// (`wait: false`) is `.writing` and carries only the directory, pause and layer;
/// `.ready` carries the sizes and timings of the written snapshot.
public struct SnapshotReply: ControlReplyBody {
  public enum Status: String, Equatable, Sendable {
    case writing, ready
  }

  /// Known once the snapshot is written.
  public struct Written: Equatable, Sendable {
    public var memorySize: UInt64
    public var memoryDataBytes: UInt64
    public var stateBytes: UInt64
    public var totalMicroseconds: UInt64
    public var guestImageDigest: String
    /// Pages in a diff layer.
    public var layerPages: UInt64?
    public var contentDigest: String?
    public init(
      memorySize: UInt64, memoryDataBytes: UInt64, stateBytes: UInt64, totalMicroseconds: UInt64,
      guestImageDigest: String, layerPages: UInt64? = nil, contentDigest: String? = nil
    ) {
      self.memorySize = memorySize
      self.memoryDataBytes = memoryDataBytes
      self.stateBytes = stateBytes
      self.totalMicroseconds = totalMicroseconds
      self.guestImageDigest = guestImageDigest
      self.layerPages = layerPages
      self.contentDigest = contentDigest
    }

    /// `layerPages` as bytes; nil when absent or when it would overflow.
    public var layerBytes: UInt64? {
      guard let layerPages else { return nil }
      let (bytes, overflow) = layerPages.multipliedReportingOverflow(by: 4096)
      return overflow ? nil : bytes
    }
  }

  public var directory: String
  /// How long the guest was paused.
  public var pauseMicroseconds: UInt64
  /// "full" or "diff" (`SnapshotManifest.MemoryLayer`'s raw value).
  public var memoryLayer: String
  /// nil while a live copy is still writing.
  public var written: Written?

  public var status: Status { written == nil ? .writing : .ready }

  public init(directory: String, pauseMicroseconds: UInt64, memoryLayer: String, written: Written?) {
    self.directory = directory
    self.pauseMicroseconds = pauseMicroseconds
    self.memoryLayer = memoryLayer
    self.written = written
  }

  public func encodeResult() -> [String: JSONValue] {
    var o: [String: JSONValue] = [
      ReplyKey.dir: .string(directory), ReplyKey.status: .string(status.rawValue),
      ReplyKey.pauseMicroseconds: wire(pauseMicroseconds), ReplyKey.memoryLayer: .string(memoryLayer),
    ]
    if let w = written {
      o[ReplyKey.memorySize] = wire(w.memorySize)
      o[ReplyKey.memoryDataBytes] = wire(w.memoryDataBytes)
      o[ReplyKey.stateBytes] = wire(w.stateBytes)
      o[ReplyKey.totalMicroseconds] = wire(w.totalMicroseconds)
      o[ReplyKey.guestImageDigest] = .string(w.guestImageDigest)
      if let pages = w.layerPages { o[ReplyKey.layerPages] = wire(pages) }
      if let digest = w.contentDigest { o[ReplyKey.contentDigest] = .string(digest) }
    }
    return o
  }

  public init(result r: JSONObjectReader) throws(ProtocolError) {
    directory = try r.string(ReplyKey.dir)
    let statusText = try r.string(ReplyKey.status)
    guard let status = Status(rawValue: statusText) else {
      throw r.invalid(ReplyKey.status, expected: "\"writing\" or \"ready\"")
    }
    pauseMicroseconds = try r.uint64(ReplyKey.pauseMicroseconds)
    memoryLayer = try r.string(ReplyKey.memoryLayer)
    guard status == .ready else {
      written = nil
      return
    }
    written = Written(
      memorySize: try r.uint64(ReplyKey.memorySize), memoryDataBytes: try r.uint64(ReplyKey.memoryDataBytes),
      stateBytes: try r.uint64(ReplyKey.stateBytes), totalMicroseconds: try r.uint64(ReplyKey.totalMicroseconds),
      guestImageDigest: try r.string(ReplyKey.guestImageDigest), layerPages: try r.optionalUInt64(ReplyKey.layerPages),
      contentDigest: try r.optionalString(ReplyKey.contentDigest))
  }
}

/// The decoded reply to any request, for callers that do not know the request statically.
public enum ControlReply: Equatable, Sendable {
  case status(VMStatusReply)
  case pause(PauseReply)
  case resume(ResumeReply)
  case snapshot(SnapshotReply)
  case stop(StopReply)
  case attachPager(AttachPagerReply)

  /// Decodes `result` as the reply to `request`.
  public static func decode(_ result: [String: JSONValue], for request: ControlRequest) throws(ProtocolError)
    -> ControlReply
  {
    switch request {
    case .status: return .status(try .decode(result))
    case .pause: return .pause(try .decode(result))
    case .resume: return .resume(try .decode(result))
    case .snapshot, .snapshotWait: return .snapshot(try .decode(result))
    case .stop: return .stop(try .decode(result))
    case .attachPager: return .attachPager(try .decode(result))
    }
  }

  public func encodeResult() -> [String: JSONValue] {
    switch self {
    case .status(let r): return r.encodeResult()
    case .pause(let r): return r.encodeResult()
    case .resume(let r): return r.encodeResult()
    case .snapshot(let r): return r.encodeResult()
    case .stop(let r): return r.encodeResult()
    case .attachPager(let r): return r.encodeResult()
    }
  }
}

extension ControlResponse {
  public static func success(_ reply: some ControlReplyBody) -> ControlResponse {
    ControlResponse(ok: true, result: reply.encodeResult())
  }
}
