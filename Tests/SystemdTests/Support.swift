import Syscalls
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// Running the real tools (probe, systemd-socket-activate, journalctl, systemd-analyze) with a
/// deadline: output is read while the process runs, and a process still running at the deadline
/// is SIGKILLed and reaped. Nothing outlives the call.
enum Tool {
  struct Run: CustomStringConvertible {
    var termination: ChildProcess.Termination?
    var output: String
    var succeeded: Bool { termination == .exited(0) }
    var lines: [String] { output.split(separator: "\n").map(String.init) }
    var description: String { "\(termination.map { "\($0)" } ?? "timed out"):\n\(output)" }
  }

  /// Runs `path` (argv[0] = path) and collects stdout and stderr together.
  static func run(
    _ path: String, _ arguments: [String], environment: [String]? = nil, timeoutMS: Int = 20_000,
    whileRunning: ((pid_t) -> Void)? = nil
  ) throws -> Run {
    let (readEnd, writeEnd) = try FileDescriptor.pipe()
    defer { readEnd.close() }
    let pid: pid_t
    do {
      pid = try ChildProcess.spawn(
        path: path, arguments: [path] + arguments, environment: environment, stdoutFD: writeEnd, stderrFD: writeEnd)
    } catch {
      writeEnd.close()
      throw error
    }
    writeEnd.close()
    whileRunning?(pid)
    let deadline = Clock.monotonicNanoseconds() + UInt64(timeoutMS) * 1_000_000
    var bytes: [UInt8] = []
    var termination: ChildProcess.Termination? = nil
    var open = true
    while open || termination == nil {
      if Clock.monotonicNanoseconds() >= deadline { break }
      if open {
        let ready = (try? Poll.wait([(readEnd, [.readable, .hangup])], timeoutMS: 20)) ?? []
        if let events = ready.first, !events.isEmpty {
          let chunk = (try? readEnd.read(upTo: 65536)) ?? []
          if chunk.isEmpty { open = false } else { bytes += chunk }
        }
      } else {
        Clock.sleep(milliseconds: 2)
      }
      if termination == nil { termination = try? ChildProcess.wait(pid, block: false) }
    }
    if termination == nil {
      // Past the deadline: kill and reap (a grandchild holding the pipe cannot block us: we stop
      // reading here).
      termination = nil
      ChildProcess.waitOrKill(pid, timeoutMS: 0)
    }
    return Run(termination: termination, output: String(decoding: bytes, as: UTF8.self))
  }

  /// `name` on PATH (plus /usr/sbin, /sbin, /lib/systemd, /usr/lib/systemd), or nil.
  static func find(_ name: String) -> String? {
    let path = getenv("PATH").map { String(cString: $0) } ?? "/usr/bin:/bin"
    let directories =
      path.split(separator: ":").map(String.init) + [
        "/usr/sbin", "/sbin", "/usr/bin", "/bin", "/lib/systemd", "/usr/lib/systemd",
      ]
    for directory in directories where access(directory + "/" + name, X_OK) == 0 {
      return directory + "/" + name
    }
    return nil
  }

  /// forkd-systemd-probe, next to the test binary (`swift build --build-tests` builds it).
  static func probePath() throws -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    try #require(n > 0, "readlink /proc/self/exe: \(Errno.current)")
    let exe = String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    var directory = parent(of: exe)
    while !directory.isEmpty && !FileSystem.exists(directory + "/forkd-systemd-probe") {
      directory = parent(of: directory)
    }
    let path = directory + "/forkd-systemd-probe"
    try #require(FileSystem.exists(path), "forkd-systemd-probe not found next to \(exe)")
    return path
  }

  static func parent(of path: String) -> String {
    path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
  }
}

/// A private temporary directory, removed with everything in it by `remove()`.
struct TemporaryDirectory {
  let path: String

  init(_ prefix: String = "forkd-systemd-test") throws {
    var template = Array("/tmp/\(prefix).XXXXXX".utf8CString)
    let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    try #require(made != nil, "mkdtemp: \(Errno.current)")
    path = String(cString: made!)
  }

  func remove() { FileSystem.removeTree(path) }

  func write(_ name: String, _ text: String, mode: mode_t = 0o644) throws {
    let file = path + "/" + name
    let fd = try FileDescriptor.open(file, [.writeOnly, .create, .truncate], mode: mode)
    defer { fd.close() }
    try fd.writeAll(Array(text.utf8))
    _ = chmod(file, mode)
  }

  func read(_ name: String) throws -> String {
    String(decoding: try FileSystem.readFile(path + "/" + name), as: UTF8.self)
  }
}

/// A random lowercase hex string (for test-owned names and ids).
func randomToken(_ bytes: Int = 6) -> String {
  var generator = SystemRandomNumberGenerator()
  return (0..<bytes).map { _ in
    let byte = UInt8.random(in: 0...255, using: &generator)
    let hex = String(byte, radix: 16)
    return byte < 16 ? "0" + hex : hex
  }.joined()
}

/// "key value" lines of the probe's output: the value of the first line starting with `key `.
extension Tool.Run {
  func value(_ key: String) -> String? {
    lines.first { $0.hasPrefix(key + " ") }.map { String($0.dropFirst(key.count + 1)) }
  }
}
