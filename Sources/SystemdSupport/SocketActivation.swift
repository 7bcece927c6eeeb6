import CSystemd
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// One listening socket passed by the service manager (a `ListenStream=` of forkd.socket).
public struct ActivatedSocket: Sendable, Hashable, CustomStringConvertible {
  public enum Kind: Sendable, Hashable {
    /// An AF_UNIX stream socket bound to `path` ("@name" for the abstract namespace).
    case unix(path: String)
    /// An AF_INET/AF_INET6 stream socket bound to `address` (numeric) and `port`.
    case tcp(address: String, port: UInt16)
    /// Anything else (datagram, FIFO, netlink, …): the fd is still passed, untouched.
    case other
  }

  public let fd: FileDescriptor
  public let kind: Kind
  /// `FileDescriptorName=` of the socket unit (systemd defaults it to the unit's name, e.g.
  /// "forkd.socket"); nil when LISTEN_FDNAMES was not set (e.g. an older systemd-socket-activate).
  public let name: String?
  /// True if the socket is in the listening state (ListenStream= with Accept=no).
  public let isListening: Bool

  public init(fd: FileDescriptor, kind: Kind, name: String?, isListening: Bool) {
    self.fd = fd
    self.kind = kind
    self.name = name
    self.isListening = isListening
  }

  public var description: String {
    let what =
      switch kind {
      case .unix(let path): "unix \(path)"
      case .tcp(let address, let port): address.contains(":") ? "tcp [\(address)]:\(port)" : "tcp \(address):\(port)"
      case .other: "other"
      }
    return "fd \(fd.rawValue) \(what)" + (name.map { " name=\($0)" } ?? "") + (isListening ? "" : " (not listening)")
  }
}

/// systemd socket activation: the sockets a .socket unit (or `systemd-socket-activate`) passed.
public enum SocketActivation {
  /// The first passed descriptor (SD_LISTEN_FDS_START, 3).
  public static var firstDescriptor: Int32 { csystemd_listen_fds_start() }

  /// The sockets passed to this process, in ListenStream= order; [] when it was not socket
  /// activated (no LISTEN_FDS, or LISTEN_PID names another process) or the environment is
  /// malformed. Consumes the activation: LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES are removed
  /// from the environment (sd_listen_fds' unset_environment), so children never believe the
  /// sockets are theirs and a second call returns []. The descriptors are set close-on-exec.
  ///
  /// Call it early, before other threads start: it changes the environment (unsetenv).
  public static func listeners() -> [ActivatedSocket] {
    var names: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = nil
    let count = csystemd_listen_fds_with_names(1, &names)
    defer { csystemd_free_names(names) }
    guard count > 0 else { return [] }
    var result: [ActivatedSocket] = []
    result.reserveCapacity(Int(count))
    for index in 0..<Int(count) {
      let fd = FileDescriptor(rawValue: firstDescriptor + Int32(index))
      var name: String? = nil
      if let names, let raw = names[index] {
        let text = String(cString: raw)
        // libsystemd fills "unknown" when LISTEN_FDNAMES is absent.
        if text != "unknown" { name = text }
      }
      result.append(describe(fd, name: name))
    }
    return result
  }

  /// What kind of socket `fd` is (sd_is_socket_unix / sd_is_socket_inet, then getsockname).
  public static func describe(_ fd: FileDescriptor, name: String? = nil) -> ActivatedSocket {
    let listening = csystemd_is_socket(fd.rawValue, AF_UNSPEC, 0, 1) > 0
    if csystemd_is_socket_unix(fd.rawValue, Int32(SOCK_STREAM.rawValue), -1, nil, 0) > 0 {
      var buffer = [CChar](repeating: 0, count: 256)
      let n = csystemd_unix_socket_path(fd.rawValue, &buffer, buffer.count)
      let path = n >= 0 ? String(decoding: buffer[..<Int(n)].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
      return ActivatedSocket(fd: fd, kind: .unix(path: path), name: name, isListening: listening)
    }
    if csystemd_is_socket_inet(fd.rawValue, 0, Int32(SOCK_STREAM.rawValue), -1, 0) > 0 {
      var buffer = [CChar](repeating: 0, count: 64)
      var port: UInt16 = 0
      var family: Int32 = 0
      if csystemd_inet_socket_address(fd.rawValue, &buffer, buffer.count, &port, &family) == 0 {
        let address = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return ActivatedSocket(fd: fd, kind: .tcp(address: address, port: port), name: name, isListening: listening)
      }
    }
    return ActivatedSocket(fd: fd, kind: .other, name: name, isListening: listening)
  }
}
