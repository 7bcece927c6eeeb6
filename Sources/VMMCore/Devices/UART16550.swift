import Protocol
import Syscalls

/// A 16550A UART as the console: output only (the guest never blocks on it), lines go to a sink.
public final class UART16550: PortIODevice, @unchecked Sendable {
  public static let com1: UInt16 = 0x3F8
  public static let maxLine = 4096

  public let portRange: Range<UInt16>
  private let lock = ConditionLock()
  private let sink: @Sendable (String) -> Void
  /// Pulses the UART's interrupt line (IRQ 4 through an irqfd) when a Linux guest uses it;
  /// nil for the test guest, which polls LSR and never enables UART interrupts.
  private let interruptLine: (@Sendable () -> Void)?

  // Register file (DLAB selects the divisor latch at offsets 0 and 1).
  struct Registers: Equatable {
    var divisorLow: UInt8 = 0x0C  // 9600 baud
    var divisorHigh: UInt8 = 0
    var interruptEnable: UInt8 = 0
    var fifoControl: UInt8 = 0
    var lineControl: UInt8 = 0x03  // 8N1
    var modemControl: UInt8 = 0x08  // OUT2
    var scratch: UInt8 = 0
  }
  private var registers = Registers()
  private var line: [UInt8] = []
  /// The "THR empty" interrupt is pending until the guest reads IIR (16550 semantics): output
  /// is transmitted at once, so THR is empty right after every write.
  private var transmitterEmptyPending = false

  public init(
    base: UInt16 = com1, sink: @escaping @Sendable (String) -> Void, interruptLine: (@Sendable () -> Void)? = nil
  ) {
    portRange = base..<(base + 8)
    self.sink = sink
    self.interruptLine = interruptLine
  }

  private var dlab: Bool { registers.lineControl & 0x80 != 0 }

  public func portRead(offset: UInt16, size: Int) -> UInt32 {
    lock.withLock {
      switch offset {
      case 0: UInt32(dlab ? registers.divisorLow : 0)  // no input: RBR reads 0
      case 1: UInt32(dlab ? registers.divisorHigh : registers.interruptEnable)
      case 2: UInt32(readInterruptIdentificationLocked())
      case 3: UInt32(registers.lineControl)
      case 4: UInt32(registers.modemControl)
      case 5: UInt32(0x60)  // LSR: THR empty and transmitter idle, always
      case 6: UInt32(modemStatusLocked())
      case 7: UInt32(registers.scratch)
      default: 0xFF
      }
    }
  }

  public func portWrite(offset: UInt16, size: Int, value: UInt32) {
    let byte = UInt8(truncatingIfNeeded: value)
    var complete: String? = nil
    let raise: Bool = lock.withLock {
      switch offset {
      case 0:
        if dlab {
          registers.divisorLow = byte
        } else {
          complete = transmit(byte)
          transmitterEmptyPending = true
          return registers.interruptEnable & 0x02 != 0
        }
      case 1:
        if dlab {
          registers.divisorHigh = byte
        } else {
          let enablesTransmitInterrupt = byte & 0x02 != 0 && registers.interruptEnable & 0x02 == 0
          registers.interruptEnable = byte & 0x0F
          // Enabling the THR-empty interrupt while THR is empty raises it at once.
          if enablesTransmitInterrupt {
            transmitterEmptyPending = true
            return true
          }
        }
      case 2: registers.fifoControl = byte
      case 3: registers.lineControl = byte
      case 4: registers.modemControl = byte & 0x1F
      case 7: registers.scratch = byte
      default: break
      }
      return false
    }
    // The sink and the interrupt run outside the lock: they do I/O.
    if let complete { sink(complete) }
    if raise, let interruptLine { interruptLine() }
  }

  /// IIR: FIFOs enabled; THR empty (0x02) when pending and enabled (reading clears it), else none.
  private func readInterruptIdentificationLocked() -> UInt8 {
    guard interruptLine != nil else { return 0xC1 }
    if transmitterEmptyPending && registers.interruptEnable & 0x02 != 0 {
      transmitterEmptyPending = false
      return 0xC2
    }
    return 0xC1
  }

  /// MSR: DCD, DSR, CTS; in loopback mode (MCR bit 4) the modem outputs read back as inputs,
  /// which is what Linux's 8250 probe checks before it accepts the port.
  private func modemStatusLocked() -> UInt8 {
    let mcr = registers.modemControl
    guard mcr & 0x10 != 0 else { return 0xB0 }
    var status: UInt8 = 0
    if mcr & 0x02 != 0 { status |= 0x10 }  // RTS → CTS
    if mcr & 0x01 != 0 { status |= 0x20 }  // DTR → DSR
    if mcr & 0x04 != 0 { status |= 0x40 }  // OUT1 → RI
    if mcr & 0x08 != 0 { status |= 0x80 }  // OUT2 → DCD
    return status
  }

  private func transmit(_ byte: UInt8) -> String? {
    if byte == UInt8(ascii: "\n") || line.count >= Self.maxLine {
      defer { line.removeAll(keepingCapacity: true) }
      return String(decoding: line, as: UTF8.self)
    }
    if byte != UInt8(ascii: "\r") { line.append(byte) }
    return nil
  }

  /// Flushes a partial line (on VM exit).
  public func flush() {
    let rest: String? = lock.withLock {
      guard !line.isEmpty else { return nil }
      defer { line.removeAll() }
      return String(decoding: line, as: UTF8.self)
    }
    if let rest { sink(rest) }
  }

  // MARK: State

  /// Version 2 appends the pending THR-empty interrupt; version 1 sections are still read.
  public static let stateVersion: UInt32 = 2

  public func saveState() -> [UInt8] {
    lock.withLock {
      var w = ByteWriter()
      w.u8(registers.divisorLow)
      w.u8(registers.divisorHigh)
      w.u8(registers.interruptEnable)
      w.u8(registers.fifoControl)
      w.u8(registers.lineControl)
      w.u8(registers.modemControl)
      w.u8(registers.scratch)
      w.lengthPrefixed(line)
      w.u8(transmitterEmptyPending ? 1 : 0)
      return w.bytes
    }
  }

  public func restoreState(_ bytes: [UInt8], version: UInt32 = stateVersion) throws(ProtocolError) {
    guard (1...Self.stateVersion).contains(version) else {
      throw ProtocolError(
        .unsupportedVersion, "vmstate.bin section UART: version \(version), this forkd reads 1...\(Self.stateVersion)")
    }
    var r = ByteReader(bytes, source: "vmstate.bin section UART")
    var restored = Registers()
    restored.divisorLow = try r.u8()
    restored.divisorHigh = try r.u8()
    restored.interruptEnable = try r.u8()
    restored.fifoControl = try r.u8()
    restored.lineControl = try r.u8()
    restored.modemControl = try r.u8()
    restored.scratch = try r.u8()
    let pending = try r.lengthPrefixed(max: Self.maxLine)
    let emptyPending = version >= 2 ? try r.u8() != 0 : false
    try r.expectEnd()
    lock.withLock {
      registers = restored
      line = pending
      transmitterEmptyPending = emptyPending
    }
  }
}
