import ArgumentParser
import ForkdHTTP
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

  @Flag(
    help: """
      Serve TCP on a loopback address without a token: every local user can then drive the \
      daemon. Without it (and without a token) a TCP listener refuses to start.
      """)
  public var insecureLoopbackWithoutToken = false

  @Option(
    help: """
      Directory whose files requests may name as kernel, rootfs, initrd or image (repeatable; \
      default <state-dir>/images).
      """)
  public var imageRoot: [String] = []

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

  @Option(help: "Agent calls (ping, exec, eval) running at once, each on its own thread; past it 503.")
  public var agentCalls: Int = 64

  @Option(help: "Spawns, branches, snapshot creations and compactions running at once; past it 503.")
  public var lifecycleCalls: Int = 16

  @Option(help: "Milliseconds a client has to send a request's header, from its first byte (then 408).")
  public var headerTimeoutMs: Int = HTTPLimits().headerTimeoutMS

  @Option(help: "Milliseconds a client has to send a request's body, after the header (then 408).")
  public var bodyTimeoutMs: Int = HTTPLimits().bodyTimeoutMS

  @Option(help: "Milliseconds a kept-alive connection may sit between requests before it is closed.")
  public var idleTimeoutMs: Int = HTTPLimits().idleTimeoutMS

  @Option(help: "Open API connections across all listeners; one more is answered 503 and closed.")
  public var maxConnections: Int = HTTPLimits().maxConnections

  @Option(help: "Without a journal: bytes each child's log file under <state>/logs may reach.")
  public var maxChildLogBytes: Int = 8 << 20
  @Option(
    help:
      "Registry logins for snapshot push/pull: a Docker-style config.json (or set FORKD_REGISTRY_AUTH).")
  public var registryAuth: String?

  @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
  public var logLevel: String = "info"

  @Option(help: "First uid (and gid) of children's jails; each live child gets one of its own.")
  public var jailUidBase: UInt32 = JailPool.defaultUIDBase

  @Option(help: "How many uids the jails may use: the most children alive at once.")
  public var jailUidCount: UInt32 = JailPool.defaultUIDCount

  @Flag(help: "Run children unjailed (as root, in the daemon's mount namespace): for measuring the jail only.")
  public var noJail = false

  public mutating func validate() throws {
    guard ["auto", "file", "uffd", "shmem"].contains(backend) else {
      throw ValidationError("--backend \(backend): auto, file, uffd or shmem")
    }
    guard PagerPolicy(rawValue: pagerPolicy) != nil else {
      throw ValidationError("--pager-policy \(pagerPolicy): restart or fail")
    }
    guard (1...64).contains(branchConcurrency) else { throw ValidationError("--branch-concurrency: 1...64") }
    guard (1...1024).contains(agentCalls) else { throw ValidationError("--agent-calls \(agentCalls): 1...1024") }
    guard (1...256).contains(lifecycleCalls) else {
      throw ValidationError("--lifecycle-calls \(lifecycleCalls): 1...256")
    }
    for (name, value) in [
      ("--header-timeout-ms", headerTimeoutMs), ("--body-timeout-ms", bodyTimeoutMs),
      ("--idle-timeout-ms", idleTimeoutMs),
    ] where !(10...3_600_000).contains(value) {
      throw ValidationError("\(name) \(value): 10...3600000")
    }
    guard (1...65536).contains(maxConnections) else { throw ValidationError("--max-connections: 1...65536") }
    guard (4096...(1 << 40)).contains(maxChildLogBytes) else {
      throw ValidationError("--max-child-log-bytes \(maxChildLogBytes): 4096...\(1 << 40)")
    }
    do {
      _ = try JailPool(base: jailUidBase, count: jailUidCount)
    } catch {
      throw ValidationError(error.description)
    }
    if let listenTcp, parseHostPort(listenTcp) == nil {
      throw ValidationError("--listen-tcp \(listenTcp): expected HOST:PORT")
    }
    for root in imageRoot where !root.hasPrefix("/") {
      throw ValidationError("--image-root \(root): must be an absolute path")
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
      branchConcurrency: branchConcurrency, imageRoots: imageRoot,
      insecureLoopbackWithoutToken: insecureLoopbackWithoutToken, agentCalls: agentCalls,
      lifecycleCalls: lifecycleCalls, jail: noJail ? nil : try JailPool(base: jailUidBase, count: jailUidCount))
    config.http.headerTimeoutMS = headerTimeoutMs
    config.http.bodyTimeoutMS = bodyTimeoutMs
    config.http.idleTimeoutMS = idleTimeoutMs
    config.http.maxConnections = maxConnections
    config.maxChildLogBytes = maxChildLogBytes
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
    hooks.extendTimeout = { _ = notifier.extendTimeout(by: $0) }
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
