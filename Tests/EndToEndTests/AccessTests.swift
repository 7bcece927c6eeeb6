import ForkdClient
import Protocol
import Syscalls
import Testing
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// Who may talk to the daemon (issue 13 item 5): TCP needs the bearer token unless the operator
/// allows unauthenticated loopback explicitly; the Unix socket is 0660 root:forkd; request paths
/// of kernels, disks and images must lie under an image root.
@Suite("forkd-supervisor: who may talk to it", .serialized)
struct AccessTests {
  /// Starts a daemon that is expected to refuse to start; returns its termination and stderr.
  static func refusedStart(_ command: [String], name: String) throws -> (ChildProcess.Termination?, String) {
    let scratch = try Scratch(name)
    let stderrPath = scratch.path + "/stderr"
    let stderr = try FileDescriptor.open(stderrPath, [.writeOnly, .create])
    let stdout = try FileDescriptor.open(scratch.path + "/stdout", [.writeOnly, .create])
    let arguments =
      command + [
        "--state-dir", scratch.path + "/state", "--run-dir", scratch.path + "/run", "--socket",
        scratch.path + "/s.sock",
      ]
    let pid = try ChildProcess.spawn(
      path: arguments[0], arguments: arguments,
      environment: ChildProcess.currentEnvironment().filter { !$0.hasPrefix("FORKD_TOKEN=") }, stdoutFD: stdout,
      stderrFD: stderr)
    stderr.close()
    stdout.close()
    let termination = ChildProcess.waitOrKill(pid, timeoutMS: 10_000)
    let text = String(decoding: (try? FileSystem.readFile(stderrPath)) ?? [], as: UTF8.self)
    return (termination, text)
  }

  @Test("forkd serve / forkd-supervisor --listen-tcp 127.0.0.1:P without a token refuse to start, naming the flag")
  func loopbackNeedsToken() throws {
    let supervisor = try ForkdBinaries.path(of: "forkd-supervisor")
    let forkd = try ForkdBinaries.path(of: "forkd")
    for command in [[supervisor], [forkd, "serve"]] {
      let (termination, stderr) = try Self.refusedStart(
        command + ["--listen-tcp", "127.0.0.1:\(UInt16.random(in: 20000...40000))"], name: "loopback-token")
      #expect(termination == .exited(1), "\(command): \(stderr)")
      #expect(stderr.contains("without a token"), "\(command): \(stderr)")
      #expect(stderr.contains("--insecure-loopback-without-token"), "\(command): \(stderr)")
    }
  }

  @Test(
    "--insecure-loopback-without-token: loopback TCP serves without a token, logged loudly; other addresses still refused"
  )
  func insecureLoopbackFlag() throws {
    let sup = try TestSupervisor("insecure")  // no token: the fixture passes the flag
    #expect(try sup.tcp.request("GET", "/v1/sandboxes").status == 200)
    #expect(lastLines(of: sup.logPath, count: 50).contains("UNAUTHENTICATED"), "\(lastLines(of: sup.logPath))")
    #expect(sup.stop() == .exited(0))

    let supervisor = try ForkdBinaries.path(of: "forkd-supervisor")
    for host in ["0.0.0.0", "localhost", "127.attacker.invalid"] {
      let (termination, stderr) = try Self.refusedStart(
        [supervisor, "--insecure-loopback-without-token", "--listen-tcp", "\(host):18997"], name: "insecure-wide")
      #expect(termination == .exited(1), "\(host): \(stderr)")
      #expect(stderr.contains("without a token"), "\(host): \(stderr)")
    }
  }

  @Test("the API socket is 0660, group forkd (the daemon's group when forkd does not exist)")
  func unixSocketMode() throws {
    let sup = try TestSupervisor("socket-mode")
    var st = stat()
    #expect(lstat(sup.socket, &st) == 0)
    #expect(st.st_mode & 0o7777 == 0o660, "mode \(String(st.st_mode & 0o7777, radix: 8))")
    let expected = getgrnam("forkd").map { $0.pointee.gr_gid } ?? getegid()
    #expect(st.st_gid == expected)
    #expect(sup.stop() == .exited(0))
  }

  @Test("host paths outside the image roots, or leading out of one by symlink or '..', get 403 naming the path")
  func imageRoots() throws {
    let scratch = try Scratch("image-roots")
    let extraRoot = scratch.path + "/more-images"
    try FileSystem.makeDirectories(extraRoot)
    let sup = try TestSupervisor(
      "image-roots", extra: ["--image-root", scratch.path + "/state/images", "--image-root", extraRoot],
      reusing: scratch)
    let images = scratch.path + "/state/images"
    #expect(symlink("/etc/hostname", images + "/escape") == 0)
    #expect(symlink("/etc", images + "/etc") == 0)
    try FileSystem.writeAtomically(extraRoot + "/not-a-kernel", Array("text\n".utf8))
    #expect(symlink("not-a-kernel", extraRoot + "/inside-link") == 0)

    func expectRefused(_ body: String, _ path: String) throws {
      let r = try sup.unix.request("POST", "/v1/snapshots", body: body)
      #expect(r.status == 403, "\(body) → \(r.text)")
      #expect(r.json?["error"]?.stringValue?.contains(path) == true, "\(body) → \(r.text)")
    }
    let kernel = extraRoot + "/not-a-kernel"
    try expectRefused(#"{"tag":"r","kernel":"\#(kernel)","rootfs":"/etc/shadow"}"#, "/etc/shadow")
    try expectRefused(#"{"tag":"r","kernel":"/etc/hostname"}"#, "/etc/hostname")
    try expectRefused(#"{"tag":"r","kernel":"\#(kernel)","initrd":"\#(images)/escape"}"#, images + "/escape")
    try expectRefused(#"{"tag":"r","kernel":"\#(images)/etc/hostname"}"#, images + "/etc/hostname")
    try expectRefused(#"{"tag":"r","kernel":"\#(images)/../../../etc/hostname"}"#, "../etc/hostname")
    try expectRefused(#"{"tag":"r","kernel":"relative/vmlinuz"}"#, "relative/vmlinuz")
    try expectRefused(#"{"tag":"r","image":"/etc/hostname"}"#, "/etc/hostname")
    // Under a root, a symlink that stays inside is followed: the file reaches forkd-vmm, which
    // refuses it as a kernel (500 naming the resolved file), so the path check let it through.
    let accepted = try sup.unix.request(
      "POST", "/v1/snapshots", body: #"{"tag":"r","kernel":"\#(extraRoot)/inside-link"}"#)
    #expect(accepted.status == 500, "\(accepted.text)")
    #expect(accepted.json?["error"]?.stringValue?.contains(kernel) == true, "\(accepted.text)")
    #expect(try sup.unix.request("GET", "/v1/snapshots/r/info").status == 404, "nothing half-made is visible")
    #expect(((try? FileSystem.listDirectory(scratch.path + "/run/parents")) ?? []).isEmpty)
    #expect(sup.stop() == .exited(0))
  }
}
