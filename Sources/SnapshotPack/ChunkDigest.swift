import CSHA256
import Protocol

/// `"sha256:<hex>"` of chunk-sized data through libcrypto (see CSHA256); falls back to the Swift
/// SHA256 if libcrypto reports an error.
enum ChunkDigest {
  static func digestString(_ buffer: UnsafeRawBufferPointer) -> String {
    var out = [UInt8](repeating: 0, count: 32)
    let rc = out.withUnsafeMutableBufferPointer { forkd_sha256(buffer.baseAddress, buffer.count, $0.baseAddress) }
    guard rc == 0 else {
      var hasher = SHA256()
      hasher.update(buffer)
      return "sha256:" + SHA256.hex(of: hasher.finalize())
    }
    return "sha256:" + SHA256.hex(of: out)
  }

  static func digestString(_ bytes: [UInt8]) -> String {
    bytes.withUnsafeBytes { digestString($0) }
  }
}
