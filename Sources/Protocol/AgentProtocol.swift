/// Constants of the host ↔ guest agent protocol (docs/test-guest.md, "Agent protocol").
/// Shared by the freestanding test guest (C) and the Linux agent, so the numbers are binding.
public enum AgentProtocol {
  /// vsock port the agent listens on.
  public static let vsockPort: UInt32 = 1024
  /// "FKDA" in memory order.
  public static let magic: UInt32 = 0x4144_4b46
  public static let version: UInt8 = 1
  public static let headerSize = 16
  /// Largest payload any agent accepts (1 MiB).
  public static let maxPayload = 1 << 20
  /// Largest payload the test guest accepts; bigger requests get error 5.
  public static let testGuestMaxPayload = 2048
  /// A response's type is the request's type with this bit set.
  public static let responseBit: UInt8 = 0x80
  /// Type of an error response, whatever the request was.
  public static let errorType: UInt8 = 0xff
}

/// A request from host to agent.
public enum AgentRequest: Equatable, Sendable {
  case ping
  case echo([UInt8])
  /// Fill `pages` pages of the data area with `TestGuestMath.fillWord(page:seed:)`.
  case fill(pages: UInt64, seed: UInt64)
  /// Checksum of the first `pages` pages of the data area (`TestGuestMath`).
  case checksum(pages: UInt64)
  /// Adds `delta` to the agent's counter.
  case counter(delta: Int64)
  case kvSet(key: [UInt8], value: [UInt8])
  case kvGet(key: [UInt8])
  /// Power off with `code` (the response is sent first).
  case exit(code: UInt32)
  /// Run a program (Linux agent only; the test guest answers error 4), with an optional
  /// environment, working directory and stdin.
  case exec(args: [String], timeoutSeconds: UInt32, options: ExecOptions = ExecOptions())
  /// Write one line to the guest console (≤ 256 bytes for the test guest).
  case console([UInt8])
  /// Hostile mode (test guest): after answering, attack its own devices (`HostileAttack`).
  case attack(kind: UInt32)
  /// Write `data` at `offset` of the file `path` (created with `mode` if missing; emptied first
  /// when `truncate`). Files larger than one frame are written in several requests.
  case fileWrite(path: [UInt8], mode: UInt32, offset: UInt64, truncate: Bool, data: [UInt8])
  /// Up to `maxBytes` bytes of the file `path` from `offset`.
  case fileRead(path: [UInt8], offset: UInt64, maxBytes: UInt32)
  /// The entries of the directory `path`.
  case fileList(path: [UInt8])
  /// Remove the file `path`.
  case fileDelete(path: [UInt8])
  /// Whether each vCPU runs: the agent asks every other vCPU to answer (test guest).
  case vcpuStatus
  /// Run Python code in the agent's long-lived interpreter (Linux agent only; state persists
  /// between evals of one guest). `timeoutSeconds` 0 means the agent's default (30 s).
  case eval(code: String, timeoutSeconds: UInt32)

  /// Why this request cannot be sent as asked (a field outside what the frame can carry), or nil.
  public var encodingProblem: String? {
    switch self {
    case .kvSet(let key, let value):
      if key.count > Int(UInt16.max) { return "kv key of \(key.count) bytes: the frame carries at most \(UInt16.max)" }
      if 2 + key.count + value.count > AgentProtocol.maxPayload {
        return
          "kv key and value of \(key.count + value.count) bytes: the frame carries at most \(AgentProtocol.maxPayload - 2)"
      }
    case .exec(let args, _, let options):
      var bytes = args.reduce(8) { $0 + 4 + $1.utf8.count }
      if !options.isEmpty {
        bytes +=
          options.environment.reduce(4) { $0 + 4 + $1.utf8.count } + 4
          + (options.workingDirectory?.utf8.count ?? 0) + 4 + options.stdin.count
      }
      if bytes > AgentProtocol.maxPayload {
        return "exec arguments of \(bytes) bytes: the frame carries at most \(AgentProtocol.maxPayload)"
      }
    case .fileWrite(let path, _, _, _, let data):
      if path.count > Int(UInt16.max) {
        return "file path of \(path.count) bytes: the frame carries at most \(UInt16.max)"
      }
      if 15 + path.count + data.count > AgentProtocol.maxPayload {
        return
          "file path and data of \(path.count + data.count) bytes: the frame carries at most \(AgentProtocol.maxPayload - 15)"
      }
    case .echo(let bytes), .kvGet(let bytes), .console(let bytes):
      if bytes.count > AgentProtocol.maxPayload {
        return "payload of \(bytes.count) bytes: the frame carries at most \(AgentProtocol.maxPayload)"
      }
    default:
      break
    }
    return nil
  }

  /// The frame type byte.
  public var frameType: UInt8 {
    switch self {
    case .ping: return 0x01
    case .echo: return 0x02
    case .fill: return 0x03
    case .checksum: return 0x04
    case .counter: return 0x05
    case .kvSet: return 0x06
    case .kvGet: return 0x07
    case .exit: return 0x08
    case .exec: return 0x09
    case .console: return 0x0a
    case .attack: return 0x0b
    case .eval: return 0x20
    case .fileWrite: return 0x0c
    case .fileRead: return 0x0d
    case .fileList: return 0x0e
    case .fileDelete: return 0x0f
    case .vcpuStatus: return 0x10
    }
  }
}

/// A response from agent to host.
public enum AgentResponse: Equatable, Sendable {
  case pong(AgentPong)
  case echo([UInt8])
  case filled(pages: UInt64)
  case checksum(UInt64)
  /// The counter's value after adding the delta.
  case counter(UInt64)
  case kvSet
  case kvGet(found: Bool, value: [UInt8])
  case exiting
  case exec(AgentExecResult)
  case consoleWritten
  case attacking
  case eval(AgentEvalResult)
  /// The file's size after the write.
  case fileWritten(size: UInt64)
  case fileData(AgentFileData)
  case fileList([AgentFileEntry])
  case fileDeleted
  case vcpuStatus([AgentVCPUStatus])
  case error(AgentError)

  /// The frame type byte: the request's type | 0x80, or 0xff for errors.
  public var frameType: UInt8 {
    switch self {
    case .pong: return 0x81
    case .echo: return 0x82
    case .filled: return 0x83
    case .checksum: return 0x84
    case .counter: return 0x85
    case .kvSet: return 0x86
    case .kvGet: return 0x87
    case .exiting: return 0x88
    case .exec: return 0x89
    case .consoleWritten: return 0x8a
    case .attacking: return 0x8b
    case .eval: return 0xa0
    case .fileWritten: return 0x8c
    case .fileData: return 0x8d
    case .fileList: return 0x8e
    case .fileDeleted: return 0x8f
    case .vcpuStatus: return 0x90
    case .error: return AgentProtocol.errorType
    }
  }
}

/// Answer to `ping`: who is serving and how much it has done.
public struct AgentPong: Equatable, Sendable {
  public static let testGuestKind: UInt32 = 1
  public static let linuxKind: UInt32 = 2

  /// 1 test guest, 2 Linux agent.
  public var kind: UInt32
  public var agentVersion: UInt32
  public var requestsServed: UInt64
  public var counter: UInt64

  public init(kind: UInt32, agentVersion: UInt32, requestsServed: UInt64, counter: UInt64) {
    self.kind = kind
    self.agentVersion = agentVersion
    self.requestsServed = requestsServed
    self.counter = counter
  }
}

/// An error reported by the agent (response type 0xff).
public struct AgentError: Error, Equatable, Sendable, CustomStringConvertible {
  public static let badFrame: UInt32 = 1
  public static let unknownType: UInt32 = 2
  public static let badArgument: UInt32 = 3
  public static let unsupported: UInt32 = 4
  public static let tooLarge: UInt32 = 5
  /// The path names no file or directory.
  public static let notFound: UInt32 = 6
  /// The interpreter is running another eval (one at a time per guest).
  public static let busy: UInt32 = 7

  public var code: UInt32
  public var message: String

  public init(code: UInt32, message: String) {
    self.code = code
    self.message = message
  }

  /// Maps a request decoding failure to the error the agent should send back.
  public init(_ error: ProtocolError) {
    let code: UInt32
    switch error.code {
    case .unknownType, .unexpectedType: code = AgentError.unknownType
    case .tooLarge: code = AgentError.tooLarge
    case .badValue, .badField, .missingField: code = AgentError.badArgument
    case .unsupportedVersion: code = AgentError.unsupported
    case .malformed, .truncated, .badMagic, .badChecksum: code = AgentError.badFrame
    }
    self.init(code: code, message: error.message)
  }

  public var description: String {
    let name: String
    switch code {
    case AgentError.badFrame: name = "bad frame"
    case AgentError.unknownType: name = "unknown type"
    case AgentError.badArgument: name = "bad argument"
    case AgentError.unsupported: name = "unsupported"
    case AgentError.tooLarge: name = "too large"
    case AgentError.busy: name = "busy"
    case AgentError.notFound: name = "not found"
    default: name = "code \(code)"
    }
    return message.isEmpty ? "agent error: \(name)" : "agent error (\(name)): \(message)"
  }
}

/// What an exec sets besides its arguments. Empty options are not sent at all (agents that
/// predate them accept the request as before).
public struct ExecOptions: Equatable, Sendable {
  /// "NAME=value" entries added to (or replacing in) the agent's environment.
  public var environment: [String]
  /// Absolute working directory; nil: the agent's.
  public var workingDirectory: String?
  /// The program's whole stdin; empty: /dev/null.
  public var stdin: [UInt8]

  public init(environment: [String] = [], workingDirectory: String? = nil, stdin: [UInt8] = []) {
    self.environment = environment
    self.workingDirectory = workingDirectory
    self.stdin = stdin
  }

  public var isEmpty: Bool { environment.isEmpty && workingDirectory == nil && stdin.isEmpty }
}

/// Result of `exec`.
public struct AgentExecResult: Equatable, Sendable {
  public var exitCode: Int32
  public var stdout: [UInt8]
  public var stderr: [UInt8]
  /// The program was killed after the timeout; `exitCode` is then not meaningful.
  public var timedOut: Bool

  public init(exitCode: Int32, stdout: [UInt8], stderr: [UInt8], timedOut: Bool) {
    self.exitCode = exitCode
    self.stdout = stdout
    self.stderr = stderr
    self.timedOut = timedOut
  }
}

/// Result of `eval`: the repr of the code's last expression (empty when there is none or it is
/// None), the traceback (and anything written to stderr), what print() wrote, and the status
/// (0, 1 after an exception, SystemExit's code, 124 after a timeout, -1 when the interpreter died).
public struct AgentEvalResult: Equatable, Sendable {
  public var exitCode: Int32
  public var result: [UInt8]
  public var error: [UInt8]
  public var stdout: [UInt8]

  public init(exitCode: Int32, result: [UInt8], error: [UInt8], stdout: [UInt8]) {
    self.exitCode = exitCode
    self.result = result
    self.error = error
    self.stdout = stdout
  }
}

/// Answer to `fileRead`: the file's whole size and mode, and the bytes from the offset.
public struct AgentFileData: Equatable, Sendable {
  public var size: UInt64
  public var mode: UInt32
  public var data: [UInt8]

  public init(size: UInt64, mode: UInt32, data: [UInt8]) {
    self.size = size
    self.mode = mode
    self.data = data
  }
}

/// One entry of `fileList`.
public struct AgentFileEntry: Equatable, Sendable {
  public enum Kind: UInt8, Sendable {
    case file = 1
    case directory = 2
    case symlink = 3
    case other = 4

    public var name: String {
      switch self {
      case .file: "file"
      case .directory: "dir"
      case .symlink: "symlink"
      case .other: "other"
      }
    }
  }
  public var name: [UInt8]
  public var kind: Kind
  /// Permission bits (0...0o7777).
  public var mode: UInt32
  public var size: UInt64

  public init(name: [UInt8], kind: Kind, mode: UInt32, size: UInt64) {
    self.name = name
    self.kind = kind
    self.mode = mode
    self.size = size
  }
}

/// One vCPU in the answer to `vcpuStatus`.
public struct AgentVCPUStatus: Equatable, Sendable {
  /// It answered this request (vCPU 0 always does: it serves the agent).
  public var answered: Bool
  /// Times it has run its loop since boot (restores included: the count is in guest memory).
  public var runs: UInt64

  public init(answered: Bool, runs: UInt64) {
    self.answered = answered
    self.runs = runs
  }
}

/// One frame as carried on the vsock stream (header fields other than type and id are implied).
public struct AgentFrame: Equatable, Sendable {
  public var type: UInt8
  public var requestID: UInt32
  public var payload: [UInt8]

  public init(type: UInt8, requestID: UInt32, payload: [UInt8]) {
    self.type = type
    self.requestID = requestID
    self.payload = payload
  }

  /// Header (magic, version, type, flags 0, id, length) followed by the payload.
  public func encoded() -> [UInt8] {
    var w = ByteWriter(capacity: AgentProtocol.headerSize + payload.count)
    w.u32(AgentProtocol.magic)
    w.u8(AgentProtocol.version)
    w.u8(type)
    w.u16(0)
    w.u32(requestID)
    w.u32(UInt32(payload.count))
    w.bytes(payload)
    return w.bytes
  }
}

/// What a hostile test guest does to its devices (guest/test-guest/vsock.c, `vsock_attack`).
public enum HostileAttack: UInt32, CaseIterable, Sendable {
  case descriptorOutsideRAM = 1
  case descriptorLoop = 2
  case hugeLength = 3
  case badAvailEntry = 4
  case availIndexJump = 5
  case bogusPacket = 6
  case mmioSweep = 7
  case pioSweep = 8
  /// `avail.idx` moved one entry back: across the u16 wrap, the device sees 65535 new entries.
  case availIndexBackward = 9
  /// A descriptor whose address plus length wraps around 2^64 (back into guest RAM, unchecked).
  case wrappingAddress = 10
  /// Not a device attack: the agent's later replies carry extreme values (ping: agent version
  /// u32 max, requests served u64 max, counter 2^63; exec: a 4 GiB stdout length over 4 bytes).
  case lyingReplies = 11
  /// The NIC's queues (a VM booted with a NIC; no-ops without one): a tx descriptor outside RAM,
  /// rx `avail.idx` moved behind the device (a ring-wrap trick), a tx descriptor chained to itself,
  /// a tx chain too short for a frame.
  case netDescriptorOutsideRAM = 12
  case netRxIndexBackward = 13
  case netDescriptorLoop = 14
  case netShortFrame = 15

  /// Whether the attack targets the NIC (the victim needs one).
  public var targetsNIC: Bool { rawValue >= 12 }
}
