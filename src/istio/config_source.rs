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
//! The messages are declared here with prost from their field numbers in istio.io/api
//! (`mcp/v1alpha1`, `networking/v1alpha3/envoy_filter.proto`), for the fields redis-xds
//! writes only.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf as pb;
use prost::Message;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// The type URL istiod asks EnvoyFilters by.
pub const ENVOY_FILTER_TYPE: &str = "networking.istio.io/v1alpha3/EnvoyFilter";
/// Type URL of each resource in a response.
pub const MCP_RESOURCE_TYPE: &str = "type.googleapis.com/istio.mcp.v1alpha1.Resource";
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
pub fn to_resource(filter: &Value) -> Option<McpResource> {
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

/// The EnvoyFilters as served: encoded resources and a version for the whole set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FilterSet {
    /// `DiscoveryResponse.version_info`.
    pub version: String,
    /// The resources.
    pub resources: Vec<pb::Any>,
}

/// Builds the set from generated filters.
pub fn filter_set(filters: &[Value]) -> FilterSet {
    let resources: Vec<pb::Any> = filters
        .iter()
        .filter_map(|f| {
            let r = to_resource(f);
            if r.is_none() {
                tracing::error!(filter = %f["metadata"]["name"], "an EnvoyFilter of a shape the config source cannot encode; left out");
            }
            r
        })
        .map(|r| pb::Any {
            type_url: MCP_RESOURCE_TYPE.into(),
            value: r.encode_to_vec(),
        })
        .collect();
    let version = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for r in &resources {
            h.update(&r.value);
        }
        let digest = h.finalize();
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    };
    FilterSet { version, resources }
}

/// Keeps `tx` at the filter set of the latest ready snapshot until `shutdown`.
pub async fn follow_snapshots(
    mut snapshots: watch::Receiver<Arc<crate::snapshot::Snapshot>>,
    opts: crate::istio::IstioOptions,
    tx: watch::Sender<Option<Arc<FilterSet>>>,
    shutdown: CancellationToken,
) {
    let mut reported: Vec<String> = Vec::new();
    loop {
        let snapshot = Arc::clone(&snapshots.borrow_and_update());
        if snapshot.ready {
            let generated = crate::istio::envoy_filters(&snapshot.model, &snapshot.compiled, &opts);
            crate::istio::log_new_problems(&generated, &mut reported);
            let set = filter_set(&generated.filters);
            tx.send_if_modified(|current| {
                if current.as_deref() == Some(&set) {
                    return false;
                }
                *current = Some(Arc::new(set));
                true
            });
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = snapshots.changed() => if changed.is_err() { return },
        }
    }
}

/// The config source's gRPC service.
#[derive(Clone)]
pub struct ConfigSource {
    filters: watch::Receiver<Option<Arc<FilterSet>>>,
    shutdown: CancellationToken,
}

impl ConfigSource {
    /// Serves what `filters` holds (nothing until it holds a set: istiod waits).
    pub fn new(
        filters: watch::Receiver<Option<Arc<FilterSet>>>,
        shutdown: CancellationToken,
    ) -> AggregatedDiscoveryServiceServer<ConfigSource> {
        AggregatedDiscoveryServiceServer::new(ConfigSource { filters, shutdown })
    }
}

type Out<T> = Pin<Box<dyn futures_util::Stream<Item = Result<T, Status>> + Send>>;

fn response(
    type_url: &str,
    version: &str,
    resources: Vec<pb::Any>,
    nonce: u64,
) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.to_owned(),
        resources,
        type_url: type_url.to_owned(),
        nonce: nonce.to_string(),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for ConfigSource {
    type StreamAggregatedResourcesStream = Out<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Out<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let peer = request.remote_addr();
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel::<Result<DiscoveryResponse, Status>>(16);
        let mut filters = self.filters.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut nonce = 0u64;
            // Types the client asked for, and the EnvoyFilter version it was last sent.
            let mut subscribed: BTreeSet<String> = BTreeSet::new();
            let mut sent_filters: Option<String> = None;
            tracing::info!(?peer, "istiod connected to the config source");
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    message = incoming.message() => {
                        let req = match message {
                            Ok(Some(req)) => req,
                            Ok(None) => return,
                            Err(e) => {
                                tracing::debug!(error = %e, "config source stream ended");
                                return;
                            }
                        };
                        if let Some(detail) = req.error_detail.as_ref() {
                            tracing::warn!(type_url = %req.type_url, message = %detail.message, "istiod rejected config");
                        }
                        let first = subscribed.insert(req.type_url.clone());
                        if req.type_url == ENVOY_FILTER_TYPE {
                            let set = filters.borrow_and_update().clone();
                            let Some(set) = set else { continue };
                            if first || req.version_info != set.version && req.response_nonce.is_empty() {
                                nonce += 1;
                                sent_filters = Some(set.version.clone());
                                if tx.send(Ok(response(ENVOY_FILTER_TYPE, &set.version, set.resources.clone(), nonce))).await.is_err() {
                                    return;
                                }
                            }
                        } else if first {
                            // Every other Istio type: answered, and empty.
                            nonce += 1;
                            if tx.send(Ok(response(&req.type_url, "empty", Vec::new(), nonce))).await.is_err() {
                                return;
                            }
                        }
                    }
                    changed = filters.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let set = filters.borrow_and_update().clone();
                        let Some(set) = set else { continue };
                        if subscribed.contains(ENVOY_FILTER_TYPE) && sent_filters.as_deref() != Some(set.version.as_str()) {
                            nonce += 1;
                            sent_filters = Some(set.version.clone());
                            if tx.send(Ok(response(ENVOY_FILTER_TYPE, &set.version, set.resources.clone(), nonce))).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn delta_aggregated_resources(
        &self,
        _: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "the Istio config source speaks State of the World, as istiod's xds:// client does",
        ))
    }
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
