//! The model: everything `compile` needs to know about the world, independent of where it
//! came from.
//!
//! Sources (the Kubernetes watcher and the manifests directory) convert their objects into
//! these plain values and keep one [`Model`] up to date; `compile` reads it. Nothing here
//! knows about Kubernetes clients or Envoy.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

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
    /// Labels matched by `spec.endpoints.selector`.
    pub labels: Labels,
    /// `status.podIP`, when assigned.
    pub ip: Option<String>,
    /// The `Ready` condition is True.
    pub ready: bool,
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

/// Everything compile reads. Maps are keyed by object identity so sources can apply and
/// delete objects one at a time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Model {
    /// RedisCluster objects.
    pub redis_clusters: BTreeMap<ObjectKey, RedisClusterObject>,
    /// Pods that `selector` endpoints can match.
    pub pods: BTreeMap<ObjectKey, Pod>,
    /// EndpointSlices, for `service` endpoints.
    pub endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    /// Secrets referenced by `auth` and `downstreamAuth`.
    pub secrets: BTreeMap<ObjectKey, Secret>,
}

/// Publishes `model` on `tx` unless it equals what `tx` already holds, so that downstream
/// work (compile, pushes) only happens for real changes.
pub fn publish_if_changed(
    tx: &tokio::sync::watch::Sender<std::sync::Arc<Model>>,
    model: &Model,
) -> bool {
    tx.send_if_modified(|current| {
        if **current == *model {
            false
        } else {
            *current = std::sync::Arc::new(model.clone());
            true
        }
    })
}
