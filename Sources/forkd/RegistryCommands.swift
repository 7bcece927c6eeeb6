import ArgumentParser
import CLISupport
import ForkdClient
import Protocol
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// `forkd snapshot push` / `pull`: the daemon moves the snapshot; the CLI shows its progress
/// (polled from GET /v1/transfers) on a terminal.
extension SnapshotCommand {
  struct Push: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Push a snapshot (and its diff chain) to an OCI registry: forkd snapshot push TAG HOST:PORT/REPO:REF.")
    @Argument(help: "Snapshot tag.") var tag: String
    @Argument(help: "Registry reference HOST[:PORT]/REPOSITORY[:TAG].") var ref: String
    @OptionGroup var connection: ConnectionOptions

    func run() throws {
      let watcher = TransferWatcher(connection: connection, tag: tag, verb: "pushing")
      let response: APIClient.Response
      do {
        defer { watcher?.finish() }
        response = try connection.call("POST", "/v1/snapshots/\(tag)/push", body: .object(["ref": .string(ref)]))
      }
      connection.emit(response) { v in
        "pushed \(tag) to \(string(v["ref"])) \(string(v["digest"]))\n"
          + "  \(string(v["chunks_transferred"])) chunks uploaded, \(string(v["chunks_skipped"])) already there, "
          + "\(mib(v["transferred_bytes"])) of \(mib(v["total_bytes"])) sent in \(string(v["seconds"])) s"
      }
    }
  }

  struct Pull: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Pull a snapshot from an OCI registry: forkd snapshot pull HOST:PORT/REPO:REF [--tag T].")
    @Argument(help: "Registry reference HOST[:PORT]/REPOSITORY[:TAG|@DIGEST].") var ref: String
    @Option(help: "Local tag (default: the reference's tag).") var tag: String?
    @Flag(help: "Return once manifest and vmstate are here; memory arrives in the background and on first fault.")
    var lazy = false
    @OptionGroup var connection: ConnectionOptions

    func run() throws {
      var body: [String: JSONValue] = ["ref": .string(ref)]
      if let tag { body["tag"] = .string(tag) }
      if lazy { body["lazy"] = .bool(true) }
      let watcher = TransferWatcher(connection: connection, tag: tag, verb: "pulling")
      let response: APIClient.Response
      do {
        defer { watcher?.finish() }
        response = try connection.call("POST", "/v1/snapshots/pull", body: .object(body))
      }
      connection.emit(response) { v in
        var text = "pulled \(string(v["ref"])) as \(string(v["tag"])) \(string(v["digest"]))\n"
        text +=
          "  \(string(v["chunks_transferred"])) chunks, \(mib(v["transferred_bytes"])) in \(string(v["seconds"])) s"
        if let created = v["created"]?.arrayValue, created.count > 1 {
          text += "\n  chain layers: " + created.map { string($0) }.joined(separator: ", ")
        }
        if let reused = v["reused"]?.stringValue { text += "\n  on top of the local snapshot \(reused)" }
        if v["lazy"]?.boolValue == true {
          text += "\n  lazy: memory is being fetched in the background (GET /v1/transfers)"
        }
        return text
      }
    }
  }
}

func mib(_ value: JSONValue?) -> String {
  guard let bytes = value?.int64Value else { return "-" }
  return format(Double(bytes) / 1_048_576, decimals: 1) + " MiB"
}

/// On a terminal: a line with the bytes moved so far, from the daemon's GET /v1/transfers.
final class TransferWatcher: @unchecked Sendable {
  private let lock = ConditionLock()
  private var done = false
  private var thread: OSThread?

  init?(connection: ConnectionOptions, tag: String?, verb: String) {
    guard isatty(2) == 1, !connection.json, let client = try? connection.client() else { return nil }
    let started = Clock.monotonicNanoseconds()
    thread = try? OSThread.start(name: "transfer-progress") { [self] in
      while !lock.withLock({ done }) {
        let seconds = Double(Clock.monotonicNanoseconds() - started) / 1e9
        var line = "\(verb)… \(format(seconds, decimals: 1)) s"
        if let items = try? client.request("GET", "/v1/transfers").json?.arrayValue,
          let item = items.last(where: { tag == nil || $0["tag"]?.stringValue == tag })
        {
          line += "  \(mib(item["transferred_bytes"])) / \(mib(item["total_bytes"]))"
          line +=
            "  chunks \(string(item["chunks_transferred"])) sent/received, \(string(item["chunks_skipped"])) skipped"
        }
        writeStderr("\r\u{1B}[K" + line)
        Clock.sleep(milliseconds: 200)
      }
      writeStderr("\r\u{1B}[K")
    }
  }

  func finish() {
    lock.withLock { done = true }
    thread?.join()
  }
}
