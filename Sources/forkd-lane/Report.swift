import Syscalls

/// A lane step failed: what was checked and what was seen.
struct LaneFailure: Error, CustomStringConvertible {
  var description: String
  init(_ description: String) { self.description = description }
}

/// Prints one line per step ("LANE PASS <step> (<ms> ms)" or "LANE FAIL <step>: <why>") and
/// collects the measurements for the summary line.
final class Report {
  private(set) var failed = 0
  private(set) var passed = 0
  private(set) var warned = 0
  private var metrics: [(String, String)] = []

  /// Runs `body` as one step; a thrown error is reported as that step's failure and rethrown
  /// so the scenario stops (later steps depend on earlier ones).
  @discardableResult
  func step<T>(_ name: String, _ body: () throws -> T) throws -> T {
    let start = Clock.monotonicNanoseconds()
    do {
      let value = try body()
      passed += 1
      say("LANE PASS \(name) (\(milliseconds(since: start)) ms)")
      return value
    } catch {
      failed += 1
      say("LANE FAIL \(name) (\(milliseconds(since: start)) ms): \(error)")
      throw error
    }
  }

  /// A step whose failure is reported ("LANE WARN") but does not fail the lane.
  func optionalStep(_ name: String, _ body: () throws -> Void) {
    let start = Clock.monotonicNanoseconds()
    do {
      try body()
      passed += 1
      say("LANE PASS \(name) (\(milliseconds(since: start)) ms)")
    } catch {
      warned += 1
      say("LANE WARN \(name) (\(milliseconds(since: start)) ms, not counted as a failure): \(error)")
    }
  }

  func note(_ text: String) { say("LANE NOTE \(text)") }

  func metric(_ name: String, _ value: String) {
    metrics.append((name, value))
  }

  func summary(scenario: String) {
    let fields = metrics.map { "\($0.0)=\($0.1)" }.joined(separator: " ")
    say("LANE SUMMARY \(scenario) passed=\(passed) failed=\(failed) warned=\(warned) \(fields)")
    metrics.removeAll()
  }
}

/// One line on stdout, unbuffered (the lane's console interleaves it with the kernel's).
func say(_ line: String) {
  try? FileDescriptor(rawValue: 1).writeAll(Array((line + "\n").utf8))
}

func milliseconds(since start: UInt64) -> UInt64 { (Clock.monotonicNanoseconds() - start) / 1_000_000 }

func format(_ value: Double) -> String {
  let scaled = Int((value * 100).rounded())
  let fraction = scaled % 100
  return "\(scaled / 100).\(fraction < 10 ? "0" : "")\(fraction)"
}

#if canImport(Glibc)
  import Glibc
#endif
