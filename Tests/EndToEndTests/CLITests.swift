import Protocol
import Syscalls
import Testing
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// Runs the forkd CLI; returns its exit status and stdout.
func forkdCLI(_ arguments: [String], scratch: Scratch) throws -> (status: ChildProcess.Termination?, output: String) {
  let path = try ForkdBinaries.path(of: "forkd")
  let outPath = scratch.path + "/cli-\(UInt32.random(in: 0...UInt32.max)).out"
  let out = try FileDescriptor.open(outPath, [.writeOnly, .create])
  let err = try FileDescriptor.open(outPath + ".err", [.writeOnly, .create])
  let pid = try ChildProcess.spawn(path: path, arguments: ["forkd"] + arguments, stdoutFD: out, stderrFD: err)
  out.close()
  err.close()
  let status = ChildProcess.waitOrKill(pid, timeoutMS: 120_000)
  return (status, String(decoding: try FileSystem.readFile(outPath), as: UTF8.self))
}

@Suite("forkd CLI against a running supervisor", .serialized)
struct CLITests {
  @Test(
    "forkd demo: the daemon flow spawns, pings and cleans up; --direct checksums every child", arguments: [false, true])
  func demo(direct: Bool) throws {
    let scratch = try Scratch("demo")
    let (status, out) = try forkdCLI(
      ["demo", "--children", "6", "--pages", "64", "--memory-mib", "32", "--work-dir", scratch.path]
        + (direct ? ["--direct", "--backend", "uffd"] : []), scratch: scratch)
    #expect(status == .exited(0), "\(out)")
    if direct {
      #expect(out.contains("all 6 children returned the parent's checksum"), "\(out)")
    } else {
      #expect(out.contains("all 6 of 6 answered"), "\(out)")
      #expect(out.contains("no process left"), "\(out)")
      #expect(out.contains("all 6 children answered with the parent's counter 41"), "\(out)")
    }
    // Everything the demo made is gone: only the CLI's own output files remain.
    let left = try FileSystem.listDirectory(scratch.path).filter { !$0.hasPrefix("cli-") }
    #expect(left.isEmpty, "left behind: \(left)")
  }

  @Test("snapshot create, spawn, ls, ping, branch, info, rm — with --json parsed, and meaningful exit codes")
  func endToEnd() throws {
    let sup = try TestSupervisor("cli")
    let host = ["--host", sup.socket]
    func run(_ args: [String]) throws -> (ChildProcess.Termination?, String) {
      try forkdCLI(args + host, scratch: sup.scratch)
    }

    var (status, out) = try run(["snapshot", "create", "base", "--memory-mib", "32", "--fill-pages", "16", "--json"])
    #expect(status == .exited(0), "\(out)")
    #expect(try JSONValue.parse(out, source: "cli")["tag"] == .string("base"))

    (status, out) = try run(["spawn", "base", "-n", "3", "--json"])
    #expect(status == .exited(0))
    let ids = try #require(try JSONValue.parse(out, source: "cli").arrayValue).compactMap { $0["id"]?.stringValue }
    #expect(ids.count == 3)

    (status, out) = try run(["fork", "base", "--json"])  // the alias
    #expect(status == .exited(0))

    (status, out) = try run(["ls", "--json"])
    #expect(try JSONValue.parse(out, source: "cli").arrayValue?.count == 4)
    (status, out) = try run(["ls"])
    #expect(out.contains("ID") && out.contains(ids[0]), "a table for people")

    (status, out) = try run(["ping", ids[0], "--json"])
    #expect(try JSONValue.parse(out, source: "cli")["pong"] == .bool(true))

    (status, out) = try run(["branch", ids[1], "--tag", "b1", "--json"])
    #expect(status == .exited(0), "\(out)")
    (status, out) = try run(["snapshot", "info", "b1", "--json"])
    #expect(try JSONValue.parse(out, source: "cli")["parent_tag"] == .string("base"))

    // Exit codes that mean something.
    (status, _) = try run(["ping", "sb-000000000000"])
    #expect(status == .exited(3), "404 → 3")
    (status, _) = try run(["snapshot", "rm", "base"])
    #expect(status == .exited(4), "409 (dependents) → 4")
    (status, _) = try run(["spawn", "base", "-n", "0"])
    #expect(status == .exited(2), "400 → 2")
    (status, _) = try forkdCLI(["ls", "--host", sup.scratch.path + "/no.sock"], scratch: sup.scratch)
    #expect(status == .exited(6), "unreachable → 6")

    (status, _) = try run(["rm"] + ids)
    #expect(status == .exited(0))
    (status, _) = try run(["snapshot", "rm", "base", "--cascade"])
    #expect(status == .exited(0))
    #expect(sup.stop() == .exited(0))
  }

  @Test("forkd cp LOCAL ID:PATH and back: byte for byte; spawn --timeout and snapshot create --vcpus reach the API")
  func copyFiles() throws {
    let sup = try TestSupervisor("cli-cp")
    let host = ["--host", sup.socket]
    func run(_ args: [String]) throws -> (ChildProcess.Termination?, String) {
      try forkdCLI(args + host, scratch: sup.scratch)
    }
    var (status, out) = try run(["snapshot", "create", "cp", "--memory-mib", "16", "--vcpus", "2", "--json"])
    #expect(status == .exited(0), "\(out)")
    #expect(try JSONValue.parse(out, source: "cli")["vcpus"] == .integer(2))
    (status, out) = try run(["spawn", "cp", "--timeout", "600", "--json"])
    #expect(status == .exited(0), "\(out)")
    let child = try #require(try JSONValue.parse(out, source: "cli").arrayValue?.first)
    let id = try #require(child["id"]?.stringValue)
    #expect(child["expires_at_unix"]?.int64Value != nil, "\(out)")

    let local = sup.scratch.path + "/in.bin"
    let content: [UInt8] = (0..<3000).map { UInt8(truncatingIfNeeded: $0 &* 31) } + [0, 0, 0]
    try FileSystem.writeAtomically(local, content, mode: 0o640)
    (status, out) = try run(["cp", local, "\(id):/work/in bin", "--json"])
    #expect(status == .exited(0), "\(out)")
    #expect(try JSONValue.parse(out, source: "cli")["mode"] == .string("0640"))
    (status, out) = try run(["cp", "\(id):/work/in bin", sup.scratch.path + "/out.bin"])
    #expect(status == .exited(0), "\(out)")
    #expect(try FileSystem.readFile(sup.scratch.path + "/out.bin") == content)
    (status, _) = try run(["cp", "\(id):/work/missing", sup.scratch.path + "/x"])
    #expect(status == .exited(3), "404 → 3")
    #expect(!FileSystem.exists(sup.scratch.path + "/x"))
    (status, _) = try run(["cp", local, sup.scratch.path + "/y"])
    #expect(status == .exited(64), "neither side is a sandbox file: a usage error (ArgumentParser's 64)")
    #expect(sup.stop() == .exited(0))
  }
}
