import Protocol
import Syscalls
import Testing

@testable import VMMCore

#if canImport(Glibc)
  import Glibc
#endif

/// A base image in a temporary file: sector n starts with the byte n.
func makeBaseImage(sectors: Int) throws -> String {
  let path = "/tmp/forkd-blk-test-\(getpid())-\(Clock.monotonicNanoseconds()).img"
  var bytes = [UInt8](repeating: 0, count: sectors * 512)
  for s in 0..<sectors { bytes[s * 512] = UInt8(truncatingIfNeeded: s) }
  let fd = try FileDescriptor.open(path, [.writeOnly, .create, .exclusive], mode: 0o600)
  defer { fd.close() }
  try fd.writeAll(bytes)
  return path
}

/// A block device on a synthetic queue: requests are written as a driver would.
struct BlockHarness {
  var q: SyntheticQueue
  let device: VirtioBlock
  let header: UInt64 = 0x3_0000
  let data: UInt64 = 0x3_1000
  let status: UInt64 = 0x3_9000

  init(basePath: String, inherited: BlockDeviceConfig.InheritedOverlay? = nil) throws {
    q = try SyntheticQueue()
    device = try VirtioBlock(
      base: 0xD000_1000, config: BlockDeviceConfig(basePath: basePath, inherited: inherited), memory: q.memory,
      interrupt: {}, onError: { _ in })
  }

  /// Sends one request; returns the status byte and the used length.
  mutating func request(type: UInt32, sector: UInt64, length: UInt32, write payload: [UInt8]? = nil) throws -> (
    UInt8, UInt32
  ) {
    var h = ByteWriter()
    h.u32(type)
    h.u32(0)
    h.u64(sector)
    q.memory.writeBytes(h.bytes, at: header)
    if let payload { q.memory.writeBytes(payload, at: data) }
    q.memory.write(UInt8(0xAA), at: status)
    q.setDescriptor(0, address: header, length: 16, flags: Virtqueue.descriptorNext, next: 1)
    let dataFlags = Virtqueue.descriptorNext | (payload == nil ? Virtqueue.descriptorWrite : 0)
    if length > 0 {
      q.setDescriptor(1, address: data, length: length, flags: dataFlags, next: 2)
      q.setDescriptor(2, address: status, length: 1, flags: Virtqueue.descriptorWrite)
    } else {
      q.setDescriptor(1, address: status, length: 1, flags: Virtqueue.descriptorWrite)
    }
    q.makeAvailable(0)
    let chain = try #require(try q.queue.popAvailable(memory: q.memory))
    let used = device.serve(chain)
    return (q.memory.read(UInt8.self, at: status)!, UInt32(used))
  }

  func readData(_ count: Int) -> [UInt8] { q.memory.readBytes(at: data, count: count)! }
}

@Suite("virtio-blk")
struct VirtioBlockTests {
  @Test("reads sectors of the base image and answers OK with data + status length")
  func read() throws {
    let base = try makeBaseImage(sectors: 64)
    defer { _ = try? FileSystem.unlink(base) }
    var h = try BlockHarness(basePath: base)
    let (status, used) = try h.request(type: 0, sector: 9, length: 1024)
    #expect(status == VirtioBlock.Status.ok)
    #expect(used == 1025)
    #expect(h.readData(1024)[0] == 9 && h.readData(1024)[512] == 10)
  }

  @Test("out-of-range, overflowing and unaligned requests get IOERR; unknown types UNSUPP")
  func badRequests() throws {
    let base = try makeBaseImage(sectors: 64)
    defer { _ = try? FileSystem.unlink(base) }
    var h = try BlockHarness(basePath: base)
    #expect(try h.request(type: 0, sector: 63, length: 1024).0 == VirtioBlock.Status.ioError)
    #expect(try h.request(type: 0, sector: UInt64.max / 256, length: 512).0 == VirtioBlock.Status.ioError)
    #expect(try h.request(type: 0, sector: 1, length: 100).0 == VirtioBlock.Status.ioError)
    #expect(
      try h.request(type: 1, sector: 64, length: 512, write: [UInt8](repeating: 1, count: 512)).0
        == VirtioBlock.Status.ioError)
    #expect(try h.request(type: 11, sector: 0, length: 0).0 == VirtioBlock.Status.unsupported)
    #expect(try h.request(type: 4, sector: 0, length: 0).0 == VirtioBlock.Status.ok)  // flush
  }

  @Test("GET_ID returns the serial, NUL padded")
  func getID() throws {
    let base = try makeBaseImage(sectors: 8)
    defer { _ = try? FileSystem.unlink(base) }
    var h = try BlockHarness(basePath: base)
    let (status, used) = try h.request(type: 8, sector: 0, length: 20)
    #expect(status == VirtioBlock.Status.ok && used == 21)
    #expect(Array(h.readData(20).prefix(10)) == VirtioBlock.serial)
    #expect(h.readData(20)[10] == 0)
  }

  @Test("writes stay in the VM; a snapshot's overlay is inherited by children, not shared between them")
  func copyOnWrite() throws {
    let base = try makeBaseImage(sectors: 64)
    defer { _ = try? FileSystem.unlink(base) }
    var parent = try BlockHarness(basePath: base)
    let parentData = [UInt8](repeating: 0x50, count: 512)
    #expect(try parent.request(type: 1, sector: 3, length: 512, write: parentData).0 == VirtioBlock.Status.ok)
    #expect(try parent.request(type: 0, sector: 3, length: 512).0 == VirtioBlock.Status.ok)
    #expect(parent.readData(512) == parentData)
    // The base image is untouched.
    #expect(try BlockStore(BlockDeviceConfig(basePath: base)).read(offset: 3 * 512, count: 1)[0] == 3)

    let overlay = "/tmp/forkd-blk-overlay-\(getpid())-\(Clock.monotonicNanoseconds()).bin"
    defer { _ = try? FileSystem.unlink(overlay) }
    let blocks = try parent.device.store.writeOverlay(to: overlay)
    #expect(blocks == [0])
    let inherited = BlockDeviceConfig.InheritedOverlay(path: overlay, blocks: blocks)
    var child1 = try BlockHarness(basePath: base, inherited: inherited)
    var child2 = try BlockHarness(basePath: base, inherited: inherited)
    #expect(try child1.request(type: 0, sector: 3, length: 512).0 == VirtioBlock.Status.ok)
    #expect(child1.readData(512) == parentData)
    let childData = [UInt8](repeating: 0xC1, count: 512)
    #expect(try child1.request(type: 1, sector: 4, length: 512, write: childData).0 == VirtioBlock.Status.ok)
    #expect(try child1.request(type: 0, sector: 4, length: 512).0 == VirtioBlock.Status.ok)
    #expect(child1.readData(512) == childData)
    #expect(try child2.request(type: 0, sector: 4, length: 512).0 == VirtioBlock.Status.ok)
    #expect(child2.readData(1)[0] == 4)  // the base's sector, not the sibling's write
    #expect(try child2.request(type: 0, sector: 3, length: 512).0 == VirtioBlock.Status.ok)
    #expect(child2.readData(512) == parentData)
  }

  @Test("a missing base image is a clear error naming the file")
  func missingBase() {
    do {
      _ = try BlockStore(BlockDeviceConfig(basePath: "/nonexistent/disk.img"))
      Issue.record("opened a missing disk")
    } catch {
      #expect(error.message.contains("/nonexistent/disk.img"))
    }
  }

  @Test("the saved disk state round-trips")
  func savedState() throws {
    let base = try makeBaseImage(sectors: 64)
    defer { _ = try? FileSystem.unlink(base) }
    let h = try BlockHarness(basePath: base)
    let bytes = h.device.saveState(overlayBlocks: [0, 5])
    let saved = try VirtioBlock.savedDisk(bytes, source: "t")
    #expect(saved == VirtioBlock.SavedDisk(basePath: base, size: 64 * 512, overlayBlocks: [0, 5]))
    try h.device.restoreState(bytes, source: "t")
    #expect(throws: ProtocolError.self) { try VirtioBlock.savedDisk(Array(bytes.dropLast()), source: "t") }
  }
}
