import Protocol

/// Percentiles over a sample of durations (nearest-rank).
public struct Summary: Sendable {
  /// Fewest samples for which a nearest-rank p90 / p99 means something (below that it is the max).
  public static let samplesForP90 = 10
  public static let samplesForP99 = 100

  public let count: Int
  public let p50: Double
  public let p90: Double
  public let p99: Double
  public let min: Double
  public let max: Double

  /// p90 and p99 when there are enough samples for them, nil otherwise.
  public var p90IfEnough: Double? { count >= Summary.samplesForP90 ? p90 : nil }
  public var p99IfEnough: Double? { count >= Summary.samplesForP99 ? p99 : nil }

  /// A percentile for a table: the value, or "-" when there are too few samples for it.
  public static func text(_ value: Double?, decimals: Int = 2) -> String {
    value.map { format($0, decimals: decimals) } ?? "-"
  }

  public init(_ values: [Double]) {
    let sorted = values.sorted()
    count = sorted.count
    func rank(_ p: Double) -> Double {
      guard !sorted.isEmpty else { return 0 }
      let index = Int((p * Double(sorted.count)).rounded(.up)) - 1
      return sorted[Swift.max(0, Swift.min(sorted.count - 1, index))]
    }
    p50 = rank(0.50)
    p90 = rank(0.90)
    p99 = rank(0.99)
    min = sorted.first ?? 0
    max = sorted.last ?? 0
  }
}

public func ms(_ nanoseconds: UInt64) -> Double { Double(nanoseconds) / 1_000_000 }

public func format(_ value: Double, decimals: Int = 2) -> String {
  var scale = 1.0
  for _ in 0..<decimals { scale *= 10 }
  let rounded = (value * scale).rounded() / scale
  var text = "\(rounded)"
  if let dot = text.firstIndex(of: ".") {
    let have = text.distance(from: dot, to: text.endIndex) - 1
    if have < decimals { text += String(repeating: "0", count: decimals - have) }
  } else if decimals > 0 {
    text += "." + String(repeating: "0", count: decimals)
  }
  return text
}

public func pad(_ text: String, _ width: Int) -> String {
  text.count >= width ? text : String(repeating: " ", count: width - text.count) + text
}

extension String {
  /// The string left-aligned in `width` columns (longer strings are left as they are).
  public func padding(_ width: Int) -> String {
    count >= width ? self : self + String(repeating: " ", count: width - count)
  }
}

/// A JSON value as a table cell: strings as they are, numbers formatted, "-" for anything else.
public func string(_ value: JSONValue?) -> String {
  switch value {
  case .string(let s): s
  case .integer(let i): "\(i)"
  case .double(let d): format(d)
  case .bool(let b): b ? "yes" : "no"
  default: "-"
  }
}
