import Synchronization

/// The seam through which tests inject failures into system calls.
///
/// Compiled only into debug builds (FORKD_TEST_SEAMS, what `swift test` runs); in a release build
/// `check` is empty and `install` does not exist.
public enum FaultInjection {
  public typealias Rule = @Sendable (_ call: String) -> Errno?

  #if FORKD_TEST_SEAMS

    private static let armed = Atomic<Bool>(false)
    private static let rule = Mutex<Rule?>(nil)

    /// Makes every wrapped call ask `rule` first; a returned errno fails the call with it.
    public static func install(_ newRule: Rule?) {
      rule.withLock { $0 = newRule }
      armed.store(newRule != nil, ordering: .releasing)
    }

    @inline(__always)
    static func check(_ call: String) throws(SyscallError) {
      guard armed.load(ordering: .acquiring) else { return }
      if let injected = rule.withLock({ $0 })?(call) { throw SyscallError(call, injected, detail: "(injected)") }
    }
  #else
    @inline(__always)
    static func check(_ call: String) throws(SyscallError) {}
  #endif
}

/// Runs `body` until it stops failing with EINTR; a -1 result becomes a thrown `SyscallError`.
@inline(__always)
public func retryingEINTR<T: BinaryInteger>(
  _ call: String, detail: @autoclosure () -> String = "", _ body: () -> T
) throws(SyscallError) -> T {
  try FaultInjection.check(call)
  while true {
    let result = body()
    if result != -1 { return result }
    let err = Errno.current
    if err == .interrupted { continue }
    throw SyscallError(call, err, detail: detail())
  }
}
