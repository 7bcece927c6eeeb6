import Protocol
import Syscalls

/// The memory a child's faults are served from: one memory.bin, or a diff chain (a full base and
/// diff layers above it). Each page is resolved once, when the pager starts, to the topmost layer
/// holding it, so a fault costs the same at any chain depth.
final class LayeredSource {
  let layers: [MemorySource]
  /// Logical bytes of guest memory (every layer's memory.bin has this size).
  let size: UInt64
  /// Pages with data in the layer that owns them; the others are zero.
  let dataPages: PageBitmap
  let dataPageCount: Int
  /// The owning layer of each page, for chains only (a flat source owns every page).
  private let owner: [UInt8]
  var path: String { layers.last!.path }

  init(chain: [PagerLayer]) throws(PagerError) {
    var opened: [MemorySource] = []
    for layer in chain { opened.append(try MemorySource(path: layer.memory)) }
    layers = opened
    size = opened[0].size
    for layer in opened where layer.size != size {
      throw PagerError(
        code: "invalid_source",
        message: "\(layer.path) has \(layer.size) bytes but the chain's base \(opened[0].path) has \(size)")
    }
    guard chain.count > 1 else {
      owner = []
      dataPages = opened[0].dataPages
      dataPageCount = opened[0].dataPageCount
      return
    }
    let pages = Int((size + 4095) / 4096)
    var owner = [UInt8](repeating: 0, count: pages)
    for (depth, layer) in chain.enumerated().dropFirst() {
      let index: PageIndex
      do {
        let path = layer.pageIndex!
        index = try PageIndex.parse(FileSystem.readFile(path, limit: 64 << 20), source: path, expectedPages: pages)
      } catch {
        throw PagerError(code: "invalid_source", message: "page index of \(layer.memory): \(error)")
      }
      for page in index.pages { owner[page] = UInt8(depth) }
    }
    var bitmap = PageBitmap(pages: pages)
    var count = 0
    for page in 0..<pages where opened[Int(owner[page])].dataPages.contains(page) {
      bitmap.insert(page)
      count += 1
    }
    self.owner = owner
    dataPages = bitmap
    dataPageCount = count
  }

  /// The page's bytes in the layer that owns it (only for pages in `dataPages`).
  @inline(__always) func pointer(_ page: Int) -> UnsafeRawPointer {
    let layer = owner.isEmpty ? layers[0] : layers[Int(owner[page])]
    return layer.base! + page * 4096
  }
}
