import Protocol
import Syscalls
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// The Linux agent's file frames on real files, through its Unix-socket seam.
@Suite("Linux agent: files")
struct LinuxAgentFilesTests {
  @Test("write in pieces, read back byte for byte, list, delete; modes are what was asked")
  func roundTrip() throws {
    let agent = try RunningAgent()
    let c = try agent.connect()
    let dir = agent.scratch.path + "/tree"
    let path = Array((dir + "/sub/blob.bin").utf8)
    var blob: [UInt8] = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 13) }
    blob.replaceSubrange(10..<5000, with: [UInt8](repeating: 0, count: 4990))
    // Missing parent directories are made; the second piece lands at its offset.
    #expect(
      try c.call(.fileWrite(path: path, mode: 0o600, offset: 0, truncate: true, data: Array(blob[..<200_000])))
        == .fileWritten(size: 200_000))
    #expect(
      try c.call(.fileWrite(path: path, mode: 0o600, offset: 200_000, truncate: false, data: Array(blob[200_000...])))
        == .fileWritten(size: 300_000))
    #expect(try FileSystem.readFile(dir + "/sub/blob.bin") == blob)
    var st = stat()
    #expect(stat(dir + "/sub/blob.bin", &st) == 0 && st.st_mode & 0o7777 == 0o600)

    var back: [UInt8] = []
    while back.count < blob.count {
      guard case .fileData(let d) = try c.call(.fileRead(path: path, offset: UInt64(back.count), maxBytes: 65_536))
      else {
        Issue.record("expected file data")
        return
      }
      #expect(d.size == 300_000 && d.mode == 0o600 && d.data.count <= 65_536)
      if d.data.isEmpty { break }
      back += d.data
    }
    #expect(back == blob)

    // Truncate replaces the content and the mode.
    #expect(
      try c.call(.fileWrite(path: path, mode: 0o644, offset: 0, truncate: true, data: [1, 0, 2]))
        == .fileWritten(size: 3))
    #expect(
      try c.call(.fileRead(path: path, offset: 0, maxBytes: 100))
        == .fileData(AgentFileData(size: 3, mode: 0o644, data: [1, 0, 2])))

    guard case .fileList(let entries) = try c.call(.fileList(path: Array((dir + "/sub").utf8))) else {
      Issue.record("expected a listing")
      return
    }
    #expect(entries == [AgentFileEntry(name: Array("blob.bin".utf8), kind: .file, mode: 0o644, size: 3)])
    guard case .fileList(let top) = try c.call(.fileList(path: Array(dir.utf8))) else {
      Issue.record("expected a listing")
      return
    }
    #expect(top.map(\.name) == [Array("sub".utf8)] && top.first?.kind == .directory)

    #expect(try c.call(.fileDelete(path: path)) == .fileDeleted)
    #expect(!FileSystem.exists(dir + "/sub/blob.bin"))
  }

  @Test("missing paths are error 6, directories and bad arguments error 3, and the agent keeps serving")
  func errors() throws {
    let agent = try RunningAgent()
    let c = try agent.connect()
    let missing = Array((agent.scratch.path + "/nope").utf8)
    #expect(try c.call(.fileRead(path: missing, offset: 0, maxBytes: 10)).agentErrorCode == AgentError.notFound)
    #expect(try c.call(.fileDelete(path: missing)).agentErrorCode == AgentError.notFound)
    #expect(try c.call(.fileList(path: missing)).agentErrorCode == AgentError.notFound)
    let dir = Array(agent.scratch.path.utf8)
    #expect(try c.call(.fileRead(path: dir, offset: 0, maxBytes: 10)).agentErrorCode == AgentError.badArgument)
    #expect(try c.call(.fileDelete(path: dir)).agentErrorCode == AgentError.badArgument)
    #expect(
      try c.call(.fileWrite(path: dir, mode: 0o644, offset: 0, truncate: true, data: [])).agentErrorCode
        == AgentError.badArgument)
    #expect(try c.call(.fileList(path: Array("relative".utf8))).agentErrorCode == AgentError.badArgument)
    #expect(try c.call(.fileList(path: dir + [0, 0x61])).agentErrorCode == AgentError.badArgument)
    let file = Array((agent.scratch.path + "/f").utf8)
    #expect(
      try c.call(.fileWrite(path: file, mode: 0o644, offset: 0, truncate: true, data: [1])) == .fileWritten(size: 1))
    #expect(try c.call(.fileList(path: file)).agentErrorCode == AgentError.badArgument)
    #expect(
      try c.call(.fileWrite(path: file, mode: 0o644, offset: 5, truncate: false, data: [1])).agentErrorCode
        == AgentError.badArgument)
    #expect(
      try c.call(.fileWrite(path: file, mode: 0o10000, offset: 0, truncate: true, data: [])).agentErrorCode
        == AgentError.badArgument)
    #expect(try c.call(.fileRead(path: file, offset: 2, maxBytes: 1)).agentErrorCode == AgentError.badArgument)
    #expect(try c.call(.ping).isPong)
  }
}
