import ForkdHTTP
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
  /// Directories whose files requests may name as kernel, rootfs, initrd or image (empty:
  /// `<state-dir>/images`).
  public var imageRoots: [String]
  /// Agent calls (ping, exec, eval) running at once; past it 503.
  public var agentCalls: Int
  /// Spawns, branches, snapshot creations and compactions running at once; past it 503.
  public var lifecycleCalls: Int
  /// Serve TCP on loopback without a token (`--insecure-loopback-without-token`).
  public var insecureLoopbackWithoutToken: Bool
  /// Request sizes, per-phase deadlines and the connection cap of every listener.
  public var http = HTTPLimits()
  /// Without a journal, each child's log file (`<state>/logs/<id>.log`) stops growing here.
  public var maxChildLogBytes = 8 << 20
  /// The uids children's jails run as (docs/jail.md); nil: children run unjailed (`--no-jail`,
  /// for measuring what the jail costs).
  public var jail: JailPool?
  /// Registry logins for snapshot push/pull: a Docker-style config.json (nil: anonymous).
  public var registryAuthFile: String?

  public init(
    stateDirectory: String = "/var/lib/forkd", runDirectory: String = "/run/forkd",
    backend: BackendChoice = .auto(pagerPolicy: .restart),
    token: String? = nil, branchConcurrency: Int = 4, spawnParallelism: Int = 4, imageRoots: [String] = [],
    insecureLoopbackWithoutToken: Bool = false, agentCalls: Int = 64, lifecycleCalls: Int = 16,
    jail: JailPool? = nil
  ) {
    self.jail = jail
    self.stateDirectory = stateDirectory
    self.runDirectory = runDirectory
    self.backend = backend
    self.token = token
    self.branchConcurrency = branchConcurrency
    self.spawnParallelism = spawnParallelism
    self.imageRoots = imageRoots.isEmpty ? [stateDirectory + "/images"] : imageRoots
    self.insecureLoopbackWithoutToken = insecureLoopbackWithoutToken
    self.agentCalls = agentCalls
    self.lifecycleCalls = lifecycleCalls
  }

  public var snapshotsDirectory: String { stateDirectory + "/snapshots" }
  public var sandboxRecordsDirectory: String { stateDirectory + "/sandboxes" }
  public var sandboxRunDirectory: String { runDirectory + "/sandboxes" }
  public var auditLogPath: String { stateDirectory + "/audit.jsonl" }
  /// Jailed children's branch directories (`branches/<id>/`), beside the snapshots so a finished
  /// branch is renamed into the store.
  public var branchStagingDirectory: String { stateDirectory + "/branches" }
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
