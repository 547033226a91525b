//! Snapshots: compiled resources, each encoded once per version and shared by every stream.
//!
//! Built by the publisher after every compile. Resource versions are content hashes, and a
//! resource whose bytes did not change keeps the very same allocation as in the previous
//! snapshot, so unchanged resources cost neither memory nor pushes. Per-proxy views are
//! computed once per distinct identity (namespace and labels), not once per connection.

pub mod publish;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use imbl::ordmap::DiffItem;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::compile::{Compiled, CompiledListener};
use crate::model::Model;
use crate::xds::{NodeIdentity, ProxyResources, Resource, ResourceMap, ResourceSource};

/// Shorter values are not searched for in text: replacing one or two characters everywhere
/// would destroy messages without protecting anything.
const MIN_REDACTED_LEN: usize = 4;

#[derive(Clone, Debug)]
struct ListenerEntry {
    compiled: Arc<CompiledListener>,
    resource: Arc<Resource>,
}

/// What changed since the snapshot before: a view of this snapshot is the view before with
/// the change applied.
#[derive(Debug, Default)]
struct Change {
    /// Listeners added, removed, or changed in content or in the proxies they select.
    listeners: Vec<String>,
    /// Clusters whose cluster or endpoints were added, removed or changed.
    clusters: Vec<String>,
}

/// One published state of the world.
#[derive(Debug)]
pub struct Snapshot {
    clusters: ResourceMap,
    endpoints: ResourceMap,
    listeners: imbl::OrdMap<String, ListenerEntry>,
    views: Mutex<Views>,
    change: Change,
    /// The model it was compiled from, for the debug views.
    pub model: Arc<Model>,
    /// The compile output it was built from, for the debug views and status.
    pub compiled: Arc<Compiled>,
    /// Every secret value of the model, longest first, for [`ResourceSource::redact`].
    secrets: Vec<String>,
    /// When the model change that led to this snapshot was first observed.
    pub observed_at: Instant,
    /// Whether the source had read everything when this was built; proxies are not served
    /// from a snapshot that is not ready.
    pub ready: bool,
}

fn version(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn resource(
    name: &str,
    body: Vec<u8>,
    clusters: Vec<String>,
    previous: Option<&Arc<Resource>>,
) -> Arc<Resource> {
    if let Some(prev) = previous
        && prev.body.as_ref() == body.as_slice()
        && prev.clusters == clusters
    {
        return Arc::clone(prev);
    }
    Arc::new(Resource {
        name: name.to_owned(),
        version: version(&body),
        body: Bytes::from(body),
        clusters,
        declared: false,
    })
}

/// Calls `f` with the name and the new value (`None`: gone) of every entry that is not the
/// very same allocation in `after` as in `before`. The compiler builds each compile from
/// the one before, so the two maps share every node the change did not touch, and this
/// costs what changed.
fn changes<'a, V: Eq>(
    before: &'a imbl::OrdMap<String, Arc<V>>,
    after: &'a imbl::OrdMap<String, Arc<V>>,
    mut f: impl FnMut(&'a String, Option<&'a Arc<V>>),
) {
    for item in before.diff(after) {
        match item {
            DiffItem::Add(name, now) => f(name, Some(now)),
            DiffItem::Update {
                old: (_, was),
                new: (name, now),
            } if !Arc::ptr_eq(was, now) => f(name, Some(now)),
            DiffItem::Update { .. } => {}
            DiffItem::Remove(name, _) => f(name, None),
        }
    }
}

/// The views of a snapshot by identity, and those of the snapshot before that were not
/// updated yet: each is taken out when its update is computed, so that the views before
/// are not kept for longer than needed.
#[derive(Debug, Default)]
struct Views {
    now: HashMap<NodeIdentity, Arc<ProxyResources>>,
    before: HashMap<NodeIdentity, Arc<ProxyResources>>,
}

impl Snapshot {
    /// Encodes a compile output, reusing the resources of `previous` that did not change.
    /// The snapshot starts as a copy of `previous` (which costs nothing: its maps are
    /// persistent) and only what the compile changed is encoded and replaced.
    pub fn build(
        model: Arc<Model>,
        compiled: Arc<Compiled>,
        previous: Option<&Snapshot>,
        observed_at: Instant,
    ) -> Snapshot {
        let empty = Compiled::default();
        let (mut clusters, mut endpoints, mut listeners, before) = match previous {
            Some(p) => (
                p.clusters.clone(),
                p.endpoints.clone(),
                p.listeners.clone(),
                &*p.compiled,
            ),
            None => (
                ResourceMap::new(),
                ResourceMap::new(),
                imbl::OrdMap::new(),
                &empty,
            ),
        };
        let mut change = Change::default();
        // A compiled resource that is the very allocation of the previous compile (the
        // compiler reused it) keeps its encoded resource without being encoded again.
        changes(&before.clusters, &compiled.clusters, |name, now| {
            let cluster = now.map(|c| {
                resource(
                    name,
                    c.cluster.encode_to_vec(),
                    Vec::new(),
                    clusters.get(name),
                )
            });
            let cla = now
                .and_then(|c| c.endpoints.as_ref())
                .map(|cla| resource(name, cla.encode_to_vec(), Vec::new(), endpoints.get(name)));
            let same = |map: &ResourceMap, r: &Option<Arc<Resource>>| match (map.get(name), r) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if same(&clusters, &cluster) && same(&endpoints, &cla) {
                return;
            }
            change.clusters.push(name.clone());
            for (map, r) in [(&mut clusters, cluster), (&mut endpoints, cla)] {
                match r {
                    Some(r) => map.insert(name.clone(), r),
                    None => map.remove(name),
                };
            }
        });
        changes(&before.listeners, &compiled.listeners, |name, now| {
            change.listeners.push(name.clone());
            let Some(l) = now else {
                listeners.remove(name);
                return;
            };
            let prev = listeners.get(name).map(|e: &ListenerEntry| &e.resource);
            let resource = resource(
                name,
                l.listener.encode_to_vec(),
                l.clusters.iter().cloned().collect(),
                prev,
            );
            listeners.insert(
                name.clone(),
                ListenerEntry {
                    compiled: Arc::clone(l),
                    resource,
                },
            );
        });
        let before = previous.map_or_else(HashMap::new, |p| p.lock_views().now.clone());
        let mut secrets: Vec<String> = model
            .secrets
            .values()
            .flat_map(|s| s.data.values())
            .filter_map(|v| std::str::from_utf8(v.expose()).ok())
            .filter(|v| v.len() >= MIN_REDACTED_LEN)
            .map(str::to_owned)
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Snapshot {
            clusters,
            endpoints,
            listeners,
            views: Mutex::new(Views {
                now: HashMap::new(),
                before,
            }),
            change,
            model,
            compiled,
            secrets,
            observed_at,
            ready: true,
        }
    }

    fn lock_views(&self) -> std::sync::MutexGuard<'_, Views> {
        // Every update is one insert or remove: a poisoned lock is still consistent.
        self.views.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn selects(entry: &ListenerEntry, node: &NodeIdentity) -> bool {
        entry
            .compiled
            .clients
            .selects(node.namespace.as_deref(), node.labels.as_ref())
    }

    /// The view of a proxy, from nothing.
    fn compute(&self, node: &NodeIdentity) -> ProxyResources {
        let mut view = ProxyResources::default();
        for (name, e) in &self.listeners {
            if Self::selects(e, node) {
                view.listeners.insert(name.clone(), Arc::clone(&e.resource));
                for c in &e.resource.clusters {
                    *view.uses.entry(c.clone()).or_default() += 1;
                }
            }
        }
        for c in view.uses.keys() {
            if let Some(r) = self.clusters.get(c) {
                view.clusters.insert(c.clone(), Arc::clone(r));
            }
            if let Some(r) = self.endpoints.get(c) {
                view.endpoints.insert(c.clone(), Arc::clone(r));
            }
        }
        view
    }

    /// The view of a proxy: its view of the snapshot before with the change applied.
    fn update(&self, before: &ProxyResources, node: &NodeIdentity) -> ProxyResources {
        let mut view = ProxyResources {
            clusters: before.clusters.clone(),
            endpoints: before.endpoints.clone(),
            listeners: before.listeners.clone(),
            uses: before.uses.clone(),
            ..Default::default()
        };
        // Clusters whose place in the view may differ: those that changed, and those the
        // changed listeners used before or use now.
        let mut touched: BTreeSet<String> = self.change.clusters.iter().cloned().collect();
        for name in &self.change.listeners {
            let old = if view.listeners.contains_key(name) {
                view.listeners.remove(name)
            } else {
                None
            };
            if let Some(old) = old {
                for c in &old.clusters {
                    let left = view.uses.get_mut(c).map(|n| {
                        *n -= 1;
                        *n
                    });
                    if left == Some(0) {
                        view.uses.remove(c);
                    }
                }
                touched.extend(old.clusters.iter().cloned());
            }
            if let Some(e) = self.listeners.get(name)
                && Self::selects(e, node)
            {
                view.listeners.insert(name.clone(), Arc::clone(&e.resource));
                for c in &e.resource.clusters {
                    *view.uses.entry(c.clone()).or_default() += 1;
                }
                touched.extend(e.resource.clusters.iter().cloned());
            }
        }
        for c in touched {
            let used = view.uses.contains_key(&c);
            for (mine, all) in [
                (&mut view.clusters, &self.clusters),
                (&mut view.endpoints, &self.endpoints),
            ] {
                // A removal copies the nodes on its path even when the name is absent, and
                // the view would stop sharing them with the one before.
                match all.get(&c).filter(|_| used) {
                    Some(r) if !mine.get(&c).is_some_and(|m| Arc::ptr_eq(m, r)) => {
                        mine.insert(c.clone(), Arc::clone(r));
                    }
                    None if mine.contains_key(&c) => {
                        mine.remove(&c);
                    }
                    _ => {}
                }
            }
        }
        view
    }
}

impl ResourceSource for Snapshot {
    fn resources_for(&self, node: &NodeIdentity) -> Arc<ProxyResources> {
        let mut views = self.lock_views();
        if let Some(v) = views.now.get(node) {
            return Arc::clone(v);
        }
        let view = Arc::new(match views.before.remove(node) {
            Some(before) => self.update(&before, node),
            None => self.compute(node),
        });
        views.now.insert(node.clone(), Arc::clone(&view));
        view
    }

    fn observed_at(&self) -> Instant {
        self.observed_at
    }

    fn is_ready(&self) -> bool {
        self.ready
    }

    fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), crate::protojson::REDACTED);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One RedisCluster of a generated model: absent, or with a route target, the
    /// namespaces its listener selects and a route prefix.
    type Shape = Option<(usize, u8, u8)>;

    fn shaped(shapes: &[Shape]) -> Model {
        let mut m = Model::default();
        for (i, shape) in shapes.iter().enumerate() {
            let Some((target, clients, prefix)) = *shape else {
                continue;
            };
            let namespaces = match clients {
                0 => serde_json::json!(null),
                1 => serde_json::json!(["a"]),
                2 => serde_json::json!(["b"]),
                _ => serde_json::json!(["a", "b"]),
            };
            let spec = serde_json::from_value(serde_json::json!({
                "endpoints": {"static": [format!("10.0.{prefix}.{}:6379", i + 1)]},
                "listener": {
                    "port": 10000 + i,
                    "clients": {"namespaces": namespaces},
                    "routes": [{"prefix": format!("p{prefix}:"), "cluster": format!("rc-{}", target % shapes.len())}],
                }
            }))
            .expect("a valid generated spec");
            let key = crate::model::ObjectKey::new("ns", format!("rc-{i}"));
            let object = crate::model::RedisClusterObject::new(key.clone(), spec, i as u64);
            m.redis_clusters.insert(key, object.into());
        }
        m
    }

    fn shape() -> impl Strategy<Value = Shape> {
        prop::option::weighted(0.8, (0..6usize, 0..4u8, 0..2u8))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A view updated from the change equals the view computed from nothing, whatever
        /// appears, goes, changes content or changes the proxies it selects.
        #[test]
        fn updated_views_equal_views_from_nothing(
            models in prop::collection::vec(prop::collection::vec(shape(), 6), 2..6)
        ) {
            let nodes: Vec<NodeIdentity> = [None, Some("a"), Some("b"), Some("c")]
                .into_iter()
                .map(|ns| NodeIdentity { namespace: ns.map(str::to_owned), labels: None })
                .collect();
            let mut before: Option<(Arc<Model>, Snapshot)> = None;
            for shapes in &models {
                let model = Arc::new(shaped(shapes));
                let compiled = Arc::new(crate::compile::recompile(
                    &model,
                    before.as_ref().map(|(m, s)| (&**m, &*s.compiled)),
                ));
                let snap = Snapshot::build(
                    Arc::clone(&model),
                    compiled,
                    before.as_ref().map(|(_, s)| s),
                    Instant::now(),
                );
                for node in &nodes {
                    let view = snap.resources_for(node);
                    prop_assert_eq!(&*view, &snap.compute(node), "{:?} in {:?}", node, shapes);
                }
                before = Some((model, snap));
            }
        }
    }

    #[test]
    fn should_build_from_a_recompile_what_a_build_from_scratch_holds() {
        let a = Arc::new(crate::app::bench::model(5, 0));
        let ca = Arc::new(crate::compile::compile(&a));
        let sa = Snapshot::build(Arc::clone(&a), ca.clone(), None, Instant::now());
        // Only rc-0's route changes.
        let b = crate::app::bench::model(5, 1);
        let cb = Arc::new(crate::compile::recompile(&b, Some((&a, &ca))));
        let b = Arc::new(b);
        let sb = Snapshot::build(Arc::clone(&b), cb, Some(&sa), Instant::now());
        let scratch = Snapshot::build(
            Arc::clone(&b),
            Arc::new(crate::compile::compile(&b)),
            None,
            Instant::now(),
        );
        assert_eq!(sb.clusters, scratch.clusters);
        assert_eq!(sb.endpoints, scratch.endpoints);
        let listeners = |s: &Snapshot| -> ResourceMap {
            s.listeners
                .iter()
                .map(|(n, e)| (n.clone(), Arc::clone(&e.resource)))
                .collect()
        };
        assert_eq!(listeners(&sb), listeners(&scratch));
        // What did not change is the very allocation of the snapshot before.
        let before = listeners(&sa);
        let changed: Vec<&String> = before
            .iter()
            .filter(|(n, r)| !Arc::ptr_eq(r, &sb.listeners[*n].resource))
            .map(|(n, _)| n)
            .collect();
        assert_eq!(changed.len(), 1, "{changed:?}");
        assert!(changed[0].starts_with("redis/bench/rc-0@"), "{changed:?}");
        for (n, r) in &sa.clusters {
            assert!(Arc::ptr_eq(r, &sb.clusters[n]), "{n} encoded again");
        }
    }

    #[test]
    fn should_leave_a_view_the_change_does_not_touch_as_it_was() {
        // rc-0 selects namespace a, rc-1 namespace b; only rc-0 changes (its route prefix and
        // its endpoint).
        let build = |prefix: u8, before: Option<&Snapshot>| {
            let model = Arc::new(shaped(&[Some((1, 1, prefix)), Some((1, 2, 0))]));
            let compiled = Arc::new(crate::compile::recompile(
                &model,
                before.map(|s| (&*s.model, &*s.compiled)),
            ));
            Snapshot::build(model, compiled, before, Instant::now())
        };
        let node = |ns: &str| NodeIdentity {
            namespace: Some(ns.to_owned()),
            labels: None,
        };
        let first = build(0, None);
        let (a, b) = (
            first.resources_for(&node("a")),
            first.resources_for(&node("b")),
        );
        let second = build(1, Some(&first));
        assert_eq!(second.lock_views().before.len(), 2);
        let b2 = second.resources_for(&node("b"));
        assert!(b.listeners.ptr_eq(&b2.listeners) && b.clusters.ptr_eq(&b2.clusters));
        assert!(b.uses.ptr_eq(&b2.uses) && b.endpoints.ptr_eq(&b2.endpoints));
        let a2 = second.resources_for(&node("a"));
        assert!(!a.listeners.ptr_eq(&a2.listeners) && !a.clusters.ptr_eq(&a2.clusters));
        assert_eq!(*a2, second.compute(&node("a")));
        // The views before are let go once updated.
        assert!(second.lock_views().before.is_empty());
    }

    #[test]
    fn should_reuse_unchanged_resources_and_cache_views_per_identity() {
        let compiled = Arc::new(crate::compile::compile(&Model::default()));
        let a = Snapshot::build(Arc::default(), Arc::clone(&compiled), None, Instant::now());
        let node = NodeIdentity::default();
        let v1 = a.resources_for(&node);
        let v2 = a.resources_for(&node);
        assert!(Arc::ptr_eq(&v1, &v2));
        let r1 = resource("x", vec![1, 2, 3], vec![], None);
        let r2 = resource("x", vec![1, 2, 3], vec![], Some(&r1));
        assert!(Arc::ptr_eq(&r1, &r2));
        let r3 = resource("x", vec![1, 2, 4], vec![], Some(&r1));
        assert_ne!(r1.version, r3.version);
    }

    #[test]
    fn should_redact_secret_values_from_proxy_messages() {
        let mut model = Model::default();
        let key = crate::model::ObjectKey::new("ns", "s");
        model.secrets.insert(
            key.clone(),
            crate::model::Secret {
                key,
                data: [
                    (
                        "password".to_string(),
                        crate::model::SecretValue::new("hunter22-long"),
                    ),
                    ("username".to_string(), crate::model::SecretValue::new("ab")),
                ]
                .into_iter()
                .collect(),
            },
        );
        let compiled = Arc::new(crate::compile::compile(&model));
        let snap = Snapshot::build(Arc::new(model), compiled, None, Instant::now());
        assert_eq!(
            snap.redact("auth_password: inline_string: \"hunter22-long\" rejected"),
            "auth_password: inline_string: \"[redacted]\" rejected"
        );
        assert_eq!(
            snap.redact("about ab"),
            "about ab",
            "too short to search for"
        );
    }
}
