import Logging
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// An append-only log file shared by every copy of the handlers writing to it. Each line is one
/// write(2) on an O_APPEND descriptor, so concurrent writers never interleave within a line.
public final class LogFile: Sendable {
  public let path: String
  public let fd: FileDescriptor

  /// Opens (creating, mode 0640) `path` for appending.
  public init(path: String, mode: mode_t = 0o640) throws(SyscallError) {
    self.path = path
    let raw = try retryingEINTR("open", detail: path) { open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, mode) }
    self.fd = FileDescriptor(rawValue: raw)
  }

  deinit { fd.close() }

  public func write(line: String) {
    var bytes = Array(line.utf8)
    bytes.append(UInt8(ascii: "\n"))
    try? fd.writeAll(bytes)
  }
}

/// The line format of `FileLogHandler` (and of `JournalLogHandler`'s standard-error fallback):
///
///     2025-11-27T07:27:00.123456Z info [FORKD_ROLE=supervisor FORKD_SANDBOX_ID=test-1] child started
///
/// UTC timestamp with microseconds, the swift-log level, the fields in brackets (sorted, `NAME=value`,
/// the value in double quotes with `\"`, `\\`, `\n`, `\r`, `\t` escapes when it is empty or holds a
/// space, quote, backslash, `]`, `=` or control character), then the message with newlines
/// written as `\n` so that one entry is one line.
public enum LogLineFormat {
  public static func line(
    timestamp: String, level: Logger.Level, fields: [(name: String, value: String)], message: String
  ) -> String {
    var line = timestamp + " " + level.rawValue + " ["
    for (index, field) in fields.enumerated() {
      if index > 0 { line += " " }
      line += field.name + "=" + quoted(field.value)
    }
    line += "] "
    for scalar in message.unicodeScalars {
      switch scalar {
      case "\n": line += "\\n"
      case "\r": line += "\\r"
      default: line.unicodeScalars.append(scalar)
      }
    }
    return line
  }

  static func quoted(_ value: String) -> String {
    let needsQuotes =
      value.isEmpty
      || value.unicodeScalars.contains {
        $0 == " " || $0 == "\"" || $0 == "\\" || $0 == "]" || $0 == "=" || $0.value < 0x20 || $0.value == 0x7f
      }
    guard needsQuotes else { return value }
    var result = "\""
    for scalar in value.unicodeScalars {
      switch scalar {
      case "\"": result += "\\\""
      case "\\": result += "\\\\"
      case "\n": result += "\\n"
      case "\r": result += "\\r"
      case "\t": result += "\\t"
      default: result.unicodeScalars.append(scalar)
      }
    }
    return result + "\""
  }

  /// Now as `YYYY-MM-DDTHH:MM:SS.uuuuuuZ`.
  public static func now() -> String {
    var spec = timespec()
    clock_gettime(CLOCK_REALTIME, &spec)
    return timestamp(seconds: Int(spec.tv_sec), microseconds: Int(spec.tv_nsec) / 1000)
  }

  public static func timestamp(seconds: Int, microseconds: Int) -> String {
    var time = time_t(seconds)
    var parts = tm()
    gmtime_r(&time, &parts)
    func pad(_ value: Int32, _ width: Int) -> String {
      let digits = String(value)
      return String(repeating: "0", count: max(0, width - digits.count)) + digits
    }
    let micro = String(microseconds)
    return pad(parts.tm_year + 1900, 4) + "-" + pad(parts.tm_mon + 1, 2) + "-" + pad(parts.tm_mday, 2) + "T"
      + pad(parts.tm_hour, 2) + ":" + pad(parts.tm_min, 2) + ":" + pad(parts.tm_sec, 2) + "."
      + String(repeating: "0", count: max(0, 6 - micro.count)) + micro + "Z"
  }
}

/// A swift-log handler writing `LogLineFormat` lines to a file: the fallback when there is no
/// journal (e.g. `<child run directory>/forkd-supervisor.log`). Metadata keys become fields with
/// the same names as in the journal (`forkd_sandbox_id` → `FORKD_SANDBOX_ID`).
public struct FileLogHandler: LogHandler {
  public let label: String
  public let file: LogFile
  public var metadata: Logger.Metadata = [:]
  public var metadataProvider: Logger.MetadataProvider?
  public var logLevel: Logger.Level = .info

  public init(
    label: String, path: String, metadataProvider: Logger.MetadataProvider? = LoggingSystem.metadataProvider
  ) throws(SyscallError) {
    self.init(label: label, file: try LogFile(path: path), metadataProvider: metadataProvider)
  }

  public init(label: String, file: LogFile, metadataProvider: Logger.MetadataProvider? = LoggingSystem.metadataProvider)
  {
    self.label = label
    self.file = file
    self.metadataProvider = metadataProvider
  }

  public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
    get { metadata[key] }
    set { metadata[key] = newValue }
  }

  public func log(event: LogEvent) {
    file.write(line: line(for: event, timestamp: LogLineFormat.now()))
  }

  /// The line one event becomes (the error, if any, as an ERROR field).
  public func line(for event: LogEvent, timestamp: String) -> String {
    let merged = JournalFields.merged(handler: metadata, provider: metadataProvider, event: event.metadata)
    var fields = JournalFields.fields(merged, reserved: JournalLogHandler.reservedFields)
    if let error = event.error {
      fields.append(("ERROR", "\(error)"))
      fields.sort { $0.name < $1.name }
    }
    return LogLineFormat.line(
      timestamp: timestamp, level: event.level, fields: fields, message: event.message.description)
  }
}
