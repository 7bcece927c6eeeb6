import FuzzTargets
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// The repository root, from this file's path (Tests/FuzzRegressionTests/<file>).
private let repositoryRoot: String = {
  var parts = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false)
  parts.removeLast(3)
  return parts.joined(separator: "/")
}()

private let corpusRoot = repositoryRoot + "/Fuzz/Corpus"

/// Every committed fuzz input (seeds and past findings) replayed through its target in this
/// process: a parser regression shows up as a crash or a violated invariant here, in every
/// `swift test` run, without a sanitizer build. `scripts/fuzz` is the long run.
@Suite("Fuzz corpus regression")
struct FuzzRegressionTests {
  @Test("every target has a committed corpus and every corpus dir a target")
  func corpusLayout() throws {
    let dirs = Set(try subdirectories(corpusRoot))
    let names = Set(FuzzTarget.all.map(\.name))
    #expect(dirs == names, "Fuzz/Corpus/ holds \(dirs.sorted()), the targets are \(names.sorted())")
    for name in names {
      #expect(!FuzzCorpus.files(at: corpusRoot + "/" + name).isEmpty, "Fuzz/Corpus/\(name) is empty")
    }
  }

  @Test(
    "the committed corpus of each target replays without a crash or violated invariant",
    arguments: FuzzTarget.all.map(\.name))
  func replay(_ name: String) throws {
    let target = try #require(FuzzTarget.named(name))
    let files = FuzzCorpus.files(at: corpusRoot + "/" + name)
    #expect(!files.isEmpty)
    for file in files {
      let bytes = try #require(FuzzCorpus.read(file), "cannot read \(file)")
      target.run(bytes)
    }
  }

  @Test("the committed seeds are what the generator writes (regenerate with forkd-fuzz seeds Fuzz/Corpus)")
  func seedsCurrent() throws {
    for (name, seeds) in FuzzSeeds.all() {
      for (i, seed) in seeds.enumerated() {
        let path = corpusRoot + "/\(name)/seed-" + (i < 10 ? "0" : "") + String(i)
        #expect(FuzzCorpus.read(path) == seed, "\(path) differs from the generated seed")
      }
    }
  }

  /// A short libFuzzer run of every target (FORKD_FUZZ_SECONDS each, scripts/fuzz); off unless
  /// the variable is set, since it needs its own sanitizer build.
  @Test("a short libFuzzer run of every target finds nothing", .enabled(if: getenv("FORKD_FUZZ_SECONDS") != nil))
  func shortFuzz() throws {
    let seconds = String(cString: getenv("FORKD_FUZZ_SECONDS"))
    let status = system("'\(repositoryRoot)/scripts/fuzz' --seconds \(seconds) >&2")
    #expect(status == 0, "scripts/fuzz --seconds \(seconds) exited with \(status)")
  }
}

private func subdirectories(_ path: String) throws -> [String] {
  guard let dir = opendir(path) else { throw CorpusError(message: "cannot open \(path)") }
  defer { closedir(dir) }
  var names: [String] = []
  while let entry = readdir(dir) {
    let name = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
    if name.hasPrefix(".") { continue }
    if entry.pointee.d_type == UInt8(DT_DIR) { names.append(name) }
  }
  return names
}

private struct CorpusError: Error { let message: String }
