import ArgumentParser
import SupervisorCore

/// `forkd serve`: a supervisor in the foreground (the embedded default for the demo).
struct Serve: AsyncParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Run forkd-supervisor in the foreground.")
  @OptionGroup var options: DaemonCommandOptions

  func run() async throws {
    try await options.runDaemon(identifier: "forkd-serve")
  }
}
