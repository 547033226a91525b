//! Proxy counts of the whole fleet.
//!
//! Every replica serves its own proxies, and only the status Lease holder writes status. So
//! each replica publishes, per object, what its own proxies hold, in a Lease of its own in
//! the status Lease's namespace:
//!
//! - named `<status lease>-<identity>` (the identity made a DNS label), labelled
//!   `redis-xds.dev/proxy-counts: <status lease>`;
//! - its counts in the annotation `redis-xds.dev/proxy-counts`, JSON by object
//!   (`{"shop/orders": {"connected": 3, "synced": 3, "rejected": 0}}`, with `nack` where a
//!   proxy refused something), objects no proxy of the replica uses left out;
//! - renewed like any Lease: `renewTime` and `leaseDurationSeconds` say whether its writer is
//!   alive, as a node's Lease in `kube-node-lease` does for its kubelet.
//!
//! A replica writes its counts [`PUBLISH`] after they change at the latest and renews them
//! every [`RENEW`] otherwise; it deletes its Lease when it stops. The holder reads all of
//! them before each status write (every 5 s and on every change of the model), adds its own
//! proxies' counts as they are at that moment, and leaves out the Leases not renewed for
//! their duration ([`EXPIRE`]). So another replica's count is at most `PUBLISH` plus one
//! status period old, and a replica that died without deleting its Lease stops counting
//! `EXPIRE` after its last renewal.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::api::ProxyCounts;
use crate::model::ObjectKey;
use crate::snapshot::Snapshot;
use crate::xds::{ProxyStatus, Registry, ResourceSource, ResourceType};

/// Label naming the status Lease whose fleet a counts Lease belongs to.
pub const LABEL: &str = "redis-xds.dev/proxy-counts";
/// Annotation holding a replica's counts.
pub const ANNOTATION: &str = "redis-xds.dev/proxy-counts";
/// The longest a change of a replica's counts waits before it is written.
pub const PUBLISH: Duration = Duration::from_secs(2);
/// How often unchanged counts are renewed.
pub const RENEW: Duration = Duration::from_secs(5);
/// A counts Lease not renewed for this long no longer counts.
pub const EXPIRE: Duration = Duration::from_secs(15);
/// A NACK message is cut to this many bytes in the annotation: the object's condition
/// quotes one, and a Lease's annotations hold 256 KiB in all.
const NACK_BYTES: usize = 512;

/// Proxy facts about one object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// Counts.
    pub counts: ProxyCounts,
    /// The first NACK message about this object's resources.
    pub nack: Option<String>,
}

/// Per object: how many connected proxies should hold its resources, how many are in sync,
/// how many rejected them.
pub fn proxy_facts(snapshot: &Snapshot, proxies: &[ProxyStatus]) -> BTreeMap<ObjectKey, Facts> {
    let compiled = &snapshot.compiled;
    let owner = |kind: ResourceType, name: &str| -> Option<&ObjectKey> {
        match kind {
            ResourceType::Listener => compiled.listeners.get(name).map(|l| &l.owner),
            _ => compiled.clusters.get(name).map(|c| &c.owner),
        }
    };
    let mut out: BTreeMap<ObjectKey, Facts> = BTreeMap::new();
    for p in proxies {
        let view = snapshot.resources_for(&p.identity);
        let mut objects: Vec<&ObjectKey> = view
            .listeners
            .keys()
            .filter_map(|n| owner(ResourceType::Listener, n))
            .chain(
                view.clusters
                    .keys()
                    .filter_map(|n| owner(ResourceType::Cluster, n)),
            )
            .collect();
        objects.sort();
        objects.dedup();
        let synced = p
            .types
            .values()
            .all(|t| t.sync_state() == crate::xds::tracker::SyncState::Synced);
        for key in objects {
            let facts = out.entry(key.clone()).or_default();
            facts.counts.connected += 1;
            if synced {
                facts.counts.synced += 1;
            }
            // What the proxy refused, by the resources it refused; a NACK that named none
            // of what it was offered counts against every object it was sent.
            let rejected = p.types.iter().find_map(|(kind, t)| match &t.rejected {
                Some(rejected) => rejected
                    .iter()
                    .find(|(n, _)| owner(*kind, n) == Some(key))
                    .map(|(_, r)| r.nack.message.clone()),
                None => {
                    let nack = t.nack.as_ref()?;
                    t.sent
                        .keys()
                        .any(|n| owner(*kind, n) == Some(key))
                        .then(|| nack.message.clone())
                }
            });
            if let Some(message) = rejected {
                facts.counts.rejected += 1;
                facts.nack.get_or_insert(message);
            }
        }
    }
    out
}

/// The fleet's counts Leases, as the status writer reads them.
#[derive(Clone)]
pub struct Fleet {
    /// Leases in the status Lease's namespace.
    pub api: Api<Lease>,
    /// This replica's place in the fleet.
    pub config: FleetConfig,
}

/// Where a replica publishes its counts.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// Name of the status Lease: names the fleet.
    pub status_lease: String,
    /// This replica's identity (the pod name).
    pub identity: String,
}

impl FleetConfig {
    /// Name of this replica's counts Lease: `<status lease>-<identity>`, lower-cased, with
    /// every character a DNS label does not allow made `-`, at most 253 characters (a
    /// Lease's name is a DNS subdomain).
    pub fn lease_name(&self) -> String {
        let mut name: String = format!("{}-{}", self.status_lease, self.identity)
            .chars()
            .map(|c| match c.to_ascii_lowercase() {
                c @ ('a'..='z' | '0'..='9' | '-') => c,
                _ => '-',
            })
            .take(253)
            .collect();
        while name.ends_with('-') {
            name.pop();
        }
        name
    }
}

/// One object's counts as a replica publishes them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Published {
    #[serde(flatten)]
    counts: ProxyCounts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nack: Option<String>,
}

/// The annotation's value for `facts`: objects no proxy uses are left out.
pub fn encode(facts: &BTreeMap<ObjectKey, Facts>) -> String {
    let published: BTreeMap<String, Published> = facts
        .iter()
        .filter(|(_, f)| f.counts.connected > 0)
        .map(|(k, f)| {
            let nack = f.nack.as_ref().map(|m| {
                let mut end = m.len().min(NACK_BYTES);
                while !m.is_char_boundary(end) {
                    end -= 1;
                }
                m[..end].to_owned()
            });
            (
                k.to_string(),
                Published {
                    counts: f.counts.clone(),
                    nack,
                },
            )
        })
        .collect();
    serde_json::to_string(&published).unwrap_or_default()
}

/// The facts an annotation holds; objects named other than `namespace/name` are skipped.
pub fn decode(text: &str) -> Result<BTreeMap<ObjectKey, Facts>, serde_json::Error> {
    let published: BTreeMap<String, Published> = serde_json::from_str(text)?;
    Ok(published
        .into_iter()
        .filter_map(|(k, p)| {
            let (ns, name) = k.split_once('/')?;
            Some((
                ObjectKey::new(ns, name),
                Facts {
                    counts: p.counts,
                    nack: p.nack,
                },
            ))
        })
        .collect())
}

/// Adds `more` to `into`: counts add up; the first NACK message stays.
pub fn add(into: &mut BTreeMap<ObjectKey, Facts>, more: BTreeMap<ObjectKey, Facts>) {
    for (key, f) in more {
        let sum = into.entry(key).or_default();
        sum.counts.connected += f.counts.connected;
        sum.counts.synced += f.counts.synced;
        sum.counts.rejected += f.counts.rejected;
        if sum.nack.is_none() {
            sum.nack = f.nack;
        }
    }
}

/// Whether `lease` was renewed within its duration at `now`.
fn alive(lease: &Lease, now: jiff::Timestamp) -> bool {
    let Some(spec) = &lease.spec else {
        return false;
    };
    match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(MicroTime(renewed)), Some(d)) => {
            now.as_millisecond() <= renewed.as_millisecond() + i64::from(d) * 1000
        }
        _ => false,
    }
}

/// The counts of every other replica of the fleet whose Lease is alive at `now`, summed.
/// A Lease whose annotation cannot be read is skipped with a warning.
fn others_from(
    leases: &[Lease],
    cfg: &FleetConfig,
    now: jiff::Timestamp,
) -> BTreeMap<ObjectKey, Facts> {
    let own = cfg.lease_name();
    let mut sum = BTreeMap::new();
    for lease in leases {
        let name = lease.metadata.name.as_deref().unwrap_or_default();
        if name == own || !alive(lease, now) {
            continue;
        }
        let text = lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION))
            .map_or("{}", String::as_str);
        match decode(text) {
            Ok(facts) => add(&mut sum, facts),
            Err(e) => {
                warn!(lease = name, error = %e, "cannot read a replica's proxy counts; left out")
            }
        }
    }
    sum
}

/// Lists the fleet's counts Leases and sums the other replicas' (see [`others_from`]).
pub async fn read_others(
    api: &Api<Lease>,
    cfg: &FleetConfig,
) -> Result<BTreeMap<ObjectKey, Facts>, kube::Error> {
    let selector = format!("{LABEL}={}", cfg.status_lease);
    let leases = api.list(&ListParams::default().labels(&selector)).await?;
    Ok(others_from(&leases.items, cfg, jiff::Timestamp::now()))
}

/// This replica's counts Lease, as server-side apply takes it.
fn lease(cfg: &FleetConfig, counts: String, now: jiff::Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(cfg.lease_name()),
            labels: Some([(LABEL.to_owned(), cfg.status_lease.clone())].into()),
            annotations: Some([(ANNOTATION.to_owned(), counts)].into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(cfg.identity.clone()),
            lease_duration_seconds: Some(i32::try_from(EXPIRE.as_secs()).unwrap_or(i32::MAX)),
            renew_time: Some(MicroTime(now)),
            ..Default::default()
        }),
    }
}

/// Publishes this replica's counts until `shutdown`, then deletes its Lease.
pub async fn publish(
    api: Api<Lease>,
    cfg: FleetConfig,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) {
    let name = cfg.lease_name();
    let params = PatchParams::apply("redis-xds").force();
    let mut written: Option<(String, tokio::time::Instant)> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(PUBLISH) => {}
        }
        let snapshot = Arc::clone(&snapshots.borrow_and_update());
        let counts = encode(&proxy_facts(&snapshot, &registry.list()));
        let due = match &written {
            None => true,
            Some((was, at)) => *was != counts || at.elapsed() >= RENEW,
        };
        if !due {
            continue;
        }
        let body = lease(&cfg, counts.clone(), jiff::Timestamp::now());
        match api.patch(&name, &params, &Patch::Apply(&body)).await {
            Ok(_) => {
                debug!(lease = %name, "proxy counts published");
                written = Some((counts, tokio::time::Instant::now()));
            }
            Err(e) => {
                warn!(lease = %name, error = %e, "cannot publish this replica's proxy counts; will retry")
            }
        }
    }
    if written.is_some() {
        // Bounded: a stopping replica must not hang on an unreachable API server.
        let params = DeleteParams::default();
        let delete = api.delete(&name, &params);
        match tokio::time::timeout(Duration::from_secs(2), delete).await {
            Ok(Ok(_)) => info!(lease = %name, "proxy counts withdrawn"),
            Ok(Err(e)) => {
                warn!(lease = %name, error = %e, "cannot delete the proxy counts Lease; it expires on its own")
            }
            Err(_) => {
                warn!(lease = %name, "deleting the proxy counts Lease timed out; it expires on its own")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(connected: u32, synced: u32, rejected: u32, nack: Option<&str>) -> Facts {
        Facts {
            counts: ProxyCounts {
                connected,
                synced,
                rejected,
            },
            nack: nack.map(str::to_owned),
        }
    }

    fn cfg(identity: &str) -> FleetConfig {
        FleetConfig {
            status_lease: "redis-xds-status".into(),
            identity: identity.into(),
        }
    }

    fn at(seconds: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    #[test]
    fn counts_should_survive_the_annotation_and_leave_out_unused_objects() {
        let mut all = BTreeMap::new();
        all.insert(
            ObjectKey::new("shop", "orders"),
            facts(3, 2, 1, Some("bad")),
        );
        all.insert(ObjectKey::new("shop", "idle"), facts(0, 0, 0, None));
        let text = encode(&all);
        assert_eq!(
            text,
            r#"{"shop/orders":{"connected":3,"synced":2,"rejected":1,"nack":"bad"}}"#
        );
        let back = decode(&text).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(
            back[&ObjectKey::new("shop", "orders")],
            facts(3, 2, 1, Some("bad"))
        );
        assert!(decode("[1]").is_err());
    }

    #[test]
    fn a_long_nack_should_be_cut_on_a_character_boundary() {
        let long = "é".repeat(NACK_BYTES);
        let all = BTreeMap::from([(ObjectKey::new("shop", "o"), facts(1, 0, 1, Some(&long)))]);
        let back = decode(&encode(&all)).unwrap();
        let nack = back[&ObjectKey::new("shop", "o")].nack.clone().unwrap();
        assert!(nack.len() <= NACK_BYTES && nack.chars().all(|c| c == 'é'));
    }

    #[test]
    fn the_lease_name_should_be_a_dns_subdomain() {
        assert_eq!(
            cfg("redis-xds-7d9f-x2").lease_name(),
            "redis-xds-status-redis-xds-7d9f-x2"
        );
        assert_eq!(
            cfg("Host_Name.local").lease_name(),
            "redis-xds-status-host-name-local"
        );
        assert!(cfg(&"a".repeat(400)).lease_name().len() <= 253);
    }

    fn counts_lease(cfg: &FleetConfig, counts: &str, renewed: i64) -> Lease {
        lease(cfg, counts.to_owned(), at(renewed))
    }

    #[test]
    fn the_holder_should_sum_the_other_replicas_that_are_alive() {
        let me = cfg("a");
        let orders = r#"{"shop/orders":{"connected":2,"synced":2,"rejected":0}}"#;
        let refused = r#"{"shop/orders":{"connected":1,"synced":0,"rejected":1,"nack":"port"}}"#;
        let leases = [
            // Its own Lease: the holder counts its proxies as they are now instead.
            counts_lease(&me, orders, 0),
            counts_lease(&cfg("b"), orders, 0),
            counts_lease(&cfg("c"), refused, 5),
            // Not renewed for longer than its duration: that replica is gone.
            counts_lease(&cfg("d"), orders, -20),
            counts_lease(&cfg("e"), "not json", 0),
        ];
        let sum = others_from(&leases, &me, at(10));
        assert_eq!(
            sum[&ObjectKey::new("shop", "orders")],
            facts(3, 2, 1, Some("port"))
        );
        let mut all = BTreeMap::from([(ObjectKey::new("shop", "orders"), facts(1, 1, 0, None))]);
        add(&mut all, sum);
        assert_eq!(
            all[&ObjectKey::new("shop", "orders")],
            facts(4, 3, 1, Some("port"))
        );
    }
}
