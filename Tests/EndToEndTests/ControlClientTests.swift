import Protocol
import Syscalls
import Testing
import VMMControl

/// ControlClient against a socket that answers like a forkd-vmm a guest escaped into: each
/// lie is refused as a protocol violation naming the field, and a truthful answer still decodes.
@Suite("Control client: untrusted replies")
struct ControlClientTests {
  /// Connects a client to a socket whose (only) answer is `line`, written before the request
  /// arrives; the server end stays open until the caller closes it.
  static func answering(_ line: String, in scratch: Scratch) throws -> (ControlClient, FileDescriptor) {
    let path = scratch.path + "/api-\(UInt64.random(in: 0...UInt64.max)).sock"
    let listener = try UnixSocket.listen(path: path)
    defer { listener.close() }
    let client = try ControlClient(path: path)
    guard let server = try UnixSocket.accept(listener, nonBlocking: false) else {
      throw ControlError(.connection, "no connection to accept on \(path)")
    }
    try server.writeAll(Array(line.utf8))
    return (client, server)
  }

  static func refused(_ line: String, field: String, in scratch: Scratch, _ call: (ControlClient) throws -> Void)
    throws
  {
    let (client, server) = try answering(line, in: scratch)
    defer { server.close() }
    let error = #expect(throws: ControlError.self, "\(line)") { try call(client) }
    #expect(error?.code == .protocolViolation, "\(String(describing: error))")
    #expect(error?.description.contains("\"\(field)\"") == true, "\(String(describing: error))")
  }

  @Test func liesAreRefusedNamingTheField() throws {
    let scratch = try Scratch("control-client")
    try Self.refused(#"{"ok":true,"result":{"state":"paused","pause_us":-1}}"# + "\n", field: "pause_us", in: scratch) {
      try $0.pause()
    }
    try Self.refused(
      #"{"ok":true,"result":{"dir":"/d","status":"done","pause_us":1,"memory_layer":"full"}}"# + "\n",
      field: "status", in: scratch
    ) { try $0.snapshot(directory: "/d", parentTag: nil) }
    try Self.refused(
      #"{"ok":true,"result":{"dir":"/d","status":"ready","pause_us":1,"memory_layer":"diff","memory_size":4096,"#
        + #""memory_data_bytes":4096,"state_bytes":1,"total_us":9223372036854775807,"guest_image_digest":"x","#
        + #""layer_pages":-1}}"# + "\n",
      field: "layer_pages", in: scratch
    ) { try $0.snapshotWait(directory: "/d") }
    try Self.refused(
      #"{"ok":true,"result":{"state":"running","pid":0,"memory_size":1,"vcpus":1,"guest_kind":"k","#
        + #""guest_image_digest":"d","backend":"file"}}"# + "\n",
      field: "pid", in: scratch
    ) { _ = try $0.status() }
    try Self.refused(
      #"{"ok":true,"result":{"pager_pid":"12","attachments":1}}"# + "\n", field: "pager_pid", in: scratch
    ) {
      try $0.attachPager(socket: "/p.sock")
    }
  }

  @Test func aTruthfulReplyDecodes() throws {
    let scratch = try Scratch("control-client-ok")
    let reply = SnapshotReply(directory: "/d", pauseMicroseconds: 12, memoryLayer: "full", written: nil)
    let (client, server) = try Self.answering(ControlCodec.encode(.success(reply)), in: scratch)
    defer { server.close() }
    #expect(try client.snapshot(directory: "/d", parentTag: "base", live: true, wait: false) == reply)
  }
}
