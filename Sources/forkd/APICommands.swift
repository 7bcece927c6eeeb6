import ArgumentParser
import CLISupport
import ForkdClient
import Protocol
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// Where the daemon is and how to print: shared by every API command.
struct ConnectionOptions: ParsableArguments {
  @Option(
    help:
      "The daemon: a Unix socket path, unix:PATH or http://HOST:PORT (default $FORKD_HOST or /run/forkd/forkd.sock).")
  var host: String?

  @Option(help: "Bearer token for TCP (default $FORKD_TOKEN).")
  var token: String?

  @Flag(help: "Print the API's JSON instead of tables.")
  var json = false

  func client() throws -> APIClient {
    let target = host ?? getenv("FORKD_HOST").map { String(cString: $0) } ?? "/run/forkd/forkd.sock"
    guard let endpoint = APIClient.endpoint(target) else {
      throw ValidationError("--host \(target): expected a socket path, unix:PATH or http://HOST:PORT")
    }
    return APIClient(endpoint: endpoint, token: token ?? getenv("FORKD_TOKEN").map { String(cString: $0) })
  }

  /// Sends a request; a failure prints the API's message and exits with a code that means it.
  /// `progress`: a label shown with the elapsed time on a terminal while the request runs.
  func call(_ method: String, _ path: String, body: JSONValue? = nil, progress: String? = nil) throws
    -> APIClient.Response
  {
    let response: APIClient.Response
    let indicator = progress.flatMap { json ? nil : ProgressLine(label: $0) }
    defer { indicator?.finish() }
    do {
      response = try client().request(method, path, body: body)
    } catch let error as APIClient.ClientError {
      printError(error.description)
      throw ExitCode(CLIExit.unreachable)
    }
    guard (200..<300).contains(response.status) else {
      printError("\(response.status): \(response.errorMessage ?? response.text)")
      throw ExitCode(CLIExit.forStatus(response.status))
    }
    return response
  }

  func emit(_ response: APIClient.Response, table: (JSONValue) -> String) {
    if json {
      print(response.json?.serialized(pretty: true) ?? response.text)
    } else if let value = response.json {
      print(table(value))
    }
  }
}

/// Exit codes scripts can rely on.
enum CLIExit {
  static let failure: Int32 = 1
  static let badRequest: Int32 = 2
  static let notFound: Int32 = 3
  static let conflict: Int32 = 4
  static let unavailable: Int32 = 5
  static let unreachable: Int32 = 6
  static let unauthorized: Int32 = 7

  static func forStatus(_ status: Int) -> Int32 {
    switch status {
    case 400, 413: badRequest
    case 401: unauthorized
    case 404: notFound
    case 409: conflict
    case 503: unavailable
    default: failure
    }
  }
}

func printError(_ message: String) { writeStderr("forkd: \(message)\n") }

func table(_ rows: [[String]], header: [String]) -> String {
  let all = [header] + rows
  let widths = header.indices.map { column in all.map { $0.indices.contains(column) ? $0[column].count : 0 }.max() ?? 0
  }
  return all.map { row in
    row.enumerated().map { $0.element.padding(widths[$0.offset]) }.joined(separator: "  ")
  }.joined(separator: "\n")
}

// MARK: Sandboxes

struct Spawn: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "spawn", abstract: "Restore children from a snapshot.", aliases: ["fork"])
  @Argument(help: "Snapshot tag.") var tag: String
  @Option(name: .shortAndLong, help: "How many children (1...1000).") var n: Int = 1
  @Option(help: "Memory limit per child in MiB (cgroup).") var memoryLimitMib: UInt64?
  @Option(help: "Seconds after which each child is deleted.") var timeout: UInt64?
  @OptionGroup var connection: ConnectionOptions

  func run() throws {
    var body: [String: JSONValue] = ["snapshot_tag": .string(tag), "n": .integer(Int64(n))]
    if let memoryLimitMib { body["memory_limit_mib"] = .integer(Int64(memoryLimitMib)) }
    if let timeout { body["timeout_secs"] = .integer(Int64(truncatingIfNeeded: timeout)) }
    let started = Clock.monotonicNanoseconds()
    let response = try connection.call(
      "POST", "/v1/sandboxes", body: .object(body), progress: "spawning \(n) from \(tag)")
    let elapsed = ms(Clock.monotonicNanoseconds() - started)
    connection.emit(response) { value in
      let rows = (value.arrayValue ?? []).map {
        [string($0["id"]), string($0["pid"]), string($0["pager_pid"]), string($0["backend"])]
      }
      return table(rows, header: ["ID", "PID", "PAGER", "BACKEND"])
        + "\n\(rows.count) children in \(format(elapsed)) ms"
    }
  }
}

struct List: ParsableCommand {
  static let configuration = CommandConfiguration(commandName: "ls", abstract: "List sandboxes.")
  @OptionGroup var connection: ConnectionOptions

  func run() throws {
    connection.emit(try connection.call("GET", "/v1/sandboxes")) { value in
      let rows = (value.arrayValue ?? []).map {
        [
          string($0["id"]), string($0["snapshot_tag"]), string($0["state"]), string($0["pid"]),
          string($0["pager_restarts"]), string($0["branch_count"]),
        ]
      }
      return table(rows, header: ["ID", "SNAPSHOT", "STATE", "PID", "PAGER RESTARTS", "BRANCHES"])
    }
  }
}

struct Remove: ParsableCommand {
  static let configuration = CommandConfiguration(commandName: "rm", abstract: "Stop and remove sandboxes.")
  @Argument(help: "Sandbox ids.") var ids: [String]
  @OptionGroup var connection: ConnectionOptions

  func run() throws {
    for id in ids {
      _ = try connection.call("DELETE", "/v1/sandboxes/\(id)")
      if !connection.json { print("removed \(id)") }
    }
  }
}

struct Ping: ParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Ping a sandbox's guest agent.")
  @Argument(help: "Sandbox id.") var id: String
  @OptionGroup var connection: ConnectionOptions

  func run() throws {
    connection.emit(try connection.call("POST", "/v1/sandboxes/\(id)/ping")) { value in
      "pong from \(id): \(string(value["agent_kind"])) agent v\(string(value["agent_version"])), round trip \(string(value["rtt_us"])) µs"
    }
  }
}

struct Exec: ParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Run a command in a sandbox (Linux guests).")
  @Argument(help: "Sandbox id.") var id: String
  @Option(help: "Seconds before the command is killed.") var timeout: Int = 30
  @Argument(parsing: .captureForPassthrough, help: "The command and its arguments.") var command: [String]
  @OptionGroup var connection: ConnectionOptions

  func run() throws {
    let args = command.first == "--" ? Array(command.dropFirst()) : command
    let response = try connection.call(
      "POST", "/v1/sandboxes/\(id)/exec",
      body: .object(["args": .array(args.map { .string($0) }), "timeout_secs": .integer(Int64(timeout))]))
    if connection.json {
      print(response.json?.serialized(pretty: true) ?? response.text)
      return
    }
    print(string(response.json?["stdout"]), terminator: "")
    printError(string(response.json?["stderr"]))
    throw ExitCode(Int32(response.json?["exit_code"]?.int64Value ?? 1))
  }
}

struct Branch: ParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Snapshot a running sandbox into a new tag.")
  @Argument(help: "Sandbox id.") var id: String
  @Option(help: "Tag of the new snapshot (default: generated).") var tag: String?
  @Option(
    help:
      "full (every page), diff (only what the sandbox changed since its spawn; a layer over its snapshot) or live (paused only to capture state; memory copied while it runs; uffd sandboxes)."
  )
  var mode: String = "full"
  @Flag(help: "live only: answer once the sandbox runs again, before the copy is complete.") var noWait = false
  @OptionGroup var connection: ConnectionOptions

  func run() throws {
    var body: [String: JSONValue] = ["mode": .string(mode)]
    if let tag { body["tag"] = .string(tag) }
    if noWait { body["wait"] = .bool(false) }
    connection.emit(
      try connection.call(
        "POST", "/v1/sandboxes/\(id)/branch", body: .object(body), progress: "branching \(id) (\(mode))")
    ) { value in
      "branched \(id) into \(string(value["tag"])) [\(string(value["status"]))] (source paused \(string(value["pause_ms"])) ms"
        + (value["diff_logical_bytes"] != nil ? ", \(string(value["diff_logical_bytes"])) bytes in the layer)" : ")")
    }
  }
}

// MARK: Snapshots

struct SnapshotCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "snapshot", abstract: "Create, list, inspect and remove snapshots.",
    subcommands: [Create.self, List.self, Info.self, Remove.self, Compact.self, Push.self, Pull.self])

  struct Compact: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Flatten a diff chain into a new full snapshot any backend can restore.")
    @Argument(help: "Tag of the chain's head.") var tag: String
    @Option(help: "Tag of the new flat snapshot.") var to: String
    @OptionGroup var connection: ConnectionOptions

    func run() throws {
      let response = try connection.call(
        "POST", "/v1/snapshots/\(tag)/compact", body: .object(["to": .string(to)]), progress: "compacting \(tag)")
      connection.emit(response) { value in
        "compacted \(tag) into \(string(value["tag"])) (\(string(value["memory_physical_bytes"])) bytes of data)"
      }
    }
  }

  struct Create: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Boot a parent, warm it, snapshot it.")
    @Argument(help: "Tag of the new snapshot.") var tag: String
    @Option(help: "Guest image (default: the built-in test guest).") var image: String?
    @Option(help: "Guest memory in MiB.") var memoryMib: Int = 64
    @Option(help: "Warm-up: pages the test guest fills before the snapshot.") var fillPages: Int = 0
    @Option(help: "vCPUs of the parent and its children (1...8).") var vcpus: Int = 1
    @OptionGroup var connection: ConnectionOptions

    func run() throws {
      var body: [String: JSONValue] = ["tag": .string(tag), "memory_mib": .integer(Int64(memoryMib))]
      if let image { body["image"] = .string(image) }
      if vcpus != 1 { body["vcpus"] = .integer(Int64(vcpus)) }
      if fillPages > 0 {
        body["warmup"] = .array([.object(["op": .string("fill"), "pages": .integer(Int64(fillPages))])])
      }
      connection.emit(try connection.call("POST", "/v1/snapshots", body: .object(body), progress: "creating \(tag)")) {
        value in
        "created \(string(value["tag"])) in \(string(value["dir"]))"
      }
    }
  }

  struct List: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ls", abstract: "List snapshots.")
    @OptionGroup var connection: ConnectionOptions

    func run() throws {
      connection.emit(try connection.call("GET", "/v1/snapshots")) { value in
        table(
          (value.arrayValue ?? []).map {
            [string($0["tag"]), string($0["parent_tag"]), string($0["created_at_unix"])]
          },
          header: ["TAG", "PARENT", "CREATED"])
      }
    }
  }

  struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show one snapshot.")
    @Argument(help: "Tag.") var tag: String
    @OptionGroup var connection: ConnectionOptions

    func run() throws {
      connection.emit(try connection.call("GET", "/v1/snapshots/\(tag)/info")) { value in
        let logical = Double(value["memory_logical_bytes"]?.int64Value ?? 0) / 1_048_576
        let physical = Double(value["memory_physical_bytes"]?.int64Value ?? 0) / 1_048_576
        return """
          tag        \(string(value["tag"]))
          dir        \(string(value["dir"]))
          memory     \(format(logical)) MiB logical, \(format(physical)) MiB on disk (\(string(value["memory_layer"])) layer)
          chain      depth \(string(value["chain_depth"]))
          parent     \(string(value["parent_tag"]))
          ancestors  \((value["ancestors"]?.arrayValue ?? []).map { string($0) }.joined(separator: " → "))
          dependents \((value["dependents"]?.arrayValue ?? []).map { string($0) }.joined(separator: ", "))
          """
      }
    }
  }

  struct Remove: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rm", abstract: "Delete a snapshot.")
    @Argument(help: "Tag.") var tag: String
    @Flag(help: "Also delete the snapshots derived from it.") var cascade = false
    @Flag(help: "Delete it and leave derived snapshots orphaned.") var force = false
    @OptionGroup var connection: ConnectionOptions

    func run() throws {
      var query = ""
      if cascade { query = "?cascade=true" }
      if force { query = cascade ? "?cascade=true&force=true" : "?force=true" }
      _ = try connection.call("DELETE", "/v1/snapshots/\(tag)\(query)")
      if !connection.json { print("deleted \(tag)") }
    }
  }
}

/// A one-line progress indicator on stderr for a request that may take seconds (spawning many
/// children, creating or branching a snapshot): the label and the elapsed time, redrawn every
/// 100 ms, erased when done. Only on a terminal, so scripts and logs see nothing of it.
final class ProgressLine: @unchecked Sendable {
  private let lock = ConditionLock()
  private var done = false
  private var thread: OSThread?

  init?(label: String) {
    guard isatty(2) == 1 else { return nil }
    let started = Clock.monotonicNanoseconds()
    thread = try? OSThread.start(name: "progress") { [self] in
      let frames = Array("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")
      var frame = 0
      while !lock.withLock({ done }) {
        let seconds = Double(Clock.monotonicNanoseconds() - started) / 1e9
        writeStderr("\r\(frames[frame % frames.count]) \(label)… \(format(seconds, decimals: 1)) s")
        frame += 1
        Clock.sleep(milliseconds: 100)
      }
      writeStderr("\r\u{1B}[K")
    }
  }

  func finish() {
    lock.withLock { done = true }
    thread?.join()
  }
}

func writeStderr(_ text: String) {
  try? FileDescriptor(rawValue: 2).writeAll(Array(text.utf8))
}
