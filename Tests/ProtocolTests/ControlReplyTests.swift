import Protocol
import Testing

@Suite("Control replies")
struct ControlReplyTests {
  static let status = VMStatusReply(
    state: .paused, pid: 4242, memorySize: 64 << 20, vcpus: 2, guestKind: "test-guest",
    guestImageDigest: "sha256:ab", backend: "uffd", restoredFrom: "/snaps/base",
    pager: .init(pid: 4243, attached: true, policy: "restart"),
    network: .init(rxFrames: 5, txFrames: 6, rxDropped: 0, txDropped: UInt64(Int64.max)), exit: nil)
  static let written = SnapshotReply(
    directory: "/snaps/b", pauseMicroseconds: 812, memoryLayer: "diff",
    written: .init(
      memorySize: 32 << 20, memoryDataBytes: 65536, stateBytes: 9000, totalMicroseconds: 20_000,
      guestImageDigest: "sha256:cd", layerPages: 16, contentDigest: "sha256:ef"))
  static let writing = SnapshotReply(
    directory: "/snaps/live", pauseMicroseconds: 300, memoryLayer: "full", written: nil)

  /// Through the whole wire: response line out, line in, typed reply out.
  func roundTrip(_ reply: ControlReply, for request: ControlRequest) throws -> ControlReply {
    let line = ControlCodec.encode(ControlResponse(ok: true, result: reply.encodeResult()))
    return try ControlReply.decode(ControlCodec.decodeResponse(Array(line.utf8)).result, for: request)
  }

  @Test func everyReplyRoundTrips() throws {
    let cases: [(ControlReply, ControlRequest)] = [
      (.status(Self.status), .status),
      (
        .status(
          VMStatusReply(
            state: .exited, pid: 1, memorySize: 0, vcpus: 1, guestKind: "linux", guestImageDigest: "",
            backend: "file", exit: "powered off (code 3)")), .status
      ),
      (.pause(PauseReply(pauseMicroseconds: 17)), .pause),
      (.resume(ResumeReply()), .resume),
      (.stop(StopReply()), .stop),
      (.attachPager(AttachPagerReply(pagerPID: 99, attachments: 2)), .attachPager(socket: "/p.sock")),
      (.snapshot(Self.written), .snapshot(directory: "/snaps/b", parentTag: "a", diff: true)),
      (.snapshot(Self.writing), .snapshot(directory: "/snaps/live", parentTag: "a", live: true, wait: false)),
      (.snapshot(Self.written), .snapshotWait(directory: "/snaps/b")),
    ]
    for (reply, request) in cases {
      #expect(try roundTrip(reply, for: request) == reply, "\(request.op)")
    }
  }

  /// The JSON keys existing clients read stay exactly as they were.
  @Test func wireKeysAreUnchanged() {
    #expect(
      ControlCodec.encode(.success(PauseReply(pauseMicroseconds: 5)))
        == "{\"ok\":true,\"result\":{\"pause_us\":5,\"state\":\"paused\"}}\n")
    #expect(ControlCodec.encode(.success(ResumeReply())) == "{\"ok\":true,\"result\":{\"state\":\"running\"}}\n")
    #expect(ControlCodec.encode(.success(StopReply())) == "{\"ok\":true,\"result\":{\"state\":\"stopping\"}}\n")
    #expect(
      ControlCodec.encode(.success(AttachPagerReply(pagerPID: 7, attachments: 1)))
        == "{\"ok\":true,\"result\":{\"attachments\":1,\"pager_pid\":7}}\n")
    #expect(
      Set(Self.written.encodeResult().keys) == [
        "dir", "status", "pause_us", "memory_layer", "memory_size", "memory_data_bytes", "state_bytes", "total_us",
        "guest_image_digest", "layer_pages", "content_digest",
      ])
    #expect(Self.written.encodeResult()["status"] == .string("ready"))
    #expect(
      Set(Self.writing.encodeResult().keys) == ["dir", "status", "pause_us", "memory_layer"])
    #expect(Self.writing.encodeResult()["status"] == .string("writing"))
    #expect(
      Set(Self.status.encodeResult().keys) == [
        "state", "pid", "memory_size", "vcpus", "guest_kind", "guest_image_digest", "backend", "restored_from",
        "pager_pid", "pager_attached", "pager_policy", "net",
      ])
    #expect(
      Self.status.encodeResult()["net"]
        == .object([
          "rx_frames": .integer(5), "tx_frames": .integer(6), "rx_dropped": .integer(0),
          "tx_dropped": .integer(Int64.max),
        ]))
  }

  @Test func unsignedValuesTooLargeForJSONSaturate() {
    let huge = PauseReply(pauseMicroseconds: .max)
    #expect(huge.encodeResult()["pause_us"] == .integer(Int64.max))
  }

  @Test func unknownKeysAreIgnored() throws {
    var result = PauseReply(pauseMicroseconds: 3).encodeResult()
    result["from_the_future"] = .array([])
    #expect(try PauseReply.decode(result) == PauseReply(pauseMicroseconds: 3))
  }

  /// Replies are untrusted: each bad value is an error naming the field, never a trap.
  @Test func hostileValuesNameTheField() {
    func refused<R: ControlReplyBody>(
      _ type: R.Type, _ base: [String: JSONValue], _ key: String, _ value: JSONValue?,
      code: ProtocolError.Code = .badValue, nested: String? = nil
    ) -> ProtocolError? {
      var result = base
      if let nested {
        var inner = base[nested]?.objectValue ?? [:]
        inner[key] = value
        result[nested] = .object(inner)
      } else {
        result[key] = value
      }
      let error = #expect(throws: ProtocolError.self, "\(key) = \(String(describing: value))") {
        try R.decode(result)
      }
      let field = nested.map { "\($0).\(key)" } ?? key
      #expect(error?.message.contains("\"\(field)\"") == true, "\(String(describing: error))")
      #expect(error?.code == code, "\(String(describing: error))")
      return error
    }
    let snapshot = Self.written.encodeResult()
    _ = refused(SnapshotReply.self, snapshot, "pause_us", .integer(-1))
    _ = refused(SnapshotReply.self, snapshot, "total_us", .integer(Int64.min))
    _ = refused(SnapshotReply.self, snapshot, "layer_pages", .integer(-4096))
    _ = refused(SnapshotReply.self, snapshot, "memory_data_bytes", .string("65536"), code: .badField)
    _ = refused(SnapshotReply.self, snapshot, "memory_size", .double(1e300), code: .badField)
    _ = refused(SnapshotReply.self, snapshot, "status", .string("done"))
    _ = refused(SnapshotReply.self, snapshot, "status", .integer(1), code: .badField)
    _ = refused(SnapshotReply.self, snapshot, "dir", nil, code: .missingField)
    _ = refused(SnapshotReply.self, snapshot, "total_us", nil, code: .missingField)

    let status = Self.status.encodeResult()
    _ = refused(VMStatusReply.self, status, "pid", .integer(0))
    _ = refused(VMStatusReply.self, status, "pid", .integer(Int64(Int32.max) + 1))
    _ = refused(VMStatusReply.self, status, "pager_pid", .integer(-7))
    _ = refused(VMStatusReply.self, status, "vcpus", .integer(Int64(UInt32.max) + 1))
    _ = refused(VMStatusReply.self, status, "memory_size", .integer(-1))
    _ = refused(VMStatusReply.self, status, "state", .string("stopping"))
    _ = refused(VMStatusReply.self, status, "pager_attached", .string("true"), code: .badField)
    _ = refused(VMStatusReply.self, status, "rx_dropped", .integer(-1), nested: "net")
    _ = refused(VMStatusReply.self, status, "tx_frames", .bool(true), code: .badField, nested: "net")
    _ = refused(VMStatusReply.self, status, "net", .array([]), code: .badField)

    let pause = PauseReply(pauseMicroseconds: 1).encodeResult()
    _ = refused(PauseReply.self, pause, "pause_us", .integer(-1))
    _ = refused(PauseReply.self, pause, "state", .string("running"))
    let attach = AttachPagerReply(pagerPID: 2, attachments: 1).encodeResult()
    _ = refused(AttachPagerReply.self, attach, "attachments", .integer(-1))
    _ = refused(AttachPagerReply.self, attach, "pager_pid", .integer(Int64.max))
    _ = refused(StopReply.self, StopReply().encodeResult(), "state", nil, code: .missingField)
  }

  @Test func hugeLayerPageCountsDoNotOverflowBytes() {
    var reply = Self.written
    reply.written?.layerPages = .max
    #expect(reply.written?.layerBytes == nil)
    reply.written?.layerPages = 3
    #expect(reply.written?.layerBytes == 12288)
  }

  /// A reply for another request (e.g. a status answer to a snapshot) is an error, not a guess.
  @Test func aReplyOfTheWrongShapeIsRefused() {
    #expect(throws: ProtocolError.self) {
      try ControlReply.decode(Self.status.encodeResult(), for: .snapshot(directory: "/d", parentTag: nil))
    }
    #expect(throws: ProtocolError.self) {
      try ControlReply.decode(PauseReply(pauseMicroseconds: 1).encodeResult(), for: .resume)
    }
  }
}
