import ArgumentParser
import Logging
import Syscalls
import SystemdSupport
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// Options shared by `forkd-supervisor` and `forkd serve`.
public struct DaemonCommandOptions: ParsableArguments {
  public init() {}

  @Option(help: "State directory: snapshots, sandbox records, audit log.")
  public var stateDir: String = "/var/lib/forkd"

  @Option(help: "Runtime directory: per-child sockets and logs.")
  public var runDir: String = "/run/forkd"

  @Option(help: "Unix socket of the API when not socket-activated.")
  public var socket: String = "/run/forkd/forkd.sock"

  @Option(help: "Also listen on TCP, e.g. 127.0.0.1:8889 (existing forkd clients' default).")
  public var listenTcp: String?

  @Option(help: "File holding the bearer token TCP clients must send (or set FORKD_TOKEN).")
  public var tokenFile: String?

  @Option(
    help: """
      Memory backend of children: auto (file for flat snapshots, a per-child uffd pager for diff \
      chains and live_fork spawns), file, uffd or shmem.
      """)
  public var backend: String = "auto"

  @Option(help: "What to do when a child's pager dies: restart or fail.")
  public var pagerPolicy: String = "restart"

  @Option(help: "Concurrent branches before 503.")
  public var branchConcurrency: Int = 4

  @Option(
    help:
      "Registry logins for snapshot push/pull: a Docker-style config.json (or set FORKD_REGISTRY_AUTH).")
  public var registryAuth: String?

  @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
  public var logLevel: String = "info"

  public mutating func validate() throws {
    guard ["auto", "file", "uffd", "shmem"].contains(backend) else {
      throw ValidationError("--backend \(backend): auto, file, uffd or shmem")
    }
    guard PagerPolicy(rawValue: pagerPolicy) != nil else {
      throw ValidationError("--pager-policy \(pagerPolicy): restart or fail")
    }
    guard (1...64).contains(branchConcurrency) else { throw ValidationError("--branch-concurrency: 1...64") }
    if let listenTcp, parseHostPort(listenTcp) == nil {
      throw ValidationError("--listen-tcp \(listenTcp): expected HOST:PORT")
    }
  }

  public func config() throws -> SupervisorConfig {
    var token: String? = getenv("FORKD_TOKEN").map { String(cString: $0) }
    if let tokenFile {
      let bytes = try FileSystem.readFile(tokenFile, limit: 4096)
      token = String(decoding: bytes, as: UTF8.self).trimmingWhitespace()
    }
    let policy = PagerPolicy(rawValue: pagerPolicy) ?? .restart
    let childBackend: BackendChoice =
      switch backend {
      case "file": .always(.file)
      case "shmem": .always(.shmem(policy: policy))
      case "uffd": .always(.uffd(policy: policy))
      default: .auto(pagerPolicy: policy)
      }
    var config = SupervisorConfig(
      stateDirectory: stateDir, runDirectory: runDir, backend: childBackend,
      token: token?.isEmpty == true ? nil : token,
      branchConcurrency: branchConcurrency)
    config.registryAuthFile = registryAuth ?? getenv("FORKD_REGISTRY_AUTH").map { String(cString: $0) }
    return config
  }

  /// Runs the daemon in the foreground until SIGTERM/SIGINT: listeners passed by systemd if any
  /// (socket activation), sd_notify READY/STATUS/STOPPING and watchdog pings when asked for, logs
  /// to the journal (a file under the state directory without one) and to stderr when it is a
  /// terminal.
  public func runDaemon(identifier: String) async throws {
    // Consumed first: it unsets LISTEN_* so no child ever believes it was activated.
    let activated = SocketActivation.listeners().compactMap { socket -> (fd: Int32, tcp: Bool)? in
      switch socket.kind {
      case .unix: (socket.fd.rawValue, false)
      case .tcp: (socket.fd.rawValue, true)
      case .other: nil
      }
    }
    let level = Logger.Level(rawValue: logLevel) ?? .info
    let fallback = stateDir + "/logs"
    let interactive = isatty(2) == 1
    LoggingSystem.bootstrap { label in
      var journal = ForkdLogging.handler(label: label, identifier: identifier, fallbackDirectory: fallback)
      journal.logLevel = level
      guard interactive else { return journal }
      var console = StreamLogHandler.standardError(label: label)
      console.logLevel = level
      return MultiplexLogHandler([journal, console])
    }
    let logger = Logger(label: identifier)
    let notifier = Notifier()
    var hooks = ServiceHooks()
    hooks.ready = { _ = notifier.ready(status: $0) }
    hooks.status = { _ = notifier.status($0) }
    hooks.stopping = { _ = notifier.stopping() }
    hooks.watchdog = { _ = notifier.watchdog() }
    hooks.watchdogInterval = notifier.watchdogInterval
    let hostPort = listenTcp.flatMap(parseHostPort)
    do {
      try await Daemon.run(
        config: try config(),
        listen: ListenOptions(unixSocket: socket, tcpHost: hostPort?.0, tcpPort: hostPort?.1, activated: activated),
        hooks: hooks, logger: logger)
    } catch let error as Daemon.StartupError {
      logger.critical("\(error)")
      try? FileDescriptor(rawValue: 2).writeAll(Array("\(identifier): \(error)\n".utf8))
      throw ExitCode(1)
    }
  }
}

func parseHostPort(_ text: String) -> (String, Int)? {
  guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
    (1...65535).contains(port)
  else { return nil }
  var host = String(text[..<colon])
  if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
  return host.isEmpty ? nil : (host, port)
}

extension String {
  func trimmingWhitespace() -> String {
    let scalars = unicodeScalars
    guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }),
      let last = scalars.lastIndex(where: { !$0.properties.isWhitespace })
    else { return "" }
    return String(scalars[first...last])
  }
}
