import ForkdClient
import Protocol
import Synchronization
import Syscalls
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// The tests' view of the API: ForkdClient's APIClient with string bodies.
struct HTTPTestClient {
  enum Target {
    case unix(String)
    case tcp(host: String, port: UInt16)
  }
  let target: Target

  func request(_ method: String, _ path: String, body: String? = nil, headers: [String: String] = [:]) throws
    -> APIClient.Response
  {
    let endpoint: APIClient.Endpoint =
      switch target {
      case .unix(let path): .unix(path)
      case .tcp(let host, let port): .tcp(host: host, port: port)
      }
    return try APIClient(endpoint: endpoint).request(method, path, rawBody: Array((body ?? "").utf8), headers: headers)
  }
}

/// Jail uid ranges for test supervisors: one of its own per supervisor of this test process (and
/// per test process), so children of two supervisors running at once never share a uid.
private let nextJailRange = Mutex<UInt32>(0)
func testJailUIDBase() -> UInt32 {
  let index = nextJailRange.withLock { value -> UInt32 in
    defer { value = (value + 1) % 64 }
    return value
  }
  return 1_901_000_000 + UInt32(getpid() % 256) * 65_536 + index * 1024
}

/// A forkd-supervisor started for one test, stopped (SIGTERM, then checked) at the end.
final class TestSupervisor {
  let scratch: Scratch
  let pid: pid_t
  let socket: String
  let tcpPort: UInt16
  let logPath: String
  var unix: HTTPTestClient { HTTPTestClient(target: .unix(socket)) }
  var tcp: HTTPTestClient { HTTPTestClient(target: .tcp(host: "127.0.0.1", port: tcpPort)) }

  /// `reusing` starts a second supervisor on the state and run directories of an earlier one.
  init(
    _ name: String, backend: String = "uffd", token: String? = nil, extra: [String] = [], reusing: Scratch? = nil,
    environment extraEnvironment: [String] = []
  ) throws {
    scratch = try reusing ?? Scratch("sup-\(name)")
    socket = scratch.path + "/forkd.sock"
    logPath = scratch.path + "/supervisor.log"
    tcpPort = UInt16.random(in: 20000...40000)
    var arguments = [
      "forkd-supervisor", "--state-dir", scratch.path + "/state", "--run-dir", scratch.path + "/run", "--socket",
      socket,
      "--listen-tcp", "127.0.0.1:\(tcpPort)", "--backend", backend, "--jail-uid-base", "\(testJailUIDBase())",
      "--jail-uid-count", "1024",
    ]
    var environment = ChildProcess.currentEnvironment().filter { !$0.hasPrefix("FORKD_TOKEN=") }
    if let token {
      environment.append("FORKD_TOKEN=\(token)")
    } else {
      // The tests' TCP clients are this process: loopback without a token, allowed explicitly.
      arguments.append("--insecure-loopback-without-token")
    }
    environment += extraEnvironment
    arguments += extra
    let log = try FileDescriptor.open(logPath, [.writeOnly, .create, .append])
    defer { log.close() }
    pid = try ChildProcess.spawn(
      path: try ForkdBinaries.path(of: "forkd-supervisor"), arguments: arguments, environment: environment,
      stdoutFD: log,
      stderrFD: log)
    let deadline = Clock.monotonicNanoseconds() + 20_000_000_000
    while (try? HTTPTestClient(target: .unix(socket)).request("GET", "/healthz"))?.status != 200 {
      guard Clock.monotonicNanoseconds() < deadline else {
        throw SyscallError("supervisor", .invalid, detail: "not ready")
      }
      Clock.sleep(milliseconds: 20)
    }
  }

  /// SIGTERM and wait; returns how it ended.
  @discardableResult
  func stop() -> ChildProcess.Termination? {
    kill(pid, SIGTERM)
    return ChildProcess.waitOrKill(pid, timeoutMS: 30_000)
  }

  deinit {
    if kill(pid, 0) == 0 { stop() }
  }
}
