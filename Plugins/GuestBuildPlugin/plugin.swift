// Builds the freestanding test guest (guest/test-guest) with the toolchain's clang and ld.lld,
// and hands TestGuestImage a generated Swift file that embeds the linked ELF.
//
// The work happens in guest/build.sh (run through /bin/sh) so it can also be run by hand; the
// plugin only finds the tools and declares inputs and outputs, so editing any guest source,
// the linker script or the script itself rebuilds the image.
import Foundation
import PackagePlugin

@main
struct GuestBuildPlugin: BuildToolPlugin {
  func createBuildCommands(context: PluginContext, target: Target) async throws -> [Command] {
    let guestDir = context.package.directoryURL.appending(path: "guest")
    let sourceDir = guestDir.appending(path: "test-guest")
    let script = guestDir.appending(path: "build.sh")
    let sources = try FileManager.default
      .contentsOfDirectory(at: sourceDir, includingPropertiesForKeys: nil)
      .filter { ["c", "h", "S", "ld"].contains($0.pathExtension) }
      .sorted { $0.lastPathComponent < $1.lastPathComponent }

    let clang = try context.tool(named: "clang").url
    let lld = try context.tool(named: "ld.lld").url
    let elf = context.pluginWorkDirectoryURL.appending(path: "forkd-test-guest.elf")
    let swift = context.pluginWorkDirectoryURL.appending(path: "TestGuestELF.swift")

    return [
      .buildCommand(
        displayName: "Building test guest with \(clang.lastPathComponent)",
        executable: URL(fileURLWithPath: "/bin/sh"),
        arguments: [script, clang, lld, elf, swift].map { $0.path(percentEncoded: false) },
        inputFiles: [script, clang, lld] + sources,
        outputFiles: [swift]  // the .elf stays next to it for debugging, undeclared
      )
    ]
  }
}
