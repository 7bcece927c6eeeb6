import Synchronization
import Testing

@testable import VMMCore

@Suite("16550 UART")
struct UARTTests {
  final class Lines: Sendable {
    let lines = Mutex<[String]>([])
    func append(_ s: String) { lines.withLock { $0.append(s) } }
    var all: [String] { lines.withLock { $0 } }
  }

  @Test("bytes written to THR become lines; CR is dropped")
  func lines() {
    let sink = Lines()
    let uart = UART16550 { sink.append($0) }
    for byte in Array("hello\r\nworld\n".utf8) { uart.portWrite(offset: 0, size: 1, value: UInt32(byte)) }
    #expect(sink.all == ["hello", "world"])
  }

  @Test("LSR always reports an empty transmitter; DLAB switches offsets 0 and 1 to the divisor")
  func registers() {
    let uart = UART16550 { _ in }
    #expect(uart.portRead(offset: 5, size: 1) & 0x60 == 0x60)
    uart.portWrite(offset: 3, size: 1, value: 0x83)  // DLAB on
    uart.portWrite(offset: 0, size: 1, value: 0x01)
    uart.portWrite(offset: 1, size: 1, value: 0x02)
    #expect(uart.portRead(offset: 0, size: 1) == 1)
    #expect(uart.portRead(offset: 1, size: 1) == 2)
    uart.portWrite(offset: 3, size: 1, value: 0x03)  // DLAB off
    uart.portWrite(offset: 1, size: 1, value: 0xFF)
    #expect(uart.portRead(offset: 1, size: 1) == 0x0F, "IER keeps its 4 defined bits")
    uart.portWrite(offset: 7, size: 1, value: 0xAB)
    #expect(uart.portRead(offset: 7, size: 1) == 0xAB)
  }

  @Test("registers and a partial line survive save and restore")
  func state() throws {
    let sink = Lines()
    let uart = UART16550 { sink.append($0) }
    uart.portWrite(offset: 7, size: 1, value: 0x5A)
    for byte in Array("par".utf8) { uart.portWrite(offset: 0, size: 1, value: UInt32(byte)) }
    let saved = uart.saveState()
    let restored = UART16550 { sink.append($0) }
    try restored.restoreState(saved)
    #expect(restored.portRead(offset: 7, size: 1) == 0x5A)
    for byte in Array("tial\n".utf8) { restored.portWrite(offset: 0, size: 1, value: UInt32(byte)) }
    #expect(sink.all == ["partial"])
    #expect(throws: (any Error).self) { try restored.restoreState(Array(saved.dropLast())) }
  }
}

@Suite("UART interrupts (Linux)")
struct UARTInterruptTests {
  final class Counter: @unchecked Sendable { var value = 0 }

  @Test("THR-empty interrupt: raised when enabled and after each byte, cleared by reading IIR")
  func transmitInterrupt() {
    let raised = Counter()
    let uart = UART16550(sink: { _ in }, interruptLine: { raised.value += 1 })
    #expect(uart.portRead(offset: 2, size: 1) == 0xC1)
    uart.portWrite(offset: 1, size: 1, value: 0x02)  // IER: THRI
    #expect(raised.value == 1)
    #expect(uart.portRead(offset: 2, size: 1) == 0xC2)
    #expect(uart.portRead(offset: 2, size: 1) == 0xC1)
    uart.portWrite(offset: 0, size: 1, value: UInt32(UInt8(ascii: "x")))
    #expect(raised.value == 2)
    #expect(uart.portRead(offset: 2, size: 1) == 0xC2)
  }

  @Test("loopback mode reflects MCR outputs in MSR (Linux's 8250 probe)")
  func loopback() {
    let uart = UART16550(sink: { _ in }, interruptLine: {})
    uart.portWrite(offset: 4, size: 1, value: 0x1A)  // LOOP | OUT2 | RTS
    #expect(uart.portRead(offset: 6, size: 1) & 0xF0 == 0x90)
    uart.portWrite(offset: 4, size: 1, value: 0x0B)
    #expect(uart.portRead(offset: 6, size: 1) == 0xB0)
  }

  @Test("version 1 UART state (no pending flag) is still read")
  func versionOne() throws {
    let uart = UART16550(sink: { _ in })
    let v2 = uart.saveState()
    try uart.restoreState(Array(v2.dropLast()), version: 1)
    #expect(throws: (any Error).self) { try uart.restoreState(v2, version: 3) }
  }
}
