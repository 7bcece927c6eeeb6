import VMMControl

/// How the supervisor starts processes for children and snapshot parents. The real one runs
/// forkd-vmm (and its pager); test doubles inject failures, or let the request-path fuzz target
/// reach every handler without starting a VM.
public protocol ChildLauncher: Sendable {
  /// `vmmArguments` go to the child's forkd-vmm as they are (e.g. its NIC's `--netns`, `--tap`);
  /// `jail` and `branchDirectory`: see `Child.restore` (docs/jail.md).
  func restore(
    snapshot: String, runDirectory: String, backend: ChildBackend, outputs: Child.OutputFactory?,
    vmmArguments: [String], jail: JailPool?, branchDirectory: String?
  ) throws(ControlError) -> Child
  func boot(_ mode: VMMProcess.Mode, runDirectory: String, extraArguments: [String]) throws(ControlError)
    -> VMMProcess
  /// A child's own network namespace with its TAP (`per_child_netns`).
  func makeNetwork(for sandboxID: String, config: SupervisorConfig) throws(APIError) -> ChildNetwork
}

/// forkd-vmm and forkd-pager processes.
public struct ProcessLauncher: ChildLauncher {
  public init() {}

  public func restore(
    snapshot: String, runDirectory: String, backend: ChildBackend, outputs: Child.OutputFactory?,
    vmmArguments: [String], jail: JailPool?, branchDirectory: String?
  ) throws(ControlError) -> Child {
    try Child.restore(
      snapshot: snapshot, runDirectory: runDirectory, backend: backend, outputs: outputs, vmmArguments: vmmArguments,
      jail: jail, branchDirectory: branchDirectory)
  }

  public func boot(_ mode: VMMProcess.Mode, runDirectory: String, extraArguments: [String]) throws(ControlError)
    -> VMMProcess
  {
    try VMMProcess.launch(mode, runDirectory: runDirectory, extraArguments: extraArguments)
  }

  public func makeNetwork(for sandboxID: String, config: SupervisorConfig) throws(APIError) -> ChildNetwork {
    try ChildNetwork.create(for: sandboxID, config: config)
  }
}
