import Protocol

/// Counters and a service-time histogram, small enough to live in every pager.
///
/// Service time is handler-side: from reading the fault event to the ioctl that resolves it.
/// Buckets are 250 ns wide up to 64 µs, then powers of two, so percentiles are exact to a bucket.
struct FaultStats {
  var faults: UInt64 = 0
  var minorFaults: UInt64 = 0
  var copies: UInt64 = 0
  var zeroPages: UInt64 = 0
  var continues: UInt64 = 0
  var alreadyMapped: UInt64 = 0
  var retriesAfterEvents: UInt64 = 0
  var bytesCopied: UInt64 = 0
  var removeEvents: UInt64 = 0
  var unmapEvents: UInt64 = 0
  var prefetchedPages: UInt64 = 0
  var prefetchNanoseconds: UInt64 = 0
  /// Time spent resolving faults: the pager's busy time.
  var serviceNanoseconds: UInt64 = 0

  static let fineBuckets = 256
  static let fineWidth: UInt64 = 250
  private var histogram = [UInt32](repeating: 0, count: fineBuckets + 40)

  mutating func record(serviceNanoseconds ns: UInt64) {
    let bucket: Int
    if ns < UInt64(Self.fineBuckets) * Self.fineWidth {
      bucket = Int(ns / Self.fineWidth)
    } else {
      bucket = Self.fineBuckets + min(39, 64 - (ns / (UInt64(Self.fineBuckets) * Self.fineWidth)).leadingZeroBitCount)
    }
    histogram[bucket] &+= 1
    serviceNanoseconds &+= ns
  }

  static func upperBound(_ bucket: Int) -> UInt64 {
    if bucket < fineBuckets { return UInt64(bucket + 1) * fineWidth }
    return UInt64(fineBuckets) * fineWidth << UInt64(bucket - fineBuckets)
  }

  /// Adds another session's counters and histogram (a shared pager's totals).
  mutating func merge(_ other: FaultStats) {
    faults &+= other.faults
    minorFaults &+= other.minorFaults
    copies &+= other.copies
    zeroPages &+= other.zeroPages
    continues &+= other.continues
    alreadyMapped &+= other.alreadyMapped
    retriesAfterEvents &+= other.retriesAfterEvents
    bytesCopied &+= other.bytesCopied
    removeEvents &+= other.removeEvents
    unmapEvents &+= other.unmapEvents
    prefetchedPages &+= other.prefetchedPages
    prefetchNanoseconds = max(prefetchNanoseconds, other.prefetchNanoseconds)
    serviceNanoseconds &+= other.serviceNanoseconds
    for index in histogram.indices { histogram[index] &+= other.histogram[index] }
  }

  /// Upper bound (ns) of the bucket holding the p-th percentile.
  func percentile(_ p: Double) -> UInt64 {
    let total = histogram.reduce(UInt64(0)) { $0 + UInt64($1) }
    guard total > 0 else { return 0 }
    let rank = UInt64((p * Double(total)).rounded(.up))
    var seen: UInt64 = 0
    for (bucket, count) in histogram.enumerated() {
      seen += UInt64(count)
      if seen >= rank { return Self.upperBound(bucket) }
    }
    return 0
  }

  var json: JSONValue {
    let histogramCount = histogram.reduce(UInt64(0)) { $0 + UInt64($1) }
    return .object([
      "faults": .integer(Int64(faults)),
      "minor_faults": .integer(Int64(minorFaults)),
      "copies": .integer(Int64(copies)),
      "zero_pages": .integer(Int64(zeroPages)),
      "continues": .integer(Int64(continues)),
      "already_mapped": .integer(Int64(alreadyMapped)),
      "retries_after_events": .integer(Int64(retriesAfterEvents)),
      "bytes_copied": .integer(Int64(bytesCopied)),
      "remove_events": .integer(Int64(removeEvents)),
      "unmap_events": .integer(Int64(unmapEvents)),
      "prefetched_pages": .integer(Int64(prefetchedPages)),
      "prefetch_us": .integer(Int64(prefetchNanoseconds / 1000)),
      "service_ns": .object([
        "p50": .integer(Int64(percentile(0.50))), "p90": .integer(Int64(percentile(0.90))),
        "p99": .integer(Int64(percentile(0.99))),
      ]),
      // The non-empty buckets as [upper bound ns, count], so an owner can merge several pagers.
      "histogram": .array(
        histogram.indices.filter { histogram[$0] > 0 }.map { bucket in
          .array([.integer(Int64(Self.upperBound(bucket))), .integer(Int64(histogram[bucket]))])
        }),
      // Capacity: faults one pager resolves per second of its own busy time.
      "faults_per_second": .double(
        serviceNanoseconds > 0 ? Double(histogramCount) * 1e9 / Double(serviceNanoseconds) : 0),
    ])
  }
}
