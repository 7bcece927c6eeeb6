import ArgumentParser
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// `forkd serve …` runs forkd-supervisor and `forkd bench …` runs forkd-bench (both beside this
/// binary) with the same arguments: the commands the docs name keep working while the CLI itself
/// stays a client of the v1 API.
struct Serve: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Run forkd-supervisor in the foreground (its options: forkd-supervisor --help).")

  @Argument(parsing: .captureForPassthrough, help: "forkd-supervisor's options.")
  var arguments: [String] = []

  func run() throws { try replaceProcess(with: "forkd-supervisor", arguments) }
}

struct BenchCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "bench", abstract: "Run a benchmark (forkd-bench restore|backends|spawn|branch|load|pagers).")

  @Argument(parsing: .captureForPassthrough, help: "The forkd-bench subcommand and its options.")
  var arguments: [String] = []

  func run() throws { try replaceProcess(with: "forkd-bench", arguments) }
}

/// execv of a sibling binary; returns only by throwing.
private func replaceProcess(with name: String, _ arguments: [String]) throws {
  let binary = try ForkdBinaries.path(of: name)
  var argv: [UnsafeMutablePointer<CChar>?] = ([binary] + arguments).map { strdup($0) }
  argv.append(nil)
  execv(binary, argv)
  throw ValidationError("cannot run \(binary): errno \(errno)")
}
