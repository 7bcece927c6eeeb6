import Protocol
import Testing

@Suite("SHA-256 and CRC-32")
struct HashTests {
  func sha(_ s: String) -> String {
    var h = SHA256()
    h.update(Array(s.utf8))
    return SHA256.hex(of: h.finalize())
  }

  @Test func nistVectors() {
    #expect(sha("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    #expect(sha("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    #expect(
      sha("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")
        == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    #expect(
      sha(
        "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"
      )
        == "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1")
  }

  @Test func oneMillionA() {
    var h = SHA256()
    let chunk = [UInt8](repeating: UInt8(ascii: "a"), count: 1000)
    for _ in 0..<1000 { h.update(chunk) }
    #expect(SHA256.hex(of: h.finalize()) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
  }

  @Test func oneMillionAInOneRawBuffer() {
    let all = [UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000)
    var h = SHA256()
    all.withUnsafeBytes { h.update($0) }
    #expect(SHA256.hex(of: h.finalize()) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
  }

  @Test func splitUpdatesMatchOneShot() {
    let data = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
    let expected = SHA256.hash(data)
    for split in [1, 3, 55, 56, 63, 64, 65, 127, 128, 999] {
      var h = SHA256()
      var i = 0
      while i < data.count {
        let end = min(i + split, data.count)
        h.update(data[i..<end])  // ArraySlice
        i = end
      }
      #expect(h.finalize() == expected, "split \(split)")
    }
    // Non-contiguous collections take the copying path.
    var h = SHA256()
    h.update(data.lazy.map { $0 })
    #expect(h.finalize() == expected)
  }

  @Test func paddingBoundaries() {
    // Lengths around the 55/56/64-byte padding edges, against known digests.
    #expect(
      sha(String(repeating: "a", count: 55)) == "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318")
    #expect(
      sha(String(repeating: "a", count: 56)) == "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a")
    #expect(
      sha(String(repeating: "a", count: 64)) == "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb")
  }

  @Test func finalizeResets() {
    var h = SHA256()
    h.update(Array("abc".utf8))
    _ = h.finalize()
    h.update(Array("abc".utf8))
    #expect(SHA256.hex(of: h.finalize()) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
  }

  @Test func digestStrings() {
    let d = SHA256.digestString(of: Array("abc".utf8))
    #expect(d == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    #expect(SHA256.isDigestString(d))
    #expect(!SHA256.isDigestString(d.uppercased()))
    #expect(!SHA256.isDigestString("sha256:" + String(repeating: "A", count: 64)))
    #expect(!SHA256.isDigestString("sha256:" + String(repeating: "0", count: 63)))
    #expect(!SHA256.isDigestString("sha256:" + String(repeating: "0", count: 65)))
    #expect(!SHA256.isDigestString("sha512:" + String(repeating: "0", count: 64)))
    #expect(!SHA256.isDigestString("sha256:" + String(repeating: "g", count: 64)))
    #expect(SHA256.hex(of: [0x00, 0x0f, 0xf0, 0xff]) == "000ff0ff")
  }

  @Test func crc32() {
    #expect(CRC32.checksum(Array("123456789".utf8)) == 0xCBF4_3926)
    #expect(CRC32.checksum([UInt8]()) == 0)
    #expect(CRC32.checksum(Array("The quick brown fox jumps over the lazy dog".utf8)) == 0x414F_A339)
    var c = CRC32()
    c.update(Array("1234".utf8))
    c.update(Array("56789".utf8))
    #expect(c.value == 0xCBF4_3926)
  }
}
