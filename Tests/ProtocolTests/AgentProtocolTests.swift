import Protocol
import Testing

@Suite("Agent protocol")
struct AgentProtocolTests {
  static let requests: [AgentRequest] = [
    .ping, .echo([]), .echo([1, 2, 3]), .fill(pages: 1024, seed: 0xDEAD_BEEF), .checksum(pages: .max),
    .counter(delta: -5), .counter(delta: .max), .kvSet(key: Array("k".utf8), value: Array("value".utf8)),
    .kvSet(key: [], value: []), .kvGet(key: Array("k".utf8)), .exit(code: 3),
    .exec(args: ["/bin/echo", "hé llo", ""], timeoutSeconds: 30), .exec(args: [], timeoutSeconds: 0),
    .console(Array("a console line".utf8)), .console([]), .attack(kind: 7),
    .eval(code: "x = 41\nx + 1", timeoutSeconds: 30), .eval(code: "", timeoutSeconds: 0),
    .exec(
      args: ["/bin/cat"], timeoutSeconds: 5,
      options: ExecOptions(environment: ["A=1", "B="], workingDirectory: "/tmp", stdin: [0, 1, 2])),
    .exec(args: ["env"], timeoutSeconds: 5, options: ExecOptions(stdin: Array("in".utf8))),
    .fileWrite(path: Array("/etc/x".utf8), mode: 0o644, offset: 7, truncate: true, data: [0, 0xFF, 0, 1]),
    .fileRead(path: Array("/etc/x".utf8), offset: .max, maxBytes: 2036), .fileList(path: Array("/".utf8)),
    .fileDelete(path: Array("/a b".utf8)), .vcpuStatus,
  ]

  static func answer(_ r: AgentRequest) -> AgentResponse {
    switch r {
    case .ping: return .pong(AgentPong(kind: AgentPong.linuxKind, agentVersion: 1, requestsServed: 99, counter: 7))
    case .echo(let b): return .echo(b)
    case .fill(let pages, _): return .filled(pages: pages)
    case .checksum: return .checksum(0x0123_4567_89AB_CDEF)
    case .counter: return .counter(.max)
    case .kvSet: return .kvSet
    case .kvGet(let key): return key.isEmpty ? .kvGet(found: false, value: []) : .kvGet(found: true, value: [0, 1])
    case .exit: return .exiting
    case .exec: return .exec(AgentExecResult(exitCode: -1, stdout: Array("out".utf8), stderr: [], timedOut: true))
    case .console: return .consoleWritten
    case .attack: return .attacking
    case .eval: return .eval(AgentEvalResult(exitCode: 1, result: Array("42".utf8), error: [0xFF], stdout: []))
    case .fileWrite: return .fileWritten(size: 11)
    case .fileRead: return .fileData(AgentFileData(size: 3, mode: 0o600, data: [0, 0, 0xFE]))
    case .fileList:
      return .fileList([
        AgentFileEntry(name: Array("etc".utf8), kind: .directory, mode: 0o755, size: 0),
        AgentFileEntry(name: [], kind: .other, mode: 0, size: .max),
      ])
    case .fileDelete: return .fileDeleted
    case .vcpuStatus:
      return .vcpuStatus([AgentVCPUStatus(answered: true, runs: 5), AgentVCPUStatus(answered: false, runs: 0)])
    }
  }

  func frame(_ bytes: [UInt8]) throws -> AgentFrame {
    var d = AgentFrameDecoder()
    d.feed(bytes)
    let f = try #require(try d.next())
    #expect(try d.next() == nil)
    return f
  }

  @Test func constants() {
    #expect(AgentProtocol.vsockPort == 1024)
    #expect(AgentProtocol.magic == 0x4144_4b46)
    #expect(AgentProtocol.version == 1)
    #expect(AgentProtocol.headerSize == 16)
    #expect(AgentProtocol.maxPayload == 1 << 20)
  }

  @Test func headerLayout() {
    let bytes = AgentCodec.encode(.fill(pages: 2, seed: 3), id: 0x0A0B_0C0D)
    #expect(Array(bytes[0..<4]) == Array("FKDA".utf8))  // magic in memory order
    #expect(bytes[4] == 1)
    #expect(bytes[5] == 0x03)
    #expect(bytes[6] == 0 && bytes[7] == 0)
    #expect(Array(bytes[8..<12]) == [0x0D, 0x0C, 0x0B, 0x0A])
    #expect(Array(bytes[12..<16]) == [16, 0, 0, 0])
    #expect(Array(bytes[16...]) == [2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0])
  }

  @Test func payloadLayouts() {
    #expect(AgentCodec.payload(of: .ping) == [])
    #expect(AgentCodec.payload(of: .counter(delta: -1)) == Array(repeating: 0xFF, count: 8))
    #expect(AgentCodec.payload(of: .kvSet(key: [0x6B], value: [1, 2])) == [1, 0, 0x6B, 1, 2])
    #expect(AgentCodec.payload(of: .kvGet(key: [0x6B, 0x6C])) == [0x6B, 0x6C])
    #expect(AgentCodec.payload(of: .exit(code: 0x0102_0304)) == [4, 3, 2, 1])
    #expect(
      AgentCodec.payload(of: .exec(args: ["ab"], timeoutSeconds: 5))
        == [5, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0x61, 0x62])
    #expect(
      AgentCodec.payload(of: .pong(AgentPong(kind: 1, agentVersion: 2, requestsServed: 3, counter: 4)))
        == [1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0])
    #expect(AgentCodec.payload(of: .kvGet(found: true, value: [9])) == [1, 9])
    #expect(AgentCodec.payload(of: .kvGet(found: false, value: [])) == [0])
    #expect(
      AgentCodec.payload(
        of: .exec(AgentExecResult(exitCode: -2, stdout: [0x6F], stderr: [0x65, 0x65], timedOut: false)))
        == [0xFE, 0xFF, 0xFF, 0xFF, 0, 1, 0, 0, 0, 0x6F, 2, 0, 0, 0, 0x65, 0x65])
    #expect(
      AgentCodec.payload(of: .error(AgentError(code: 3, message: "no"))) == [3, 0, 0, 0, 2, 0, 0, 0, 0x6E, 0x6F])
    // exec with options: after the arguments, u32 envc + strings, cwd, stdin (each length-prefixed).
    #expect(
      AgentCodec.payload(
        of: .exec(args: ["a"], timeoutSeconds: 1, options: ExecOptions(environment: ["X=1"], stdin: [7])))
        == [
          1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0x61, 1, 0, 0, 0, 3, 0, 0, 0, 0x58, 0x3D, 0x31, 0, 0, 0, 0, 1, 0, 0, 0, 7,
        ])
    // eval: u32 timeout, u32 length + code; answer i32 status, then result, error, stdout.
    #expect(AgentCodec.payload(of: .eval(code: "1", timeoutSeconds: 2)) == [2, 0, 0, 0, 1, 0, 0, 0, 0x31])
    #expect(
      AgentCodec.payload(of: .eval(AgentEvalResult(exitCode: -1, result: [0x32], error: [], stdout: [0x6F])))
        == [0xFF, 0xFF, 0xFF, 0xFF, 1, 0, 0, 0, 0x32, 0, 0, 0, 0, 1, 0, 0, 0, 0x6F])
    #expect(AgentCodec.payload(of: .kvSet) == [])
    #expect(AgentCodec.payload(of: .exiting) == [])
  }

  @Test func typeBytes() {
    #expect(
      Self.requests.map(\.frameType)
        == [1, 2, 2, 3, 4, 5, 5, 6, 6, 7, 8, 9, 9, 10, 10, 11, 0x20, 0x20, 9, 9, 12, 13, 14, 15, 16])
    for r in Self.requests {
      #expect(Self.answer(r).frameType == r.frameType | 0x80)
    }
    #expect(AgentResponse.error(AgentError(code: 1, message: "")).frameType == 0xFF)
  }

  @Test func requestRoundTrips() throws {
    for (i, r) in Self.requests.enumerated() {
      let f = try frame(AgentCodec.encode(r, id: UInt32(i) + 100))
      #expect(f.requestID == UInt32(i) + 100)
      #expect(f.type == r.frameType)
      #expect(try AgentCodec.decodeRequest(f) == r)
    }
  }

  @Test func responseRoundTrips() throws {
    for (i, r) in Self.requests.enumerated() {
      let response = Self.answer(r)
      let f = try frame(AgentCodec.encode(response, to: r, id: UInt32(i)))
      #expect(f.requestID == UInt32(i))
      #expect(try AgentCodec.decodeResponse(f, for: r) == response)
      // An error answers any request.
      let err = AgentResponse.error(AgentError(code: AgentError.unsupported, message: "exec: not in the test guest"))
      let ef = try frame(AgentCodec.encode(err, to: r, id: 9))
      #expect(ef.type == 0xFF)
      #expect(try AgentCodec.decodeResponse(ef, for: r) == err)
    }
  }

  @Test func responseToOtherRequestRejected() {
    let f = AgentFrame(type: 0x84, requestID: 1, payload: [0, 0, 0, 0, 0, 0, 0, 0])
    let e = #expect(throws: ProtocolError.self) { try AgentCodec.decodeResponse(f, for: .fill(pages: 1, seed: 1)) }
    #expect(e?.code == .unexpectedType)
    #expect(
      e?.message
        == "agent response 0x84 (checksum) id 1: expected a response of type 0x83 (fill) to the request, got 0x84 (checksum)"
    )
    // A request echoed back is not a response.
    #expect(throws: ProtocolError.self) {
      try AgentCodec.decodeResponse(AgentFrame(type: 0x01, requestID: 1, payload: []), for: .ping)
    }
  }

  @Test func malformedResponsePayloads() {
    func bad(_ type: UInt8, _ payload: [UInt8], _ r: AgentRequest) -> ProtocolError? {
      #expect(throws: ProtocolError.self) {
        try AgentCodec.decodeResponse(AgentFrame(type: type, requestID: 0, payload: payload), for: r)
      }
    }
    #expect(bad(0x81, Array(repeating: 0, count: 23), .ping)?.code == .truncated)
    #expect(bad(0x81, Array(repeating: 0, count: 25), .ping)?.code == .malformed)
    #expect(
      bad(0x83, [1, 2, 3], .fill(pages: 1, seed: 0))?.message
        == "agent response 0x83 (fill) id 0: truncated at offset 0: need 8 bytes, 3 left")
    #expect(bad(0x84, [], .checksum(pages: 1))?.code == .truncated)
    #expect(bad(0x85, Array(repeating: 0, count: 9), .counter(delta: 1))?.code == .malformed)
    #expect(bad(0x86, [0], .kvSet(key: [], value: []))?.code == .malformed)
    #expect(bad(0x87, [], .kvGet(key: []))?.code == .truncated)
    #expect(bad(0x87, [2], .kvGet(key: []))?.code == .badValue)
    #expect(bad(0x88, [1], .exit(code: 0))?.code == .malformed)
    #expect(bad(0x89, [0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0], .exec(args: [], timeoutSeconds: 1))?.code == .badValue)
    #expect(bad(0x89, [0, 0, 0, 0, 0, 9, 0, 0, 0, 1], .exec(args: [], timeoutSeconds: 1))?.code == .truncated)
    #expect(bad(0x89, [0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF], .exec(args: [], timeoutSeconds: 1))?.code == .tooLarge)
    #expect(bad(0xFF, [1, 0, 0, 0, 5, 0, 0, 0, 0x61], .ping)?.code == .truncated)
    #expect(bad(0xFF, [1, 0, 0], .ping)?.code == .truncated)
    #expect(bad(0xFF, [1, 0, 0, 0, 0, 0, 0, 0, 0x61], .ping)?.code == .malformed)
  }

  @Test func errorMessagesAreDecodedLossily() throws {
    let f = AgentFrame(type: 0xFF, requestID: 0, payload: [2, 0, 0, 0, 2, 0, 0, 0, 0x61, 0xFF])
    let r = try AgentCodec.decodeResponse(f, for: .ping)
    guard case .error(let e) = r else {
      Issue.record("expected an error response")
      return
    }
    #expect(e.code == AgentError.unknownType)
    #expect(e.message == "a\u{FFFD}")
    #expect(e.description == "agent error (unknown type): a\u{FFFD}")
  }

  @Test func malformedRequests() {
    func bad(_ type: UInt8, _ payload: [UInt8]) -> ProtocolError? {
      #expect(throws: ProtocolError.self) {
        try AgentCodec.decodeRequest(AgentFrame(type: type, requestID: 5, payload: payload))
      }
    }
    let unknown = bad(0x42, [])
    #expect(unknown == ProtocolError(.unknownType, "agent request 0x42 id 5: unknown request type 0x42"))
    #expect(AgentError(unknown!).code == AgentError.unknownType)
    #expect(bad(0x81, [])?.code == .unknownType)  // a response is not a request
    #expect(bad(0x00, [])?.code == .unknownType)
    #expect(bad(0x01, [0])?.code == .malformed)  // ping takes no payload
    #expect(bad(0x03, Array(repeating: 0, count: 15))?.code == .truncated)
    #expect(bad(0x03, Array(repeating: 0, count: 17))?.code == .malformed)
    #expect(bad(0x04, [])?.code == .truncated)
    #expect(bad(0x05, [1, 2, 3, 4, 5, 6, 7])?.code == .truncated)
    #expect(bad(0x06, [5])?.code == .truncated)
    #expect(bad(0x06, [5, 0, 1, 2])?.code == .truncated)  // key longer than payload
    #expect(bad(0x08, [1, 0, 0])?.code == .truncated)
    #expect(bad(0x09, [1, 0, 0, 0])?.code == .truncated)
    let argc = bad(0x09, [1, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF])
    #expect(argc?.code == .truncated)
    #expect(argc?.message.contains("argc 4294967295") == true)
    #expect(bad(0x09, [1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0xC3, 0x28])?.code == .badValue)  // invalid UTF-8 arg
    #expect(bad(0x09, [1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0x61])?.code == .truncated)
    #expect(AgentError(bad(0x04, [])!).code == AgentError.badFrame)
    #expect(bad(0x02, Array(repeating: 0, count: AgentProtocol.maxPayload + 1))?.code == .tooLarge)
  }

  @Test func fileAndVCPUPayloadLayouts() {
    #expect(
      AgentCodec.payload(of: .fileWrite(path: [0x2F], mode: 0o644, offset: 2, truncate: true, data: [0, 9]))
        == [2, 0, 0, 0, 0, 0, 0, 0, 0xA4, 1, 0, 0, 1, 1, 0, 0x2F, 0, 9])
    #expect(
      AgentCodec.payload(of: .fileRead(path: [0x2F], offset: 1, maxBytes: 3)) == [
        1, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0x2F,
      ])
    #expect(AgentCodec.payload(of: .fileDelete(path: [0x2F, 0x61])) == [0x2F, 0x61])
    #expect(AgentCodec.payload(of: .vcpuStatus) == [])
    #expect(
      AgentCodec.payload(of: .fileList([AgentFileEntry(name: [0x61], kind: .file, mode: 0o600, size: 2)]))
        == [1, 0, 0, 0, 1, 0x80, 1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0x61])
    #expect(
      AgentCodec.payload(of: .vcpuStatus([AgentVCPUStatus(answered: true, runs: 3)])) == [
        1, 0, 0, 0, 1, 3, 0, 0, 0, 0, 0, 0, 0,
      ])
  }

  @Test func malformedFileAndVCPUFrames() {
    func badResponse(_ type: UInt8, _ payload: [UInt8], _ r: AgentRequest) -> ProtocolError? {
      #expect(throws: ProtocolError.self) {
        try AgentCodec.decodeResponse(AgentFrame(type: type, requestID: 0, payload: payload), for: r)
      }
    }
    let list = AgentRequest.fileList(path: [0x2F])
    // A count the payload cannot hold is refused before anything is allocated.
    #expect(badResponse(0x8E, [0xFF, 0xFF, 0xFF, 0xFF], list)?.code == .truncated)
    // Entry type 9 is not a kind.
    #expect(badResponse(0x8E, [1, 0, 0, 0, 9] + Array(repeating: 0, count: 14), list)?.code == .badValue)
    // Name length beyond the payload.
    #expect(badResponse(0x8E, [1, 0, 0, 0, 1] + Array(repeating: 0, count: 12) + [5, 0], list)?.code == .truncated)
    #expect(badResponse(0x8D, [1, 2, 3], .fileRead(path: [0x2F], offset: 0, maxBytes: 1))?.code == .truncated)
    #expect(badResponse(0x90, [2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0], .vcpuStatus)?.code == .truncated)
    #expect(badResponse(0x90, [1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0], .vcpuStatus)?.code == .badValue)
    func badRequest(_ type: UInt8, _ payload: [UInt8]) -> ProtocolError? {
      #expect(throws: ProtocolError.self) {
        try AgentCodec.decodeRequest(AgentFrame(type: type, requestID: 1, payload: payload))
      }
    }
    #expect(badRequest(0x0C, Array(repeating: 0, count: 14))?.code == .truncated)
    #expect(badRequest(0x0C, Array(repeating: 0, count: 12) + [2, 0, 0])?.code == .badValue)  // truncate flag 2
    #expect(badRequest(0x0C, Array(repeating: 0, count: 13) + [9, 0, 0x2F])?.code == .truncated)  // path past the end
    #expect(badRequest(0x0D, Array(repeating: 0, count: 11))?.code == .truncated)
    #expect(badRequest(0x10, [0])?.code == .malformed)
  }

  @Test func kvSetValueIsTheRest() throws {
    let r = try AgentCodec.decodeRequest(AgentFrame(type: 0x06, requestID: 0, payload: [2, 0, 0x61, 0x62, 9, 9, 9]))
    #expect(r == .kvSet(key: [0x61, 0x62], value: [9, 9, 9]))
  }

  @Test func agentErrorMapping() {
    #expect(AgentError(ProtocolError(.tooLarge, "x")).code == AgentError.tooLarge)
    #expect(AgentError(ProtocolError(.badValue, "x")).code == AgentError.badArgument)
    #expect(AgentError(ProtocolError(.truncated, "x")) == AgentError(code: AgentError.badFrame, message: "x"))
    #expect(
      [
        AgentError.badFrame, AgentError.unknownType, AgentError.badArgument, AgentError.unsupported,
        AgentError.tooLarge,
      ] == [1, 2, 3, 4, 5])
  }
}

@Suite("Agent frame decoder")
struct AgentFrameDecoderTests {
  @Test func byteAtATime() throws {
    let bytes = AgentCodec.encode(.echo(Array(0..<200)), id: 7)
    var d = AgentFrameDecoder()
    for (i, b) in bytes.enumerated() {
      d.feed([b])
      let f = try d.next()
      if i < bytes.count - 1 {
        #expect(f == nil)
      } else {
        #expect(f == AgentFrame(type: 0x02, requestID: 7, payload: Array(0..<200)))
      }
    }
    #expect(d.bufferedByteCount == 0)
    #expect(try d.next() == nil)
  }

  @Test func severalFramesPerFeedAndSplitsAcrossFeeds() throws {
    var stream: [UInt8] = []
    for id in 0..<50 as Range<UInt32> {
      stream += AgentCodec.encode(.counter(delta: Int64(id)), id: id)
      stream += AgentCodec.encode(.ping, id: id + 1000)
    }
    for chunk in [1, 7, 16, 17, 31, 100, stream.count] {
      var d = AgentFrameDecoder()
      var frames: [AgentFrame] = []
      var i = 0
      while i < stream.count {
        let end = min(i + chunk, stream.count)
        d.feed(stream[i..<end])
        while let f = try d.next() { frames.append(f) }
        i = end
      }
      #expect(frames.count == 100, "chunk \(chunk)")
      #expect(frames[98].requestID == 49)
      #expect(try AgentCodec.decodeRequest(frames[98]) == .counter(delta: 49))
      #expect(frames[99] == AgentFrame(type: 1, requestID: 1049, payload: []))
      #expect(d.bufferedByteCount == 0)
    }
  }

  @Test func badMagicDetectedEarly() {
    var d = AgentFrameDecoder()
    d.feed(Array("CONN".utf8))
    let e = #expect(throws: ProtocolError.self) { try d.next() }
    #expect(e?.code == .badMagic)
    #expect(e?.message == "agent stream: bad magic 0x4e4e4f43 at offset 0, expected 0x41444b46")
    // Sticky: the stream stays rejected.
    #expect(throws: ProtocolError.self) { try d.next() }
  }

  @Test func badMagicAfterGoodFrameReportsStreamOffset() throws {
    var d = AgentFrameDecoder()
    d.feed(AgentCodec.encode(.ping, id: 1) + [0, 0, 0, 0])
    #expect(try d.next() != nil)
    let e = #expect(throws: ProtocolError.self) { try d.next() }
    #expect(e?.message.contains("at offset 16") == true)
  }

  @Test func wrongVersion() {
    var bytes = AgentCodec.encode(.ping, id: 1)
    bytes[4] = 2
    var d = AgentFrameDecoder()
    d.feed(bytes.prefix(5))
    let e = #expect(throws: ProtocolError.self) { try d.next() }
    #expect(e?.code == .unsupportedVersion)
    #expect(e?.message == "agent stream: frame version 2 at offset 0 is not supported (expected 1)")
  }

  @Test func oversizedPayloadRejectedFromHeader() {
    var w = ByteWriter()
    w.u32(AgentProtocol.magic)
    w.u8(1)
    w.u8(2)
    w.u16(0)
    w.u32(1)
    w.u32(UInt32(AgentProtocol.maxPayload + 1))
    var d = AgentFrameDecoder()
    d.feed(w.bytes)
    let e = #expect(throws: ProtocolError.self) { try d.next() }
    #expect(e?.code == .tooLarge)
    #expect(e?.message == "agent stream: frame at offset 0 declares a payload of 1048577 bytes, limit 1048576")

    var small = AgentFrameDecoder(maxPayload: AgentProtocol.testGuestMaxPayload)
    small.feed(AgentCodec.encode(.echo(Array(repeating: 0, count: 2049)), id: 1))
    #expect((#expect(throws: ProtocolError.self) { try small.next() })?.code == .tooLarge)
    var exact = AgentFrameDecoder(maxPayload: 2048)
    exact.feed(AgentCodec.encode(.echo(Array(repeating: 0, count: 2048)), id: 1))
    #expect(throws: Never.self) { try exact.next() }
  }

  @Test func maxSizeFrame() throws {
    var d = AgentFrameDecoder()
    let payload = [UInt8](repeating: 0x5A, count: AgentProtocol.maxPayload)
    d.feed(AgentCodec.encode(.echo(payload), id: 3))
    let f = try #require(try d.next())
    #expect(f.payload.count == AgentProtocol.maxPayload)
  }

  @Test func nonZeroFlagsIgnored() throws {
    var bytes = AgentCodec.encode(.ping, id: 1)
    bytes[6] = 1
    var d = AgentFrameDecoder()
    d.feed(bytes)
    #expect(try d.next()?.type == 1)
  }
}

@Suite("Test guest math")
struct TestGuestMathTests {
  @Test func fillWordFormula() {
    #expect(TestGuestMath.fillWord(page: 0, seed: 0) == 0xBF58_476D_1CE4_E5B9)
    #expect(TestGuestMath.fillWord(page: 0, seed: 1) == 0x9E37_79B9_7F4A_7C15 &+ 0xBF58_476D_1CE4_E5B9)
    #expect(TestGuestMath.fillWord(page: 2, seed: 5) == 5 &* 0x9E37_79B9_7F4A_7C15 &+ 3 &* 0xBF58_476D_1CE4_E5B9)
    #expect(TestGuestMath.fillWord(page: .max, seed: 0) == 0)  // (p + 1) wraps to 0
  }

  func filled(pages: Int, seed: UInt64) -> [UInt64] {
    var words = [UInt64](repeating: 0, count: pages * TestGuestMath.wordsPerPage)
    for p in 0..<pages {
      let v = TestGuestMath.fillWord(page: UInt64(p), seed: seed)
      for w in 0..<TestGuestMath.wordsPerPage { words[p * TestGuestMath.wordsPerPage + w] = v }
    }
    return words
  }

  @Test(
    arguments: [(0, 0), (1, 0), (1, 1), (3, 42), (17, 0xFFFF_FFFF_FFFF_FFFF), (64, 0x1234_5678)] as [(Int, UInt64)])
  func closedFormMatchesBufferChecksum(pages: Int, seed: UInt64) {
    let words = filled(pages: pages, seed: seed)
    let direct = words.withUnsafeBufferPointer { TestGuestMath.checksum(of: $0) }
    #expect(TestGuestMath.checksum(pages: UInt64(pages), seed: seed) == direct)
  }

  @Test func checksumDefinition() {
    // c = rotl(c, 7) + q0 + … + q7 per 64-byte block.
    let words: [UInt64] = Array(1...16)
    let c1: UInt64 = 36
    let c2 = (c1 << 7 | c1 >> 57) &+ (9...16).reduce(0, +)
    #expect(words.withUnsafeBufferPointer { TestGuestMath.checksum(of: $0) } == c2)
    let top: [UInt64] = [1 << 63, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    // The rotate carries the top bit around: rotl(2^63, 7) = 2^6.
    #expect(top.withUnsafeBufferPointer { TestGuestMath.checksum(of: $0) } == 64)
    #expect([UInt64]().withUnsafeBufferPointer { TestGuestMath.checksum(of: $0) } == 0)
    #expect(TestGuestMath.checksum(pages: 0, seed: 9) == 0)
  }

  @Test func partialBlockCountsMissingWordsAsZero() {
    let partial: [UInt64] = Array(1...10)
    let padded: [UInt64] = Array(1...10) + [0, 0, 0, 0, 0, 0]
    #expect(
      partial.withUnsafeBufferPointer { TestGuestMath.checksum(of: $0) }
        == padded.withUnsafeBufferPointer { TestGuestMath.checksum(of: $0) })
  }

  @Test func seedsAndPageCountsMatter() {
    #expect(TestGuestMath.checksum(pages: 4, seed: 1) != TestGuestMath.checksum(pages: 4, seed: 2))
    #expect(TestGuestMath.checksum(pages: 4, seed: 1) != TestGuestMath.checksum(pages: 5, seed: 1))
  }

  @Test func largeAreaIsFast() {
    // 4 GiB of guest memory.
    let start = ContinuousClock.now
    _ = TestGuestMath.checksum(pages: 1 << 20, seed: 7)
    #expect(ContinuousClock.now - start < .seconds(5))
  }
}
