import Protocol
import Testing

@Suite("API: files query, timeouts, vcpus")
struct FilesAPITests {
  @Test func pathsAreAbsoluteAndNormalised() throws {
    #expect(try SandboxFiles.path("/etc/motd") == "/etc/motd")
    #expect(try SandboxFiles.path("/") == "/")
    #expect(try SandboxFiles.path("/etc/") == "/etc")
    #expect(try SandboxFiles.path("/a%20b/%C3%A9") == "/a b/é")
    // A combining mark right after "/" (fuzz finding): still absolute, kept byte for byte.
    #expect(try SandboxFiles.path("/\u{07AF}x/") == "/\u{07AF}x")
    #expect(Array(try SandboxFiles.path("/%DE%AF%EF%BF%BD%7DC/.%01").utf8).first == UInt8(ascii: "/"))
    for bad in ["etc/motd", "", "/a//b", "/a/./b", "/a/..", "/..", "/a%00b", "/a%2", "/a%zz", "//"] {
      #expect(throws: ProtocolError.self, "\(bad)") { try SandboxFiles.path(bad) }
    }
    #expect(throws: ProtocolError.self) { try SandboxFiles.path(nil) }
    #expect(throws: ProtocolError.self) { try SandboxFiles.path("/" + String(repeating: "a", count: 4096)) }
    #expect(throws: ProtocolError.self) { try SandboxFiles.path("/%FF") }  // not UTF-8
    let e = #expect(throws: ProtocolError.self) { try SandboxFiles.path("rel/x") }
    #expect(e?.message == #"query: parameter "path": expected an absolute path, got "rel/x""#)
  }

  @Test func modesAreOctalPermissionBits() throws {
    #expect(try SandboxFiles.mode(nil) == 0o644)
    #expect(try SandboxFiles.mode("0600") == 0o600)
    #expect(try SandboxFiles.mode("755") == 0o755)
    #expect(try SandboxFiles.mode("7777") == 0o7777)
    for bad in ["", "8", "10000", "0x1ff", "-1", "rw", "0000000644"] {
      #expect(throws: ProtocolError.self, "\(bad)") { try SandboxFiles.mode(bad) }
    }
  }

  @Test func timeoutsAndVCPUs() throws {
    #expect(try SandboxTimeout.decode(Array(#"{"timeout_secs":3}"#.utf8)) == 3)
    for bad in [
      #"{}"#, #"{"timeout_secs":0}"#, #"{"timeout_secs":-5}"#, #"{"timeout_secs":"3"}"#, #"{"timeout_secs":604801}"#,
    ] {
      let e = #expect(throws: ProtocolError.self, "\(bad)") { try SandboxTimeout.decode(Array(bad.utf8)) }
      #expect(e?.message.contains("timeout_secs") == true, "\(e?.message ?? "")")
    }
    #expect(try SpawnRequest.decode(Array(#"{"snapshot_tag":"a","timeout_secs":9}"#.utf8)).timeoutSeconds == 9)
    #expect(try SpawnRequest.decode(Array(#"{"snapshot_tag":"a"}"#.utf8)).timeoutSeconds == nil)
    #expect(try CreateSnapshotRequest.decode(Array(#"{"tag":"a"}"#.utf8)).vcpus == 1)
    #expect(try CreateSnapshotRequest.decode(Array(#"{"tag":"a","vcpus":8}"#.utf8)).vcpus == 8)
    for bad in ["0", "9", "-1", "1.5", "\"2\"", "4294967297"] {
      let e = #expect(throws: ProtocolError.self, "\(bad)") {
        try CreateSnapshotRequest.decode(Array(#"{"tag":"a","vcpus":\#(bad)}"#.utf8))
      }
      #expect(e?.message.contains("vcpus") == true, "\(e?.message ?? "")")
    }
  }

  @Test func base64() {
    #expect(Base64.decode("") == [])
    #expect(Base64.decode("AA==") == [0])
    #expect(Base64.decode("AAE") == [0, 1])  // padding may be left out
    #expect(Base64.decode("aGVsbG8=") == Array("hello".utf8))
    #expect(Base64.decode("+/8A") == [0xFB, 0xFF, 0x00])
    for bad in ["A", "A===", "AB=C", "AAE=AAAA", "AB==", "****", "aGVsbG8=\n", "AA==" + "="] {
      #expect(Base64.decode(bad) == nil, "\(bad)")
    }
  }

  @Test func writeFileWarmup() throws {
    let r = try CreateSnapshotRequest.decode(
      Array(#"{"tag":"a","warmup":[{"op":"write_file","path":"/etc/x/","content":"hi","mode":"600"}]}"#.utf8))
    #expect(r.warmup == [.writeFile(path: "/etc/x", content: Array("hi".utf8), mode: 0o600)])
    #expect(
      r.warmup[0].agentRequest
        == .fileWrite(path: Array("/etc/x".utf8), mode: 0o600, offset: 0, truncate: true, data: Array("hi".utf8)))
    let binary = try CreateSnapshotRequest.decode(
      Array(#"{"tag":"a","warmup":[{"op":"write_file","path":"/b","content_b64":"AAEA/w=="}]}"#.utf8))
    #expect(binary.warmup == [.writeFile(path: "/b", content: [0, 1, 0, 0xFF], mode: 0o644)])
    for bad in [
      #"{"op":"write_file","path":"/x","content":"","content_b64":""}"#,
      #"{"op":"write_file","path":"/x","content_b64":"%%"}"#,
      #"{"op":"write_file","path":"x","content":""}"#, #"{"op":"write_file","path":"/x"}"#,
      #"{"op":"write_file","path":"/x","content":"","mode":"9"}"#,
    ] {
      #expect(throws: ProtocolError.self, "\(bad)") {
        try CreateSnapshotRequest.decode(Array(#"{"tag":"a","warmup":[\#(bad)]}"#.utf8))
      }
    }
  }
}
