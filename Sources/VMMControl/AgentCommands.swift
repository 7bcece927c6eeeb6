import Protocol

/// Typed shortcuts over `AgentClient.request` for the built-in agent commands.
extension AgentClient {
  private func unexpected(_ response: AgentResponse, _ what: String) -> ControlError {
    ControlError(.protocolViolation, "\(what): unexpected response \(response)")
  }

  public func ping() throws(ControlError) -> AgentPong {
    let response = try request(.ping)
    guard case .pong(let pong) = response else { throw unexpected(response, "ping") }
    return pong
  }

  public func echo(_ bytes: [UInt8]) throws(ControlError) -> [UInt8] {
    let response = try request(.echo(bytes))
    guard case .echo(let back) = response else { throw unexpected(response, "echo") }
    return back
  }

  public func fill(pages: UInt64, seed: UInt64) throws(ControlError) -> UInt64 {
    let response = try request(.fill(pages: pages, seed: seed), timeoutMS: 120_000)
    guard case .filled(let filled) = response else { throw unexpected(response, "fill") }
    return filled
  }

  public func checksum(pages: UInt64) throws(ControlError) -> UInt64 {
    try checksumResult(receive(send(.checksum(pages: pages)), timeoutMS: 120_000))
  }

  public func checksumResult(_ response: AgentResponse) throws(ControlError) -> UInt64 {
    guard case .checksum(let value) = response else { throw unexpected(response, "checksum") }
    return value
  }

  public func counter(add delta: Int64) throws(ControlError) -> UInt64 {
    let response = try request(.counter(delta: delta))
    guard case .counter(let value) = response else { throw unexpected(response, "counter") }
    return value
  }

  public func set(_ key: String, _ value: String) throws(ControlError) {
    let response = try request(.kvSet(key: Array(key.utf8), value: Array(value.utf8)))
    guard case .kvSet = response else { throw unexpected(response, "kv set") }
  }

  public func get(_ key: String) throws(ControlError) -> String? {
    let response = try request(.kvGet(key: Array(key.utf8)))
    guard case .kvGet(let found, let value) = response else { throw unexpected(response, "kv get") }
    return found ? String(decoding: value, as: UTF8.self) : nil
  }
}
