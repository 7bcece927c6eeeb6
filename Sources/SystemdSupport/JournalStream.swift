import CSystemd
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// A journald stdout stream for a child process's stdout/stderr (sd_journal_stream_fd).
///
/// What a stream can and cannot carry (journald's stream protocol is a fixed header of
/// identifier, unit, priority, level-prefix and forwarding flags, then plain text lines):
/// - every line becomes an entry with SYSLOG_IDENTIFIER=`identifier`, PRIORITY=`priority`
///   (or the line's own `<N>` prefix when `levelPrefix` is set), `_TRANSPORT=stdout` and
///   `_STREAM_ID` (one random id per stream);
/// - journald reads the *writer's* credentials with every read (SCM_CREDENTIALS), so lines a child
///   writes carry the child's trusted fields: `_PID`, `_COMM`, `_EXE`, `_CMDLINE`, and the cgroup
///   fields `_SYSTEMD_CGROUP`/`_SYSTEMD_UNIT` (a child in a per-sandbox cgroup below the service's
///   is found with `journalctl _SYSTEMD_CGROUP=…/<sandbox id>`) — verified with systemd 252;
/// - there is no way to attach extra fields such as FORKD_SANDBOX_ID to a stream.
///
/// So a stream is the cheapest way to get a child's output into the journal (no copy through the
/// supervisor: the child writes straight to journald); lines that must carry FORKD_* fields go
/// through a pipe and `JournalLineForwarder` instead.
public enum JournalStream {
  /// Opens a stream; hand the descriptor to a child as its stdout and/or stderr (e.g.
  /// `ChildProcess.spawn(…, stdoutFD: fd, stderrFD: fd)`) and close it in the parent. The
  /// descriptor is close-on-exec (dup2 onto 1/2 clears that) and write-only.
  public static func open(
    identifier: String, priority: JournalPriority = .info, levelPrefix: Bool = false
  ) throws(SyscallError) -> FileDescriptor {
    let fd = csystemd_journal_stream_fd(identifier, priority.rawValue, levelPrefix ? 1 : 0)
    if fd < 0 { throw SyscallError("sd_journal_stream_fd", Errno(-fd), detail: identifier) }
    return FileDescriptor(rawValue: fd)
  }

  /// The `JOURNAL_STREAM=<device>:<inode>` environment entry systemd sets for a service whose
  /// stdout/stderr is a journal stream; pass it to a child whose stderr is `fd` so that it can
  /// tell (as systemd's own tools do) that its output already goes to the journal.
  public static func environmentEntry(for fd: FileDescriptor) -> String? {
    var info = stat()
    guard fstat(fd.rawValue, &info) == 0 else { return nil }
    return "JOURNAL_STREAM=\(info.st_dev):\(info.st_ino)"
  }
}

/// Turns a child's output into journal entries with per-child fields: the supervisor reads the
/// child's stdout/stderr pipe and feeds the bytes here; every complete line becomes one
/// `Journal.send` with `fields` (e.g. SYSLOG_IDENTIFIER=forkd-vmm, FORKD_SANDBOX_ID,
/// FORKD_ROLE, and OBJECT_PID=<child pid>, which makes journald, for a root sender, add the
/// child's OBJECT_COMM/OBJECT_EXE/… fields).
public struct JournalLineForwarder {
  /// One complete line (without its newline) with the priority it is sent with.
  public typealias Sink = (_ message: String, _ priority: JournalPriority, _ fields: [String: String]) -> Void

  public var fields: [String: String]
  public var priority: JournalPriority
  /// Parse a leading `<0>`…`<7>` as the line's priority (and strip it), as journald does for
  /// streams opened with level_prefix.
  public var levelPrefix: Bool
  /// A line longer than this is sent in pieces of this size (journald's own LineMax is 48 KiB).
  public var maximumLineBytes: Int
  private var pending: [UInt8] = []
  private let sink: Sink

  /// `sink` defaults to `Journal.send`, dropping entries journald refuses.
  public init(
    fields: [String: String], priority: JournalPriority = .info, levelPrefix: Bool = false,
    maximumLineBytes: Int = 48 * 1024, sink: Sink? = nil
  ) {
    self.fields = fields
    self.priority = priority
    self.levelPrefix = levelPrefix
    self.maximumLineBytes = max(1, maximumLineBytes)
    self.sink =
      sink ?? { message, priority, fields in try? Journal.send(message: message, priority: priority, fields: fields) }
  }

  /// Bytes as read from the pipe; complete lines are sent now, the rest waits for more.
  public mutating func feed(_ bytes: some Sequence<UInt8>) {
    for byte in bytes {
      if byte == UInt8(ascii: "\n") {
        emit()
      } else {
        pending.append(byte)
        if pending.count >= maximumLineBytes { emit() }
      }
    }
  }

  /// End of the stream: a last line without a newline is sent too.
  public mutating func finish() {
    if !pending.isEmpty { emit() }
  }

  private mutating func emit() {
    var line = pending[...]
    pending.removeAll(keepingCapacity: true)
    if line.last == UInt8(ascii: "\r") { line = line.dropLast() }
    var linePriority = priority
    if levelPrefix, line.count >= 3, line[line.startIndex] == UInt8(ascii: "<"),
      line[line.startIndex + 2] == UInt8(ascii: ">"),
      let level = JournalPriority(rawValue: Int32(line[line.startIndex + 1]) - Int32(UInt8(ascii: "0")))
    {
      linePriority = level
      line = line.dropFirst(3)
    }
    sink(String(decoding: line, as: UTF8.self), linePriority, fields)
  }
}
