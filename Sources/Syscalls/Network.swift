import CUffd

#if canImport(Glibc)
  import Glibc
#endif

/// A VM's host-side network plumbing: TAP devices and network namespaces.
public enum TapDevice {
  /// Opens (creating if needed) the TAP device `name` in the calling thread's network namespace,
  /// non-blocking, without packet information. Returns the descriptor and the kernel's name.
  public static func open(name: String) throws(SyscallError) -> (fd: FileDescriptor, name: String) {
    var actual = [CChar](repeating: 0, count: 16)
    let rc = cuffd_tap_open(name, &actual)
    guard rc >= 0 else { throw SyscallError("open TAP", Errno(-rc), detail: name) }
    let kernelName = String(decoding: actual.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return (FileDescriptor(rawValue: rc), kernelName)
  }

  /// Checks that an inherited descriptor is a TAP device the NIC can use (IFF_TAP, IFF_NO_PI,
  /// no vnet header) and makes it non-blocking.
  public static func adopt(_ fd: FileDescriptor) throws(SyscallError) {
    let rc = cuffd_is_tap(fd.rawValue)
    guard rc >= 0 else { throw SyscallError("TUNGETIFF", Errno(-rc), detail: "\(fd)") }
    guard rc == 1 else {
      throw SyscallError("TUNGETIFF", .invalid, detail: "\(fd) is not a TAP device with IFF_NO_PI and no vnet header")
    }
    try fd.setNonBlocking()
  }
}

public enum NetworkNamespace {
  /// Moves the calling thread into the network namespace at `path` (e.g. /run/netns/NAME);
  /// threads it creates afterwards start there too.
  public static func enter(path: String) throws(SyscallError) {
    let fd = try FileDescriptor.open(path, .readOnly)
    defer { fd.close() }
    let rc = cuffd_enter_netns(fd.rawValue)
    guard rc == 0 else { throw SyscallError("setns", Errno(-rc), detail: path) }
  }
}
