import Syscalls

/// Something the VMM's event loop polls: sockets of the vsock backend, the control socket.
public protocol PollSource: AnyObject {
  /// Descriptors and the events wanted right now (asked again before every poll).
  func pollDescriptors() -> [(FileDescriptor, Poll.Events)]
  func handle(_ fd: FileDescriptor, _ events: Poll.Events)
}

/// The per-VM process's I/O thread: one poll(2) over every source plus a wake eventfd that
/// other threads (vCPUs) signal when they changed what a source wants.
public final class EventLoop: @unchecked Sendable {
  private let wakeFD: EventFD
  private var sources: [any PollSource] = []

  public init() throws(VMMError) {
    do {
      wakeFD = try EventFD()
    } catch {
      throw VMMError(.io, "cannot create the event loop's eventfd", cause: error)
    }
  }

  deinit { wakeFD.fd.close() }

  public func add(_ source: any PollSource) { sources.append(source) }

  /// Safe from any thread.
  public func wake() { wakeFD.signal() }

  /// Polls until `shouldStop` returns true (checked after every wakeup).
  public func run(timeoutMS: Int32 = 1000, shouldStop: () -> Bool) {
    while !shouldStop() {
      var entries: [(FileDescriptor, Poll.Events)] = [(wakeFD.fd, .readable)]
      var owners: [(any PollSource)?] = [nil]
      for source in sources {
        for entry in source.pollDescriptors() {
          entries.append(entry)
          owners.append(source)
        }
      }
      guard let ready = try? Poll.wait(entries, timeoutMS: timeoutMS) else { continue }
      for (i, events) in ready.enumerated() where !events.isEmpty {
        if let owner = owners[i] {
          owner.handle(entries[i].0, events)
        } else {
          wakeFD.drain()
        }
      }
    }
  }
}
