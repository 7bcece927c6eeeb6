import Jail
import Logging
import Protocol
import SeccompFilters
import SnapshotStorage
import Syscalls
import TestGuestImage
import VMMCore

#if canImport(Glibc)
  import Glibc
#endif

// forkd-vmm: one microVM per process. Exit status: 0 when the guest powered off cleanly or was
// stopped, the guest's exit code when it powered off with one, 1 when boot/restore failed,
// 2 on a usage error, 3 when the guest crashed (a Linux kernel panic included), 4 when a Linux
// guest rebooted, 5 when its memory pager died under the fail policy.

let mainEnteredAt = Clock.monotonicNanoseconds()

func fail(_ status: Int32, _ message: String, readyFD: Int32?) -> Never {
  writeStderr("forkd-vmm: error: \(message)\n")
  if let readyFD {
    let line = "ERROR " + message.replacingAll("\n", with: " ") + "\n"
    try? FileDescriptor(rawValue: readyFD).writeAll(Array(line.utf8))
  }
  exit(status)
}

func writeStderr(_ text: String) {
  try? FileDescriptor(rawValue: 2).writeAll(Array(text.utf8))
}

extension String {
  func replacingAll(_ target: Character, with replacement: String) -> String {
    split(separator: target, omittingEmptySubsequences: false).joined(separator: replacement)
  }
}

let options: Options
do {
  options = try Options(Array(CommandLine.arguments.dropFirst()))
} catch {
  writeStderr("forkd-vmm: \(error)\n\(Options.usage)\n")
  exit(2)
}
do {
  try options.jail?.enterCellDirectory()
} catch {
  fail(1, error.description, readyFD: options.readyFD)
}
do {
  try KillPoint.arm(role: .vmm)
} catch {
  writeStderr("forkd-vmm: \(error)\n")
  exit(2)
}
KillPoint.reached("started")

LoggingSystem.bootstrap { label in
  var handler = StreamLogHandler.standardError(label: label)
  handler.logLevel = Logger.Level(rawValue: options.logLevel) ?? .info
  return handler
}
let logger = Logger(label: "forkd-vmm")

// The console sink: guest lines to stderr (prefixed), to a file, or nowhere.
let baseConsoleSink: @Sendable (String) -> Void
switch options.console {
case "none":
  baseConsoleSink = { _ in }
case "-":
  baseConsoleSink = { line in writeStderr("[guest] \(line)\n") }
default:
  do {
    let fd = try FileDescriptor.open(options.console, [.writeOnly, .create, .truncate], mode: 0o600)
    baseConsoleSink = { line in try? fd.writeAll(Array((line + "\n").utf8)) }
  } catch {
    fail(1, "cannot open the console file: \(error)", readyFD: options.readyFD)
  }
}

// A Linux guest that panics with panic=-1 reboots at once: remember the panic line so the exit
// says why instead of "guest reset".
let panicWatch = PanicWatch()
let consoleSink: @Sendable (String) -> Void = { line in
  panicWatch.observe(line)
  baseConsoleSink(line)
}

// A peer that went away (a control client, a dead pager told to resume) must be a failed write
// (EPIPE), not the end of the VM.
signal(SIGPIPE, SIG_IGN)

// SIGTERM/SIGINT stop the VM cleanly: they are blocked in every thread and taken by sigwait.
var stopSignals = sigset_t()
sigemptyset(&stopSignals)
sigaddset(&stopSignals, SIGTERM)
sigaddset(&stopSignals, SIGINT)
pthread_sigmask(SIG_BLOCK, &stopSignals, nil)

var timings = RestoreTimings()

// The NIC's backend, opened before anything else runs: entering the child's network namespace
// (if asked) happens while this is the process's only thread of ours.
var tapBackend: FileDescriptor? = nil
do throws(SyscallError) {
  if let path = options.netns { try NetworkNamespace.enter(path: path) }
  if let name = options.tapName {
    tapBackend = try TapDevice.open(name: name).fd
  } else if let raw = options.tapFD {
    let fd = FileDescriptor(rawValue: raw)
    try TapDevice.adopt(fd)
    try fd.setCloseOnExec(true)
    tapBackend = fd
  }
} catch {
  fail(1, "cannot attach the NIC's TAP: \(error)", readyFD: options.readyFD)
}
let network: NetworkConfig? = tapBackend != nil || options.nic ? NetworkConfig(backend: tapBackend) : nil

// The pager: the VM keeps the uffd; the pager gets a copy over its socket. It is attached as
// soon as guest memory exists, before restoring state touches any page (VirtualMachine.restore).
var pager: PagerLink? = nil
var pagerNanoseconds: UInt64 = 0
var sandboxNanoseconds: UInt64 = 0
/// The VM, for the pager's lost-connection handler (the pager is attached before the VM exists),
/// and the link made while restoring.
final class PagerSlot: @unchecked Sendable {
  weak var machine: VirtualMachine?
  var link: PagerLink?
  var attachNanoseconds: UInt64 = 0
}
let pagerOwner = PagerSlot()

func attachPager(_ memory: GuestMemory) throws(VMMError) {
  let source: PagerMemorySource
  switch memory.backend {
  case .userfault:
    // A diff snapshot's pager serves its whole chain, each page from the topmost layer holding it.
    let chain: SnapshotChain
    do {
      chain = try SnapshotChain.load(top: options.snapshot!)
    } catch {
      throw VMMError(.invalidSnapshot, error.message, cause: error.cause)
    }
    source = PagerMemorySource(
      mode: .copy, chain: chain.layers.map { PagerLayer(memory: $0.memoryPath, pageIndex: $0.pageIndexPath) })
  case .shmemMinor(let path): source = PagerMemorySource(mode: .minor, layers: [path])
  default: return
  }
  let policy = options.pagerPolicy
  let link = try PagerLink(memory: memory, source: source, policy: policy) { reason in
    guard let machine = pagerOwner.machine else { return }
    if policy == .fail {
      machine.terminate(.pagerLost(reason))
    } else {
      logger.warning("\(reason); waiting for attach_pager (faulting vCPUs stall until then)")
    }
  }
  let t0 = Clock.monotonicNanoseconds()
  try link.attach(socketPath: options.pagerSocket!)
  pagerOwner.attachNanoseconds = Clock.monotonicNanoseconds() - t0
  pagerOwner.link = link
  KillPoint.reached("acked")
}
let machine: VirtualMachine
do {
  switch options.mode {
  case .boot where options.kernel != nil:
    let kernelPath = options.kernel!
    let kernel: [UInt8]
    do {
      kernel = try FileSystem.readFile(kernelPath, limit: 512 << 20)
    } catch {
      throw VMMError(.invalidImage, "\(kernelPath): cannot read the kernel", cause: error)
    }
    var initrd: [UInt8]? = nil
    if let initrdPath = options.initrd {
      do {
        initrd = try FileSystem.readFile(initrdPath, limit: 2 << 30)
      } catch {
        throw VMMError(.invalidImage, "\(initrdPath): cannot read the initrd", cause: error)
      }
    }
    let source = LinuxBootSource(
      kernel: kernel, kernelSource: kernelPath, initrd: initrd, initrdSource: options.initrd ?? "",
      commandLine: options.commandLine ?? LinuxBootSource.defaultCommandLine,
      commandLineDevices: options.commandLineDevices)
    let config = MachineConfig(
      memorySize: options.memoryMiB << 20, vcpuCount: options.vcpus, guestCID: options.guestCID,
      vsockSocketPath: options.vsockSocket!, disk: options.disk.map { BlockDeviceConfig(basePath: $0) },
      network: network, consoleSink: consoleSink)
    machine = try VirtualMachine.bootLinux(config: config, source: source, logger: logger)
  case .boot:
    let imagePath = options.image!
    let image: [UInt8]
    if imagePath == "builtin:test-guest" {
      image = TestGuestImage.elf
    } else {
      do {
        image = try FileSystem.readFile(imagePath, limit: 256 << 20)
      } catch {
        throw VMMError(.invalidImage, "\(imagePath): cannot read the guest image", cause: error)
      }
    }
    let config = MachineConfig(
      memorySize: options.memoryMiB << 20, vcpuCount: options.vcpus, guestCID: options.guestCID,
      vsockSocketPath: options.vsockSocket!, network: network, consoleSink: consoleSink)
    machine = try VirtualMachine.boot(config: config, image: image, imageSource: imagePath, logger: logger)
  case .restore:
    // The pager owns guest memory before any state is restored (see VirtualMachine.restore).
    machine = try VirtualMachine.restore(
      from: options.snapshot!, backend: options.backend, shmemImage: options.shmemImage,
      vsockSocketPath: options.vsockSocket!, diskBasePath: options.disk, tap: tapBackend,
      consoleSink: consoleSink, logger: logger, timings: &timings,
      memoryReady: { memory throws(VMMError) in try attachPager(memory) })
  }
} catch let error as VMMError {
  fail(1, error.description, readyFD: options.readyFD)
} catch {
  fail(1, "\(error)", readyFD: options.readyFD)
}
pagerOwner.machine = machine
pager = pagerOwner.link
pagerNanoseconds = pagerOwner.attachNanoseconds

// The jail: everything from outside the run directory is open now (snapshot files, /dev/kvm, the
// uffd, the pager link, the vsock listener); snapshots later read the restored-from chain and
// pagemap through descriptors opened here. Entered while this process is still single-threaded
// (a mount namespace and root apply to the calling thread only) and before any guest instruction.
var jailNanoseconds: UInt64 = 0
if let spec = options.jail {
  let t0 = Clock.monotonicNanoseconds()
  do {
    try SnapshotSources.prepare(restoredFrom: options.snapshot!, userfault: options.backend == .uffd)
    try Jail.enter(spec, relaxed: CompiledFilter.sanitizerBuild)
  } catch let error as VMMError {
    machine.close()
    fail(1, "cannot prepare the jail: \(error)", readyFD: options.readyFD)
  } catch {
    machine.close()
    fail(1, "\(error)", readyFD: options.readyFD)
  }
  jailNanoseconds = Clock.monotonicNanoseconds() - t0
  #if DEBUG
    JailProbes.run()
  #endif
}

// Control plane on its own thread: it must answer (e.g. attach_pager) even while the data plane
// is stalled on a page fault that only a new pager can resolve.
let controlLoop: EventLoop
let server: ControlServer
do throws(VMMError) {
  controlLoop = try EventLoop()
  // Live snapshots copy on a thread of their own, which must exist before the seccomp filter.
  var liveCopyWorker: Worker?
  if pager != nil {
    do {
      liveCopyWorker = try Worker(name: "live-copy")
    } catch {
      throw VMMError(.io, "cannot start the live-copy thread", cause: error)
    }
  }
  server = try ControlServer(
    path: options.controlSocket!, machine: machine, pager: pager,
    restoredFrom: options.mode == .restore ? options.snapshot : nil, worker: liveCopyWorker)
} catch {
  machine.close()
  fail(1, error.description, readyFD: options.readyFD)
}
controlLoop.add(server)
if let pager { controlLoop.add(pager) }
let loop = machine.eventLoop
machine.onExit { _ in
  loop.wake()
  controlLoop.wake()
}

// Joined before the server is closed: the control thread may still be answering (the stop
// request itself) when the VM ends, and closing its sockets under it crashed the process.
var controlThread: OSThread?
do {
  controlThread = try OSThread.start(name: "control") {
    controlLoop.run(timeoutMS: 1000) { machine.exit != nil }
    if case .pagerLost(let reason) = machine.exit {
      // vCPUs and the data plane may be stalled in faults no pager will ever serve: do not wait
      // for them (or take their locks). Remove the sockets and end the process here.
      _ = try? FileSystem.unlink(options.controlSocket!)
      _ = try? FileSystem.unlink(options.vsockSocket!)
      writeStderr("forkd-vmm: error: memory pager lost (policy fail): \(reason)\n")
      exit(5)
    }
  }
  _ = try OSThread.start(name: "signals") {
    var set = sigset_t()
    sigemptyset(&set)
    sigaddset(&set, SIGTERM)
    sigaddset(&set, SIGINT)
    var received: Int32 = 0
    sigwait(&set, &received)
    machine.stop()
  }
  try machine.start()
  // Every thread exists now; from here the process only runs what the vmm role allows (TSYNC
  // puts the vCPU, control and signal threads under the same filter).
  let sandboxStart = Clock.monotonicNanoseconds()
  defer { sandboxNanoseconds = Clock.monotonicNanoseconds() - sandboxStart }
  do {
    try CompiledFilter.forRole(.vmm).install()
  } catch {
    machine.stop()
    throw error
  }
} catch {
  server.close()
  machine.close()
  fail(1, "\(error)", readyFD: options.readyFD)
}

KillPoint.reached("restored")
if let readyFD = options.readyFD {
  let readyAt = Clock.monotonicNanoseconds()
  let line =
    "READY pid=\(getpid()) main_ns=\(mainEnteredAt) files_ns=\(timings.readFilesNanoseconds) kvm_ns=\(timings.kvmSetupNanoseconds) state_ns=\(timings.stateRestoreNanoseconds) pager_ns=\(pagerNanoseconds) sandbox_ns=\(sandboxNanoseconds) jail_ns=\(jailNanoseconds) ready_ns=\(readyAt)\n"
  let fd = FileDescriptor(rawValue: readyFD)
  try? fd.writeAll(Array(line.utf8))
  fd.close()
}

loop.run(timeoutMS: 1000) { machine.exit != nil }
machine.join()
controlThread?.join()
server.close()
machine.close()
let ending = machine.exit ?? .stopped
switch ending {
case .poweredOff(let code):
  logger.info("\(ending)")
  exit(Int32(code))
case .reset where machine.isLinux:
  if let panic = panicWatch.line {
    writeStderr("forkd-vmm: error: guest crashed: kernel panic (the guest rebooted): \(panic)\n")
    exit(3)
  }
  writeStderr("forkd-vmm: guest rebooted: the VM ends (a Linux guest reboots on reboot(2) or on panic=-1)\n")
  exit(4)
case .stopped, .reset:
  logger.info("\(ending)")
  exit(0)
case .crashed(let reason):
  writeStderr("forkd-vmm: error: guest crashed: \(reason)\n")
  exit(3)
case .pagerLost(let reason):
  writeStderr("forkd-vmm: error: memory pager lost (policy fail): \(reason)\n")
  exit(5)
}

/// Remembers the first "Kernel panic" console line of a Linux guest.
final class PanicWatch: @unchecked Sendable {
  private let lock = ConditionLock()
  private var panicLine: String?

  func observe(_ line: String) {
    guard line.contains("Kernel panic") else { return }
    lock.withLock { if panicLine == nil { panicLine = line } }
  }

  var line: String? { lock.withLock { panicLine } }
}
