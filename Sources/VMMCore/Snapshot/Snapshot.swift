import CKVM
import Logging
import Protocol
import SnapshotStorage
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// What a snapshot wrote and how long it took.
public struct SnapshotResult: Sendable {
  public let directory: String
  public let manifest: SnapshotManifest
  /// Bytes of memory.bin that hold data (the rest are holes).
  public let memoryDataBytes: UInt64
  public let stateBytes: UInt64
  /// Pages a diff layer holds (nil for a full snapshot).
  public let layerPages: Int?
  /// Time the guest was paused for this snapshot (0 if it was already paused).
  public let pauseNanoseconds: UInt64
  public let totalNanoseconds: UInt64
}

/// How a restored VM gets its memory.
public enum RestoreBackend: String, Sendable {
  /// memory.bin mapped MAP_PRIVATE.
  case file
  /// Anonymous memory filled on demand by a per-child forkd-pager through userfaultfd.
  case uffd
  /// A shared shmem copy of memory.bin, mapped private; the pager answers MINOR faults.
  case shmem
}

/// Where restore spent its time, for the benchmark's split.
public struct RestoreTimings: Sendable {
  public var readFilesNanoseconds: UInt64 = 0
  public var kvmSetupNanoseconds: UInt64 = 0
  public var stateRestoreNanoseconds: UInt64 = 0
  public init() {}
  public init(readFilesNanoseconds: UInt64, kvmSetupNanoseconds: UInt64, stateRestoreNanoseconds: UInt64) {
    self.readFilesNanoseconds = readFilesNanoseconds
    self.kvmSetupNanoseconds = kvmSetupNanoseconds
    self.stateRestoreNanoseconds = stateRestoreNanoseconds
  }
}

/// The VM-level config stored in vmstate.bin next to the vCPUs and devices.
/// Version 2 adds the flags (bit 0: in-kernel irqchip, i.e. a Linux guest); version 1 is read
/// as a test guest without them.
struct StoredVMConfig: Equatable {
  static let version: UInt32 = 2
  static let flagInKernelIrqchip: UInt32 = 1
  var guestCID: UInt32
  var virtioDevices: UInt32
  var flags: UInt32 = 0

  var bytes: [UInt8] {
    var w = ByteWriter()
    w.u32(guestCID)
    w.u32(virtioDevices)
    w.u32(flags)
    return w.bytes
  }

  init(guestCID: UInt32, virtioDevices: UInt32, flags: UInt32 = 0) {
    self.guestCID = guestCID
    self.virtioDevices = virtioDevices
    self.flags = flags
  }

  init(_ bytes: [UInt8], version: UInt32 = StoredVMConfig.version, source: String) throws(ProtocolError) {
    guard (1...Self.version).contains(version) else {
      throw ProtocolError(
        .unsupportedVersion, "\(source): VM config version \(version), this forkd reads 1...\(Self.version)")
    }
    var r = ByteReader(bytes, source: source)
    guestCID = try r.u32()
    virtioDevices = try r.u32()
    flags = version >= 2 ? try r.u32() : 0
    try r.expectEnd()
  }
}

/// The in-kernel interrupt controllers of a Linux VM: PIC master, PIC slave and IOAPIC as raw
/// `kvm_irqchip` structs (the local APICs are per vCPU, in the VCPU sections).
struct StoredIrqchips: Equatable {
  static let version: UInt32 = 1
  var chips: [[UInt8]]

  var bytes: [UInt8] {
    var w = ByteWriter()
    w.u32(UInt32(chips.count))
    for chip in chips { w.lengthPrefixed(chip) }
    return w.bytes
  }

  init(chips: [[UInt8]]) { self.chips = chips }

  init(_ bytes: [UInt8], source: String) throws(ProtocolError) {
    var r = ByteReader(bytes, source: source)
    let count = try r.u32()
    guard count == 3 else { throw ProtocolError(.badValue, "\(source): \(count) irqchips, expected 3") }
    chips = []
    for index in 0..<count {
      let chip = try r.lengthPrefixed(max: 4096)
      guard chip.count == MemoryLayout<kvm_irqchip>.size else {
        throw ProtocolError(
          .badValue,
          "\(source): irqchip \(index) is \(chip.count) bytes, this host's KVM uses \(MemoryLayout<kvm_irqchip>.size)")
      }
      chips.append(chip)
    }
    try r.expectEnd()
  }
}

extension VirtualMachine {
  /// Writes a snapshot into `directory`, which must not exist: everything goes to a staging
  /// directory beside it first and is renamed into place only when complete and synced.
  /// The VM is paused for the capture and returned to its previous run state.
  /// `restoredFrom`: the snapshot this VM was restored from. A pager-backed VM holds only the
  /// pages it touched; the others are read from that snapshot instead of being faulted in.
  public func snapshot(
    to directory: String, parentTag: String?, mode: SnapshotMode = .full, restoredFrom: String? = nil
  ) throws(VMMError) -> SnapshotResult {
    let started = Clock.monotonicNanoseconds()
    var origin: ChainImage?
    if case .userfault = memory.backend, let restoredFrom {
      if let prepared = try SnapshotSources.origin(of: restoredFrom) {
        origin = prepared
      } else {
        do {
          origin = try ChainImage(chain: SnapshotChain.load(top: restoredFrom))
        } catch {
          throw VMMError(error)
        }
      }
    }
    // A diff layer records its parent's content digest; read it before pausing.
    var parentContentDigest: String?
    if case .diff(let parentDirectory) = mode {
      let digest: String?
      if let prepared = SnapshotSources.prepared, prepared.restoredFrom == parentDirectory {
        digest = prepared.parentContentDigest
      } else {
        digest = try LoadedSnapshot.readManifest(directory: parentDirectory).contentDigest
      }
      guard let digest else {
        throw VMMError(
          .invalidSnapshot,
          "\(parentDirectory)/manifest.json has no content_digest (written by an older forkd): take a full snapshot instead"
        )
      }
      parentContentDigest = digest
    }
    guard !FileSystem.exists(directory) else {
      throw VMMError(.snapshotExists, "\(directory) already exists: a snapshot is never overwritten")
    }
    let parent = parentDirectory(of: directory)
    guard FileSystem.isDirectory(parent) else {
      throw VMMError(.invalidConfig, "\(parent): the snapshot's parent directory does not exist")
    }
    let wasPaused = isPaused
    if !wasPaused { pause() }
    let pausedAt = Clock.monotonicNanoseconds()
    var resumedAt = pausedAt
    defer { if !wasPaused && resumedAt == pausedAt { resume() } }

    let staging = "\(directory).staging-\(getpid())-\(started)"
    do {
      try FileSystem.makeDirectory(staging, mode: 0o700)
    } catch {
      throw VMMError(.io, "cannot create the staging directory \(staging)", cause: error)
    }
    do throws(VMMError) {
      let state = try captureStateFile(staging: staging)
      let stateBytes = state.serialized()
      let memoryPath = staging + "/" + SnapshotManifest.defaultMemoryFile
      let memoryBytes: UInt64
      var diffIndex: PageIndex?
      switch mode {
      case .full:
        if let origin {
          memoryBytes = try writeMemory(to: memoryPath, over: origin, touched: DirtyPages.scan(memory))
        } else {
          memoryBytes = try writeMemory(to: memoryPath)
        }
      case .diff:
        var index = try DirtyPages.scan(memory)
        // A pager-backed VM also holds pages it only read: keep the ones that differ.
        if let origin { index = changedPages(index, comparedTo: origin) }
        memoryBytes = try writeDiffMemory(index, to: memoryPath)
        diffIndex = index
      }
      KillPoint.reached("snapshot-staging")
      // Memory (now in the page cache) and device state are captured: the guest may run while
      // the files reach the disk.
      if !wasPaused {
        resume()
        resumedAt = Clock.monotonicNanoseconds()
      }
      do {
        let fd = try FileDescriptor.open(memoryPath, .readOnly)
        defer { fd.close() }
        try fd.sync()
      } catch {
        throw VMMError(.io, "\(memoryPath): cannot sync guest memory", cause: error)
      }
      try writeFile(staging + "/" + SnapshotManifest.defaultStateFile, stateBytes)
      if let diffIndex { try writeFile(staging + "/" + PageIndex.fileName, diffIndex.serialized()) }
      let manifest = SnapshotManifest(
        memorySize: memory.size, vcpuCount: config.vcpuCount, guestKind: guestKind,
        guestImageDigest: guestImageDigest, createdAtUnix: Clock.unixSeconds(), parentTag: parentTag,
        stateDigest: SHA256.digestString(of: stateBytes),
        contentDigest: try layerDigest(memoryPath, diffIndex),
        memoryLayer: diffIndex == nil ? .full : .diff, parentContentDigest: parentContentDigest,
        pageIndexFile: diffIndex == nil ? nil : PageIndex.fileName)
      try writeFile(staging + "/manifest.json", Array(manifest.jsonText().utf8))
      try publish(staging, as: directory)
      let finished = Clock.monotonicNanoseconds()
      return SnapshotResult(
        directory: directory, manifest: manifest, memoryDataBytes: memoryBytes, stateBytes: UInt64(stateBytes.count),
        layerPages: diffIndex?.presentCount,
        pauseNanoseconds: wasPaused ? 0 : resumedAt - pausedAt, totalNanoseconds: finished - started)
    } catch {
      FileSystem.removeTree(staging)
      throw error
    }
  }

  func layerDigest(_ memoryPath: String, _ index: PageIndex?) throws(VMMError) -> String {
    do {
      return try LayerDigest.compute(memoryPath: memoryPath, index: index)
    } catch {
      throw VMMError(error)
    }
  }

  /// vCPUs, VM config and devices in one versioned container.
  /// A disk's overlay goes into `staging` (the snapshot directory being written).
  func captureStateFile(staging: String) throws(VMMError) -> StateFile {
    let msrIndices = try kvm.msrIndexList()
    let xsave = try kvm.check(CKVM_CAP_XSAVE) > 0
    let xcrs = try kvm.check(CKVM_CAP_XCRS) > 0
    var file = StateFile()
    file.append(
      tag: StateSectionTag.vmConfig, version: StoredVMConfig.version,
      StoredVMConfig(
        guestCID: config.guestCID, virtioDevices: virtioWindowCount,
        flags: vm.hasIrqchip ? StoredVMConfig.flagInKernelIrqchip : 0
      ).bytes)
    if vm.hasIrqchip {
      // kvmclock first: it is the guest's notion of time at the moment of the pause.
      file.append(tag: StateSectionTag.clock, version: 1, try vm.clockState())
      file.append(tag: StateSectionTag.pit, version: 1, try vm.pitState())
      let chips = [CKVM_IRQCHIP_PIC_MASTER, CKVM_IRQCHIP_PIC_SLAVE, CKVM_IRQCHIP_IOAPIC]
      var saved: [[UInt8]] = []
      for chip in chips { saved.append(try vm.irqchipState(chip)) }
      file.append(tag: StateSectionTag.irqchip, version: StoredIrqchips.version, StoredIrqchips(chips: saved).bytes)
    }
    for vcpu in vcpus {
      let state = try vcpu.captureState(
        msrIndices: msrIndices, hasIrqchip: vm.hasIrqchip, xsave: xsave, xcrs: xcrs, cpuid: cpuid)
      var w = ByteWriter()
      state.encode(into: &w)
      file.append(tag: StateSectionTag.vcpu, version: VCPUState.version, w.bytes)
    }
    file.append(tag: StateSectionTag.uart, version: UART16550.stateVersion, uart.saveState())
    file.append(tag: StateSectionTag.vsock, version: VirtioVsock.stateVersion, vsock.saveState())
    if let block {
      file.append(
        tag: StateSectionTag.block, version: VirtioBlock.stateVersion,
        try block.snapshot(overlayPath: staging + "/" + BlockStore.overlayFileName))
    }
    if let net { file.append(tag: StateSectionTag.net, version: VirtioNet.stateVersion, net.saveState()) }
    return file
  }

  /// Writes guest memory sparsely: runs of all-zero pages stay holes. Returns the data bytes.
  /// The caller syncs the file (after resuming the guest).
  func writeMemory(to path: String) throws(VMMError) -> UInt64 {
    do {
      let fd = try FileDescriptor.open(path, [.writeOnly, .create, .exclusive], mode: 0o600)
      defer { fd.close() }
      try fd.truncate(to: Int64(memory.size))
      let page = Int(GuestMemory.pageSize)
      let zero = UnsafeMutableRawPointer.allocate(byteCount: page, alignment: page)
      defer { zero.deallocate() }
      zero.initializeMemory(as: UInt8.self, repeating: 0, count: page)
      var written: UInt64 = 0
      for region in memory.regions {
        let pages = Int(region.size) / page
        var runStart: Int? = nil
        for index in 0...pages {
          let isData = index < pages && memcmp(region.host + index * page, zero, page) != 0
          if isData {
            if runStart == nil { runStart = index }
          } else if let start = runStart {
            let bytes = UnsafeRawBufferPointer(start: region.host + start * page, count: (index - start) * page)
            try fd.pwriteAll(bytes, at: Int64(region.fileOffset) + Int64(start * page))
            written += UInt64(bytes.count)
            runStart = nil
          }
        }
      }
      return written
    } catch {
      throw VMMError(.io, "\(path): cannot write guest memory", cause: error)
    }
  }

  func writeFile(_ path: String, _ bytes: [UInt8]) throws(VMMError) {
    do {
      try SnapshotFiles.write(path, bytes)
    } catch {
      throw VMMError(error)
    }
  }

  func publish(_ staging: String, as directory: String) throws(VMMError) {
    KillPoint.reached("snapshot-before-rename")
    do {
      try SnapshotFiles.publish(staging: staging, as: directory)
    } catch {
      throw VMMError(error)
    }
    KillPoint.reached("snapshot-published")
  }

  // MARK: Restore

  /// Rebuilds a VM from a snapshot directory. The VM is ready to `start()`; nothing of it runs yet.
  /// `memoryReady` runs once guest memory exists and before any vCPU or device state is set:
  /// restoring state makes KVM and devices touch guest pages (kvmclock, steal time, rings), and
  /// with the uffd backend those pages must already be the pager's — an unregistered anonymous
  /// page touched there would be a zero page the pager's copy can no longer replace.
  public static func restore(
    from directory: String, backend: RestoreBackend = .file, shmemImage: String? = nil, vsockSocketPath: String,
    diskBasePath: String? = nil, tap: FileDescriptor? = nil, consoleSink: @escaping @Sendable (String) -> Void,
    logger: Logger,
    timings: UnsafeMutablePointer<RestoreTimings>? = nil,
    memoryReady: ((GuestMemory) throws(VMMError) -> Void)? = nil
  ) throws(VMMError) -> VirtualMachine {
    let t0 = Clock.monotonicNanoseconds()
    let loaded = try LoadedSnapshot(directory: directory)
    let manifest = loaded.manifest
    let memoryPath = directory + "/" + manifest.memoryFile
    if manifest.memoryLayer == .diff && backend != .uffd {
      throw VMMError(
        .invalidSnapshot,
        "\(directory) is a diff layer over \(manifest.parentTag ?? "?"): the \(backend.rawValue) backend maps one flat memory.bin; restore it with the uffd backend (the pager serves the chain) or compact it first"
      )
    }
    let memoryBackend: MemoryBackend
    switch backend {
    case .file: memoryBackend = .file(path: memoryPath)
    case .uffd: memoryBackend = .userfault(path: memoryPath)
    case .shmem:
      guard let shmemImage else {
        throw VMMError(.invalidConfig, "the shmem backend needs the shmem image of the snapshot")
      }
      memoryBackend = .shmemMinor(path: shmemImage)
    }
    let memory = try GuestMemory.create(size: manifest.memorySize, backend: memoryBackend)
    try memoryReady?(memory)
    let t1 = Clock.monotonicNanoseconds()

    let storedConfig: StoredVMConfig
    do {
      guard let section = loaded.state.section(StateSectionTag.vmConfig) else {
        throw ProtocolError(.missingField, "\(loaded.stateSource): no VM config section")
      }
      storedConfig = try StoredVMConfig(
        section.bytes, version: section.version, source: "\(loaded.stateSource) section VCFG")
    } catch {
      throw VMMError(.invalidSnapshot, "\(error)")
    }
    // The disk: the same base image, with the snapshot's overlay underneath this child's writes.
    var disk: BlockDeviceConfig? = nil
    if let section = loaded.state.section(StateSectionTag.block) {
      let saved: VirtioBlock.SavedDisk
      do {
        guard section.version == VirtioBlock.stateVersion else {
          throw ProtocolError(
            .unsupportedVersion,
            "\(loaded.stateSource): virtio-blk state version \(section.version), this forkd reads \(VirtioBlock.stateVersion)"
          )
        }
        saved = try VirtioBlock.savedDisk(section.bytes, source: "\(loaded.stateSource) section VBLK")
      } catch {
        throw VMMError(.invalidSnapshot, "\(error)")
      }
      disk = BlockDeviceConfig(
        basePath: diskBasePath ?? saved.basePath,
        inherited: .init(path: directory + "/" + BlockStore.overlayFileName, blocks: saved.overlayBlocks))
      let store = try BlockStore(disk!)
      guard store.size == saved.size else {
        throw VMMError(
          .invalidSnapshot,
          "\(disk!.basePath): the disk image is \(store.size) bytes, the snapshot's disk was \(saved.size): not the same base image"
        )
      }
    }
    // The NIC: the snapshot's MAC (every child keeps its parent's), this child's backend.
    var network: NetworkConfig? = nil
    if let section = loaded.state.section(StateSectionTag.net) {
      do {
        guard section.version == VirtioNet.stateVersion else {
          throw ProtocolError(
            .unsupportedVersion,
            "\(loaded.stateSource): virtio-net state version \(section.version), this forkd reads \(VirtioNet.stateVersion)"
          )
        }
        let mac = try VirtioNet.savedMAC(section.bytes, source: "\(loaded.stateSource) section VNET")
        network = NetworkConfig(mac: mac, backend: tap)
      } catch {
        throw VMMError(.invalidSnapshot, "\(error)")
      }
    } else if tap != nil {
      throw VMMError(
        .invalidConfig,
        "\(directory) has no NIC (its parent was booted without one): a TAP cannot be attached to its children")
    }
    let vcpuSections = loaded.state.sections(StateSectionTag.vcpu)
    guard vcpuSections.count == Int(manifest.vcpuCount) else {
      throw VMMError(
        .invalidSnapshot,
        "\(loaded.stateSource): \(vcpuSections.count) vCPU sections but manifest.json says vcpu_count \(manifest.vcpuCount)"
      )
    }
    let config = MachineConfig(
      memorySize: manifest.memorySize, vcpuCount: manifest.vcpuCount, guestCID: storedConfig.guestCID,
      vsockSocketPath: vsockSocketPath, disk: disk, network: network, consoleSink: consoleSink)
    let hasIrqchip = storedConfig.flags & StoredVMConfig.flagInKernelIrqchip != 0
    guard hasIrqchip == (manifest.guestKind == linuxGuestKind) else {
      throw VMMError(
        .invalidSnapshot,
        "\(loaded.stateSource): guest kind \(manifest.guestKind) but the VM config says in-kernel irqchip = \(hasIrqchip)"
      )
    }
    let kvm = try KVMSystem()
    let machine = try VirtualMachine(
      config: config, memory: memory, kvm: kvm, guestKind: manifest.guestKind,
      guestImageDigest: manifest.guestImageDigest, restoredFrom: lastPathComponent(directory), logger: logger)
    let t2 = Clock.monotonicNanoseconds()

    do {
      if hasIrqchip {
        // VM-wide devices before the vCPUs: the local APICs deliver into this irqchip state.
        for tag in [StateSectionTag.pit, StateSectionTag.clock, StateSectionTag.irqchip] {
          guard let section = loaded.state.section(tag) else {
            throw ProtocolError(.missingField, "\(loaded.stateSource): no \(StateSectionTag.name(tag)) section")
          }
          guard section.version == 1 else {
            throw ProtocolError(
              .unsupportedVersion,
              "\(loaded.stateSource): \(StateSectionTag.name(tag)) version \(section.version), this forkd reads 1")
          }
          switch tag {
          case StateSectionTag.pit:
            try sized(section.bytes, MemoryLayout<kvm_pit_state2>.size, "PIT2", loaded.stateSource)
            try machine.vm.setPITState(section.bytes)
          case StateSectionTag.clock:
            try sized(section.bytes, MemoryLayout<kvm_clock_data>.size, "CLCK", loaded.stateSource)
            try machine.vm.setClockState(section.bytes)
          default:
            let chips = try StoredIrqchips(section.bytes, source: "\(loaded.stateSource) section IRQC")
            for chip in chips.chips { try machine.vm.setIrqchipState(chip) }
          }
        }
      }
      for (vcpu, section) in zip(machine.vcpus, vcpuSections) {
        guard section.version == VCPUState.version else {
          throw ProtocolError(
            .unsupportedVersion,
            "\(loaded.stateSource): vCPU state version \(section.version), this forkd reads \(VCPUState.version)")
        }
        let state = try VCPUState.decode(section.bytes, source: "\(loaded.stateSource) section VCPU \(vcpu.index)")
        let refused = try vcpu.applyState(state)
        if !refused.isEmpty {
          logger.debug("KVM refused MSRs on restore", metadata: ["msrs": "\(refused.map { hex64(UInt64($0)) })"])
        }
      }
      for (tag, name) in [(StateSectionTag.uart, "UART"), (StateSectionTag.vsock, "vsock")] {
        guard let section = loaded.state.section(tag) else {
          throw ProtocolError(.missingField, "\(loaded.stateSource): no \(name) section")
        }
        if tag == StateSectionTag.uart {
          try machine.uart.restoreState(section.bytes, version: section.version)
        } else {
          try machine.vsock.restoreState(section.bytes)
        }
      }
      if let block = machine.block, let section = loaded.state.section(StateSectionTag.block) {
        try block.restoreState(section.bytes, source: "\(loaded.stateSource) section VBLK")
      }
      if let net = machine.net, let section = loaded.state.section(StateSectionTag.net) {
        try net.restoreState(section.bytes, source: "\(loaded.stateSource) section VNET")
      }
      // Like Firecracker: a Linux guest drops its connections (their host ends are gone) and
      // keeps its listeners when told the transport was reset.
      if hasIrqchip { machine.vsock.queueTransportReset() }
    } catch let error as VMMError {
      throw error
    } catch {
      throw VMMError(.invalidSnapshot, "\(error)")
    }
    try machine.vsock.listen()
    let t3 = Clock.monotonicNanoseconds()
    timings?.pointee = RestoreTimings(
      readFilesNanoseconds: t1 - t0, kvmSetupNanoseconds: t2 - t1, stateRestoreNanoseconds: t3 - t2)
    return machine
  }
}

/// A snapshot directory's manifest and state, read and verified.
public struct LoadedSnapshot: Sendable {
  public let directory: String
  public let manifest: SnapshotManifest
  public let state: StateFile
  public var stateSource: String { directory + "/" + manifest.stateFile }

  /// Reads and validates `directory/manifest.json` alone.
  public static func readManifest(directory: String) throws(VMMError) -> SnapshotManifest {
    do {
      return try SnapshotManifest.read(directory: directory)
    } catch {
      throw VMMError(error)
    }
  }

  public init(directory: String) throws(VMMError) {
    self.directory = directory
    manifest = try Self.readManifest(directory: directory)
    let statePath = directory + "/" + manifest.stateFile
    let stateBytes: [UInt8]
    do {
      stateBytes = try FileSystem.readFile(statePath, limit: 64 << 20)
    } catch {
      throw VMMError(.invalidSnapshot, "\(statePath): cannot read the VM state", cause: error)
    }
    let digest = SHA256.digestString(of: stateBytes)
    guard digest == manifest.stateDigest else {
      throw VMMError(
        .invalidSnapshot,
        "\(statePath): content digest \(digest) does not match manifest.json state_digest \(manifest.stateDigest)")
    }
    do {
      state = try StateFile.parse(stateBytes, source: statePath)
    } catch {
      throw VMMError(.invalidSnapshot, error.message)
    }
  }
}

/// Checks a raw KVM struct's size before it is reinterpreted.
private func sized(_ bytes: [UInt8], _ expected: Int, _ name: String, _ source: String) throws(ProtocolError) {
  guard bytes.count == expected else {
    throw ProtocolError(
      .badValue,
      "\(source): \(name) is \(bytes.count) bytes, this host's KVM uses \(expected): snapshot from another kernel?")
  }
}

func lastPathComponent(_ path: String) -> String {
  String(path.split(separator: "/").last ?? Substring(path))
}
