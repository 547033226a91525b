//! The debug HTTP server: read-only views for operators.
//!
//! | path | what |
//! |---|---|
//! | `/` | an HTML overview of the rest for a person ([`overview`]) |
//! | `/debug/config_dump?proxy=ID` | what that proxy was sent, in Envoy's config_dump layout |
//! | `/debug/syncz` | every connected proxy, per type: versions and SYNCED/STALE/NACKED/NOT_SENT |
//! | `/debug/model` | every input object with its source, and every problem |
//! | `/healthz`, `/readyz` | liveness; readiness (the source finished its initial read) |
//! | `/metrics` | Prometheus (OpenMetrics) text |
//!
//! AUTH passwords never leave this server: resources go through [`protojson::redact`], and
//! NACK messages were redacted when they arrived.

mod overview;
pub mod remote;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use envoy_types::pb::envoy::admin::v3 as admin;
use envoy_types::pb::google::protobuf::Any;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::compile::any;
use crate::k8s::debug_access::DebugAccess;
use crate::metrics::Metrics;
use crate::protojson;
use crate::snapshot::Snapshot;
use crate::source::directory::DirState;
use crate::xds::tracker::Rejected;
use crate::xds::{ProxyStatus, Registry, ResourceType, TypeStatus};

/// What the debug server reads.
#[derive(Clone, Debug)]
pub struct DebugState {
    /// Connected proxies.
    pub registry: Arc<Registry>,
    /// The latest snapshot.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// The manifests directory, when that is the source.
    pub dir: Option<watch::Receiver<Arc<DirState>>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// True once the source finished its initial read.
    pub ready: watch::Receiver<bool>,
    /// Who may read `/debug/*`; `None`: anyone who reaches the port (without Kubernetes).
    pub access: Option<Arc<DebugAccess>>,
    /// Why the server is stopping, once one of its tasks failed (`crate::app::supervisor`);
    /// `/healthz` and `/readyz` then answer 503 with it.
    pub failed: watch::Receiver<Option<String>>,
}

/// The router. `/healthz`, `/readyz` and `/metrics` stay open (probes and Prometheus);
/// `/` and `/debug/*` go through [`DebugState::access`]. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()`: the check needs the peer.
pub fn router(state: DebugState) -> Router {
    let debug = Router::new()
        .route("/", get(overview))
        .route("/debug/config_dump", get(config_dump))
        .route("/debug/syncz", get(syncz))
        .route("/debug/model", get(model))
        .route_layer(axum::middleware::from_fn_with_state(
            state.access.clone(),
            allowed,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(debug)
        .with_state(state)
}

async fn allowed(
    State(access): State<Option<Arc<DebugAccess>>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(access) = access else {
        return next.run(request).await;
    };
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let Some(peer) = peer else {
        return (StatusCode::FORBIDDEN, "the caller's address is unknown\n").into_response();
    };
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match access.check(peer, authorization).await {
        Ok(()) => next.run(request).await,
        Err((status, why)) => {
            tracing::info!(%peer, path = %request.uri().path(), status = status.as_u16(), "debug request refused");
            let mut response = (status, why).into_response();
            if status == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
            }
            response
        }
    }
}

async fn healthz(State(s): State<DebugState>) -> Response {
    match s.failed.borrow().clone() {
        Some(failure) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("stopping: {failure}\n"),
        )
            .into_response(),
        None => (StatusCode::OK, "ok\n").into_response(),
    }
}

async fn readyz(State(s): State<DebugState>) -> Response {
    if let Some(failure) = s.failed.borrow().clone() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("stopping: {failure}\n"),
        )
            .into_response();
    }
    if *s.ready.borrow() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let mut text = String::from("not ready: the source has not finished its initial read\n");
        // What keeps the source from it, when it knows (a missing CRD, for one).
        if let Some(dir) = &s.dir {
            for p in dir.borrow().problems.iter().filter(|p| p.object.is_none()) {
                text.push_str(&p.message);
                text.push('\n');
            }
        }
        (StatusCode::SERVICE_UNAVAILABLE, text).into_response()
    }
}

/// The state a proxy counts in on `redis_xds_proxies`: `nacked` if any type is,
/// `synced` if every type it asked for is, `not_sent` if nothing was sent yet, else
/// `stale`.
fn proxy_state(p: &ProxyStatus) -> crate::xds::tracker::SyncState {
    use crate::xds::tracker::SyncState;
    let states: Vec<SyncState> = p.types.values().map(TypeStatus::sync_state).collect();
    if states.contains(&SyncState::Nacked) {
        SyncState::Nacked
    } else if states.is_empty() || states.iter().all(|s| *s == SyncState::NotSent) {
        SyncState::NotSent
    } else if states.iter().all(|s| *s == SyncState::Synced) {
        SyncState::Synced
    } else {
        SyncState::Stale
    }
}

async fn metrics(State(s): State<DebugState>) -> Response {
    use crate::xds::tracker::SyncState;
    let mut counts = [0i64; 4];
    let order = [
        SyncState::Synced,
        SyncState::Stale,
        SyncState::Nacked,
        SyncState::NotSent,
    ];
    // One scrape at a time sets the gauges and encodes them: another scrape's clear and
    // refill must not show in this one's text.
    let _scrape = s.metrics.scrape.lock().unwrap_or_else(|e| e.into_inner());
    let proxies = s.registry.list();
    for p in &proxies {
        let state = proxy_state(p);
        if let Some(i) = order.iter().position(|o| *o == state) {
            counts[i] += 1;
        }
    }
    for (state, n) in order.iter().zip(counts) {
        let label = match state {
            SyncState::Synced => "synced",
            SyncState::Stale => "stale",
            SyncState::Nacked => "nacked",
            SyncState::NotSent => "not_sent",
        };
        s.metrics.proxies.get_or_create(&[("state", label)]).set(n);
    }
    // Per RedisCluster, as its status counts them (from this replica's proxies); every
    // RedisCluster of the model, at 0 without proxies, and none that is gone.
    let snapshot = Arc::clone(&s.snapshots.borrow());
    let facts = crate::k8s::fleet::proxy_facts(&snapshot, &proxies);
    let per_object = &s.metrics.rediscluster_proxies;
    per_object.clear();
    for key in snapshot.model.redis_clusters.keys() {
        let counts = facts.get(key).map(|f| f.counts.clone()).unwrap_or_default();
        for (state, n) in [
            ("connected", counts.connected),
            ("synced", counts.synced),
            ("rejected", counts.rejected),
        ] {
            per_object
                .get_or_create(&[
                    ("rediscluster", format!("{}/{}", key.namespace, key.name)),
                    ("state", state.to_owned()),
                ])
                .set(i64::from(n));
        }
    }
    let serving = *s.ready.borrow() && s.failed.borrow().is_none();
    s.metrics.ready.set(i64::from(serving));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

fn time(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn proxy_json(p: &ProxyStatus) -> Value {
    let types: serde_json::Map<String, Value> = p
        .types
        .iter()
        .map(|(kind, t)| {
            (
                kind.short().to_owned(),
                json!({
                    "state": t.sync_state().as_str(),
                    "desired_version": t.desired_version.as_deref(),
                    "sent_version": t.sent_version.as_deref(),
                    "acked_version": t.acked_version.as_deref(),
                    "nonce": t.nonce.as_deref(),
                    "resources": t.sent.len(),
                    "last_nack": t.nack.as_ref().map(|n| json!({"version": n.version, "message": n.message, "at": time(n.at)})),
                    "rejected": t.rejected.iter().flat_map(|m| m.iter()).map(|(name, r)| json!({"name": name, "version": r.resource.version, "message": r.nack.message, "at": time(r.nack.at)})).collect::<Vec<_>>(),
                }),
            )
        })
        .collect();
    json!({
        "proxy": p.node_id,
        "stream": p.stream,
        "namespace": p.identity.namespace,
        "labels": p.identity.labels,
        "variant": p.variant.as_str(),
        "connected_at": time(p.connected_at),
        "types": types,
    })
}

async fn syncz(State(s): State<DebugState>) -> Json<Value> {
    let proxies: Vec<Value> = s.registry.list().iter().map(proxy_json).collect();
    Json(json!({ "proxies": proxies }))
}

/// One resource of a proxy's config dump: the version it holds, and the version it
/// refused, if any.
struct Entry<'a> {
    name: &'a str,
    held: Option<&'a Arc<crate::xds::Resource>>,
    rejected: Option<&'a Rejected>,
}

/// The resources a proxy holds (leaving out those it only declared holding) and those it
/// refused, by name.
fn entries(t: Option<&TypeStatus>) -> Vec<Entry<'_>> {
    let mut out: std::collections::BTreeMap<&str, Entry<'_>> = Default::default();
    for t in t.into_iter() {
        for (name, r) in t.sent.iter().filter(|(_, r)| !r.declared) {
            out.insert(
                name,
                Entry {
                    name,
                    held: Some(r),
                    rejected: None,
                },
            );
        }
        for (name, r) in t.rejected.iter().flat_map(|m| m.iter()) {
            out.entry(name)
                .or_insert(Entry {
                    name,
                    held: None,
                    rejected: None,
                })
                .rejected = Some(r);
        }
    }
    out.into_values().collect()
}

fn packed(type_url: &str, r: &crate::xds::Resource) -> Option<Any> {
    Some(Any {
        type_url: type_url.to_owned(),
        value: r.body.to_vec(),
    })
}

/// Envoy's `UpdateFailureState` of a refused resource: the configuration refused, when,
/// and Envoy's message.
fn error_state(kind: ResourceType, r: Option<&Rejected>) -> Option<admin::UpdateFailureState> {
    let r = r?;
    let at = r
        .nack
        .at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Some(admin::UpdateFailureState {
        failed_configuration: packed(kind.type_url(), &r.resource),
        last_update_attempt: Some(envoy_types::pb::google::protobuf::Timestamp {
            seconds: i64::try_from(at.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(at.subsec_nanos()).unwrap_or_default(),
        }),
        details: r.nack.message.clone(),
        version_info: r.resource.version.clone(),
    })
}

/// Envoy's config_dump of what the proxy holds: what it was sent, less what it refused.
/// A refused resource carries `error_state`, as in Envoy's own dump, next to the version
/// the proxy kept, if any.
fn config_dump_json(p: &ProxyStatus) -> Result<Value, protojson::Error> {
    let cds = p.types.get(&ResourceType::Cluster);
    let eds = p.types.get(&ResourceType::Endpoint);
    let lds = p.types.get(&ResourceType::Listener);
    let clusters = admin::ClustersConfigDump {
        version_info: cds
            .and_then(|t| t.sent_version.as_deref())
            .unwrap_or_default()
            .to_owned(),
        dynamic_active_clusters: entries(cds)
            .into_iter()
            .map(|e| admin::clusters_config_dump::DynamicCluster {
                version_info: e.held.map(|r| r.version.clone()).unwrap_or_default(),
                cluster: e
                    .held
                    .and_then(|r| packed(ResourceType::Cluster.type_url(), r)),
                error_state: error_state(ResourceType::Cluster, e.rejected),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let endpoints = admin::EndpointsConfigDump {
        dynamic_endpoint_configs: entries(eds)
            .into_iter()
            .map(|e| admin::endpoints_config_dump::DynamicEndpointConfig {
                version_info: e.held.map(|r| r.version.clone()).unwrap_or_default(),
                endpoint_config: e
                    .held
                    .and_then(|r| packed(ResourceType::Endpoint.type_url(), r)),
                error_state: error_state(ResourceType::Endpoint, e.rejected),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let listeners = admin::ListenersConfigDump {
        version_info: lds
            .and_then(|t| t.sent_version.as_deref())
            .unwrap_or_default()
            .to_owned(),
        dynamic_listeners: entries(lds)
            .into_iter()
            .map(|e| admin::listeners_config_dump::DynamicListener {
                name: e.name.to_owned(),
                active_state: e
                    .held
                    .map(|r| admin::listeners_config_dump::DynamicListenerState {
                        version_info: r.version.clone(),
                        listener: packed(ResourceType::Listener.type_url(), r),
                        ..Default::default()
                    }),
                error_state: error_state(ResourceType::Listener, e.rejected),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let dump = admin::ConfigDump {
        configs: vec![any(&clusters), any(&endpoints), any(&listeners)],
    };
    let mut json = protojson::to_json(&dump)?;
    protojson::redact(&mut json);
    Ok(json)
}

async fn config_dump(
    State(s): State<DebugState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(id) = q.get("proxy") else {
        return (
            StatusCode::BAD_REQUEST,
            "name the proxy: /debug/config_dump?proxy=NODE_ID (see /debug/syncz)\n",
        )
            .into_response();
    };
    let latest = s
        .registry
        .list()
        .into_iter()
        .filter(|p| &p.node_id == id)
        .max_by_key(|p| p.stream);
    let Some(p) = latest else {
        return (
            StatusCode::NOT_FOUND,
            format!(
                "no connected proxy with node id {id:?}; /debug/syncz lists the connected ones\n"
            ),
        )
            .into_response();
    };
    match config_dump_json(&p) {
        Ok(v) => Json(v).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// Every input object with its source, and every problem.
fn model_json(snapshot: &Snapshot, dir: Option<&DirState>) -> Value {
    let m = &snapshot.model;
    let c = &snapshot.compiled;
    let objects: Vec<Value> = m
        .redis_clusters
        .values()
        .map(|o| {
            let outcome = c.objects.get(&o.key);
            json!({
                "kind": "RedisCluster",
                "name": o.key.to_string(),
                "source": o.origin.to_string(),
                "generation": o.generation,
                "accepted": outcome.is_some_and(|x| x.accepted),
                "endpoints": outcome.map_or(0, |x| x.endpoints),
                "problems": c.problems.iter().filter(|p| p.object == o.key).map(ToString::to_string).collect::<Vec<_>>(),
            })
        })
        .collect();
    let secrets: Vec<Value> = m
        .secrets
        .values()
        .map(|s| json!({"name": s.key.to_string(), "keys": s.data.keys().collect::<Vec<_>>()}))
        .collect();
    let pods: Vec<Value> = m
        .pods
        .values()
        .map(|p| json!({"name": p.key.to_string(), "ip": p.ip, "ready": p.ready, "labels": &*p.labels}))
        .collect();
    let slices: Vec<Value> = m
        .endpoint_slices
        .values()
        .map(|s| json!({"name": s.key.to_string(), "service": s.service, "endpoints": s.endpoints.len()}))
        .collect();
    let mut problems: Vec<Value> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    if let Some(d) = dir {
        problems.extend(d.problems.iter().map(|p| {
            json!({"stage": "load", "file": p.file, "line": p.line, "object": p.object, "message": p.message, "text": p.to_string()})
        }));
        notes.extend(d.notes.iter().cloned());
    }
    problems.extend(c.problems.iter().map(|p| {
        json!({"stage": "compile", "object": p.object.to_string(), "field": p.field, "reason": p.reason.as_str(), "message": p.message, "text": p.to_string()})
    }));
    json!({
        "redis_clusters": objects,
        "secrets": secrets,
        "pods": pods,
        "endpoint_slices": slices,
        "problems": problems,
        "notes": notes,
    })
}

async fn overview(State(s): State<DebugState>) -> axum::response::Html<String> {
    let snapshot = Arc::clone(&s.snapshots.borrow());
    let dir = s.dir.as_ref().map(|d| Arc::clone(&d.borrow()));
    let proxies = s.registry.list();
    let failed = s.failed.borrow().clone();
    let serving = match (&failed, *s.ready.borrow()) {
        (Some(why), _) => overview::Serving::Failed(why),
        (None, true) => overview::Serving::Ready,
        (None, false) => overview::Serving::Starting,
    };
    axum::response::Html(overview::page(&snapshot, dir.as_deref(), &proxies, serving).into_string())
}

async fn model(State(s): State<DebugState>) -> Json<Value> {
    let snapshot = Arc::clone(&s.snapshots.borrow());
    let dir = s.dir.as_ref().map(|d| Arc::clone(&d.borrow()));
    Json(model_json(&snapshot, dir.as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(
        sent: Option<&str>,
        acked: Option<&str>,
        desired: &str,
        pending: bool,
        nack: bool,
    ) -> TypeStatus {
        TypeStatus {
            desired_version: Some(desired.into()),
            sent_version: sent.map(Into::into),
            acked_version: acked.map(Into::into),
            pending,
            nack: nack.then(|| {
                std::sync::Arc::new(crate::xds::tracker::Nack {
                    version: "v2".into(),
                    message: "bad".into(),
                    at: SystemTime::UNIX_EPOCH,
                })
            }),
            ..Default::default()
        }
    }

    #[test]
    fn should_classify_sync_states() {
        use crate::xds::tracker::SyncState;
        let state = |sent, acked, desired, pending, nack| {
            status(sent, acked, desired, pending, nack).sync_state()
        };
        assert_eq!(state(None, None, "v1", false, false), SyncState::NotSent);
        assert_eq!(
            state(Some("v1"), Some("v1"), "v1", false, false),
            SyncState::Synced
        );
        assert_eq!(
            state(Some("v2"), Some("v1"), "v2", true, false),
            SyncState::Stale
        );
        assert_eq!(
            state(Some("v1"), Some("v1"), "v2", false, false),
            SyncState::Stale
        );
        assert_eq!(
            state(Some("v2"), Some("v1"), "v2", false, true),
            SyncState::Nacked
        );
        assert_eq!(SyncState::NotSent.as_str(), "NOT_SENT");
        assert_eq!(SyncState::Synced.as_str(), "SYNCED");
    }
}
