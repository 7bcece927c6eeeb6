/// A request on a VM's control socket (Unix stream, newline-delimited JSON, one response per request).
public enum ControlRequest: Equatable, Sendable {
  case status
  case pause
  case resume
  /// Write a snapshot into `directory` (created by the VMM); `parentTag` is recorded in the manifest.
  /// `diff`: only the pages changed since the VM was restored, as a layer over the snapshot it
  /// was restored from (`parentTag` must name that snapshot).
  /// `live`: the guest is paused only to capture state and arm write-protection, then runs while
  /// memory is copied (pager-backed VMs); with `wait: false` the answer comes once the guest
  /// runs again and `snapshotWait` collects the outcome.
  case snapshot(directory: String, parentTag: String?, diff: Bool = false, live: Bool = false, wait: Bool = true)
  /// Waits for a live snapshot started with `wait: false` and returns its outcome.
  case snapshotWait(directory: String)
  case stop
  /// Hand the VM's userfaultfd to a (new) pager listening on `socket` (the restart policy).
  case attachPager(socket: String)

  /// The wire name in `"op"`.
  public var op: String {
    switch self {
    case .status: return "status"
    case .pause: return "pause"
    case .resume: return "resume"
    case .snapshot: return "snapshot"
    case .snapshotWait: return "snapshot_wait"
    case .stop: return "stop"
    case .attachPager: return "attach_pager"
    }
  }
}

/// The answer to a control request: `{"ok":true,"result":{…}}` or
/// `{"ok":false,"error":{"code":"…","message":"…"}}`.
public struct ControlResponse: Equatable, Sendable {
  public var ok: Bool
  public var result: [String: JSONValue]
  /// Must be set when `ok` is false.
  public var error: ControlErrorBody?

  public init(ok: Bool, result: [String: JSONValue] = [:], error: ControlErrorBody? = nil) {
    self.ok = ok
    self.result = result
    self.error = error
  }

  public static func failure(code: String, message: String) -> ControlResponse {
    ControlResponse(ok: false, error: ControlErrorBody(code: code, message: message))
  }
}

public struct ControlErrorBody: Equatable, Sendable {
  /// Machine-readable, e.g. "bad_request", "not_running".
  public var code: String
  /// For humans.
  public var message: String

  public init(code: String, message: String) {
    self.code = code
    self.message = message
  }
}

/// Encoding of control lines. Output is compact JSON (never contains a raw newline) plus "\n".
public enum ControlCodec {
  /// Longest accepted line, newline included; longer lines are refused, not buffered.
  public static let maxLineBytes = 65536

  enum Key {
    static let op = "op"
    static let dir = "dir"
    static let parentTag = "parent_tag"
    static let socket = "socket"
    static let mode = "mode"
    static let wait = "wait"
    static let ok = "ok"
    static let result = "result"
    static let error = "error"
    static let code = "code"
    static let message = "message"
  }

  public static func encode(_ r: ControlRequest) -> String {
    var o: [String: JSONValue] = [Key.op: .string(r.op)]
    if case .snapshot(let directory, let parentTag, let diff, let live, let wait) = r {
      o[Key.dir] = .string(directory)
      if let parentTag { o[Key.parentTag] = .string(parentTag) }
      if diff { o[Key.mode] = .string("diff") }
      if live { o[Key.mode] = .string("live") }
      if !wait { o[Key.wait] = .bool(false) }
    }
    if case .snapshotWait(let directory) = r { o[Key.dir] = .string(directory) }
    if case .attachPager(let socket) = r { o[Key.socket] = .string(socket) }
    return JSONValue.object(o).serialized() + "\n"
  }

  public static func encode(_ r: ControlResponse) -> String {
    var o: [String: JSONValue] = [Key.ok: .bool(r.ok)]
    if r.ok || !r.result.isEmpty { o[Key.result] = .object(r.result) }
    if let e = r.error {
      o[Key.error] = .object([Key.code: .string(e.code), Key.message: .string(e.message)])
    }
    return JSONValue.object(o).serialized() + "\n"
  }

  /// Parses one line (with or without its trailing "\n" or "\r\n"). Unknown keys are ignored
  /// for forward compatibility; an unknown op is an error naming it.
  public static func decodeRequest(_ line: [UInt8]) throws(ProtocolError) -> ControlRequest {
    let source = "control request"
    let r = try JSONObjectReader(parseLine(line, source: source), source: source)
    let op = try r.string(Key.op)
    switch op {
    case "status": return .status
    case "pause": return .pause
    case "resume": return .resume
    case "stop": return .stop
    case "snapshot":
      let directory = try r.string(Key.dir)
      if directory.isEmpty || directory.utf8.contains(0) {
        throw r.invalid(Key.dir, expected: "a non-empty path without NUL bytes")
      }
      let parentTag = try r.optionalString(Key.parentTag)
      if let parentTag, !SnapshotTag.isValid(parentTag) {
        throw r.invalid(Key.parentTag, expected: SnapshotTag.ruleDescription)
      }
      let mode = try r.optionalString(Key.mode) ?? "full"
      guard ["full", "diff", "live"].contains(mode) else {
        throw r.invalid(Key.mode, expected: "\"full\", \"diff\" or \"live\"")
      }
      if mode == "diff" && parentTag == nil {
        throw r.invalid(Key.parentTag, expected: "the tag of the snapshot the VM was restored from (needed for diff)")
      }
      let wait = try r.optionalBool(Key.wait) ?? true
      if !wait && mode != "live" { throw r.invalid(Key.wait, expected: "true unless mode is live") }
      return .snapshot(
        directory: directory, parentTag: parentTag, diff: mode == "diff", live: mode == "live", wait: wait)
    case "snapshot_wait":
      let directory = try r.string(Key.dir)
      if directory.isEmpty || directory.utf8.contains(0) {
        throw r.invalid(Key.dir, expected: "a non-empty path without NUL bytes")
      }
      return .snapshotWait(directory: directory)
    case "attach_pager":
      let socket = try r.string(Key.socket)
      if socket.isEmpty || socket.utf8.contains(0) {
        throw r.invalid(Key.socket, expected: "a non-empty path without NUL bytes")
      }
      return .attachPager(socket: socket)
    default:
      var quoted = ""
      JSONValue.writeString(op, to: &quoted)
      throw ProtocolError(
        .unknownType,
        "\(source): unknown op \(quoted) (expected status, pause, resume, snapshot, snapshot_wait, stop or attach_pager)"
      )
    }
  }

  public static func decodeResponse(_ line: [UInt8]) throws(ProtocolError) -> ControlResponse {
    let source = "control response"
    let r = try JSONObjectReader(parseLine(line, source: source), source: source)
    let ok = try r.bool(Key.ok)
    let result = try r.optionalObject(Key.result)?.members ?? [:]
    var error: ControlErrorBody?
    if let e = try r.optionalObject(Key.error) {
      error = ControlErrorBody(code: try e.string(Key.code), message: try e.string(Key.message))
    }
    if !ok && error == nil {
      throw r.missing(Key.error)
    }
    return ControlResponse(ok: ok, result: result, error: error)
  }

  private static func parseLine(_ line: [UInt8], source: String) throws(ProtocolError) -> JSONValue {
    if line.count > maxLineBytes {
      throw ProtocolError(.tooLarge, "\(source): line of \(line.count) bytes exceeds the limit of \(maxLineBytes)")
    }
    var end = line.count
    if end > 0 && line[end - 1] == UInt8(ascii: "\n") { end -= 1 }
    if end > 0 && line[end - 1] == UInt8(ascii: "\r") { end -= 1 }
    if line[..<end].contains(UInt8(ascii: "\n")) {
      throw ProtocolError(.malformed, "\(source): more than one line")
    }
    return try JSONValue.parse(Array(line[..<end]), source: source, maxBytes: maxLineBytes)
  }
}

/// Splits a byte stream into newline-terminated lines (for the control socket), refusing a
/// line longer than `maxLineBytes` instead of buffering without bound.
public struct LineDecoder: Sendable {
  public let maxLineBytes: Int
  private var buffer: [UInt8] = []
  private var start = 0
  /// Where the newline search resumes, so repeated `next()` calls on a long partial line stay linear.
  private var scanned = 0

  public init(maxLineBytes: Int = ControlCodec.maxLineBytes) {
    self.maxLineBytes = maxLineBytes
  }

  public var bufferedByteCount: Int { buffer.count - start }

  public mutating func feed(_ bytes: some Collection<UInt8>) {
    if start > 0 && start >= buffer.count / 2 {
      buffer.removeSubrange(0..<start)
      scanned -= start
      start = 0
    }
    buffer.append(contentsOf: bytes)
  }

  /// The next line including its "\n", or nil if no complete line is buffered yet.
  public mutating func next() throws(ProtocolError) -> [UInt8]? {
    var i = max(scanned, start)
    while i < buffer.count {
      if buffer[i] == UInt8(ascii: "\n") {
        let length = i + 1 - start
        if length > maxLineBytes { throw tooLong(length) }
        let line = Array(buffer[start...i])
        start = i + 1
        scanned = start
        return line
      }
      i += 1
    }
    scanned = i
    if buffer.count - start > maxLineBytes { throw tooLong(buffer.count - start) }
    return nil
  }

  private func tooLong(_ length: Int) -> ProtocolError {
    ProtocolError(.tooLarge, "control stream: line of at least \(length) bytes exceeds the limit of \(maxLineBytes)")
  }
}
