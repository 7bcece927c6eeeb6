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
  do { recorder = try WorkingSetRecorder(path: path) } catch { writeLog("forkd-pager: not recording: \(error)") }
}

let session: Session
do {
  // The seccomp allow-list goes on right after the handshake is validated, before the ack and
  // before any guest-driven fault is served.
  session = try Handshake.accept(on: listener, timeoutMS: options.handshakeTimeoutMS) { () throws(PagerError) in
    do {
      try CompiledFilter.pager.install()
    } catch {
      throw PagerError(code: "sandbox", message: "cannot install the seccomp filter: \(error)")
    }
  }
} catch {
  _ = try? FileSystem.unlink(options.socket)
  fail(error.description)
}

let server = PageServer(session: session, listener: listener, recorder: recorder, prefetch: prefetchPages)
server.run()
if let pages = server.saveWorkingSet() { writeLog("forkd-pager: recorded a working set of \(pages) pages") }
writeLog("forkd-pager: stats \(server.statsJSON().serialized())")
writeLog("forkd-pager: exiting: \(server.exitReason)")
listener.close()
exit(0)
