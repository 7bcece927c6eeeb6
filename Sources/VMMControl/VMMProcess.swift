import Jail
import Protocol
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// Finds the project's helper binaries: `$FORKD_BIN_DIR`, else next to the running executable.
public enum ForkdBinaries {
  public static func path(of name: String) throws(ControlError) -> String {
    var candidates: [String] = []
    if let dir = getenv("FORKD_BIN_DIR") { candidates.append(String(cString: dir) + "/" + name) }
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    if n > 0 {
      let exe = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
      if let slash = exe.lastIndex(of: "/") { candidates.append(String(exe[..<slash]) + "/" + name) }
    }
    for candidate in candidates where access(candidate, X_OK) == 0 { return candidate }
    throw ControlError(
      .binaryMissing,
      "\(name) not found (looked in \(candidates.joined(separator: ", "))); build it with `swift build` or set FORKD_BIN_DIR"
    )
  }
}

/// One running forkd-vmm process and its run directory (control socket, vsock socket, logs).
public final class VMMProcess: @unchecked Sendable {
  public enum Mode: Sendable {
    case boot(image: String, memoryMiB: UInt64, vcpus: UInt32)
    /// A Linux kernel with an optional initramfs, disk (read-only base) and command line.
    case bootLinux(
      kernel: String, initrd: String?, disk: String?, commandLine: String?, memoryMiB: UInt64, vcpus: UInt32)
    case restore(snapshot: String)
  }

  /// The timestamps forkd-vmm reports on its ready line (CLOCK_MONOTONIC ns and durations).
  public struct ReadyReport: Sendable {
    public var spawnedAt: UInt64
    public var mainEnteredAt: UInt64
    public var readFiles: UInt64
    public var kvmSetup: UInt64
    public var stateRestore: UInt64
    /// Entering the jail (0 when not jailed).
    public var jail: UInt64
    public var readyAt: UInt64
    public var observedAt: UInt64
  }

  public let pid: pid_t
  public let runDirectory: String
  public let controlSocket: String
  public let vsockSocket: String
  public let ready: ReadyReport
  /// Whether it runs in a jail: paths sent to it (attach_pager, snapshot directories) are then
  /// relative to its run directory, the cell's root.
  public let jailed: Bool
  /// Readable when the process exits (pidfd_open), for owners that watch many children.
  public private(set) var pidFD: FileDescriptor?
  private let reaper: Reaper
  private var ownsRunDirectory: Bool

  public var consoleLog: String { runDirectory + "/console.log" }
  public var vmmLog: String { runDirectory + "/vmm.log" }

  /// Starts forkd-vmm in `runDirectory` (created, and removed again if launching fails) and
  /// waits until it reports READY or fails.
  /// `dependsOn` (the pidfd of the child's pager, and its name): if that process ends before
  /// READY, forkd-vmm is killed at once instead of waiting out `timeoutMS` (a VM whose pager died
  /// mid-restore sleeps in a page fault nobody will serve).
  /// `inheritedFDs` are passed on as (child descriptor number, descriptor), e.g. a TAP for
  /// `--tap-fd` (numbers above 3; the caller keeps and closes its own copies).
  /// `jail` (its cell: `runDirectory`): forkd-vmm changes into the run directory and, once
  /// restored and before the guest runs, locks itself into it (docs/jail.md); every path it gets
  /// is then relative to the run directory, which the caller has handed to the jail's uid
  /// (`JailLease.prepareCell`).
  public static func launch(
    _ mode: Mode, runDirectory: String, binary: String? = nil, extraArguments: [String] = [], timeoutMS: Int = 30_000,
    output: FileDescriptor? = nil, dependsOn: (fd: FileDescriptor, name: String)? = nil,
    inheritedFDs: [(Int32, FileDescriptor)] = [], jail: JailSpec? = nil
  ) throws(ControlError) -> VMMProcess {
    let path: String
    if let binary { path = binary } else { path = try ForkdBinaries.path(of: "forkd-vmm") }
    do {
      try FileSystem.makeDirectories(runDirectory)
    } catch {
      throw ControlError(.launch, "cannot create the run directory \(runDirectory)", cause: error)
    }
    let control = runDirectory + "/api.sock"
    let vsock = runDirectory + "/vsock.sock"
    // Jailed, the process works in its run directory: paths in it are given relative to it, so
    // they name the same files before and after the cell's root moves there.
    let inside: (String) -> String = { jail == nil ? runDirectory + "/" + $0 : $0 }
    var arguments = [path]
    switch mode {
    case .boot(let image, let memoryMiB, let vcpus):
      arguments += ["boot", "--image", image, "--memory-mib", "\(memoryMiB)", "--vcpus", "\(vcpus)"]
    case .bootLinux(let kernel, let initrd, let disk, let commandLine, let memoryMiB, let vcpus):
      arguments += ["boot", "--kernel", kernel, "--memory-mib", "\(memoryMiB)", "--vcpus", "\(vcpus)"]
      if let initrd { arguments += ["--initrd", initrd] }
      if let disk { arguments += ["--disk", disk] }
      if let commandLine { arguments += ["--cmdline", commandLine] }
    case .restore(let snapshot):
      arguments += ["restore", "--snapshot", snapshot]
    }
    // With an output descriptor (the owner forwards it, e.g. to the journal) the guest console
    // goes there too, each line prefixed "[guest] "; otherwise to console.log.
    arguments += [
      "--api-sock", inside("api.sock"), "--vsock-sock", inside("vsock.sock"),
      "--console", output == nil ? inside("console.log") : "-", "--ready-fd", "3",
    ]
    arguments += extraArguments
    if var jail {
      jail.cell = runDirectory
      arguments += jail.arguments
    }

    let pipe: (read: FileDescriptor, write: FileDescriptor)
    let log: FileDescriptor
    do {
      pipe = try FileDescriptor.pipe()
      log = try output ?? FileDescriptor.open(runDirectory + "/vmm.log", [.writeOnly, .create, .truncate], mode: 0o600)
    } catch {
      FileSystem.removeTree(runDirectory)
      throw ControlError(.launch, "cannot prepare the launch of \(path)", cause: error)
    }
    let spawnedAt = Clock.monotonicNanoseconds()
    let pid: pid_t
    do {
      pid = try ChildProcess.spawn(
        path: path, arguments: arguments, inheritedFDs: [(3, pipe.write)] + inheritedFDs, stdoutFD: log,
        stderrFD: log)
    } catch {
      pipe.read.close()
      pipe.write.close()
      log.close()
      FileSystem.removeTree(runDirectory)
      throw ControlError(.launch, "cannot start \(path)", cause: error)
    }
    pipe.write.close()
    log.close()
    defer { pipe.read.close() }

    var line: [UInt8] = []
    do throws(ControlError) {
      try readUntil(
        pipe.read, deadline: spawnedAt + UInt64(timeoutMS) * 1_000_000, what: "forkd-vmm to become ready",
        { $0.contains(UInt8(ascii: "\n")) }, buffer: &line, abortWhenReadable: dependsOn)
    } catch {
      // Timed out, or what it depends on is gone: it will not get ready, end it now. A VM that
      // dies takes its pager with it, and the pager may end before the VM's pipe reads EOF (its
      // uffd closes with the VM's memory, before the VM's descriptors): if the VM ended too, by
      // itself, that is its own end, not the pager's.
      let reaper = Reaper(pid: pid)
      let ownEnd = dependsOn != nil && error.code == .connection ? reaper.exited(withinMS: 100) : nil
      let dependencyEnded = dependsOn.map { (try? Poll.wait([($0.fd, .readable)], timeoutMS: 0))?[0].isEmpty == false }
      let termination =
        ownEnd ?? reaper.waitOrKill(timeoutMS: error.code == .timeout || dependencyEnded == true ? 0 : 2000)
      let detail = lastLines(of: runDirectory + "/vmm.log")
      FileSystem.removeTree(runDirectory)
      throw ControlError(
        .notReady, "forkd-vmm did not become ready (\(termination.map { "\($0)" } ?? "killed")): \(detail)",
        cause: ownEnd == nil ? error : nil)
    }
    let observedAt = Clock.monotonicNanoseconds()
    let text = String(decoding: line.prefix(while: { $0 != UInt8(ascii: "\n") }), as: UTF8.self)
    guard text.hasPrefix("READY ") else {
      let termination = ChildProcess.waitOrKill(pid, timeoutMS: 5000)
      FileSystem.removeTree(runDirectory)
      let message = text.hasPrefix("ERROR ") ? String(text.dropFirst(6)) : text
      throw ControlError(.launch, "forkd-vmm failed (\(termination.map { "\($0)" } ?? "killed")): \(message)")
    }
    var fields: [String: UInt64] = [:]
    for pair in text.dropFirst(6).split(separator: " ") {
      let parts = pair.split(separator: "=", maxSplits: 1)
      if parts.count == 2, let value = UInt64(parts[1]) { fields[String(parts[0])] = value }
    }
    let report = ReadyReport(
      spawnedAt: spawnedAt, mainEnteredAt: fields["main_ns"] ?? 0, readFiles: fields["files_ns"] ?? 0,
      kvmSetup: fields["kvm_ns"] ?? 0, stateRestore: fields["state_ns"] ?? 0, jail: fields["jail_ns"] ?? 0,
      readyAt: fields["ready_ns"] ?? 0,
      observedAt: observedAt)
    return VMMProcess(
      pid: pid, runDirectory: runDirectory, controlSocket: control, vsockSocket: vsock, ready: report,
      pidFD: try? ChildProcess.pidFD(pid), jailed: jail != nil)
  }

  private init(
    pid: pid_t, runDirectory: String, controlSocket: String, vsockSocket: String, ready: ReadyReport,
    pidFD: FileDescriptor?, jailed: Bool
  ) {
    self.pid = pid
    self.jailed = jailed
    reaper = Reaper(pid: pid)
    self.runDirectory = runDirectory
    self.controlSocket = controlSocket
    self.vsockSocket = vsockSocket
    self.ready = ready
    self.pidFD = pidFD
    ownsRunDirectory = true
  }

  deinit {
    pidFD?.close()
    reaper.killIfRunning()
    if ownsRunDirectory { FileSystem.removeTree(runDirectory) }
  }

  public func control() throws(ControlError) -> ControlClient { try ControlClient(path: controlSocket) }

  public func agent(timeoutMS: Int = 10_000) throws(ControlError) -> AgentClient {
    try AgentClient(vsockPath: vsockSocket, timeoutMS: timeoutMS)
  }

  /// Asks the VM to stop, waits, and SIGKILLs it if it does not end in time.
  @discardableResult
  public func stop(timeoutMS: Int = 5000) -> ChildProcess.Termination? {
    if reaper.termination == nil {
      _ = try? control().stop(timeoutMS: timeoutMS)
      reaper.waitOrKill(timeoutMS: timeoutMS)
    }
    releasePidFD()
    return reaper.termination
  }

  /// Waits for the process to end by itself (e.g. after the guest powered off).
  public func wait(timeoutMS: Int = 10_000) -> ChildProcess.Termination? {
    reaper.waitOrKill(timeoutMS: timeoutMS)
    releasePidFD()
    return reaper.termination
  }

  /// Waits up to `timeoutMS` for the process to end by itself, without killing it; nil if it runs on.
  public func exited(withinMS timeoutMS: Int) -> ChildProcess.Termination? {
    reaper.exited(withinMS: timeoutMS)
  }

  /// After a failed control call: how forkd-vmm ended, if it died (reaped within `graceMS`); nil if
  /// it refused the request itself (a remote error) or still runs.
  public func ended(after error: any Error, graceMS: Int = 2000) -> ChildProcess.Termination? {
    if (error as? ControlError)?.code == .remote { return nil }
    return exited(withinMS: graceMS)
  }

  /// A reaped process needs no pidfd: close it now rather than when the object goes away.
  private func releasePidFD() {
    pidFD?.close()
    pidFD = nil
  }

  public func signal(_ signal: Int32) { _ = kill(pid, signal) }

  /// Whether the process has ended (reaps it if so).
  public var hasExited: Bool { reaper.hasExited }

  public var termination: ChildProcess.Termination? {
    _ = reaper.hasExited
    return reaper.termination
  }

  /// Keeps the run directory after this object goes away (for debugging).
  public func keepRunDirectory() { ownsRunDirectory = false }
}

/// The last lines of a log file, for error messages.
/// Processes whose command line mentions `path` (every forkd-vmm and forkd-pager names its run
/// directory): how demos and tests check that nothing was left running.
public func processes(mentioning path: String) -> [pid_t] {
  var found: [pid_t] = []
  for name in (try? FileSystem.listDirectory("/proc")) ?? [] {
    guard let pid = pid_t(name), pid != getpid() else { continue }
    guard let bytes = try? FileSystem.readFile("/proc/\(name)/cmdline"), !bytes.isEmpty else { continue }
    if String(decoding: bytes.map { $0 == 0 ? 32 : $0 }, as: UTF8.self).contains(path) { found.append(pid) }
  }
  return found
}

public func lastLines(of path: String, count: Int = 5) -> String {
  guard let bytes = try? FileSystem.readFile(path, limit: 1 << 20) else { return "(no log)" }
  let lines = String(decoding: bytes, as: UTF8.self).split(separator: "\n")
  return lines.suffix(count).joined(separator: " | ")
}
