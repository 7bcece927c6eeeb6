import Dispatch
import VMMControl

/// The supervisor's settings (command line of forkd-supervisor / forkd serve).
public struct SupervisorConfig: Sendable {
  /// Snapshots (`snapshots/<tag>/`), sandbox records (`sandboxes/<id>.json`) and the audit log.
  public var stateDirectory: String
  /// Per-child run directories (`sandboxes/<id>/`): sockets and logs.
  public var runDirectory: String
  /// How children get their memory (the supervisor's default: a forkd-pager per child).
  public var backend: ChildBackend
  /// Bearer token required on TCP listeners (nil: none).
  public var token: String?
  /// Concurrent BRANCHes allowed before 503.
  public var branchConcurrency: Int
  /// Children restored in parallel for one spawn request.
  public var spawnParallelism: Int

  public init(
    stateDirectory: String = "/var/lib/forkd", runDirectory: String = "/run/forkd",
    backend: ChildBackend = .uffd(policy: .restart),
    token: String? = nil, branchConcurrency: Int = 4, spawnParallelism: Int = 4
  ) {
    self.stateDirectory = stateDirectory
    self.runDirectory = runDirectory
    self.backend = backend
    self.token = token
    self.branchConcurrency = branchConcurrency
    self.spawnParallelism = spawnParallelism
  }

  public var snapshotsDirectory: String { stateDirectory + "/snapshots" }
  public var sandboxRecordsDirectory: String { stateDirectory + "/sandboxes" }
  public var sandboxRunDirectory: String { runDirectory + "/sandboxes" }
  public var auditLogPath: String { stateDirectory + "/audit.jsonl" }
}

/// Runs blocking work (process spawns, socket round trips) off the HTTP event loop.
func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
  try await withCheckedThrowingContinuation { continuation in
    DispatchQueue.global().async {
      do { continuation.resume(returning: try body()) } catch { continuation.resume(throwing: error) }
    }
  }
}
