//! Every metric redis-xds exports, registered in one place. Served as Prometheus text on
//! `/metrics` by the debug server.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// One label.
pub type Label = [(&'static str, &'static str); 1];

/// The metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Connected proxies by xDS variant (`variant` = sotw | delta).
    pub connected: Family<Label, Gauge>,
    /// Proxies connected and held, receiving nothing, until the source has listed
    /// everything (a starting replica).
    pub held: Gauge,
    /// Responses sent, by resource type (`type` = CDS | EDS | LDS).
    pub pushes: Family<Label, Counter>,
    /// NACKs received, by resource type.
    pub nacks: Family<Label, Counter>,
    /// From the model change being observed to the proxy's ACK of the resulting push.
    pub push_latency: Histogram,
    /// Duration of one compile of the whole model.
    pub compile_duration: Histogram,
    /// Objects in the model, by kind.
    pub model_objects: Family<Label, Gauge>,
    /// Problems by stage: `load` (files and objects that failed to parse), `compile`
    /// (objects left out).
    pub problems: Family<Label, Gauge>,
    /// Changes seen by the sources, by source (`source` = manifests | kubernetes).
    pub source_events: Family<Label, Counter>,
    /// Connected proxies by sync state (`state` = synced | stale | nacked | not_sent; the
    /// `/debug/syncz` names in lower case): a proxy is `nacked` while it refuses anything,
    /// `synced` once it ACKed all it should hold of every type it asked for. Set on each
    /// scrape from the connected streams.
    pub proxies: Family<Label, Gauge>,
    /// 1 while the server serves: the source was read, and no task failed (what `/readyz`
    /// says); 0 otherwise. Set on each scrape.
    pub ready: Gauge,
    /// Problems the compiler found (each leaves its object out), by reason (`reason` =
    /// the reasons of `Accepted=False` conditions: Invalid, RefNotFound, ...). Every reason
    /// is exported, at 0 when there is none.
    pub problems_by_reason: Family<Label, Gauge>,
    /// Failed list or watch calls to the Kubernetes API by kind (`kind` = RedisCluster |
    /// Pod | EndpointSlice | Secret | Service), or failed reads of the manifests directory
    /// (`kind` = Manifests). Each followed kind is exported from the start, at 0.
    pub watch_errors: Family<Label, Counter>,
    /// Per RedisCluster (`rediscluster` = `<namespace>/<name>`, the `envoy_redis_prefix` of
    /// its listener's statistics), this replica's connected proxies that select it
    /// (`state` = connected), hold its current version (synced) or rejected it
    /// (rejected): the status's `proxies`, before the replicas' counts are added up. Set
    /// on each scrape; a deleted RedisCluster's series go with it.
    pub rediscluster_proxies: Family<ObjectLabels, Gauge>,
    /// Held by a scrape while it sets the gauges above and encodes them all.
    pub scrape: std::sync::Mutex<()>,
}

/// `rediscluster` (`<namespace>/<name>`, as Envoy's `envoy_redis_prefix`) and `state` of a
/// RedisCluster's series. Not `namespace`: Kubernetes service discovery gives every
/// scraped series the pod's own `namespace`, and Prometheus would rename ours.
pub type ObjectLabels = [(&'static str, String); 2];

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("redis_xds");
        let m = Metrics {
            connected: Family::default(),
            held: Gauge::default(),
            pushes: Family::default(),
            nacks: Family::default(),
            // 1 ms .. ~33 s
            push_latency: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            // 0.1 ms .. ~3 s
            compile_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            model_objects: Family::default(),
            problems: Family::default(),
            source_events: Family::default(),
            proxies: Family::default(),
            ready: Gauge::default(),
            problems_by_reason: Family::default(),
            watch_errors: Family::default(),
            rediscluster_proxies: Family::default(),
            scrape: std::sync::Mutex::default(),
            registry: Registry::default(),
        };
        registry.register(
            "xds_connected_proxies",
            "Connected proxies by xDS variant",
            m.connected.clone(),
        );
        registry.register(
            "xds_held_proxies",
            "Proxies held until the source has listed everything",
            m.held.clone(),
        );
        registry.register(
            "xds_pushes",
            "xDS responses sent, by resource type",
            m.pushes.clone(),
        );
        registry.register(
            "xds_nacks",
            "NACKs received, by resource type",
            m.nacks.clone(),
        );
        registry.register(
            "xds_push_latency_seconds",
            "Model change observed to ACK of the resulting push",
            m.push_latency.clone(),
        );
        registry.register(
            "compile_duration_seconds",
            "Compile of the whole model",
            m.compile_duration.clone(),
        );
        registry.register(
            "model_objects",
            "Objects in the model, by kind",
            m.model_objects.clone(),
        );
        registry.register(
            "model_problems",
            "Objects left out and files that failed to parse",
            m.problems.clone(),
        );
        registry.register(
            "source_events",
            "Changes seen by the sources",
            m.source_events.clone(),
        );
        registry.register(
            "proxies",
            "Connected proxies by sync state",
            m.proxies.clone(),
        );
        registry.register(
            "ready",
            "1 while the server serves (the source was read, no task failed)",
            m.ready.clone(),
        );
        registry.register(
            "model_problems_by_reason",
            "Problems the compiler found, by reason (the reasons of Accepted=False conditions)",
            m.problems_by_reason.clone(),
        );
        registry.register(
            "watch_errors",
            "Failed list or watch calls to the Kubernetes API, by kind (directory reads: kind Manifests)",
            m.watch_errors.clone(),
        );
        registry.register(
            "rediscluster_proxies",
            "Per RedisCluster, this replica's connected proxies that select it (state connected), have its current version (synced) or rejected it (rejected)",
            m.rediscluster_proxies.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_export_every_metric_with_its_labels() {
        let m = Metrics::default();
        m.connected.get_or_create(&[("variant", "delta")]).inc();
        m.pushes.get_or_create(&[("type", "LDS")]).inc();
        m.push_latency.observe(0.02);
        m.proxies.get_or_create(&[("state", "nacked")]).set(2);
        m.ready.set(1);
        let text = m.encode();
        assert!(
            text.contains("redis_xds_proxies{state=\"nacked\"} 2"),
            "{text}"
        );
        assert!(text.contains("redis_xds_ready 1"), "{text}");
        assert!(
            text.contains("redis_xds_xds_connected_proxies{variant=\"delta\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("redis_xds_xds_pushes_total{type=\"LDS\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("redis_xds_xds_push_latency_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("redis_xds_compile_duration_seconds"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
