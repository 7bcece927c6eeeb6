import Protocol

/// Fuzz targets of the wire and file formats in `Protocol`. Each one decodes the input and, when
/// it decodes, checks that encoding the result and decoding it again gives the same value.
enum ProtocolTargets {
  /// JSONValue.parse; compact and pretty serializations parse back to the same value.
  static func json(_ bytes: [UInt8]) {
    guard let value = try? JSONValue.parse(bytes, source: "fuzz") else { return }
    for pretty in [false, true] {
      let text = value.serialized(pretty: pretty)
      do {
        let again = try JSONValue.parse(text, source: "fuzz round trip", maxBytes: Int.max)
        check(again == value, "JSON round trip changed the value: \(text)")
      } catch {
        check(false, "serialized JSON does not parse: \(error) in \(text)")
      }
    }
  }

  /// The agent stream decoder fed in fuzz-chosen pieces, then each frame decoded as a request
  /// and as a response to every request type.
  static func agent(_ bytes: [UInt8]) {
    var input = FuzzInput(bytes)
    let pieces = Int(input.u8() % 8) + 1
    var decoder = AgentFrameDecoder()
    var frames: [AgentFrame] = []
    var failed = false
    let data = input.rest()
    var at = 0
    for piece in 0..<pieces where !failed {
      let end = piece == pieces - 1 ? data.count : min(data.count, at + data.count / pieces)
      decoder.feed(data[at..<end])
      at = end
      do {
        while let frame = try decoder.next() {
          check(frame.payload.count <= AgentProtocol.maxPayload, "frame payload over the limit")
          frames.append(frame)
        }
      } catch {
        failed = true
      }
    }
    check(failed || decoder.bufferedByteCount <= data.count, "decoder holds more bytes than it was fed")
    let requests: [AgentRequest] = [
      .ping, .echo([]), .fill(pages: 0, seed: 0), .checksum(pages: 0), .counter(delta: 0), .kvSet(key: [], value: []),
      .kvGet(key: []), .exit(code: 0), .exec(args: [], timeoutSeconds: 0), .console([]),
      .fileWrite(path: [], mode: 0, offset: 0, truncate: false, data: []), .fileRead(path: [], offset: 0, maxBytes: 0),
      .fileList(path: []), .fileDelete(path: []), .vcpuStatus,
    ]
    for frame in frames {
      // Re-encoding a frame yields bytes the decoder turns back into the same frame.
      var again = AgentFrameDecoder()
      again.feed(frame.encoded())
      check((try? again.next()) == frame, "agent frame did not survive encode/decode")
      if let request = try? AgentCodec.decodeRequest(frame) {
        let encoded = AgentCodec.encode(request, id: frame.requestID)
        var d = AgentFrameDecoder()
        d.feed(encoded)
        guard let reframed = try? d.next() else { return check(false, "re-encoded request does not frame") }
        check((try? AgentCodec.decodeRequest(reframed)) == request, "agent request round trip differs: \(request)")
      }
      for request in requests {
        guard let response = try? AgentCodec.decodeResponse(frame, for: request) else { continue }
        let payload = AgentCodec.payload(of: response)
        let reframed = AgentFrame(type: response.frameType, requestID: frame.requestID, payload: payload)
        check(
          (try? AgentCodec.decodeResponse(reframed, for: request)) == response,
          "agent response round trip differs: \(response)")
      }
    }
  }

  /// A pager handshake frame: header, JSON body, hello or ack; the hello re-encodes to the same.
  static func pagerHandshake(_ bytes: [UInt8]) {
    if bytes.count >= PagerHandshake.headerSize {
      if let length = try? PagerFrame.bodyLength(header: bytes, source: "fuzz") {
        check(length >= 0 && length <= PagerHandshake.maxBody, "body length \(length) outside 0...maxBody")
      }
    }
    guard let body = try? PagerFrame.decode(bytes, source: "fuzz") else { return }
    if let hello = try? PagerHello.decode(body, source: "fuzz") {
      check(!hello.regions.isEmpty && hello.regions.count <= PagerHandshake.maxRegions, "region count")
      check(!hello.memory.chain.isEmpty && hello.memory.chain.count <= PagerHandshake.maxLayers, "layer count")
      for region in hello.regions {
        check(region.size > 0 && region.size % 4096 == 0, "region size \(region.size)")
        check(!region.hostVirtualAddress.addingReportingOverflow(region.size).overflow, "region overflows")
      }
      let frame = PagerFrame.encode(hello.jsonValue)
      do {
        let decoded = try PagerHello.decode(try PagerFrame.decode(frame, source: "again"), source: "again")
        check(decoded == hello, "pager hello round trip differs")
      } catch {
        check(false, "re-encoded pager hello does not decode: \(error)")
      }
    }
    if let ack = try? PagerAck.decode(body, source: "fuzz") {
      let again = try? PagerAck.decode(
        try PagerFrame.decode(PagerFrame.encode(ack.jsonValue), source: "a"), source: "a")
      check(again == ack, "pager ack round trip differs")
    }
  }

  /// Control lines: the line splitter, requests and responses; encode → decode is the identity.
  static func control(_ bytes: [UInt8]) {
    var lines = LineDecoder(maxLineBytes: 4096)
    lines.feed(bytes)
    var all: [[UInt8]] = [bytes]
    while let line = try? lines.next() {
      check(line.last == UInt8(ascii: "\n") && line.count <= 4096, "line splitter returned a bad line")
      all.append(line)
    }
    for line in all {
      if let request = try? ControlCodec.decodeRequest(line) {
        let text = ControlCodec.encode(request)
        check(text.utf8.filter { $0 == UInt8(ascii: "\n") }.count == 1, "encoded request is not one line")
        check((try? ControlCodec.decodeRequest(Array(text.utf8))) == request, "control request round trip: \(text)")
      }
      if let response = try? ControlCodec.decodeResponse(line) {
        let text = ControlCodec.encode(response)
        check((try? ControlCodec.decodeResponse(Array(text.utf8))) == response, "control response round trip: \(text)")
        // Typed replies: whatever decodes re-encodes to the same reply.
        let requests: [ControlRequest] = [
          .status, .pause, .resume, .stop, .attachPager(socket: "p"), .snapshot(directory: "d", parentTag: nil),
        ]
        for request in requests {
          guard let reply = try? ControlReply.decode(response.result, for: request) else { continue }
          check(
            (try? ControlReply.decode(reply.encodeResult(), for: request)) == reply,
            "typed control reply round trip: \(reply)")
        }
      }
    }
  }

  /// API request bodies; the first byte picks the request type. Accepted values obey the
  /// documented rules (tags valid, counts in range).
  static func apiRequests(_ bytes: [UInt8]) {
    guard let selector = bytes.first else { return }
    let body = Array(bytes.dropFirst())
    switch selector % 5 {
    case 0:
      if let r = try? CreateSnapshotRequest.decode(body) {
        check(SnapshotTag.isValid(r.tag), "create accepted tag \(r.tag)")
        check((2...3072).contains(r.memoryMiB) && r.memoryMiB % 2 == 0, "memory_mib \(r.memoryMiB)")
        check(r.bootWaitSeconds <= 60, "boot_wait_secs \(r.bootWaitSeconds)")
        check((1...CreateSnapshotRequest.maxVCPUs).contains(r.vcpus), "vcpus \(r.vcpus)")
        for step in r.warmup { _ = step.agentRequest; _ = step.jsonValue.serialized() }
      }
    case 1:
      if let r = try? SpawnRequest.decode(body) {
        check(SnapshotTag.isValid(r.snapshotTag), "spawn accepted tag \(r.snapshotTag)")
        check((1...SpawnRequest.maxChildren).contains(r.count), "spawn accepted n \(r.count)")
        check(r.memoryLimitMiB.map { $0 >= 8 } ?? true, "memory_limit_mib")
        check(r.timeoutSeconds.map { (1...SandboxTimeout.maxSeconds).contains($0) } ?? true, "timeout_secs")
      }
    case 2:
      if let r = try? ExecRequest.decode(body) {
        check(!r.args.isEmpty && (1...3600).contains(r.timeoutSeconds), "exec accepted \(r)")
        _ = AgentCodec.encode(AgentRequest.exec(args: r.args, timeoutSeconds: r.timeoutSeconds), id: 1)
      }
    case 3:
      if let r = try? BranchRequest.decode(body) {
        check(r.tag.map(SnapshotTag.isValid) ?? true, "branch accepted tag \(String(describing: r.tag))")
        check(r.wait || r.mode == .live, "branch accepted wait false with mode \(r.mode)")
      }
    default:
      if let r = try? CompactRequest.decode(body) {
        check(SnapshotTag.isValid(r.to), "compact accepted to \(r.to)")
      }
      // The same bytes as a files query: an accepted path is absolute and normalised.
      let text = String(decoding: body, as: UTF8.self)
      if let path = try? SandboxFiles.path(text) {
        // Checked on bytes: a combining mark after "/" makes one Character of both.
        let bytes = Array(path.utf8)
        let components = bytes.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false).dropFirst()
        check(bytes.first == UInt8(ascii: "/"), "path \(path) is not absolute")
        check(
          bytes == [UInt8(ascii: "/")]
            || components.allSatisfy { !$0.isEmpty && !$0.elementsEqual([0x2E]) && !$0.elementsEqual([0x2E, 0x2E]) },
          "path \(path) has an empty, . or .. component")
      }
      if let mode = try? SandboxFiles.mode(text) { check(mode <= 0o7777, "mode \(mode)") }
    }
  }

  /// manifest.json: a decoded manifest validates and survives jsonText → decode.
  static func manifest(_ bytes: [UInt8]) {
    guard let m = try? SnapshotManifest.decode(bytes, source: "fuzz") else { return }
    check(SnapshotManifest.isPlainFileName(m.memoryFile) && SnapshotManifest.isPlainFileName(m.stateFile), "file names")
    check((try? m.validate()) != nil, "decoded manifest does not validate")
    check((try? SnapshotManifest.decode(Array(m.jsonText().utf8), source: "again")) == m, "manifest round trip")
  }

  /// vmstate.bin: a parsed file re-serializes to one that parses to the same sections.
  static func stateFile(_ bytes: [UInt8]) {
    guard let file = try? StateFile.parse(bytes, source: "fuzz") else { return }
    let total = file.sections.reduce(0) { $0 + 16 + $1.bytes.count }
    check(total + StateFile.minimumSize == bytes.count, "sections account for \(total) of \(bytes.count) bytes")
    check((try? StateFile.parse(file.serialized(), source: "again")) == file, "state file round trip")
  }

  /// pages.idx: the first two bytes give the expected page count (up to 64 Ki pages).
  static func pageIndex(_ bytes: [UInt8]) {
    var input = FuzzInput(bytes)
    let expected = Int(input.u16())
    let data = input.rest()
    guard let index = try? PageIndex.parse(data, source: "fuzz", expectedPages: expected) else { return }
    check(index.pageCount == expected, "page count \(index.pageCount) != \(expected)")
    check(index.pages.count == index.presentCount, "present count")
    check(index.pages.allSatisfy { $0 >= 0 && $0 < expected }, "page outside the index")
    check((try? PageIndex.parse(index.serialized(), source: "again", expectedPages: expected)) == index, "round trip")
  }
}
