import ArgumentParser

/// forkd-bench: the benchmarks, one process of their own so the CLI stays a client. Results go to
/// stdout as a table, or JSON with --json; docs/benchmarks.md records them.
struct ForkdBench: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "forkd-bench",
    abstract: "Benchmarks (results go to stdout as a table, or JSON with --json).",
    subcommands: [
      RestoreBench.self, BackendBench.self, SpawnBench.self, BranchBench.self, LoadBench.self, PagerTopologyBench.self,
      RegistryBench.self,
      StalledAgentBench.self,
    ])
}

ForkdBench.main()
