#if canImport(Glibc)
  import Glibc
#endif

/// What an inherited TCP listener is bound to (socket activation passes only the descriptor).
public enum InetSocket {
  /// The numeric local address of `fd` (getsockname), e.g. "0.0.0.0" or "::1", and its port.
  public static func localAddress(_ fd: Int32) throws(SyscallError) -> (host: String, port: Int) {
    var storage = sockaddr_storage()
    var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
    _ = try withUnsafeMutablePointer(to: &storage) { (pointer) throws(SyscallError) -> Int32 in
      try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { (address) throws(SyscallError) -> Int32 in
        try retryingEINTR("getsockname", detail: "fd \(fd)") { getsockname(fd, address, &length) }
      }
    }
    var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
    switch Int32(storage.ss_family) {
    case AF_INET:
      return withUnsafePointer(to: &storage) {
        $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { v4 in
          var address = v4.pointee.sin_addr
          inet_ntop(AF_INET, &address, &text, socklen_t(text.count))
          return (String(cString: text), Int(UInt16(bigEndian: v4.pointee.sin_port)))
        }
      }
    case AF_INET6:
      return withUnsafePointer(to: &storage) {
        $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { v6 in
          var address = v6.pointee.sin6_addr
          inet_ntop(AF_INET6, &address, &text, socklen_t(text.count))
          return (String(cString: text), Int(UInt16(bigEndian: v6.pointee.sin6_port)))
        }
      }
    default:
      throw SyscallError("getsockname", Errno(EAFNOSUPPORT), detail: "fd \(fd): family \(storage.ss_family)")
    }
  }
}
