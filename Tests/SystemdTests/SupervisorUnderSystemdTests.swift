import ForkdClient
import Protocol
import Syscalls
import SystemdSupport
import Testing
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// forkd-supervisor with the real systemd tools: systemd-socket-activate passes its socket and a
/// test-owned NOTIFY_SOCKET hears READY; a test-owned journald holds one child's whole story.
@Suite("forkd-supervisor under systemd tools", .serialized)
struct SupervisorUnderSystemdTests {
  static func waitHealthy(_ client: APIClient) -> Bool {
    for _ in 0..<400 {
      if (try? client.request("GET", "/healthz"))?.status == 200 { return true }
      Clock.sleep(milliseconds: 25)
    }
    return false
  }

  @Test("started by systemd-socket-activate: serves on the passed socket and sends READY=1")
  func socketActivated() throws {
    let activate = try #require(Tool.find("systemd-socket-activate"), "systemd-socket-activate is part of systemd")
    let directory = try TemporaryDirectory("forkd-activate")
    defer { directory.remove() }
    let notify = try NotifySocket(path: directory.path + "/notify.sock")
    defer { notify.close() }
    let socket = directory.path + "/forkd.sock"
    let log = try FileDescriptor.open(directory.path + "/log", [.writeOnly, .create])
    let environment = SystemdEnvironment.forChild(ChildProcess.currentEnvironment()) + ["NOTIFY_SOCKET=" + notify.path]
    // systemd-socket-activate passes only the variables named with -E: a sanitizer run's options too.
    let sanitizerOptions: [String] = ["ASAN_OPTIONS", "TSAN_OPTIONS"].filter { (name: String) in getenv(name) != nil }
    let passed: [String] = (["NOTIFY_SOCKET"] + sanitizerOptions).flatMap { (name: String) in ["-E", name] }
    let supervisor: [String] = [
      try ForkdBinaries.path(of: "forkd-supervisor"), "--state-dir", directory.path + "/state", "--run-dir",
      directory.path + "/run", "--socket", directory.path + "/unused.sock",
    ]
    let pid = try ChildProcess.spawn(
      path: activate, arguments: [activate, "-l", socket] + passed + supervisor, environment: environment,
      stdoutFD: log, stderrFD: log)
    log.close()
    defer { _ = ChildProcess.waitOrKill(pid, timeoutMS: 100) }
    let client = APIClient(endpoint: .unix(socket))
    #expect(Self.waitHealthy(client), "\(lastLines(of: directory.path + "/log"))")
    #expect(try client.request("GET", "/version").json?["api"] == .string("v1"))
    #expect(!FileSystem.exists(directory.path + "/unused.sock"), "the activated socket is used instead of binding one")
    let messages = notify.drain(timeoutMS: 2000)
    #expect(messages.contains { $0.contains("READY=1") }, "\(messages)")
    kill(pid, SIGTERM)
    #expect(ChildProcess.waitOrKill(pid, timeoutMS: 20_000) == .exited(0))
    #expect(notify.drain(timeoutMS: 500).contains { $0.contains("STOPPING=1") })
  }

  @Test(
    "journalctl FORKD_SANDBOX_ID=<id> shows lines from the supervisor, the vmm, the pager and the guest",
    .enabled(if: TestJournald.unavailableReason == nil))
  func childStoryInTheJournal() throws {
    let journald = try TestJournald()
    defer { journald.stop() }
    let directory = try TemporaryDirectory("forkd-journal")
    defer { directory.remove() }
    let socket = directory.path + "/forkd.sock"
    let pid = try journald.spawnLogging(
      [
        try ForkdBinaries.path(of: "forkd-supervisor"), "--state-dir", directory.path + "/state", "--run-dir",
        directory.path + "/run", "--socket", socket, "--backend", "uffd",
      ], logPath: directory.path + "/log")
    defer {
      kill(pid, SIGTERM)
      _ = ChildProcess.waitOrKill(pid, timeoutMS: 20_000)
    }
    let client = APIClient(endpoint: .unix(socket))
    #expect(Self.waitHealthy(client), "\(lastLines(of: directory.path + "/log"))")
    #expect(
      try client.request("POST", "/v1/snapshots", body: .object(["tag": .string("base"), "memory_mib": .integer(32)]))
        .status == 201)
    let spawned = try client.request("POST", "/v1/sandboxes", body: .object(["snapshot_tag": .string("base")]))
    let id = try #require(spawned.json?.arrayValue?.first?["id"]?.stringValue, "\(spawned.text)")
    #expect(try client.request("POST", "/v1/sandboxes/\(id)/ping").status == 200)
    // A line on the guest console of this child.
    let agent = try AgentClient(vsockPath: directory.path + "/run/sandboxes/\(id)/vsock.sock")
    #expect(try agent.request(.console(Array("hello from \(id)".utf8))) == .consoleWritten)
    // Stopping the child makes forkd-vmm and forkd-pager log their ends.
    #expect(try client.request("DELETE", "/v1/sandboxes/\(id)").status == 204)

    let entries = try journald.entries(["FORKD_SANDBOX_ID=\(id)"], atLeast: 4, timeoutMS: 10_000)
    let roles = Set(entries.compactMap { $0["FORKD_ROLE"] })
    #expect(roles.isSuperset(of: ["supervisor", "vmm", "pager", "guest"]), "roles: \(roles)")
    #expect(entries.allSatisfy { $0["FORKD_SNAPSHOT_TAG"] == "base" })
    #expect(entries.contains { $0["FORKD_ROLE"] == "guest" && $0["MESSAGE"] == "hello from \(id)" })
    #expect(
      Set(entries.compactMap { $0["SYSLOG_IDENTIFIER"] }).isSuperset(of: ["forkd-vmm", "forkd-pager", "forkd-guest"]))
  }
}
