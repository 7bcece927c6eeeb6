import Protocol
import Testing

@Suite("VMM control protocol")
struct ControlProtocolTests {
  func line(_ s: String) -> [UInt8] { Array(s.utf8) }

  @Test func requestWireFormat() {
    #expect(ControlCodec.encode(.status) == "{\"op\":\"status\"}\n")
    #expect(ControlCodec.encode(.pause) == "{\"op\":\"pause\"}\n")
    #expect(ControlCodec.encode(.resume) == "{\"op\":\"resume\"}\n")
    #expect(ControlCodec.encode(.stop) == "{\"op\":\"stop\"}\n")
    #expect(
      ControlCodec.encode(.snapshot(directory: "/x", parentTag: "t"))
        == "{\"dir\":\"/x\",\"op\":\"snapshot\",\"parent_tag\":\"t\"}\n")
    #expect(ControlCodec.encode(.snapshot(directory: "/x", parentTag: nil)) == "{\"dir\":\"/x\",\"op\":\"snapshot\"}\n")
  }

  @Test func requestRoundTrips() throws {
    for r: ControlRequest in [
      .status, .pause, .resume, .stop, .snapshot(directory: "/var/lib/forkd/snap 1\n", parentTag: "base_1"),
      .snapshot(directory: "rel", parentTag: nil), .snapshot(directory: "/d", parentTag: "p", diff: true),
      .snapshot(directory: "/l", parentTag: "p", live: true),
      .snapshot(directory: "/l", parentTag: nil, live: true, wait: false),
      .snapshotWait(directory: "/l"),
    ] {
      let text = ControlCodec.encode(r)
      #expect(text.hasSuffix("\n"))
      #expect(text.dropLast().contains("\n") == false)
      #expect(try ControlCodec.decodeRequest(line(text)) == r)
      #expect(try ControlCodec.decodeRequest(line(String(text.dropLast()))) == r)
    }
  }

  @Test func decodesDocumentedForms() throws {
    #expect(
      try ControlCodec.decodeRequest(line(#"{"op":"snapshot","dir":"/x","parent_tag":"t"}"#))
        == .snapshot(directory: "/x", parentTag: "t"))
    #expect(
      try ControlCodec.decodeRequest(line(#"{"op":"snapshot","dir":"/x","parent_tag":null}"#))
        == .snapshot(directory: "/x", parentTag: nil))
    #expect(try ControlCodec.decodeRequest(line("{\"op\":\"status\"}\r\n")) == .status)
    #expect(try ControlCodec.decodeRequest(line(#" { "op" : "pause", "future": 1 } "#)) == .pause)
  }

  @Test func snapshotModesAreChecked() {
    for bad in [
      #"{"op":"snapshot","dir":"/x","mode":"partial"}"#, #"{"op":"snapshot","dir":"/x","mode":"diff"}"#,
      #"{"op":"snapshot","dir":"/x","wait":false}"#, #"{"op":"snapshot_wait"}"#,
    ] {
      #expect(throws: ProtocolError.self, "\(bad)") { try ControlCodec.decodeRequest(line(bad)) }
    }
  }

  @Test func unknownOpNamed() {
    let e = #expect(throws: ProtocolError.self) { try ControlCodec.decodeRequest(line(#"{"op":"explode"}"#)) }
    #expect(e?.code == .unknownType)
    #expect(
      e?.message
        == "control request: unknown op \"explode\" (expected status, pause, resume, snapshot, snapshot_wait, stop or attach_pager)"
    )
  }

  @Test func malformedRequests() {
    func bad(_ s: String) -> ProtocolError? {
      #expect(throws: ProtocolError.self, "\(s)") { try ControlCodec.decodeRequest(Array(s.utf8)) }
    }
    #expect(bad("")?.code == .truncated)
    #expect(bad("\n")?.code == .truncated)
    #expect(bad("{}") == ProtocolError(.missingField, "control request: missing field \"op\""))
    #expect(bad(#"{"op":1}"#)?.code == .badField)
    #expect(bad(#"["status"]"#)?.code == .badField)
    #expect(bad(#"{"op":"snapshot"}"#) == ProtocolError(.missingField, "control request: missing field \"dir\""))
    #expect(bad(#"{"op":"snapshot","dir":""}"#)?.code == .badValue)
    #expect(
      bad(#"{"op":"snapshot","dir":"/x","parent_tag":"a/b"}"#)?.message
        == "control request: field \"parent_tag\": expected 1 to 64 characters from A-Z a-z 0-9 _ -, got \"a/b\"")
    #expect(bad(#"{"op":"snapshot","dir":"/x","parent_tag":5}"#)?.code == .badField)
    #expect(bad("{\"op\":\"status\"}\n{\"op\":\"stop\"}\n")?.code == .malformed)
    #expect(bad(#"{"op":"status""#)?.code == .truncated)
    #expect(bad(#"{"op":"status"} x"#)?.code == .malformed)
  }

  @Test func oversizedLineRejected() {
    let big = "{\"op\":\"snapshot\",\"dir\":\"" + String(repeating: "a", count: ControlCodec.maxLineBytes) + "\"}"
    let e = #expect(throws: ProtocolError.self) { try ControlCodec.decodeRequest(Array(big.utf8)) }
    #expect(e?.code == .tooLarge)
    #expect(ControlCodec.maxLineBytes == 65536)
  }

  @Test func responseWireFormat() {
    #expect(ControlCodec.encode(ControlResponse(ok: true)) == "{\"ok\":true,\"result\":{}}\n")
    #expect(
      ControlCodec.encode(ControlResponse(ok: true, result: ["state": .string("running"), "vcpus": .integer(2)]))
        == "{\"ok\":true,\"result\":{\"state\":\"running\",\"vcpus\":2}}\n")
    #expect(
      ControlCodec.encode(.failure(code: "not_paused", message: "pause the VM first"))
        == "{\"error\":{\"code\":\"not_paused\",\"message\":\"pause the VM first\"},\"ok\":false}\n")
  }

  @Test func responseRoundTrips() throws {
    for r: ControlResponse in [
      ControlResponse(ok: true),
      ControlResponse(ok: true, result: ["nested": .object(["a": .array([.integer(1), .null])]), "d": .double(0.25)]),
      .failure(code: "io", message: "write memory.bin: No space left on device\nsecond line"),
      ControlResponse(ok: true, result: ["x": .bool(true)], error: ControlErrorBody(code: "warn", message: "w")),
    ] {
      let text = ControlCodec.encode(r)
      #expect(text.dropLast().contains("\n") == false)
      #expect(try ControlCodec.decodeResponse(Array(text.utf8)) == r)
    }
  }

  @Test func malformedResponses() {
    func bad(_ s: String) -> ProtocolError? {
      #expect(throws: ProtocolError.self, "\(s)") { try ControlCodec.decodeResponse(Array(s.utf8)) }
    }
    #expect(bad("{}") == ProtocolError(.missingField, "control response: missing field \"ok\""))
    #expect(bad(#"{"ok":"yes"}"#)?.code == .badField)
    #expect(bad(#"{"ok":false}"#) == ProtocolError(.missingField, "control response: missing field \"error\""))
    #expect(
      bad(#"{"ok":false,"error":{"code":"x"}}"#)
        == ProtocolError(.missingField, "control response: missing field \"error.message\""))
    #expect(bad(#"{"ok":false,"error":"boom"}"#)?.code == .badField)
    #expect(bad(#"{"ok":true,"result":[]}"#)?.code == .badField)
    #expect(bad("not json")?.code == .malformed)
  }

  @Test func okWithoutResultIsEmpty() throws {
    #expect(try ControlCodec.decodeResponse(Array(#"{"ok":true}"#.utf8)) == ControlResponse(ok: true))
  }
}

@Suite("Line decoder")
struct LineDecoderTests {
  @Test func splitsLines() throws {
    var d = LineDecoder()
    d.feed(Array("{\"op\":\"sta".utf8))
    #expect(try d.next() == nil)
    d.feed(Array("tus\"}\n{\"op\":\"stop\"}\n{".utf8))
    let first = try #require(try d.next())
    #expect(try ControlCodec.decodeRequest(first) == .status)
    #expect(try ControlCodec.decodeRequest(try #require(try d.next())) == .stop)
    #expect(try d.next() == nil)
    #expect(d.bufferedByteCount == 1)
    d.feed(Array("\"op\":\"pause\"}\n".utf8))
    #expect(try ControlCodec.decodeRequest(try #require(try d.next())) == .pause)
  }

  @Test func refusesOverlongLine() throws {
    var d = LineDecoder(maxLineBytes: 10)
    d.feed(Array("0123456789".utf8))
    #expect(throws: Never.self) { try d.next() }
    d.feed([0x41])
    let e = #expect(throws: ProtocolError.self) { try d.next() }
    #expect(e?.code == .tooLarge)

    var exact = LineDecoder(maxLineBytes: 10)
    exact.feed(Array("012345678\n".utf8))
    #expect(try exact.next()?.count == 10)
  }

  @Test func manySmallFeeds() throws {
    var d = LineDecoder()
    var lines: [[UInt8]] = []
    let text = Array((0..<100).map { "{\"op\":\"status\",\"n\":\($0)}\n" }.joined().utf8)
    for b in text {
      d.feed([b])
      while let l = try d.next() { lines.append(l) }
    }
    #expect(lines.count == 100)
    #expect(lines.allSatisfy { $0.last == 0x0A })
  }
}
