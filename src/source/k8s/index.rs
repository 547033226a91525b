//! The Kubernetes index: watch events in, one [`Model`] out.
//!
//! Fed by the watchers with `apply`, `delete` and `reset` (the full list after a (re)list)
//! per kind, it keeps the model current and publishes it on a `watch` channel. It talks to
//! no API server, so its tests feed it objects by hand.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::watch;

use crate::api::{Labels, RedisCluster};
use crate::model::{Model, ObjectKey, Origin};
use crate::source::convert;

/// The kinds the index follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// RedisCluster.
    RedisCluster,
    /// Pod.
    Pod,
    /// EndpointSlice.
    EndpointSlice,
    /// Secret.
    Secret,
    /// Service (Istio mode only: the ClusterIP names a sidecar's outbound listener).
    Service,
}

impl Kind {
    /// The kind's name, as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::RedisCluster => "RedisCluster",
            Kind::Pod => "Pod",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Secret => "Secret",
            Kind::Service => "Service",
        }
    }
}

/// Every kind, for readiness.
pub const KINDS: [Kind; 4] = [
    Kind::RedisCluster,
    Kind::Pod,
    Kind::EndpointSlice,
    Kind::Secret,
];

/// An object of one of the followed kinds.
#[derive(Clone, Debug)]
pub enum Object {
    /// A Secret that no RedisCluster references: only its name is kept, not its data
    /// (clusters hold thousands of Secrets, Helm's release Secrets of hundreds of KiB each).
    UnreferencedSecret(ObjectKey),
    /// A RedisCluster.
    RedisCluster(Box<RedisCluster>),
    /// A Pod.
    Pod(Box<Pod>),
    /// An EndpointSlice.
    EndpointSlice(Box<EndpointSlice>),
    /// A Secret.
    Secret(Box<Secret>),
    /// A Service.
    Service(Box<k8s_openapi::api::core::v1::Service>),
}

impl Object {
    fn kind(&self) -> Kind {
        match self {
            Object::RedisCluster(_) => Kind::RedisCluster,
            Object::Pod(_) => Kind::Pod,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Secret(_) | Object::UnreferencedSecret(_) => Kind::Secret,
            Object::Service(_) => Kind::Service,
        }
    }

    fn key(&self) -> ObjectKey {
        let metadata = match self {
            Object::UnreferencedSecret(key) => return key.clone(),
            Object::RedisCluster(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
        };
        convert::key(metadata)
    }
}

/// One copy of each label set the Pods carry, handed to every Pod that carries it. A
/// Deployment's replicas carry identical labels, and a cluster has tens of thousands of
/// Pods that no RedisCluster selects but that the index keeps (a RedisCluster created
/// later may select them), and each label map is hundreds of bytes on the heap.
#[derive(Debug, Default)]
struct LabelSets {
    sets: HashSet<Arc<Labels>>,
    /// How many sets were left by the last sweep of unused ones.
    swept_at: usize,
}

impl LabelSets {
    /// The shared copy of `labels`, made (one clone) if there is none yet. Sets no Pod
    /// uses any more are dropped whenever the table has doubled since the last sweep, so
    /// it holds at most about twice the sets in use.
    fn intern(&mut self, labels: &Labels) -> Arc<Labels> {
        if let Some(shared) = self.sets.get(labels) {
            return Arc::clone(shared);
        }
        if self.sets.len() >= 2 * self.swept_at.max(512) {
            self.sets.retain(|s| Arc::strong_count(s) > 1);
            self.swept_at = self.sets.len();
        }
        let shared = Arc::new(labels.clone());
        self.sets.insert(Arc::clone(&shared));
        shared
    }
}

/// The model built from watch events.
#[derive(Debug)]
pub struct Index {
    model: Model,
    seen: u64,
    first_seen: BTreeMap<ObjectKey, u64>,
    synced: BTreeSet<Kind>,
    /// The kinds followed: [`KINDS`], and Services in Istio mode.
    kinds: BTreeSet<Kind>,
    models: watch::Sender<Arc<Model>>,
    ready: watch::Sender<bool>,
    /// Secrets referenced by each RedisCluster (its namespace, the names under any
    /// `secretRef`/`*SecretRef` of its spec).
    references: BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// Every Secret referenced by some RedisCluster.
    referenced: BTreeSet<ObjectKey>,
    /// Secrets that exist but whose data is not kept.
    unloaded: BTreeSet<ObjectKey>,
    /// Where to ask for the data of a Secret that became referenced; without it (tests)
    /// every Secret's data is kept.
    fetch: Option<tokio::sync::mpsc::UnboundedSender<ObjectKey>>,
    /// The Pods' label sets, one copy each.
    label_sets: LabelSets,
}

impl Index {
    /// An empty index publishing on `models`; `ready` turns true once every kind finished
    /// its initial list.
    pub fn new(models: watch::Sender<Arc<Model>>, ready: watch::Sender<bool>) -> Self {
        Index {
            model: Model::default(),
            seen: 0,
            first_seen: BTreeMap::new(),
            synced: BTreeSet::new(),
            kinds: KINDS.into_iter().collect(),
            models,
            ready,
            references: BTreeMap::new(),
            referenced: BTreeSet::new(),
            unloaded: BTreeSet::new(),
            fetch: None,
            label_sets: LabelSets::default(),
        }
    }

    /// Follows Services too (Istio mode): the model waits for their first list as well.
    pub fn follow_services(&mut self) {
        self.kinds.insert(Kind::Service);
    }

    /// Keeps only referenced Secrets' data from now on, asking `fetch` for the data of a
    /// Secret that becomes referenced after it was seen unreferenced.
    pub fn trim_secrets(&mut self, fetch: tokio::sync::mpsc::UnboundedSender<ObjectKey>) {
        self.fetch = Some(fetch);
    }

    /// Whether the data of Secret `key` is wanted: always without trimming, else when a
    /// RedisCluster references it.
    pub fn wants_secret(&self, key: &ObjectKey) -> bool {
        self.fetch.is_none() || self.referenced.contains(key)
    }

    /// The answer to a fetch of Secret `key` (`None`: it does not exist). Applied only if
    /// no watch event brought its data meanwhile and it is still referenced.
    pub fn fetched(&mut self, key: &ObjectKey, secret: Option<&Secret>) {
        if !self.unloaded.contains(key) || !self.referenced.contains(key) {
            return;
        }
        self.unloaded.remove(key);
        if let Some(s) = secret {
            self.model.secrets.insert(key.clone(), convert::secret(s));
        }
        self.publish();
    }

    /// Recomputes the referenced Secrets after RedisCluster `key` changed: drops the data of
    /// Secrets no longer referenced, asks for the data of newly referenced ones.
    fn update_references(&mut self, key: &ObjectKey) {
        match self.model.redis_clusters.get(key) {
            Some(rc) => {
                let names = crate::api::secret_names(&rc.spec);
                self.references.insert(
                    key.clone(),
                    names
                        .into_iter()
                        .map(|name| ObjectKey::new(&key.namespace, &name))
                        .collect(),
                );
            }
            None => {
                self.references.remove(key);
            }
        }
        let now: BTreeSet<ObjectKey> = self.references.values().flatten().cloned().collect();
        let Some(fetch) = &self.fetch else {
            self.referenced = now;
            return;
        };
        for gone in self.referenced.difference(&now) {
            if self.model.secrets.remove(gone).is_some() {
                self.unloaded.insert(gone.clone());
            }
        }
        for new in now.difference(&self.referenced) {
            if self.unloaded.contains(new) {
                let _ = fetch.send(new.clone());
            }
        }
        self.referenced = now;
    }

    /// The current model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    fn insert(&mut self, obj: &Object) {
        let key = obj.key();
        match obj {
            Object::RedisCluster(rc) => {
                let seen = *self.first_seen.entry(key.clone()).or_insert_with(|| {
                    self.seen += 1;
                    self.seen
                });
                self.model.redis_clusters.insert(
                    key.clone(),
                    convert::redis_cluster(rc, seen, Origin::Kubernetes).into(),
                );
                self.update_references(&key);
            }
            Object::Pod(p) => {
                let labels = self
                    .label_sets
                    .intern(p.metadata.labels.as_ref().unwrap_or(&Labels::new()));
                self.model.pods.insert(key, convert::pod(p, labels));
            }
            Object::EndpointSlice(s) => match convert::endpoint_slice(s) {
                Some(slice) => {
                    self.model.endpoint_slices.insert(key, slice);
                }
                None => {
                    self.model.endpoint_slices.remove(&key);
                }
            },
            Object::Service(s) => {
                self.model.services.insert(key, convert::service(s));
            }
            Object::Secret(s) if self.wants_secret(&key) => {
                self.unloaded.remove(&key);
                self.model.secrets.insert(key, convert::secret(s));
            }
            Object::Secret(_) | Object::UnreferencedSecret(_) => {
                // Referenced meanwhile (the watcher judged it before a RedisCluster
                // naming it arrived): its data has to be fetched.
                if self.referenced.contains(&key)
                    && let Some(fetch) = &self.fetch
                {
                    let _ = fetch.send(key.clone());
                }
                self.model.secrets.remove(&key);
                self.unloaded.insert(key);
            }
        }
    }

    fn remove(&mut self, kind: Kind, key: &ObjectKey) {
        match kind {
            Kind::RedisCluster => {
                self.model.redis_clusters.remove(key);
                self.first_seen.remove(key);
                self.update_references(key);
            }
            Kind::Pod => {
                self.model.pods.remove(key);
            }
            Kind::EndpointSlice => {
                self.model.endpoint_slices.remove(key);
            }
            Kind::Secret => {
                self.model.secrets.remove(key);
                self.unloaded.remove(key);
            }
            Kind::Service => {
                self.model.services.remove(key);
            }
        }
    }

    /// An object was added or changed.
    pub fn apply(&mut self, obj: Object) {
        self.insert(&obj);
        self.publish();
    }

    /// An object was deleted.
    pub fn delete(&mut self, obj: &Object) {
        self.remove(obj.kind(), &obj.key());
        self.publish();
    }

    /// The complete list of one kind after a (re)list: objects missing from it were deleted
    /// while the watch was down.
    pub fn reset(&mut self, kind: Kind, objects: Vec<Object>) {
        let keep: BTreeSet<ObjectKey> = objects.iter().map(Object::key).collect();
        let stale: Vec<ObjectKey> = match kind {
            Kind::RedisCluster => self.model.redis_clusters.keys().cloned().collect(),
            Kind::Pod => self.model.pods.keys().cloned().collect(),
            Kind::EndpointSlice => self.model.endpoint_slices.keys().cloned().collect(),
            Kind::Secret => self
                .model
                .secrets
                .keys()
                .chain(&self.unloaded)
                .cloned()
                .collect(),
            Kind::Service => self.model.services.keys().cloned().collect(),
        };
        for key in stale.iter().filter(|k| !keep.contains(*k)) {
            self.remove(kind, key);
        }
        for obj in &objects {
            self.insert(obj);
        }
        if self.synced.insert(kind) && self.synced.is_superset(&self.kinds) {
            self.ready.send_replace(true);
        }
        self.publish();
    }

    fn publish(&self) {
        // Only once every kind was listed: a model without its Secrets or Pods would make
        // every RedisCluster look broken and withdraw listeners from the proxies.
        if !self.synced.is_superset(&self.kinds) {
            return;
        }
        // Nor while the data of a referenced Secret is being fetched: its RedisClusters would
        // look broken for a moment and their listeners be withdrawn.
        if self.referenced.iter().any(|k| self.unloaded.contains(k)) {
            return;
        }
        crate::model::publish_if_changed(&self.models, &self.model);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn meta(ns: &str, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            labels: (!labels.is_empty()).then(|| {
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }),
            ..Default::default()
        }
    }

    fn mk_pod(ns: &str, name: &str, app: &str, ip: &str, ready: bool) -> Object {
        Object::Pod(Box::new(Pod {
            metadata: meta(ns, name, &[("app", app)]),
            status: Some(PodStatus {
                pod_ip: Some(ip.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    fn mk_rc(ns: &str, name: &str, app: &str) -> Object {
        mk_rc_in_mode(ns, name, app, "Cluster")
    }

    fn mk_rc_in_mode(ns: &str, name: &str, app: &str, mode: &str) -> Object {
        let spec: crate::api::RedisClusterSpec = serde_json::from_value(serde_json::json!({
            "mode": mode,
            "endpoints": {"selector": {"matchLabels": {"app": app}}},
            "listener": {"port": 6379}
        }))
        .unwrap();
        let mut rc = RedisCluster::new(name, spec);
        rc.metadata.namespace = Some(ns.into());
        Object::RedisCluster(Box::new(rc))
    }

    fn mk_secret(ns: &str, name: &str, password: &str) -> Object {
        Object::Secret(Box::new(Secret {
            metadata: meta(ns, name, &[]),
            string_data: Some(
                [("password".to_string(), password.to_string())]
                    .into_iter()
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    fn mk_rc_with_auth(ns: &str, name: &str, secret: &str) -> Object {
        let spec: crate::api::RedisClusterSpec = serde_json::from_value(serde_json::json!({
            "endpoints": {"static": ["10.0.0.5:6379"]},
            "auth": {"secretRef": {"name": secret}},
            "listener": {"port": 6379}
        }))
        .unwrap();
        let mut rc = RedisCluster::new(name, spec);
        rc.metadata.namespace = Some(ns.into());
        Object::RedisCluster(Box::new(rc))
    }

    fn full(o: &Object) -> &Secret {
        match o {
            Object::Secret(s) => s,
            _ => panic!("not a Secret"),
        }
    }

    #[test]
    fn should_keep_only_referenced_secrets_and_fetch_one_that_becomes_referenced() {
        let (mut idx, rx, _) = index();
        let (fetch, mut wanted) = tokio::sync::mpsc::unbounded_channel();
        idx.trim_secrets(fetch);
        let helm = mk_secret("shop", "sh.helm.release.v1.web.v1", "release-blob");
        let auth = mk_secret("shop", "orders-auth", "hunter2");
        let key = ObjectKey::new("shop", "orders-auth");
        // Listed before any RedisCluster names them: names only.
        assert!(!idx.wants_secret(&key));
        idx.reset(
            Kind::Secret,
            vec![
                Object::UnreferencedSecret(ObjectKey::new("shop", "sh.helm.release.v1.web.v1")),
                Object::UnreferencedSecret(key.clone()),
            ],
        );
        idx.reset(Kind::Pod, vec![]);
        idx.reset(Kind::EndpointSlice, vec![]);
        idx.reset(
            Kind::RedisCluster,
            vec![mk_rc_with_auth("shop", "orders", "orders-auth")],
        );
        // The RedisCluster names orders-auth: it is asked for, and nothing is published
        // until it arrives (orders would look broken without it).
        assert_eq!(wanted.try_recv().ok(), Some(key.clone()));
        assert!(
            wanted.try_recv().is_err(),
            "an unreferenced Secret was asked for"
        );
        assert!(
            rx.borrow().redis_clusters.is_empty(),
            "published without the Secret"
        );
        idx.fetched(&key, Some(full(&auth)));
        let model = rx.borrow().clone();
        assert_eq!(model.redis_clusters.len(), 1);
        assert_eq!(
            model.secrets.keys().collect::<Vec<_>>(),
            vec![&key],
            "only the referenced Secret's data is kept"
        );
        // Its changes arrive whole; the Helm Secret's never stay.
        assert!(idx.wants_secret(&key));
        idx.apply(helm);
        assert!(
            !idx.model()
                .secrets
                .contains_key(&ObjectKey::new("shop", "sh.helm.release.v1.web.v1"))
        );
        // No longer referenced: its data goes; deleted, it is forgotten.
        idx.delete(&mk_rc_with_auth("shop", "orders", "orders-auth"));
        assert!(idx.model().secrets.is_empty());
        assert!(!idx.wants_secret(&key));
        idx.delete(&Object::UnreferencedSecret(key.clone()));
        idx.apply(mk_rc_with_auth("shop", "orders", "orders-auth"));
        assert!(wanted.try_recv().is_err(), "a deleted Secret was asked for");
        assert!(idx.model().redis_clusters.len() == 1);
    }

    fn index() -> (Index, watch::Receiver<Arc<Model>>, watch::Receiver<bool>) {
        let (models, rx) = watch::channel(Arc::new(Model::default()));
        let (ready, ready_rx) = watch::channel(false);
        (Index::new(models, ready), rx, ready_rx)
    }

    fn sync_all(idx: &mut Index) {
        for kind in KINDS {
            idx.reset(kind, Vec::new());
        }
    }

    #[test]
    fn should_publish_nothing_and_stay_unready_until_every_kind_was_listed() {
        let (mut idx, mut rx, ready) = index();
        idx.reset(Kind::RedisCluster, vec![mk_rc("shop", "orders", "redis")]);
        idx.reset(
            Kind::Pod,
            vec![mk_pod("shop", "redis-0", "redis", "10.0.0.1", true)],
        );
        idx.reset(Kind::EndpointSlice, vec![]);
        assert!(!rx.has_changed().unwrap());
        assert!(!*ready.borrow());
        idx.reset(Kind::Secret, vec![]);
        assert!(*ready.borrow());
        let model = rx.borrow_and_update().clone();
        assert_eq!(model.redis_clusters.len(), 1);
        assert_eq!(model.pods.len(), 1);
    }

    #[test]
    fn pods_with_the_same_labels_should_share_one_copy_of_them() {
        let (mut idx, mut rx, _) = index();
        sync_all(&mut idx);
        idx.apply(mk_pod("shop", "web-0", "web", "10.0.0.1", true));
        idx.apply(mk_pod("shop", "web-1", "web", "10.0.0.2", true));
        idx.apply(mk_pod("shop", "redis-0", "redis", "10.0.0.3", true));
        let model = rx.borrow_and_update().clone();
        let labels = |name: &str| {
            let pod = model
                .pods
                .get(&ObjectKey::new("shop", name))
                .expect("the Pod");
            Arc::clone(&pod.labels)
        };
        assert!(Arc::ptr_eq(&labels("web-0"), &labels("web-1")));
        assert!(!Arc::ptr_eq(&labels("web-0"), &labels("redis-0")));
        assert_eq!(labels("web-1")["app"], "web");
        assert_eq!(labels("redis-0")["app"], "redis");
    }

    #[test]
    fn label_sets_no_pod_uses_should_be_dropped() {
        let set =
            |k: &str, v: &str| -> Labels { [(k.to_string(), v.to_string())].into_iter().collect() };
        let mut sets = LabelSets::default();
        let kept = sets.intern(&set("app", "web"));
        for i in 0..5000 {
            drop(sets.intern(&set(
                "statefulset.kubernetes.io/pod-name",
                &format!("redis-{i}"),
            )));
        }
        assert!(sets.sets.len() <= 1025, "{} sets kept", sets.sets.len());
        assert!(Arc::ptr_eq(&kept, &sets.intern(&set("app", "web"))));
    }

    #[test]
    fn should_follow_pods_becoming_ready_and_going_away() {
        let (mut idx, mut rx, _) = index();
        sync_all(&mut idx);
        // Mode Sharded hashes over Ready pods only; mode Cluster seeds with every pod that
        // has an address.
        idx.apply(mk_rc_in_mode("shop", "orders", "redis", "Sharded"));
        idx.apply(mk_rc("shop", "seeds", "redis"));
        idx.apply(mk_pod("shop", "redis-0", "redis", "10.0.0.1", false));
        let compiled = crate::compile::compile(&rx.borrow_and_update());
        assert_eq!(
            compiled.objects[&ObjectKey::new("shop", "orders")].endpoints,
            0
        );
        assert_eq!(
            compiled.objects[&ObjectKey::new("shop", "seeds")].endpoints,
            1
        );
        idx.apply(mk_pod("shop", "redis-0", "redis", "10.0.0.1", true));
        let compiled = crate::compile::compile(&rx.borrow_and_update());
        assert_eq!(
            compiled.objects[&ObjectKey::new("shop", "orders")].endpoints,
            1
        );
        idx.delete(&mk_pod("shop", "redis-0", "redis", "10.0.0.1", true));
        let compiled = crate::compile::compile(&rx.borrow_and_update());
        assert_eq!(
            compiled.objects[&ObjectKey::new("shop", "orders")].endpoints,
            0
        );
        assert_eq!(
            compiled.objects[&ObjectKey::new("shop", "seeds")].endpoints,
            0
        );
    }

    #[test]
    fn should_drop_objects_missing_from_a_relist() {
        let (mut idx, mut rx, _) = index();
        sync_all(&mut idx);
        idx.apply(mk_secret("shop", "a", "one"));
        idx.apply(mk_secret("shop", "b", "two"));
        idx.reset(Kind::Secret, vec![mk_secret("shop", "b", "rotated")]);
        let model = rx.borrow_and_update().clone();
        let keys: Vec<String> = model.secrets.keys().map(|k| k.to_string()).collect();
        assert_eq!(keys, ["shop/b"]);
        assert_eq!(
            model.secrets[&ObjectKey::new("shop", "b")].data["password"].expose(),
            b"rotated"
        );
    }

    #[test]
    fn should_not_publish_an_unchanged_model() {
        let (mut idx, mut rx, _) = index();
        sync_all(&mut idx);
        rx.borrow_and_update();
        idx.apply(mk_secret("shop", "a", "one"));
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        idx.apply(mk_secret("shop", "a", "one"));
        assert!(
            !rx.has_changed().unwrap(),
            "a resync of the same object is not a change"
        );
    }

    #[test]
    fn should_keep_first_seen_order_for_conflicts_between_equal_timestamps() {
        let (mut idx, _rx, _) = index();
        sync_all(&mut idx);
        idx.apply(mk_rc("shop", "zz", "a"));
        idx.apply(mk_rc("shop", "aa", "a"));
        idx.apply(mk_rc("shop", "zz", "b"));
        let m = idx.model();
        assert!(
            m.redis_clusters[&ObjectKey::new("shop", "zz")].seen
                < m.redis_clusters[&ObjectKey::new("shop", "aa")].seen
        );
    }
}
