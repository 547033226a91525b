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

mod commands;
mod envoy;
mod names;
pub mod plan;
mod problem;
mod selector;
mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;

pub use self::envoy::{ads_config_source, any, san_exact, socket_address, tls_transport_socket};
pub use self::names::{cluster_name, listener_name};
pub use self::plan::ClientMatcher;
use self::plan::Plan;
pub use self::problem::{Problem, Reason};
use crate::api::Labels;
use crate::model::{Model, ObjectKey, RedisClusterObject};

/// Compiled Envoy resources for every accepted object, and the problems of the others.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Compiled {
    /// Envoy clusters by name.
    pub clusters: imbl::OrdMap<String, Arc<CompiledCluster>>,
    /// Envoy listeners by name.
    pub listeners: imbl::OrdMap<String, Arc<CompiledListener>>,
    /// Why objects were left out, sorted by object then field.
    pub problems: Vec<Problem>,
    /// Outcome per RedisCluster, for status and the debug view.
    pub objects: imbl::OrdMap<ObjectKey, Outcome>,
    /// Per-object work, for the next [`recompile`].
    memory: Memory,
}

/// What a compile did for one RedisCluster.
#[derive(Clone, Debug)]
struct Entry {
    plan: Result<Arc<Plan>, Arc<[Problem]>>,
    /// Its Envoy resources, once it was accepted.
    built: Option<Built>,
    /// Where each reference of its listener points among the objects of the model, in
    /// key order (`None`: no such object). Valid while the model has the same keys.
    targets: Arc<[Option<usize>]>,
    /// Whether it was accepted.
    accepted: bool,
    /// The object it was compiled from: the very allocation in the model of that compile,
    /// so that the next recompile pairs the two without comparing keys.
    object: Arc<RedisClusterObject>,
}

/// One object in a recompile: its entry in the compile before, with the object it was
/// compiled from, and its new entry when anything about it differs.
struct Slot<'a> {
    was: Option<(&'a Arc<RedisClusterObject>, &'a Entry)>,
    entry: std::borrow::Cow<'a, Entry>,
}

impl Slot<'_> {
    /// Whether the entry is the one before, as it was.
    fn reused(&self) -> bool {
        matches!(self.entry, std::borrow::Cow::Borrowed(_))
    }
}

/// Per-object work of a compile. Not part of its value: compiles of one model are equal
/// whatever they reused.
#[derive(Clone, Default)]
struct Memory(imbl::OrdMap<ObjectKey, Entry>);

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

// Equality is reflexive for both: the compiler never puts a NaN in a message. With `Eq`,
// comparing two `Arc`s of them first compares the pointers, so that comparing compiles
// that share most of their resources (`imbl::OrdMap::diff`) does not compare those
// resources field by field.
impl Eq for CompiledCluster {}
impl Eq for CompiledListener {}

/// How one RedisCluster fared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Compiled and served.
    pub accepted: bool,
    /// Resolved endpoints (draining ones aside), also for objects that are not accepted.
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
    /// Takes an object's resources out of the output.
    fn withdraw(&mut self, (cluster, listener): &Built) {
        self.clusters.remove(&cluster.cluster.name);
        if let Some(l) = listener {
            self.listeners.remove(&l.listener.name);
        }
    }

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
    let objects: Vec<(&ObjectKey, &Arc<RedisClusterObject>)> =
        model.redis_clusters.iter().collect();
    // Every map here is ordered by object key, so the previous compile's work is found by
    // walking both in step rather than by a lookup per object.
    let changed = previous.map(|(before, _)| changed_namespaces(before, model));
    let mut out = previous.map_or_else(Compiled::default, |(_, c)| Compiled {
        problems: Vec::new(),
        ..c.clone()
    });
    // The previous model in step with its compile's memory. The pair must be a model and
    // its own compile (the same keys, checked as the walk goes); anything else reuses
    // nothing.
    if let Some((m, c)) = previous
        && m.redis_clusters.len() != c.memory.0.len()
    {
        return recompile(model, None);
    }
    let mismatch = std::cell::Cell::new(false);
    let mut before = previous.map(|(m, c)| {
        m.redis_clusters
            .iter()
            .zip(c.memory.0.iter())
            .map(|((k, obj), (ck, e))| {
                if !Arc::ptr_eq(&e.object, obj) && k != ck {
                    mismatch.set(true);
                }
                (k, obj, e)
            })
            .peekable()
    });
    // Whether the model has exactly the keys of the one before, so that references
    // resolved then still point to the same objects.
    let mut same_keys = previous.is_some_and(|(m, _)| m.redis_clusters.len() == objects.len());
    let mut gone: Vec<(&ObjectKey, &Entry)> = Vec::new();
    let mut slots: Vec<Slot> = Vec::with_capacity(objects.len());
    for (key, obj) in &objects {
        let mut was = None;
        if let Some(b) = before.as_mut() {
            while let Some((k, old, e)) = b.peek().copied() {
                // An object the source left as it was is the same allocation: equal keys
                // without comparing them (which, over every object, would mostly be cache
                // misses).
                let order = if Arc::ptr_eq(old, obj) {
                    std::cmp::Ordering::Equal
                } else {
                    k.cmp(key)
                };
                match order {
                    std::cmp::Ordering::Less => {
                        same_keys = false;
                        gone.push((k, e));
                        b.next();
                    }
                    std::cmp::Ordering::Equal => {
                        was = Some((old, e));
                        b.next();
                        break;
                    }
                    std::cmp::Ordering::Greater => break,
                }
            }
            same_keys &= was.is_some();
        }
        // Sources publish an object that did not change as the very allocation of the
        // model before: then its spec is not compared.
        let unchanged = was.is_some_and(|(old, _)| {
            (Arc::ptr_eq(old, obj) || old.spec == obj.spec)
                && !changed
                    .as_ref()
                    .is_some_and(|c| c.contains(key.namespace.as_str()))
        });
        let entry = match was {
            Some((_, e)) if unchanged => std::borrow::Cow::Borrowed(e),
            _ => std::borrow::Cow::Owned(judge(obj, model)),
        };
        slots.push(Slot { was, entry });
    }
    if let Some(b) = before {
        for (k, _, e) in b {
            same_keys = false;
            gone.push((k, e));
        }
    }
    if mismatch.get() {
        return recompile(model, None);
    }
    // Resolve references: kept from the compile before while the keys are the same.
    for slot in &mut slots {
        if slot.reused() && same_keys {
            continue;
        }
        let Ok(plan) = &slot.entry.plan else { continue };
        let Some(l) = &plan.listener else { continue };
        let targets = l
            .refs
            .iter()
            .map(|r| objects.binary_search_by(|(k, _)| (*k).cmp(&r.target)).ok())
            .collect();
        slot.entry.to_mut().targets = targets;
    }

    // The checks of references and ports depend on each object's standing on its own, its
    // references, its listener's address, port and clients, and its age. When none of
    // those changed for any object (the usual change: endpoints, timeouts, routes to the
    // same clusters), the compile before already decided them; running them again would
    // read every plan.
    let relations_as_before = same_keys
        && slots.iter().zip(&objects).all(|(slot, (_, obj))| {
            slot.was.is_some_and(|(old, was)| {
                (Arc::ptr_eq(old, obj) || old.age_key() == obj.age_key())
                    && (slot.reused() || same_relations(was, &slot.entry))
            })
        });
    let (accepted, mut problems) = match previous {
        Some((_, before)) if relations_as_before => {
            let accepted: Vec<bool> = slots
                .iter()
                .map(|s| s.was.is_some_and(|(_, e)| e.accepted))
                .collect();
            // The problems before, with those of each object compiled again on its own
            // replaced by its new ones.
            let again: BTreeSet<&ObjectKey> = slots
                .iter()
                .zip(&objects)
                .filter(|(slot, _)| !slot.reused())
                .map(|(_, (key, _))| *key)
                .collect();
            let mut problems: Vec<Problem> = before
                .problems
                .iter()
                .filter(|p| relational(p.reason) || !again.contains(&p.object))
                .cloned()
                .collect();
            for slot in slots.iter().filter(|slot| !slot.reused()) {
                if let Err(ps) = &slot.entry.plan {
                    problems.extend(ps.iter().cloned());
                }
            }
            (accepted, problems)
        }
        _ => {
            let mut problems: Vec<Problem> = Vec::new();
            let judged: Vec<Judged> = slots
                .iter()
                .map(|slot| match &slot.entry.plan {
                    Ok(plan) => (Some(&**plan), &*slot.entry.targets),
                    Err(ps) => {
                        problems.extend(ps.iter().cloned());
                        (None, &[][..])
                    }
                })
                .collect();
            let mut accepted: Vec<bool> = judged.iter().map(|(plan, _)| plan.is_some()).collect();
            reject_broken_references(&objects, &judged, &mut accepted, &mut problems);
            if reject_port_conflicts(&objects, &judged, &mut accepted, &mut problems) {
                // A loser may be someone's target.
                reject_broken_references(&objects, &judged, &mut accepted, &mut problems);
            }
            (accepted, problems)
        }
    };

    for (((key, obj), mut slot), accepted) in objects.iter().zip(slots).zip(accepted) {
        // Nothing to do for an object whose compile is the one before, as it was.
        if let Some((old, e)) = slot.was
            && slot.reused()
            && e.accepted == accepted
            && (e.built.is_some() || !accepted)
            && Arc::ptr_eq(&e.object, obj)
            && (Arc::ptr_eq(old, obj) || old.generation == obj.generation)
        {
            continue;
        }
        let was = slot.was.map(|(_, e)| e);
        let entry = slot.entry.to_mut();
        entry.accepted = accepted;
        entry.object = Arc::clone(obj);
        if accepted && let Ok(plan) = &entry.plan {
            entry.built.get_or_insert_with(|| build(plan));
        }
        let shown = |e: &Entry| e.built.clone().filter(|_| e.accepted);
        let (now, then) = (shown(entry), was.and_then(shown));
        if !same_built(&now, &then) {
            if let Some(then) = &then {
                out.withdraw(then);
            }
            if let Some((cluster, listener)) = now {
                out.clusters.insert(cluster.cluster.name.clone(), cluster);
                if let Some(l) = listener {
                    out.listeners.insert(l.listener.name.clone(), l);
                }
            }
        }
        let outcome = Outcome {
            accepted,
            endpoints: match &entry.plan {
                Ok(p) => plan::serving(&p.endpoints),
                Err(_) => plan::endpoint_count(obj, model),
            },
            generation: obj.generation,
        };
        if out.objects.get(*key) != Some(&outcome) {
            out.objects.insert((*key).clone(), outcome);
        }
        out.memory.0.insert((*key).clone(), slot.entry.into_owned());
    }
    for (key, entry) in gone {
        out.objects.remove(key);
        out.memory.0.remove(key);
        if entry.accepted
            && let Some(built) = &entry.built
        {
            out.withdraw(built);
        }
    }
    problems.sort();
    problems.dedup();
    out.problems = problems;
    out
}

/// Whether the reference and port checks see two entries alike.
fn same_relations(a: &Entry, b: &Entry) -> bool {
    match (&a.plan, &b.plan) {
        (Ok(a_plan), Ok(b_plan)) => match (&a_plan.listener, &b_plan.listener) {
            (None, None) => a_plan.mode == b_plan.mode && same_redirect_only(a_plan, b_plan),
            (Some(x), Some(y)) => {
                // A target's mode decides whether this listener can serve it.
                a_plan.mode == b_plan.mode
                    && same_redirect_only(a_plan, b_plan)
                    && x.enable_redirection == y.enable_redirection
                    && x.refs == y.refs
                    && x.port == y.port
                    && x.address == y.address
                    && x.clients == y.clients
                    && a.targets == b.targets
            }
            _ => false,
        },
        (Err(_), Err(_)) => true,
        _ => false,
    }
}

/// Whether the two plans agree on the topology settings that need a listener following
/// redirections (checked across objects).
fn same_redirect_only(a: &Plan, b: &Plan) -> bool {
    a.topology.redirect_only_field() == b.topology.redirect_only_field()
}

/// Problems that the reference and port checks find (the others an object has on its own).
fn relational(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::RefNotFound
            | Reason::RefNotAccepted
            | Reason::PortConflict
            | Reason::RefIncompatible
    )
}

/// The Envoy resources of one object: its cluster and, when it has one, its listener.
type Built = (Arc<CompiledCluster>, Option<Arc<CompiledListener>>);

fn same_built(a: &Option<Built>, b: &Option<Built>) -> bool {
    match (a, b) {
        (Some((ac, al)), Some((bc, bl))) => {
            Arc::ptr_eq(ac, bc)
                && match (al, bl) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                }
        }
        (None, None) => true,
        _ => false,
    }
}

/// Step 1 for one object: its plan, and its Envoy resources checked against Envoy's own
/// validation rules. A resource Envoy would refuse makes the object a problem here, so that
/// it is left out (and its referrers with it) before anything is sent.
fn judge(obj: &Arc<RedisClusterObject>, model: &Model) -> Entry {
    let (plan, built) = match plan::plan(obj, model) {
        Ok(plan) => {
            let built = build(&plan);
            match check_built(&built) {
                Ok(()) => (Ok(Arc::new(plan)), Some(built)),
                Err(v) => {
                    let problem = Problem {
                        object: obj.key.clone(),
                        field: v.spec_field(),
                        reason: Reason::Invalid,
                        message: v.message(),
                    };
                    (Err(Arc::from([problem])), None)
                }
            }
        }
        Err(problems) => (Err(Arc::from(problems)), None),
    };
    Entry {
        plan,
        built,
        targets: Arc::from([]),
        accepted: false,
        object: Arc::clone(obj),
    }
}

/// The first of an object's resources that Envoy would refuse.
fn check_built((cluster, listener): &Built) -> Result<(), validate::Violation> {
    validate::check(&cluster.cluster)?;
    if let Some(endpoints) = &cluster.endpoints {
        validate::check(endpoints)?;
    }
    if let Some(l) = listener {
        validate::check(&l.listener)?;
    }
    Ok(())
}

fn build(plan: &Plan) -> Built {
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

/// An object as the relation checks see it: its plan, when it has one on its own, and where
/// its listener's references point.
type Judged<'a> = (Option<&'a Plan>, &'a [Option<usize>]);

/// Drops plans whose listener refers to a RedisCluster that is missing, not accepted or
/// that the listener cannot serve, and objects whose redirect refresh no listener would
/// trigger, until no more drop out.
fn reject_broken_references(
    objects: &[(&ObjectKey, &Arc<RedisClusterObject>)],
    judged: &[Judged],
    accepted: &mut [bool],
    problems: &mut Vec<Problem>,
) {
    loop {
        let mut rejected = Vec::new();
        for (i, (plan, targets)) in judged.iter().enumerate() {
            if !accepted[i] {
                continue;
            }
            let Some(l) = plan.and_then(|p| p.listener.as_ref()) else {
                continue;
            };
            debug_assert_eq!(l.refs.len(), targets.len(), "references resolved");
            let key = objects[i].0;
            let mut own = Vec::new();
            for (r, target) in l.refs.iter().zip(targets.iter()) {
                let (reason, message) = match *target {
                    // One pool serves every target of a listener with the listener's
                    // settings: without redirection, a Redis Cluster's MOVED replies reach
                    // the client.
                    Some(t)
                        if t != i
                            && accepted[t]
                            && !l.enable_redirection
                            && plan.is_some_and(|p| p.mode == crate::api::Mode::Sharded)
                            && judged[t]
                                .0
                                .is_some_and(|p| p.mode == crate::api::Mode::Cluster) =>
                    {
                        (
                            Reason::RefIncompatible,
                            format!(
                                "RedisCluster {:?} is a Redis Cluster (mode Cluster), and this mode Sharded listener does not follow MOVED/ASK (enableRedirection is false, the default in mode Sharded): a resharding or failover would hand clients MOVED and ASK errors; set spec.listener.enableRedirection: true",
                                display_ref(key, &r.target)
                            ),
                        )
                    }
                    Some(t) if t == i || accepted[t] => continue,
                    None => (
                        Reason::RefNotFound,
                        format!("RedisCluster {:?} not found", display_ref(key, &r.target)),
                    ),
                    Some(_) => (
                        Reason::RefNotAccepted,
                        format!(
                            "RedisCluster {:?} is not accepted; fix its problems first",
                            display_ref(key, &r.target)
                        ),
                    ),
                };
                own.push(Problem {
                    object: key.clone(),
                    field: r.field.clone(),
                    reason,
                    message,
                });
            }
            if !own.is_empty() {
                rejected.push((i, own));
            }
        }
        rejected.extend(reject_unfollowed_redirect_refresh(
            objects, judged, accepted,
        ));
        if rejected.is_empty() {
            return;
        }
        for (i, mut own) in rejected {
            accepted[i] = false;
            problems.append(&mut own);
        }
    }
}

/// The accepted objects whose redirect-triggered topology refresh would never fire: a
/// listener routes to them (their own, or another's route, catch-all or mirror), and none
/// of those listeners follows MOVED/ASK. Envoy's cluster counts only the redirections a
/// pool follows, so `redirectRefreshThreshold` (and an interval used by nothing else) would
/// be silently ignored. An object no listener routes to is sent to no proxy and is left
/// alone.
fn reject_unfollowed_redirect_refresh(
    objects: &[(&ObjectKey, &Arc<RedisClusterObject>)],
    judged: &[Judged],
    accepted: &[bool],
) -> Vec<(usize, Vec<Problem>)> {
    let wants: Vec<usize> = (0..judged.len())
        .filter(|&i| {
            accepted[i]
                && judged[i]
                    .0
                    .is_some_and(|p| p.topology.redirect_only_field().is_some())
        })
        .collect();
    if wants.is_empty() {
        return Vec::new();
    }
    // For each object: (a listener routes to it, one of them follows redirections).
    let mut routed = vec![(false, false); judged.len()];
    for (i, (plan, targets)) in judged.iter().enumerate() {
        if !accepted[i] {
            continue;
        }
        let Some(l) = plan.and_then(|p| p.listener.as_ref()) else {
            continue;
        };
        for t in targets.iter().flatten() {
            let r = &mut routed[*t];
            r.0 = true;
            r.1 |= l.enable_redirection;
        }
    }
    wants
        .into_iter()
        .filter(|&i| routed[i] == (true, false))
        .filter_map(|i| {
            let field = judged[i].0?.topology.redirect_only_field()?;
            Some((
                i,
                vec![Problem {
                    object: objects[i].0.clone(),
                    field: field.to_owned(),
                    reason: Reason::RefIncompatible,
                    message: "no listener that routes to this RedisCluster follows MOVED/ASK (enableRedirection is false on each), and Envoy counts only the redirections a listener follows, so this would never trigger a refresh: remove it, or set enableRedirection: true on a listener that routes here".to_owned(),
                }],
            ))
        })
        .collect()
}

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
    objects: &[(&ObjectKey, &Arc<RedisClusterObject>)],
    judged: &[Judged],
    accepted: &mut [bool],
    problems: &mut Vec<Problem>,
) -> bool {
    // Only listeners on the same port can clash: ordered by port, then oldest first, each
    // is checked against the older winners on its port only, so this is linear in the
    // number of listeners (after the sort), not quadratic.
    let mut listeners: Vec<_> = judged
        .iter()
        .enumerate()
        .filter(|(i, _)| accepted[*i])
        .filter_map(|(i, (plan, _))| {
            let l = plan.and_then(|p| p.listener.as_ref())?;
            Some((l.port, objects[i].1.age_key(), i, l))
        })
        .collect();
    listeners.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut losers = Vec::new();
    for same_port in listeners.chunk_by(|a, b| a.0 == b.0) {
        let mut winners: Vec<(usize, &plan::ListenerPlan)> = Vec::new();
        for &(_, _, i, l) in same_port {
            let clash = winners.iter().find(|(_, wl)| {
                same_socket(wl.address, l.address) && wl.clients.may_overlap(&l.clients)
            });
            match clash {
                // redis-xds's own policy (the older object keeps the port), not a claim
                // about Envoy: nothing to show on it.
                Some((w, _)) => losers.push((i, Problem {
                    object: objects[i].0.clone(),
                    field: "spec.listener.port".into(),
                    reason: Reason::PortConflict,
                    message: format!(
                        "{}:{} is already taken on the same proxies by the older RedisCluster {}; choose another port or address, or make listener.clients disjoint",
                        l.address, l.port, objects[*w].0
                    ),
                })),
                None => winners.push((i, l)),
            }
        }
    }
    let rejected = !losers.is_empty();
    for (i, p) in losers {
        accepted[i] = false;
        problems.push(p);
    }
    rejected
}

fn same_socket(a: std::net::IpAddr, b: std::net::IpAddr) -> bool {
    a == b || (a.is_ipv4() == b.is_ipv4() && (a.is_unspecified() || b.is_unspecified()))
}
