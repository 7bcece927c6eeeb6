import ForkdHTTP
import Logging
import Protocol
import Syscalls
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// Tells the service manager about the daemon's state (sd_notify); no-ops when not under systemd.
public struct ServiceHooks: Sendable {
  public var ready: @Sendable (String) -> Void = { _ in }
  public var status: @Sendable (String) -> Void = { _ in }
  public var stopping: @Sendable () -> Void = {}
  public var watchdog: @Sendable () -> Void = {}
  public var watchdogInterval: Duration? = nil
  public init() {}
}

/// How the daemon listens.
public struct ListenOptions: Sendable {
  /// Unix socket path to bind when no socket was passed by systemd.
  public var unixSocket: String?
  /// Optional TCP listener for existing forkd clients, e.g. 127.0.0.1:8889.
  public var tcpHost: String?
  public var tcpPort: Int?
  /// Listening sockets passed by systemd (fd, is it TCP).
  public var activated: [(fd: Int32, tcp: Bool)]

  public init(
    unixSocket: String?, tcpHost: String? = nil, tcpPort: Int? = nil, activated: [(fd: Int32, tcp: Bool)] = []
  ) {
    self.unixSocket = unixSocket
    self.tcpHost = tcpHost
    self.tcpPort = tcpPort
    self.activated = activated
  }
}

public enum Daemon {
  public struct StartupError: Error, CustomStringConvertible {
    public let description: String
  }

  /// A TCP listener on a non-loopback address without a token would expose the API: refused.
  public static func checkExposure(host: String?, token: String?) throws(StartupError) {
    guard let host else { return }
    let loopback = host == "localhost" || isLoopbackAddress(host)
    if !loopback && (token ?? "").isEmpty {
      throw StartupError(description: "refusing to listen on \(host) without a token (--token-file or FORKD_TOKEN)")
    }
  }

  /// A numeric loopback address (127.0.0.0/8, ::1); a host name that merely starts with "127."
  /// may resolve anywhere.
  static func isLoopbackAddress(_ host: String) -> Bool {
    var v4 = in_addr()
    if inet_pton(AF_INET, host, &v4) == 1 { return UInt32(bigEndian: v4.s_addr) >> 24 == 127 }
    var v6 = in6_addr()
    if inet_pton(AF_INET6, host, &v6) == 1 {
      return withUnsafeBytes(of: &v6) { $0.elementsEqual([UInt8](repeating: 0, count: 15) + [1]) }
    }
    return false
  }

  /// Runs until SIGTERM/SIGINT, then drains: stops accepting, stops every child, exits.
  public static func run(config: SupervisorConfig, listen: ListenOptions, hooks: ServiceHooks, logger: Logger)
    async throws
  {
    try checkExposure(host: listen.tcpHost, token: config.token)
    // SIGTERM/SIGINT become a readable eventfd whichever thread they hit (the concurrency
    // runtime's threads exist before this code runs, so masking cannot cover them all).
    let stopSignal = try OSThread.stopSignals()
    signal(SIGPIPE, SIG_IGN)

    // Connections up to the cap plus every child's descriptors: the 1024 soft default is too few.
    if let files = try? OpenFileLimit.raiseToHard(), files < UInt64(config.http.maxConnections) * 2 + 256 {
      logger.warning(
        "RLIMIT_NOFILE is \(files): --max-connections \(config.http.maxConnections) may run out of descriptors")
    }
    let supervisor = try Supervisor(config: config, logger: logger)
    let server = HTTPServer(threads: 2, limits: config.http) { request in await supervisor.handle(request) }
    var channels: [any Sendable] = []
    var described: [String] = []
    do {
      for socket in listen.activated {
        channels.append(try await server.adopt(descriptor: socket.fd, kind: socket.tcp ? .tcp : .unix))
        described.append("fd \(socket.fd) (socket activation)")
      }
      if listen.activated.isEmpty, let path = listen.unixSocket {
        try FileSystem.makeDirectories(parentDirectory(path), mode: 0o755)
        channels.append(try await server.bind(unixPath: path))
        _ = chmod(path, 0o660)
        described.append(path)
      }
      if let host = listen.tcpHost, let port = listen.tcpPort {
        channels.append(try await server.bind(host: host, port: port))
        described.append("\(host):\(port)")
      }
    } catch {
      supervisor.shutdown()
      throw StartupError(description: "cannot listen: \(error)")
    }
    logger.info("forkd-supervisor \(APIVersion.version) listening on \(described.joined(separator: ", "))")
    hooks.ready("serving on \(described.joined(separator: ", "))")

    let watchdogThread: OSThread?
    if let interval = hooks.watchdogInterval {
      let halfMS = Int(interval.components.seconds * 500 + interval.components.attoseconds / 2_000_000_000_000_000)
      watchdogThread = try? OSThread.start(name: "watchdog") {
        while true {
          Clock.sleep(milliseconds: max(halfMS, 100))
          hooks.watchdog()
        }
      }
    } else {
      watchdogThread = nil
    }

    // The signal thread is joined once it has resumed the drain (a finished, unjoined thread
    // is a leak ThreadSanitizer reports); the watchdog runs until the process exits: detached.
    watchdogThread?.detach()
    let signalThread = SignalThreadBox()
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
      signalThread.thread = try? OSThread.start(name: "signals") {
        while (try? Poll.wait([(stopSignal.fd, .readable)], timeoutMS: -1))?.first?.isEmpty ?? true {}
        continuation.resume()
      }
    }
    signalThread.thread?.join()
    logger.info("stop signal: draining")
    hooks.stopping()
    hooks.status("stopping \(supervisor.sandboxes.activeCount()) sandboxes")
    supervisor.shutdown()
    try? await server.shutdown()
    if listen.activated.isEmpty, let path = listen.unixSocket { _ = try? FileSystem.unlink(path) }
    logger.info("stopped")
  }
}

/// Carries the signal thread's handle out of the continuation's closure.
private final class SignalThreadBox: @unchecked Sendable {
  var thread: OSThread?
}

func parentDirectory(_ path: String) -> String {
  guard let slash = path.lastIndex(of: "/") else { return "." }
  return slash == path.startIndex ? "/" : String(path[..<slash])
}
