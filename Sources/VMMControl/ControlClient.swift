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

  /// Sends one request and waits for its response; a remote failure is thrown as `.remote`.
  @discardableResult
  public func call(_ request: ControlRequest, timeoutMS: Int = 30_000) throws(ControlError) -> [String: JSONValue] {
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
