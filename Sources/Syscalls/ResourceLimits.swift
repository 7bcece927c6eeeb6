#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// RLIMIT_NOFILE of this process.
public enum OpenFileLimit {
  /// Raises the soft limit to the hard one (a server holding many connections and children's
  /// descriptors needs more than the usual 1024 soft default). Returns the soft limit in effect.
  @discardableResult
  public static func raiseToHard() throws(SyscallError) -> UInt64 {
    var limit = rlimit()
    guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else {
      throw SyscallError("getrlimit", .current, detail: "RLIMIT_NOFILE")
    }
    if limit.rlim_cur < limit.rlim_max {
      var raised = limit
      raised.rlim_cur = limit.rlim_max
      guard setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &raised) == 0 else {
        throw SyscallError("setrlimit", .current, detail: "RLIMIT_NOFILE \(limit.rlim_max)")
      }
      return UInt64(raised.rlim_cur)
    }
    return UInt64(limit.rlim_cur)
  }
}
