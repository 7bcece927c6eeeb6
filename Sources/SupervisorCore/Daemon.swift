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
  /// EXTEND_TIMEOUT_USEC: asks for more time while a long drain runs.
  public var extendTimeout: @Sendable (Duration) -> Void = { _ in }
  /// How long a drain runs before the first extension, and between extensions.
  public var drainExtendInterval: Duration = .seconds(5)
  /// No extension is asked for once a drain has run this long.
  public var drainExtendLimit: Duration = .seconds(600)
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

  /// Every TCP listener needs the bearer token. The one exception is a numeric loopback address
  /// when the operator passed `--insecure-loopback-without-token`; anything else (any other
  /// address, a host name, loopback without the flag) is refused at start.
  public static func checkExposure(host: String?, token: String?, insecureLoopback: Bool) throws(StartupError) {
    guard let host, (token ?? "").isEmpty else { return }
    guard isLoopbackAddress(host) else {
      throw StartupError(
        description:
          "refusing to listen on \(host) without a token (--token-file or FORKD_TOKEN): TCP clients must authenticate")
    }
    guard insecureLoopback else {
      throw StartupError(
        description:
          "refusing to listen on \(host) without a token (--token-file or FORKD_TOKEN): any local user could drive the daemon; pass --insecure-loopback-without-token to allow it on loopback"
      )
    }
  }

  /// A numeric loopback address (127.0.0.0/8, ::1, ::ffff:127.0.0.0/104); a host name, even
  /// "localhost" or one that merely starts with "127.", may resolve anywhere.
  static func isLoopbackAddress(_ host: String) -> Bool {
    var v4 = in_addr()
    if inet_pton(AF_INET, host, &v4) == 1 { return UInt32(bigEndian: v4.s_addr) >> 24 == 127 }
    var v6 = in6_addr()
    if inet_pton(AF_INET6, host, &v6) == 1 {
      let bytes = withUnsafeBytes(of: &v6) { Array($0) }
      if bytes.elementsEqual([UInt8](repeating: 0, count: 15) + [1]) { return true }
      let mappedPrefix = [UInt8](repeating: 0, count: 10) + [0xff, 0xff]
      return bytes.prefix(12).elementsEqual(mappedPrefix) && bytes[12] == 127
    }
    return false
  }

  /// The group that may connect to the API socket: `forkd` (packaging/forkd-sysusers.conf), or
  /// the daemon's own group when that does not exist.
  static func apiSocketGroup(logger: Logger) -> gid_t {
    if let group = getgrnam("forkd") { return group.pointee.gr_gid }
    logger.notice(
      "group forkd does not exist: the API socket keeps group \(getegid()) (create it: systemd-sysusers packaging/forkd-sysusers.conf)"
    )
    return getegid()
  }

  /// Runs until SIGTERM/SIGINT, then drains: stops accepting, stops every child, exits.
  public static func run(config: SupervisorConfig, listen: ListenOptions, hooks: ServiceHooks, logger: Logger)
    async throws
  {
    try checkExposure(host: listen.tcpHost, token: config.token, insecureLoopback: config.insecureLoopbackWithoutToken)
    for socket in listen.activated where socket.tcp {
      let address: (host: String, port: Int)
      do {
        address = try InetSocket.localAddress(socket.fd)
      } catch {
        throw StartupError(description: "socket-activated fd \(socket.fd): cannot tell its address: \(error)")
      }
      try checkExposure(host: address.host, token: config.token, insecureLoopback: config.insecureLoopbackWithoutToken)
    }
    let tcpWithoutToken =
      (listen.tcpHost != nil || listen.activated.contains { $0.tcp }) && (config.token ?? "").isEmpty
    if tcpWithoutToken {
      let warning =
        "UNAUTHENTICATED: --insecure-loopback-without-token: the TCP API on loopback accepts every local user's requests without a token"
      logger.critical("\(warning)")
      if isatty(2) != 1 { try? FileDescriptor(rawValue: 2).writeAll(Array("forkd: \(warning)\n".utf8)) }
    }
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
    let seams = TestSeams()
    let server = HTTPServer(threads: 2, limits: config.http) { request in
      if let answer = seams.handle(request) { return answer }
      return await supervisor.handle(request)
    }
    seams.attach(server)
    var channels: [any Sendable] = []
    var described: [String] = []
    do {
      for socket in listen.activated {
        channels.append(try await server.adopt(descriptor: socket.fd, kind: socket.tcp ? .tcp : .unix))
        described.append("fd \(socket.fd) (socket activation)")
      }
      if listen.activated.isEmpty, let path = listen.unixSocket {
        try FileSystem.makeDirectories(parentDirectory(path), mode: 0o755)
        // Created 0600 (umask) so no other user can connect before it is 0660 root:forkd.
        let previousMask = umask(0o177)
        defer { umask(previousMask) }
        channels.append(try await server.bind(unixPath: path))
        _ = chown(path, geteuid(), apiSocketGroup(logger: logger))
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

    let watchdog: PeriodicThread?
    if let interval = hooks.watchdogInterval {
      do {
        watchdog = try Watchdog.start(server: server, interval: interval, hooks: hooks, logger: logger)
      } catch {
        supervisor.shutdown()
        try? await server.shutdown()
        throw StartupError(description: "cannot start the watchdog thread: \(error)")
      }
    } else {
      watchdog = nil
    }

    // The signal thread is joined once it has resumed the drain (a finished, unjoined thread
    // is a leak ThreadSanitizer reports).
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
    let extender = Watchdog.extendWhileDraining(
      interval: hooks.drainExtendInterval, limit: hooks.drainExtendLimit, hooks: hooks)
    supervisor.shutdown()
    // The probe needs the event loops: the watchdog stops before they do.
    watchdog?.stop()
    try? await server.shutdown()
    extender?.stop()
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
