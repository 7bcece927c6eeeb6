/// The test guest's fill and checksum functions (docs/test-guest.md), computed host side so
/// tests can predict what the guest reports without reading guest memory.
public enum TestGuestMath {
  /// Guest-physical start of the data area that fill/checksum operate on.
  public static let dataAreaBase: UInt64 = 0x40_0000
  public static let pageSize: UInt64 = 4096
  public static let wordsPerPage = 512

  /// The word repeated over page `page` by `fill(pages:seed:)`:
  /// `seed · 0x9E3779B97F4A7C15 + (page + 1) · 0xBF58476D1CE4E5B9` (mod 2^64).
  @inlinable
  public static func fillWord(page: UInt64, seed: UInt64) -> UInt64 {
    seed &* 0x9E37_79B9_7F4A_7C15 &+ (page &+ 1) &* 0xBF58_476D_1CE4_E5B9
  }

  /// The guest's checksum of the first `pages` pages right after `fill(pages, seed)`.
  ///
  /// Every 64-byte block of page p sums to 8·v(p), so a page costs 64 rotate-adds instead of
  /// reading 4 KiB: fast enough for gigabytes of guest memory.
  public static func checksum(pages: UInt64, seed: UInt64) -> UInt64 {
    var c: UInt64 = 0
    var page: UInt64 = 0
    while page < pages {
      let blockSum = fillWord(page: page, seed: seed) &* 8
      for _ in 0..<(wordsPerPage / 8) {
        c = (c << 7 | c >> 57) &+ blockSum
      }
      page += 1
    }
    return c
  }

  /// The guest's checksum over arbitrary words: for each 64-byte block in order,
  /// `c = rotl(c, 7) + q0 + … + q7`. A trailing partial block counts missing words as zero
  /// (the guest only checksums whole pages, so this never happens there).
  public static func checksum(of words: UnsafeBufferPointer<UInt64>) -> UInt64 {
    var c: UInt64 = 0
    var i = 0
    let n = words.count
    while i + 8 <= n {
      let s =
        words[i] &+ words[i + 1] &+ words[i + 2] &+ words[i + 3]
        &+ words[i + 4] &+ words[i + 5] &+ words[i + 6] &+ words[i + 7]
      c = (c << 7 | c >> 57) &+ s
      i += 8
    }
    if i < n {
      var s: UInt64 = 0
      while i < n {
        s &+= words[i]
        i += 1
      }
      c = (c << 7 | c >> 57) &+ s
    }
    return c
  }
}
