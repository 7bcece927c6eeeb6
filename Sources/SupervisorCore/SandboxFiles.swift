import Protocol

/// Files in a child and its vCPUs' liveness: PUT/GET/DELETE /v1/sandboxes/:id/files,
/// GET /v1/sandboxes/:id/vcpus.
extension SandboxManager {
  private func transfer(_ id: String) throws(APIError) -> FileTransfer {
    let s = try sandbox(id)
    guard case .pong(let pong) = try s.agent(.ping, timeoutMS: 10_000) else {
      throw .internalError("sandbox \(id): unexpected reply to ping")
    }
    return FileTransfer(
      send: { (r) throws(APIError) in try s.agent(r, timeoutMS: 30_000) },
      testGuest: pong.kind == AgentPong.testGuestKind,
      label: "sandbox \(id)")
  }

  public func putFile(_ id: String, path: String, mode: UInt32, data: [UInt8]) throws(APIError) -> JSONValue {
    let size = try transfer(id).write(path: path, data: data, mode: mode)
    return .object(["path": .string(path), "size": .integer(Int64(bitPattern: size)), "mode": .string(octalMode(mode))])
  }

  public func getFile(_ id: String, path: String) throws(APIError) -> [UInt8] {
    try transfer(id).read(path: path).data
  }

  public func listFiles(_ id: String, path: String) throws(APIError) -> JSONValue {
    let entries = try transfer(id).list(path: path)
    return .object(["path": .string(path), "entries": .array(entries.map(\.jsonValue))])
  }

  public func deleteFile(_ id: String, path: String) throws(APIError) {
    try transfer(id).delete(path: path)
  }

  public func vcpuStatus(_ id: String) throws(APIError) -> JSONValue {
    guard case .vcpuStatus(let vcpus) = try sandbox(id).agent(.vcpuStatus, timeoutMS: 10_000) else {
      throw .internalError("sandbox \(id): unexpected reply to vcpu status")
    }
    return .object([
      "vcpus": .array(
        vcpus.enumerated().map { i, v in
          .object([
            "index": .integer(Int64(i)), "answered": .bool(v.answered), "runs": .integer(Int64(bitPattern: v.runs)),
          ])
        })
    ])
  }
}
