// forkd-lane: the scenario the nested lane runs inside its L1 VM (docs/nested-lane.md).
//
//   forkd-lane test-guest --work DIR [--children N]
//   forkd-lane linux --work DIR --kernel PATH --initrd PATH --expect-kernel VERSION
//                    [--disk PATH] [--cmdline STRING] [--memory-mib N] [--vcpus N]
//                    [--children N] [--uffd|--uffd-optional] [--shmem-optional]
//                    [--boot-timeout-s N]
//
// --uffd adds a child restored with the uffd backend (its own forkd-pager); with
// --uffd-optional its failure is reported as "LANE WARN" without failing the lane.
// --shmem-optional adds a child with the shmem backend, reported the same way.
//
// forkd-vmm and forkd-pager are found next to this executable (or in $FORKD_BIN_DIR). Prints
// "LANE PASS|FAIL <step>" per step and a "LANE SUMMARY" line; exits 0 only if every step passed.
import Syscalls
import VMMControl

#if canImport(Glibc)
  import Glibc
#endif

struct Arguments {
  var command: String
  var values: [String: String] = [:]
  var flags: Set<String> = []

  init(_ argv: [String]) throws {
    guard let command = argv.first else { throw LaneFailure("expected a command: test-guest or linux") }
    self.command = command
    var rest = argv.dropFirst()
    while let arg = rest.popFirst() {
      guard arg.hasPrefix("--") else { throw LaneFailure("unexpected argument '\(arg)'") }
      if arg == "--uffd" || arg == "--uffd-optional" || arg == "--shmem-optional" {
        flags.insert(arg)
        continue
      }
      guard let value = rest.popFirst() else { throw LaneFailure("\(arg) needs a value") }
      values[arg] = value
    }
  }

  func required(_ name: String) throws -> String {
    guard let v = values[name] else { throw LaneFailure("\(command): \(name) is required") }
    return v
  }

  func number<T: FixedWidthInteger>(_ name: String, default d: T) throws -> T {
    guard let text = values[name] else { return d }
    guard let v = T(text) else { throw LaneFailure("\(name): '\(text)' is not a number") }
    return v
  }
}

func main() -> Int32 {
  let report = Report()
  do {
    let args = try Arguments(Array(CommandLine.arguments.dropFirst()))
    let work = try args.required("--work")
    try FileSystem.makeDirectories(work)
    let start = Clock.monotonicNanoseconds()
    switch args.command {
    case "test-guest":
      do {
        try testGuestScenario(work: work, children: try args.number("--children", default: 3), report: report)
      } catch {}  // already reported by its step
      report.metric("wall_ms", "\(milliseconds(since: start))")
      report.summary(scenario: "test-guest")
    case "linux":
      let settings = LinuxSettings(
        parent: .init(
          vmm: try ForkdBinaries.path(of: "forkd-vmm"), kernel: try args.required("--kernel"),
          initrd: try args.required("--initrd"), disk: args.values["--disk"], commandLine: args.values["--cmdline"],
          memoryMiB: try args.number("--memory-mib", default: 256), vcpus: try args.number("--vcpus", default: 1)),
        expectedKernel: try args.required("--expect-kernel"), children: try args.number("--children", default: 3),
        uffd: args.flags.contains("--uffd") ? .required : args.flags.contains("--uffd-optional") ? .optional : .off,
        bootTimeoutMS: try args.number("--boot-timeout-s", default: 240) * 1000)
      var withShmem = settings
      withShmem.shmem = args.flags.contains("--shmem-optional")
      do {
        try linuxScenario(withShmem, work: work, report: report)
      } catch {}
      report.metric("wall_ms", "\(milliseconds(since: start))")
      report.summary(scenario: "linux")
    default:
      throw LaneFailure("unknown command '\(args.command)': expected test-guest or linux")
    }
  } catch {
    say("LANE FAIL setup: \(error)")
    return 2
  }
  return report.failed == 0 && report.passed > 0 ? 0 : 1
}

exit(main())
