import Protocol
import Testing

@Suite("Page index (pages.idx)")
struct PageIndexTests {
  @Test func roundTrip() throws {
    var index = PageIndex(pageCount: 16384)
    for page in [0, 1, 63, 64, 4095, 16383] { index.insert(page) }
    index.insert(64)  // twice: counted once
    #expect(index.presentCount == 6)
    let parsed = try PageIndex.parse(index.serialized(), source: "pages.idx", expectedPages: 16384)
    #expect(parsed == index)
    #expect(parsed.pages == [0, 1, 63, 64, 4095, 16383])
    #expect(parsed.contains(4095) && !parsed.contains(4094) && !parsed.contains(16384) && !parsed.contains(-1))
  }

  @Test func damagedIndicesAreRefusedWithTheReason() {
    var index = PageIndex(pageCount: 100)
    index.insert(7)
    let good = index.serialized()
    func failure(_ bytes: [UInt8], pages: Int = 100) -> ProtocolError? {
      #expect(throws: ProtocolError.self) { try PageIndex.parse(bytes, source: "pages.idx", expectedPages: pages) }
    }
    var flipped = good
    flipped[good.count - 6] ^= 0x10
    #expect(failure(flipped)?.code == .badChecksum)
    #expect(failure(Array(good.dropLast(3)))?.code == .truncated)
    var magic = good
    magic[0] = 0
    #expect(failure(magic)?.code == .badMagic)
    #expect(failure(good, pages: 101)?.message.contains("does not match the snapshot's 101 pages") == true)
    #expect(failure(good + [0])?.code != nil)
  }
}
