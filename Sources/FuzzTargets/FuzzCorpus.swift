#if canImport(Glibc)
  import Glibc
#endif

/// Reading corpus files without Foundation.
public enum FuzzCorpus {
  /// `path` itself if it is a file, else the regular files directly inside it, sorted.
  public static func files(at path: String) -> [String] {
    var st = stat()
    guard stat(path, &st) == 0 else { return [] }
    if st.st_mode & S_IFMT != S_IFDIR { return [path] }
    guard let dir = opendir(path) else { return [] }
    defer { closedir(dir) }
    var names: [String] = []
    while let entry = readdir(dir) {
      let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
        String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
      }
      if name.hasPrefix(".") { continue }
      var fst = stat()
      if stat(path + "/" + name, &fst) == 0, fst.st_mode & S_IFMT == S_IFREG { names.append(path + "/" + name) }
    }
    return names.sorted()
  }

  public static func read(_ path: String) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var result: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
      let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
      if n < 0 {
        if errno == EINTR { continue }
        return nil
      }
      if n == 0 { return result }
      result += buffer[0..<n]
    }
  }

  public static func write(_ bytes: [UInt8], to path: String) -> Bool {
    let fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0o644)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
    return n == bytes.count
  }
}
