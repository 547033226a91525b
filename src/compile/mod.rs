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
//!
//! [`recompile`] is the same function with a memory: step 1 and the Envoy resources of an
//! object are taken from the previous compile when its spec is unchanged and nothing it may
//! read (Pods, EndpointSlices, Secrets of its namespace) changed. Steps 2 and 3 always run
//! over every object, because they are about the relations between objects; they are cheap.
//! Unchanged resources keep their allocation, which is how the snapshot knows, without
//! encoding them, that they did not change.

mod envoy;
mod names;
pub mod plan;
mod problem;
mod selector;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

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
    pub clusters: BTreeMap<String, Arc<CompiledCluster>>,
    /// Envoy listeners by name.
    pub listeners: BTreeMap<String, Arc<CompiledListener>>,
    /// Why objects were left out, sorted by object then field.
    pub problems: Vec<Problem>,
    /// Outcome per RedisCluster, for status and the debug view.
    pub objects: BTreeMap<ObjectKey, Outcome>,
    /// Per-object work, for the next [`recompile`].
    memory: Memory,
}

/// What a compile did for one RedisCluster on its own.
#[derive(Clone, Debug)]
struct Entry {
    plan: Result<Arc<Plan>, Arc<[Problem]>>,
    /// Its Envoy resources, once it was accepted.
    built: Option<(Arc<CompiledCluster>, Option<Arc<CompiledListener>>)>,
}

/// Per-object work of a compile. Not part of its value: compiles of one model are equal
/// whatever they reused.
#[derive(Clone, Default)]
struct Memory(Arc<BTreeMap<ObjectKey, Entry>>);

impl PartialEq for Memory {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl fmt::Debug for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Memory({} objects)", self.0.len())
    }
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
            .map(|l| &**l)
            .collect();
        let used: BTreeSet<&str> = listeners
            .iter()
            .flat_map(|l| l.clusters.iter().map(String::as_str))
            .collect();
        let clusters = used
            .into_iter()
            .filter_map(|name| self.clusters.get(name).map(|c| &**c))
            .collect();
        View {
            listeners,
            clusters,
        }
    }
}

/// Compiles the whole model.
pub fn compile(model: &Model) -> Compiled {
    recompile(model, None)
}

/// Compiles `model` like [`compile`] (the result is equal), reusing the per-object work of
/// `previous`, the compile of an earlier model, wherever it still holds.
pub fn recompile(model: &Model, previous: Option<(&Model, &Compiled)>) -> Compiled {
    // Every map here is ordered by object key, so the previous compile's work is found by
    // walking both in step rather than by a lookup per object.
    let changed = previous.map(|(before, _)| changed_namespaces(before, model));
    let mut before =
        previous.map(|(m, c)| m.redis_clusters.iter().zip(c.memory.0.iter()).peekable());
    let entries: Vec<(&ObjectKey, Entry)> = model
        .redis_clusters
        .iter()
        .map(|(key, obj)| {
            let kept = before.as_mut().and_then(|b| {
                while b.next_if(|((k, _), _)| *k < key).is_some() {}
                let ((_, was), (compiled_key, entry)) = b.next_if(|((k, _), _)| *k == key)?;
                // The pair must be a model and its own compile; anything else reuses nothing.
                let unchanged = compiled_key == key
                    && was.spec == obj.spec
                    && !changed
                        .as_ref()
                        .is_some_and(|c| c.contains(key.namespace.as_str()));
                unchanged.then(|| entry.clone())
            });
            let entry = kept.unwrap_or_else(|| Entry {
                plan: plan::plan(obj, model).map(Arc::new).map_err(Arc::from),
                built: None,
            });
            (key, entry)
        })
        .collect();

    let mut problems: Vec<Problem> = Vec::new();
    let mut plans: BTreeMap<&ObjectKey, &Plan> = entries
        .iter()
        .filter_map(|(key, entry)| match &entry.plan {
            Ok(p) => Some((*key, &**p)),
            Err(ps) => {
                problems.extend(ps.iter().cloned());
                None
            }
        })
        .collect();
    reject_broken_references(model, &mut plans, &mut problems);
    if reject_port_conflicts(model, &mut plans, &mut problems) {
        // A loser may be someone's target.
        reject_broken_references(model, &mut plans, &mut problems);
    }
    let accepted: Vec<bool> = {
        let mut survivors = plans.into_keys().peekable();
        entries
            .iter()
            .map(|(key, _)| survivors.next_if(|k| k == key).is_some())
            .collect()
    };

    let mut clusters = Vec::new();
    let mut listeners = Vec::new();
    let mut objects = Vec::with_capacity(entries.len());
    let mut memory = Vec::with_capacity(entries.len());
    let owners = model.redis_clusters.values();
    for (((key, mut entry), accepted), obj) in entries.into_iter().zip(accepted).zip(owners) {
        if accepted && let Ok(plan) = &entry.plan {
            let (cluster, listener) = entry.built.get_or_insert_with(|| build(plan));
            clusters.push((cluster.cluster.name.clone(), Arc::clone(cluster)));
            if let Some(l) = listener {
                listeners.push((l.listener.name.clone(), Arc::clone(l)));
            }
        }
        let endpoints = entry.plan.as_ref().map_or(0, |p| p.endpoints.len());
        objects.push((
            key.clone(),
            Outcome {
                accepted,
                endpoints,
                generation: obj.generation,
            },
        ));
        memory.push((key.clone(), entry));
    }
    problems.sort();
    problems.dedup();
    Compiled {
        clusters: clusters.into_iter().collect(),
        listeners: listeners.into_iter().collect(),
        problems,
        objects: objects.into_iter().collect(),
        memory: Memory(Arc::new(memory.into_iter().collect())),
    }
}

/// The Envoy resources of an accepted plan.
fn build(plan: &Plan) -> (Arc<CompiledCluster>, Option<Arc<CompiledListener>>) {
    let (cluster, endpoints) = envoy::cluster(plan);
    let cluster = Arc::new(CompiledCluster {
        owner: plan.key.clone(),
        cluster,
        endpoints,
    });
    let listener = plan.listener.as_ref().map(|l| {
        Arc::new(CompiledListener {
            owner: plan.key.clone(),
            clients: l.clients.clone(),
            clusters: l
                .refs
                .iter()
                .map(|r| names::cluster_name(&r.target))
                .collect(),
            listener: envoy::listener(plan, l),
        })
    });
    (cluster, listener)
}

/// Namespaces in which a Pod, EndpointSlice or Secret was added, removed or changed: what
/// a RedisCluster's plan may read lives in its own namespace.
fn changed_namespaces<'a>(before: &'a Model, after: &'a Model) -> BTreeSet<&'a str> {
    let mut out = BTreeSet::new();
    differences(&before.pods, &after.pods, &mut out);
    differences(&before.endpoint_slices, &after.endpoint_slices, &mut out);
    differences(&before.secrets, &after.secrets, &mut out);
    out
}

fn differences<'a, T: PartialEq>(
    before: &'a BTreeMap<ObjectKey, T>,
    after: &'a BTreeMap<ObjectKey, T>,
    out: &mut BTreeSet<&'a str>,
) {
    for (key, value) in before {
        if after.get(key) != Some(value) {
            out.insert(&key.namespace);
        }
    }
    for key in after.keys() {
        if !before.contains_key(key) {
            out.insert(&key.namespace);
        }
    }
}

/// Drops plans whose listener refers to a RedisCluster that is missing or not accepted,
/// until no more drop out.
fn reject_broken_references(
    model: &Model,
    plans: &mut BTreeMap<&ObjectKey, &Plan>,
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
                let (reason, message) = if plans.contains_key(&r.target) {
                    continue;
                } else if !model.redis_clusters.contains_key(&r.target) {
                    (
                        Reason::RefNotFound,
                        format!("RedisCluster {:?} not found", display_ref(key, &r.target)),
                    )
                } else {
                    (
                        Reason::RefNotAccepted,
                        format!(
                            "RedisCluster {:?} is not accepted; fix its problems first",
                            display_ref(key, &r.target)
                        ),
                    )
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
/// oldest object's and rejects the others. Returns whether it rejected any.
fn reject_port_conflicts(
    model: &Model,
    plans: &mut BTreeMap<&ObjectKey, &Plan>,
    problems: &mut Vec<Problem>,
) -> bool {
    let mut by_age: Vec<_> = plans
        .values()
        .copied()
        .filter_map(|plan| {
            let age = model.redis_clusters.get(&plan.key)?.age_key();
            Some((age, &plan.key, plan.listener.as_ref()?))
        })
        .collect();
    by_age.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    // Only listeners on the same port can clash: winners are grouped by port, so this is
    // linear in the number of listeners, not quadratic.
    let mut winners: HashMap<u16, Vec<(&ObjectKey, &plan::ListenerPlan)>> = HashMap::new();
    let mut losers = Vec::new();
    for (_, key, l) in by_age {
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
    let rejected = !losers.is_empty();
    for p in losers {
        plans.remove(&p.object);
        problems.push(p);
    }
    rejected
}

/// Two listen addresses collide when equal, or when either is the wildcard of the same family.
fn same_socket(a: std::net::IpAddr, b: std::net::IpAddr) -> bool {
    a == b || (a.is_ipv4() == b.is_ipv4() && (a.is_unspecified() || b.is_unspecified()))
}
