//! RedisCluster `.status`: computed from the compile output and the connected proxies,
//! written by the lease holder only when it changed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::fleet::{Facts, proxy_facts};
use crate::api::{RedisCluster, RedisClusterStatus};
use crate::compile::Reason;
use crate::model::ObjectKey;
use crate::snapshot::Snapshot;
use crate::source::k8s::watch::Undecodable;
use crate::xds::{ProxyStatus, Registry};

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    previous: Option<&RedisClusterStatus>,
    now: &Time,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    // The transition time moves only when the status does (Kubernetes convention).
    let last = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: last,
    }
}

/// `Programmed=False` of an object that is not accepted.
fn not_programmed(
    generation: Option<i64>,
    previous: Option<&RedisClusterStatus>,
    now: &Time,
) -> Condition {
    condition(
        "Programmed",
        false,
        "NotAccepted",
        "not sent to any proxy until it is accepted".into(),
        generation,
        previous,
        now,
    )
}

/// The status one object should have now.
fn status_for(
    key: &ObjectKey,
    snapshot: &Snapshot,
    facts: Option<&Facts>,
    previous: Option<&RedisClusterStatus>,
    now: &Time,
) -> Option<RedisClusterStatus> {
    let outcome = snapshot.compiled.objects.get(key)?;
    let generation = outcome.generation;
    let problems: Vec<_> = snapshot
        .compiled
        .problems
        .iter()
        .filter(|p| &p.object == key)
        .collect();
    let accepted = if outcome.accepted {
        condition(
            "Accepted",
            true,
            "Accepted",
            "valid; every reference resolves".into(),
            generation,
            previous,
            now,
        )
    } else {
        let reason = problems.first().map_or(Reason::Invalid, |p| p.reason);
        let message = problems
            .iter()
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect::<Vec<_>>()
            .join("; ");
        condition(
            "Accepted",
            false,
            reason.as_str(),
            message,
            generation,
            previous,
            now,
        )
    };
    let facts = facts.cloned().unwrap_or_default();
    let c = &facts.counts;
    let programmed = if !outcome.accepted {
        not_programmed(generation, previous, now)
    } else if c.rejected > 0 {
        let nack = facts.nack.clone().unwrap_or_default();
        condition(
            "Programmed",
            false,
            "Rejected",
            format!(
                "{} of {} proxies rejected it: {nack}",
                c.rejected, c.connected
            ),
            generation,
            previous,
            now,
        )
    } else if c.synced < c.connected {
        condition(
            "Programmed",
            false,
            "Pending",
            format!("{} of {} proxies in sync", c.synced, c.connected),
            generation,
            previous,
            now,
        )
    } else if c.connected == 0 {
        condition(
            "Programmed",
            true,
            "NoProxies",
            "no connected proxy uses it yet".into(),
            generation,
            previous,
            now,
        )
    } else {
        condition(
            "Programmed",
            true,
            "Programmed",
            format!("all {} proxies in sync", c.connected),
            generation,
            previous,
            now,
        )
    };
    Some(RedisClusterStatus {
        observed_generation: generation,
        conditions: vec![accepted, programmed],
        endpoints: Some(u32::try_from(outcome.endpoints).unwrap_or(u32::MAX)),
        proxies: Some(facts.counts),
    })
}

/// The status of an object the API server stored but redis-xds cannot read: not accepted,
/// with the field and the reason, so that `kubectl get rdc` and `describe` say why it is
/// not served.
fn undecodable_status(
    problem: &Undecodable,
    previous: Option<&RedisClusterStatus>,
    now: &Time,
) -> RedisClusterStatus {
    let generation = problem.generation;
    RedisClusterStatus {
        observed_generation: generation,
        conditions: vec![
            condition(
                "Accepted",
                false,
                Reason::Invalid.as_str(),
                format!(
                    "{}; fix the field: nothing of this generation is served",
                    problem.message
                ),
                generation,
                previous,
                now,
            ),
            not_programmed(generation, previous, now),
        ],
        endpoints: None,
        proxies: None,
    }
}

/// Objects that could not be read (shared with the watchers).
pub type UndecodableObjects = Arc<std::sync::Mutex<BTreeMap<ObjectKey, Undecodable>>>;

/// The `IstioProgrammed` condition of Istio mode ([`crate::istio::programmed`]); `Unknown`
/// while istiod cannot be asked.
fn istio_condition(
    facts: &crate::istio::programmed::IstioFacts,
    generation: Option<i64>,
    previous: Option<&RedisClusterStatus>,
    now: &Time,
) -> Condition {
    let (ok, reason, message) = crate::istio::programmed::condition(facts);
    let mut c = condition(
        "IstioProgrammed",
        ok,
        reason,
        message,
        generation,
        previous,
        now,
    );
    if reason == "Unknown" {
        c.status = "Unknown".into();
        c.last_transition_time = previous
            .and_then(|p| p.conditions.iter().find(|c| c.type_ == "IstioProgrammed"))
            .filter(|c| c.status == "Unknown")
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    }
    c
}

/// Writes statuses while `leader` is true, every `period` and after every snapshot; with
/// `istio`, each also gets the `IstioProgrammed` condition.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: kube::Client,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    undecodable: UndecodableObjects,
    registry: Arc<Registry>,
    mut leader: watch::Receiver<bool>,
    period: Duration,
    istio: Option<crate::istio::programmed::SharedFacts>,
    fleet: super::fleet::Fleet,
    shutdown: CancellationToken,
) {
    let mut written: HashMap<ObjectKey, RedisClusterStatus> = HashMap::new();
    // The other replicas' counts as last read: kept when a read fails, so that a failed
    // list does not make the fleet look smaller (their Leases expire on their own).
    let mut others = BTreeMap::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = snapshots.changed() => {}
            _ = leader.changed() => {}
            () = tokio::time::sleep(period) => {}
        }
        if !*leader.borrow_and_update() {
            // A new leader writes everything once: our cache may be stale by then.
            written.clear();
            continue;
        }
        let snapshot = Arc::clone(&snapshots.borrow_and_update());
        let undecodable = undecodable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let istio_facts = istio
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default();
        match super::fleet::read_others(&fleet.api, &fleet.config).await {
            Ok(read) => others = read,
            Err(e) => {
                warn!(error = %e, "cannot read the other replicas' proxy counts; using the last read")
            }
        }
        let mut facts = proxy_facts(&snapshot, &registry.list());
        super::fleet::add(&mut facts, others.clone());
        write_changed_with(
            &client,
            &snapshot,
            &undecodable,
            &facts,
            &istio_facts,
            &mut written,
        )
        .await;
    }
}

/// Patches the status of every object whose status differs from what was last written:
/// those in the snapshot, and those that could not be read (`undecodable`, which win over
/// an older readable generation of the same object still in the snapshot).
pub async fn write_changed(
    client: &kube::Client,
    snapshot: &Snapshot,
    undecodable: &BTreeMap<ObjectKey, Undecodable>,
    proxies: &[ProxyStatus],
    written: &mut HashMap<ObjectKey, RedisClusterStatus>,
) {
    write_changed_with(
        client,
        snapshot,
        undecodable,
        &proxy_facts(snapshot, proxies),
        &BTreeMap::new(),
        written,
    )
    .await;
}

/// [`write_changed`] with the proxy facts of the whole fleet, and the Istio-mode facts of
/// each object.
async fn write_changed_with(
    client: &kube::Client,
    snapshot: &Snapshot,
    undecodable: &BTreeMap<ObjectKey, Undecodable>,
    facts: &BTreeMap<ObjectKey, Facts>,
    istio: &BTreeMap<ObjectKey, crate::istio::programmed::IstioFacts>,
    written: &mut HashMap<ObjectKey, RedisClusterStatus>,
) {
    let now = Time(jiff::Timestamp::now());
    written.retain(|k, _| {
        snapshot.model.redis_clusters.contains_key(k) || undecodable.contains_key(k)
    });
    let keys: std::collections::BTreeSet<&ObjectKey> = snapshot
        .model
        .redis_clusters
        .keys()
        .chain(undecodable.keys())
        .collect();
    for key in keys {
        let previous = written.get(key);
        let status = match undecodable.get(key) {
            Some(problem) => Some(undecodable_status(problem, previous, &now)),
            None => status_for(key, snapshot, facts.get(key), previous, &now),
        };
        let Some(mut status) = status else {
            continue;
        };
        if let Some(f) = istio.get(key) {
            status.conditions.push(istio_condition(
                f,
                status.observed_generation,
                previous,
                &now,
            ));
        }
        if previous == Some(&status) {
            continue;
        }
        let api: Api<RedisCluster> = Api::namespaced(client.clone(), &key.namespace);
        let patch = Patch::Merge(json!({ "status": status }));
        match api
            .patch_status(&key.name, &PatchParams::default(), &patch)
            .await
        {
            Ok(_) => {
                debug!(object = %key, "status written");
                written.insert(key.clone(), status);
            }
            Err(e) => warn!(object = %key, error = %e, "cannot write status; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ProxyCounts;
    use crate::xds::tracker::Nack;
    use crate::xds::{NodeIdentity, ResourceSource, ResourceType, TypeStatus, Variant};
    use std::time::{Instant, SystemTime};

    #[test]
    fn should_count_a_proxy_that_nacked_an_objects_listener_as_rejected_with_its_message() {
        let yaml = "apiVersion: redis-xds.dev/v1alpha1\nkind: RedisCluster\nmetadata: {name: orders, namespace: shop}\nspec:\n  endpoints: {static: [\"10.0.0.1:6379\"]}\n  listener: {port: 6379}\n";
        let path = std::path::PathBuf::from("t.yaml");
        let parsed = crate::source::manifests::parse_file(&path, yaml);
        let (model, _, _) = crate::source::manifests::assemble(&[(path, parsed)], &mut |_| None);
        let compiled = crate::compile::compile(&model);
        let snap = Snapshot::build(Arc::new(model), Arc::new(compiled), None, Instant::now());
        let listener = "redis/shop/orders@127.0.0.1:6379".to_string();
        let resource = snap.resources_for(&NodeIdentity::default()).listeners[&listener].clone();
        let nacked = TypeStatus {
            desired_version: Some("v1".into()),
            sent_version: Some("v1".into()),
            nack: Some(std::sync::Arc::new(Nack {
                version: "v1".into(),
                message: "port in use".into(),
                at: SystemTime::UNIX_EPOCH,
            })),
            sent: Arc::new([(listener, resource)].into_iter().collect()),
            ..Default::default()
        };
        let proxy = |types| ProxyStatus {
            stream: 1,
            node_id: "p".into(),
            identity: NodeIdentity::default(),
            variant: Variant::Delta,
            connected_at: SystemTime::UNIX_EPOCH,
            types,
        };
        let synced = TypeStatus {
            desired_version: Some("v1".into()),
            sent_version: Some("v1".into()),
            acked_version: Some("v1".into()),
            ..Default::default()
        };
        let proxies = [
            proxy([(ResourceType::Listener, nacked)].into_iter().collect()),
            proxy([(ResourceType::Listener, synced)].into_iter().collect()),
        ];
        let facts = proxy_facts(&snap, &proxies);
        let f = &facts[&ObjectKey::new("shop", "orders")];
        assert_eq!(
            f.counts,
            ProxyCounts {
                connected: 2,
                synced: 1,
                rejected: 1
            }
        );
        let now = Time(jiff::Timestamp::UNIX_EPOCH);
        let status = status_for(
            &ObjectKey::new("shop", "orders"),
            &snap,
            Some(f),
            None,
            &now,
        )
        .unwrap();
        let programmed = &status.conditions[1];
        assert_eq!(
            (programmed.status.as_str(), programmed.reason.as_str()),
            ("False", "Rejected")
        );
        assert_eq!(
            programmed.message,
            "1 of 2 proxies rejected it: port in use"
        );
    }

    #[test]
    fn should_count_a_refusal_against_the_object_whose_resource_was_refused_only() {
        let yaml = "apiVersion: redis-xds.dev/v1alpha1\nkind: RedisCluster\nmetadata: {name: orders, namespace: shop}\nspec:\n  endpoints: {static: [\"10.0.0.1:6379\"]}\n  listener: {port: 6379}\n---\napiVersion: redis-xds.dev/v1alpha1\nkind: RedisCluster\nmetadata: {name: cache, namespace: shop}\nspec:\n  endpoints: {static: [\"10.0.0.2:6379\"]}\n  listener: {port: 6380}\n";
        let path = std::path::PathBuf::from("t.yaml");
        let parsed = crate::source::manifests::parse_file(&path, yaml);
        let (model, _, _) = crate::source::manifests::assemble(&[(path, parsed)], &mut |_| None);
        let compiled = crate::compile::compile(&model);
        let snap = Snapshot::build(Arc::new(model), Arc::new(compiled), None, Instant::now());
        let view = snap.resources_for(&NodeIdentity::default());
        let orders = "redis/shop/orders@127.0.0.1:6379".to_string();
        let cache = "redis/shop/cache@127.0.0.1:6380".to_string();
        let nack = std::sync::Arc::new(Nack {
            version: "v2".into(),
            message: format!("Error adding/updating listener(s) {cache}: cannot bind"),
            at: SystemTime::UNIX_EPOCH,
        });
        let rejected: crate::xds::tracker::RejectedMap = [(
            cache.clone(),
            crate::xds::tracker::Rejected {
                resource: view.listeners[&cache].clone(),
                nack: Arc::clone(&nack),
            },
        )]
        .into_iter()
        .collect();
        // The proxy holds orders' listener, and refused cache's.
        let lds = TypeStatus {
            desired_version: Some("v2".into()),
            sent_version: Some("v1".into()),
            acked_version: Some("v1".into()),
            nack: Some(nack),
            rejected: Some(Arc::new(rejected)),
            sent: Arc::new(
                [(orders.clone(), view.listeners[&orders].clone())]
                    .into_iter()
                    .collect(),
            ),
            ..Default::default()
        };
        let proxy = ProxyStatus {
            stream: 1,
            node_id: "p".into(),
            identity: NodeIdentity::default(),
            variant: Variant::Delta,
            connected_at: SystemTime::UNIX_EPOCH,
            types: [(ResourceType::Listener, lds)].into_iter().collect(),
        };
        let facts = proxy_facts(&snap, &[proxy]);
        let counts = |name: &str| facts[&ObjectKey::new("shop", name)].counts.clone();
        assert_eq!(
            counts("cache"),
            ProxyCounts {
                connected: 1,
                synced: 0,
                rejected: 1
            }
        );
        assert_eq!(
            counts("orders"),
            ProxyCounts {
                connected: 1,
                synced: 0,
                rejected: 0
            },
            "the proxy accepted orders' listener"
        );
        assert!(
            facts[&ObjectKey::new("shop", "cache")]
                .nack
                .as_deref()
                .is_some_and(|m| m.contains("cannot bind"))
        );
    }
}
