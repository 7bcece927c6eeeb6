import Jail
import Protocol
import SeccompFilters
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

// forkd-pager: serves one child's guest memory through the userfaultfd its VM hands over.
// Exit status: 0 when the VM went away (normal end), 1 when the handshake failed, 2 on a usage
// error. Stats are printed as one JSON line on stderr at exit.

let options: Options
do {
  options = try Options(Array(CommandLine.arguments.dropFirst()))
} catch {
  writeLog("forkd-pager: \(error)\n\(Options.usage)")
  exit(2)
}
do {
  try options.jail?.enterCellDirectory()
} catch {
  writeLog("forkd-pager: \(error)")
  exit(1)
}
do {
  try KillPoint.arm(role: .pager)
} catch {
  writeLog("forkd-pager: \(error)")
  exit(2)
}
KillPoint.reached("started")

func fail(_ message: String) -> Never {
  writeLog("forkd-pager: error: \(message)")
  if let fd = options.readyFD { try? FileDescriptor(rawValue: fd).writeAll(Array("ERROR \(message)\n".utf8)) }
  exit(1)
}

signal(SIGPIPE, SIG_IGN)

let listener: FileDescriptor
do {
  listener = try UnixSocket.listen(path: options.socket)
  try listener.setNonBlocking()
  // A jailed VM (re)connects as the jail's uid: the socket is its, inside its cell.
  if let jail = options.jail { try FileSystem.changeOwner(options.socket, uid: jail.uid, gid: jail.gid) }
} catch {
  fail("cannot listen on \(options.socket): \(error)")
}
if let fd = options.readyFD {
  let ready = FileDescriptor(rawValue: fd)
  try? ready.writeAll(Array("READY pid=\(getpid())\n".utf8))
  ready.close()
}

var prefetchPages: [UInt64] = []
if let path = options.prefetchPath {
  do {
    prefetchPages = try WorkingSet.parse(try FileSystem.readFile(path, limit: 256 << 20), source: path).pages
  } catch {
    // A missing or bad record only costs speed: serve on demand.
    writeLog("forkd-pager: no prefetch: \(error)")
  }
}
var recorder: WorkingSetRecorder? = nil
if let path = options.recordPath {
  do { recorder = try WorkingSetRecorder(path: path, renames: options.jail == nil) } catch {
    writeLog("forkd-pager: not recording: \(error)")
  }
}

// The seccomp allow-list goes on right after the (first) handshake is validated, before the ack
// and before any guest-driven fault is served.
nonisolated(unsafe) var sandboxed = false
/// How long entering the jail took (stats `jail_ns`), 0 when not jailed.
nonisolated(unsafe) var jailNanoseconds: UInt64 = 0
func lockDown() throws(PagerError) {
  if let jail = options.jail {
    let t0 = Clock.monotonicNanoseconds()
    do {
      try Jail.enter(jail, relaxed: CompiledFilter.sanitizerBuild)
    } catch {
      throw PagerError(code: "sandbox", message: error.description)
    }
    jailNanoseconds = Clock.monotonicNanoseconds() - t0
  }
  do {
    try CompiledFilter.forRole(options.jail == nil ? .pager : .pagerJailed).install()
    sandboxed = true
  } catch {
    throw PagerError(code: "sandbox", message: "cannot install the seccomp filter: \(error)")
  }
}

let session: Session
if options.shared {
  // A shared pager waits for its first VM as long as it takes; a refused VM does not end it
  // unless the refusal came after the filter (later VMs are validated under it).
  var first: Session? = nil
  while first == nil {
    do {
      first = try Handshake.accept(on: listener, timeoutMS: options.handshakeTimeoutMS, lockDown: lockDown)
    } catch {
      if error.code != "timeout" { writeLog("forkd-pager: refused a VM: \(error)") }
      if sandboxed { fail("the first VM's handshake failed after the filter: \(error)") }
    }
  }
  session = first!
} else {
  do {
    session = try Handshake.accept(on: listener, timeoutMS: options.handshakeTimeoutMS, lockDown: lockDown)
  } catch {
    // Under the filter (the handshake failed after it, e.g. the VM died before the ack) unlink is
    // not allowed: the owner removes the run directory with the socket.
    if !sandboxed { _ = try? FileSystem.unlink(options.socket) }
    fail(error.description)
  }
}

let first = PagerSession(session: session, recorder: recorder, prefetch: prefetchPages)
let server = PageServer(
  first: first, listener: listener,
  shared: options.shared
    ? PageServer.Shared(
      handshakeTimeoutMS: options.handshakeTimeoutMS, prefetch: prefetchPages, image: session.source,
      source: session.hello.memory) : nil)
server.run()
if let pages = first.saveWorkingSet() { writeLog("forkd-pager: recorded a working set of \(pages) pages") }
writeLog("forkd-pager: stats \(server.statsJSON().serialized())")
writeLog("forkd-pager: exiting: \(server.exitReason)")
listener.close()
exit(lazyChunkFailure == nil ? 0 : PagerHandshake.memoryUnavailableStatus)
