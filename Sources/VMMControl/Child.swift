import Protocol
import Synchronization
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// How a child's memory is served.
public enum ChildBackend: Sendable, Equatable {
  /// memory.bin mapped MAP_PRIVATE by forkd-vmm itself.
  case file
  /// A dedicated forkd-pager serves every first touch through userfaultfd.
  case uffd(policy: PagerPolicy = .restart, prefetch: Bool = false, recordWorkingSet: Bool = false)
  /// A shmem copy of memory.bin shared by all children, mapped private; the pager answers MINOR
  /// faults with UFFDIO_CONTINUE (page-cache sharing and pager control at once).
  case shmem(policy: PagerPolicy = .restart, prefetch: Bool = false, recordWorkingSet: Bool = false)

  /// Whether children can be restored from a diff chain (a pager serves each page from its layer).
  public var servesChains: Bool {
    if case .uffd = self { return true }
    return false
  }

  public var name: String {
    switch self {
    case .file: "file"
    case .uffd(_, let prefetch, _): prefetch ? "uffd+prefetch" : "uffd"
    case .shmem(_, let prefetch, _): prefetch ? "shmem-minor+prefetch" : "shmem-minor"
    }
  }

  var pagerSettings: (policy: PagerPolicy, prefetch: Bool, record: Bool)? {
    switch self {
    case .file: nil
    case .uffd(let policy, let prefetch, let record), .shmem(let policy, let prefetch, let record):
      (policy, prefetch, record)
    }
  }
}

/// What the owner does when a child's pager dies.
public enum PagerPolicy: String, Sendable {
  /// Start a new pager and hand it the same uffd; stalled faults resume.
  case restart
  /// The VM stops with an error; everything of the child is cleaned up.
  case fail
}

/// One restored child: its forkd-vmm and, with the uffd backend, its own forkd-pager. The owner
/// of this object owns both processes and the run directory.
public final class Child: @unchecked Sendable {
  public let vmm: VMMProcess
  public let backend: ChildBackend
  public let runDirectory: String
  public let snapshot: String
  /// The current pager and how often it was replaced: read by API requests on other threads while
  /// the monitor replaces the pager, so they have their own leaf lock (never held across calls).
  private let published = Mutex<(pager: PagerProcess?, restarts: Int)>((nil, 0))
  public var pager: PagerProcess? { published.withLock { $0.pager } }
  public var pagerRestarts: Int { published.withLock { $0.restarts } }
  private var pagerGeneration = 0
  private var stopping = false
  private let lock = ConditionLock()

  /// Where a child process writes its output: given a role ("vmm", "pager"), a descriptor the
  /// child's stdout and stderr go to (ownership passes to the launcher, which closes it once the
  /// child has it), or nil for files in the run directory.
  public typealias OutputFactory = @Sendable (_ role: String) -> FileDescriptor?

  /// Restores a child from `snapshot` into `runDirectory` (created; removed again on failure).
  ///
  /// `sharedPager` (experimental, benchmarks and tests of the daemon-wide pager mode): with a
  /// uffd or shmem backend, the child's VM connects to that already running shared pager instead
  /// of getting its own. The child then owns no pager: whoever owns the shared pager applies the
  /// policy for all of its children (`attachPager`).
  public static func restore(
    snapshot: String, runDirectory: String, backend: ChildBackend, timeoutMS: Int = 30_000,
    outputs: OutputFactory? = nil, sharedPager: PagerProcess? = nil
  ) throws(ControlError) -> Child {
    do {
      try FileSystem.makeDirectories(runDirectory)
    } catch {
      throw ControlError(.launch, "cannot create the run directory \(runDirectory)", cause: error)
    }
    var pager: PagerProcess? = nil
    var extra: [String] = []
    if let (policy, prefetch, record) = backend.pagerSettings {
      var shmemArguments: [String] = []
      if case .shmem = backend {
        do {
          shmemArguments = ["--shmem-image", try ShmemImage.ensure(for: snapshot)]
        } catch {
          FileSystem.removeTree(runDirectory)
          throw error
        }
      }
      let workingSet = snapshot + "/" + WorkingSet.fileName
      let socket = sharedPager?.socket ?? runDirectory + "/pager-0.sock"
      if sharedPager == nil {
        do {
          pager = try PagerProcess.launch(
            socket: socket, logPath: runDirectory + "/pager-0.log",
            recordWorkingSet: record && !FileSystem.exists(workingSet) ? workingSet : nil,
            prefetch: prefetch && FileSystem.exists(workingSet) ? workingSet : nil, output: outputs?("pager"))
        } catch {
          FileSystem.removeTree(runDirectory)
          throw error
        }
      }
      extra =
        [
          "--backend", shmemArguments.isEmpty ? "uffd" : "shmem", "--pager-sock", socket, "--pager-policy",
          policy.rawValue,
        ]
        + shmemArguments
    }
    let vmm: VMMProcess
    do {
      vmm = try VMMProcess.launch(
        .restore(snapshot: snapshot), runDirectory: runDirectory, extraArguments: extra, timeoutMS: timeoutMS,
        output: outputs?("vmm"), dependsOn: pager.map { ($0.pidFD, "forkd-pager (pid \($0.pid))") })
    } catch {
      var failure = error
      if let pager {
        // A pager killed by a signal is the cause: say so (the VM only saw its connection close,
        // or was stopped because its restore would have waited for a page forever). A pager that
        // exited by itself did so because its VM went away (status 0) or refused it (status 1,
        // which the VM reports itself).
        if case .signaled = pager.exited(withinMS: 200) {
          failure = ControlError(
            .launch,
            "forkd-pager (pid \(pager.pid)) \(pager.termination!) before forkd-vmm was ready: \(error.message)",
            cause: error.cause)
        }
        pager.signal(SIGKILL)
        pager.wait()
      }
      FileSystem.removeTree(runDirectory)
      throw failure
    }
    return Child(
      vmm: vmm, backend: backend, runDirectory: runDirectory, snapshot: snapshot, pager: pager, outputs: outputs)
  }

  private let outputs: OutputFactory?

  private init(
    vmm: VMMProcess, backend: ChildBackend, runDirectory: String, snapshot: String, pager: PagerProcess?,
    outputs: OutputFactory?
  ) {
    self.outputs = outputs
    self.vmm = vmm
    self.backend = backend
    self.runDirectory = runDirectory
    self.snapshot = snapshot
    published.withLock { $0.pager = pager }
  }

  public enum PagerEvent: Equatable, Sendable {
    /// A new pager took over the same uffd.
    case restarted(oldPID: pid_t, newPID: pid_t, termination: ChildProcess.Termination)
    /// The VM stopped (fail policy) and the child was cleaned up.
    case failed(termination: ChildProcess.Termination, vmm: ChildProcess.Termination?)
  }

  /// Applies the pager policy if the pager has died; nil while it runs (or with no pager).
  public func handlePagerExit() throws(ControlError) -> PagerEvent? {
    lock.lock()
    defer { lock.unlock() }
    guard !stopping, let current = pager, current.hasExited, let policy = backend.pagerSettings?.policy else {
      return nil
    }
    let termination = current.termination ?? .exited(-1)
    _ = try? FileSystem.unlink(current.socket)
    // Memory the pager cannot have (a lazy chunk that was not fetched): no restart helps.
    let unavailable = termination == .exited(PagerHandshake.memoryUnavailableStatus)
    switch unavailable ? .fail : policy {
    case .fail:
      // The VM sees its pager connection close and stops with exit status 5.
      let vmmEnd = vmm.wait(timeoutMS: 10_000)
      published.withLock { $0.pager = nil }
      FileSystem.removeTree(runDirectory)
      return .failed(termination: termination, vmm: vmmEnd)
    case .restart:
      pagerGeneration += 1
      let socket = runDirectory + "/pager-\(pagerGeneration).sock"
      let next = try PagerProcess.launch(
        socket: socket, logPath: runDirectory + "/pager-\(pagerGeneration).log", output: outputs?("pager"))
      try vmm.control().call(.attachPager(socket: socket))
      published.withLock {
        $0.pager = next
        $0.restarts += 1
      }
      return .restarted(oldPID: current.pid, newPID: next.pid, termination: termination)
    }
  }

  /// Hands the child's uffd to the pager listening on `socket` (a replacement shared pager); its
  /// stalled faults are raised again for that pager.
  public func attachPager(socket: String) throws(ControlError) {
    try vmm.control().call(.attachPager(socket: socket))
  }

  /// Blocks until the pager or the VM ends (or `timeoutMS`); returns true if the pager ended.
  public func waitForPagerExit(timeoutMS: Int32) -> Bool {
    guard let pager = lock.withLock({ pager }) else { return false }
    let ready = (try? Poll.wait([(pager.pidFD, .readable)], timeoutMS: timeoutMS)) ?? [[]]
    return !ready[0].isEmpty
  }

  /// Stops the VM, then the pager (it exits when the VM closes its connection), and removes the
  /// run directory.
  @discardableResult
  public func stop(timeoutMS: Int = 5000) -> ChildProcess.Termination? {
    lock.withLock { stopping = true }
    let end = vmm.stop(timeoutMS: timeoutMS)
    lock.withLock {
      if let pager {
        pager.wait(timeoutMS: timeoutMS)
        published.withLock { $0.pager = nil }
      }
    }
    FileSystem.removeTree(runDirectory)
    return end
  }

  /// PSS (KiB) of every process of this child, summed.
  public func proportionalSetSizeKiB() -> UInt64 {
    var pids = [vmm.pid]
    if let pager = lock.withLock({ pager }) { pids.append(pager.pid) }
    return pids.reduce(0) { $0 + (smapsRollupField($1, "Pss") ?? 0) }
  }
}

/// One field (KiB) of /proc/<pid>/smaps_rollup.
public func smapsRollupField(_ pid: pid_t, _ field: String) -> UInt64? {
  guard let bytes = try? FileSystem.readFile("/proc/\(pid)/smaps_rollup") else { return nil }
  for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") where line.hasPrefix(field + ":") {
    return line.split(separator: " ").dropFirst().first.flatMap { UInt64($0) }
  }
  return nil
}
