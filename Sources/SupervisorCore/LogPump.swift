import Protocol
import Syscalls
import SystemdSupport

#if canImport(Glibc)
  import Glibc
#endif

/// Forwards every child's output into the journal, one entry per line, with the fields that
/// tell one child's story: FORKD_SANDBOX_ID, FORKD_SNAPSHOT_TAG, FORKD_ROLE (vmm, pager or
/// guest: forkd-vmm prefixes console lines with "[guest] ") and a SYSLOG_IDENTIFIER. Without a
/// journal the lines go to `<fallback>/<sandbox id>.log`.
final class LogPump: @unchecked Sendable {
  private struct Source {
    let fields: [String: String]
    let identifier: String
    var pending: [UInt8] = []
  }

  private let lock = ConditionLock()
  private var sources: [FileDescriptor: Source] = [:]
  private let wake: EventFD
  private let fallbackDirectory: String
  private let journal: Bool
  private var thread: OSThread?
  private var stopping = false
  /// A guest can print without end: each fallback file stops at this size (the journal rotates).
  private let maxFallbackBytes: Int
  /// Bytes written to each fallback file, by sandbox id (touched on the pump thread only).
  private var fallbackWritten: [String: Int] = [:]

  init(fallbackDirectory: String, maxFallbackBytes: Int = 8 << 20) throws {
    self.fallbackDirectory = fallbackDirectory
    self.maxFallbackBytes = maxFallbackBytes
    journal = Journal.isAvailable()
    wake = try EventFD()
    if !journal { try FileSystem.makeDirectories(fallbackDirectory, mode: 0o750) }
    thread = try OSThread.start(name: "log-pump") { [self] in run() }
  }

  /// A pipe for one child process: the write end for the child, the read end pumped here.
  func output(sandboxID: String, snapshotTag: String, role: String) -> FileDescriptor? {
    guard let pipe = try? FileDescriptor.pipe() else { return nil }
    try? pipe.read.setNonBlocking()
    let source = Source(
      fields: ["FORKD_SANDBOX_ID": sandboxID, "FORKD_SNAPSHOT_TAG": snapshotTag, "FORKD_ROLE": role],
      identifier: "forkd-" + role)
    lock.withLock { sources[pipe.read] = source }
    wake.signal()
    return pipe.write
  }

  func stop() {
    lock.withLock { stopping = true }
    wake.signal()
    thread?.join()
  }

  private func run() {
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
      let fds: [FileDescriptor] = lock.withLock { stopping ? [] : Array(sources.keys) }
      if lock.withLock({ stopping }) { break }
      let entries = [(wake.fd, Poll.Events.readable)] + fds.map { ($0, Poll.Events.readable) }
      guard let ready = try? Poll.wait(entries, timeoutMS: 1000) else { continue }
      if !ready[0].isEmpty { wake.drain() }
      for (i, fd) in fds.enumerated() where !ready[i + 1].isEmpty {
        let n = buffer.withUnsafeMutableBytes { Glibc.read(fd.rawValue, $0.baseAddress, $0.count) }
        if n < 0 && (errno == EAGAIN || errno == EINTR) { continue }
        if n <= 0 {
          flush(fd, final: true)
          lock.withLock { _ = sources.removeValue(forKey: fd) }
          fd.close()
          continue
        }
        lock.withLock { sources[fd]?.pending += buffer[0..<n] }
        flush(fd, final: false)
      }
    }
    let remaining = lock.withLock { Array(sources.keys) }
    for fd in remaining {
      flush(fd, final: true)
      fd.close()
    }
  }

  private func flush(_ fd: FileDescriptor, final: Bool) {
    var lines: [String] = []
    let source: Source? = lock.withLock {
      guard var s = sources[fd] else { return nil }
      while let newline = s.pending.firstIndex(of: UInt8(ascii: "\n")) {
        lines.append(String(decoding: s.pending[..<newline], as: UTF8.self))
        s.pending.removeSubrange(...newline)
      }
      if final && !s.pending.isEmpty {
        lines.append(String(decoding: s.pending, as: UTF8.self))
        s.pending.removeAll()
      }
      sources[fd] = s
      return s
    }
    guard let source else { return }
    for line in lines { emit(line, source) }
  }

  private func emit(_ line: String, _ source: Source) {
    var fields = source.fields
    var message = line
    var identifier = source.identifier
    if message.hasPrefix("[guest] ") {
      message.removeFirst(8)
      fields["FORKD_ROLE"] = "guest"
      identifier = "forkd-guest"
    }
    fields["SYSLOG_IDENTIFIER"] = identifier
    let priority: JournalPriority =
      message.contains(" error") || message.contains("error:") ? .error : message.contains("warning") ? .warning : .info
    if journal {
      try? Journal.send(message: message, priority: priority, fields: fields)
    } else {
      let id = fields["FORKD_SANDBOX_ID"] ?? "unknown"
      var text = "\(Clock.unixSeconds()) \(fields["FORKD_ROLE"] ?? "?") \(message)\n"
      let written = fallbackWritten[id] ?? 0
      guard written < maxFallbackBytes else { return }
      if written + text.utf8.count >= maxFallbackBytes {
        text = "\(Clock.unixSeconds()) supervisor log limit of \(maxFallbackBytes) bytes reached: later lines dropped\n"
        fallbackWritten[id] = maxFallbackBytes
      } else {
        fallbackWritten[id] = written + text.utf8.count
      }
      if let fd = try? FileDescriptor.open(
        fallbackDirectory + "/" + id + ".log", [.writeOnly, .create, FileDescriptor.OpenFlags(rawValue: 0o2000)],
        mode: 0o600)
      {
        try? fd.writeAll(Array(text.utf8))
        fd.close()
      }
    }
  }
}
