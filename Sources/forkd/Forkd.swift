import ArgumentParser
import CLISupport

@main
struct Forkd: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "forkd",
    abstract: "Fork microVMs: warm a parent once, snapshot it, restore children in milliseconds.",
    subcommands: [
      Spawn.self, Branch.self, List.self, Remove.self, Ping.self, Exec.self, Copy.self, SnapshotCommand.self,
      Serve.self,
      Doctor.self,
      Demo.self, BenchCommand.self,
    ])
}

/// Exit codes that mean something to scripts.
enum ExitStatus {
  static let failure: Int32 = 1
  static let usage: Int32 = 2
  /// The run finished but a check failed (a child disagreed with its parent).
  static let checkFailed: Int32 = 4
}
