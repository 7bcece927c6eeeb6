import Syscalls

/// The guest's way out: an ACPI-style PM1a control port (0x604; writing SLP_EN 0x2000 powers off),
/// an exit-code port (0x605) and the i8042 reset command (0xFE to port 0x64).
public final class PowerControl: PortIODevice, @unchecked Sendable {
  public enum Event: Equatable, Sendable {
    case powerOff(exitCode: UInt8)
    case reset
  }

  public static let pm1aControl: UInt16 = 0x604
  public let portRange: Range<UInt16> = 0x604..<0x606
  private let lock = ConditionLock()
  private var exitCode: UInt8 = 0
  private let onEvent: @Sendable (Event) -> Void

  public init(onEvent: @escaping @Sendable (Event) -> Void) { self.onEvent = onEvent }

  public func portRead(offset: UInt16, size: Int) -> UInt32 { 0 }

  public func portWrite(offset: UInt16, size: Int, value: UInt32) {
    switch offset {
    case 0 where value & 0x2000 != 0:
      onEvent(.powerOff(exitCode: lock.withLock { exitCode }))
    case 1:
      lock.withLock { exitCode = UInt8(truncatingIfNeeded: value) }
    default: break
    }
  }
}

/// The i8042 keyboard controller, only for its reset line (Linux and the test guest reboot through it).
public final class I8042ResetPort: PortIODevice, @unchecked Sendable {
  public let portRange: Range<UInt16> = 0x64..<0x65
  private let onReset: @Sendable () -> Void

  public init(onReset: @escaping @Sendable () -> Void) { self.onReset = onReset }

  public func portRead(offset: UInt16, size: Int) -> UInt32 { 0 }

  public func portWrite(offset: UInt16, size: Int, value: UInt32) {
    if value & 0xFF == 0xFE { onReset() }
  }
}

/// Port 0x606 (test guest only): any write resumes every vCPU parked in hlt. With no interrupts
/// on PVM, this is how the test guest's vCPU 0 gets the others to run (docs/test-guest.md).
public final class VCPUWakePort: PortIODevice, @unchecked Sendable {
  public static let port: UInt16 = 0x606
  public let portRange: Range<UInt16> = 0x606..<0x607
  private let onWake: @Sendable () -> Void

  public init(onWake: @escaping @Sendable () -> Void) { self.onWake = onWake }

  public func portRead(offset: UInt16, size: Int) -> UInt32 { 0 }

  public func portWrite(offset: UInt16, size: Int, value: UInt32) { onWake() }
}
