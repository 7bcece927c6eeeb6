import PackagePlugin

/// Compiles the seccomp policies (Sources/Sandbox/RolePolicies.swift) into BPF at build time and
/// embeds them into SeccompFilters.
@main
struct SeccompFilterPlugin: BuildToolPlugin {
  func createBuildCommands(context: PluginContext, target: Target) async throws -> [Command] {
    let compiler = try context.tool(named: "forkd-seccomp-compile")
    let output = context.pluginWorkDirectoryURL.appending(path: "RoleFilters.swift")
    let policies = context.package.directoryURL.appending(path: "Sources/Sandbox")
    return [
      .buildCommand(
        displayName: "Compiling seccomp policies to BPF",
        executable: compiler.url,
        arguments: [output.path()],
        inputFiles: [compiler.url, policies.appending(path: "RolePolicies.swift")],
        outputFiles: [output])
    ]
  }
}
