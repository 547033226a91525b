//! Watchers: one kube-runtime watcher per kind, feeding the [`Index`].
//!
//! RedisClusters are read as dynamic objects and converted one by one, so a single object
//! that does not deserialize is reported and left out instead of failing the whole list.
//! Watch errors are retried with [`WatchBackoff`] (at most a second apart); meanwhile the
//! index, and so the proxies, keep the last known state.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, CustomResourceExt, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch as channel;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use super::index::{Index, Kind, Object};
use crate::api::RedisCluster;
use crate::metrics::Metrics;
use crate::model::ObjectKey;
use crate::source::directory::DirState;
use crate::source::manifests::LoadProblem;

/// Watchers by the watchers.
#[derive(Clone, Debug)]
pub struct Watchers {
    /// The index.
    pub index: Arc<Mutex<Index>>,
    /// RedisClusters that could not be read, by `namespace/name`.
    pub problems: Arc<Mutex<BTreeMap<ObjectKey, Undecodable>>>,
    /// Publishes those problems for `/debug/model` and `/readyz`.
    pub state: channel::Sender<Arc<DirState>>,
    /// Set while listing RedisClusters answers 404: the CRD is not installed.
    pub crd_missing: Arc<std::sync::atomic::AtomicBool>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

impl Watchers {
    fn with_index<R>(&self, f: impl FnOnce(&mut Index) -> R) -> R {
        let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut index)
    }

    fn publish_problems(&self) {
        let problems = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        let missing = self
            .crd_missing
            .load(std::sync::atomic::Ordering::SeqCst)
            .then(|| LoadProblem {
                file: "kubernetes".into(),
                line: None,
                object: None,
                message: CRD_MISSING.into(),
            });
        let list = missing
            .into_iter()
            .chain(problems.iter().map(|(object, u)| LoadProblem {
                file: "kubernetes".into(),
                line: None,
                object: Some(format!("RedisCluster {object}")),
                message: u.message.clone(),
            }))
            .collect();
        self.state.send_replace(Arc::new(DirState {
            problems: list,
            ..Default::default()
        }));
    }

    /// Notes whether the RedisCluster CRD is missing; says so once when that changes.
    fn set_crd_missing(&self, missing: bool) {
        let was = self
            .crd_missing
            .swap(missing, std::sync::atomic::Ordering::SeqCst);
        if was != missing {
            if missing {
                tracing::error!("{CRD_MISSING}");
            } else {
                info!("the RedisCluster CRD is installed");
            }
            self.publish_problems();
        }
    }
}

/// A RedisCluster the API server stored but redis-xds cannot read: left out, and reported
/// on its status (`Accepted=False`) by the status writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Undecodable {
    /// `field.path: what is wrong`.
    pub message: String,
    /// `metadata.generation` of the object as read.
    pub generation: Option<i64>,
}

/// What `serve` says while the API server does not know RedisClusters.
pub const CRD_MISSING: &str = "the RedisCluster CRD (redisclusters.redis-xds.dev, v1alpha1) is not installed: install it with `kubectl apply -f crds/redisclusters.yaml` (or `redis-xds crd | kubectl apply -f -`); until then no proxy is served";

/// The delays between a watcher's retries: 100 ms, doubling to at most 1 s, each with up to
/// 20% added at random so that replicas do not retry in step.
///
/// kube-runtime's default grows to 30 s: after the API server had been down for 20 s, the
/// watchers took another 16-30 s to list again once it was back, and a change made then
/// reached the proxies that late. A retry costs the API server one LIST per kind; one a
/// second per replica while it is unavailable is nothing to it, and it answers 429 (which
/// is retried the same way) when it wants fewer.
#[derive(Debug, Clone, Copy)]
pub struct WatchBackoff {
    next: std::time::Duration,
}

impl WatchBackoff {
    /// The first delay.
    pub const FIRST: std::time::Duration = std::time::Duration::from_millis(100);
    /// The longest delay, before jitter.
    pub const MAX: std::time::Duration = std::time::Duration::from_secs(1);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = std::time::Duration;

    fn next(&mut self) -> Option<std::time::Duration> {
        use std::hash::{BuildHasher, Hasher};
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        // A random fraction from the standard library's per-instance hash keys.
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let jitter = delay.mul_f64((random % 1000) as f64 / 5000.0);
        Some(delay + jitter)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// The client error behind a failed list or watch request, if that is what failed.
fn request_error(e: &watcher::Error) -> Option<&kube::Error> {
    match e {
        watcher::Error::InitialListFailed(k)
        | watcher::Error::WatchStartFailed(k)
        | watcher::Error::WatchFailed(k) => Some(k),
        _ => None,
    }
}

/// Whether a watch error means the API server could not be reached at all (no answer, as
/// opposed to an error status).
fn unreachable(e: &watcher::Error) -> bool {
    request_error(e).is_some_and(|k| !matches!(k, kube::Error::Api(_)))
}

/// Whether a watch error says that the resource does not exist on the API server (404).
fn not_found(e: &watcher::Error) -> bool {
    matches!(request_error(e), Some(kube::Error::Api(s)) if s.code == 404)
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Converts a RedisCluster read as a dynamic object, recording a problem when it does not
/// deserialize.
fn redis_cluster(shared: &Watchers, obj: DynamicObject) -> Option<Object> {
    let name = ObjectKey::new(
        obj.metadata.namespace.as_deref().unwrap_or_default(),
        obj.metadata.name.as_deref().unwrap_or_default(),
    );
    let value = match serde_json::to_value(&obj) {
        Ok(v) => v,
        Err(e) => {
            warn!(object = %name, error = %e, "cannot re-encode RedisCluster");
            return None;
        }
    };
    let result: Result<RedisCluster, _> = serde_path_to_error::deserialize(value);
    let mut problems = shared.problems.lock().unwrap_or_else(|e| e.into_inner());
    let changed = match result {
        Ok(rc) => {
            let changed = problems.remove(&name).is_some();
            drop(problems);
            if changed {
                shared.publish_problems();
            }
            return Some(Object::RedisCluster(Box::new(rc)));
        }
        Err(e) => {
            let message = format!("{}: {}", e.path(), e.inner());
            warn!(object = %name, problem = %message, "RedisCluster left out");
            let entry = Undecodable {
                message,
                generation: obj.metadata.generation,
            };
            problems.insert(name, entry.clone()).as_ref() != Some(&entry)
        }
    };
    drop(problems);
    if changed {
        shared.publish_problems();
    }
    None
}

async fn follow<K, F>(
    api: Api<K>,
    kind: Kind,
    config: watcher::Config,
    shared: Watchers,
    convert: F,
    shutdown: CancellationToken,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    F: Fn(&Watchers, K) -> Option<Object>,
{
    let start =
        || Box::pin(watcher::watcher(api.clone(), config.clone()).backoff(WatchBackoff::default()));
    let mut stream = start();
    // Delays between fresh starts while the API server cannot be reached.
    let mut outage = WatchBackoff::default();
    let mut buffer: Vec<Object> = Vec::new();
    let events = shared
        .metrics
        .source_events
        .get_or_create(&[("source", "kubernetes")])
        .clone();
    let errors = shared
        .metrics
        .watch_errors
        .get_or_create(&[("kind", kind.as_str())])
        .clone();
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            e = stream.next() => e,
        };
        let Some(event) = event else { return };
        events.inc();
        match event {
            Ok(Event::Init) => buffer.clear(),
            Ok(Event::InitApply(obj)) => buffer.extend(convert(&shared, obj)),
            Ok(Event::InitDone) => {
                let objects = std::mem::take(&mut buffer);
                info!(objects = objects.len(), "listed");
                kube::runtime::utils::Backoff::reset(&mut outage);
                if kind == Kind::RedisCluster {
                    shared.set_crd_missing(false);
                }
                shared.with_index(|i| i.reset(kind, objects));
            }
            Ok(Event::Apply(obj)) => {
                if let Some(o) = convert(&shared, obj) {
                    shared.with_index(|i| i.apply(o));
                }
            }
            Ok(Event::Delete(obj)) => {
                if let Some(o) = convert(&shared, obj) {
                    shared.with_index(|i| i.delete(&o));
                }
            }
            // Without the CRD every retry answers 404: say what is wrong once, not the
            // API server's "404 page not found" on every retry.
            Err(e) if kind == Kind::RedisCluster && not_found(&e) => {
                errors.inc();
                shared.set_crd_missing(true);
                tracing::debug!(error = %e, "RedisCluster list refused; retrying with backoff");
            }
            // The backoff wrapper retries; the index keeps serving the last known state.
            // The API server cannot be reached (restarting, most likely): start afresh, with
            // a LIST, as soon as it answers again, instead of resuming the watch from the
            // old resource version, which a restarted API server holds for seconds before
            // it answers 410 Gone (5 s for RedisClusters in tests/apiserver.rs).
            Err(e) if unreachable(&e) => {
                errors.inc();
                warn!(error = %e, "API server unreachable; listing afresh once it answers");
                let delay = outage.next().unwrap_or(WatchBackoff::MAX);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                buffer.clear();
                stream = start();
            }
            // The backoff wrapper retries; the index keeps serving the last known state.
            Err(e) => {
                errors.inc();
                warn!(error = %e, "watch failed; retrying with backoff");
            }
        }
    }
}

/// A Pod cut down to what the index reads (name, namespace, labels, IP, the Ready
/// condition, and the ServiceAccount of Pods in an Istio mesh), before it is buffered during
/// a list of thousands.
fn trim_pod(p: Pod) -> Pod {
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    let status = p.status.map(|s| PodStatus {
        pod_ip: s.pod_ip,
        conditions: s
            .conditions
            .map(|cs| cs.into_iter().filter(|c| c.type_ == "Ready").collect()),
        ..Default::default()
    });
    let in_mesh = p.metadata.labels.as_ref().is_some_and(|l| {
        l.get(crate::model::ISTIO_TLS_MODE_LABEL)
            .is_some_and(|v| v == "istio")
    });
    let spec = p.spec.filter(|_| in_mesh).map(|s| PodSpec {
        service_account_name: s.service_account_name,
        ..Default::default()
    });
    Pod {
        metadata: ObjectMeta {
            name: p.metadata.name,
            namespace: p.metadata.namespace,
            labels: p.metadata.labels,
            ..Default::default()
        },
        spec,
        status,
    }
}

/// A Secret as the index keeps it: whole when a RedisCluster references it, else its name
/// only, decided as it arrives so that a list of thousands never holds their data.
fn secret_object(shared: &Watchers, s: Secret) -> Object {
    let key = super::super::convert::key(&s.metadata);
    if shared.with_index(|i| i.wants_secret(&key)) {
        Object::Secret(Box::new(s))
    } else {
        Object::UnreferencedSecret(key)
    }
}

/// Reads Secrets that became referenced after they were seen unreferenced (a RedisCluster
/// created or changed to name an existing Secret), one GET each, retried with
/// [`WatchBackoff`] while the API server cannot answer and the Secret is still wanted.
async fn fetch_secrets(
    client: Client,
    shared: Watchers,
    mut wanted: tokio::sync::mpsc::UnboundedReceiver<ObjectKey>,
    shutdown: CancellationToken,
) {
    loop {
        let key = tokio::select! {
            () = shutdown.cancelled() => return,
            k = wanted.recv() => match k { Some(k) => k, None => return },
        };
        let api: Api<Secret> = Api::namespaced(client.clone(), &key.namespace);
        let mut backoff = WatchBackoff::default();
        while shared.with_index(|i| i.wants_secret(&key)) {
            match api.get_opt(&key.name).await {
                Ok(secret) => {
                    shared.with_index(|i| i.fetched(&key, secret.as_ref()));
                    break;
                }
                // Refused (403: an RBAC without `get secrets`): reported as missing on the
                // RedisCluster rather than holding back every other change.
                Err(kube::Error::Api(status)) => {
                    warn!(secret = %key, error = %status, "reading a newly referenced Secret was refused; it counts as missing");
                    shared.with_index(|i| i.fetched(&key, None));
                    break;
                }
                Err(e) => {
                    warn!(secret = %key, error = %e, "reading a newly referenced Secret failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff.next().unwrap_or(WatchBackoff::MAX)) => {}
                    }
                }
            }
        }
    }
}

/// One watcher per kind, and the fetcher of newly referenced Secrets, each named, for the
/// caller to run (`serve` hands them to its supervisor); they run until `shutdown`.
pub fn tasks(
    client: &Client,
    namespace: Option<&str>,
    services: bool,
    shared: Watchers,
    shutdown: CancellationToken,
) -> Vec<(&'static str, BoxFuture<'static, ()>)> {
    let rc_api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &RedisCluster::api_resource()),
        None => Api::all_with(client.clone(), &RedisCluster::api_resource()),
    };
    let (fetch, wanted) = tokio::sync::mpsc::unbounded_channel();
    shared.with_index(|i| i.trim_secrets(fetch));
    let config = watcher::Config::default;
    let mut tasks = Vec::new();
    if services {
        shared.with_index(crate::source::k8s::index::Index::follow_services);
        tasks.push((
            "watch Service",
            follow(
                api::<k8s_openapi::api::core::v1::Service>(client, namespace),
                Kind::Service,
                config(),
                shared.clone(),
                |_, s| Some(Object::Service(Box::new(s))),
                shutdown.clone(),
            )
            .instrument(tracing::info_span!("watch", kind = "Service"))
            .boxed(),
        ));
    }
    tasks.extend([
        (
            "watch RedisCluster",
            follow(
                rc_api,
                Kind::RedisCluster,
                config(),
                shared.clone(),
                redis_cluster,
                shutdown.clone(),
            )
            .instrument(tracing::info_span!("watch", kind = "RedisCluster"))
            .boxed(),
        ),
        (
            "watch Pod",
            follow(
                api::<Pod>(client, namespace),
                Kind::Pod,
                config(),
                shared.clone(),
                |_, p| Some(Object::Pod(Box::new(trim_pod(p)))),
                shutdown.clone(),
            )
            .instrument(tracing::info_span!("watch", kind = "Pod"))
            .boxed(),
        ),
        (
            "watch EndpointSlice",
            follow(
                api::<EndpointSlice>(client, namespace),
                Kind::EndpointSlice,
                config(),
                shared.clone(),
                |_, s| Some(Object::EndpointSlice(Box::new(s))),
                shutdown.clone(),
            )
            .instrument(tracing::info_span!("watch", kind = "EndpointSlice"))
            .boxed(),
        ),
        (
            "watch Secret",
            follow(
                api::<Secret>(client, namespace),
                Kind::Secret,
                // Pages of 50: Helm's release Secrets run to hundreds of KiB each, and a
                // page is held whole while it is decoded.
                config().page_size(50),
                shared.clone(),
                |shared, s| Some(secret_object(shared, s)),
                shutdown.clone(),
            )
            .instrument(tracing::info_span!("watch", kind = "Secret"))
            .boxed(),
        ),
        (
            "fetch Secret",
            fetch_secrets(client.clone(), shared, wanted, shutdown)
                .instrument(tracing::info_span!("fetch", kind = "Secret"))
                .boxed(),
        ),
    ]);
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff;
    use std::time::Duration;

    #[test]
    fn should_retry_within_a_second_and_start_over_after_a_reset() {
        let mut b = WatchBackoff::default();
        let within = |d: Duration, base: u64| {
            let base = Duration::from_millis(base);
            d >= base && d <= base.mul_f64(1.2)
        };
        let delays: Vec<Duration> = b.by_ref().take(7).collect();
        for (d, base) in delays.iter().zip([100, 200, 400, 800, 1000, 1000, 1000]) {
            assert!(within(*d, base), "{delays:?}");
        }
        b.reset();
        assert!(within(b.next().unwrap(), 100), "not reset");
    }
}
