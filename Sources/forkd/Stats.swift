/// Percentiles over a sample of durations (nearest-rank).
struct Summary {
  let count: Int
  let p50: Double
  let p90: Double
  let p99: Double
  let min: Double
  let max: Double

  init(_ values: [Double]) {
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

func ms(_ nanoseconds: UInt64) -> Double { Double(nanoseconds) / 1_000_000 }

func format(_ value: Double, decimals: Int = 2) -> String {
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

func pad(_ text: String, _ width: Int) -> String {
  text.count >= width ? text : String(repeating: " ", count: width - text.count) + text
}
