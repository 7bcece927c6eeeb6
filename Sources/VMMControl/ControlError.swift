import Syscalls

/// Failures of launching or talking to a per-VM process: code, message, cause.
public struct ControlError: Error, Sendable, CustomStringConvertible {
  public enum Code: String, Sendable {
    case launch, notReady, timeout, connection, protocolViolation = "protocol", remote, agent, binaryMissing =
      "binary_missing"
  }
  public let code: Code
  public let message: String
  public let cause: (any Error & Sendable)?

  public init(_ code: Code, _ message: String, cause: (any Error & Sendable)? = nil) {
    self.code = code
    self.message = message
    self.cause = cause
  }

  public var description: String { cause.map { "\(message): \($0)" } ?? message }
}

/// Reads from `fd` until `isComplete(buffer)` or the deadline; nil on EOF before completion.
/// `abortWhenReadable` (e.g. the pidfd of a process the wait depends on) ends the wait with
/// `.connection` "… ended while waiting for …" as soon as it becomes readable.
func readUntil(
  _ fd: FileDescriptor, deadline: UInt64, what: String, _ isComplete: ([UInt8]) -> Bool, buffer: inout [UInt8],
  abortWhenReadable watched: (fd: FileDescriptor, name: String)? = nil
) throws(ControlError) {
  var chunk = [UInt8](repeating: 0, count: 4096)
  while !isComplete(buffer) {
    let now = Clock.monotonicNanoseconds()
    guard now < deadline else { throw ControlError(.timeout, "timed out waiting for \(what)") }
    let remainingMS = Int32(min((deadline - now) / 1_000_000 + 1, 60_000))
    do {
      let ready = try Poll.wait(
        [(fd, .readable)] + (watched.map { [($0.fd, .readable)] } ?? []), timeoutMS: remainingMS)
      if ready[0].isEmpty, let watched, !ready[1].isEmpty {
        throw ControlError(.connection, "\(watched.name) ended while waiting for \(what)")
      }
      if ready[0].isEmpty { continue }
      let n = try chunk.withUnsafeMutableBytes { (buffer) throws(SyscallError) -> Int in try fd.read(into: buffer) }
      if n == 0 { throw ControlError(.connection, "connection closed while waiting for \(what)") }
      buffer += chunk[0..<n]
    } catch let error as SyscallError {
      throw ControlError(.connection, "reading \(what) failed", cause: error)
    } catch let error as ControlError {
      throw error
    } catch {
      throw ControlError(.connection, "reading \(what) failed")
    }
  }
}
