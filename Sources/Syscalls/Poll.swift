import CUffd

#if canImport(Glibc)
  import Glibc
#endif

/// poll(2) over a set of descriptors.
public enum Poll {
  public struct Events: OptionSet, Sendable, Hashable {
    public let rawValue: Int16
    public init(rawValue: Int16) { self.rawValue = rawValue }
    public static let readable = Events(rawValue: Int16(POLLIN))
    public static let writable = Events(rawValue: Int16(POLLOUT))
    public static let error = Events(rawValue: Int16(POLLERR))
    public static let hangup = Events(rawValue: Int16(POLLHUP))
    public static let invalid = Events(rawValue: Int16(POLLNVAL))
    public static let readHangup = Events(rawValue: Int16(0x2000))  // POLLRDHUP
  }

  /// Waits up to `timeoutMS` (-1 forever). Returns the ready events per entry, in order.
  public static func wait(_ entries: [(FileDescriptor, Events)], timeoutMS: Int32) throws(SyscallError) -> [Events] {
    var fds = entries.map { pollfd(fd: $0.0.rawValue, events: $0.1.rawValue, revents: 0) }
    _ = try retryingEINTR("poll") { Glibc.poll(&fds, nfds_t(fds.count), timeoutMS) }
    return fds.map { Events(rawValue: $0.revents) }
  }
}

/// An eventfd used to wake a poll loop from another thread.
public struct EventFD: Sendable {
  public let fd: FileDescriptor

  public init() throws(SyscallError) {
    fd = FileDescriptor(rawValue: try retryingEINTR("eventfd") { cuffd_eventfd(0, 1) })
  }

  public func signal() {
    var one: UInt64 = 1
    _ = withUnsafeBytes(of: &one) { Glibc.write(fd.rawValue, $0.baseAddress, 8) }
  }

  /// Clears the counter; returns how many signals were pending.
  @discardableResult
  public func drain() -> UInt64 {
    var value: UInt64 = 0
    let n = withUnsafeMutableBytes(of: &value) { Glibc.read(fd.rawValue, $0.baseAddress, 8) }
    return n == 8 ? value : 0
  }
}
