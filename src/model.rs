//! The model: everything `compile` needs to know about the world, independent of where it
//! came from.
//!
//! Sources (the Kubernetes watcher and the manifests directory) convert their objects into
//! these plain values and keep one [`Model`] up to date; `compile` reads it. Nothing here
//! knows about Kubernetes clients or Envoy.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::api::{Labels, RedisClusterSpec};

/// `namespace/name` of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// Builds a key from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where an object was read from; shown by `/debug/model`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A file of the manifests directory.
    File(PathBuf),
    /// The Kubernetes API.
    Kubernetes,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "file {}", path.display()),
            Origin::Kubernetes => f.write_str("kubernetes"),
        }
    }
}

/// One RedisCluster object as compile sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct RedisClusterObject {
    /// Identity.
    pub key: ObjectKey,
    /// `metadata.generation`, echoed into status `observedGeneration`.
    pub generation: Option<i64>,
    /// `metadata.creationTimestamp` in seconds since the epoch; decides which of two
    /// conflicting listeners wins (the older one).
    pub created: Option<i64>,
    /// Order in which the source first saw the object; breaks ties between equal (or absent)
    /// creation times, so manifests files keep "first defined wins".
    pub seen: u64,
    /// The desired state.
    pub spec: RedisClusterSpec,
    /// Where it came from.
    pub origin: Origin,
}

impl RedisClusterObject {
    /// An object made rather than read (by the bench and tests): from Kubernetes,
    /// generation 1, no creation time, `seen` deciding its age.
    pub fn new(key: ObjectKey, spec: RedisClusterSpec, seen: u64) -> Self {
        RedisClusterObject {
            key,
            generation: Some(1),
            created: None,
            seen,
            spec,
            origin: Origin::Kubernetes,
        }
    }

    /// Sort key for "older wins" decisions.
    pub fn age_key(&self) -> (i64, u64, &ObjectKey) {
        (self.created.unwrap_or(i64::MAX), self.seen, &self.key)
    }
}

/// A Pod, reduced to what endpoint selection needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    /// Identity; the name is the stable endpoint name.
    pub key: ObjectKey,
    /// Labels matched by `spec.endpoints.selector`. Shared by the Pods that carry the same
    /// set: the Kubernetes index keeps one copy of each (the replicas of a Deployment carry
    /// identical labels, and a cluster holds tens of thousands of Pods no RedisCluster
    /// selects).
    pub labels: Arc<Labels>,
    /// `status.podIP`, when assigned.
    pub ip: Option<String>,
    /// The `Ready` condition is True.
    pub ready: bool,
    /// `spec.serviceAccountName`, kept only for Pods in an Istio mesh (label
    /// [`ISTIO_TLS_MODE_LABEL`] `istio`): their workload identity, which Istio mode's mutual
    /// TLS verifies (`spiffe://<trust domain>/ns/<namespace>/sa/<name>`).
    pub service_account: Option<String>,
}

/// The label istio's sidecar injector puts on every Pod it gives an istio-proxy
/// (`security.istio.io/tlsMode: istio`); istiod's own EDS turns it into the endpoint
/// metadata that selects mutual TLS (auto mTLS).
pub const ISTIO_TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";

impl Pod {
    /// Whether an istio-proxy sidecar guards this Pod ([`ISTIO_TLS_MODE_LABEL`] is `istio`).
    pub fn in_istio_mesh(&self) -> bool {
        self.labels
            .get(ISTIO_TLS_MODE_LABEL)
            .is_some_and(|v| v == "istio")
    }
}

/// One EndpointSlice, reduced to its ready addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSlice {
    /// Identity of the slice itself.
    pub key: ObjectKey,
    /// The Service it belongs to (label `kubernetes.io/service-name`).
    pub service: String,
    /// Its endpoints.
    pub endpoints: Vec<SliceEndpoint>,
}

/// One address of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// Stable name: the target Pod's name, else the hostname, else the address.
    pub name: String,
    /// IP address.
    pub ip: String,
    /// `conditions.ready` is not false.
    pub ready: bool,
}

/// Secret bytes. Never printed: `Debug` shows only the length.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    /// Wraps raw bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        SecretValue(bytes.into())
    }

    /// The raw bytes, for building Envoy config only.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted {} bytes>", self.0.len())
    }
}

/// A Secret: its keys and (redacted) values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secret {
    /// Identity.
    pub key: ObjectKey,
    /// `data` and `stringData` merged (stringData wins, as in the API server).
    pub data: BTreeMap<String, SecretValue>,
}

/// A Service's virtual address: what Istio names a sidecar's outbound listener after
/// (`<clusterIP>_<port>`). Read for Istio mode only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Identity.
    pub key: ObjectKey,
    /// `spec.clusterIP`; `None` for a headless Service (`None` there) or before one is
    /// allocated.
    pub cluster_ip: Option<String>,
    /// `spec.ports[].port`, with their names.
    pub ports: Vec<(Option<String>, u16)>,
}

/// Everything compile reads. Maps are keyed by object identity so sources can apply and
/// delete objects one at a time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Model {
    /// RedisCluster objects, shared between models: an object that did not change is the
    /// same allocation in the next model, so that the compiler knows it without comparing
    /// specs.
    pub redis_clusters: BTreeMap<ObjectKey, Arc<RedisClusterObject>>,
    /// Pods that `selector` endpoints can match.
    pub pods: BTreeMap<ObjectKey, Pod>,
    /// EndpointSlices, for `service` endpoints.
    pub endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    /// Secrets referenced by `auth` and `downstreamAuth`.
    pub secrets: BTreeMap<ObjectKey, Secret>,
    /// Services, for Istio mode (the manifests directory; the Kubernetes source with
    /// `--istio`).
    pub services: BTreeMap<ObjectKey, Service>,
}

/// Publishes `model` on `tx` unless it equals what `tx` already holds, so that downstream
/// work (compile, pushes) only happens for real changes. A RedisCluster equal to the one
/// published before is published as that very allocation.
pub fn publish_if_changed(tx: &tokio::sync::watch::Sender<Arc<Model>>, model: &Model) -> bool {
    tx.send_if_modified(|current| {
        if **current == *model {
            return false;
        }
        let mut next = model.clone();
        next.share_unchanged(current);
        *current = Arc::new(next);
        true
    })
}

impl Model {
    /// Makes every RedisCluster equal to the one of `before` that very allocation, as the
    /// sources publish them.
    pub fn share_unchanged(&mut self, before: &Model) {
        for (key, obj) in &mut self.redis_clusters {
            if let Some(was) = before.redis_clusters.get(key)
                && (Arc::ptr_eq(was, obj) || **was == **obj)
            {
                *obj = Arc::clone(was);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(ports: &[u16]) -> Model {
        let mut m = Model::default();
        for (i, port) in ports.iter().enumerate() {
            let key = ObjectKey::new("ns", format!("rc{i}"));
            let spec = serde_json::from_value(
                serde_json::json!({"endpoints": {"static": [format!("127.0.0.1:{port}")]}}),
            )
            .expect("a valid spec");
            m.redis_clusters.insert(
                key.clone(),
                Arc::new(RedisClusterObject::new(key, spec, i as u64)),
            );
        }
        m
    }

    #[test]
    fn should_publish_unchanged_objects_as_the_allocations_published_before() {
        let (tx, rx) = tokio::sync::watch::channel(Arc::new(Model::default()));
        assert!(publish_if_changed(&tx, &model(&[1, 2])));
        let before = Arc::clone(&rx.borrow());
        // Built anew, as the manifests source does: equal objects, other allocations.
        assert!(!publish_if_changed(&tx, &model(&[1, 2])), "nothing changed");
        assert!(publish_if_changed(&tx, &model(&[1, 3])));
        let after = Arc::clone(&rx.borrow());
        let key = |i: usize| ObjectKey::new("ns", format!("rc{i}"));
        assert!(Arc::ptr_eq(
            &before.redis_clusters[&key(0)],
            &after.redis_clusters[&key(0)]
        ));
        assert!(!Arc::ptr_eq(
            &before.redis_clusters[&key(1)],
            &after.redis_clusters[&key(1)]
        ));
        assert_eq!(*after, model(&[1, 3]));
    }
}
