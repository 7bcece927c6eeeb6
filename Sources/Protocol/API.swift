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
  /// Linux guests: run Python in the agent's interpreter, which every child then inherits warm
  /// (`{"op":"eval","code":"import json, decimal"}`).
  case eval(code: String, timeoutSeconds: UInt32)

  /// The agent frame's u16 key length.
  public static let maxKeyBytes = Int(UInt16.max)
  /// Key, value and the length field within one agent payload.
  public static let maxValueBytes = AgentProtocol.maxPayload - 2 - maxKeyBytes

  public var agentRequest: AgentRequest {
    switch self {
    case .ping: .ping
    case .fill(let pages, let seed): .fill(pages: pages, seed: seed)
    case .counter(let delta): .counter(delta: delta)
    case .kvSet(let key, let value): .kvSet(key: Array(key.utf8), value: Array(value.utf8))
    case .exec(let args, let timeout): .exec(args: args, timeoutSeconds: timeout)
    case .eval(let code, let timeout): .eval(code: code, timeoutSeconds: timeout)
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
      .object([
        "op": .string("exec"), "args": .array(args.map { .string($0) }), "timeout_secs": .integer(Int64(timeout)),
      ])
    case .eval(let code, let timeout):
      .object(["op": .string("eval"), "code": .string(code), "timeout_secs": .integer(Int64(timeout))])
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
  /// x86 Linux's COMMAND_LINE_SIZE.
  public static let maxCommandLineBytes = 2048
  public static let maxWarmupSteps = 1024

  public static func decode(_ body: [UInt8]) throws(ProtocolError) -> CreateSnapshotRequest {
    let r = try JSONObjectReader(JSONValue.parse(body, source: source), source: source)
    let tag = try r.string("tag")
    try SnapshotTag.validate(tag)
    let kernel = try r.hostPath("kernel")
    let image = try r.hostPath("image")
    if kernel != nil && image != nil {
      throw ProtocolError(
        .badValue, "\(source): \"kernel\" (a Linux parent) and \"image\" (a test-guest image) are exclusive")
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
      case "fill":
        let pages = try s.uint64("pages")
        // The guest's data area is smaller than its memory: more pages than memory has is never valid.
        guard pages <= memory * 256 else {
          throw s.invalid("pages", expected: "at most \(memory * 256) (memory_mib × 256)")
        }
        steps.append(.fill(pages: pages, seed: try s.optionalUInt64("seed") ?? 1))
      case "counter": steps.append(.counter(delta: try s.int64("delta")))
      case "kv_set":
        let key = try s.string("key")
        let value = try s.string("value")
        // The agent frame carries the key's length as a u16 and the whole payload in 1 MiB.
        guard key.utf8.count <= WarmupStep.maxKeyBytes else {
          throw s.invalid(
            "key", expected: "a key of at most \(WarmupStep.maxKeyBytes) bytes (got \(key.utf8.count) bytes)")
        }
        guard value.utf8.count <= WarmupStep.maxValueBytes else {
          throw s.invalid(
            "value", expected: "a value of at most \(WarmupStep.maxValueBytes) bytes (got \(value.utf8.count) bytes)")
        }
        steps.append(.kvSet(key: key, value: value))
      case "exec":
        let args = try ExecRequest.arguments(s)
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
      case "eval":
        let eval = try EvalRequest.decode(s, defaultTimeout: 60)
        steps.append(.eval(code: eval.code, timeoutSeconds: eval.timeoutSeconds))
      default: throw s.invalid("op", expected: "ping, fill, counter, kv_set, exec, eval or write_file")
      }
    }
    guard steps.count <= maxWarmupSteps else { throw r.invalid("warmup", expected: "at most \(maxWarmupSteps) steps") }
    let cmdline = try r.optionalString("cmdline")
    if let cmdline, cmdline.utf8.count > maxCommandLineBytes || cmdline.utf8.contains(0) {
      throw r.invalid("cmdline", expected: "a command line of at most \(maxCommandLineBytes) bytes without NUL")
    }
    let vcpus = try r.optionalUInt64("vcpus") ?? 1
    guard (1...UInt64(maxVCPUs)).contains(vcpus) else { throw r.invalid("vcpus", expected: "1...\(maxVCPUs)") }
    return CreateSnapshotRequest(
      tag: tag, image: image, kernel: kernel, rootfs: try r.hostPath("rootfs"),
      initrd: try r.hostPath("initrd"), cmdline: cmdline, memoryMiB: memory,
      warmup: steps, bootWaitSeconds: wait, vcpus: UInt32(truncatingIfNeeded: vcpus))
  }
}

/// POST /v1/sandboxes
public struct SpawnRequest: Equatable, Sendable {
  public static let maxChildren = 1000
  /// 1 TiB: far above any child, and `<< 20` of it fits in bytes with room to spare.
  public static let maxMemoryLimitMiB: UInt64 = 1 << 20
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
    if let limit, !(8...maxMemoryLimitMiB).contains(limit) {
      throw r.invalid("memory_limit_mib", expected: "8...\(maxMemoryLimitMiB) MiB")
    }
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
  /// `env` (an object of strings), `cwd` (an absolute path) and `stdin` (a string).
  public var options: ExecOptions

  public init(args: [String], timeoutSeconds: UInt32, options: ExecOptions = ExecOptions()) {
    self.args = args
    self.timeoutSeconds = timeoutSeconds
    self.options = options
  }

  public static func decode(_ body: [UInt8]) throws(ProtocolError) -> ExecRequest {
    let source = "request body"
    let r = try JSONObjectReader(JSONValue.parse(body, source: source), source: source)
    let args = try arguments(r)
    let timeout = try r.optionalUInt64("timeout_secs") ?? 30
    guard (1...3600).contains(timeout) else { throw r.invalid("timeout_secs", expected: "1...3600") }
    var options = ExecOptions()
    if let env = try r.optionalObject("env") {
      for (name, value) in env.members.sorted(by: { $0.key < $1.key }) {
        guard let text = value.stringValue else { throw env.wrongType(name, expected: "a string") }
        guard !name.isEmpty, !name.utf8.contains(UInt8(ascii: "=")), !name.utf8.contains(0), !text.utf8.contains(0)
        else {
          throw env.invalid(name, expected: "a variable name without '=' or NUL and a value without NUL")
        }
        options.environment.append(name + "=" + text)
      }
      guard options.environment.count <= maxArguments else {
        throw r.invalid("env", expected: "at most \(maxArguments) variables")
      }
    }
    if let cwd = try r.optionalString("cwd") {
      guard cwd.hasPrefix("/"), !cwd.utf8.contains(0), cwd.utf8.count <= 4096 else {
        throw r.invalid("cwd", expected: "an absolute path of at most 4096 bytes without NUL")
      }
      options.workingDirectory = cwd
    }
    if let stdin = try r.optionalString("stdin") { options.stdin = Array(stdin.utf8) }
    // Everything travels in one agent frame: arguments, environment, cwd and stdin together.
    let encoded =
      args.reduce(8) { $0 + 4 + $1.utf8.count } + options.environment.reduce(4) { $0 + 4 + $1.utf8.count } + 4
      + (options.workingDirectory?.utf8.count ?? 0) + 4 + options.stdin.count
    guard encoded <= AgentProtocol.maxPayload else {
      throw ProtocolError(
        .badValue,
        "\(source): args, env, cwd and stdin together take \(encoded) bytes in the agent frame, at most \(AgentProtocol.maxPayload)"
      )
    }
    return ExecRequest(args: args, timeoutSeconds: UInt32(timeout), options: options)
  }

  /// Most arguments one exec takes.
  public static let maxArguments = 4096
  /// The agent payload holds the timeout, the count and each argument with its u32 length.
  public static let maxArgumentBytes = AgentProtocol.maxPayload - 8

  /// `args`: a non-empty array of strings whose agent encoding fits one frame.
  public static func arguments(_ r: JSONObjectReader) throws(ProtocolError) -> [String] {
    var args: [String] = []
    var encoded = 0
    for value in try r.array("args") {
      guard let s = value.stringValue else { throw r.wrongType("args", expected: "an array of strings") }
      encoded += 4 + s.utf8.count
      args.append(s)
    }
    guard !args.isEmpty else { throw r.invalid("args", expected: "a program and its arguments") }
    guard args.count <= maxArguments, encoded <= maxArgumentBytes else {
      throw ProtocolError(
        .badValue,
        "\(r.source): field \(r.fieldName("args")): expected at most \(maxArguments) arguments of \(maxArgumentBytes) bytes together (4 per argument included), got \(args.count) arguments of \(encoded) bytes"
      )
    }
    return args
  }
}

/// POST /v1/sandboxes/:id/eval: Python code for the guest agent's long-lived interpreter.
public struct EvalRequest: Equatable, Sendable {
  /// Largest code accepted: it travels in one agent frame with its header fields.
  public static let maxCodeBytes = AgentProtocol.maxPayload - 64

  public var code: String
  public var timeoutSeconds: UInt32

  public init(code: String, timeoutSeconds: UInt32) {
    self.code = code
    self.timeoutSeconds = timeoutSeconds
  }

  public static func decode(_ body: [UInt8]) throws(ProtocolError) -> EvalRequest {
    let source = "request body"
    return try decode(JSONObjectReader(JSONValue.parse(body, source: source), source: source), defaultTimeout: 30)
  }

  /// `code` (required, at most `maxCodeBytes` of UTF-8) and `timeout_secs` (1...3600).
  static func decode(_ r: JSONObjectReader, defaultTimeout: UInt64) throws(ProtocolError) -> EvalRequest {
    let code = try r.string("code")
    guard code.utf8.count <= maxCodeBytes else {
      throw r.invalid("code", expected: "at most \(maxCodeBytes) bytes of UTF-8 (got \(code.utf8.count))")
    }
    let timeout = try r.optionalUInt64("timeout_secs") ?? defaultTimeout
    guard (1...3600).contains(timeout) else { throw r.invalid("timeout_secs", expected: "1...3600") }
    return EvalRequest(code: code, timeoutSeconds: UInt32(timeout))
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
  /// With `per_child_netns`: the child's namespace (a name `ip netns exec` accepts) and its
  /// guest's address inside it.
  public var netns: String?
  public var guestAddr: String?
  /// The latest branch of this sandbox: its tag, "writing", "ready" or "failed", and why it failed.
  public var lastBranchTag: String?
  public var lastBranchStatus: String?
  public var lastBranchError: String?
  /// When the child is deleted (spawned with `timeout_secs`), in Unix seconds.
  public var expiresAtUnix: Int64?

  public init(
    id: String, snapshotTag: String, createdAtUnix: Int64, pid: Int32?, pagerPID: Int32?, backend: String,
    state: String, exitReason: String? = nil, memoryLimitMiB: UInt64? = nil, branchCount: Int = 0,
    lastBranchMemoryPath: String? = nil, pagerRestarts: Int = 0, lastBranchTag: String? = nil,
    lastBranchStatus: String? = nil, lastBranchError: String? = nil, netns: String? = nil, guestAddr: String? = nil,
    expiresAtUnix: Int64? = nil
  ) {
    self.lastBranchTag = lastBranchTag
    self.lastBranchStatus = lastBranchStatus
    self.lastBranchError = lastBranchError
    self.netns = netns
    self.guestAddr = guestAddr
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
    if let lastBranchTag { o["last_branch_tag"] = .string(lastBranchTag) }
    if let lastBranchStatus { o["last_branch_status"] = .string(lastBranchStatus) }
    if let lastBranchError { o["last_branch_error"] = .string(lastBranchError) }
    if let netns { o["netns"] = .string(netns) }
    if let guestAddr { o["guest_addr"] = .string(guestAddr) }
    if let expiresAtUnix { o["expires_at_unix"] = .integer(expiresAtUnix) }
    return .object(o)
  }
}

extension JSONObjectReader {
  /// Most bytes of a host path (Linux PATH_MAX).
  public static let maxPathBytes = 4096

  /// An optional host path: at most PATH_MAX bytes, no NUL (it would cut the path short in argv).
  public func hostPath(_ key: String) throws(ProtocolError) -> String? {
    guard let path = try optionalString(key) else { return nil }
    guard !path.isEmpty, path.utf8.count <= Self.maxPathBytes, !path.utf8.contains(0) else {
      throw invalid(key, expected: "a path of 1...\(Self.maxPathBytes) bytes without NUL")
    }
    return path
  }
}

/// `{"error": "<message>"}`, the body of every error response.
public func apiErrorBody(_ message: String) -> String {
  JSONValue.object(["error": .string(message)]).serialized()
}
