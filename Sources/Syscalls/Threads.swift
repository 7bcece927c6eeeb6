import CUffd

#if canImport(Glibc)
  import Glibc
#endif

/// A pthread mutex and condition variable pair, for threads that must sleep until told
/// (a vCPU parked on HLT, a paused vCPU). Swift's `Mutex` has no condition variable.
public final class ConditionLock: @unchecked Sendable {
  private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
  private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

  public init() {
    pthread_mutex_init(mutex, nil)
    var attr = pthread_condattr_t()
    pthread_condattr_init(&attr)
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
    pthread_cond_init(condition, &attr)
    pthread_condattr_destroy(&attr)
  }

  deinit {
    pthread_cond_destroy(condition)
    pthread_mutex_destroy(mutex)
    condition.deallocate()
    mutex.deallocate()
  }

  public func lock() { pthread_mutex_lock(mutex) }
  public func unlock() { pthread_mutex_unlock(mutex) }

  @inline(__always)
  public func withLock<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
    lock()
    defer { unlock() }
    return try body()
  }

  /// Waits with the lock held; returns after a broadcast or a spurious wakeup.
  public func wait() { pthread_cond_wait(condition, mutex) }

  /// Waits at most `nanoseconds`; returns false on timeout.
  public func wait(nanoseconds: UInt64) -> Bool {
    let deadline = Clock.monotonicNanoseconds() + nanoseconds
    var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
    return pthread_cond_timedwait(condition, mutex, &ts) != ETIMEDOUT
  }

  public func broadcast() { pthread_cond_broadcast(condition) }
}

/// A joinable pthread running a closure.
public final class OSThread: @unchecked Sendable {
  public private(set) var handle: pthread_t = 0
  private let body: @Sendable () -> Void

  private init(body: @escaping @Sendable () -> Void) { self.body = body }

  /// Starts `body` on a new thread named `name` (visible in /proc/<pid>/task/*/comm).
  public static func start(name: String, _ body: @escaping @Sendable () -> Void) throws(SyscallError) -> OSThread {
    let thread = OSThread(body: body)
    let context = Unmanaged.passRetained(thread).toOpaque()
    let rc = pthread_create(
      &thread.handle, nil,
      { raw in
        let thread = Unmanaged<OSThread>.fromOpaque(raw!).takeRetainedValue()
        thread.body()
        return nil
      }, context)
    guard rc == 0 else {
      Unmanaged<OSThread>.fromOpaque(context).release()
      throw SyscallError("pthread_create", Errno(rc), detail: name)
    }
    _ = cuffd_thread_set_name(thread.handle, String(name.prefix(15)))
    return thread
  }

  public func join() { pthread_join(handle, nil) }

  /// For a thread that runs until the process exits: its resources are released without a join.
  public func detach() { pthread_detach(handle) }

  /// Interrupts a blocking system call on this thread (it returns EINTR).
  public func kick(signal: Int32) { _ = cuffd_thread_kick(handle, signal) }

  /// Returns an eventfd that becomes readable when SIGTERM or SIGINT arrives (on any thread).
  public static func stopSignals() throws(SyscallError) -> EventFD {
    let fd = try EventFD()
    _ = try retryingEINTR("sigaction") { cuffd_install_stop_handler(fd.fd.rawValue) }
    return fd
  }

  /// Installs the no-op handler that `kick` relies on; call once per process.
  public static func installKickHandler(signal: Int32) throws(SyscallError) {
    _ = try retryingEINTR("sigaction") { cuffd_install_kick_handler(signal) }
  }
}
