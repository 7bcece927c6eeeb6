import CUffd

#if canImport(Glibc)
  import Glibc
#endif

/// Unix-domain stream sockets: the transport of every per-VM and per-child channel.
public enum UnixSocket {
  /// Creates, binds and listens on `path`, replacing nothing: an existing path is an error.
  public static func listen(path: String, backlog: Int32 = 128, mode: mode_t = 0o600) throws(SyscallError)
    -> FileDescriptor
  {
    let fd = try makeSocket()
    do throws(SyscallError) {
      try withAddress(path) { (addr, len) throws(SyscallError) in
        _ = try retryingEINTR("bind", detail: path) { Glibc.bind(fd.rawValue, addr, len) }
      }
      _ = try retryingEINTR("chmod", detail: path) { chmod(path, mode) }
      _ = try retryingEINTR("listen", detail: path) { Glibc.listen(fd.rawValue, backlog) }
    } catch {
      fd.close()
      throw error
    }
    return fd
  }

  /// Connects to `path` (blocking connect; a Unix connect does not wait on the peer's accept).
  public static func connect(path: String) throws(SyscallError) -> FileDescriptor {
    let fd = try makeSocket()
    do throws(SyscallError) {
      try withAddress(path) { (addr, len) throws(SyscallError) in
        _ = try retryingEINTR("connect", detail: path) { Glibc.connect(fd.rawValue, addr, len) }
      }
    } catch {
      fd.close()
      throw error
    }
    return fd
  }

  /// Accepts one connection; nil when the listener is non-blocking and nothing is pending.
  public static func accept(_ listener: FileDescriptor, nonBlocking: Bool = true) throws(SyscallError)
    -> FileDescriptor?
  {
    do throws(SyscallError) {
      return FileDescriptor(
        rawValue: try retryingEINTR("accept4") { cuffd_accept4(listener.rawValue, nonBlocking ? 1 : 0) })
    } catch  where error.errno == .wouldBlock {
      return nil
    }
  }

  /// A connected pair, e.g. for tests and for handing one end to a child process.
  public static func pair() throws(SyscallError) -> (FileDescriptor, FileDescriptor) {
    var fds: [Int32] = [0, 0]
    _ = try retryingEINTR("socketpair") {
      cuffd_unix_socketpair(&fds)
    }
    return (FileDescriptor(rawValue: fds[0]), FileDescriptor(rawValue: fds[1]))
  }

  /// shutdown(2) both directions: a thread blocked reading `fd` wakes up to end-of-file, while
  /// the descriptor itself stays valid until its owner closes it.
  public static func shutdown(_ fd: FileDescriptor) throws(SyscallError) {
    _ = try retryingEINTR("shutdown") { Glibc.shutdown(fd.rawValue, Int32(SHUT_RDWR)) }
  }

  /// The pid of the process at the other end (SO_PEERCRED).
  public static func peerPID(_ fd: FileDescriptor) throws(SyscallError) -> pid_t {
    try retryingEINTR("getsockopt(SO_PEERCRED)") { cuffd_peer_pid(fd.rawValue) }
  }

  /// Sends bytes with one descriptor attached (SCM_RIGHTS).
  public static func send(_ bytes: [UInt8], fd: FileDescriptor?, on socket: FileDescriptor) throws(SyscallError) {
    let n = try retryingEINTR("sendmsg") {
      bytes.withUnsafeBytes { cuffd_send_with_fd(socket.rawValue, $0.baseAddress, $0.count, fd?.rawValue ?? -1) }
    }
    guard n == bytes.count else {
      throw SyscallError("sendmsg", Errno(EMSGSIZE), detail: "short send \(n)/\(bytes.count)")
    }
  }

  /// Receives one message of at most `capacity` bytes and the descriptor attached to it, if any.
  public static func receive(capacity: Int, on socket: FileDescriptor) throws(SyscallError)
    -> (bytes: [UInt8], fd: FileDescriptor?, truncated: Bool)
  {
    var buffer = [UInt8](repeating: 0, count: capacity)
    var received: Int32 = -1
    var truncated: Int32 = 0
    let n = try retryingEINTR("recvmsg") {
      buffer.withUnsafeMutableBytes {
        cuffd_recv_with_fd(socket.rawValue, $0.baseAddress, $0.count, &received, &truncated)
      }
    }
    buffer.removeSubrange(n...)
    return (buffer, received >= 0 ? FileDescriptor(rawValue: received) : nil, truncated != 0)
  }

  private static func makeSocket() throws(SyscallError) -> FileDescriptor {
    FileDescriptor(
      rawValue: try retryingEINTR("socket") { cuffd_unix_stream_socket() })
  }

  private static func withAddress(
    _ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) throws(SyscallError) -> Void
  ) throws(SyscallError) {
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    let capacity = MemoryLayout.size(ofValue: addr.sun_path)
    guard !bytes.isEmpty, bytes.count < capacity else {
      throw SyscallError(
        "socket path", Errno(ENAMETOOLONG), detail: "\(path) (\(bytes.count) bytes, limit \(capacity - 1))")
    }
    withUnsafeMutableBytes(of: &addr.sun_path) { raw in
      raw.copyBytes(from: bytes)
      raw[bytes.count] = 0
    }
    let len = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + 1)
    let sa = UnsafeMutableRawPointer.allocate(byteCount: MemoryLayout<sockaddr_un>.size, alignment: 8)
    defer { sa.deallocate() }
    sa.storeBytes(of: addr, as: sockaddr_un.self)
    try body(sa.assumingMemoryBound(to: sockaddr.self), len)
  }
}
