import Jail
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
  /// The child's jail uid (its forkd-vmm and pagers run as it), nil when not jailed.
  public let jailUID: UInt32?
  /// Where a jailed child writes branches: a host directory bind-mounted onto `branches` in its
  /// cell (a snapshot op then names `branches/<tag>`), nil when not jailed or not asked for.
  public let branchDirectory: String?
  /// How the child's pagers are jailed (uid and gid, no bind), nil when not jailed.
  private let pagerJail: JailSpec?
  /// The uid stays leased until the child's processes are reaped (stop, or a failed pager).
  private let lease: Mutex<JailLease?>
  /// The working-set record the pager writes (a jailed pager cannot rename it into place: the
  /// owner does once the pager has ended).
  private let recordPath: String?
  /// The current pager and how often it was replaced: read by API requests on other threads while
  /// the monitor replaces the pager, so they have their own leaf lock (never held across calls).
  private let published = Mutex<(pager: PagerProcess?, restarts: Int)>((nil, 0))
  /// Branches being written into `branchDirectory`: when the child stops, the directory is left to
  /// the last of them, which may still adopt what a writer renamed into place before it died.
  private let branchWriters = Mutex<(inFlight: Int, stopped: Bool)>((0, false))
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
  /// policy for all of its children (`attachPager`). `vmmArguments` go to forkd-vmm as they are
  /// (e.g. the NIC's `--netns PATH --tap NAME`).
  ///
  /// `jail` (docs/jail.md): the child's processes run as a uid leased from the pool, each locked
  /// into the run directory once set up. `branchDirectory` (a host directory, created for the
  /// child and removed with it; on the same filesystem as the snapshot store) is where a jailed
  /// child's branches are written. A child of a shared pager is not jailed (its pager's socket
  /// lies outside the run directory).
  public static func restore(
    snapshot: String, runDirectory: String, backend: ChildBackend, timeoutMS: Int = 30_000,
    outputs: OutputFactory? = nil, sharedPager: PagerProcess? = nil, vmmArguments: [String] = [],
    jail pool: JailPool? = nil, branchDirectory: String? = nil
  ) throws(ControlError) -> Child {
    do {
      try FileSystem.makeDirectories(runDirectory)
    } catch {
      throw ControlError(.launch, "cannot create the run directory \(runDirectory)", cause: error)
    }
    var jail: (lease: JailLease, branchDirectory: String?)? = nil
    var vmmJail: JailSpec? = nil
    if let pool, sharedPager == nil {
      do throws(ControlError) {
        let lease = try pool.lease()
        try lease.prepareCell(runDirectory)
        var bind: (source: String, target: String)? = nil
        if let branchDirectory {
          do {
            try FileSystem.makeDirectories(branchDirectory)
            try FileSystem.makeDirectory(runDirectory + "/branches", mode: 0o700)
          } catch {
            throw ControlError(.launch, "cannot create the branch directory \(branchDirectory)", cause: error)
          }
          try lease.prepareCell(branchDirectory)
          bind = (branchDirectory, "branches")
        }
        jail = (lease, branchDirectory)
        vmmJail = lease.spec(cell: runDirectory, bind: bind)
      } catch {
        if let branchDirectory { FileSystem.removeTree(branchDirectory) }
        FileSystem.removeTree(runDirectory)
        throw error
      }
    }
    func removeDirectories() {
      FileSystem.removeTree(runDirectory)
      if let directory = jail?.branchDirectory { FileSystem.removeTree(directory) }
    }
    let pagerJail = jail.map { (spec: $0.lease.spec(cell: runDirectory), cell: runDirectory) }
    var pager: PagerProcess? = nil
    var recordPath: String? = nil
    var extra: [String] = []
    if let (policy, prefetch, record) = backend.pagerSettings {
      var shmemArguments: [String] = []
      if case .shmem = backend {
        do {
          shmemArguments = ["--shmem-image", try ShmemImage.ensure(for: snapshot)]
        } catch {
          removeDirectories()
          throw error
        }
      }
      let workingSet = snapshot + "/" + WorkingSet.fileName
      let socket = sharedPager?.socket ?? runDirectory + "/pager-0.sock"
      if sharedPager == nil {
        recordPath = record && !FileSystem.exists(workingSet) ? workingSet : nil
        do {
          pager = try PagerProcess.launch(
            socket: socket, logPath: runDirectory + "/pager-0.log", recordWorkingSet: recordPath,
            prefetch: prefetch && FileSystem.exists(workingSet) ? workingSet : nil, output: outputs?("pager"),
            jail: pagerJail)
        } catch {
          removeDirectories()
          throw error
        }
      }
      extra =
        [
          "--backend", shmemArguments.isEmpty ? "uffd" : "shmem", "--pager-sock", jail == nil ? socket : "pager-0.sock",
          "--pager-policy", policy.rawValue,
        ]
        + shmemArguments
    }
    let vmm: VMMProcess
    do {
      vmm = try VMMProcess.launch(
        .restore(snapshot: snapshot), runDirectory: runDirectory, extraArguments: extra + vmmArguments,
        timeoutMS: timeoutMS,
        output: outputs?("vmm"), dependsOn: pager.map { ($0.pidFD, "forkd-pager (pid \($0.pid))") }, jail: vmmJail)
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
        if let recordPath { _ = try? FileSystem.unlink(recordPath + ".tmp-\(pager.pid)") }
      }
      removeDirectories()
      throw failure
    }
    return Child(
      vmm: vmm, backend: backend, runDirectory: runDirectory, snapshot: snapshot, pager: pager, outputs: outputs,
      jail: jail, recordPath: recordPath)
  }

  private let outputs: OutputFactory?

  private init(
    vmm: VMMProcess, backend: ChildBackend, runDirectory: String, snapshot: String, pager: PagerProcess?,
    outputs: OutputFactory?, jail: (lease: JailLease, branchDirectory: String?)?, recordPath: String?
  ) {
    self.outputs = outputs
    jailUID = jail?.lease.uid
    pagerJail = jail?.lease.spec(cell: runDirectory)
    branchDirectory = jail?.branchDirectory
    lease = Mutex(jail?.lease)
    self.recordPath = recordPath
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
  /// `adopt` runs with a restarted pager's pid before it is published (e.g. to put it in the
  /// child's cgroup first: whoever sees the new pager sees it in place).
  public func handlePagerExit(adopt: (pid_t) -> Void = { _ in }) throws(ControlError) -> PagerEvent? {
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
      publishWorkingSet(recordedBy: current.pid)
      FileSystem.removeTree(runDirectory)
      removeBranchDirectoryUnlessWriting()
      releaseJail()
      return .failed(termination: termination, vmm: vmmEnd)
    case .restart:
      pagerGeneration += 1
      let name = "pager-\(pagerGeneration).sock"
      let socket = runDirectory + "/" + name
      let next = try PagerProcess.launch(
        socket: socket, logPath: runDirectory + "/pager-\(pagerGeneration).log", output: outputs?("pager"),
        jail: pagerJail.map { (spec: $0, cell: runDirectory) })
      try vmm.control().attachPager(socket: vmm.jailed ? name : socket)
      adopt(next.pid)
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
    try vmm.control().attachPager(socket: socket)
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
        publishWorkingSet(recordedBy: pager.pid)
      }
    }
    FileSystem.removeTree(runDirectory)
    removeBranchDirectoryUnlessWriting()
    if vmm.termination != nil && pager?.hasExited != false { releaseJail() }
    return end
  }

  /// A branch of this child starts writing into `branchDirectory`; pair with `endBranch`.
  public func beginBranch() { branchWriters.withLock { $0.inFlight += 1 } }

  /// The branch is adopted or discarded; a child stopped meanwhile loses its branch directory now.
  public func endBranch() {
    let remove = branchWriters.withLock { state -> Bool in
      state.inFlight -= 1
      return state.inFlight == 0 && state.stopped
    }
    if remove, let branchDirectory { FileSystem.removeTree(branchDirectory) }
  }

  private func removeBranchDirectoryUnlessWriting() {
    let remove = branchWriters.withLock { state -> Bool in
      state.stopped = true
      return state.inFlight == 0
    }
    if remove, let branchDirectory { FileSystem.removeTree(branchDirectory) }
  }

  /// Gives the uid back to the pool once no process of this child runs as it.
  private func releaseJail() { lease.withLock { $0 = nil } }

  /// A jailed pager leaves its working-set record in `<record>.tmp-<pid>` (it cannot rename in
  /// the snapshot directory): renamed into place once the pager has ended, unless a record
  /// exists already. An unjailed pager renamed it itself; nothing is left then.
  private func publishWorkingSet(recordedBy pid: pid_t) {
    guard let recordPath else { return }
    let staging = recordPath + ".tmp-\(pid)"
    guard FileSystem.exists(staging) else { return }
    let complete = (try? FileSystem.readFile(staging, limit: 256 << 20)).map {
      (try? WorkingSet.parse($0, source: staging)) != nil
    }
    if complete == true && !FileSystem.exists(recordPath) {
      if (try? FileSystem.rename(staging, to: recordPath)) != nil { return }
    }
    _ = try? FileSystem.unlink(staging)
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
