import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// The directories whose files a request may name as a kernel, rootfs, initrd or image
/// (`--image-root`, repeatable; default `<state-dir>/images`). A request path must lie under one
/// of them lexically, and is then opened with openat2(RESOLVE_BENEATH): a symlink or ".." that
/// leads out of the root is refused like any other path outside it (403, naming the path).
public struct ImageRoots: Sendable {
  public let roots: [String]

  public init(_ roots: [String]) {
    self.roots = roots.map { $0.count > 1 && $0.hasSuffix("/") ? String($0.dropLast()) : $0 }
  }

  /// The symlink-free absolute path of `path` (a regular file under a root), for `field`.
  ///
  /// forkd-vmm opens the resolved path again by name: a writer inside the root could swap a
  /// component in between (docs/hardening.md); the roots are operator-owned directories.
  public func resolve(field: String, path: String) throws(APIError) -> String {
    guard path.hasPrefix("/") else {
      throw APIError(403, "\(field) \(path): host paths must be absolute and under an image root (\(listed))")
    }
    for root in roots {
      let prefix = root == "/" ? "/" : root + "/"
      guard path.hasPrefix(prefix), path.count > prefix.count else { continue }
      let relative = String(path.dropFirst(prefix.count))
      let opened: Beneath.Opened
      do {
        opened = try Beneath.open(relative, in: root)
      } catch {
        switch error.errno {
        case .noEntry:
          throw .badRequest("\(field) \(path) does not exist")
        case Errno(EXDEV), Errno(ELOOP):
          throw APIError(403, "\(field) \(path) leads out of the image root \(root) (symlink or \"..\")")
        default:
          throw APIError(403, "\(field) \(path) cannot be opened under the image root \(root): \(error)")
        }
      }
      guard opened.isRegularFile else { throw .badRequest("\(field) \(path) is not a regular file") }
      return opened.resolvedPath
    }
    throw APIError(403, "\(field) \(path) is not under an image root (\(listed))")
  }

  private var listed: String { roots.isEmpty ? "none configured" : roots.joined(separator: ", ") }
}
