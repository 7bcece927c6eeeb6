import Protocol
import Syscalls

/// A 16550A UART as the console: output only (the guest never blocks on it), lines go to a sink.
public final class UART16550: PortIODevice, @unchecked Sendable {
  public static let com1: UInt16 = 0x3F8
  public static let maxLine = 4096

  public let portRange: Range<UInt16>
  private let lock = ConditionLock()
  private let sink: @Sendable (String) -> Void

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

  public init(base: UInt16 = com1, sink: @escaping @Sendable (String) -> Void) {
    portRange = base..<(base + 8)
    self.sink = sink
  }

  private var dlab: Bool { registers.lineControl & 0x80 != 0 }

  public func portRead(offset: UInt16, size: Int) -> UInt32 {
    lock.withLock {
      switch offset {
      case 0: UInt32(dlab ? registers.divisorLow : 0)  // no input: RBR reads 0
      case 1: UInt32(dlab ? registers.divisorHigh : registers.interruptEnable)
      case 2: UInt32(0xC1)  // IIR: FIFOs enabled, no interrupt pending
      case 3: UInt32(registers.lineControl)
      case 4: UInt32(registers.modemControl)
      case 5: UInt32(0x60)  // LSR: THR empty and transmitter idle, always
      case 6: UInt32(0xB0)  // MSR: DCD, DSR, CTS
      case 7: UInt32(registers.scratch)
      default: 0xFF
      }
    }
  }

  public func portWrite(offset: UInt16, size: Int, value: UInt32) {
    let byte = UInt8(truncatingIfNeeded: value)
    var complete: String? = nil
    lock.withLock {
      switch offset {
      case 0:
        if dlab {
          registers.divisorLow = byte
        } else {
          complete = transmit(byte)
        }
      case 1:
        if dlab { registers.divisorHigh = byte } else { registers.interruptEnable = byte & 0x0F }
      case 2: registers.fifoControl = byte
      case 3: registers.lineControl = byte
      case 4: registers.modemControl = byte & 0x1F
      case 7: registers.scratch = byte
      default: break
      }
    }
    // The sink runs outside the lock: it may do I/O.
    if let complete { sink(complete) }
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

  public static let stateVersion: UInt32 = 1

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
      return w.bytes
    }
  }

  public func restoreState(_ bytes: [UInt8]) throws(ProtocolError) {
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
    try r.expectEnd()
    lock.withLock {
      registers = restored
      line = pending
    }
  }
}
