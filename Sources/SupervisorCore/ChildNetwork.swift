import Protocol
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// A child's own network namespace (`per_child_netns: true`): `forkd-<sandbox id>` with a
/// persistent TAP `tap0` holding the host side's address. forkd-vmm enters the namespace and
/// attaches to the TAP; every child keeps its parent's guest address and MAC, which is why each
/// has a namespace of its own (docs/networking.md).
///
/// Every namespace the supervisor makes is first written down as a marker file in
/// `RUN/netns/` and the marker removed only after the namespace is gone, so a supervisor that
/// crashed mid-spawn removes what it made when it starts again.
public struct ChildNetwork: Sendable {
  /// The test guest's fixed addresses (guest/test-guest/net.c).
  static let guestAddress = "172.16.0.2"
  static let hostAddress = "172.16.0.1/30"
  static let tapName = "tap0"

  let name: String
  var path: String { "/run/netns/\(name)" }
  /// The forkd-vmm options that put the NIC on this namespace's TAP.
  var vmmArguments: [String] { ["--netns", path, "--tap", Self.tapName] }

  static func markerDirectory(_ config: SupervisorConfig) -> String { config.runDirectory + "/netns" }

  /// Creates the namespace and its TAP; on failure removes whatever part was made.
  static func create(for sandboxID: String, config: SupervisorConfig) throws(APIError) -> ChildNetwork {
    let network = ChildNetwork(name: "forkd-" + sandboxID)
    let marker = markerDirectory(config) + "/" + network.name
    do {
      try FileSystem.makeDirectories(markerDirectory(config))
      try FileSystem.writeAtomically(marker, [])
    } catch {
      throw .internalError("cannot record the namespace \(network.name) in \(markerDirectory(config)): \(error)")
    }
    // The TAP's setup is one `ip -batch` run inside the namespace: two processes per child, not four.
    let steps: [[String]] = [["netns", "add", network.name], ["-n", network.name, "-batch", batchPath(config)]]
    for step in steps {
      if let failure = runIP(step) {
        network.remove(config: config)
        throw .internalError(
          "cannot set up the child's network namespace: ip \(step.joined(separator: " ")): \(failure)")
      }
    }
    return network
  }

  /// Deletes the namespace (its TAP goes with it) and the marker.
  func remove(config: SupervisorConfig) {
    if FileSystem.exists(path) { _ = Self.runIP(["netns", "del", name]) }
    _ = try? FileSystem.unlink(Self.markerDirectory(config) + "/" + name)
  }

  static func batchPath(_ config: SupervisorConfig) -> String { config.runDirectory + "/netns-tap.batch" }

  /// Writes the `ip -batch` file that sets up a namespace's TAP (once, when the supervisor starts).
  static func prepare(config: SupervisorConfig) throws(SyscallError) {
    let lines = [
      "tuntap add dev \(tapName) mode tap", "addr add \(hostAddress) dev \(tapName)", "link set \(tapName) up",
    ]
    try FileSystem.writeAtomically(batchPath(config), Array((lines.joined(separator: "\n") + "\n").utf8))
  }

  /// Removes every namespace a previous supervisor with this run directory recorded.
  static func removeLeftovers(config: SupervisorConfig) -> Int {
    var removed = 0
    for name in (try? FileSystem.listDirectory(markerDirectory(config))) ?? [] {
      // Only names this supervisor makes: a planted marker must not delete anything else.
      guard name.hasPrefix("forkd-"), isSandboxID(String(name.dropFirst(6))) else { continue }
      ChildNetwork(name: name).remove(config: config)
      removed += 1
    }
    return removed
  }

  /// Runs `ip ARGS`; nil on success, else what went wrong.
  static func runIP(_ arguments: [String]) -> String? {
    let candidates: [String] = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
    guard let ip = candidates.first(where: { access($0, X_OK) == 0 })
    else { return "the ip command (iproute2) is not installed" }
    do {
      let pid = try ChildProcess.spawn(path: ip, arguments: ["ip"] + arguments)
      guard let end = try ChildProcess.wait(pid) else { return "ip did not end" }
      return end == .exited(0) ? nil : "ip \(end)"
    } catch {
      return "\(error)"
    }
  }
}
