import Foundation
import OCIDistribution
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// A registry that answers every GET with 200 and a body without Content-Length that does not
/// end (up to `endlessBytes`, then it closes): the failure the cap exists for, which Debian's
/// docker-registry never produces (it always announces the length). Failure injection only.
private final class EndlessServer: @unchecked Sendable {
  static let endlessBytes = 256 << 20
  let port: UInt16
  private let listener: Int32
  private let done = DispatchSemaphore(value: 0)

  init() throws {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
    }
    guard fd >= 0, bound == 0, listen(fd, 4) == 0 else {
      if fd >= 0 { close(fd) }
      throw POSIXError(.EADDRINUSE)
    }
    _ = withUnsafeMutablePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    listener = fd
    port = UInt16(bigEndian: address.sin_port)
  }

  /// Serves `requests` connections on a thread of its own.
  func start(requests: Int) {
    Thread.detachNewThread { [self] in
      for _ in 0..<requests { serveOne() }
      done.signal()
    }
  }

  private func serveOne() {
    let client = accept(listener, nil, nil)
    guard client >= 0 else { return }
    defer { close(client) }
    var request: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while !request.suffix(4).elementsEqual(Array("\r\n\r\n".utf8)) {
      let n = read(client, &buffer, buffer.count)
      if n <= 0 { return }
      request += buffer[0..<n]
    }
    let header = Array("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n".utf8)
    guard write(client, header, header.count) == header.count else { return }
    let block = [UInt8](repeating: 0x42, count: 64 << 10)
    var total = 0
    while total < EndlessServer.endlessBytes {
      let n = send(client, block, block.count, Int32(MSG_NOSIGNAL))
      if n <= 0 { break }
      total += n
    }
  }

  /// Waits (off the cooperative pool) for the served requests to end, then closes the listener.
  func finish() async {
    await withCheckedContinuation { (resumed: CheckedContinuation<Void, Never>) in
      Thread.detachNewThread { [self] in
        done.wait()
        close(listener)
        resumed.resume()
      }
    }
  }
}

@Suite struct CappedDownloadTests {
  /// The error comes at the limit and names the blob or manifest; the body is never held past
  /// it. (corelibs-foundation's cancel does not stop libcurl at once, so the server may still
  /// send the rest to a reader that drops it: not asserted.)
  @Test func aBlobOrManifestThatDoesNotEndIsCutOffAtItsLimit() async throws {
    let server = try EndlessServer()
    server.start(requests: 2)
    let client = RegistryClient(host: "127.0.0.1:\(server.port)", repository: "forkd/x")
    let digest = "sha256:" + String(repeating: "ab", count: 32)
    let blob = await #expect(throws: RegistryError.self) {
      _ = try await client.fetchBlob(digest, expectedSize: 1 << 20)
    }
    #expect(blob?.code == .tooLarge)
    #expect(blob?.message.contains("blob \(digest)") == true, "\(blob?.message ?? "")")
    #expect(blob?.message.contains("more than the 1048576 bytes") == true, "\(blob?.message ?? "")")
    let manifest = await #expect(throws: RegistryError.self) {
      _ = try await client.fetchManifest("v1", accept: "application/vnd.oci.image.manifest.v1+json")
    }
    #expect(manifest?.code == .tooLarge)
    #expect(manifest?.message.contains("manifest v1") == true, "\(manifest?.message ?? "")")
    #expect(manifest?.message.contains("more than the \(RegistryClient.maxManifestBytes) bytes") == true)
    await server.finish()
  }
}
