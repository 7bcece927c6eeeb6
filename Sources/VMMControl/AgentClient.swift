import Protocol
import Syscalls

/// A connection to the guest agent over the VM's vsock Unix socket (Firecracker's convention:
/// `CONNECT <port>\n` → `OK <hostport>\n` → byte stream).
public final class AgentClient: @unchecked Sendable {
  private let fd: FileDescriptor
  private var decoder = AgentFrameDecoder()
  private var nextID: UInt32 = 1
  public let hostPort: UInt32

  public init(vsockPath: String, port: UInt32 = AgentProtocol.vsockPort, timeoutMS: Int = 10_000) throws(ControlError) {
    do {
      fd = try UnixSocket.connect(path: vsockPath)
    } catch {
      throw ControlError(.connection, "cannot connect to the vsock socket \(vsockPath)", cause: error)
    }
    do throws(ControlError) {
      do {
        try fd.writeAll(Array("CONNECT \(port)\n".utf8))
      } catch {
        throw ControlError(.connection, "cannot send CONNECT to \(vsockPath)", cause: error)
      }
      var line: [UInt8] = []
      let deadline = Clock.monotonicNanoseconds() + UInt64(timeoutMS) * 1_000_000
      // The reply line is read byte by byte so no agent bytes are swallowed with it.
      while line.last != UInt8(ascii: "\n") {
        var byte: [UInt8] = []
        try readUntil(fd, deadline: deadline, what: "the vsock CONNECT reply", { !$0.isEmpty }, buffer: &byte)
        line += byte
        guard line.count < 64 else { throw ControlError(.protocolViolation, "vsock CONNECT reply too long") }
      }
      let text = String(decoding: line.dropLast(), as: UTF8.self)
      guard text.hasPrefix("OK "), let hostPort = UInt32(text.dropFirst(3)) else {
        throw ControlError(.protocolViolation, "vsock CONNECT \(port) answered '\(text)'")
      }
      self.hostPort = hostPort
    } catch {
      fd.close()
      throw error
    }
  }

  deinit { fd.close() }

  /// Sends one request and waits for its response; an agent error response is thrown.
  public func request(_ request: AgentRequest, timeoutMS: Int = 30_000) throws(ControlError) -> AgentResponse {
    let pending = try send(request)
    return try receive(pending, timeoutMS: timeoutMS)
  }

  /// A request on the wire whose response has not been read yet.
  public struct Pending: Sendable {
    public let id: UInt32
    public let request: AgentRequest
  }

  /// Sends a request without waiting, so requests to many guests can run at once.
  public func send(_ request: AgentRequest) throws(ControlError) -> Pending {
    if let problem = request.encodingProblem {
      throw ControlError(
        .agent, "cannot send the agent request: \(problem)",
        cause: AgentError(code: AgentError.tooLarge, message: problem))
    }
    let id = nextID
    nextID &+= 1
    do {
      try fd.writeAll(AgentCodec.encode(request, id: id))
    } catch {
      throw ControlError(.connection, "cannot send the agent request", cause: error)
    }
    return Pending(id: id, request: request)
  }

  /// Waits for the response to `pending`.
  public func receive(_ pending: Pending, timeoutMS: Int = 30_000) throws(ControlError) -> AgentResponse {
    let deadline = Clock.monotonicNanoseconds() + UInt64(timeoutMS) * 1_000_000
    while true {
      let frame: AgentFrame?
      do {
        frame = try decoder.next()
      } catch {
        throw ControlError(.protocolViolation, "bad agent frame", cause: error)
      }
      if let frame {
        guard frame.requestID == pending.id else { continue }
        let response: AgentResponse
        do {
          response = try AgentCodec.decodeResponse(frame, for: pending.request)
        } catch {
          throw ControlError(.protocolViolation, "bad agent response", cause: error)
        }
        if case .error(let agentError) = response { throw ControlError(.agent, "agent error", cause: agentError) }
        return response
      }
      var buffer: [UInt8] = []
      try readUntil(fd, deadline: deadline, what: "the agent's reply", { !$0.isEmpty }, buffer: &buffer)
      decoder.feed(buffer)
    }
  }
}
