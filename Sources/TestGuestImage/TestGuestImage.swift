// The project-owned test guest, embedded so forkd-vmm and the CLI can boot it without any
// file on disk. Built from guest/test-guest by GuestBuildPlugin; boot contract and agent
// protocol: docs/test-guest.md.

public enum TestGuestImage {
  /// The linked ELF64 image: ET_EXEC, EM_X86_64, PT_LOAD segments to be loaded at p_paddr
  /// (linked at 1 MiB), entry point in e_entry.
  public static let elf: [UInt8] = decodeHex(testGuestELFHex)

  /// Name printed in the guest's COM1 banner.
  public static let name: String = "forkd-test-guest"

  /// Guest version: the banner's version and the agent version reported by ping.
  public static let version: Int = 1
}

/// The generated source holds the image as one hex string literal: a large array literal
/// would be slow to type-check.
private func decodeHex(_ hex: StaticString) -> [UInt8] {
  hex.withUTF8Buffer { digits in
    [UInt8](unsafeUninitializedCapacity: digits.count / 2) { bytes, count in
      for i in 0..<digits.count / 2 {
        bytes[i] = nibble(digits[2 * i]) << 4 | nibble(digits[2 * i + 1])
      }
      count = digits.count / 2
    }
  }
}

/// '0'...'9' and 'a'...'f' as written by od(1).
private func nibble(_ digit: UInt8) -> UInt8 {
  digit <= UInt8(ascii: "9") ? digit &- UInt8(ascii: "0") : digit &- UInt8(ascii: "a") &+ 10
}
