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
