import Protocol
import Syscalls

/// A connection to one forkd-vmm control socket.
public final class ControlClient: @unchecked Sendable {
  public let path: String
  private let fd: FileDescriptor
  private var decoder = LineDecoder()

  public init(path: String) throws(ControlError) {
    self.path = path
    do {
      fd = try UnixSocket.connect(path: path)
    } catch {
      throw ControlError(.connection, "cannot connect to the control socket \(path)", cause: error)
    }
  }

  deinit { fd.close() }

  /// Sends one request and waits for its reply, decoded as the reply to that request; a remote
  /// failure is thrown as `.remote`, a reply that does not decode as `.protocolViolation`.
  @discardableResult
  public func call(_ request: ControlRequest, timeoutMS: Int = 30_000) throws(ControlError) -> ControlReply {
    let result = try exchange(request, timeoutMS: timeoutMS)
    do {
      return try ControlReply.decode(result, for: request)
    } catch {
      throw ControlError(.protocolViolation, "bad \(request.op) reply from \(path)", cause: error)
    }
  }

  public func status(timeoutMS: Int = 30_000) throws(ControlError) -> VMStatusReply {
    try typed(.status, timeoutMS: timeoutMS)
  }

  @discardableResult
  public func pause(timeoutMS: Int = 30_000) throws(ControlError) -> PauseReply {
    try typed(.pause, timeoutMS: timeoutMS)
  }

  public func resume(timeoutMS: Int = 30_000) throws(ControlError) {
    let _: ResumeReply = try typed(.resume, timeoutMS: timeoutMS)
  }

  public func stop(timeoutMS: Int = 30_000) throws(ControlError) {
    let _: StopReply = try typed(.stop, timeoutMS: timeoutMS)
  }

  /// See `ControlRequest.snapshot`.
  @discardableResult
  public func snapshot(
    directory: String, parentTag: String?, diff: Bool = false, live: Bool = false, wait: Bool = true,
    timeoutMS: Int = 30_000
  ) throws(ControlError) -> SnapshotReply {
    try typed(
      .snapshot(directory: directory, parentTag: parentTag, diff: diff, live: live, wait: wait), timeoutMS: timeoutMS)
  }

  /// Collects a live snapshot started with `wait: false`.
  @discardableResult
  public func snapshotWait(directory: String, timeoutMS: Int = 30_000) throws(ControlError) -> SnapshotReply {
    try typed(.snapshotWait(directory: directory), timeoutMS: timeoutMS)
  }

  @discardableResult
  public func attachPager(socket: String, timeoutMS: Int = 30_000) throws(ControlError) -> AttachPagerReply {
    try typed(.attachPager(socket: socket), timeoutMS: timeoutMS)
  }

  private func typed<Reply: ControlReplyBody>(_ request: ControlRequest, timeoutMS: Int) throws(ControlError) -> Reply {
    let result = try exchange(request, timeoutMS: timeoutMS)
    do {
      return try Reply.decode(result)
    } catch {
      throw ControlError(.protocolViolation, "bad \(request.op) reply from \(path)", cause: error)
    }
  }

  private func exchange(_ request: ControlRequest, timeoutMS: Int) throws(ControlError) -> [String: JSONValue] {
    do {
      try fd.writeAll(Array(ControlCodec.encode(request).utf8))
    } catch {
      throw ControlError(.connection, "cannot send \(request.op) to \(path)", cause: error)
    }
    let deadline = Clock.monotonicNanoseconds() + UInt64(timeoutMS) * 1_000_000
    var buffer: [UInt8] = []
    while true {
      do {
        if let line = try decoder.next() {
          let response = try ControlCodec.decodeResponse(line)
          if let error = response.error, !response.ok {
            throw ControlError(.remote, "\(request.op) failed: [\(error.code)] \(error.message)")
          }
          return response.result
        }
      } catch let error as ProtocolError {
        throw ControlError(.protocolViolation, "bad response from \(path)", cause: error)
      } catch let error as ControlError {
        throw error
      } catch {
        throw ControlError(.protocolViolation, "bad response from \(path)")
      }
      buffer.removeAll(keepingCapacity: true)
      try readUntil(fd, deadline: deadline, what: "the \(request.op) response", { !$0.isEmpty }, buffer: &buffer)
      decoder.feed(buffer)
    }
  }
}
