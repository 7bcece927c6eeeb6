import ForkdHTTP
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// Seams for the end-to-end tests, compiled into debug builds only and armed by
/// FORKD_TEST_SEAMS=1 in the daemon's environment: `POST /__test/hang-event-loops` blocks every
/// event loop for an hour (a deadlocked daemon), so SystemdTests can see WATCHDOG=1 stop.
/// In release builds `handle` always returns nil.
final class TestSeams: Sendable {
  private let server = Mutex<HTTPServer?>(nil)
  private let armed: Bool

  init() {
    #if FORKD_TEST_SEAMS
      armed = getenv("FORKD_TEST_SEAMS").map { String(cString: $0) == "1" } ?? false
    #else
      armed = false
    #endif
  }

  func attach(_ server: HTTPServer) { self.server.withLock { $0 = server } }

  /// The answer to a seam's request, or nil: the request is the API's.
  func handle(_ request: HTTPRequest) -> HTTPResponse? {
    #if FORKD_TEST_SEAMS
      guard armed, request.method == "POST", request.path == "/__test/hang-event-loops" else { return nil }
      server.withLock { $0 }?.testHangEventLoops(seconds: 3600)
      return HTTPResponse(status: 202, json: "{\"hanging\":true}")
    #else
      return nil
    #endif
  }
}
