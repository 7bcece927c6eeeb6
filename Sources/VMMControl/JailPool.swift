import Jail
import Synchronization
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// The unprivileged uids (gid = uid) the per-child jails run as: `count` ids from `base`. A uid
/// is leased to one child (its forkd-vmm and its pagers) and never to two live children at once;
/// a released uid goes to the back of the line, so a just-freed id is the last to be reused.
/// `@unchecked Sendable`: `state` is touched only under `lock`, a pthread mutex (ThreadSanitizer
/// models it; it reported races on the same state behind Synchronization's Mutex, whose
/// uninstrumented atomics it cannot see).
public final class JailPool: @unchecked Sendable {
  /// Defaults: far above the ids Debian hands out to users (1000…) and to subuid ranges
  /// (100000 + 65536 per user), below 2^31 (tools that read ids as signed stay correct).
  public static let defaultUIDBase: UInt32 = 1_900_000_000
  public static let defaultUIDCount: UInt32 = 65_536

  public let base: UInt32
  public let count: UInt32
  /// The next id to try and the ids in use.
  private let lock = ConditionLock()
  private var state: (next: UInt32, inUse: Set<UInt32>) = (0, [])

  public struct ConfigurationError: Error, CustomStringConvertible {
    public let description: String
  }

  /// Checks the range: no root, no overflow past 2^32 - 2 (the kernel's -1 is "no change").
  public init(base: UInt32 = JailPool.defaultUIDBase, count: UInt32 = JailPool.defaultUIDCount)
    throws(ConfigurationError)
  {
    guard base > 0 else { throw ConfigurationError(description: "--jail-uid-base 0: the jail never runs as root") }
    guard count > 0 else { throw ConfigurationError(description: "--jail-uid-count 0: the range holds no uid") }
    let (last, overflow) = base.addingReportingOverflow(count - 1)
    guard !overflow, last < UInt32.max else {
      throw ConfigurationError(
        description: "--jail-uid-base \(base) --jail-uid-count \(count): the range passes 4294967294")
    }
    self.base = base
    self.count = count
  }

  /// A uid for one child; throws when every uid of the range is leased.
  public func lease() throws(ControlError) -> JailLease {
    let uid: UInt32? = lock.withLock {
      guard state.inUse.count < Int(count) else { return nil }
      while true {
        let candidate = base + state.next
        state.next = state.next + 1 == count ? 0 : state.next + 1
        if state.inUse.insert(candidate).inserted { return candidate }
      }
    }
    guard let uid else {
      throw ControlError(
        .launch, "every jail uid (\(count) from \(base)) is in use by a live child: raise --jail-uid-count")
    }
    return JailLease(uid: uid, pool: self)
  }

  fileprivate func release(_ uid: UInt32) { _ = lock.withLock { state.inUse.remove(uid) } }

  /// How many uids are leased now (tests, metrics).
  public var leased: Int { lock.withLock { state.inUse.count } }
}

/// One child's uid; returned to the pool when the lease goes away (after the child's processes
/// were reaped).
public final class JailLease: Sendable {
  public let uid: UInt32
  public var gid: UInt32 { uid }
  private let pool: JailPool

  fileprivate init(uid: UInt32, pool: JailPool) {
    self.uid = uid
    self.pool = pool
  }

  deinit { pool.release(uid) }

  /// Makes the run directory the cell's root, owned by this uid, mode 0700: the jailed processes
  /// work inside it (a branch, a restarted pager's socket); no other child's uid can enter it.
  public func prepareCell(_ runDirectory: String) throws(ControlError) {
    do {
      try FileSystem.changeOwner(runDirectory, uid: uid, gid: gid)
    } catch {
      throw ControlError(.launch, "cannot hand \(runDirectory) to jail uid \(uid)", cause: error)
    }
  }

  /// The jail of a process whose cell is `cell` (its run directory).
  public func spec(cell: String, bind: (source: String, target: String)? = nil) -> JailSpec {
    JailSpec(uid: uid, gid: gid, bind: bind, cell: cell)
  }
}
