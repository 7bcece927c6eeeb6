import CUffd
import Synchronization
import Syscalls
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// One page, as the wrappers and the kernel see it.
let pageSize = MemoryMapping.pageSize

/// How long any wait in these tests may last before the test gives up (and its fixture frees the
/// blocked threads by unregistering the range and closing the uffd).
let waitTimeoutMS = 5000

/// Returns the `SyscallError` thrown by `body`, or nil when it did not throw (any other error is
/// recorded as an issue).
func syscallError(_ body: () throws -> Void) -> SyscallError? {
  do {
    try body()
    return nil
  } catch let error as SyscallError {
    return error
  } catch {
    Issue.record("unexpected error \(error)")
    return nil
  }
}

/// Polls `condition` every millisecond for at most `timeoutMS`; returns whether it became true.
func waitUntil(timeoutMS: Int = waitTimeoutMS, _ condition: () throws -> Bool) rethrows -> Bool {
  let deadline = Clock.monotonicNanoseconds() + UInt64(timeoutMS) * 1_000_000
  while true {
    if try condition() { return true }
    if Clock.monotonicNanoseconds() >= deadline { return false }
    Clock.sleep(milliseconds: 1)
  }
}

/// readlink(2) of `path`, nil on failure.
func readLink(_ path: String) -> String? {
  var buffer = [CChar](repeating: 0, count: 512)
  let n = readlink(path, &buffer, buffer.count - 1)
  guard n >= 0 else { return nil }
  return String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// The calling thread's kernel thread id, from the /proc/thread-self link ("<pid>/task/<tid>").
func currentThreadID() -> UInt32 {
  guard let link = readLink("/proc/thread-self"), let last = link.split(separator: "/").last else { return 0 }
  return UInt32(last) ?? 0
}

/// The key/value lines of /proc/self/fdinfo/<fd>. For a uffd the kernel prints `pending` (faults
/// queued and not yet read), `total` (faults not yet woken, read or not) and
/// `API` ("<api>:<enabled features>:<ioctls>", in hex).
func fdinfo(_ fd: FileDescriptor) throws -> [String: String] {
  let file = try FileDescriptor.open("/proc/self/fdinfo/\(fd.rawValue)", .readOnly)
  defer { file.close() }
  let text = String(decoding: try file.readAll(limit: 1 << 16), as: UTF8.self)
  var result: [String: String] = [:]
  for line in text.split(separator: "\n") {
    guard let colon = line.firstIndex(of: ":") else { continue }
    let value = line[line.index(after: colon)...].drop(while: { $0 == " " || $0 == "\t" })
    result[String(line[..<colon])] = String(value)
  }
  return result
}

/// A counter from a uffd's fdinfo (`pending` or `total`).
func uffdCounter(_ uffd: Userfault, _ key: String) throws -> Int {
  try #require(Int(try fdinfo(uffd.fd)[key] ?? ""), "no \(key) in fdinfo of \(uffd.fd)")
}

/// The features the kernel enabled on this uffd context, from fdinfo's API line, without the
/// kernel-internal UFFD_FEATURE_INITIALIZED bit (1 << 31).
func enabledFeatures(_ uffd: Userfault) throws -> UInt64 {
  let api = try #require(try fdinfo(uffd.fd)["API"], "no API line in fdinfo of \(uffd.fd)")
  let fields = api.split(separator: ":")
  try #require(fields.count == 3, "unexpected API line \(api)")
  let features = try #require(UInt64(fields[1], radix: 16), "unexpected API line \(api)")
  return features & ~(UInt64(1) << 31)
}

/// Waits (poll with a deadline) until the uffd has events and reads them. Returns [] on timeout.
func awaitEvents(_ uffd: Userfault, max: Int = 64, timeoutMS: Int = waitTimeoutMS) throws -> [Userfault.Event] {
  let deadline = Clock.monotonicNanoseconds() + UInt64(timeoutMS) * 1_000_000
  while true {
    let now = Clock.monotonicNanoseconds()
    guard now < deadline else { return [] }
    let remaining = Int32(clamping: (deadline - now) / 1_000_000 + 1)
    let ready = try Poll.wait([(uffd.fd, .readable)], timeoutMS: remaining)
    if ready[0].contains(.readable) {
      let events = try #require(try uffd.readEvents(max: max), "EOF on \(uffd.fd)")
      if !events.isEmpty { return events }
    }
  }
}

/// `readEvents()` right now, after checking that the uffd is non-blocking (a blocking uffd with
/// nothing pending would sleep forever here).
func readNow(_ uffd: Userfault, max: Int = 64) throws -> [Userfault.Event]? {
  try #require(fcntl(uffd.fd.rawValue, F_GETFL) & O_NONBLOCK != 0, "\(uffd.fd) is blocking")
  return try uffd.readEvents(max: max)
}

/// Whether the uffd becomes readable within `timeoutMS` (without reading it).
func becomesReadable(_ fd: FileDescriptor, timeoutMS: Int = waitTimeoutMS) throws -> Bool {
  let ready = try Poll.wait([(fd, .readable)], timeoutMS: Int32(timeoutMS))
  return ready[0].contains(.readable)
}

/// What a touching thread saw, and when it got past the access.
struct Touch: Sendable, Equatable {
  var value: UInt8
  var finishedAt: UInt64
}

/// The shared state of a thread that touches one byte of memory (a read, or a write).
final class TouchState: Sendable {
  let address: UInt
  private let tid = Atomic<UInt32>(0)
  private let result = Mutex<Touch?>(nil)

  init(address: UInt) { self.address = address }

  /// The thread's kernel id, once it has started.
  var threadID: UInt32 { tid.load(ordering: .sequentiallyConsistent) }
  var touch: Touch? { result.withLock { $0 } }
  var isDone: Bool { touch != nil }

  /// Waits at most `timeoutMS` for the access to complete.
  func wait(timeoutMS: Int = waitTimeoutMS) -> Touch? {
    _ = waitUntil(timeoutMS: timeoutMS) { isDone }
    return touch
  }

  /// Waits until the thread has recorded its id (it then goes straight to the access).
  func waitStarted(timeoutMS: Int = waitTimeoutMS) -> Bool {
    waitUntil(timeoutMS: timeoutMS) { threadID != 0 }
  }

  fileprivate func run(write: UInt8?) {
    tid.store(currentThreadID(), ordering: .sequentiallyConsistent)
    let byte = UnsafeMutablePointer<UInt8>(bitPattern: address)!
    let value: UInt8
    if let write {
      byte.pointee = write
      value = write
    } else {
      value = byte.pointee
    }
    let finishedAt = Clock.monotonicNanoseconds()
    result.withLock { $0 = Touch(value: value, finishedAt: finishedAt) }
  }
}

/// A mapping registered on a fresh uffd, plus the threads that touch it. `close()` unregisters the
/// range (waking every thread blocked on it), closes the uffd, joins the threads, then unmaps:
/// nothing is left blocked, and nothing touches unmapped memory.
final class Lab {
  let base: UnsafeMutableRawPointer
  let size: Int
  let uffd: Userfault
  let granted: Userfault.Features
  private var threads: [OSThread] = []
  private var closed = false

  /// Maps `pages` of anonymous memory, lets `prepare` populate it, then registers it.
  convenience init(
    pages: Int, features: Userfault.Features = [], mode: Userfault.RegisterMode = .missing,
    prepare: (UnsafeMutableRawPointer) -> Void = { _ in }
  ) throws {
    try self.init(size: pages * pageSize, features: features, mode: mode) {
      let base = try MemoryMapping.anonymous(size: pages * pageSize)
      prepare(base)
      return base
    }
  }

  /// Registers the mapping that `map` returns (which the lab then owns and unmaps).
  init(
    size: Int, features: Userfault.Features, mode: Userfault.RegisterMode,
    map: () throws -> UnsafeMutableRawPointer
  ) throws {
    self.size = size
    base = try map()
    do {
      (uffd, granted) = try Userfault.create(features: features)
    } catch {
      MemoryMapping.unmap(base, size: size)
      throw error
    }
    do {
      try uffd.register(start: UInt64(UInt(bitPattern: base)), length: UInt64(size), mode: mode)
    } catch {
      uffd.fd.close()
      MemoryMapping.unmap(base, size: size)
      closed = true  // fully initialized here: deinit runs and must not free anything again
      throw error
    }
  }

  deinit { close() }

  func address(_ page: Int, _ offset: Int = 0) -> UInt64 {
    UInt64(UInt(bitPattern: base) + UInt(page * pageSize + offset))
  }
  func pointer(_ page: Int, _ offset: Int = 0) -> UnsafeMutableRawPointer { base + page * pageSize + offset }

  /// Starts a thread that reads (or writes `write` to) the byte at `page`/`offset`.
  func touch(page: Int, offset: Int = 0, write: UInt8? = nil) throws -> TouchState {
    let state = TouchState(address: UInt(address(page, offset)))
    try start(name: "uffd-touch-\(page)") { state.run(write: write) }
    return state
  }

  /// Starts a thread running `body`; `close()` joins it.
  func start(name: String, _ body: @escaping @Sendable () -> Void) throws {
    threads.append(try OSThread.start(name: name, body))
  }

  func close() {
    guard !closed else { return }
    closed = true
    _ = try? uffd.unregister(start: address(0), length: UInt64(size))
    uffd.fd.close()
    for thread in threads { thread.join() }
    MemoryMapping.unmap(base, size: size)
  }
}

/// A page-aligned buffer of one page filled with a pattern derived from `seed`.
final class SourcePage {
  let pointer: UnsafeMutableRawPointer

  init(seed: UInt8) {
    pointer = UnsafeMutableRawPointer.allocate(byteCount: pageSize, alignment: pageSize)
    for i in 0..<pageSize { pointer.storeBytes(of: SourcePage.byte(i, seed: seed), toByteOffset: i, as: UInt8.self) }
  }

  deinit { pointer.deallocate() }

  static func byte(_ index: Int, seed: UInt8) -> UInt8 { UInt8(truncatingIfNeeded: index &* 31 &+ Int(seed)) | 1 }

  var bytes: [UInt8] { Array(UnsafeRawBufferPointer(start: pointer, count: pageSize)) }
}

/// The bytes of one page at `pointer` (read on the calling thread: only for pages that cannot fault
/// to a uffd).
func pageBytes(_ pointer: UnsafeRawPointer) -> [UInt8] {
  Array(UnsafeRawBufferPointer(start: pointer, count: pageSize))
}

/// A value shared with a helper thread.
final class Shared<Value: Sendable>: Sendable {
  private let storage: Mutex<Value>
  init(_ value: Value) { storage = Mutex(value) }
  var value: Value {
    get { storage.withLock { $0 } }
    set { storage.withLock { $0 = newValue } }
  }
}
