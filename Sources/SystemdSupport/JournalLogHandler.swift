import Logging
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// A swift-log handler that makes every log line a structured journal entry.
///
/// Each entry carries MESSAGE, PRIORITY (from the swift-log level, see `JournalPriority`),
/// SYSLOG_IDENTIFIER (`identifier`), CODE_FILE, CODE_LINE, CODE_FUNC, SWIFT_LOG_LABEL (the
/// logger's label), ERROR (when the log call passed an error) and one field per metadata key
/// (`JournalFields.name`: `forkd_sandbox_id` → `FORKD_SANDBOX_ID`). So a per-child logger,
///
///     var logger = parentLogger
///     logger[metadataKey: "forkd_sandbox_id"] = "\(id)"
///
/// tags every line about that child, and `journalctl FORKD_SANDBOX_ID=<id>` shows them.
///
/// If journald refuses an entry (no journal, socket gone), the line is written to standard error
/// in `FileLogHandler`'s format instead: under systemd that is the journal's stdout stream.
public struct JournalLogHandler: LogHandler {
  /// Fields the handler sets itself; metadata keys mapping to one of them become `META_<NAME>`.
  public static let reservedFields: Set<String> = [
    "MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "CODE_FILE", "CODE_LINE", "CODE_FUNC", "SWIFT_LOG_LABEL", "ERROR",
  ]

  public let label: String
  /// SYSLOG_IDENTIFIER of every entry (`journalctl -t <identifier>`).
  public var identifier: String
  public var metadata: Logger.Metadata = [:]
  public var metadataProvider: Logger.MetadataProvider?
  public var logLevel: Logger.Level = .info

  public init(
    label: String, identifier: String = "forkd-supervisor",
    metadataProvider: Logger.MetadataProvider? = LoggingSystem.metadataProvider
  ) {
    self.label = label
    self.identifier = identifier
    self.metadataProvider = metadataProvider
  }

  public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
    get { metadata[key] }
    set { metadata[key] = newValue }
  }

  public func log(event: LogEvent) {
    let entry = fields(for: event)
    do {
      try Journal.sendEntry(entry)
    } catch {
      let metadata = JournalFields.merged(handler: metadata, provider: metadataProvider, event: event.metadata)
      let line = LogLineFormat.line(
        timestamp: LogLineFormat.now(), level: event.level,
        fields: JournalFields.fields(metadata, reserved: Self.reservedFields), message: event.message.description)
      _ = line.utf8CString.withUnsafeBufferPointer { Glibc.write(2, $0.baseAddress, $0.count - 1) }
    }
  }

  /// The journal entry one log event becomes, in the order it is sent.
  public func fields(for event: LogEvent) -> [(name: String, value: String)] {
    var entry: [(name: String, value: String)] = [
      ("MESSAGE", event.message.description),
      ("PRIORITY", "\(JournalPriority(event.level).rawValue)"),
      ("SYSLOG_IDENTIFIER", identifier),
      ("CODE_FILE", event.file),
      ("CODE_LINE", "\(event.line)"),
      ("CODE_FUNC", event.function),
      ("SWIFT_LOG_LABEL", label),
    ]
    if let error = event.error { entry.append(("ERROR", "\(error)")) }
    let merged = JournalFields.merged(handler: metadata, provider: metadataProvider, event: event.metadata)
    entry += JournalFields.fields(merged, reserved: Self.reservedFields)
    return entry
  }
}
