/// SHA-256 (FIPS 180-4), streaming.
///
/// Protocol may not link Foundation/CryptoKit, and the guest image and state digests
/// (`"sha256:<hex>"`) must be computed in small per-child processes, so this is self-contained.
public struct SHA256: Sendable {
  private var state: [UInt32]
  private var pending: [UInt8]
  private var totalBytes: UInt64

  private static let initialState: [UInt32] = [
    0x6a09_e667, 0xbb67_ae85, 0x3c6e_f372, 0xa54f_f53a,
    0x510e_527f, 0x9b05_688c, 0x1f83_d9ab, 0x5be0_cd19,
  ]

  private static let k: [UInt32] = [
    0x428a_2f98, 0x7137_4491, 0xb5c0_fbcf, 0xe9b5_dba5, 0x3956_c25b, 0x59f1_11f1, 0x923f_82a4, 0xab1c_5ed5,
    0xd807_aa98, 0x1283_5b01, 0x2431_85be, 0x550c_7dc3, 0x72be_5d74, 0x80de_b1fe, 0x9bdc_06a7, 0xc19b_f174,
    0xe49b_69c1, 0xefbe_4786, 0x0fc1_9dc6, 0x240c_a1cc, 0x2de9_2c6f, 0x4a74_84aa, 0x5cb0_a9dc, 0x76f9_88da,
    0x983e_5152, 0xa831_c66d, 0xb003_27c8, 0xbf59_7fc7, 0xc6e0_0bf3, 0xd5a7_9147, 0x06ca_6351, 0x1429_2967,
    0x27b7_0a85, 0x2e1b_2138, 0x4d2c_6dfc, 0x5338_0d13, 0x650a_7354, 0x766a_0abb, 0x81c2_c92e, 0x9272_2c85,
    0xa2bf_e8a1, 0xa81a_664b, 0xc24b_8b70, 0xc76c_51a3, 0xd192_e819, 0xd699_0624, 0xf40e_3585, 0x106a_a070,
    0x19a4_c116, 0x1e37_6c08, 0x2748_774c, 0x34b0_bcb5, 0x391c_0cb3, 0x4ed8_aa4a, 0x5b9c_ca4f, 0x682e_6ff3,
    0x748f_82ee, 0x78a5_636f, 0x84c8_7814, 0x8cc7_0208, 0x90be_fffa, 0xa450_6ceb, 0xbef9_a3f7, 0xc671_78f2,
  ]

  public init() {
    state = SHA256.initialState
    pending = []
    pending.reserveCapacity(64)
    totalBytes = 0
  }

  /// One-shot digest (32 bytes).
  public static func hash(_ bytes: some Collection<UInt8>) -> [UInt8] {
    var h = SHA256()
    h.update(bytes)
    return h.finalize()
  }

  public mutating func update(_ bytes: some Collection<UInt8>) {
    let done: Void? = bytes.withContiguousStorageIfAvailable { buffer in
      update(UnsafeRawBufferPointer(buffer))
    }
    if done == nil {
      let copy = Array(bytes)
      copy.withUnsafeBytes { update($0) }
    }
  }

  /// Hashes a large buffer (e.g. an mmap'ed image) without copying it.
  public mutating func update(_ buffer: UnsafeRawBufferPointer) {
    guard buffer.count > 0 else { return }
    totalBytes &+= UInt64(buffer.count)
    var index = 0
    if !pending.isEmpty {
      let take = min(64 - pending.count, buffer.count)
      pending.append(contentsOf: buffer[0..<take])
      index = take
      if pending.count == 64 {
        let block = pending
        block.withUnsafeBytes { compress(blocks: $0) }
        pending.removeAll(keepingCapacity: true)
      }
    }
    let fullBlocks = (buffer.count - index) / 64 * 64
    if fullBlocks > 0 {
      compress(blocks: UnsafeRawBufferPointer(rebasing: buffer[index..<index + fullBlocks]))
      index += fullBlocks
    }
    if index < buffer.count {
      pending.append(contentsOf: buffer[index...])
    }
  }

  /// Returns the 32-byte digest and resets the hasher to its initial state.
  public mutating func finalize() -> [UInt8] {
    let bitLength = totalBytes &* 8
    var tail = pending
    tail.append(0x80)
    while tail.count % 64 != 56 { tail.append(0) }
    for shift in stride(from: 56, through: 0, by: -8) {
      tail.append(UInt8(truncatingIfNeeded: bitLength >> UInt64(shift)))
    }
    tail.withUnsafeBytes { compress(blocks: $0) }
    var digest: [UInt8] = []
    digest.reserveCapacity(32)
    for word in state {
      digest.append(UInt8(truncatingIfNeeded: word >> 24))
      digest.append(UInt8(truncatingIfNeeded: word >> 16))
      digest.append(UInt8(truncatingIfNeeded: word >> 8))
      digest.append(UInt8(truncatingIfNeeded: word))
    }
    self = SHA256()
    return digest
  }

  /// Lowercase hex of any bytes (the digest form used in manifests).
  public static func hex(of bytes: [UInt8]) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    out.reserveCapacity(bytes.count * 2)
    for b in bytes {
      out.append(digits[Int(b >> 4)])
      out.append(digits[Int(b & 0xF)])
    }
    return String(decoding: out, as: UTF8.self)
  }

  private mutating func compress(blocks: UnsafeRawBufferPointer) {
    precondition(blocks.count % 64 == 0)
    var h0 = state[0], h1 = state[1], h2 = state[2], h3 = state[3]
    var h4 = state[4], h5 = state[5], h6 = state[6], h7 = state[7]
    SHA256.k.withUnsafeBufferPointer { k in
      withUnsafeTemporaryAllocation(of: UInt32.self, capacity: 64) { w in
        var offset = 0
        while offset < blocks.count {
          for t in 0..<16 {
            let p = offset + 4 * t
            w[t] =
              UInt32(blocks[p]) << 24 | UInt32(blocks[p + 1]) << 16
              | UInt32(blocks[p + 2]) << 8 | UInt32(blocks[p + 3])
          }
          for t in 16..<64 {
            let x = w[t - 15]
            let y = w[t - 2]
            let s0 = x.rotr(7) ^ x.rotr(18) ^ (x >> 3)
            let s1 = y.rotr(17) ^ y.rotr(19) ^ (y >> 10)
            w[t] = w[t - 16] &+ s0 &+ w[t - 7] &+ s1
          }
          var a = h0, b = h1, c = h2, d = h3, e = h4, f = h5, g = h6, h = h7
          for t in 0..<64 {
            let s1 = e.rotr(6) ^ e.rotr(11) ^ e.rotr(25)
            let ch = (e & f) ^ (~e & g)
            let t1 = h &+ s1 &+ ch &+ k[t] &+ w[t]
            let s0 = a.rotr(2) ^ a.rotr(13) ^ a.rotr(22)
            let maj = (a & b) ^ (a & c) ^ (b & c)
            let t2 = s0 &+ maj
            h = g
            g = f
            f = e
            e = d &+ t1
            d = c
            c = b
            b = a
            a = t1 &+ t2
          }
          h0 &+= a; h1 &+= b; h2 &+= c; h3 &+= d
          h4 &+= e; h5 &+= f; h6 &+= g; h7 &+= h
          offset += 64
        }
      }
    }
    state[0] = h0; state[1] = h1; state[2] = h2; state[3] = h3
    state[4] = h4; state[5] = h5; state[6] = h6; state[7] = h7
  }
}

extension UInt32 {
  @inline(__always)
  fileprivate func rotr(_ n: UInt32) -> UInt32 { (self >> n) | (self << (32 - n)) }
}

extension SHA256 {
  /// `"sha256:<64 lowercase hex>"`, the digest form stored in manifests.
  public static func digestString(of bytes: some Collection<UInt8>) -> String {
    "sha256:" + hex(of: hash(bytes))
  }

  /// Whether `s` has the exact `"sha256:<64 lowercase hex>"` form.
  public static func isDigestString(_ s: String) -> Bool {
    let utf8 = Array(s.utf8)
    guard utf8.count == 71, utf8.starts(with: "sha256:".utf8) else { return false }
    return utf8[7...].allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
  }
}
