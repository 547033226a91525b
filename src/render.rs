//! `render`: compiled resources as JSON, or as a complete static Envoy bootstrap.
//!
//! The static bootstrap is how redis-xds is used without xDS at all: everything a proxy with
//! the given identity would receive over ADS, as `static_resources`. EDS clusters (Sharded
//! mode) become STATIC clusters carrying the same endpoints inline.

use envoy_types::pb::envoy::config::bootstrap::v3::{Admin, Bootstrap, bootstrap::StaticResources};
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::Node;
use serde_json::{Value, json};

use crate::compile::{View, socket_address};
use crate::protojson;

/// Node id of a rendered static bootstrap.
pub const STATIC_NODE_ID: &str = "redis-xds-static";

/// The resources of one view as `{"clusters": [..], "endpoints": [..], "listeners": [..]}`,
/// canonical proto JSON, secrets redacted.
pub fn resources_json(view: &View<'_>) -> Result<Value, protojson::Error> {
    let clusters = view
        .clusters
        .iter()
        .map(|c| protojson::to_typed_json(&c.cluster))
        .collect::<Result<Vec<_>, _>>()?;
    let endpoints = view
        .clusters
        .iter()
        .filter_map(|c| c.endpoints.as_ref())
        .map(protojson::to_typed_json)
        .collect::<Result<Vec<_>, _>>()?;
    let listeners = view
        .listeners
        .iter()
        .map(|l| protojson::to_typed_json(&l.listener))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = json!({ "clusters": clusters, "endpoints": endpoints, "listeners": listeners });
    protojson::redact(&mut out);
    Ok(out)
}

/// The cluster with its endpoints inline: an EDS cluster (Sharded mode) becomes STATIC
/// with the same endpoints, for where nothing serves EDS (a static bootstrap, an Istio
/// EnvoyFilter).
pub fn with_inline_endpoints(
    c: &crate::compile::CompiledCluster,
) -> envoy_types::pb::envoy::config::cluster::v3::Cluster {
    let mut cluster = c.cluster.clone();
    if let Some(cla) = &c.endpoints {
        cluster.cluster_discovery_type =
            Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
        cluster.eds_cluster_config = None;
        cluster.load_assignment = Some(cla.clone());
    }
    cluster
}

/// A complete Envoy bootstrap with the view as static resources and an admin listener on
/// 127.0.0.1:`admin_port`. Secrets are included: the result is a deployable config.
pub fn static_bootstrap(view: &View<'_>, admin_port: u16) -> Bootstrap {
    let clusters = view
        .clusters
        .iter()
        .map(|c| with_inline_endpoints(c))
        .collect();
    Bootstrap {
        node: Some(Node {
            id: STATIC_NODE_ID.into(),
            cluster: "redis-xds".into(),
            ..Default::default()
        }),
        admin: Some(Admin {
            address: Some(socket_address("127.0.0.1", admin_port)),
            ..Default::default()
        }),
        static_resources: Some(StaticResources {
            listeners: view.listeners.iter().map(|l| l.listener.clone()).collect(),
            clusters,
            secrets: Vec::new(),
        }),
        ..Default::default()
    }
}
