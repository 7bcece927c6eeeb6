import Protocol

/// Agent answers are guest data: every number is range-checked before it becomes API JSON, and
/// a value the API cannot carry is reported as a 502 naming the sandbox, the field and the value.
public enum AgentReplies {
  /// `POST /v1/sandboxes/:id/ping`.
  public static func ping(sandbox id: String, _ response: AgentResponse, rttMicroseconds: UInt64) throws(APIError)
    -> JSONValue
  {
    guard case .pong(let pong) = response else { throw unexpected(id, "ping", response) }
    let kind: String
    switch pong.kind {
    case AgentPong.linuxKind: kind = "linux"
    case AgentPong.testGuestKind: kind = "test-guest"
    default: throw outOfRange(id, "ping", "agent kind", "\(pong.kind)", expected: "1 (test guest) or 2 (linux)")
    }
    return .object([
      "pong": .bool(true), "agent_kind": .string(kind), "agent_version": .integer(Int64(pong.agentVersion)),
      "requests_served": .integer(try integer(id, "ping", "requests_served", pong.requestsServed)),
      "counter": .integer(try integer(id, "ping", "counter", pong.counter)),
      "rtt_us": .integer(Int64(clamping: rttMicroseconds)),
    ])
  }

  /// `POST /v1/sandboxes/:id/exec`.
  public static func exec(sandbox id: String, _ response: AgentResponse) throws(APIError) -> JSONValue {
    guard case .exec(let result) = response else { throw unexpected(id, "exec", response) }
    return .object([
      "stdout": .string(String(decoding: result.stdout, as: UTF8.self)),
      "stderr": .string(String(decoding: result.stderr, as: UTF8.self)), "exit_code": .integer(Int64(result.exitCode)),
      "timed_out": .bool(result.timedOut),
    ])
  }

  /// `POST /v1/sandboxes/:id/eval`: the public `{result, error, exit_code}` plus `stdout`.
  public static func eval(sandbox id: String, _ response: AgentResponse) throws(APIError) -> JSONValue {
    guard case .eval(let result) = response else { throw unexpected(id, "eval", response) }
    return .object([
      "result": .string(String(decoding: result.result, as: UTF8.self)),
      "error": .string(String(decoding: result.error, as: UTF8.self)),
      "exit_code": .integer(Int64(result.exitCode)),
      "stdout": .string(String(decoding: result.stdout, as: UTF8.self)),
    ])
  }

  /// A guest u64 as a JSON integer (API integers are signed 64-bit).
  static func integer(_ id: String, _ request: String, _ field: String, _ value: UInt64) throws(APIError) -> Int64 {
    guard let v = Int64(exactly: value) else {
      throw outOfRange(id, request, field, "\(value)", expected: "0...\(Int64.max)")
    }
    return v
  }

  static func outOfRange(_ id: String, _ request: String, _ field: String, _ value: String, expected: String)
    -> APIError
  {
    APIError(
      502,
      "sandbox \(id): the guest agent answered \(request) with \(field) \(value), outside \(expected): reported, not trusted"
    )
  }

  static func unexpected(_ id: String, _ request: String, _ response: AgentResponse) -> APIError {
    APIError(502, "sandbox \(id): the guest agent answered \(request) with a frame of type \(response.frameType)")
  }
}
