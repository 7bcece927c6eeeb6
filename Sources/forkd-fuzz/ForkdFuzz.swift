import FuzzTargets

#if canImport(Glibc)
  import Glibc
#endif

#if FUZZING
  import CFuzz
#endif

/// forkd-fuzz: the fuzz targets of forkd in one binary.
///
/// Built by `scripts/fuzz` with `-sanitize=fuzzer,address -DFUZZING`, it is a libFuzzer binary:
/// `FORKD_FUZZ_TARGET=<name> forkd-fuzz [libFuzzer flags] [corpus dirs]`. Built normally (as part
/// of `swift build`) it replays inputs: `forkd-fuzz replay <name> <file or dir>…`, and
/// `forkd-fuzz list` names the targets, `forkd-fuzz seeds <dir>` writes the seed corpus.
@main
struct ForkdFuzz {
  static func main() {
    #if FUZZING
      guard let name = getenv("FORKD_FUZZ_TARGET").map({ String(cString: $0) }),
        let target = FuzzTarget.named(name)
      else {
        printError("forkd-fuzz: set FORKD_FUZZ_TARGET to one of \(FuzzTarget.all.map(\.name).joined(separator: ", "))")
        exit(2)
      }
      selected = target
      var argc = CommandLine.argc
      var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
      exit(
        LLVMFuzzerRunDriver(&argc, &argv) { data, size in
          selected?.run(size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size)))
          return 0
        })
    #else
      let args = Array(CommandLine.arguments.dropFirst())
      switch args.first {
      case "list":
        for target in FuzzTarget.all { print("\(target.name)\t\(target.summary)") }
      case "replay" where args.count >= 3:
        guard let target = FuzzTarget.named(args[1]) else {
          printError("forkd-fuzz: unknown target \(args[1])")
          exit(2)
        }
        var count = 0
        for path in args.dropFirst(2) {
          for file in FuzzCorpus.files(at: path) {
            guard let bytes = FuzzCorpus.read(file) else {
              printError("forkd-fuzz: cannot read \(file)")
              exit(1)
            }
            target.run(bytes)
            count += 1
          }
        }
        print("\(target.name): replayed \(count) inputs")
      case "seeds" where args.count == 2:
        for (name, seeds) in FuzzSeeds.all().sorted(by: { $0.key < $1.key }) {
          let dir = args[1] + "/" + name
          mkdir(dir, 0o755)
          for (i, seed) in seeds.enumerated() {
            let path = dir + "/seed-" + (i < 10 ? "0" : "") + String(i)
            guard FuzzCorpus.write(seed, to: path) else {
              printError("forkd-fuzz: cannot write \(path)")
              exit(1)
            }
          }
          print("\(name): \(seeds.count) seeds in \(dir)")
        }
      default:
        printError("usage: forkd-fuzz list | seeds <dir> | replay <target> <file or dir>…")
        exit(2)
      }
    #endif
  }
}

#if FUZZING
  nonisolated(unsafe) var selected: FuzzTarget?
#endif

/// A line on stderr (write(2): no shared stdio state).
func printError(_ message: String) {
  let line = Array((message + "\n").utf8)
  _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}
