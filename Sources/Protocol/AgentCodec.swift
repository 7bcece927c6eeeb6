/// Payload encoding and decoding of agent messages (docs/test-guest.md, "Agent protocol").
public enum AgentCodec {
  /// A complete request frame.
  public static func encode(_ r: AgentRequest, id: UInt32) -> [UInt8] {
    AgentFrame(type: r.frameType, requestID: id, payload: payload(of: r)).encoded()
  }

  /// A complete response frame answering `request`. The type byte comes from the response
  /// (an error is always 0xff); pairing a response with the wrong request is a programming
  /// error caught by an assertion in debug builds.
  public static func encode(_ r: AgentResponse, to request: AgentRequest, id: UInt32) -> [UInt8] {
    if case .error = r {
    } else {
      assert(
        r.frameType == request.frameType | AgentProtocol.responseBit,
        "response \(r.frameType) does not answer request \(request.frameType)")
    }
    return AgentFrame(type: r.frameType, requestID: id, payload: payload(of: r)).encoded()
  }

  /// The payload of a request (without header).
  public static func payload(of r: AgentRequest) -> [UInt8] {
    var w = ByteWriter()
    switch r {
    case .ping:
      break
    case .echo(let bytes):
      w.bytes(bytes)
    case .fill(let pages, let seed):
      w.u64(pages)
      w.u64(seed)
    case .checksum(let pages):
      w.u64(pages)
    case .counter(let delta):
      w.i64(delta)
    case .kvSet(let key, let value):
      // Callers check `encodingProblem` first; a longer key is cut to what the u16 length says.
      let length = UInt16(clamping: key.count)
      w.u16(length)
      w.bytes(Array(key.prefix(Int(length))))
      w.bytes(value)
    case .kvGet(let key):
      w.bytes(key)
    case .exit(let code):
      w.u32(code)
    case .exec(let args, let timeoutSeconds, let options):
      w.u32(timeoutSeconds)
      w.u32(UInt32(truncatingIfNeeded: args.count))
      for a in args { w.string(a) }
      // The optional tail: u32 envc + "NAME=value" strings, cwd (empty: the agent's), stdin.
      if !options.isEmpty {
        w.u32(UInt32(truncatingIfNeeded: options.environment.count))
        for e in options.environment { w.string(e) }
        w.string(options.workingDirectory ?? "")
        w.lengthPrefixed(options.stdin)
      }
    case .console(let text):
      w.bytes(text)
    case .attack(let kind):
      w.u32(kind)
    case .eval(let code, let timeoutSeconds):
      w.u32(timeoutSeconds)
      w.string(code)
    case .fileWrite(let path, let mode, let offset, let truncate, let data):
      precondition(path.count <= Int(UInt16.max), "file path of \(path.count) bytes does not fit the u16 length")
      w.u64(offset)
      w.u32(mode)
      w.u8(truncate ? 1 : 0)
      w.u16(UInt16(path.count))
      w.bytes(path)
      w.bytes(data)
    case .fileRead(let path, let offset, let maxBytes):
      w.u64(offset)
      w.u32(maxBytes)
      w.bytes(path)
    case .fileList(let path), .fileDelete(let path):
      w.bytes(path)
    case .vcpuStatus:
      break
    }
    return w.bytes
  }

  /// The payload of a response (without header).
  public static func payload(of r: AgentResponse) -> [UInt8] {
    var w = ByteWriter()
    switch r {
    case .pong(let p):
      w.u32(p.kind)
      w.u32(p.agentVersion)
      w.u64(p.requestsServed)
      w.u64(p.counter)
    case .echo(let bytes):
      w.bytes(bytes)
    case .filled(let pages):
      w.u64(pages)
    case .checksum(let c):
      w.u64(c)
    case .counter(let v):
      w.u64(v)
    case .kvSet, .exiting, .consoleWritten, .attacking, .fileDeleted:
      break
    case .fileWritten(let size):
      w.u64(size)
    case .fileData(let d):
      w.u64(d.size)
      w.u32(d.mode)
      w.bytes(d.data)
    case .fileList(let entries):
      w.u32(UInt32(truncatingIfNeeded: entries.count))
      for e in entries {
        precondition(e.name.count <= Int(UInt16.max), "file name of \(e.name.count) bytes does not fit the u16 length")
        w.u8(e.kind.rawValue)
        w.u32(e.mode)
        w.u64(e.size)
        w.u16(UInt16(e.name.count))
        w.bytes(e.name)
      }
    case .vcpuStatus(let vcpus):
      w.u32(UInt32(truncatingIfNeeded: vcpus.count))
      for v in vcpus {
        w.u8(v.answered ? 1 : 0)
        w.u64(v.runs)
      }
    case .kvGet(let found, let value):
      w.u8(found ? 1 : 0)
      w.bytes(value)
    case .exec(let result):
      w.i32(result.exitCode)
      w.u8(result.timedOut ? 1 : 0)
      w.lengthPrefixed(result.stdout)
      w.lengthPrefixed(result.stderr)
    case .eval(let result):
      w.i32(result.exitCode)
      w.lengthPrefixed(result.result)
      w.lengthPrefixed(result.error)
      w.lengthPrefixed(result.stdout)
    case .error(let e):
      w.u32(e.code)
      w.string(e.message)
    }
    return w.bytes
  }

  /// Name of a request type for messages ("fill"), or nil if unknown.
  public static func typeName(_ type: UInt8) -> String? {
    if type == AgentProtocol.errorType { return "error" }
    switch type & ~AgentProtocol.responseBit {
    case 0x01: return "ping"
    case 0x02: return "echo"
    case 0x03: return "fill"
    case 0x04: return "checksum"
    case 0x05: return "counter"
    case 0x06: return "kv set"
    case 0x07: return "kv get"
    case 0x08: return "exit"
    case 0x09: return "exec"
    case 0x0a: return "console"
    case 0x0b: return "attack"
    case 0x20: return "eval"
    case 0x0c: return "file write"
    case 0x0d: return "file read"
    case 0x0e: return "file list"
    case 0x0f: return "file delete"
    case 0x10: return "vcpu status"
    default: return nil
    }
  }

  static func hexByte(_ b: UInt8) -> String {
    let s = String(b, radix: 16)
    return "0x" + (s.count < 2 ? "0" : "") + s
  }

  static func label(_ type: UInt8) -> String {
    if let name = typeName(type) { return "\(hexByte(type)) (\(name))" }
    return hexByte(type)
  }

  /// Decodes a request frame (agent side). Errors map to agent error codes via `AgentError(_:)`.
  public static func decodeRequest(_ f: AgentFrame) throws(ProtocolError) -> AgentRequest {
    let source = "agent request \(label(f.type)) id \(f.requestID)"
    if f.payload.count > AgentProtocol.maxPayload {
      throw ProtocolError(
        .tooLarge, "\(source): payload of \(f.payload.count) bytes exceeds \(AgentProtocol.maxPayload)")
    }
    var r = ByteReader(f.payload, source: source)
    let request: AgentRequest
    switch f.type {
    case 0x01:
      request = .ping
    case 0x02:
      request = .echo(r.rest())
    case 0x03:
      request = .fill(pages: try r.u64(), seed: try r.u64())
    case 0x04:
      request = .checksum(pages: try r.u64())
    case 0x05:
      request = .counter(delta: try r.i64())
    case 0x06:
      let keyLength = try r.u16()
      let key = try r.bytes(Int(keyLength))
      request = .kvSet(key: key, value: r.rest())
    case 0x07:
      request = .kvGet(key: r.rest())
    case 0x08:
      request = .exit(code: try r.u32())
    case 0x0a:
      request = .console(r.rest())
    case 0x0b:
      request = .attack(kind: try r.u32())
    case 0x0c:
      let offset = try r.u64()
      let mode = try r.u32()
      let truncate = try flag(&r, "truncate")
      let pathLength = try r.u16()
      let path = try r.bytes(Int(pathLength))
      request = .fileWrite(path: path, mode: mode, offset: offset, truncate: truncate, data: r.rest())
    case 0x0d:
      let offset = try r.u64()
      let maxBytes = try r.u32()
      request = .fileRead(path: r.rest(), offset: offset, maxBytes: maxBytes)
    case 0x0e:
      request = .fileList(path: r.rest())
    case 0x0f:
      request = .fileDelete(path: r.rest())
    case 0x10:
      request = .vcpuStatus
    case 0x09:
      let timeout = try r.u32()
      let argcOffset = r.offset
      let argc = try r.u32()
      // Each argument takes at least its 4-byte length: refuse counts the payload cannot hold.
      if UInt64(argc) * 4 > UInt64(r.remaining) {
        throw ProtocolError(
          .truncated,
          "\(source): argc \(argc) at offset \(argcOffset) needs at least \(UInt64(argc) * 4) bytes, \(r.remaining) left"
        )
      }
      var args: [String] = []
      args.reserveCapacity(Int(argc))
      for _ in 0..<argc {
        args.append(try r.string(max: AgentProtocol.maxPayload))
      }
      var options = ExecOptions()
      if r.remaining > 0 {
        let envc = try r.u32()
        if UInt64(envc) * 4 > UInt64(r.remaining) {
          throw ProtocolError(.truncated, "\(source): environment count \(envc) does not fit the payload")
        }
        for _ in 0..<envc { options.environment.append(try r.string(max: AgentProtocol.maxPayload)) }
        let cwd = try r.string(max: AgentProtocol.maxPayload)
        options.workingDirectory = cwd.isEmpty ? nil : cwd
        options.stdin = try r.lengthPrefixed(max: AgentProtocol.maxPayload)
      }
      request = .exec(args: args, timeoutSeconds: timeout, options: options)
    case 0x20:
      let timeout = try r.u32()
      request = .eval(code: try r.string(max: AgentProtocol.maxPayload), timeoutSeconds: timeout)
    default:
      throw ProtocolError(.unknownType, "\(source): unknown request type \(hexByte(f.type))")
    }
    try r.expectEnd()
    return request
  }

  /// Decodes the response to `request` (host side). An agent error is returned as
  /// `.error`, not thrown: it is a valid answer. Throws on a frame that answers a different
  /// request type or whose payload does not match the type's layout.
  public static func decodeResponse(_ f: AgentFrame, for request: AgentRequest) throws(ProtocolError) -> AgentResponse {
    let source = "agent response \(label(f.type)) id \(f.requestID)"
    var r = ByteReader(f.payload, source: source)
    if f.type == AgentProtocol.errorType {
      let code = try r.u32()
      // Lossy: an error message must never hide the error it reports.
      let message = String(decoding: try r.lengthPrefixed(max: AgentProtocol.maxPayload), as: UTF8.self)
      try r.expectEnd()
      return .error(AgentError(code: code, message: message))
    }
    let expected = request.frameType | AgentProtocol.responseBit
    guard f.type == expected else {
      throw ProtocolError(
        .unexpectedType,
        "\(source): expected a response of type \(label(expected)) to the request, got \(label(f.type))")
    }
    let response: AgentResponse
    switch request {
    case .ping:
      response = .pong(
        AgentPong(kind: try r.u32(), agentVersion: try r.u32(), requestsServed: try r.u64(), counter: try r.u64()))
    case .echo:
      response = .echo(r.rest())
    case .fill:
      response = .filled(pages: try r.u64())
    case .checksum:
      response = .checksum(try r.u64())
    case .counter:
      response = .counter(try r.u64())
    case .kvSet:
      response = .kvSet
    case .kvGet:
      let found = try flag(&r, "found")
      response = .kvGet(found: found, value: r.rest())
    case .exit:
      response = .exiting
    case .console:
      response = .consoleWritten
    case .attack:
      response = .attacking
    case .fileWrite:
      response = .fileWritten(size: try r.u64())
    case .fileRead:
      response = .fileData(AgentFileData(size: try r.u64(), mode: try r.u32(), data: r.rest()))
    case .fileList:
      let countOffset = r.offset
      let count = try r.u32()
      // Each entry takes at least 15 bytes: refuse counts the payload cannot hold.
      if UInt64(count) * 15 > UInt64(r.remaining) {
        throw ProtocolError(
          .truncated,
          "\(source): \(count) entries at offset \(countOffset) need at least \(UInt64(count) * 15) bytes, \(r.remaining) left"
        )
      }
      var entries: [AgentFileEntry] = []
      for _ in 0..<count {
        let kindOffset = r.offset
        let rawKind = try r.u8()
        guard let kind = AgentFileEntry.Kind(rawValue: rawKind) else {
          throw ProtocolError(.badValue, "\(source): entry type \(rawKind) at offset \(kindOffset), expected 1...4")
        }
        let mode = try r.u32()
        let size = try r.u64()
        let nameLength = try r.u16()
        entries.append(AgentFileEntry(name: try r.bytes(Int(nameLength)), kind: kind, mode: mode, size: size))
      }
      response = .fileList(entries)
    case .fileDelete:
      response = .fileDeleted
    case .vcpuStatus:
      let countOffset = r.offset
      let count = try r.u32()
      if UInt64(count) * 9 > UInt64(r.remaining) {
        throw ProtocolError(
          .truncated,
          "\(source): \(count) vCPUs at offset \(countOffset) need \(UInt64(count) * 9) bytes, \(r.remaining) left")
      }
      var vcpus: [AgentVCPUStatus] = []
      for _ in 0..<count {
        vcpus.append(AgentVCPUStatus(answered: try flag(&r, "answered"), runs: try r.u64()))
      }
      response = .vcpuStatus(vcpus)
    case .exec:
      let exitCode = try r.i32()
      let timedOut = try flag(&r, "timed_out")
      let stdout = try r.lengthPrefixed(max: AgentProtocol.maxPayload)
      let stderr = try r.lengthPrefixed(max: AgentProtocol.maxPayload)
      response = .exec(AgentExecResult(exitCode: exitCode, stdout: stdout, stderr: stderr, timedOut: timedOut))
    case .eval:
      let exitCode = try r.i32()
      let result = try r.lengthPrefixed(max: AgentProtocol.maxPayload)
      let error = try r.lengthPrefixed(max: AgentProtocol.maxPayload)
      let stdout = try r.lengthPrefixed(max: AgentProtocol.maxPayload)
      response = .eval(AgentEvalResult(exitCode: exitCode, result: result, error: error, stdout: stdout))
    }
    try r.expectEnd()
    return response
  }

  private static func flag(_ r: inout ByteReader, _ name: String) throws(ProtocolError) -> Bool {
    let at = r.offset
    switch try r.u8() {
    case 0: return false
    case 1: return true
    case let v: throw ProtocolError(.badValue, "\(r.source): \(name) flag at offset \(at) is \(v), expected 0 or 1")
    }
  }
}

/// Splits an agent byte stream into frames. Frames may arrive split across reads or several
/// per read; the header is checked as soon as its bytes are in, so a peer speaking another
/// protocol is rejected without waiting for a full header.
public struct AgentFrameDecoder: Sendable {
  public let maxPayload: Int
  private var buffer: [UInt8] = []
  private var start = 0
  /// Stream offset of `buffer[start]`, for error messages.
  private var streamOffset: UInt64 = 0

  public init(maxPayload: Int = AgentProtocol.maxPayload) {
    self.maxPayload = maxPayload
  }

  /// Bytes received but not yet returned as frames.
  public var bufferedByteCount: Int { buffer.count - start }

  public mutating func feed(_ bytes: some Collection<UInt8>) {
    if start > 0 && start >= buffer.count / 2 {
      buffer.removeSubrange(0..<start)
      start = 0
    }
    buffer.append(contentsOf: bytes)
  }

  /// The next complete frame, nil if more bytes are needed. After an error the stream is out
  /// of sync and the same error is thrown again; the connection should be dropped.
  public mutating func next() throws(ProtocolError) -> AgentFrame? {
    let available = buffer.count - start
    func le32(_ at: Int) -> UInt32 {
      (0..<4).reduce(0) { $0 | UInt32(buffer[start + at + $1]) << (8 * UInt32($1)) }
    }
    let source = "agent stream"
    if available >= 4 {
      let magic = le32(0)
      if magic != AgentProtocol.magic {
        throw ProtocolError(
          .badMagic,
          "\(source): bad magic 0x\(String(magic, radix: 16)) at offset \(streamOffset), expected 0x\(String(AgentProtocol.magic, radix: 16))"
        )
      }
    }
    if available >= 5 && buffer[start + 4] != AgentProtocol.version {
      throw ProtocolError(
        .unsupportedVersion,
        "\(source): frame version \(buffer[start + 4]) at offset \(streamOffset) is not supported (expected \(AgentProtocol.version))"
      )
    }
    guard available >= AgentProtocol.headerSize else { return nil }
    let length = le32(12)
    if UInt64(length) > UInt64(max(maxPayload, 0)) {
      throw ProtocolError(
        .tooLarge,
        "\(source): frame at offset \(streamOffset) declares a payload of \(length) bytes, limit \(maxPayload)")
    }
    let total = AgentProtocol.headerSize + Int(length)
    guard available >= total else { return nil }
    let frame = AgentFrame(
      type: buffer[start + 5],
      requestID: le32(8),
      payload: Array(buffer[(start + AgentProtocol.headerSize)..<(start + total)]))
    start += total
    streamOffset += UInt64(total)
    if start == buffer.count {
      buffer.removeAll(keepingCapacity: true)
      start = 0
    }
    return frame
  }
}
