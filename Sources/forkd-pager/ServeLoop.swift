import Protocol
import SnapshotStorage
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// The pager's one event loop over every VM it serves, its listener and its stats clients.
///
/// Per-child mode (the default): one `PagerSession`, established before the loop; the listener
/// only brings stats clients; the loop ends when the VM goes away.
///
/// Shared mode (`--shared`, experimental): the listener also brings further VMs. Each new
/// connection is classified by its first byte (`{` a stats request, anything else a handshake)
/// and a handshake adds one session; every session's uffd and VM socket are polled in the same
/// loop, and all of them are served from the one memory image opened for the first VM. The loop
/// runs until the process is signalled; VMs come and go.
final class PageServer {
  private(set) var sessions: [PagerSession]
  private let listener: FileDescriptor
  private let shared: Shared?
  private var clients: [FileDescriptor: LineDecoder] = [:]
  /// Shared mode: connections accepted but not yet classified, with their handshake deadline.
  private var unclassified: [FileDescriptor: UInt64] = [:]
  /// Stats of sessions whose VM has gone (shared mode keeps serving others).
  private var retired = FaultStats()
  private var retiredDistinctPages = 0
  private(set) var vmsServed = 0
  private(set) var handshakesRefused = 0
  private(set) var exitReason = ""

  /// What a shared pager needs to take more VMs after its filter is installed.
  struct Shared {
    var handshakeTimeoutMS: Int32
    var prefetch: [UInt64]
    /// Opened for the first VM (before the filter); later VMs must name the same layers.
    var image: ChainImage
    var source: PagerMemorySource
  }

  init(first: PagerSession, listener: FileDescriptor, shared: Shared?) {
    sessions = [first]
    vmsServed = 1
    self.listener = listener
    self.shared = shared
  }

  func run() {
    while shared != nil || !sessions.isEmpty {
      var entries: [(FileDescriptor, Poll.Events)] = []
      entries.reserveCapacity(sessions.count * 2 + clients.count + unclassified.count + 1)
      var busy = false
      for session in sessions {
        entries.append((session.session.uffd.fd, session.suspended ? [] : .readable))
        entries.append((session.session.vmSocket, .readable))
        busy = busy || session.busy
      }
      let listenerIndex = entries.count
      entries.append((listener, .readable))
      let clientStart = entries.count
      let clientFDs = Array(clients.keys)
      for fd in clientFDs { entries.append((fd, .readable)) }
      let unclassifiedStart = entries.count
      let pending = Array(unclassified.keys)
      for fd in pending { entries.append((fd, .readable)) }
      guard let ready = try? Poll.wait(entries, timeoutMS: busy ? 0 : 1000) else { continue }
      for (index, session) in sessions.enumerated() {
        session.step(uffdReadable: !ready[2 * index].isEmpty, vmReadable: !ready[2 * index + 1].isEmpty)
      }
      retireEndedSessions()
      if !ready[listenerIndex].isEmpty {
        while let client = try? UnixSocket.accept(listener) {
          if let shared {
            unclassified[client] =
              Clock.monotonicNanoseconds() + UInt64(shared.handshakeTimeoutMS) * 1_000_000
          } else {
            clients[client] = LineDecoder()
          }
        }
      }
      for (offset, fd) in clientFDs.enumerated() where !ready[clientStart + offset].isEmpty { serveClient(fd) }
      for (offset, fd) in pending.enumerated() where !ready[unclassifiedStart + offset].isEmpty { classify(fd) }
      expireUnclassified()
    }
    for fd in clients.keys { fd.close() }
    clients.removeAll()
  }

  private func retireEndedSessions() {
    guard sessions.contains(where: \.vmGone) else { return }
    var kept: [PagerSession] = []
    for session in sessions {
      if session.vmGone {
        exitReason = session.exitReason
        if shared != nil {
          retired.merge(session.stats)
          retiredDistinctPages += session.distinctPagesFaulted
          writeLog("forkd-pager: VM \(session.session.hello.vmPID) left: \(session.exitReason)")
          session.close()
        } else {
          // Per-child: the loop ends with this session; its stats stay readable for the exit line.
          finished = session
        }
      } else {
        kept.append(session)
      }
    }
    sessions = kept
  }

  /// Per-child mode: the session whose VM ended the loop.
  private(set) var finished: PagerSession?

  /// Shared mode: the first byte decides whether a connection is a stats client or a VM.
  private func classify(_ fd: FileDescriptor) {
    guard let shared else { return }
    var byte: UInt8 = 0
    let n = recv(fd.rawValue, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
    if n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) {
      unclassified[fd] = nil
      fd.close()
      return
    }
    guard n == 1 else { return }
    let deadline = unclassified.removeValue(forKey: fd)!
    if byte == UInt8(ascii: "{") {
      clients[fd] = LineDecoder()
      serveClient(fd)
      return
    }
    // The VM sends its whole handshake in one sendmsg; waiting for the rest is bounded by the
    // handshake timeout and stalls the other VMs' faults only while it lasts.
    var policy = HandshakePolicy()
    policy.unconfined = false
    policy.openImage = { (source: PagerMemorySource) throws(PagerError) -> ChainImage in
      guard source == shared.source else {
        throw PagerError(
          code: "invalid_source",
          message:
            "this shared pager serves \(shared.source.layers.joined(separator: " + ")) (\(shared.source.mode.rawValue)); the VM asked for \(source.layers.joined(separator: " + ")) (\(source.mode.rawValue))"
        )
      }
      return shared.image
    }
    do {
      let session = try Handshake.complete(
        on: fd, deadline: deadline, timeoutMS: shared.handshakeTimeoutMS, policy: policy, lockDown: {})
      sessions.append(PagerSession(session: session, recorder: nil, prefetch: shared.prefetch))
      vmsServed += 1
    } catch {
      handshakesRefused += 1
      writeLog("forkd-pager: refused a VM: \(error)")
    }
  }

  private func expireUnclassified() {
    guard !unclassified.isEmpty else { return }
    let now = Clock.monotonicNanoseconds()
    for (fd, deadline) in unclassified where now >= deadline {
      unclassified[fd] = nil
      fd.close()
    }
  }

  private func serveClient(_ fd: FileDescriptor) {
    guard var decoder = clients[fd] else { return }
    var buffer = [UInt8](repeating: 0, count: 1024)
    let n = buffer.withUnsafeMutableBytes { Glibc.read(fd.rawValue, $0.baseAddress, $0.count) }
    guard n > 0 else {
      clients[fd] = nil
      fd.close()
      return
    }
    decoder.feed(buffer[0..<n])
    while let line = try? decoder.next() {
      let op = (try? JSONValue.parse(line, source: "pager request"))?["op"]?.stringValue
      var reply: JSONValue
      switch op {
      case "stats":
        reply = .object(["ok": .bool(true), "result": statsJSON()])
      case "save_working_set":
        if shared == nil, let pages = sessions.first?.saveWorkingSet() {
          reply = .object(["ok": .bool(true), "result": .object(["pages": .integer(Int64(pages))])])
        } else {
          reply = .object([
            "ok": .bool(false),
            "error": .object([
              "code": .string("invalid_config"), "message": .string("this pager does not record a working set"),
            ]),
          ])
        }
      default:
        reply = .object([
          "ok": .bool(false),
          "error": .object([
            "code": .string("bad_request"), "message": .string("unknown op; expected stats or save_working_set"),
          ]),
        ])
      }
      try? fd.writeAll(Array((reply.serialized() + "\n").utf8))
    }
    clients[fd] = decoder
  }

  /// Per-child: the session's stats (unchanged format). Shared: every VM's stats merged (the
  /// service-time histogram too), the VMs still served, and each one's own stats.
  func statsJSON() -> JSONValue {
    guard let shared else {
      return (sessions.first ?? finished)?.statsJSON() ?? .object(["pid": .integer(Int64(getpid()))])
    }
    var merged = retired
    var distinct = retiredDistinctPages
    for session in sessions {
      merged.merge(session.stats)
      distinct += session.distinctPagesFaulted
    }
    guard case .object(var o) = merged.json else { return merged.json }
    o["pid"] = .integer(Int64(getpid()))
    o["shared"] = .bool(true)
    o["vms_attached"] = .integer(Int64(sessions.count))
    o["vms_served"] = .integer(Int64(vmsServed))
    o["handshakes_refused"] = .integer(Int64(handshakesRefused))
    o["data_pages_in_source"] = .integer(Int64(shared.image.dataPageCount))
    o["distinct_pages_faulted"] = .integer(Int64(distinct))
    o["vms"] = .array(sessions.map { $0.statsJSON() })
    return .object(o)
  }
}
