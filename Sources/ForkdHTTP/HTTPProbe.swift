import NIOCore
import NIOPosix
import Synchronization
import Syscalls

/// Liveness through the real request path: the watchdog feeds systemd only when a request
/// walks through every event loop, the HTTP parser, the handler (and what it locks) and back.
extension HTTPServer {
  /// Sends `GET path` on a fresh in-process connection pinned to each event loop in turn and
  /// waits up to `timeoutMS` for each answer. Returns nil when every loop answered 200, else
  /// what failed. A loop whose previous probe never completed fails at once (no pile-up of
  /// connections on a hung loop). Call from a plain thread, never from an event loop.
  public func probe(path: String, timeoutMS: Int) -> String? {
    for (index, loop) in group.makeIterator().enumerated() {
      if let failure = probe(loop: loop, index: index, path: path, timeoutMS: timeoutMS) { return failure }
    }
    return nil
  }

  private func probe(loop: any EventLoop, index: Int, path: String, timeoutMS: Int) -> String? {
    let pending = probesPending.withLock { pending -> Bool in
      if pending.contains(index) { return true }
      pending.insert(index)
      return false
    }
    if pending { return "event loop \(index) has not taken the previous probe yet" }
    let ours: Syscalls.FileDescriptor
    let theirs: Syscalls.FileDescriptor
    do {
      (ours, theirs) = try UnixSocket.pair()
    } catch {
      probesPending.withLock { _ = $0.remove(index) }
      return "probe socketpair: \(error)"
    }
    defer { ours.close() }
    let handler = self.handler
    let limits = self.limits
    ClientBootstrap(group: loop)
      .channelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
          try HTTPServer.configure(channel.pipeline.syncOperations, kind: .probe, limits: limits, handler: handler)
        }
      }
      .withConnectedSocket(theirs.rawValue)
      .whenComplete { [self] result in
        probesPending.withLock { _ = $0.remove(index) }
        if case .failure = result { theirs.close() }
      }
    let request = "GET \(path) HTTP/1.1\r\nHost: forkd-probe\r\nConnection: close\r\n\r\n"
    do {
      try ours.writeAll(Array(request.utf8))
    } catch {
      return "probe write on event loop \(index): \(error)"
    }
    let deadline = Clock.monotonicNanoseconds() + UInt64(max(timeoutMS, 1)) * 1_000_000
    var reply: [UInt8] = []
    while !reply.contains(UInt8(ascii: "\n")) {
      let now = Clock.monotonicNanoseconds()
      guard now < deadline else { return "event loop \(index): no answer to GET \(path) within \(timeoutMS) ms" }
      let waitMS = Int32(clamping: (deadline - now) / 1_000_000 + 1)
      guard let ready = try? Poll.wait([(ours, .readable)], timeoutMS: waitMS), !ready[0].isEmpty else { continue }
      guard let chunk = try? ours.read(upTo: 512), !chunk.isEmpty else {
        return "event loop \(index): connection closed before an answer to GET \(path)"
      }
      reply += chunk
    }
    let statusLine = String(
      decoding: reply.prefix { $0 != UInt8(ascii: "\r") && $0 != UInt8(ascii: "\n") }, as: UTF8.self)
    return statusLine.hasPrefix("HTTP/1.1 200 ") ? nil : "event loop \(index): GET \(path) answered \(statusLine)"
  }
}

#if FORKD_TEST_SEAMS
  #if canImport(Glibc)
    import Glibc
  #endif

  extension HTTPServer {
    /// Test seam, debug builds only: in 200 ms every event loop blocks for `seconds`, as a
    /// deadlocked daemon would; the watchdog test checks that WATCHDOG=1 then stops.
    public func testHangEventLoops(seconds: UInt32) {
      for loop in group.makeIterator() {
        loop.scheduleTask(in: .milliseconds(200)) { _ = sleep(seconds) }
      }
    }
  }
#endif
