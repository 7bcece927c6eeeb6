import Protocol

/// Moves one file through the agent's file frames, split to the frame size the agent accepts
/// (2048-byte payloads for the test guest, 256 KiB pieces for the Linux agent).
struct FileTransfer {
  typealias Send = (AgentRequest) throws(APIError) -> AgentResponse
  let send: Send
  let testGuest: Bool
  /// Who is asked, for messages ("sandbox sb-…").
  let label: String

  /// The test guest's file table keeps paths of at most this many bytes.
  static let testGuestMaxPath = 64
  /// Fixed bytes of a file write request before the path (offset, mode, truncate, path length).
  static let writeHeader = 15
  /// Fixed bytes of a file read reply before the data (size, mode).
  static let readHeader = 12
  static let linuxPiece = 256 << 10

  private func checkPath(_ path: [UInt8]) throws(APIError) {
    if testGuest && path.count > Self.testGuestMaxPath {
      throw .badRequest(
        "path of \(path.count) bytes: the test guest keeps paths of at most \(Self.testGuestMaxPath) bytes")
    }
  }

  /// Writes `data` as the whole content of `path`; returns the size the agent reports.
  func write(path: String, data: [UInt8], mode: UInt32) throws(APIError) -> UInt64 {
    guard data.count <= SandboxFiles.maxFileBytes else {
      throw APIError(413, "file of \(data.count) bytes is larger than the limit of \(SandboxFiles.maxFileBytes) bytes")
    }
    let p = Array(path.utf8)
    try checkPath(p)
    let piece = testGuest ? AgentProtocol.testGuestMaxPayload - Self.writeHeader - p.count : Self.linuxPiece
    var offset = 0
    var size: UInt64 = 0
    repeat {
      let end = min(data.count, offset + piece)
      let request = AgentRequest.fileWrite(
        path: p, mode: mode, offset: UInt64(offset), truncate: offset == 0, data: Array(data[offset..<end]))
      do throws(APIError) {
        guard case .fileWritten(let written) = try send(request) else {
          throw APIError.internalError("\(label): unexpected reply to a file write of \(path)")
        }
        size = written
      } catch {
        // No half file: a write that failed after its first piece, or ran out of room in it
        // (a full disk part way), removes what it wrote.
        if offset > 0 || error.status == 413 { _ = try? send(.fileDelete(path: p)) }
        throw error
      }
      offset = end
    } while offset < data.count
    return size
  }

  /// The whole content and mode of `path`.
  func read(path: String) throws(APIError) -> (data: [UInt8], mode: UInt32) {
    let p = Array(path.utf8)
    try checkPath(p)
    let piece = UInt32(testGuest ? AgentProtocol.testGuestMaxPayload - Self.readHeader : Self.linuxPiece)
    var data: [UInt8] = []
    var mode: UInt32 = 0
    while true {
      guard case .fileData(let reply) = try send(.fileRead(path: p, offset: UInt64(data.count), maxBytes: piece)) else {
        throw .internalError("\(label): unexpected reply to a file read of \(path)")
      }
      if reply.size > UInt64(SandboxFiles.maxFileBytes) {
        throw APIError(
          413, "file \(path) has \(reply.size) bytes, more than the limit of \(SandboxFiles.maxFileBytes) bytes")
      }
      guard reply.data.count <= Int(piece), UInt64(data.count + reply.data.count) <= reply.size else {
        throw .internalError("\(label): the agent sent more of \(path) than it holds or than was asked")
      }
      mode = reply.mode
      data += reply.data
      // Done at the end of the file, or when it shrank under us (an empty piece).
      if UInt64(data.count) == reply.size || reply.data.isEmpty { return (data, mode) }
    }
  }

  func list(path: String) throws(APIError) -> [AgentFileEntry] {
    let p = Array(path.utf8)
    try checkPath(p)
    guard case .fileList(let entries) = try send(.fileList(path: p)) else {
      throw .internalError("\(label): unexpected reply to a listing of \(path)")
    }
    return entries
  }

  func delete(path: String) throws(APIError) {
    let p = Array(path.utf8)
    try checkPath(p)
    guard case .fileDeleted = try send(.fileDelete(path: p)) else {
      throw .internalError("\(label): unexpected reply to a delete of \(path)")
    }
  }

  /// The API status of an agent error: 404 for a missing path, 413 past a size limit, else 400.
  static func apiError(_ error: AgentError, _ label: String) -> APIError {
    switch error.code {
    case AgentError.notFound: return .notFound("\(label): \(error.message)")
    case AgentError.tooLarge: return APIError(413, "\(label): \(error.message)")
    case AgentError.busy: return .conflict("\(label): \(error.message)")
    case AgentError.unsupported, AgentError.unknownType:
      return .badRequest("\(label): the guest agent does not support this request (\(error.message))")
    default: return .badRequest("\(label): the guest agent refused the request: \(error.message)")
    }
  }
}

extension AgentFileEntry {
  var jsonValue: JSONValue {
    .object([
      "name": .string(String(decoding: name, as: UTF8.self)), "size": .integer(Int64(bitPattern: size)),
      "mode": .string(octalMode(mode)), "type": .string(kind.name),
    ])
  }
}

/// "0644": permission bits as the API shows them.
func octalMode(_ mode: UInt32) -> String {
  let digits = String(mode, radix: 8)
  return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
}
