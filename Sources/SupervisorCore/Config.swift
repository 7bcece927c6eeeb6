import Dispatch
import VMMControl

/// The supervisor's settings (command line of forkd-supervisor / forkd serve).
public struct SupervisorConfig: Sendable {
  /// Snapshots (`snapshots/<tag>/`), sandbox records (`sandboxes/<id>.json`) and the audit log.
  public var stateDirectory: String
  /// Per-child run directories (`sandboxes/<id>/`): sockets and logs.
  public var runDirectory: String
  /// How children get their memory: `auto` (the default) or one backend for every spawn.
  public var backend: BackendChoice
  /// Bearer token required on TCP listeners (nil: none).
  public var token: String?
  /// Concurrent BRANCHes allowed before 503.
  public var branchConcurrency: Int
  /// Children restored in parallel for one spawn request.
  public var spawnParallelism: Int
  /// Registry logins for snapshot push/pull: a Docker-style config.json (nil: anonymous).
  public var registryAuthFile: String?

  public init(
    stateDirectory: String = "/var/lib/forkd", runDirectory: String = "/run/forkd",
    backend: BackendChoice = .auto(pagerPolicy: .restart),
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

/// Which backend a spawn gets (docs/design/userfaultfd.md): mapping memory.bin is the cheapest
/// child (no pager process, page-cache sharing), so `auto` uses it wherever it can, and a per-child
/// pager only where one is needed: a diff-chain snapshot (pages come from several layers) or a
/// `live_fork` spawn (a live branch write-protects the pager's memory).
public enum BackendChoice: Sendable, Equatable {
  case auto(pagerPolicy: PagerPolicy)
  case always(ChildBackend)

  /// The backend for one spawn; the caller refuses it if it cannot serve the request.
  public func backend(chainDepth: Int, liveFork: Bool) -> ChildBackend {
    switch self {
    case .auto(let policy): chainDepth > 0 || liveFork ? .uffd(policy: policy) : .file
    case .always(let backend): backend
    }
  }

  public var name: String {
    switch self {
    case .auto: "auto"
    case .always(let backend): backend.name
    }
  }
}

/// Runs blocking work (process spawns, socket round trips) off the HTTP event loop.
func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
  try await withCheckedThrowingContinuation { continuation in
    DispatchQueue.global().async {
      do { continuation.resume(returning: try body()) } catch { continuation.resume(throwing: error) }
    }
  }
}
