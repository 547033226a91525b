//! compile: the model in, Envoy resources and per-object problems out.
//!
//! A pure function: no I/O, no clocks, no async, no Kubernetes or gRPC types. This is where
//! the Redis and Envoy knowledge lives; everything downstream (snapshots, xDS, debug views,
//! status) only moves its output around.
//!
//! How an object is judged:
//! 1. On its own ([`plan`]): every field valid, endpoints and Secrets resolved.
//! 2. Its references: every RedisCluster its listener sends commands to (routes, read
//!    clusters, mirrors, catch-all) exists and is itself accepted. This is repeated until
//!    nothing changes, so a rejection travels along chains of references.
//! 3. Its listener address: two listeners that may land on the same proxy with the same
//!    address and port conflict; the older object wins (creation time, then first seen, then
//!    name), the newer is rejected with `PortConflict`. Step 2 then runs again, because the
//!    loser may be someone's target.
//!
//! A rejected object is left out whole (its cluster and its listener), so no proxy ever holds
//! a listener that routes to a cluster it does not have. Everything else is still compiled.

mod envoy;
mod names;
pub mod plan;
mod problem;
mod selector;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;

pub use self::envoy::{ads_config_source, any, socket_address};
pub use self::names::{cluster_name, listener_name};
pub use self::plan::ClientMatcher;
use self::plan::Plan;
pub use self::problem::{Problem, Reason};
use crate::api::Labels;
use crate::model::{Model, ObjectKey};

/// Compiled Envoy resources for every accepted object, and the problems of the others.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Compiled {
    /// Envoy clusters by name.
    pub clusters: BTreeMap<String, CompiledCluster>,
    /// Envoy listeners by name.
    pub listeners: BTreeMap<String, CompiledListener>,
    /// Why objects were left out, sorted by object then field.
    pub problems: Vec<Problem>,
    /// Outcome per RedisCluster, for status and the debug view.
    pub objects: BTreeMap<ObjectKey, Outcome>,
}

/// One Envoy cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct CompiledCluster {
    /// The RedisCluster it came from.
    pub owner: ObjectKey,
    /// The cluster.
    pub cluster: Cluster,
    /// Its endpoints as an EDS resource, for clusters of type EDS (Sharded mode). Cluster
    /// mode carries its seeds inside the cluster, as `envoy.clusters.redis` requires.
    pub endpoints: Option<ClusterLoadAssignment>,
}

/// One Envoy listener.
#[derive(Clone, Debug, PartialEq)]
pub struct CompiledListener {
    /// The RedisCluster it came from.
    pub owner: ObjectKey,
    /// Which proxies get it.
    pub clients: ClientMatcher,
    /// The listener.
    pub listener: Listener,
    /// Names of every cluster it sends commands to; a proxy that gets the listener gets these.
    pub clusters: BTreeSet<String>,
}

/// How one RedisCluster fared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Compiled and served.
    pub accepted: bool,
    /// Resolved endpoints (0 when the object could not be planned).
    pub endpoints: usize,
    /// `metadata.generation` it was compiled from.
    pub generation: Option<i64>,
}

/// A proxy's identity as far as listener selection goes, from its xDS node metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProxyIdentity {
    /// `metadata.namespace`; `None` when the proxy did not say.
    pub namespace: Option<String>,
    /// `metadata.labels`; `None` when the proxy did not say.
    pub labels: Option<Labels>,
}

/// What one proxy should hold: references into a [`Compiled`].
#[derive(Debug, Default)]
pub struct View<'a> {
    /// Listeners whose `clients` select the proxy.
    pub listeners: Vec<&'a CompiledListener>,
    /// Clusters those listeners use.
    pub clusters: Vec<&'a CompiledCluster>,
}

impl Compiled {
    /// The resources one proxy gets: the listeners that select it and exactly the clusters
    /// those listeners use.
    pub fn view(&self, proxy: &ProxyIdentity) -> View<'_> {
        let listeners: Vec<&CompiledListener> = self
            .listeners
            .values()
            .filter(|l| {
                l.clients
                    .selects(proxy.namespace.as_deref(), proxy.labels.as_ref())
            })
            .collect();
        let used: BTreeSet<&str> = listeners
            .iter()
            .flat_map(|l| l.clusters.iter().map(String::as_str))
            .collect();
        let clusters = used
            .into_iter()
            .filter_map(|name| self.clusters.get(name))
            .collect();
        View {
            listeners,
            clusters,
        }
    }
}

/// Compiles the whole model.
pub fn compile(model: &Model) -> Compiled {
    let mut problems: Vec<Problem> = Vec::new();
    let mut plans: BTreeMap<&ObjectKey, Plan> = BTreeMap::new();
    let mut endpoint_counts = BTreeMap::new();
    for (key, obj) in &model.redis_clusters {
        match plan::plan(obj, model) {
            Ok(p) => {
                endpoint_counts.insert(key, p.endpoints.len());
                plans.insert(key, p);
            }
            Err(mut ps) => problems.append(&mut ps),
        }
    }

    reject_broken_references(model, &mut plans, &mut problems);
    reject_port_conflicts(model, &mut plans, &mut problems);
    reject_broken_references(model, &mut plans, &mut problems);

    let mut out = Compiled::default();
    for plan in plans.values() {
        let (cluster, endpoints) = envoy::cluster(plan);
        out.clusters.insert(
            cluster.name.clone(),
            CompiledCluster {
                owner: plan.key.clone(),
                cluster,
                endpoints,
            },
        );
        if let Some(l) = &plan.listener {
            let listener = envoy::listener(plan, l);
            out.listeners.insert(
                listener.name.clone(),
                CompiledListener {
                    owner: plan.key.clone(),
                    clients: l.clients.clone(),
                    clusters: l
                        .refs
                        .iter()
                        .map(|r| names::cluster_name(&r.target))
                        .collect(),
                    listener,
                },
            );
        }
    }
    for (key, obj) in &model.redis_clusters {
        out.objects.insert(
            key.clone(),
            Outcome {
                accepted: plans.contains_key(key),
                endpoints: endpoint_counts.get(key).copied().unwrap_or(0),
                generation: obj.generation,
            },
        );
    }
    problems.sort();
    problems.dedup();
    out.problems = problems;
    out
}

/// Drops plans whose listener refers to a RedisCluster that is missing or not accepted,
/// until no more drop out.
fn reject_broken_references(
    model: &Model,
    plans: &mut BTreeMap<&ObjectKey, Plan>,
    problems: &mut Vec<Problem>,
) {
    loop {
        let mut rejected = Vec::new();
        for (key, plan) in plans.iter() {
            let Some(l) = &plan.listener else { continue };
            let mut own = Vec::new();
            for r in &l.refs {
                if r.target == **key {
                    continue;
                }
                let (reason, message) = if !model.redis_clusters.contains_key(&r.target) {
                    (
                        Reason::RefNotFound,
                        format!("RedisCluster {:?} not found", display_ref(key, &r.target)),
                    )
                } else if !plans.contains_key(&r.target) {
                    (
                        Reason::RefNotAccepted,
                        format!(
                            "RedisCluster {:?} is not accepted; fix its problems first",
                            display_ref(key, &r.target)
                        ),
                    )
                } else {
                    continue;
                };
                own.push(Problem {
                    object: (*key).clone(),
                    field: r.field.clone(),
                    reason,
                    message,
                });
            }
            if !own.is_empty() {
                rejected.push(((*key).clone(), own));
            }
        }
        if rejected.is_empty() {
            return;
        }
        for (key, mut own) in rejected {
            plans.remove(&key);
            problems.append(&mut own);
        }
    }
}

/// Names a reference the way the user wrote it: bare name within one namespace.
fn display_ref(from: &ObjectKey, to: &ObjectKey) -> String {
    if from.namespace == to.namespace {
        to.name.clone()
    } else {
        to.to_string()
    }
}

/// Among listeners that may reach the same proxy on the same address and port, keeps the
/// oldest object's and rejects the others.
fn reject_port_conflicts(
    model: &Model,
    plans: &mut BTreeMap<&ObjectKey, Plan>,
    problems: &mut Vec<Problem>,
) {
    let mut by_age: Vec<&ObjectKey> = plans.keys().copied().collect();
    by_age.sort_by_key(|k| model.redis_clusters[*k].age_key());
    // Only listeners on the same port can clash: winners are grouped by port, so this is
    // linear in the number of listeners, not quadratic.
    let mut winners: HashMap<u16, Vec<(&ObjectKey, &plan::ListenerPlan)>> = HashMap::new();
    let mut losers = Vec::new();
    for key in by_age {
        let Some(l) = &plans[key].listener else {
            continue;
        };
        let same_port = winners.entry(l.port).or_default();
        let clash = same_port.iter().find(|(_, wl)| {
            same_socket(wl.address, l.address) && wl.clients.may_overlap(&l.clients)
        });
        match clash {
            Some((w, _)) => losers.push(Problem {
                object: key.clone(),
                field: "spec.listener.port".into(),
                reason: Reason::PortConflict,
                message: format!(
                    "{}:{} is already taken on the same proxies by the older RedisCluster {w}; choose another port or address, or make listener.clients disjoint",
                    l.address, l.port
                ),
            }),
            None => same_port.push((key, l)),
        }
    }
    for p in losers {
        plans.remove(&p.object);
        problems.push(p);
    }
}

/// Two listen addresses collide when equal, or when either is the wildcard of the same family.
fn same_socket(a: std::net::IpAddr, b: std::net::IpAddr) -> bool {
    a == b || (a.is_ipv4() == b.is_ipv4() && (a.is_unspecified() || b.is_unspecified()))
}
