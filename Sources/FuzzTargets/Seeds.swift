import CKVM
import OCIDistribution
import Protocol
import SnapshotPack
import VMMCore

/// The seed corpus of every target, generated from the real encoders so seeds stay valid as
/// formats evolve: `forkd-fuzz seeds Fuzz/Corpus` writes `<target>/seed-NN`.
public enum FuzzSeeds {
  public static func all() -> [String: [[UInt8]]] {
    [
      "json": json, "agent": agent, "pager_handshake": pager, "control": control, "api_requests": api,
      "manifest": manifest, "state_file": state, "page_index": pageIndex, "virtqueue": virtqueue,
      "vsock": vsock, "block": block, "net": net, "device_state": deviceState, "api_server": apiServer,
      "agent_replies": agentReplies, "artifact": artifact, "image_reference": imageReference,
      "auth_challenge": authChallenge, "docker_config": dockerConfig, "lazy_plan": lazyPlan,
    ]
  }

  /// One HTTP/1.1 request with a Content-Length body.
  static func http(_ method: String, _ target: String, _ body: String = "", headers: [String] = []) -> String {
    let extra = headers.map { $0 + "\r\n" }.joined()
    return "\(method) \(target) HTTP/1.1\r\nHost: f\r\n\(extra)Content-Length: \(body.utf8.count)\r\n\r\n\(body)"
  }

  /// Selector byte (even: Unix listener, odd: TCP with a token) and the bytes on the connection.
  static var apiServer: [[UInt8]] {
    let auth = ["Authorization: Bearer fuzz-token"]
    let unix: [String] = [
      http("GET", "/healthz?=") + http("GET", "/version?&") + http("GET", "/metrics"),
      http("GET", "/v1/snapshots") + http("GET", "/v1/snapshots/base/info") + http("GET", "/v1/snapshots/..%2F/info"),
      http("POST", "/v1/snapshots", #"{"tag":"base","memory_mib":32,"warmup":[{"op":"counter","delta":-1}]}"#),
      http(
        "POST", "/v1/snapshots",
        #"{"tag":"k","warmup":[{"op":"kv_set","key":"\#(String(repeating: "k", count: 300))","value":"v"}]}"#),
      http(
        "POST", "/v1/snapshots", #"{"tag":"l","kernel":"/nonexistent","rootfs":"/etc/shadow","cmdline":"a\u0000b"}"#),
      http("POST", "/v1/sandboxes", #"{"snapshot_tag":"base","n":2,"memory_limit_mib":17592186044416}"#),
      http("POST", "/v1/sandboxes", #"{"snapshot_tag":"base","n":1,"live_fork":true}"#),
      http("GET", "/v1/sandboxes") + http("GET", "/v1/sandboxes/sb-000000000000")
        + http("DELETE", "/v1/sandboxes/sb-000000000000"),
      http("POST", "/v1/sandboxes/sb-000000000000/ping") + http("POST", "/v1/sandboxes/x/exec", #"{"args":["true"]}"#)
        + http("POST", "/v1/sandboxes/x/eval", #"{"code":"1"}"#),
      http("POST", "/v1/sandboxes/x/branch", #"{"mode":"live","wait":false}"#)
        + http("POST", "/v1/snapshots/base/compact", #"{"to":"flat"}"#),
      http("DELETE", "/v1/snapshots/base?cascade=true&force=true") + http("PATCH", "/v1/snapshots"),
      "POST /v1/sandboxes HTTP/1.1\r\nHost: f\r\nContent-Length: 99999999999\r\n\r\n{",
      "POST /v1/sandboxes HTTP/1.1\r\nHost: f\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n0\r\n\r\n",
      "GET /healthz HTTP/1.1\r\nX-Big: " + String(repeating: "b", count: 17 << 10) + "\r\n\r\n",
      "GET /healthz HTTP/1.0\r\n\r\n\u{01}\u{02}garbage\r\n\r\n",
    ]
    let tcp: [String] = [
      http("GET", "/v1/snapshots", headers: auth) + http("GET", "/v1/sandboxes"),
      http("POST", "/v1/sandboxes", #"{"snapshot_tag":"base"}"#, headers: ["Authorization: Bearer wrong"]),
    ]
    return unix.map { [0] + utf8($0) } + tcp.map { [1] + utf8($0) }
  }

  /// Selector (0 ping, 1 exec, 2 kv get, 3 counter) and agent reply frames, extreme values included.
  static var agentReplies: [[UInt8]] {
    let exec = AgentRequest.exec(args: ["x"], timeoutSeconds: 1)
    func pong(_ kind: UInt32, _ version: UInt32, _ served: UInt64, _ counter: UInt64) -> [UInt8] {
      AgentCodec.encode(
        .pong(AgentPong(kind: kind, agentVersion: version, requestsServed: served, counter: counter)), to: .ping, id: 1)
    }
    // exit code INT32_MIN, then a stdout length of 4 GiB over 4 bytes (what a lying test guest sends).
    let lyingExec = AgentFrame(
      type: 0x89, requestID: 1, payload: [0, 0, 0, 0x80, 0, 0xff, 0xff, 0xff, 0xff, 65, 65, 65, 65])
    return [
      [0] + pong(1, 1, 3, 4),
      [0] + pong(1, UInt32.max, UInt64.max, 1 << 63),
      [0] + pong(2, 7, 1, UInt64.max),
      [0] + pong(0xdead, 0, 0, 0),
      [1]
        + AgentCodec.encode(
          .exec(AgentExecResult(exitCode: Int32.min, stdout: [0xff, 0xfe], stderr: utf8("e"), timedOut: true)),
          to: exec, id: 1),
      [1] + lyingExec.encoded(),
      [2] + AgentCodec.encode(.kvGet(found: true, value: [1, 2]), to: .kvGet(key: [1]), id: 1),
      [3] + AgentCodec.encode(.counter(UInt64.max), to: .counter(delta: -1), id: 1)
        + AgentCodec.encode(.error(AgentError(code: 9, message: "no")), to: .ping, id: 2),
    ]
  }

  static func utf8(_ s: String) -> [UInt8] { Array(s.utf8) }

  static var json: [[UInt8]] {
    [
      #"{"a":[1,-2,3.5e10,true,false,null],"b":{"c":"\u00e9\ud83d\ude00\n"}}"#, "[]", "-0.0",
      "18446744073709551616", #""\\\/\b\f\r\t""#, "[[[[[[[[[[[[]]]]]]]]]]]]",
    ].map(utf8)
  }

  static var agent: [[UInt8]] {
    let requests: [AgentRequest] = [
      .ping, .echo([1, 2, 3]), .fill(pages: 16, seed: 7), .checksum(pages: 16), .counter(delta: -3),
      .kvSet(key: utf8("k"), value: utf8("v")), .kvGet(key: utf8("k")), .exit(code: 3),
      .exec(args: ["/bin/echo", "hi"], timeoutSeconds: 5), .console(utf8("hello")),
      .fileWrite(path: utf8("/etc/motd"), mode: 0o644, offset: 0, truncate: true, data: [0, 1, 0]),
      .fileRead(path: utf8("/etc/motd"), offset: 1, maxBytes: 2036), .fileList(path: utf8("/etc")),
      .fileDelete(path: utf8("/etc/motd")), .vcpuStatus,
    ]
    var seeds = requests.enumerated().map { [UInt8(0)] + AgentCodec.encode($0.element, id: UInt32($0.offset)) }
    let pong = AgentCodec.encode(
      .pong(AgentPong(kind: 1, agentVersion: 2, requestsServed: 3, counter: 4)), to: .ping, id: 9)
    let exec = AgentCodec.encode(
      .exec(AgentExecResult(exitCode: 1, stdout: [65], stderr: [66], timedOut: false)),
      to: .exec(args: [], timeoutSeconds: 1), id: 10)
    let error = AgentCodec.encode(.error(AgentError(code: 2, message: "no")), to: .ping, id: 11)
    seeds.append([3] + pong + exec + error)
    let list = AgentCodec.encode(
      .fileList([AgentFileEntry(name: utf8("motd"), kind: .file, mode: 0o644, size: 3)]), to: .fileList(path: []),
      id: 12)
    let data = AgentCodec.encode(
      .fileData(AgentFileData(size: 3, mode: 0o644, data: [0, 1])), to: .fileRead(path: [], offset: 0, maxBytes: 2),
      id: 13)
    let vcpus = AgentCodec.encode(
      .vcpuStatus([AgentVCPUStatus(answered: true, runs: 1), AgentVCPUStatus(answered: false, runs: 0)]),
      to: .vcpuStatus, id: 14)
    seeds.append([2] + list + data + vcpus)
    return seeds
  }

  static var hello: PagerHello {
    PagerHello(
      vmPID: 42,
      regions: [
        PagerRegion(
          guestPhysicalAddress: 0, hostVirtualAddress: 0x7f00_0000_0000, size: 64 << 20, fileOffset: 0, pageSize: 4096)
      ],
      memory: PagerMemorySource(
        mode: .copy,
        chain: [
          PagerLayer(memory: "/s/a/memory.bin"), PagerLayer(memory: "/s/b/memory.bin", pageIndex: "/s/b/pages.idx"),
        ]))
  }

  static var pager: [[UInt8]] {
    [
      PagerFrame.encode(hello.jsonValue),
      PagerFrame.encode(
        PagerHello(vmPID: 7, regions: hello.regions, memory: PagerMemorySource(mode: .minor, layers: ["/m"])).jsonValue),
      PagerFrame.encode(PagerAck(ok: true, pagerPID: 5).jsonValue),
      PagerFrame.encode(PagerAck(ok: false, pagerPID: 5, error: ControlErrorBody(code: "bad", message: "m")).jsonValue),
    ]
  }

  static var control: [[UInt8]] {
    let requests: [ControlRequest] = [
      .status, .pause, .resume, .stop, .snapshot(directory: "/s/x", parentTag: "base"),
      .snapshot(directory: "/s/y", parentTag: "base", diff: true),
      .snapshot(directory: "/s/z", parentTag: nil, live: true, wait: false), .snapshotWait(directory: "/s/z"),
      .attachPager(socket: "/r/pager.sock"),
    ]
    var seeds = requests.map { utf8(ControlCodec.encode($0)) }
    seeds.append(utf8(ControlCodec.encode(.success(PauseReply(pauseMicroseconds: 3)))))
    seeds.append(utf8(ControlCodec.encode(.failure(code: "bad_request", message: "x"))))
    seeds.append(utf8(ControlCodec.encode(.status) + ControlCodec.encode(.pause) + "{\"op\":"))
    return seeds
  }

  static var api: [[UInt8]] {
    [
      [0]
        + utf8(
          #"{"tag":"base","memory_mib":64,"warmup":[{"op":"fill","pages":8,"seed":1},{"op":"kv_set","key":"k","value":"v"},{"op":"counter","delta":3},{"op":"ping"}]}"#
        ),
      [1] + utf8(#"{"snapshot_tag":"base","n":3,"memory_limit_mib":64,"prewarm":true}"#),
      [2] + utf8(#"{"args":["/bin/true","x"],"timeout_secs":10}"#),
      [3] + utf8(#"{"tag":"b1","mode":"live","wait":false}"#),
      [3] + utf8(#"{"diff":true}"#),
      [4] + utf8(#"{"to":"flat"}"#),
      [0] + utf8(#"{"tag":"../etc"}"#),
      [0]
        + utf8(
          #"{"tag":"duo","vcpus":2,"warmup":[{"op":"write_file","path":"/etc/motd","content":"hi","mode":"0600"}]}"#),
      [1] + utf8(#"{"snapshot_tag":"base","timeout_secs":30}"#),
      [4] + utf8("/etc/../x%2F"),
    ]
  }

  static var manifest: [[UInt8]] {
    let digest = "sha256:" + String(repeating: "ab", count: 32)
    let full = SnapshotManifest(
      memorySize: 64 << 20, vcpuCount: 1, guestKind: "test-guest", guestImageDigest: digest, createdAtUnix: 1,
      stateDigest: digest, contentDigest: digest)
    let diff = SnapshotManifest(
      memorySize: 64 << 20, vcpuCount: 2, guestKind: "linux", guestImageDigest: digest, createdAtUnix: 2,
      parentTag: "base", stateDigest: digest, contentDigest: digest, memoryLayer: .diff, parentContentDigest: digest,
      pageIndexFile: "pages.idx")
    return [utf8(full.jsonText()), utf8(diff.jsonText())]
  }

  static var state: [[UInt8]] {
    var file = StateFile()
    file.append(tag: StateSectionTag.vmConfig, [1, 2, 3, 4])
    file.append(tag: StateSectionTag.vcpu, version: 2, [UInt8](repeating: 7, count: 40))
    file.append(tag: StateSectionTag.uart, [])
    return [StateFile().serialized(), file.serialized()]
  }

  static var pageIndex: [[UInt8]] {
    var index = PageIndex(pageCount: 100)
    for page in [0, 1, 63, 64, 99] { index.insert(page) }
    return [[100, 0] + index.serialized(), [0, 0] + PageIndex(pageCount: 0).serialized()]
  }

  static var virtqueue: [[UInt8]] {
    // size 8 at the fixed layout; descriptor 0 → 1 → 2 (readable, readable, writable); head 0 available.
    var desc = ByteWriter()
    for (i, (address, length, flags, next)) in [
      (UInt64(0x8000), UInt32(44), Virtqueue.descriptorNext, UInt16(1)),
      (0x9000, 100, Virtqueue.descriptorNext, 2), (0xA000, 4096, Virtqueue.descriptorWrite, 0),
    ].enumerated() {
      _ = i
      desc.u64(address)
      desc.u32(length)
      desc.u16(flags)
      desc.u16(next)
    }
    let avail: [UInt8] = [0, 0, 1, 0, 0, 0]
    let looped: [UInt8] = [16, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0]
    return [
      [3, 0, 0, UInt8(desc.bytes.count)] + desc.bytes + [1, UInt8(avail.count)] + avail,
      [3, 0, 0, 16] + looped.prefix(16) + [1, 6, 0, 0, 1, 0, 0, 0],
    ]
  }

  /// Register-program builder for the device targets (opcodes of `DeviceTargets.runDevice`).
  struct Program {
    var bytes: [UInt8] = []
    mutating func setup(sizeShift: UInt8) { bytes += [0, sizeShift] }
    mutating func descriptor(
      queue: UInt8, index: UInt8, dataOffset: UInt16, length: UInt16, flags: UInt16, next: UInt16
    ) {
      var w = ByteWriter()
      w.u8(3)
      w.u8(queue)
      w.u8(index)
      w.u8(0)
      w.u16(dataOffset)
      w.u16(length)
      w.u16(flags)
      w.u16(next)
      bytes += w.bytes
    }
    mutating func available(queue: UInt8, head: UInt16) {
      var w = ByteWriter()
      w.u8(4)
      w.u8(queue)
      w.u16(head)
      w.u8(1)
      bytes += w.bytes
    }
    mutating func data(at offset: UInt16, _ data: [UInt8]) {
      var w = ByteWriter()
      w.u8(5)
      w.u16(offset)
      w.u8(UInt8(data.count))
      w.bytes(data)
      bytes += w.bytes
    }
    mutating func notify(_ queue: UInt8) { bytes += [6, queue] }
    mutating func read(_ offset: UInt16) {
      var w = ByteWriter()
      w.u8(2)
      w.u16(offset)
      w.u8(4)
      bytes += w.bytes
    }
  }

  static func vsockHeader(op: UInt16, length: UInt32 = 0, sourcePort: UInt32 = 1024, destinationPort: UInt32 = 5000)
    -> [UInt8]
  {
    var w = ByteWriter()
    w.u64(3)
    w.u64(2)
    w.u32(sourcePort)
    w.u32(destinationPort)
    w.u32(length)
    w.u16(1)
    w.u16(op)
    w.u32(0)
    w.u32(65536)
    w.u32(0)
    return w.bytes
  }

  static var vsock: [[UInt8]] {
    var seeds: [[UInt8]] = []
    for op: UInt16 in [1, 5, 6, 7, 4, 3] {
      var p = Program()
      p.setup(sizeShift: 3)
      p.read(0x000)
      p.read(0x100)
      // An RX buffer on queue 0, a TX packet on queue 1.
      p.descriptor(queue: 0, index: 0, dataOffset: 0x1000, length: 256, flags: Virtqueue.descriptorWrite, next: 0)
      p.available(queue: 0, head: 0)
      p.data(at: 0, vsockHeader(op: op, length: op == 5 ? 4 : 0) + (op == 5 ? [1, 2, 3, 4] : []))
      p.descriptor(queue: 1, index: 0, dataOffset: 0, length: op == 5 ? 48 : 44, flags: 0, next: 0)
      p.available(queue: 1, head: 0)
      p.notify(1)
      p.notify(0)
      seeds.append(p.bytes)
    }
    return seeds
  }

  static var block: [[UInt8]] {
    var seeds: [[UInt8]] = []
    for (type, sector, dataLength): (UInt32, UInt64, UInt16) in [
      (0, 1, 512), (1, 2, 512), (4, 0, 0), (8, 0, 20), (0, 200, 512), (9, 0, 0),
    ] {
      var p = Program()
      p.setup(sizeShift: 3)
      p.read(0x100)
      var header = ByteWriter()
      header.u32(type)
      header.u32(0)
      header.u64(sector)
      p.data(at: 0, header.bytes)
      p.descriptor(queue: 0, index: 0, dataOffset: 0, length: 16, flags: Virtqueue.descriptorNext, next: 1)
      let dataFlags = type == 1 ? Virtqueue.descriptorNext : Virtqueue.descriptorNext | Virtqueue.descriptorWrite
      if dataLength > 0 {
        p.descriptor(queue: 0, index: 1, dataOffset: 0x1000, length: dataLength, flags: dataFlags, next: 2)
        p.descriptor(queue: 0, index: 2, dataOffset: 0x2000, length: 1, flags: Virtqueue.descriptorWrite, next: 0)
      } else {
        p.descriptor(queue: 0, index: 1, dataOffset: 0x2000, length: 1, flags: Virtqueue.descriptorWrite, next: 0)
      }
      p.available(queue: 0, head: 0)
      p.notify(0)
      seeds.append(p.bytes)
    }
    return seeds
  }

  /// Frames the guest sends: a whole one, one split over two descriptors, one shorter than the
  /// virtio-net header, one whose descriptor claims more than the largest frame, a self loop.
  static var net: [[UInt8]] {
    var seeds: [[UInt8]] = []
    let frame = [UInt8](repeating: 0xFF, count: 6) + [2, 0, 0, 0, 0, 1, 0x08, 0x06] + [UInt8](repeating: 7, count: 46)
    let packet = [UInt8](repeating: 0, count: 12) + frame
    for variant in 0..<5 {
      var p = Program()
      p.setup(sizeShift: 3)
      p.read(0x100)
      p.read(0x104)
      p.descriptor(queue: 0, index: 0, dataOffset: 0x1000, length: 2048, flags: Virtqueue.descriptorWrite, next: 0)
      p.available(queue: 0, head: 0)
      p.notify(0)
      p.data(at: 0, packet)
      switch variant {
      case 0: p.descriptor(queue: 1, index: 0, dataOffset: 0, length: UInt16(packet.count), flags: 0, next: 0)
      case 1:
        p.descriptor(queue: 1, index: 0, dataOffset: 0, length: 10, flags: Virtqueue.descriptorNext, next: 1)
        p.descriptor(queue: 1, index: 1, dataOffset: 10, length: UInt16(packet.count - 10), flags: 0, next: 0)
      case 2: p.descriptor(queue: 1, index: 0, dataOffset: 0, length: 5, flags: 0, next: 0)
      case 3: p.descriptor(queue: 1, index: 0, dataOffset: 0, length: 4000, flags: 0, next: 0)
      default: p.descriptor(queue: 1, index: 0, dataOffset: 0, length: 64, flags: Virtqueue.descriptorNext, next: 0)
      }
      p.available(queue: 1, head: 0)
      p.notify(1)
      seeds.append(p.bytes)
    }
    return seeds
  }

  /// A driven transport: status DRIVER_OK, queues of 8 at the runDevice layout, ready.
  static func transportBytes(deviceID: UInt32, queues: Int) -> [UInt8] {
    var t = VirtioMMIOTransport(deviceID: deviceID, deviceFeatures: 0, queueSizes: Array(repeating: 256, count: queues))
    t.status = 15
    t.driverFeatures = VirtioMMIOTransport.featureVersion1
    for q in t.queues.indices {
      t.queues[q].size = 8
      t.queues[q].descriptorTable = 0x1000 + UInt64(q) * 0x4000
      t.queues[q].availableRing = 0x2000 + UInt64(q) * 0x4000
      t.queues[q].usedRing = 0x3000 + UInt64(q) * 0x4000
      t.queues[q].ready = true
    }
    var w = ByteWriter()
    t.save(into: &w)
    return w.bytes
  }

  static var deviceState: [[UInt8]] {
    var transport = transportBytes(deviceID: 19, queues: 3)
    var vsock = transport
    var w = ByteWriter()
    w.u32(1 << 30)
    w.u32(1)
    w.u32(1024)
    w.u32(1 << 30)
    vsock += w.bytes
    var disk = transportBytes(deviceID: 2, queues: 1)
    var d = ByteWriter()
    d.string("/var/lib/forkd/disk.img")
    d.u64(1 << 20)
    d.u32(2)
    d.u64(0)
    d.u64(5)
    disk += d.bytes
    transport.insert(0, at: 0)
    // A vCPU section with this host's KVM struct sizes (legacy FPU, two MSRs, one CPUID entry).
    var vcpu = ByteWriter()
    vcpu.u32(0)
    for size in [MemoryLayout<kvm_regs>.size, MemoryLayout<kvm_sregs>.size] {
      vcpu.lengthPrefixed([UInt8](repeating: 0, count: size))
    }
    vcpu.u8(0)
    vcpu.lengthPrefixed([UInt8](repeating: 0, count: MemoryLayout<kvm_fpu>.size))
    vcpu.u8(1)
    vcpu.lengthPrefixed([UInt8](repeating: 0, count: MemoryLayout<kvm_xcrs>.size))
    vcpu.u32(2)
    for (index, value) in [(UInt32(0x10), UInt64(7)), (0xC000_0080, 0x500)] {
      vcpu.u32(index)
      vcpu.u64(value)
    }
    vcpu.u8(1)
    vcpu.lengthPrefixed([UInt8](repeating: 0, count: MemoryLayout<kvm_vcpu_events>.size))
    vcpu.lengthPrefixed([UInt8](repeating: 0, count: MemoryLayout<kvm_mp_state>.size))
    vcpu.u8(0)
    vcpu.u8(0)
    vcpu.lengthPrefixed([UInt8](repeating: 1, count: MemoryLayout<kvm_cpuid_entry2>.size))
    let uart = UART16550(sink: { _ in }).saveState()
    let nic = transportBytes(deviceID: 1, queues: 2) + NetworkConfig.defaultMAC
    return [transport, [1] + vsock, [2] + disk, [3] + vcpu.bytes, [4] + uart, [5] + nic]
  }

  // MARK: registry and artifact formats

  static var artifact: [[UInt8]] {
    let digest = "sha256:" + String(repeating: "cd", count: 32)
    let config = ArtifactConfig(chunkSize: ArtifactConfig.defaultChunkSize, memorySize: 64 << 20, memoryLayer: "full")
    let diffConfig = ArtifactConfig(
      chunkSize: 64 << 10, memorySize: 64 << 20, memoryLayer: "diff", parentManifestDigest: digest,
      parentContentDigest: digest, contentDigest: digest)
    let manifest = ArtifactManifest(
      config: .of(config.serialized(), mediaType: ForkdMediaType.config),
      layers: [
        Descriptor(mediaType: ForkdMediaType.snapshotManifest, digest: digest, size: 512),
        Descriptor(
          mediaType: ForkdMediaType.memoryChunk, digest: digest, size: 2 << 20,
          annotations: [ForkdMediaType.chunkOffsetAnnotation: "4194304"]),
      ], annotations: [ForkdMediaType.sourceTagAnnotation: "base"])
    return [[0] + manifest.serialized(), [1] + config.serialized(), [1] + diffConfig.serialized()]
  }

  static var imageReference: [[UInt8]] {
    [
      "127.0.0.1:5000/forkd/base:v1", "registry.example/a/b@sha256:" + String(repeating: "0f", count: 32),
      "[::1]:5000/x", "localhost/ns/repo.name_x-y:tag.1",
    ].map(utf8)
  }

  static var authChallenge: [[UInt8]] {
    [
      #"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
      #"Basic realm="Registry Realm""#, #"Bearer realm="a\"b", error=insufficient_scope"#,
    ].map(utf8)
  }

  static var dockerConfig: [[UInt8]] {
    [
      #"{"auths":{"127.0.0.1:5000":{"auth":"dXNlcjpwYXNz"}}}"#,
      #"{"auths":{"registry.example":{"username":"u","password":"p:w"}},"credsStore":"x"}"#, "{}",
    ].map(utf8)
  }

  static var lazyPlan: [[UInt8]] {
    let digest = "sha256:" + String(repeating: "ef", count: 32)
    let chunks = (0..<3).map { i in
      Descriptor(
        mediaType: ForkdMediaType.memoryChunk, digest: digest, size: 2 << 20,
        annotations: [ForkdMediaType.chunkOffsetAnnotation: String(i * (2 << 20))])
    }
    let plan = LazyPlan(
      origin: "127.0.0.1:5000/forkd/base", chunkSize: ArtifactConfig.defaultChunkSize, memoryFile: "memory.bin",
      chunks: chunks)
    return [plan.serialized()]
  }
}
