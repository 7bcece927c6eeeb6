import NIOPosix
import Synchronization

/// Threads for the API's blocking work, so none of it runs on Swift's cooperative pool (as many
/// threads as cores: two blocked calls there would stall every route, /healthz included).
///
/// Each kind of work has its own pool, so one kind never waits behind another: an hour-long
/// exec cannot hold up a DELETE, and a burst of spawns cannot hold up agent calls. A pool admits
/// at most `threads + queue` calls; past that the request gets 503 at once rather than waiting.
final class WorkPool: Sendable {
  let name: String
  let threads: Int
  let queue: Int
  private let pool: NIOThreadPool
  private let admitted = Mutex(0)

  init(name: String, threads: Int, queue: Int) {
    self.name = name
    self.threads = threads
    self.queue = queue
    pool = NIOThreadPool(numberOfThreads: threads)
    pool.start()
  }

  /// Runs `body` on one of this pool's threads; 503 when the pool is full.
  func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    let limit = threads + queue
    let entered = admitted.withLock { count in
      guard count < limit else { return false }
      count += 1
      return true
    }
    guard entered else {
      throw APIError.unavailable("\(limit) \(name) calls are in progress (the limit): try again later")
    }
    defer { admitted.withLock { $0 -= 1 } }
    do {
      return try await pool.runIfActive(body)
    } catch is CancellationError {
      // runIfActive's answer once `shutdown` ran: the SIGTERM drain.
      throw APIError.unavailable("the supervisor is shutting down (SIGTERM drain): new \(name) calls are refused")
    }
  }

  var inFlight: Int { admitted.withLock { $0 } }

  func shutdown() { try? pool.syncShutdownGracefully() }
}

/// The supervisor's pools: agent calls (ping, exec, eval: long, one thread each, no queue);
/// lifecycle work that builds things (spawn, branch, snapshot create and compact); teardown
/// (DELETE of sandboxes and snapshots: bounded work, queued rather than refused).
struct WorkPools: Sendable {
  let agent: WorkPool
  let lifecycle: WorkPool
  let teardown: WorkPool

  init(agentCalls: Int, lifecycleCalls: Int) {
    agent = WorkPool(name: "agent", threads: agentCalls, queue: 0)
    lifecycle = WorkPool(name: "spawn/branch/snapshot", threads: lifecycleCalls, queue: 0)
    teardown = WorkPool(name: "delete", threads: 4, queue: 256)
  }

  func shutdown() {
    agent.shutdown()
    lifecycle.shutdown()
    teardown.shutdown()
  }
}
