//! What the ADS server serves: encoded resources and per-proxy sets of them.
//!
//! The server is generic over [`ResourceSource`]; it never sees how the resources were made.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

/// `type_url` of clusters (CDS).
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// `type_url` of endpoints (EDS).
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// `type_url` of listeners (LDS).
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// `type_url` istiod asks an `xds://` config source for EnvoyFilters by: the object's
/// group, version and kind (istio.io/istio `pkg/adsc`, `ConfigInitialRequests`).
pub const ISTIO_ENVOY_FILTER: &str = "networking.istio.io/v1alpha3/EnvoyFilter";
/// `type_url` of each resource in a config source's response: an Istio config object
/// wrapped in MCP's `istio.mcp.v1alpha1.Resource` (istio.io/api `mcp/v1alpha1`).
pub const MCP_RESOURCE: &str = "type.googleapis.com/istio.mcp.v1alpha1.Resource";

/// The resource types served, in make-before-break order: clusters before their endpoints,
/// both before the listeners that use them (xDS protocol, "Eventual consistency
/// considerations").
pub const TYPES: [ResourceType; 3] = [
    ResourceType::Cluster,
    ResourceType::Endpoint,
    ResourceType::Listener,
];

/// Every type a server of some [`Profile`](super::Profile) serves, in discriminant order.
pub const ALL_TYPES: [ResourceType; 4] = [
    ResourceType::Cluster,
    ResourceType::Endpoint,
    ResourceType::Listener,
    ResourceType::EnvoyFilter,
];

/// One value per type, indexed by type. A stream keeps its per-type state in these rather
/// than in maps: a map node has room for eleven entries, and there are four types.
#[derive(Clone, Debug, Default)]
pub struct PerType<T>([T; 4]);

impl<T> PerType<T> {
    /// The value of each type, in [`ALL_TYPES`] order.
    pub fn from_fn(mut f: impl FnMut(ResourceType) -> T) -> Self {
        PerType(ALL_TYPES.map(&mut f))
    }

    /// Every type with its value, in [`ALL_TYPES`] order.
    pub fn iter(&self) -> impl Iterator<Item = (ResourceType, &T)> {
        ALL_TYPES.into_iter().zip(&self.0)
    }
}

impl<T> std::ops::Index<ResourceType> for PerType<T> {
    type Output = T;

    fn index(&self, t: ResourceType) -> &T {
        &self.0[t as usize]
    }
}

impl<T> std::ops::IndexMut<ResourceType> for PerType<T> {
    fn index_mut(&mut self, t: ResourceType) -> &mut T {
        &mut self.0[t as usize]
    }
}

/// A served resource type; its discriminant is its place in [`ALL_TYPES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceType {
    /// CDS.
    Cluster = 0,
    /// EDS.
    Endpoint = 1,
    /// LDS.
    Listener = 2,
    /// Istio's EnvoyFilter, for istiod reading a config source.
    EnvoyFilter = 3,
}

impl ResourceType {
    /// The xDS `type_url` of requests and responses.
    pub fn type_url(self) -> &'static str {
        match self {
            ResourceType::Cluster => CLUSTER,
            ResourceType::Endpoint => ENDPOINT,
            ResourceType::Listener => LISTENER,
            ResourceType::EnvoyFilter => ISTIO_ENVOY_FILTER,
        }
    }

    /// The `type_url` of the `Any` each resource of a response is wrapped in: the
    /// response's own for Envoy's types; MCP's resource for Istio's.
    pub fn resource_type_url(self) -> &'static str {
        match self {
            ResourceType::EnvoyFilter => MCP_RESOURCE,
            _ => self.type_url(),
        }
    }

    /// Parses a `type_url`.
    pub fn from_type_url(url: &str) -> Option<Self> {
        ALL_TYPES.into_iter().find(|t| t.type_url() == url)
    }

    /// Short name for logs and the debug view.
    pub fn short(self) -> &'static str {
        match self {
            ResourceType::Cluster => "CDS",
            ResourceType::Endpoint => "EDS",
            ResourceType::Listener => "LDS",
            ResourceType::EnvoyFilter => "EnvoyFilter",
        }
    }

    /// Whether a client may subscribe to every resource of the type at once (xDS wildcard).
    /// EDS is always requested by name.
    pub fn allows_wildcard(self) -> bool {
        !matches!(self, ResourceType::Endpoint)
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short())
    }
}

/// One resource, encoded once and shared by every stream that sends it.
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    /// Resource name.
    pub name: String,
    /// Content hash of `body`; changes exactly when the content does.
    pub version: String,
    /// The encoded message (not wrapped in `Any`).
    pub body: Bytes,
    /// Names of the clusters this resource sends traffic to (listeners only). The server
    /// keeps those clusters on a proxy for as long as it may hold the resource.
    pub clusters: Vec<String>,
    /// Only the version is known: a reconnecting Delta client declared it holds this
    /// version (`initial_resource_versions`); `body` is empty and is never sent.
    pub declared: bool,
}

impl Resource {
    /// A resource a client says it holds, of which the server knows only the version.
    pub fn declared(name: &str, version: &str) -> Arc<Resource> {
        Arc::new(Resource {
            name: name.to_owned(),
            version: version.to_owned(),
            body: Bytes::new(),
            clusters: Vec::new(),
            declared: true,
        })
    }
}

/// Resources of one type by name: a persistent map, so that a copy costs nothing and a
/// changed copy shares every node the change did not touch. The views, plans and protocol
/// states of all streams are such copies of the snapshot's maps; comparing two of them
/// ([`imbl::OrdMap::diff`]) skips the nodes they share, so it costs what changed, not
/// what exists.
pub type ResourceMap = imbl::OrdMap<String, Arc<Resource>>;

/// Everything one proxy should hold.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ProxyResources {
    /// CDS.
    pub clusters: ResourceMap,
    /// EDS.
    pub endpoints: ResourceMap,
    /// LDS.
    pub listeners: ResourceMap,
    /// Istio EnvoyFilters (a config source's only type).
    pub envoy_filters: ResourceMap,
    /// How many of `listeners` send traffic to each cluster, so that a view can be updated
    /// from a change without looking at the listeners it did not touch.
    pub uses: imbl::OrdMap<String, usize>,
    /// The state version of each map as a whole, computed on first use: what every
    /// wildcard subscriber of the type should hold.
    pub versions: WholeVersions,
}

/// Lazily computed versions of whole resource maps; equal whatever was computed.
#[derive(Default)]
pub struct WholeVersions([std::sync::OnceLock<String>; 4]);

impl PartialEq for WholeVersions {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for WholeVersions {}

impl fmt::Debug for WholeVersions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WholeVersions")
    }
}

impl ProxyResources {
    /// The state version of all resources of one type (see [`state_version`]).
    pub fn whole_version(&self, t: ResourceType) -> &str {
        self.versions.0[t as usize]
            .get_or_init(|| state_version(self.of(t).iter().map(|(n, r)| (n, r.version.as_str()))))
    }

    /// Resources of one type.
    pub fn of(&self, t: ResourceType) -> &ResourceMap {
        match t {
            ResourceType::Cluster => &self.clusters,
            ResourceType::Endpoint => &self.endpoints,
            ResourceType::Listener => &self.listeners,
            ResourceType::EnvoyFilter => &self.envoy_filters,
        }
    }
}

/// The identity a proxy claims in its xDS `node`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeIdentity {
    /// `node.metadata.namespace`.
    pub namespace: Option<String>,
    /// `node.metadata.labels`.
    pub labels: Option<BTreeMap<String, String>>,
}

/// Supplies the resources of each proxy. Implementations cache per identity: thousands of
/// streams with one identity must cost one computation.
pub trait ResourceSource: Send + Sync + fmt::Debug + 'static {
    /// The resources of a proxy with this identity.
    fn resources_for(&self, node: &NodeIdentity) -> Arc<ProxyResources>;

    /// When the change that produced these resources was first observed; push latency is
    /// measured from here to the proxy's ACK.
    fn observed_at(&self) -> std::time::Instant;

    /// Whether the resources reflect a complete read of the source. Streams wait, holding
    /// the proxy's current configuration, until the source is ready.
    fn is_ready(&self) -> bool {
        true
    }

    /// Removes secret values from text that came from a proxy (NACK messages can quote the
    /// configuration they reject) before it is logged or shown.
    fn redact(&self, text: &str) -> String {
        text.to_owned()
    }
}

/// Hash of a state: names and versions. Stable across processes and runs.
pub fn state_version<'a>(entries: impl Iterator<Item = (&'a String, &'a str)>) -> String {
    // FNV-1a's constants over eight octets at a time (with each string's length, so that
    // "ab","c" and "a","bc" differ): tiny, deterministic, and fast enough to run over a
    // thousand resources in microseconds. A collision would hold back one SotW push until
    // the next change.
    fn mix(mut hash: u64, bytes: &[u8]) -> u64 {
        let step = |hash: u64, word: u64| {
            let h = (hash ^ word).wrapping_mul(0x0100_0000_01b3);
            h ^ (h >> 29)
        };
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut octets = [0; 8];
            octets.copy_from_slice(w);
            hash = step(hash, u64::from_le_bytes(octets));
        }
        let mut last = [0; 8];
        last[..words.remainder().len()].copy_from_slice(words.remainder());
        hash = step(hash, u64::from_le_bytes(last));
        step(hash, bytes.len() as u64)
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, version) in entries {
        hash = mix(mix(hash, name.as_bytes()), version.as_bytes());
    }
    format!("{hash:016x}")
}
