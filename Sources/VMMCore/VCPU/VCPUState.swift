import CKVM
import Protocol

/// Everything KVM exposes about one vCPU, captured while it is paused.
///
/// KVM structs are stored as their raw bytes with their size: the layout is part of the Linux
/// UAPI (stable), and a size mismatch on restore is reported instead of misread.
public struct VCPUState: Sendable, Equatable {
  public static let version: UInt32 = 1

  public var index: UInt32
  public var regs: [UInt8]
  public var sregs: [UInt8]
  /// `kvm_xsave` when the host has KVM_CAP_XSAVE, else `kvm_fpu`.
  public var fpu: [UInt8]
  public var fpuIsXsave: Bool
  public var xcrs: [UInt8]?
  public var msrs: [MSR]
  public var events: [UInt8]?
  public var mpState: [UInt8]
  public var debugRegs: [UInt8]?
  public var lapic: [UInt8]?
  public var cpuid: [UInt8]

  public struct MSR: Sendable, Equatable {
    public var index: UInt32
    public var value: UInt64
  }

  public func encode(into w: inout ByteWriter) {
    w.u32(index)
    w.lengthPrefixed(regs)
    w.lengthPrefixed(sregs)
    w.u8(fpuIsXsave ? 1 : 0)
    w.lengthPrefixed(fpu)
    func optional(_ bytes: [UInt8]?) {
      w.u8(bytes == nil ? 0 : 1)
      if let bytes { w.lengthPrefixed(bytes) }
    }
    optional(xcrs)
    w.u32(UInt32(msrs.count))
    for msr in msrs {
      w.u32(msr.index)
      w.u64(msr.value)
    }
    optional(events)
    w.lengthPrefixed(mpState)
    optional(debugRegs)
    optional(lapic)
    w.lengthPrefixed(cpuid)
  }

  public static func decode(_ bytes: [UInt8], source: String) throws(ProtocolError) -> VCPUState {
    var r = ByteReader(bytes, source: source)
    let limit = 1 << 20
    func optional(_ r: inout ByteReader) throws(ProtocolError) -> [UInt8]? {
      try r.u8() == 0 ? nil : try r.lengthPrefixed(max: limit)
    }
    let index = try r.u32()
    let regs = try sized(try r.lengthPrefixed(max: limit), MemoryLayout<kvm_regs>.size, "regs", source)
    let sregs = try sized(try r.lengthPrefixed(max: limit), MemoryLayout<kvm_sregs>.size, "sregs", source)
    let isXsave = try r.u8() != 0
    let fpu = try sized(
      try r.lengthPrefixed(max: limit), isXsave ? MemoryLayout<kvm_xsave>.size : MemoryLayout<kvm_fpu>.size,
      isXsave ? "xsave" : "fpu", source)
    let xcrs = try optional(&r).map { (b) throws(ProtocolError) in
      try sized(b, MemoryLayout<kvm_xcrs>.size, "xcrs", source)
    }
    let msrCount = try r.u32()
    guard msrCount <= 4096 else { throw ProtocolError(.badValue, "\(source): \(msrCount) MSRs") }
    var msrs: [MSR] = []
    for _ in 0..<msrCount { msrs.append(MSR(index: try r.u32(), value: try r.u64())) }
    let events = try optional(&r).map { (b) throws(ProtocolError) in
      try sized(b, MemoryLayout<kvm_vcpu_events>.size, "vcpu_events", source)
    }
    let mp = try sized(try r.lengthPrefixed(max: limit), MemoryLayout<kvm_mp_state>.size, "mp_state", source)
    let debug = try optional(&r).map { (b) throws(ProtocolError) in
      try sized(b, MemoryLayout<kvm_debugregs>.size, "debugregs", source)
    }
    let lapic = try optional(&r).map { (b) throws(ProtocolError) in
      try sized(b, MemoryLayout<kvm_lapic_state>.size, "lapic", source)
    }
    let cpuid = try r.lengthPrefixed(max: limit)
    guard cpuid.count % MemoryLayout<kvm_cpuid_entry2>.size == 0 else {
      throw ProtocolError(.badValue, "\(source): cpuid block of \(cpuid.count) bytes is not whole entries")
    }
    try r.expectEnd()
    return VCPUState(
      index: index, regs: regs, sregs: sregs, fpu: fpu, fpuIsXsave: isXsave, xcrs: xcrs, msrs: msrs, events: events,
      mpState: mp, debugRegs: debug, lapic: lapic, cpuid: cpuid)
  }

  private static func sized(_ bytes: [UInt8], _ expected: Int, _ name: String, _ source: String) throws(ProtocolError)
    -> [UInt8]
  {
    guard bytes.count == expected else {
      throw ProtocolError(
        .badValue,
        "\(source): \(name) is \(bytes.count) bytes, this host's KVM uses \(expected): snapshot from another kernel?")
    }
    return bytes
  }
}

func rawBytes<T>(of value: T) -> [UInt8] {
  withUnsafeBytes(of: value) { Array($0) }
}

func value<T>(_: T.Type, from bytes: [UInt8]) -> T {
  bytes.withUnsafeBytes { $0.loadUnaligned(as: T.self) }
}

extension VCPU {
  /// Captures the vCPU's state; the vCPU must not be running.
  func captureState(msrIndices: [UInt32], hasIrqchip: Bool, xsave: Bool, xcrs: Bool, cpuid: [kvm_cpuid_entry2])
    throws(VMMError)
    -> VCPUState
  {
    let fpu: [UInt8] =
      xsave
      ? rawBytes(of: try get(CKVM_GET_XSAVE, "KVM_GET_XSAVE", kvm_xsave()))
      : rawBytes(of: try get(CKVM_GET_FPU, "KVM_GET_FPU", kvm_fpu()))
    return VCPUState(
      index: index,
      regs: rawBytes(of: try getRegs()),
      sregs: rawBytes(of: try getSregs()),
      fpu: fpu,
      fpuIsXsave: xsave,
      xcrs: xcrs ? rawBytes(of: try get(CKVM_GET_XCRS, "KVM_GET_XCRS", kvm_xcrs())) : nil,
      msrs: try getMSRs(msrIndices).map { VCPUState.MSR(index: $0.index, value: $0.value) },
      events: rawBytes(of: try get(CKVM_GET_VCPU_EVENTS, "KVM_GET_VCPU_EVENTS", kvm_vcpu_events())),
      mpState: rawBytes(of: try get(CKVM_GET_MP_STATE, "KVM_GET_MP_STATE", kvm_mp_state())),
      debugRegs: rawBytes(of: try get(CKVM_GET_DEBUGREGS, "KVM_GET_DEBUGREGS", kvm_debugregs())),
      lapic: hasIrqchip ? rawBytes(of: try get(CKVM_GET_LAPIC, "KVM_GET_LAPIC", kvm_lapic_state())) : nil,
      cpuid: cpuid.flatMap { rawBytes(of: $0) })
  }

  /// Applies a captured state, in the order KVM needs: CPUID first (it shapes which MSRs and
  /// xsave features exist), then registers, then the event and run state.
  /// Returns the MSRs KVM refused to set.
  func applyState(_ state: VCPUState) throws(VMMError) -> [UInt32] {
    let entrySize = MemoryLayout<kvm_cpuid_entry2>.size
    let entries = stride(from: 0, to: state.cpuid.count, by: entrySize).map {
      value(kvm_cpuid_entry2.self, from: Array(state.cpuid[$0..<$0 + entrySize]))
    }
    if !entries.isEmpty { try setCPUID(entries) }
    try setSregs(value(kvm_sregs.self, from: state.sregs))
    try setRegs(value(kvm_regs.self, from: state.regs))
    if state.fpuIsXsave {
      try set(CKVM_SET_XSAVE, "KVM_SET_XSAVE", value(kvm_xsave.self, from: state.fpu))
    } else {
      try set(CKVM_SET_FPU, "KVM_SET_FPU", value(kvm_fpu.self, from: state.fpu))
    }
    if let xcrs = state.xcrs { try set(CKVM_SET_XCRS, "KVM_SET_XCRS", value(kvm_xcrs.self, from: xcrs)) }
    let refused = try setMSRs(state.msrs.map { ($0.index, $0.value) })
    if let debug = state.debugRegs {
      try set(CKVM_SET_DEBUGREGS, "KVM_SET_DEBUGREGS", value(kvm_debugregs.self, from: debug))
    }
    if let lapic = state.lapic {
      try set(CKVM_SET_LAPIC, "KVM_SET_LAPIC", value(kvm_lapic_state.self, from: lapic))
      // The APIC base MSR had to come before the LAPIC state; the TSC deadline arms the LAPIC
      // timer, so it is written again once the LAPIC exists in its restored mode.
      let deadline = state.msrs.filter { $0.index == 0x6E0 }.map { ($0.index, $0.value) }
      if !deadline.isEmpty { try setMSRs(deadline) }
    }
    try set(CKVM_SET_MP_STATE, "KVM_SET_MP_STATE", value(kvm_mp_state.self, from: state.mpState))
    if let events = state.events {
      try set(CKVM_SET_VCPU_EVENTS, "KVM_SET_VCPU_EVENTS", value(kvm_vcpu_events.self, from: events))
    }
    return refused
  }
}
