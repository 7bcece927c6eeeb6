import CoreMetrics
import Prometheus
import Protocol

/// The daemon's metrics through swift-metrics, exposed in the Prometheus text format.
public final class SupervisorMetrics: @unchecked Sendable {
  public let registry = PrometheusCollectorRegistry()
  let snapshotsTotal: CoreMetrics.Gauge
  let sandboxesActive: CoreMetrics.Gauge
  let spawnLatency: CoreMetrics.Timer
  let pagerRestarts: CoreMetrics.Counter
  let requests: CoreMetrics.Counter
  let agentReplyRejections: CoreMetrics.Counter

  public init() {
    let factory = PrometheusMetricsFactory(registry: registry)
    snapshotsTotal = CoreMetrics.Gauge(label: "forkd_snapshots_total", factory: factory)
    sandboxesActive = CoreMetrics.Gauge(label: "forkd_sandboxes_active", factory: factory)
    spawnLatency = CoreMetrics.Timer(label: "forkd_spawn_seconds", factory: factory)
    pagerRestarts = CoreMetrics.Counter(label: "forkd_pager_restarts_total", factory: factory)
    requests = CoreMetrics.Counter(label: "forkd_api_requests_total", factory: factory)
    agentReplyRejections = CoreMetrics.Counter(label: "forkd_agent_replies_rejected_total", factory: factory)
    CoreMetrics.Gauge(label: "forkd_build_info", dimensions: [("version", APIVersion.version)], factory: factory)
      .record(1)
  }

  /// Prometheus text exposition of everything registered.
  public func exposition() -> [UInt8] {
    var buffer: [UInt8] = []
    registry.emit(into: &buffer)
    return buffer
  }
}
