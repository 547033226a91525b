//! `serve --istio xds`: the EnvoyFilters of Istio mode served to istiod as an `xds://`
//! config source (`meshConfig.configSources`), so that nothing is written to the API server
//! and nothing of it lands in etcd.
//!
//! istiod connects as a State-of-the-World ADS client and asks for every Istio config type
//! it knows, by type URLs such as `networking.istio.io/v1alpha3/EnvoyFilter`. Each must be
//! answered, empty or not, before istiod counts the source as synced; only EnvoyFilters
//! ever have resources here. A resource is an `istio.mcp.v1alpha1.Resource`: metadata
//! (`namespace/name`, a version, labels, annotations) and the EnvoyFilter as an `Any`.
//! istiod replaces its whole set for a type with each response, so a filter that is no
//! longer wanted is simply left out.
//!
//! The streams are [`crate::xds`]'s, with its [`Profile::IstioConfigSource`]: the same
//! nonce, ACK and NACK rules as Envoy's, held until the first snapshot is ready.
//!
//! The messages are declared here with prost from their field numbers in istio.io/api
//! (`mcp/v1alpha1`, `networking/v1alpha3/envoy_filter.proto`), for the fields redis-xds
//! writes only.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::google::protobuf as pb;
use prost::Message;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::snapshot::Snapshot;
use crate::xds::{
    AdsServer, NodeIdentity, Profile, ProxyResources, Registry, Resource, ResourceMap,
    ResourceSource,
};

/// Type URL of a resource's body.
pub const ENVOY_FILTER_BODY_TYPE: &str =
    "type.googleapis.com/istio.networking.v1alpha3.EnvoyFilter";

/// `istio.mcp.v1alpha1.Resource`.
#[derive(Clone, PartialEq, Message)]
pub struct McpResource {
    /// Metadata.
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<McpMetadata>,
    /// The object's spec.
    #[prost(message, optional, tag = "2")]
    pub body: Option<pb::Any>,
}

/// `istio.mcp.v1alpha1.Metadata`.
#[derive(Clone, PartialEq, Message)]
pub struct McpMetadata {
    /// `namespace/name`.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Changes when the object does: istiod updates its copy only then.
    #[prost(string, tag = "3")]
    pub version: String,
    /// Labels.
    #[prost(btree_map = "string, string", tag = "4")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[prost(btree_map = "string, string", tag = "5")]
    pub annotations: BTreeMap<String, String>,
}

/// `istio.networking.v1alpha3.EnvoyFilter`, the fields redis-xds writes.
#[derive(Clone, PartialEq, Message)]
pub struct EnvoyFilter {
    /// `workload_selector`.
    #[prost(message, optional, tag = "3")]
    pub workload_selector: Option<WorkloadSelector>,
    /// `config_patches`.
    #[prost(message, repeated, tag = "4")]
    pub config_patches: Vec<ConfigPatch>,
}

/// `istio.networking.v1alpha3.WorkloadSelector`.
#[derive(Clone, PartialEq, Message)]
pub struct WorkloadSelector {
    /// `labels`.
    #[prost(btree_map = "string, string", tag = "1")]
    pub labels: BTreeMap<String, String>,
}

/// `EnvoyFilter.EnvoyConfigObjectPatch`.
#[derive(Clone, PartialEq, Message)]
pub struct ConfigPatch {
    /// `apply_to` (`EnvoyFilter.ApplyTo`).
    #[prost(int32, tag = "1")]
    pub apply_to: i32,
    /// `match`.
    #[prost(message, optional, tag = "2")]
    pub r#match: Option<ObjectMatch>,
    /// `patch`.
    #[prost(message, optional, tag = "3")]
    pub patch: Option<Patch>,
}

/// `EnvoyFilter.EnvoyConfigObjectMatch`; `listener` is a member of the `object_types` oneof.
#[derive(Clone, PartialEq, Message)]
pub struct ObjectMatch {
    /// `context` (`EnvoyFilter.PatchContext`).
    #[prost(int32, tag = "1")]
    pub context: i32,
    /// `listener`.
    #[prost(message, optional, tag = "3")]
    pub listener: Option<ListenerMatch>,
}

/// `EnvoyFilter.ListenerMatch`.
#[derive(Clone, PartialEq, Message)]
pub struct ListenerMatch {
    /// `filter_chain`.
    #[prost(message, optional, tag = "3")]
    pub filter_chain: Option<FilterChainMatch>,
    /// `name`.
    #[prost(string, tag = "4")]
    pub name: String,
}

/// `EnvoyFilter.ListenerMatch.FilterChainMatch`.
#[derive(Clone, PartialEq, Message)]
pub struct FilterChainMatch {
    /// `filter`.
    #[prost(message, optional, tag = "5")]
    pub filter: Option<FilterMatch>,
}

/// `EnvoyFilter.ListenerMatch.FilterMatch`.
#[derive(Clone, PartialEq, Message)]
pub struct FilterMatch {
    /// `name`.
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `EnvoyFilter.Patch`.
#[derive(Clone, PartialEq, Message)]
pub struct Patch {
    /// `operation` (`EnvoyFilter.Patch.Operation`).
    #[prost(int32, tag = "1")]
    pub operation: i32,
    /// `value`.
    #[prost(message, optional, tag = "2")]
    pub value: Option<pb::Struct>,
}

fn apply_to(name: &str) -> Option<i32> {
    Some(match name {
        "NETWORK_FILTER" => 3,
        "CLUSTER" => 8,
        _ => return None,
    })
}

fn context(name: &str) -> Option<i32> {
    Some(match name {
        "ANY" => 0,
        "SIDECAR_OUTBOUND" => 2,
        _ => return None,
    })
}

fn operation(name: &str) -> Option<i32> {
    Some(match name {
        "ADD" => 2,
        "REPLACE" => 7,
        _ => return None,
    })
}

/// A JSON value as `google.protobuf.Value`.
fn to_value(v: &Value) -> pb::Value {
    use pb::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(pb::ListValue {
            values: items.iter().map(to_value).collect(),
        }),
        Value::Object(map) => Kind::StructValue(to_struct(map)),
    };
    pb::Value { kind: Some(kind) }
}

fn to_struct(map: &serde_json::Map<String, Value>) -> pb::Struct {
    pb::Struct {
        fields: map.iter().map(|(k, v)| (k.clone(), to_value(v))).collect(),
    }
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// One generated EnvoyFilter object (the JSON of [`crate::istio::envoy_filters`]) as the
/// resource istiod reads. `None` for a shape this module does not write (a bug).
fn to_resource(filter: &Value) -> Option<McpResource> {
    let patches = filter["spec"]["configPatches"]
        .as_array()?
        .iter()
        .map(|p| {
            let m = &p["match"];
            let listener = m.get("listener").map(|l| ListenerMatch {
                name: l["name"].as_str().unwrap_or_default().to_owned(),
                filter_chain: l["filterChain"]["filter"]["name"].as_str().map(|n| {
                    FilterChainMatch {
                        filter: Some(FilterMatch { name: n.to_owned() }),
                    }
                }),
            });
            Some(ConfigPatch {
                apply_to: apply_to(p["applyTo"].as_str()?)?,
                r#match: Some(ObjectMatch {
                    context: context(m["context"].as_str()?)?,
                    listener,
                }),
                patch: Some(Patch {
                    operation: operation(p["patch"]["operation"].as_str()?)?,
                    value: Some(to_struct(p["patch"]["value"].as_object()?)),
                }),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let labels = string_map(&filter["spec"]["workloadSelector"]["labels"]);
    let spec = EnvoyFilter {
        workload_selector: (!labels.is_empty()).then_some(WorkloadSelector { labels }),
        config_patches: patches,
    };
    let body = spec.encode_to_vec();
    let version = {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(&body);
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    };
    let meta = &filter["metadata"];
    Some(McpResource {
        metadata: Some(McpMetadata {
            name: format!("{}/{}", meta["namespace"].as_str()?, meta["name"].as_str()?),
            version,
            labels: string_map(&meta["labels"]),
            annotations: string_map(&meta["annotations"]),
        }),
        body: Some(pb::Any {
            type_url: ENVOY_FILTER_BODY_TYPE.into(),
            value: body,
        }),
    })
}

/// The generated EnvoyFilters as resources: named `namespace/name`, each the encoded
/// [`McpResource`] (its `Any` wrapper is added on the wire), versioned by content.
fn filter_resources(filters: &[Value]) -> ResourceMap {
    filters
        .iter()
        .filter_map(|f| {
            let Some(r) = to_resource(f) else {
                tracing::error!(filter = %f["metadata"]["name"], "an EnvoyFilter of a shape the config source cannot encode; left out");
                return None;
            };
            let meta = r.metadata.clone().unwrap_or_default();
            let resource = Resource {
                name: meta.name.clone(),
                version: meta.version,
                body: r.encode_to_vec().into(),
                clusters: Vec::new(),
                declared: false,
            };
            Some((meta.name, Arc::new(resource)))
        })
        .collect()
}

/// What the config source serves istiod: the EnvoyFilters of one ready snapshot, the same
/// for every client.
#[derive(Debug)]
struct FilterSource {
    resources: Arc<ProxyResources>,
    snapshot: Arc<Snapshot>,
}

impl ResourceSource for FilterSource {
    fn resources_for(&self, _: &NodeIdentity) -> Arc<ProxyResources> {
        Arc::clone(&self.resources)
    }

    fn observed_at(&self) -> Instant {
        self.snapshot.observed_at
    }

    /// istiod's NACK messages can quote a filter, and filters can carry secret values.
    fn redact(&self, text: &str) -> String {
        self.snapshot.redact(text)
    }
}

/// Before the first ready snapshot: istiod's stream waits, as a proxy's does.
#[derive(Debug)]
struct NotReady;

impl ResourceSource for NotReady {
    fn resources_for(&self, _: &NodeIdentity) -> Arc<ProxyResources> {
        Arc::default()
    }

    fn observed_at(&self) -> Instant {
        Instant::now()
    }

    fn is_ready(&self) -> bool {
        false
    }
}

/// What the config source serves, as [`follow_snapshots`] fills it and [`serve`] reads it.
pub type Sources = watch::Receiver<Arc<dyn ResourceSource>>;

/// The channel [`follow_snapshots`] fills and [`serve`] reads: nothing ready until the
/// first ready snapshot.
pub fn channel() -> (watch::Sender<Arc<dyn ResourceSource>>, Sources) {
    watch::channel(Arc::new(NotReady) as Arc<dyn ResourceSource>)
}

/// Keeps `tx` at the EnvoyFilters of the latest ready snapshot until `shutdown`. A
/// snapshot that changes no filter is not sent on: istiod's streams stay quiet.
pub async fn follow_snapshots(
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    opts: crate::istio::IstioOptions,
    tx: watch::Sender<Arc<dyn ResourceSource>>,
    shutdown: CancellationToken,
) {
    let mut reported: Vec<String> = Vec::new();
    let mut served: Option<ResourceMap> = None;
    loop {
        let snapshot = Arc::clone(&snapshots.borrow_and_update());
        if snapshot.ready {
            let generated = crate::istio::envoy_filters(&snapshot.model, &snapshot.compiled, &opts);
            crate::istio::log_new_problems(&generated, &mut reported);
            let filters = filter_resources(&generated.filters);
            if served.as_ref() != Some(&filters) {
                served = Some(filters.clone());
                let resources = Arc::new(ProxyResources {
                    envoy_filters: filters,
                    ..Default::default()
                });
                tx.send_replace(Arc::new(FilterSource {
                    resources,
                    snapshot: Arc::clone(&snapshot),
                }));
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = snapshots.changed() => if changed.is_err() { return },
        }
    }
}

/// Serves `source` to istiod on `listener` until `shutdown`: the same ADS server as
/// Envoy's, with the config-source profile ([`Profile::IstioConfigSource`]), its own
/// registry and its own (unexported) metrics, so that istiod never counts as a proxy.
/// Plain text, as istiod dials an `xds://` source without `tlsSettings`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    source: Sources,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let ads = AdsServer::new(
        source,
        Arc::new(Registry::default()),
        Arc::default(),
        shutdown.clone(),
    )
    .with_profile(Profile::IstioConfigSource);
    crate::xds::server::serve(listener, ads.into_service(), None, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_encode_a_generated_filter_as_an_mcp_resource() {
        let filter = serde_json::json!({
            "metadata": {"name": "redis-xds-abc", "namespace": "shop", "labels": {"app.kubernetes.io/managed-by": "redis-xds"}},
            "spec": {
                "workloadSelector": {"labels": {"app": "checkout"}},
                "configPatches": [
                    {"applyTo": "NETWORK_FILTER",
                     "match": {"context": "SIDECAR_OUTBOUND", "listener": {"name": "10.96.0.1_6379", "filterChain": {"filter": {"name": "envoy.filters.network.tcp_proxy"}}}},
                     "patch": {"operation": "REPLACE", "value": {"name": "envoy.filters.network.redis_proxy", "typedConfig": {"statPrefix": "x", "settings": {"opTimeout": "5s"}}}}},
                    {"applyTo": "CLUSTER", "match": {"context": "SIDECAR_OUTBOUND"},
                     "patch": {"operation": "ADD", "value": {"name": "redis/shop/orders", "connectTimeout": "1s"}}}
                ]
            }
        });
        let r = to_resource(&filter).unwrap();
        let meta = r.metadata.as_ref().unwrap();
        assert_eq!(meta.name, "shop/redis-xds-abc");
        let body = r.body.unwrap();
        assert_eq!(body.type_url, ENVOY_FILTER_BODY_TYPE);
        let spec = EnvoyFilter::decode(body.value.as_slice()).unwrap();
        assert_eq!(spec.workload_selector.unwrap().labels["app"], "checkout");
        assert_eq!(spec.config_patches.len(), 2);
        let p = &spec.config_patches[0];
        assert_eq!((p.apply_to, p.patch.as_ref().unwrap().operation), (3, 7));
        let m = p.r#match.as_ref().unwrap();
        assert_eq!(m.context, 2);
        assert_eq!(m.listener.as_ref().unwrap().name, "10.96.0.1_6379");
        assert_eq!(
            (
                spec.config_patches[1].apply_to,
                spec.config_patches[1].patch.as_ref().unwrap().operation
            ),
            (8, 2)
        );
        // An unknown operation is not guessed at.
        let mut odd = filter.clone();
        odd["spec"]["configPatches"][0]["patch"]["operation"] = "MERGE".into();
        assert!(to_resource(&odd).is_none());
        // The version follows the content.
        let mut changed = filter.clone();
        changed["spec"]["workloadSelector"]["labels"]["app"] = "other".into();
        assert_ne!(
            to_resource(&changed).unwrap().metadata.unwrap().version,
            meta.version
        );
    }
}
