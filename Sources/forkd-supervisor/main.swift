import ArgumentParser
import Logging
import SupervisorCore
import Syscalls
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

/// forkd-supervisor: the daemon behind the v1 API (socket-activated by forkd.socket, or binding
/// its own Unix socket), one forkd-vmm and one forkd-pager per child.
@main
struct SupervisorCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "forkd-supervisor", abstract: "The forkd daemon: snapshots, sandboxes and the v1 HTTP API.")

  @OptionGroup var options: DaemonCommandOptions

  func run() async throws {
    try await options.runDaemon(identifier: "forkd-supervisor")
  }
}
