import Foundation
import Syscalls
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// packaging/: the units pass `systemd-analyze verify`, tmpfiles/sysusers entries apply to a
/// scratch root, and install.sh stages a complete tree with --destdir.
///
/// `systemd-analyze verify` checks that ExecStart= names an executable file, and
/// /usr/local/bin/forkd-supervisor does not exist on a build host. The tests verify copies whose
/// ExecStart= path (arguments unchanged) points at a stub executable the test creates; nothing
/// else in the units is changed. `--root=` is no way out: with it, verify looks for sysinit.target
/// & co inside the root as well. verify exits 0 even for settings it cannot parse (it warns and
/// ignores them), so any output at all counts as a failure.
@Suite("packaging", .serialized)
struct PackagingTests {
  static let packaging: String = {
    // Tests/SystemdTests/PackagingTests.swift → the repository root.
    var path = #filePath
    for _ in 0..<3 { path = Tool.parent(of: path) }
    return path + "/packaging"
  }()

  static func unitText(_ name: String) throws -> String {
    String(decoding: try FileSystem.readFile(packaging + "/" + name), as: UTF8.self)
  }

  /// "Key=value" settings of a unit (comments and section headers skipped), in order.
  static func settings(_ text: String) -> [(key: String, value: String)] {
    text.split(separator: "\n").compactMap { line in
      let trimmed = line.trimmingPrefix(while: { $0 == " " })
      guard !trimmed.isEmpty, !trimmed.hasPrefix("#"), !trimmed.hasPrefix(";"), !trimmed.hasPrefix("["),
        let equals = trimmed.firstIndex(of: "=")
      else { return nil }
      return (String(trimmed[..<equals]), String(trimmed[trimmed.index(after: equals)...]))
    }
  }

  /// Copies of the units in `directory`, ExecStart= pointing at a stub executable there.
  static func verifiableCopies(in directory: TemporaryDirectory, editing: (String) -> String = { $0 }) throws
    -> [String]
  {
    try directory.write("forkd-supervisor", "#!/bin/sh\nexit 0\n", mode: 0o755)
    let service = try unitText("forkd.service").replacingOccurrences(
      of: "ExecStart=/usr/local/bin/forkd-supervisor ", with: "ExecStart=\(directory.path)/forkd-supervisor ")
    try directory.write("forkd.service", editing(service))
    try directory.write("forkd.socket", try unitText("forkd.socket"))
    return [directory.path + "/forkd.socket", directory.path + "/forkd.service"]
  }

  /// `systemd-analyze verify --man=no units…`. Run as root, verify (a system manager in test
  /// mode) touches /run/systemd/systemd-units-load; it runs in a private mount namespace with a
  /// tmpfs over /run/systemd so that nothing on the machine changes, or, where no mount namespace
  /// can be made, removes that file afterwards if it did not exist before.
  static func verify(_ units: [String]) throws -> Tool.Run {
    let analyze = try #require(Tool.find("systemd-analyze"))
    let arguments = ["verify", "--man=no"] + units
    if geteuid() == 0, TestJournald.canUseMountNamespace, FileSystem.isDirectory("/run/systemd"),
      let unshare = Tool.find("unshare")
    {
      let script = """
        set -e
        mount -t tmpfs -o mode=0755,size=1m forkd-test-run-systemd /run/systemd
        exec "$@"
        """
      return try Tool.run(
        unshare, ["--mount", "--propagation", "private", "/bin/sh", "-c", script, "sh", analyze] + arguments,
        timeoutMS: 60_000)
    }
    let marker = "/run/systemd/systemd-units-load"
    let existed = FileSystem.exists(marker)
    defer { if !existed && geteuid() == 0 { try? FileSystem.unlink(marker) } }
    return try Tool.run(analyze, arguments, timeoutMS: 60_000)
  }

  @Test(
    "forkd.socket and forkd.service pass systemd-analyze verify without a single warning",
    .enabled(if: Tool.find("systemd-analyze") != nil, "needs systemd-analyze (package systemd)"))
  func analyzeVerify() throws {
    let directory = try TemporaryDirectory()
    defer { directory.remove() }
    let run = try Self.verify(try Self.verifiableCopies(in: directory))
    #expect(run.succeeded, "\(run)")
    #expect(run.output.isEmpty, "systemd-analyze verify printed: \(run.output)")
  }

  @Test(
    "the verify check is not vacuous: a broken copy is reported",
    .enabled(if: Tool.find("systemd-analyze") != nil, "needs systemd-analyze (package systemd)"))
  func analyzeVerifyCatchesMistakes() throws {
    let directory = try TemporaryDirectory()
    defer { directory.remove() }
    let units = try Self.verifiableCopies(in: directory) {
      $0.replacingOccurrences(of: "Type=notify", with: "Type=notfy")
        .replacingOccurrences(of: "WatchdogSec=30s", with: "WatchdogSec=thirty")
    }
    let run = try Self.verify(units)
    #expect(run.output.contains("notfy"), "\(run)")
    #expect(run.output.contains("thirty"), "\(run)")
  }

  @Test("the units say what forkd-supervisor relies on")
  func unitContents() throws {
    let service = Self.settings(try Self.unitText("forkd.service"))
    let socket = Self.settings(try Self.unitText("forkd.socket"))
    func values(_ settings: [(key: String, value: String)], _ key: String) -> [String] {
      settings.filter { $0.key == key }.map(\.value)
    }
    #expect(values(service, "Type") == ["notify"])
    #expect(values(service, "NotifyAccess") == ["main"])
    #expect(values(service, "WatchdogSec") == ["30s"])
    #expect(values(service, "ExecStart") == ["/usr/local/bin/forkd-supervisor --state-dir /var/lib/forkd"])
    #expect(values(service, "KillMode") == ["mixed"])
    #expect(values(service, "OOMPolicy") == ["continue"])
    #expect(values(service, "ProtectSystem") == ["strict"])
    #expect(values(service, "ProtectControlGroups") == ["no"])
    #expect(values(service, "ReadWritePaths") == ["/var/lib/forkd /run/forkd"])
    #expect(values(service, "DeviceAllow") == ["/dev/kvm rw", "/dev/userfaultfd rw"])
    #expect(values(service, "RestrictAddressFamilies") == ["AF_UNIX AF_INET AF_INET6"])
    #expect(values(service, "StateDirectory") == ["forkd"])
    #expect(values(service, "RuntimeDirectory") == ["forkd"])
    #expect(values(service, "RuntimeDirectoryPreserve") == ["yes"])
    #expect(!values(service, "TimeoutStopSec").isEmpty)
    #expect(values(socket, "ListenStream") == ["/run/forkd/forkd.sock"])
    #expect(values(socket, "SocketMode") == ["0660"])
    #expect(try Self.unitText("forkd.socket").contains("#ListenStream=127.0.0.1:8889"))
  }

  @Test(
    "tmpfiles.d and sysusers.d entries apply to a scratch root",
    .enabled(
      if: Tool.find("systemd-tmpfiles") != nil && Tool.find("systemd-sysusers") != nil && geteuid() == 0,
      "needs root, systemd-tmpfiles and systemd-sysusers"))
  func tmpfilesAndSysusers() throws {
    let root = try TemporaryDirectory()
    defer { root.remove() }
    let tmpfiles = try Tool.run(
      try #require(Tool.find("systemd-tmpfiles")),
      ["--create", "--root=\(root.path)", Self.packaging + "/forkd-tmpfiles.conf"])
    #expect(tmpfiles.succeeded, "\(tmpfiles)")
    for (path, mode) in [("/run/forkd", 0o755), ("/var/lib/forkd", 0o750)] {
      var info = stat()
      #expect(stat(root.path + path, &info) == 0, "\(path) missing")
      #expect(Int(info.st_mode & 0o7777) == mode, "\(path) mode \(String(info.st_mode & 0o7777, radix: 8))")
    }
    try FileSystem.makeDirectory(root.path + "/etc", mode: 0o755)
    let sysusers = try Tool.run(
      try #require(Tool.find("systemd-sysusers")), ["--root=\(root.path)", Self.packaging + "/forkd-sysusers.conf"])
    #expect(sysusers.succeeded, "\(sysusers)")
    #expect(try root.read("etc/group").split(separator: "\n").contains { $0.hasPrefix("forkd:x:") })
  }

  @Test("install.sh --destdir stages binaries, units (prefix applied), tmpfiles, sysusers and docs")
  func installScript() throws {
    let build = try TemporaryDirectory("forkd-build")
    let destination = try TemporaryDirectory("forkd-destdir")
    defer {
      build.remove()
      destination.remove()
    }
    for binary in ["forkd-supervisor", "forkd-vmm", "forkd-pager", "forkd"] {
      try build.write(binary, "#!/bin/sh\necho \(binary)\n", mode: 0o755)
    }
    let run = try Tool.run(
      "/bin/bash",
      [
        Self.packaging + "/install.sh", "--build-dir", build.path, "--destdir", destination.path, "--prefix",
        "/opt/forkd",
      ])
    #expect(run.succeeded, "\(run)")
    let root = destination.path
    for binary in ["forkd-supervisor", "forkd-vmm", "forkd-pager", "forkd"] {
      #expect(access(root + "/opt/forkd/bin/" + binary, X_OK) == 0, "\(binary) not installed: \(run)")
    }
    #expect(!FileSystem.exists(root + "/opt/forkd/bin/forkd-systemd-probe"), "optional binaries only when built")
    for file in [
      "/etc/systemd/system/forkd.socket", "/etc/systemd/system/forkd.service", "/etc/tmpfiles.d/forkd.conf",
      "/etc/sysusers.d/forkd.conf", "/opt/forkd/share/doc/forkd/systemd.md",
    ] {
      #expect(FileSystem.exists(root + file), "\(file) not installed: \(run)")
    }
    let service = Self.settings(try destination.read("etc/systemd/system/forkd.service"))
    #expect(
      service.filter { $0.key == "ExecStart" }.map(\.value) == [
        "/opt/forkd/bin/forkd-supervisor --state-dir /var/lib/forkd"
      ])
    #expect(service.filter { $0.key == "Documentation" }.map(\.value) == ["file:/opt/forkd/share/doc/forkd/systemd.md"])

    // The installed units still verify (ExecStart= pointed into the staging tree).
    if Tool.find("systemd-analyze") != nil {
      let text = try destination.read("etc/systemd/system/forkd.service").replacingOccurrences(
        of: "ExecStart=/opt/forkd/bin/", with: "ExecStart=\(root)/opt/forkd/bin/")
      try destination.write("etc/systemd/system/forkd.service", text)
      let verify = try Self.verify([
        root + "/etc/systemd/system/forkd.socket", root + "/etc/systemd/system/forkd.service",
      ])
      #expect(verify.succeeded && verify.output.isEmpty, "\(verify)")
    }

    // A missing required binary is an error, not a half install.
    FileSystem.removeTree(build.path + "/forkd-pager")
    let incomplete = try Tool.run(
      "/bin/bash", [Self.packaging + "/install.sh", "--build-dir", build.path, "--destdir", root + "/x"])
    #expect(incomplete.termination == .exited(1), "\(incomplete)")
    #expect(incomplete.output.contains("forkd-pager is missing"))
  }
}
