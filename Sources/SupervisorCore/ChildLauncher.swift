import VMMControl

/// How the supervisor starts processes for children and snapshot parents. The real one runs
/// forkd-vmm (and its pager); test doubles inject failures, or let the request-path fuzz target
/// reach every handler without starting a VM.
public protocol ChildLauncher: Sendable {
  func restore(snapshot: String, runDirectory: String, backend: ChildBackend, outputs: Child.OutputFactory?)
    throws(ControlError) -> Child
  func boot(_ mode: VMMProcess.Mode, runDirectory: String) throws(ControlError) -> VMMProcess
}

/// forkd-vmm and forkd-pager processes.
public struct ProcessLauncher: ChildLauncher {
  public init() {}

  public func restore(snapshot: String, runDirectory: String, backend: ChildBackend, outputs: Child.OutputFactory?)
    throws(ControlError) -> Child
  {
    try Child.restore(snapshot: snapshot, runDirectory: runDirectory, backend: backend, outputs: outputs)
  }

  public func boot(_ mode: VMMProcess.Mode, runDirectory: String) throws(ControlError) -> VMMProcess {
    try VMMProcess.launch(mode, runDirectory: runDirectory)
  }
}
