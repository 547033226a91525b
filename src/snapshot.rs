//! Snapshots: compiled resources, each encoded once per version and shared by every stream.
//!
//! Built by the publisher after every compile. Resource versions are content hashes, and a
//! resource whose bytes did not change keeps the very same allocation as in the previous
//! snapshot, so unchanged resources cost neither memory nor pushes. Per-proxy views are
//! computed once per distinct identity (namespace and labels), not once per connection.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::compile::{Compiled, CompiledListener};
use crate::model::Model;
use crate::xds::{NodeIdentity, ProxyResources, Resource, ResourceMap, ResourceSource};

/// Shorter values are not searched for in text: replacing one or two characters everywhere
/// would destroy messages without protecting anything.
const MIN_REDACTED_LEN: usize = 4;

#[derive(Debug)]
struct ListenerEntry {
    compiled: Arc<CompiledListener>,
    resource: Arc<Resource>,
}

/// One published state of the world.
#[derive(Debug)]
pub struct Snapshot {
    clusters: ResourceMap,
    endpoints: ResourceMap,
    listeners: BTreeMap<String, ListenerEntry>,
    views: Mutex<HashMap<NodeIdentity, Arc<ProxyResources>>>,
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
    })
}

impl Snapshot {
    /// Encodes a compile output, reusing the resources of `previous` that did not change.
    pub fn build(
        model: Arc<Model>,
        compiled: Arc<Compiled>,
        previous: Option<&Snapshot>,
        observed_at: Instant,
    ) -> Snapshot {
        // A compiled resource that is the very allocation of the previous compile (the
        // compiler reused it) keeps its encoded resource without being encoded again.
        let mut clusters = ResourceMap::new();
        let mut endpoints = ResourceMap::new();
        for (name, c) in &compiled.clusters {
            let unchanged = previous
                .filter(|p| {
                    p.compiled
                        .clusters
                        .get(name)
                        .is_some_and(|pc| Arc::ptr_eq(pc, c))
                })
                .and_then(|p| {
                    let cluster = p.clusters.get(name)?;
                    let cla = match c.endpoints {
                        Some(_) => Some(p.endpoints.get(name)?),
                        None => None,
                    };
                    Some((cluster, cla))
                });
            if let Some((cluster, cla)) = unchanged {
                clusters.insert(name.clone(), Arc::clone(cluster));
                if let Some(cla) = cla {
                    endpoints.insert(name.clone(), Arc::clone(cla));
                }
                continue;
            }
            let prev = previous.and_then(|p| p.clusters.get(name));
            clusters.insert(
                name.clone(),
                resource(name, c.cluster.encode_to_vec(), Vec::new(), prev),
            );
            if let Some(cla) = &c.endpoints {
                let prev = previous.and_then(|p| p.endpoints.get(name));
                endpoints.insert(
                    name.clone(),
                    resource(name, cla.encode_to_vec(), Vec::new(), prev),
                );
            }
        }
        let mut listeners = BTreeMap::new();
        for (name, l) in &compiled.listeners {
            let prev = previous.and_then(|p| p.listeners.get(name));
            let resource = match prev {
                Some(e) if Arc::ptr_eq(&e.compiled, l) => Arc::clone(&e.resource),
                _ => resource(
                    name,
                    l.listener.encode_to_vec(),
                    l.clusters.iter().cloned().collect(),
                    prev.map(|e| &e.resource),
                ),
            };
            listeners.insert(
                name.clone(),
                ListenerEntry {
                    compiled: Arc::clone(l),
                    resource,
                },
            );
        }
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
            views: Mutex::new(HashMap::new()),
            model,
            compiled,
            secrets,
            observed_at,
            ready: true,
        }
    }

    fn compute(&self, node: &NodeIdentity) -> ProxyResources {
        let listeners: ResourceMap = self
            .listeners
            .iter()
            .filter(|(_, e)| {
                e.compiled
                    .clients
                    .selects(node.namespace.as_deref(), node.labels.as_ref())
            })
            .map(|(n, e)| (n.clone(), Arc::clone(&e.resource)))
            .collect();
        let used: BTreeSet<&String> = listeners.values().flat_map(|r| r.clusters.iter()).collect();
        let pick = |map: &ResourceMap| -> ResourceMap {
            used.iter()
                .filter_map(|n| map.get(*n).map(|r| ((*n).clone(), Arc::clone(r))))
                .collect()
        };
        ProxyResources {
            clusters: pick(&self.clusters),
            endpoints: pick(&self.endpoints),
            listeners,
            versions: Default::default(),
        }
    }
}

impl ResourceSource for Snapshot {
    fn resources_for(&self, node: &NodeIdentity) -> Arc<ProxyResources> {
        let mut views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = views.get(node) {
            return Arc::clone(v);
        }
        let view = Arc::new(self.compute(node));
        views.insert(node.clone(), Arc::clone(&view));
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

    #[test]
    fn should_build_from_a_recompile_what_a_build_from_scratch_holds() {
        let a = Arc::new(crate::bench::model(5, 0));
        let ca = Arc::new(crate::compile::compile(&a));
        let sa = Snapshot::build(Arc::clone(&a), ca.clone(), None, Instant::now());
        // Only rc-0's route changes.
        let b = crate::bench::model(5, 1);
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
