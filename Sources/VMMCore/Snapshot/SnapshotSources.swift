import Protocol
import SnapshotStorage
import Syscalls

/// What taking a snapshot reads besides guest memory, opened once before the VMM enters its
/// jail (where the snapshot it was restored from and /proc are out of reach): the chain it was
/// restored from (a pager-backed VM reads untouched pages from it), that snapshot's content
/// digest (a diff layer's parent) and /proc/self/pagemap (which pages the VM changed).
public final class SnapshotSources: @unchecked Sendable {
  /// The snapshot directory the VM was restored from (as given on the command line).
  public let restoredFrom: String
  /// The chain's layers, opened (memory.bin) and read (page indices) but not yet mapped: the
  /// chain image is built on the first snapshot, off the restore path.
  private let layers: [ChainImage.Layer]?
  private let lock = ConditionLock()
  private var image: Result<ChainImage, VMMError>?
  let parentContentDigest: String?
  let pagemap: FileDescriptor

  private init(restoredFrom: String, layers: [ChainImage.Layer]?, parentContentDigest: String?, pagemap: FileDescriptor)
  {
    self.restoredFrom = restoredFrom
    self.layers = layers
    self.parentContentDigest = parentContentDigest
    self.pagemap = pagemap
  }

  /// The chain image, built once from the descriptors opened before the jail.
  private func origin() throws(VMMError) -> ChainImage? {
    guard let layers else { return nil }
    let built = lock.withLock { () -> Result<ChainImage, VMMError> in
      if let image { return image }
      let result: Result<ChainImage, VMMError>
      do throws(SnapshotStorageError) {
        result = .success(try ChainImage(layers: layers))
      } catch {
        result = .failure(VMMError(error))
      }
      image = result
      return result
    }
    return try built.get()
  }

  /// The process-wide sources, set once before any thread starts (forkd-vmm's setup) and only
  /// read afterwards.
  nonisolated(unsafe) public private(set) static var prepared: SnapshotSources?

  /// Opens the sources for a VM restored from `restoredFrom`; `userfault`: its memory is served
  /// by a uffd pager (only then does a snapshot read untouched pages from the chain).
  public static func prepare(restoredFrom: String, userfault: Bool) throws(VMMError) {
    var layers: [ChainImage.Layer]? = nil
    if userfault {
      do {
        layers = try SnapshotChain.load(top: restoredFrom).layers.map { layer throws(SyscallError) in
          ChainImage.Layer(
            memory: layer.memoryPath, pageIndex: layer.pageIndexPath,
            openMemory: try FileDescriptor.open(layer.memoryPath, .readOnly),
            pageIndexBytes: try layer.pageIndexPath.map { path throws(SyscallError) in try FileSystem.readFile(path) })
        }
      } catch let error as SnapshotStorageError {
        throw VMMError(error)
      } catch {
        throw VMMError(.io, "cannot open the chain of \(restoredFrom) before entering the jail", cause: error)
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
      restoredFrom: restoredFrom, layers: layers, parentContentDigest: manifest.contentDigest, pagemap: pagemap)
  }

  /// The prepared chain of `directory`, if that is the snapshot prepared for.
  static func origin(of directory: String) throws(VMMError) -> ChainImage? {
    guard let prepared, prepared.restoredFrom == directory else { return nil }
    return try prepared.origin()
  }
}
