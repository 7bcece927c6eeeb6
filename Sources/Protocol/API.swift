/// The forkd v1 HTTP API's bodies (compatible with the public forkd controller's contract).
/// Requests are validated here, so every 400 names the field and the value that was wrong.
public enum APIVersion {
  public static let version = "0.1.0"
  public static let api = "v1"
}

/// One warm-up step run against the parent's agent before a snapshot is taken.
public enum WarmupStep: Equatable, Sendable {
  case ping
  case fill(pages: UInt64, seed: UInt64)
  case counter(delta: Int64)
  case kvSet(key: String, value: String)
  /// Linux guests: run a program (e.g. import the libraries every child will need).
  case exec(args: [String], timeoutSeconds: UInt32)
  /// A file every child will see (written in one or more `fileWrite` frames).
  case writeFile(path: String, content: [UInt8], mode: UInt32)

  public var agentRequest: AgentRequest {
    switch self {
    case .ping: .ping
    case .fill(let pages, let seed): .fill(pages: pages, seed: seed)
    case .counter(let delta): .counter(delta: delta)
    case .kvSet(let key, let value): .kvSet(key: Array(key.utf8), value: Array(value.utf8))
    case .exec(let args, let timeout): .exec(args: args, timeoutSeconds: timeout)
    case .writeFile(let path, let content, let mode):
      .fileWrite(path: Array(path.utf8), mode: mode, offset: 0, truncate: true, data: content)
    }
  }

  public var jsonValue: JSONValue {
    switch self {
    case .ping: .object(["op": .string("ping")])
    case .fill(let pages, let seed):
      .object(["op": .string("fill"), "pages": .integer(Int64(pages)), "seed": .integer(Int64(bitPattern: seed))])
    case .counter(let delta): .object(["op": .string("counter"), "delta": .integer(delta)])
    case .kvSet(let key, let value): .object(["op": .string("kv_set"), "key": .string(key), "value": .string(value)])
    case .exec(let args, let timeout):
      .object(["op": .string("exec"), "args": .array(args.map { .string($0) }), "timeout_secs": .integer(Int64(timeout))])
    case .writeFile(let path, let content, let mode):
      .object([
        "op": .string("write_file"), "path": .string(path),
        "content": .string(String(decoding: content, as: UTF8.self)),
        "mode": .string(String(mode, radix: 8)),
      ])
    }
  }
}

/// POST /v1/snapshots
public struct CreateSnapshotRequest: Equatable, Sendable {
  public var tag: String
  /// `builtin:test-guest` (default) or the path of an ELF image.
  public var image: String?
  /// A Linux parent: the kernel (bzImage or ELF vmlinux), its root file system as the virtio-blk
  /// disk (read-only base, writes kept per VM), and (extensions) an initramfs and command line.
  public var kernel: String?
  public var rootfs: String?
  public var initrd: String?
  public var cmdline: String?
  public var memoryMiB: UInt64
  public var warmup: [WarmupStep]
  public var bootWaitSeconds: UInt64
  /// vCPUs of the parent, and so of every child restored from it.
  public var vcpus: UInt32 = 1

  public static let maxVCPUs: UInt32 = 8
  public static let source = "request body"

  public static func decode(_ body: [UInt8]) throws(ProtocolError) -> CreateSnapshotRequest {
    let r = try JSONObjectReader(JSONValue.parse(body, source: source), source: source)
    let tag = try r.string("tag")
    try SnapshotTag.validate(tag)
    let kernel = try r.optionalString("kernel")
    let image = try r.optionalString("image")
    if kernel != nil && image != nil {
      throw ProtocolError(.badValue, "\(source): \"kernel\" (a Linux parent) and \"image\" (a test-guest image) are exclusive")
    }
    // Linux needs room for its kernel, initramfs and page cache.
    let memory = try r.optionalUInt64("memory_mib") ?? (kernel == nil ? 64 : 256)
    guard (2...3072).contains(memory), memory % 2 == 0 else {
      throw r.invalid("memory_mib", expected: "an even number of MiB from 2 to 3072")
    }
    let wait = try r.optionalUInt64("boot_wait_secs") ?? 10
    guard wait <= 60 else { throw r.invalid("boot_wait_secs", expected: "0...60") }
    var steps: [WarmupStep] = []
    for (index, raw) in (try r.optionalArray("warmup") ?? []).enumerated() {
      let s = try JSONObjectReader(raw, source: "\(source) warmup[\(index)]")
      switch try s.string("op") {
      case "ping": steps.append(.ping)
      case "fill": steps.append(.fill(pages: try s.uint64("pages"), seed: try s.optionalUInt64("seed") ?? 1))
      case "counter": steps.append(.counter(delta: try s.int64("delta")))
      case "kv_set": steps.append(.kvSet(key: try s.string("key"), value: try s.string("value")))
      case "exec":
        let args = try s.array("args").map { (v) throws(ProtocolError) -> String in
          guard let a = v.stringValue else { throw s.invalid("args", expected: "an array of strings") }
          return a
        }
        guard !args.isEmpty else { throw s.invalid("args", expected: "a program and its arguments") }
        let timeout = try s.optionalUInt64("timeout_secs") ?? 60
        guard (1...3600).contains(timeout) else { throw s.invalid("timeout_secs", expected: "1...3600") }
        steps.append(.exec(args: args, timeoutSeconds: UInt32(timeout)))
      case "write_file":
        let path = try SandboxFiles.path(try s.string("path"))
        let mode = try SandboxFiles.mode(try s.optionalString("mode"))
        let text = try s.optionalString("content")
        let encoded = try s.optionalString("content_b64")
        guard (text == nil) != (encoded == nil) else {
          throw s.invalid("content", expected: "either \"content\" (text) or \"content_b64\" (base64), not both")
        }
        var content = Array((text ?? "").utf8)
        if let encoded {
          guard let bytes = Base64.decode(encoded) else { throw s.invalid("content_b64", expected: "standard base64") }
          content = bytes
        }
        guard content.count <= SandboxFiles.maxFileBytes else {
          throw s.invalid("content", expected: "at most \(SandboxFiles.maxFileBytes) bytes")
        }
        steps.append(.writeFile(path: path, content: content, mode: mode))
      default: throw s.invalid("op", expected: "ping, fill, counter, kv_set, exec or write_file")
      }
    }
    let vcpus = try r.optionalUInt64("vcpus") ?? 1
    guard (1...UInt64(maxVCPUs)).contains(vcpus) else { throw r.invalid("vcpus", expected: "1...\(maxVCPUs)") }
    return CreateSnapshotRequest(
      tag: tag, image: image, kernel: kernel, rootfs: try r.optionalString("rootfs"),
      initrd: try r.optionalString("initrd"), cmdline: try r.optionalString("cmdline"), memoryMiB: memory,
      warmup: steps, bootWaitSeconds: wait, vcpus: UInt32(truncatingIfNeeded: vcpus))
  }
}

/// POST /v1/sandboxes
public struct SpawnRequest: Equatable, Sendable {
  public static let maxChildren = 1000
  public var snapshotTag: String
  public var count: Int
  public var memoryLimitMiB: UInt64?
  public var perChildNetns: Bool
  public var prewarm: Bool
  public var liveFork: Bool
  public var hugepages: Bool
  /// Each child is deleted this many seconds after its spawn (unless extended).
  public var timeoutSeconds: UInt64? = nil

  public static func decode(_ body: [UInt8]) throws(ProtocolError) -> SpawnRequest {
    let source = "request body"
    let r = try JSONObjectReader(JSONValue.parse(body, source: source), source: source)
    let tag = try r.string("snapshot_tag")
    try SnapshotTag.validate(tag)
    let n = try r.optionalInt64("n") ?? 1
    guard n >= 1, n <= Int64(maxChildren) else { throw r.invalid("n", expected: "1...\(maxChildren)") }
    let limit = try r.optionalUInt64("memory_limit_mib")
    if let limit, limit < 8 { throw r.invalid("memory_limit_mib", expected: "at least 8") }
    return SpawnRequest(
      snapshotTag: tag, count: Int(n), memoryLimitMiB: limit,
      perChildNetns: try r.optionalBool("per_child_netns") ?? false,
      prewarm: try r.optionalBool("prewarm") ?? false, liveFork: try r.optionalBool("live_fork") ?? false,
      hugepages: try r.optionalBool("hugepages") ?? false, timeoutSeconds: try SandboxTimeout.read(r))
  }
}

/// POST /v1/sandboxes/:id/exec
public struct ExecRequest: Equatable, Sendable {
  public var args: [String]
  public var timeoutSeconds: UInt32

  public init(args: [String], timeoutSeconds: UInt32) {
    self.args = args
    self.timeoutSeconds = timeoutSeconds
  }

  public static func decode(_ body: [UInt8]) throws(ProtocolError) -> ExecRequest {
    let source = "request body"
    let r = try JSONObjectReader(JSONValue.parse(body, source: source), source: source)
    let raw = try r.array("args")
    var args: [String] = []
    for value in raw {
      guard let s = value.stringValue else { throw r.wrongType("args", expected: "an array of strings") }
      args.append(s)
    }
    guard !args.isEmpty else { throw r.invalid("args", expected: "at least one argument") }
    let timeout = try r.optionalUInt64("timeout_secs") ?? 30
    guard (1...3600).contains(timeout) else { throw r.invalid("timeout_secs", expected: "1...3600") }
    return ExecRequest(args: args, timeoutSeconds: UInt32(timeout))
  }
}

/// POST /v1/snapshots/:tag/compact
public struct CompactRequest: Equatable, Sendable {
  public var to: String

  public static func decode(_ body: [UInt8]) throws(ProtocolError) -> CompactRequest {
    let source = "request body"
    let r = try JSONObjectReader(JSONValue.parse(body, source: source), source: source)
    let to = try r.string("to")
    try SnapshotTag.validate(to)
    return CompactRequest(to: to)
  }
}

/// POST /v1/sandboxes/:id/branch
public struct BranchRequest: Equatable, Sendable {
  public enum Mode: String, Sendable { case full, diff, live }
  public var tag: String?
  public var mode: Mode
  public var wait: Bool

  public static func decode(_ body: [UInt8]) throws(ProtocolError) -> BranchRequest {
    let source = "request body"
    let value: JSONValue = body.isEmpty ? .object([:]) : try JSONValue.parse(body, source: source)
    let r = try JSONObjectReader(value, source: source)
    let tag = try r.optionalString("tag")
    if let tag { try SnapshotTag.validate(tag) }
    let modeName = try r.optionalString("mode")
    let legacyDiff = try r.optionalBool("diff")
    if modeName != nil && legacyDiff != nil {
      throw ProtocolError(.badValue, "\(source): \"diff\" and \"mode\" are exclusive; use \"mode\"")
    }
    var mode = Mode.full
    if let modeName {
      guard let m = Mode(rawValue: modeName) else { throw r.invalid("mode", expected: "full, diff or live") }
      mode = m
    } else if legacyDiff == true {
      mode = .diff
    }
    let wait = try r.optionalBool("wait") ?? true
    if !wait && mode != .live { throw r.invalid("wait", expected: "true unless mode is live") }
    return BranchRequest(tag: tag, mode: mode, wait: wait)
  }
}

/// GET /v1/snapshots entries and info.
public struct SnapshotInfo: Equatable, Sendable {
  public var tag: String
  public var dir: String
  public var createdAtUnix: Int64
  public var memoryLogicalBytes: UInt64
  public var memoryPhysicalBytes: UInt64
  public var vmstateBytes: UInt64
  public var parentTag: String?
  public var ancestors: [String]
  public var dependents: [String]
  public var branchedFrom: String?
  public var pauseMS: Double?
  public var status: String?
  /// "full" or "diff".
  public var memoryLayer: String = "full"
  public var parentContentHash: String?
  /// Branch with mode diff: the layer's pages (all written or touched since restore) and bytes.
  public var diffPhysicalBytes: UInt64?
  public var diffLogicalBytes: UInt64?
  public var diffMS: Double?
  /// Diff layers between this snapshot and the full one its memory rests on (0: flat).
  public var chainDepth: Int = 0
  /// vCPUs every child restored from it runs with.
  public var vcpus: UInt32?

  public init(
    tag: String, dir: String, createdAtUnix: Int64, memoryLogicalBytes: UInt64 = 0, memoryPhysicalBytes: UInt64 = 0,
    vmstateBytes: UInt64 = 0, parentTag: String? = nil, ancestors: [String] = [], dependents: [String] = [],
    branchedFrom: String? = nil, pauseMS: Double? = nil, status: String? = nil
  ) {
    self.tag = tag
    self.dir = dir
    self.createdAtUnix = createdAtUnix
    self.memoryLogicalBytes = memoryLogicalBytes
    self.memoryPhysicalBytes = memoryPhysicalBytes
    self.vmstateBytes = vmstateBytes
    self.parentTag = parentTag
    self.ancestors = ancestors
    self.dependents = dependents
    self.branchedFrom = branchedFrom
    self.pauseMS = pauseMS
    self.status = status
  }

  /// The short form (list, create): `{tag, dir, created_at_unix}` plus branch fields when set.
  public var summaryJSON: JSONValue {
    var o: [String: JSONValue] = [
      "tag": .string(tag), "dir": .string(dir), "created_at_unix": .integer(createdAtUnix), "bootable": .bool(true),
    ]
    if let parentTag { o["parent_tag"] = .string(parentTag) }
    if let branchedFrom { o["branched_from"] = .string(branchedFrom) }
    if let pauseMS { o["pause_ms"] = .double(pauseMS) }
    if let status { o["status"] = .string(status) }
    if let diffPhysicalBytes { o["diff_physical_bytes"] = .integer(Int64(diffPhysicalBytes)) }
    if let diffLogicalBytes { o["diff_logical_bytes"] = .integer(Int64(diffLogicalBytes)) }
    if let diffMS { o["diff_ms"] = .double(diffMS) }
    if let vcpus { o["vcpus"] = .integer(Int64(vcpus)) }
    return .object(o)
  }

  /// GET /v1/snapshots/:tag/info
  public var infoJSON: JSONValue {
    guard case .object(var o) = summaryJSON else { return summaryJSON }
    o["memory_logical_bytes"] = .integer(Int64(memoryLogicalBytes))
    o["memory_physical_bytes"] = .integer(Int64(memoryPhysicalBytes))
    o["vmstate_bytes"] = .integer(Int64(vmstateBytes))
    o["chain_depth"] = .integer(Int64(chainDepth))
    o["memory_layer"] = .string(memoryLayer)
    if let parentContentHash { o["parent_content_hash"] = .string(parentContentHash) }
    o["ancestors"] = .array(ancestors.map { .string($0) })
    o["dependents"] = .array(dependents.map { .string($0) })
    return .object(o)
  }
}

/// GET /v1/sandboxes entries.
public struct SandboxInfo: Equatable, Sendable {
  public var id: String
  public var snapshotTag: String
  public var createdAtUnix: Int64
  public var pid: Int32?
  public var pagerPID: Int32?
  public var backend: String
  public var state: String
  public var exitReason: String?
  public var memoryLimitMiB: UInt64?
  public var branchCount: Int
  public var lastBranchMemoryPath: String?
  public var pagerRestarts: Int
  /// When the child is deleted (spawned with `timeout_secs`), in Unix seconds.
  public var expiresAtUnix: Int64?

  public init(
    id: String, snapshotTag: String, createdAtUnix: Int64, pid: Int32?, pagerPID: Int32?, backend: String,
    state: String, exitReason: String? = nil, memoryLimitMiB: UInt64? = nil, branchCount: Int = 0,
    lastBranchMemoryPath: String? = nil, pagerRestarts: Int = 0, expiresAtUnix: Int64? = nil
  ) {
    self.id = id
    self.snapshotTag = snapshotTag
    self.createdAtUnix = createdAtUnix
    self.pid = pid
    self.pagerPID = pagerPID
    self.backend = backend
    self.state = state
    self.exitReason = exitReason
    self.memoryLimitMiB = memoryLimitMiB
    self.branchCount = branchCount
    self.lastBranchMemoryPath = lastBranchMemoryPath
    self.pagerRestarts = pagerRestarts
    self.expiresAtUnix = expiresAtUnix
  }

  public var jsonValue: JSONValue {
    var o: [String: JSONValue] = [
      "id": .string(id), "snapshot_tag": .string(snapshotTag), "created_at_unix": .integer(createdAtUnix),
      "has_branched": .bool(branchCount > 0), "branch_count": .integer(Int64(branchCount)),
      "backend": .string(backend), "state": .string(state), "pager_restarts": .integer(Int64(pagerRestarts)),
    ]
    if let pid { o["pid"] = .integer(Int64(pid)) }
    if let pagerPID { o["pager_pid"] = .integer(Int64(pagerPID)) }
    if let exitReason { o["exit_reason"] = .string(exitReason) }
    if let memoryLimitMiB { o["memory_limit_mib"] = .integer(Int64(memoryLimitMiB)) }
    if let lastBranchMemoryPath { o["last_branch_memory_path"] = .string(lastBranchMemoryPath) }
    if let expiresAtUnix { o["expires_at_unix"] = .integer(expiresAtUnix) }
    return .object(o)
  }
}

/// `{"error": "<message>"}`, the body of every error response.
public func apiErrorBody(_ message: String) -> String {
  JSONValue.object(["error": .string(message)]).serialized()
}
