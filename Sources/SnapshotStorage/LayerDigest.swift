import Protocol
import Syscalls

/// The content digest of one memory layer, computed once from the written file (after the
/// guest resumed): SHA-256 over each page the layer holds with data, as its page number (u64
/// little-endian) followed by its 4096 bytes. For a full layer those are the non-hole pages;
/// for a diff layer the pages of its index.
public enum LayerDigest {
  public static func compute(memoryPath: String, index: PageIndex?) throws(SnapshotStorageError) -> String {
    do {
      let fd = try FileDescriptor.open(memoryPath, .readOnly)
      defer { fd.close() }
      let size = try fd.size()
      var hasher = SHA256()
      let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
      defer { buffer.deallocate() }
      func hashPages(_ first: Int, _ count: Int) throws(SyscallError) {
        var page = first
        while page < first + count {
          let n = min(count - (page - first), buffer.count / 4096)
          let chunk = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n * 4096])
          let read = try fd.pread(into: chunk, at: Int64(page) * 4096)
          guard read == chunk.count else { throw SyscallError("pread", .invalid, detail: "short read") }
          for i in 0..<n {
            var number = UInt64(page + i).littleEndian
            withUnsafeBytes(of: &number) { hasher.update($0) }
            hasher.update(UnsafeRawBufferPointer(rebasing: chunk[i * 4096..<(i + 1) * 4096]))
          }
          page += n
        }
      }
      if let index {
        var runStart = -1
        var runLength = 0
        for page in index.pages {
          if runStart >= 0 && page == runStart + runLength {
            runLength += 1
          } else {
            if runStart >= 0 { try hashPages(runStart, runLength) }
            runStart = page
            runLength = 1
          }
        }
        if runStart >= 0 { try hashPages(runStart, runLength) }
      } else {
        var offset: Int64 = 0
        while offset < size, let dataStart = try fd.seek(data: offset) {
          let dataEnd = try fd.seek(hole: dataStart) ?? size
          let first = Int(dataStart / 4096)
          let last = Int((dataEnd + 4095) / 4096)
          try hashPages(first, last - first)
          offset = dataEnd
        }
      }
      return "sha256:" + SHA256.hex(of: hasher.finalize())
    } catch {
      throw SnapshotStorageError(.io, "\(memoryPath): cannot compute the layer's content digest", cause: error)
    }
  }
}
