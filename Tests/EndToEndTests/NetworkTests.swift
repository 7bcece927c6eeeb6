import Protocol
import Synchronization
import Syscalls
import Testing
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// The test guest's fixed network identity (guest/test-guest/net.c, docs/networking.md).
enum GuestNet {
  static let address = "172.16.0.2"
  static let hostAddress = "172.16.0.1/30"
  static let mac = "02:fd:00:00:00:02"
  static let udpEchoPort: UInt16 = 7
  static let tcpBannerPort: UInt16 = 13
  static let banner = "forkd-test-guest net 1\n"
}

/// Runs a command, returning its exit status and what it printed (stdout and stderr).
@discardableResult
func runCommand(_ arguments: [String]) -> (status: Int32, output: String) {
  let quoted = arguments.map {
    "'" + $0.split(separator: "'", omittingEmptySubsequences: false).joined(separator: "'\\''") + "'"
  }
  guard let pipe = popen(quoted.joined(separator: " ") + " 2>&1", "r") else { return (-1, "") }
  var output: [UInt8] = []
  var buffer = [UInt8](repeating: 0, count: 4096)
  while true {
    let n = fread(&buffer, 1, buffer.count, pipe)
    if n <= 0 { break }
    output += buffer[0..<n]
  }
  let status = pclose(pipe)
  return (status == 0 ? 0 : (status >> 8) & 0xFF, String(decoding: output, as: UTF8.self))
}

/// A network namespace this test owns, with a TAP `tap0` (persistent, so forkd-vmm attaches to
/// it) holding the host side's address. Deleted with everything in it at the end.
final class TestNamespace {
  let name: String
  var path: String { "/run/netns/\(name)" }

  init(_ tag: String) throws {
    name = "forkd-t\(getpid())-\(tag)"
    for command in [
      ["ip", "netns", "add", name],
      ["ip", "-n", name, "tuntap", "add", "dev", "tap0", "mode", "tap"],
      ["ip", "-n", name, "addr", "add", GuestNet.hostAddress, "dev", "tap0"],
      ["ip", "-n", name, "link", "set", "tap0", "up"],
    ] {
      let result = runCommand(command)
      guard result.status == 0 else {
        runCommand(["ip", "netns", "del", name])
        throw SyscallError(command.joined(separator: " "), .invalid, detail: result.output)
      }
    }
  }

  deinit { runCommand(["ip", "netns", "del", name]) }

  /// Runs `body` on a thread inside the namespace: its sockets live there.
  func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) throws -> T {
    let result = Mutex<Result<T, any Error>?>(nil)
    let namespace = path
    let thread = try OSThread.start(name: "netns") {
      do {
        try NetworkNamespace.enter(path: namespace)
        let value = try body()
        result.withLock { $0 = .success(value) }
      } catch {
        result.withLock { $0 = .failure(error) }
      }
    }
    thread.join()
    return try result.withLock { $0! }.get()
  }
}

struct NetError: Error, CustomStringConvertible {
  let description: String
}

/// An IPv4 socket address.
func socketAddress(_ address: String, _ port: UInt16) -> sockaddr_in {
  var sin = sockaddr_in()
  sin.sin_family = sa_family_t(AF_INET)
  sin.sin_port = port.bigEndian
  inet_pton(AF_INET, address, &sin.sin_addr)
  return sin
}

/// Sends `payload` to the guest's UDP echo port and returns the answer (waits at most 5 s).
func udpEcho(_ payload: [UInt8]) throws -> [UInt8] {
  let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
  guard fd >= 0 else { throw NetError(description: "socket: \(Errno.current)") }
  defer { close(fd) }
  var to = socketAddress(GuestNet.address, GuestNet.udpEchoPort)
  let sent = withUnsafePointer(to: &to) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
      sendto(fd, payload, payload.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
    }
  }
  guard sent == payload.count else { throw NetError(description: "sendto: \(Errno.current)") }
  guard try Poll.wait([(FileDescriptor(rawValue: fd), .readable)], timeoutMS: 5000)[0].contains(.readable) else {
    throw NetError(description: "no UDP echo from \(GuestNet.address):\(GuestNet.udpEchoPort) within 5 s")
  }
  var buffer = [UInt8](repeating: 0, count: 2048)
  let n = recv(fd, &buffer, buffer.count, 0)
  guard n >= 0 else { throw NetError(description: "recv: \(Errno.current)") }
  return Array(buffer[0..<n])
}

/// Connects to the guest's TCP port and reads until it closes (at most 5 s per step).
func tcpRead(port: UInt16) throws -> String {
  let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
  guard fd >= 0 else { throw NetError(description: "socket: \(Errno.current)") }
  defer { close(fd) }
  var timeout = timeval(tv_sec: 5, tv_usec: 0)
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
  var to = socketAddress(GuestNet.address, port)
  let rc = withUnsafePointer(to: &to) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
  }
  guard rc == 0 else { throw NetError(description: "connect to port \(port): \(Errno.current)") }
  var received: [UInt8] = []
  var buffer = [UInt8](repeating: 0, count: 512)
  while true {
    let n = recv(fd, &buffer, buffer.count, 0)
    guard n >= 0 else { throw NetError(description: "recv: \(Errno.current)") }
    if n == 0 { break }
    received += buffer[0..<n]
  }
  return String(decoding: received, as: UTF8.self)
}

/// Boots a test guest with a NIC (no backend), warms it up and snapshots it.
func snapshotParentWithNIC(in scratch: Scratch, nic: Bool = true) throws -> String {
  let parent = try VMMProcess.launch(
    .boot(image: "builtin:test-guest", memoryMiB: 32, vcpus: 1), runDirectory: scratch.path + "/parent",
    extraArguments: nic ? ["--nic"] : [])
  defer { parent.stop() }
  let agent = try parent.agent()
  #expect(try agent.counter(add: 5) == 5)
  let snapshot = scratch.path + "/snap"
  try parent.control().snapshot(directory: snapshot, parentTag: nil)
  return snapshot
}

@Suite("virtio-net on real KVM: children of one snapshot in their own namespaces", .serialized)
struct NetworkTests {
  @Test(
    "two children of one snapshot, each on a TAP in its own netns, answer ping, UDP echo and the TCP banner with the same IP and MAC"
  )
  func clonesAnswerInTheirNamespaces() throws {
    let scratch = try Scratch("net-clones")
    let snapshot = try snapshotParentWithNIC(in: scratch)
    var made: [String] = []
    do {
      let namespaces = try (0..<2).map { try TestNamespace("c\($0)") }
      made = namespaces.map(\.name)
      #expect(made.allSatisfy { runCommand(["ip", "netns", "list"]).output.contains($0) })
      let children = try namespaces.enumerated().map { index, ns in
        try VMMProcess.launch(
          .restore(snapshot: snapshot), runDirectory: scratch.path + "/child-\(index)",
          extraArguments: ["--netns", ns.path, "--tap", "tap0"])
      }
      defer { for child in children { child.stop() } }
      for (index, (ns, child)) in zip(namespaces, children).enumerated() {
        let ping = runCommand(["ip", "netns", "exec", ns.name, "ping", "-c1", "-W5", GuestNet.address])
        #expect(ping.status == 0, "child \(index): \(ping.output)")
        let neighbour = runCommand(["ip", "-n", ns.name, "neigh", "show", GuestNet.address]).output
        #expect(neighbour.contains(GuestNet.mac), "child \(index) keeps the parent's MAC: \(neighbour)")
        let payload = Array("echo from namespace \(index)".utf8)
        #expect(try ns.run { try udpEcho(payload) } == payload)
        #expect(try ns.run { try tcpRead(port: GuestNet.tcpBannerPort) } == GuestNet.banner)
        // A closed port refuses (RST), it does not hang.
        #expect(throws: NetError.self) { try ns.run { try tcpRead(port: GuestNet.tcpBannerPort + 1) } }
        // The agent over vsock is unaffected and the child has the parent's state.
        #expect(try child.agent().counter(add: 1) == 6)
        // The NIC counted what went through it (ARP, echo, UDP, TCP), and dropped nothing.
        let net = try #require(try child.control().status().network)
        #expect(net.rxFrames >= 4 && net.txFrames >= 4, "\(net)")
        #expect(net.rxDropped == 0 && net.txDropped == 0, "\(net)")
      }
      // Each namespace sees only its own child: the same address answers in both, separately.
      let udp = try namespaces[1].run { try udpEcho([1, 2, 3]) }
      #expect(udp == [1, 2, 3])
    }
    // Other suites may make namespaces meanwhile: only this test's must be gone.
    let after = runCommand(["ip", "netns", "list"]).output
    #expect(!made.isEmpty && made.allSatisfy { !after.contains($0) }, "every namespace the test made is gone: \(after)")
  }

  @Test("a TAP opened by the owner inside the namespace and passed as a descriptor (--tap-fd) serves a restored child")
  func tapPassedAsDescriptor() throws {
    let scratch = try Scratch("net-fd")
    let snapshot = try snapshotParentWithNIC(in: scratch)
    let ns = try TestNamespace("fd")
    let tap = try ns.run { try TapDevice.open(name: "tap0").fd }
    let child: VMMProcess
    do {
      defer { tap.close() }
      child = try VMMProcess.launch(
        .restore(snapshot: snapshot), runDirectory: scratch.path + "/child", extraArguments: ["--tap-fd", "4"],
        inheritedFDs: [(4, tap)])
    }
    defer { child.stop() }
    let ping = runCommand(["ip", "netns", "exec", ns.name, "ping", "-c1", "-W5", GuestNet.address])
    #expect(ping.status == 0, "\(ping.output)")
    #expect(try ns.run { try udpEcho([7, 7, 7]) } == [7, 7, 7])
  }

  @Test("a snapshot of a child whose NIC carried traffic restores a grandchild that answers on its own TAP")
  func snapshotOfChildWithTraffic() throws {
    let scratch = try Scratch("net-branch")
    let snapshot = try snapshotParentWithNIC(in: scratch)
    let first = try TestNamespace("b0")
    let second = try TestNamespace("b1")
    let child = try VMMProcess.launch(
      .restore(snapshot: snapshot), runDirectory: scratch.path + "/child",
      extraArguments: ["--netns", first.path, "--tap", "tap0"])
    defer { child.stop() }
    for round in 0..<20 { #expect(try first.run { try udpEcho([UInt8(round)]) } == [UInt8(round)]) }
    let branch = scratch.path + "/branch"
    try child.control().snapshot(directory: branch, parentTag: nil)
    // The child goes on answering after its snapshot.
    #expect(try first.run { try udpEcho([42]) } == [42])
    let grandchild = try VMMProcess.launch(
      .restore(snapshot: branch), runDirectory: scratch.path + "/grandchild",
      extraArguments: ["--netns", second.path, "--tap", "tap0"])
    defer { grandchild.stop() }
    let ping = runCommand(["ip", "netns", "exec", second.name, "ping", "-c1", "-W5", GuestNet.address])
    #expect(ping.status == 0, "\(ping.output)")
    #expect(try second.run { try udpEcho([9, 9]) } == [9, 9])
    #expect(try second.run { try tcpRead(port: GuestNet.tcpBannerPort) } == GuestNet.banner)
    let net = try #require(try grandchild.control().status().network)
    #expect(net.rxDropped == 0, "\(net)")
  }

  @Test("a snapshot whose parent had no NIC refuses a TAP with a clear error and leaves no TAP behind")
  func noNICInSnapshot() throws {
    let scratch = try Scratch("net-nonic")
    let snapshot = try snapshotParentWithNIC(in: scratch, nic: false)
    let ns = try TestNamespace("nonic")
    #expect {
      _ = try VMMProcess.launch(
        .restore(snapshot: snapshot), runDirectory: scratch.path + "/child",
        extraArguments: ["--netns", ns.path, "--tap", "tapx"])
    } throws: { error in
      "\(error)".contains("has no NIC")
    }
    let links = runCommand(["ip", "-n", ns.name, "link", "show"]).output
    #expect(!links.contains("tapx"), "the TAP forkd-vmm created went with it: \(links)")
  }

  @Test("an inherited descriptor that is not a TAP is refused by name")
  func tapFDNotATap() throws {
    let scratch = try Scratch("net-badfd")
    #expect {
      // fd 3 is forkd-vmm's ready pipe: a descriptor, but not a TAP.
      _ = try VMMProcess.launch(
        .boot(image: "builtin:test-guest", memoryMiB: 32, vcpus: 1), runDirectory: scratch.path + "/vm",
        extraArguments: ["--tap-fd", "3"])
    } throws: { error in
      "\(error)".contains("cannot attach the NIC's TAP") && "\(error)".contains("TUNGETIFF")
    }
  }
}
