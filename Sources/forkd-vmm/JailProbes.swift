#if DEBUG
  import CJail
  import Syscalls

  #if canImport(Glibc)
    import Glibc
  #endif

  /// Test seam, compiled into debug (test) builds only: with `FORKD_TEST_JAIL_PROBES` set to
  /// `KIND:ARG;KIND:ARG…`, a jailed forkd-vmm tries each probe right after entering its jail
  /// (before its seccomp filter, so the jail alone is what is proven) and writes one line per probe
  /// to stderr: `jail-probe KIND:ARG ok` or `jail-probe KIND:ARG denied ERRNO`. Kinds: read,
  /// write, create (open a path that way), connect (a Unix socket), kill (signal 0 to a pid),
  /// userns (unshare a user namespace), chroot, setuid0.
  enum JailProbes {
    static func run() {
      guard let raw = getenv("FORKD_TEST_JAIL_PROBES").map({ String(cString: $0) }), !raw.isEmpty else { return }
      for probe in raw.split(separator: ";") {
        let parts = probe.split(separator: ":", maxSplits: 1)
        let kind = String(parts[0])
        let argument = parts.count > 1 ? String(parts[1]) : ""
        let rc: Int32
        switch kind {
        case "read": rc = open(argument, O_RDONLY | O_CLOEXEC)
        case "write": rc = open(argument, O_WRONLY | O_CLOEXEC)
        case "create": rc = open(argument, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        case "connect":
          do {
            let fd = try UnixSocket.connect(path: argument)
            fd.close()
            rc = 0
          } catch {
            errno = error.errno.rawValue
            rc = -1
          }
        case "kill": rc = kill(pid_t(argument) ?? -1, 0)
        case "userns": rc = cjail_try_user_namespace()
        case "chroot": rc = chroot(".")
        case "setuid0": rc = setuid(0)
        default:
          errno = EINVAL
          rc = -1
        }
        let failure = Errno.current
        let outcome = rc >= 0 ? "ok" : "denied \(failure.name)"
        if rc > 0 && kind != "kill" { _ = close(rc) }
        try? FileDescriptor(rawValue: 2).writeAll(Array("jail-probe \(probe) \(outcome)\n".utf8))
      }
    }
  }
#endif
