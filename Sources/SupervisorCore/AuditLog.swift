import Protocol
import Syscalls

/// Append-only JSONL audit log: one line per API request (ts, method, path, status, latency_us,
/// ua), like the public forkd controller's.
final class AuditLog: @unchecked Sendable {
  private let fd: FileDescriptor?
  private let lock = ConditionLock()

  init(path: String) {
    fd = try? FileDescriptor.open(path, [.writeOnly, .create, OpenFlags(rawValue: 0o2000)], mode: 0o600)  // O_APPEND
  }

  deinit { fd?.close() }

  func record(
    method: String, path: String, query: String?, status: Int, latencyMicroseconds: UInt64, userAgent: String?
  ) {
    let line =
      JSONValue.object([
        "ts": .integer(Clock.unixSeconds()), "method": .string(method), "path": .string(path),
        "query": query.map { .string($0) } ?? .null,
        "status": .integer(Int64(status)), "latency_us": .integer(Int64(clamping: latencyMicroseconds)),
        "ua": userAgent.map { .string($0) } ?? .null,
      ]).serialized() + "\n"
    lock.withLock { try? fd?.writeAll(Array(line.utf8)) }
  }
}

typealias OpenFlags = FileDescriptor.OpenFlags
