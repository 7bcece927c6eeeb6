/// One thread, started ahead of time, that runs submitted jobs in order. Processes whose
/// seccomp filter forbids clone create it before the filter is installed.
public final class Worker: @unchecked Sendable {
  private let lock = ConditionLock()
  private var jobs: [@Sendable () -> Void] = []
  private var thread: OSThread?

  public init(name: String) throws(SyscallError) {
    thread = try OSThread.start(name: name) { [self] in loop() }
  }

  public func submit(_ job: @escaping @Sendable () -> Void) {
    lock.withLock {
      jobs.append(job)
      lock.broadcast()
    }
  }

  private func loop() {
    while true {
      let job: @Sendable () -> Void = lock.withLock {
        while jobs.isEmpty { lock.wait() }
        return jobs.removeFirst()
      }
      job()
    }
  }
}
