//! Status in Istio mode: whether each RedisCluster's filter can be expressed, and whether
//! the sidecars it selects hold the patched listener, as istiod's debug endpoints report.
//!
//! Every [`PROBE_INTERVAL`] (and after each new snapshot) redis-xds reads istiod's
//! `/debug/syncz` (its proxies and whether they ACKed what was last sent) and, for each
//! proxy, `/debug/adsz?proxyID=` (its namespace and labels) and
//! `/debug/config_dump?proxyID=` (what istiod gives it). A sidecar is *selected* by a filter when it is in the filter's namespace
//! (any namespace for the root namespace) and carries the filter's workload labels; it is
//! *patched* when its listener for the Service has the redis_proxy filter and it ACKed the
//! listeners istiod sent. The result becomes the `IstioProgrammed` condition.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::istio::{IstioOptions, SOURCES_ANNOTATION};
use crate::model::ObjectKey;
use crate::snapshot::Snapshot;

/// How often istiod is asked.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// What is known about one RedisCluster in Istio mode.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IstioFacts {
    /// Why it cannot be expressed as an EnvoyFilter (field: message).
    pub problem: Option<String>,
    /// The outbound listener its filter patches.
    pub listener: Option<String>,
    /// Sidecars that istiod knows and the filter selects, and of those the ones that hold
    /// the patched listener; `None` when istiod could not be asked.
    pub sidecars: Option<(u32, u32)>,
    /// Why istiod could not be asked.
    pub istiod_error: Option<String>,
}

/// SharedFacts with the status writer.
pub type SharedFacts = Arc<Mutex<BTreeMap<ObjectKey, IstioFacts>>>;

/// One sidecar as istiod reports it.
#[derive(Clone, Debug, Default)]
pub struct Sidecar {
    /// `node.metadata.NAMESPACE`.
    pub namespace: String,
    /// `node.metadata.LABELS`.
    pub labels: BTreeMap<String, String>,
    /// Listeners whose filters include redis_proxy.
    pub redis_listeners: BTreeSet<String>,
    /// It ACKed the listeners istiod last sent.
    pub listeners_acked: bool,
}

/// Reads one proxy from istiod's `/debug/adsz?proxyID=` (`adsz`: its namespace and
/// labels) and `/debug/config_dump?proxyID=` (`dump`).
fn sidecar_from_dump(adsz: &Value, dump: &Value, listeners_acked: bool) -> Sidecar {
    let mut s = Sidecar {
        listeners_acked,
        ..Sidecar::default()
    };
    let client = &adsz["clients"][0];
    s.namespace = client["metadata"]["NAMESPACE"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    s.labels = client["labels"]
        .as_object()
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    // istiod writes the dump in proto JSON's camelCase; Envoy's admin in the protos' names.
    let field = |v: &'_ Value, snake: &str, camel: &str| -> Value {
        v.get(snake)
            .or_else(|| v.get(camel))
            .cloned()
            .unwrap_or(Value::Null)
    };
    for config in dump["configs"].as_array().into_iter().flatten() {
        let listeners = field(config, "dynamic_listeners", "dynamicListeners");
        for l in listeners.as_array().into_iter().flatten() {
            let listener = field(l, "active_state", "activeState")["listener"].clone();
            let redis = field(&listener, "filter_chains", "filterChains")
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| c["filters"].as_array().cloned().unwrap_or_default())
                .any(|f| f["name"] == "envoy.filters.network.redis_proxy");
            if let (true, Some(name)) = (redis, listener["name"].as_str()) {
                s.redis_listeners.insert(name.to_owned());
            }
        }
    }
    s
}

/// The facts of every RedisCluster of the `generated` filters, given the sidecars istiod
/// reported (`Err`: why it could not be asked).
pub fn facts(
    generated: &crate::istio::Generated,
    opts: &IstioOptions,
    sidecars: &Result<Vec<Sidecar>, String>,
) -> BTreeMap<ObjectKey, IstioFacts> {
    let mut out: BTreeMap<ObjectKey, IstioFacts> = BTreeMap::new();
    for p in &generated.problems {
        out.entry(p.object.clone()).or_default().problem =
            Some(format!("{}: {}", p.field, p.message));
    }
    for filter in &generated.filters {
        let namespace = filter["metadata"]["namespace"].as_str().unwrap_or_default();
        let selector: BTreeMap<String, String> = filter["spec"]["workloadSelector"]["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        let listeners: Vec<&str> = filter["spec"]["configPatches"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["match"]["listener"]["name"].as_str())
            .collect();
        let sources = filter["metadata"]["annotations"][SOURCES_ANNOTATION]
            .as_str()
            .unwrap_or_default();
        // The patches are in the order of the sources' listeners.
        for (source, listener) in sources.split(',').zip(&listeners) {
            let Some((ns, name)) = source.split_once('/') else {
                continue;
            };
            let f = out.entry(ObjectKey::new(ns, name)).or_default();
            f.listener = Some((*listener).to_owned());
            match sidecars {
                Err(e) => f.istiod_error = Some(e.clone()),
                Ok(list) => {
                    let (mut selected, mut patched) = f.sidecars.unwrap_or_default();
                    for s in list {
                        let in_namespace =
                            namespace == opts.root_namespace || s.namespace == namespace;
                        if !in_namespace
                            || !selector.iter().all(|(k, v)| s.labels.get(k) == Some(v))
                        {
                            continue;
                        }
                        selected += 1;
                        if s.listeners_acked && s.redis_listeners.contains(*listener) {
                            patched += 1;
                        }
                    }
                    f.sidecars = Some((selected, patched));
                }
            }
        }
    }
    out
}

/// Where istiod's debug endpoints are, and how to authenticate to them.
#[derive(Clone, Debug)]
pub struct Istiod {
    /// `http://HOST:PORT`.
    pub base: String,
    /// The bearer token sent with each request.
    pub token: IstiodToken,
}

/// A ServiceAccount token of audience `istio-ca` for istiod's debug endpoints. istiod
/// serves loopback callers without one; any other caller must present one, and only a
/// token of a ServiceAccount in the mesh's root namespace sees every proxy (a token from
/// another namespace istiod allows, `DEBUG_ENDPOINT_AUTH_ALLOWED_NAMESPACES`, sees only
/// that namespace's proxies).
#[derive(Clone)]
pub enum IstiodToken {
    /// No token (istiod on loopback).
    None,
    /// A file (a projected token), read again for every probe: the kubelet rotates it.
    File(std::path::PathBuf),
    /// Tokens the TokenRequest API gives (`crate::k8s::istiod_token`), kept fresh there.
    Requested(watch::Receiver<Option<String>>),
}

/// Says which kind of token, never the token (a `watch::Receiver` would show its value).
impl std::fmt::Debug for IstiodToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IstiodToken::None => f.write_str("None"),
            IstiodToken::File(path) => f.debug_tuple("File").field(path).finish(),
            IstiodToken::Requested(_) => f.write_str("Requested"),
        }
    }
}

/// One probe's view of istiod: where, and the bearer token for this probe.
struct Probe<'a> {
    client: &'a HttpClient,
    base: &'a str,
    token: Option<String>,
}

async fn get(p: &Probe<'_>, path: &str) -> Result<Value, String> {
    use http_body_util::BodyExt;
    let base = p.base;
    let uri: http::Uri = format!("{base}{path}")
        .parse()
        .map_err(|e| format!("{base}{path}: {e}"))?;
    let mut request = http::Request::get(uri);
    if let Some(token) = &p.token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(http_body_util::Empty::new())
        .map_err(|e| format!("{base}{path}: {e}"))?;
    let answer = tokio::time::timeout(Duration::from_secs(10), p.client.request(request))
        .await
        .map_err(|_| format!("istiod at {base} did not answer {path} within 10s"))?
        .map_err(|e| format!("istiod at {base}: {e}"))?;
    let status = answer.status();
    let body = answer
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("istiod at {base}: {e}"))?
        .to_bytes();
    match status {
        http::StatusCode::UNAUTHORIZED => {
            return Err(format!(
                "istiod at {base} answered {path} with {status}: it serves its debug endpoints only to loopback callers or to a ServiceAccount token of audience istio-ca; {}",
                match p.token {
                    Some(_) => "istiod did not accept the token",
                    None => "set --istiod-debug-service-account (deploy/istio does)",
                }
            ));
        }
        http::StatusCode::FORBIDDEN => {
            return Err(format!(
                "istiod at {base} answered {path} with {status}: it accepted the token but serves every proxy's debug endpoints only to a ServiceAccount of the mesh's root namespace; use --istiod-debug-service-account with one there (docs/istio.md)"
            ));
        }
        s if !s.is_success() => {
            return Err(format!("istiod at {base} answered {path} with {status}"));
        }
        _ => {}
    }
    serde_json::from_slice(&body).map_err(|e| format!("istiod at {base}, {path}: {e}"))
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<bytes::Bytes>,
>;

/// The sidecars istiod serves, with what it gives each.
async fn sidecars(client: &HttpClient, istiod: &Istiod) -> Result<Vec<Sidecar>, String> {
    let token = match &istiod.token {
        IstiodToken::None => None,
        // Never the token itself in an error: only the file and why it cannot be read.
        IstiodToken::File(path) => Some(
            tokio::fs::read_to_string(path)
                .await
                .map_err(|e| format!("cannot read --istiod-token-file {}: {e}", path.display()))?
                .trim()
                .to_owned(),
        ),
        IstiodToken::Requested(tokens) => Some(tokens.borrow().clone().ok_or_else(|| {
            "no token for istiod's debug endpoints yet (TokenRequest for --istiod-debug-service-account has not answered; redis-xds's log says why)".to_string()
        })?),
    };
    let probe = Probe {
        client,
        base: &istiod.base,
        token,
    };
    let syncz = get(&probe, "/debug/syncz").await?;
    let mut out = Vec::new();
    for p in syncz.as_array().into_iter().flatten() {
        let Some(id) = p["proxy"].as_str() else {
            continue;
        };
        let acked = p["listener_sent"] == p["listener_acked"];
        let adsz = get(&probe, &format!("/debug/adsz?proxyID={id}")).await?;
        let dump = get(&probe, &format!("/debug/config_dump?proxyID={id}")).await?;
        out.push(sidecar_from_dump(&adsz, &dump, acked));
    }
    Ok(out)
}

/// Keeps `shared` current until `shutdown`. Without `istiod` only what needs no istiod is
/// known.
pub async fn run(
    istiod: Option<Istiod>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    opts: IstioOptions,
    shared: SharedFacts,
    shutdown: CancellationToken,
) {
    let client: HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    // The filters of the snapshot last seen: generated again only when it changes, not on
    // every probe.
    let mut generated: Option<(Arc<Snapshot>, crate::istio::Generated)> = None;
    loop {
        let snapshot = Arc::clone(&snapshots.borrow_and_update());
        if snapshot.ready {
            if !generated
                .as_ref()
                .is_some_and(|(s, _)| Arc::ptr_eq(s, &snapshot))
            {
                let g = crate::istio::envoy_filters(&snapshot.model, &snapshot.compiled, &opts);
                generated = Some((Arc::clone(&snapshot), g));
            }
            let found = match &istiod {
                Some(istiod) => sidecars(&client, istiod).await,
                None => {
                    Err("istiod's debug endpoints are not configured (--istiod-debug-addr)".into())
                }
            };
            let Some((_, g)) = &generated else { continue };
            let facts = facts(g, &opts, &found);
            *shared.lock().unwrap_or_else(|e| e.into_inner()) = facts;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = snapshots.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(PROBE_INTERVAL) => {}
        }
    }
}

/// The `IstioProgrammed` condition's (status, reason, message) for one object.
pub fn condition(f: &IstioFacts) -> (bool, &'static str, String) {
    if let Some(p) = &f.problem {
        return (false, "NotExpressible", p.clone());
    }
    let Some(listener) = &f.listener else {
        return (
            false,
            "NoListener",
            "it has no listener for Istio to patch".into(),
        );
    };
    match (f.sidecars, &f.istiod_error) {
        (Some((0, _)), _) => (
            true,
            "NoSidecars",
            format!("no sidecar that istiod serves is selected yet (listener {listener})"),
        ),
        (Some((selected, patched)), _) if patched == selected => (
            true,
            "Programmed",
            format!("{patched} of {selected} sidecars hold redis_proxy on {listener}"),
        ),
        (Some((selected, patched)), _) => (
            false,
            "Pending",
            format!("{patched} of {selected} sidecars hold redis_proxy on {listener}"),
        ),
        (None, e) => (
            false,
            "Unknown",
            e.clone()
                .unwrap_or_else(|| "istiod was not asked yet".into()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_read_a_sidecar_from_istiods_config_dump() {
        let adsz = serde_json::json!({"totalClients": 1, "clients": [
            {"connectionId": "checkout-0.shop-1", "labels": {"app": "checkout"}, "metadata": {"NAMESPACE": "shop"}}
        ]});
        let dump = serde_json::json!({"configs": [
            {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
             "dynamicListeners": [
                {"name": "10.96.0.9_6379", "activeState": {"listener": {"name": "10.96.0.9_6379",
                    "filterChains": [{"filters": [{"name": "envoy.filters.network.redis_proxy"}]}]}}},
                {"name": "10.96.0.8_80", "active_state": {"listener": {"name": "10.96.0.8_80",
                    "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy"}]}]}}}
             ]}
        ]});
        let s = sidecar_from_dump(&adsz, &dump, true);
        assert_eq!(s.namespace, "shop");
        assert_eq!(s.labels["app"], "checkout");
        assert_eq!(
            s.redis_listeners.iter().collect::<Vec<_>>(),
            ["10.96.0.9_6379"]
        );
    }

    #[test]
    fn conditions_say_what_istio_mode_knows() {
        let mut f = IstioFacts {
            listener: Some("10.96.0.9_6379".into()),
            sidecars: Some((2, 1)),
            ..IstioFacts::default()
        };
        assert_eq!(condition(&f).1, "Pending");
        f.sidecars = Some((2, 2));
        assert_eq!(
            condition(&f),
            (
                true,
                "Programmed",
                "2 of 2 sidecars hold redis_proxy on 10.96.0.9_6379".into()
            )
        );
        f.sidecars = None;
        f.istiod_error = Some("istiod at http://x: connection refused".into());
        assert_eq!(condition(&f).1, "Unknown");
        f.problem = Some("spec.endpoints: needs a Service".into());
        assert_eq!(condition(&f).1, "NotExpressible");
    }
}
