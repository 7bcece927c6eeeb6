import CSystemd
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// Structured entries to journald over its native protocol (sd_journal_sendv).
public enum Journal {
  /// journald's native socket. libsystemd always sends here: a service with `LogNamespace=` sees
  /// its namespace's socket at this path (systemd bind-mounts it into the service).
  public static let socketPath = "/run/systemd/journal/socket"
  /// journald's stdout-stream socket (sd_journal_stream_fd).
  public static let stdoutSocketPath = "/run/systemd/journal/stdout"

  /// True if a journald socket exists at `path` (the default: this machine's journal).
  public static func isAvailable(socketPath path: String = socketPath) -> Bool {
    var info = stat()
    guard stat(path, &info) == 0 else { return false }
    return info.st_mode & S_IFMT == S_IFSOCK
  }

  /// Sends one entry: MESSAGE, PRIORITY and `fields` (names mapped with `JournalFields.name`;
  /// fields named MESSAGE or PRIORITY are ignored: the parameters win). Values may contain any
  /// bytes, newlines included.
  public static func send(
    message: String, priority: JournalPriority, fields: [String: String] = [:]
  ) throws(SyscallError) {
    var entry: [(name: String, value: String)] = [("MESSAGE", message), ("PRIORITY", "\(priority.rawValue)")]
    for (key, value) in fields {
      let name = JournalFields.name(key)
      if name == "MESSAGE" || name == "PRIORITY" { continue }
      entry.append((name, value))
    }
    try sendEntry(entry)
  }

  /// Sends one entry made of exactly these fields (names must already be valid journal names).
  public static func sendEntry(_ fields: [(name: String, value: String)]) throws(SyscallError) {
    guard !fields.isEmpty else { throw SyscallError("sd_journal_sendv", .invalid, detail: "no fields") }
    // One contiguous buffer of "NAME=value" records, and one iovec pointing at each.
    var buffer: [UInt8] = []
    var records: [(offset: Int, length: Int)] = []
    records.reserveCapacity(fields.count)
    for field in fields {
      let start = buffer.count
      buffer.append(contentsOf: field.name.utf8)
      buffer.append(UInt8(ascii: "="))
      buffer.append(contentsOf: field.value.utf8)
      records.append((start, buffer.count - start))
    }
    let rc = buffer.withUnsafeMutableBytes { raw -> Int32 in
      let base = raw.baseAddress!
      let vectors = records.map { iovec(iov_base: base + $0.offset, iov_len: $0.length) }
      return vectors.withUnsafeBufferPointer { csystemd_journal_sendv($0.baseAddress, Int32($0.count)) }
    }
    if rc < 0 { throw SyscallError("sd_journal_sendv", Errno(-rc)) }
  }
}
