import ArgumentParser
import ForkdClient
import Protocol
import Synchronization
import Syscalls
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// A supervisor this CLI run starts in the background (forkd-supervisor in a scratch directory) and
/// stops at the end: the demo and the spawn bench talk to it through the v1 API like any client.
public final class LocalDaemon {
  public let pid: pid_t
  public let socket: String
  public let logPath: String
  public let api: APIClient
  private var reaped = false

  /// Starts forkd-supervisor (from beside this binary) with its state, run directory and socket
  /// under `directory`, and waits until /healthz answers.
  public init(directory: String, backend: String, extraArguments: [String] = []) throws {
    socket = directory + "/forkd.sock"
    logPath = directory + "/supervisor.log"
    let executable = try ForkdBinaries.path(of: "forkd-supervisor")
    let log = try FileDescriptor.open(logPath, [.writeOnly, .create])
    pid = try ChildProcess.spawn(
      path: executable,
      arguments: [executable] + [
        "--state-dir", directory + "/state", "--run-dir", directory + "/run", "--socket", socket,
        "--backend", backend,
      ] + extraArguments, stdoutFD: log, stderrFD: log)
    log.close()
    api = APIClient(endpoint: .unix(socket))
    var healthy = false
    for _ in 0..<400 where !healthy {
      healthy = (try? api.request("GET", "/healthz"))?.status == 200
      if !healthy {
        if case .some(.some) = try? ChildProcess.wait(pid, block: false) {
          reaped = true
          break
        }
        Clock.sleep(milliseconds: 25)
      }
    }
    guard healthy else {
      stop()
      throw ValidationError("the supervisor did not start: \(lastLines(of: logPath))")
    }
  }

  /// SIGTERM: the supervisor stops every child and exits; SIGKILL after a minute.
  public func stop() {
    guard !reaped else { return }
    reaped = true
    kill(pid, SIGTERM)
    ChildProcess.waitOrKill(pid, timeoutMS: 60_000)
  }

  /// The supervisor's proportional set size in MiB.
  public var pssMiB: Double { Double(smapsRollupField(pid, "Pss") ?? 0) / 1024 }

  /// Sends a request and turns anything but the expected status into an error naming the call.
  public func expect(_ status: Int, _ method: String, _ path: String, body: JSONValue? = nil) throws
    -> APIClient.Response
  {
    let response = try api.request(method, path, body: body)
    guard response.status == status else {
      throw ValidationError("\(method) \(path): \(response.status) \(response.errorMessage ?? response.text)")
    }
    return response
  }

}

/// Runs `body` for every index in 0..<count on `width` threads; returns the indices that threw.
public func concurrently(_ count: Int, width: Int, _ body: @escaping @Sendable (Int) throws -> Void) throws -> [Int] {
  let failures = FailedIndices()
  let next = NextIndex()
  let workers = try (0..<min(width, count)).map { i in
    try OSThread.start(name: "worker\(i)") {
      while let index = next.take(below: count) {
        do { try body(index) } catch { failures.add(index) }
      }
    }
  }
  workers.forEach { $0.join() }
  return failures.all.sorted()
}

final class FailedIndices: Sendable {
  private let indices = Mutex<[Int]>([])
  func add(_ index: Int) { indices.withLock { $0.append(index) } }
  var all: [Int] { indices.withLock { $0 } }
}

final class NextIndex: Sendable {
  private let value = Mutex(0)
  func take(below limit: Int) -> Int? {
    value.withLock { value in
      guard value < limit else { return nil }
      defer { value += 1 }
      return value
    }
  }
}
