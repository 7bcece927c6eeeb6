import ArgumentParser
import ForkdClient
import Protocol
import Syscalls

#if canImport(Glibc)
  import Glibc
#endif

/// `forkd cp LOCAL ID:PATH` and `forkd cp ID:PATH LOCAL`: one file into or out of a sandbox.
struct Copy: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "cp", abstract: "Copy a file into (LOCAL ID:PATH) or out of (ID:PATH LOCAL) a sandbox.")
  @Argument(help: "Source: a local file or ID:/abs/path.") var source: String
  @Argument(help: "Destination: ID:/abs/path or a local file.") var destination: String
  @Option(help: "Mode of the file in the sandbox, octal (default: the local file's).") var mode: String?
  @OptionGroup var connection: ConnectionOptions

  /// "sb-…:/path" → (id, path); a local path (even one with a colon) → nil.
  static func remote(_ spec: String) -> (id: String, path: String)? {
    guard let colon = spec.firstIndex(of: ":") else { return nil }
    let id = spec[..<colon]
    let path = spec[spec.index(after: colon)...]
    guard !id.isEmpty, !id.contains("/"), path.hasPrefix("/") else { return nil }
    return (String(id), String(path))
  }

  /// The path as a query value: everything but unreserved characters and "/" percent-encoded.
  static func queryEncoded(_ path: String) -> String {
    var out = ""
    for byte in path.utf8 {
      switch byte {
      case 0x30...0x39, 0x41...0x5A, 0x61...0x7A, UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"),
        UInt8(ascii: "~"), UInt8(ascii: "/"):
        out.append(Character(Unicode.Scalar(byte)))
      default:
        let hex = String(byte, radix: 16, uppercase: true)
        out += "%" + (hex.count == 1 ? "0" + hex : hex)
      }
    }
    return out
  }

  func run() throws {
    switch (Self.remote(source), Self.remote(destination)) {
    case (nil, let to?):
      let data: [UInt8]
      var st = stat()
      do {
        data = try FileSystem.readFile(source, limit: SandboxFiles.maxFileBytes + 1)
      } catch {
        throw ValidationError("cannot read \(source): \(error)")
      }
      let bits = mode ?? (stat(source, &st) == 0 ? String(UInt32(st.st_mode) & 0o7777, radix: 8) : "644")
      let response = try send(
        "PUT", "/v1/sandboxes/\(to.id)/files?path=\(Self.queryEncoded(to.path))&mode=\(Self.queryEncoded(bits))", data)
      if connection.json { print(response.json?.serialized(pretty: true) ?? response.text) }
    case (let from?, nil):
      let response = try send("GET", "/v1/sandboxes/\(from.id)/files?path=\(Self.queryEncoded(from.path))", [])
      do {
        try FileSystem.writeAtomically(destination, response.body, mode: 0o644)
      } catch {
        printError("cannot write \(destination): \(error)")
        throw ExitCode(CLIExit.failure)
      }
    case (nil, nil):
      throw ValidationError("one of \(source) and \(destination) must name a sandbox file as ID:/abs/path")
    case (_?, _?):
      throw ValidationError("copying between two sandboxes is not supported: copy through a local file")
    }
  }

  /// A raw-body request; a failure prints the API's message and exits with a code that means it.
  private func send(_ method: String, _ path: String, _ body: [UInt8]) throws -> APIClient.Response {
    let response: APIClient.Response
    do {
      response = try connection.client().request(method, path, rawBody: body)
    } catch let error as APIClient.ClientError {
      printError(error.description)
      throw ExitCode(CLIExit.unreachable)
    }
    guard (200..<300).contains(response.status) else {
      printError("\(response.status): \(response.errorMessage ?? response.text)")
      throw ExitCode(CLIExit.forStatus(response.status))
    }
    return response
  }
}
