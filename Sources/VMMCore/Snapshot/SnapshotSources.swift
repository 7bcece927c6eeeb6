import Protocol
import SnapshotStorage
import Syscalls

/// What taking a snapshot reads besides guest memory, opened once before the VMM enters its
/// jail (where the snapshot it was restored from and /proc are out of reach): the chain it was
/// restored from (a pager-backed VM reads untouched pages from it), that snapshot's content
/// digest (a diff layer's parent) and /proc/self/pagemap (which pages the VM changed).
public struct SnapshotSources: @unchecked Sendable {
  /// The snapshot directory the VM was restored from (as given on the command line).
  public let restoredFrom: String
  let origin: ChainImage?
  let parentContentDigest: String?
  let pagemap: FileDescriptor

  /// The process-wide sources, set once before any thread starts (forkd-vmm's setup) and only
  /// read afterwards.
  nonisolated(unsafe) public private(set) static var prepared: SnapshotSources?

  /// Opens the sources for a VM restored from `restoredFrom`; `userfault`: its memory is served
  /// by a uffd pager (only then does a snapshot read untouched pages from the chain).
  public static func prepare(restoredFrom: String, userfault: Bool) throws(VMMError) {
    var origin: ChainImage? = nil
    if userfault {
      do {
        origin = try ChainImage(chain: SnapshotChain.load(top: restoredFrom))
      } catch {
        throw VMMError(error)
      }
    }
    let manifest = try LoadedSnapshot.readManifest(directory: restoredFrom)
    let pagemap: FileDescriptor
    do {
      pagemap = try FileDescriptor.open("/proc/self/pagemap", .readOnly)
    } catch {
      throw VMMError(.io, "cannot open /proc/self/pagemap before entering the jail", cause: error)
    }
    prepared = SnapshotSources(
      restoredFrom: restoredFrom, origin: origin, parentContentDigest: manifest.contentDigest, pagemap: pagemap)
  }

  /// The prepared chain of `directory`, if that is the snapshot prepared for.
  static func origin(of directory: String) -> ChainImage? {
    guard let prepared, prepared.restoredFrom == directory else { return nil }
    return prepared.origin
  }
}
