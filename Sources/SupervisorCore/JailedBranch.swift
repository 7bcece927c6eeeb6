import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// A branch written by a jailed forkd-vmm: into `<branch directory>/<tag>` (the host side of its
/// cell's `branches`), then adopted into the snapshot store. Whatever a jailed process wrote is
/// untrusted: the directory is first moved out of the cell and handed to root (the writer can
/// then neither reach nor change it by path, nor add to it through a descriptor it kept), and
/// only plain regular files with one link each are accepted (no symlink to another tenant's
/// files, no hard link, no subdirectory).
struct JailedBranch {
  let directory: String
  let tag: String

  /// The path the jailed forkd-vmm is told: relative to its cell's root.
  var cellPath: String { "branches/" + tag }
  var hostPath: String { directory + "/" + tag }

  func adopt(into store: SnapshotStore) throws(APIError) {
    let target = store.path(tag)
    do {
      try FileSystem.rename(hostPath, to: target, noReplace: true)
    } catch {
      throw .internalError("cannot move branch \(tag) from \(hostPath) into the store: \(error)")
    }
    do throws(APIError) {
      try takeOwnership(of: target)
    } catch {
      FileSystem.removeTree(target)
      throw error
    }
  }

  private func takeOwnership(of target: String) throws(APIError) {
    var st = stat()
    guard lstat(target, &st) == 0, st.st_mode & S_IFMT == S_IFDIR else {
      throw .internalError("branch \(tag): \(target) is not a directory")
    }
    // Root's, and closed to the writer, before anything inside is looked at.
    guard lchown(target, 0, 0) == 0, chmod(target, 0o700) == 0 else {
      throw .internalError("branch \(tag): cannot take ownership of \(target): \(Errno.current)")
    }
    let names: [String]
    do {
      names = try FileSystem.listDirectory(target)
    } catch {
      throw .internalError("branch \(tag): cannot list \(target): \(error)")
    }
    for name in names {
      let path = target + "/" + name
      guard lstat(path, &st) == 0, st.st_mode & S_IFMT == S_IFREG, st.st_nlink == 1 else {
        throw .internalError("branch \(tag): \(name) is not a plain file (a jailed writer may not leave links)")
      }
      guard lchown(path, 0, 0) == 0, chmod(path, 0o600) == 0 else {
        throw .internalError("branch \(tag): cannot take ownership of \(path): \(Errno.current)")
      }
    }
  }

  /// Removes what a writer that died left: staging directories and an unpublished result.
  func removeStaging() {
    for name in (try? FileSystem.listDirectory(directory)) ?? [] where name.hasPrefix(tag + ".staging-") {
      FileSystem.removeTree(directory + "/" + name)
    }
  }

  func discard() {
    removeStaging()
    FileSystem.removeTree(hostPath)
  }
}
