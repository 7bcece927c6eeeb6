/// Every fuzz target of forkd: one function over untrusted bytes each. `forkd-fuzz` runs one
/// under libFuzzer (scripts/fuzz) or replays a corpus; Tests/FuzzRegressionTests replays the
/// committed corpus (Fuzz/Corpus/<name>/) of each in the normal test run.
public struct FuzzTarget: Sendable {
  public let name: String
  /// What the bytes are, for `forkd-fuzz list` and docs/hardening.md.
  public let summary: String
  public let run: @Sendable ([UInt8]) -> Void

  public static let all: [FuzzTarget] = [
    FuzzTarget(name: "json", summary: "JSONValue.parse, serialized round trip", run: ProtocolTargets.json),
    FuzzTarget(
      name: "agent", summary: "agent stream framing, requests and responses (AgentCodec)", run: ProtocolTargets.agent),
    FuzzTarget(
      name: "pager_handshake", summary: "PagerFrame + PagerHello / PagerAck", run: ProtocolTargets.pagerHandshake),
    FuzzTarget(
      name: "control", summary: "control socket lines (LineDecoder, ControlCodec)", run: ProtocolTargets.control),
    FuzzTarget(
      name: "api_requests", summary: "API bodies: create snapshot, spawn, exec, branch, compact",
      run: ProtocolTargets.apiRequests),
    FuzzTarget(name: "manifest", summary: "manifest.json (SnapshotManifest)", run: ProtocolTargets.manifest),
    FuzzTarget(name: "state_file", summary: "vmstate.bin container (StateFile)", run: ProtocolTargets.stateFile),
    FuzzTarget(name: "page_index", summary: "pages.idx (PageIndex)", run: ProtocolTargets.pageIndex),
    FuzzTarget(name: "virtqueue", summary: "split virtqueue rings and descriptor chains", run: DeviceTargets.virtqueue),
    FuzzTarget(
      name: "vsock", summary: "virtio-vsock over virtio-mmio: registers, rings, packets", run: DeviceTargets.vsock),
    FuzzTarget(
      name: "block", summary: "virtio-blk over virtio-mmio: registers, rings, requests", run: DeviceTargets.block),
    FuzzTarget(
      name: "net", summary: "virtio-net over virtio-mmio: registers, rings, frames both ways", run: DeviceTargets.net),
    FuzzTarget(
      name: "device_state", summary: "vmstate.bin device sections (transport, VSCK, VBLK, VNET)",
      run: DeviceTargets.deviceState),
    FuzzTarget(
      name: "api_server", summary: "raw bytes on a connection: HTTP decoder, router, handlers (no VMs)",
      run: SupervisorTargets.apiServer),
    FuzzTarget(
      name: "agent_replies", summary: "hostile agent replies (pong, exec, kv, counter) into the supervisor's handling",
      run: SupervisorTargets.agentReplies),
    FuzzTarget(
      name: "artifact", summary: "snapshot artifact: OCI manifest and config blob (SnapshotPack)",
      run: RegistryTargets.artifact),
    FuzzTarget(
      name: "image_reference", summary: "HOST[:PORT]/REPO[:TAG|@DIGEST] (ImageReference)",
      run: RegistryTargets.imageReference),
    FuzzTarget(
      name: "auth_challenge", summary: "WWW-Authenticate challenge (AuthChallenge)", run: RegistryTargets.authChallenge),
    FuzzTarget(
      name: "docker_config", summary: "Docker config.json credentials (RegistryCredentials)",
      run: RegistryTargets.dockerConfig),
    FuzzTarget(name: "lazy_plan", summary: "lazy-chunks.json of a lazy pull (LazyPlan)", run: RegistryTargets.lazyPlan),
  ]

  public static func named(_ name: String) -> FuzzTarget? { all.first { $0.name == name } }
}
