//! Istio mutual TLS for the clusters Istio mode adds.
//!
//! istiod gives its own outbound clusters Istio's mutual TLS towards every endpoint whose
//! Pod has an istio-proxy (auto mTLS): the endpoint carries the metadata
//! `envoy.transport_socket_match: {tlsMode: istio}`, and the cluster's
//! `transport_socket_matches` pick, per endpoint, a TLS socket with the sidecar's own
//! workload certificate (SDS secret `default`) and the mesh's root certificate (SDS secret
//! `ROOTCA`), both served by pilot-agent through the bootstrap cluster `sds-grpc`, or plain
//! text. A cluster redis-xds adds through an EnvoyFilter gets none of that from istiod, so
//! it is done here the same way: under a mesh-wide STRICT PeerAuthentication the Redis
//! Pods' sidecars refuse anything else, and under PERMISSIVE it keeps commands off the wire
//! in clear text, as Istio's own traffic is.
//!
//! The decision is made per endpoint from the Pod behind its address: in the mesh when its
//! label `security.istio.io/tlsMode` is `istio` (what istiod reads too). The server's
//! certificate must carry the SPIFFE identity of one of those Pods' ServiceAccounts
//! (`spiffe://<trust domain>/ns/<namespace>/sa/<name>`).
//!
//! Mode Cluster cannot decide per server: `envoy.clusters.redis` learns its servers from
//! CLUSTER SLOTS and gives every one of them the seeds' transport, so its servers must be
//! all in the mesh or all outside it; a mix is reported on the object.
//!
//! Not read: DestinationRule `trafficPolicy.tls` (istiod applies it to its own clusters for
//! the Service's host, not to these) and a PeerAuthentication that turns mTLS off for the
//! Redis Pods (`DISABLE`): Redis Pods in the mesh get mutual TLS under STRICT and
//! PERMISSIVE alike, and a Pod outside it gets plain text.

use std::collections::{BTreeSet, HashMap};

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::google::protobuf as pbw;

use crate::model::{Model, Pod};

/// Endpoint metadata namespace that `transport_socket_matches` read (Envoy's
/// `envoy.transport_socket_match`).
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";
/// The bootstrap cluster of istio-proxy through which pilot-agent serves SDS.
pub const SDS_CLUSTER: &str = "sds-grpc";
/// The SDS secret holding the sidecar's workload certificate and key.
pub const WORKLOAD_SECRET: &str = "default";
/// The SDS secret holding the mesh's root certificates.
pub const ROOT_SECRET: &str = "ROOTCA";
/// The ALPN protocol an Istio inbound listener recognises mesh mutual TLS by
/// (`PILOT_ENABLE_ALPN_FILTER` aside, what istiod's own clusters offer).
pub const ALPN: &str = "istio";

/// The Pods of an Istio mesh, by IP address.
pub struct MeshPods<'m> {
    by_ip: HashMap<&'m str, &'m Pod>,
}

impl<'m> MeshPods<'m> {
    /// Every Pod of `model` that has an istio-proxy and an address.
    pub fn new(model: &'m Model) -> Self {
        let by_ip = model
            .pods
            .values()
            .filter(|p| p.in_istio_mesh())
            .filter_map(|p| Some((p.ip.as_deref()?, p)))
            .collect();
        MeshPods { by_ip }
    }

    fn get(&self, ip: &str) -> Option<&'m Pod> {
        self.by_ip.get(ip).copied()
    }
}

/// Why a cluster cannot reach its servers in the mesh: the field at fault and what to do.
#[derive(Debug, PartialEq, Eq)]
pub struct Unreachable {
    /// Field path on the RedisCluster.
    pub field: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

/// How many servers `cluster` has, and those in the mesh as (Pod name, SPIFFE identity).
fn in_mesh(
    cluster: &cluster::Cluster,
    mesh: &MeshPods<'_>,
    trust_domain: &str,
) -> (usize, Vec<(String, String)>) {
    let mut total = 0;
    let mut found = Vec::new();
    for ep in endpoints(cluster) {
        total += 1;
        if let Some(pod) = address(ep).and_then(|ip| mesh.get(ip)) {
            found.push((
                pod.key.name.clone(),
                spiffe(
                    trust_domain,
                    &pod.key.namespace,
                    pod.service_account.as_deref().unwrap_or("default"),
                ),
            ));
        }
    }
    (total, found)
}

fn endpoints(
    cluster: &cluster::Cluster,
) -> impl Iterator<Item = &envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint> {
    cluster
        .load_assignment
        .iter()
        .flat_map(|cla| &cla.endpoints)
        .flat_map(|l| &l.lb_endpoints)
}

fn address(ep: &envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint) -> Option<&str> {
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    let Some(HostIdentifier::Endpoint(e)) = &ep.host_identifier else {
        return None;
    };
    match e.address.as_ref()?.address.as_ref()? {
        core::address::Address::SocketAddress(s) => Some(s.address.as_str()),
        _ => None,
    }
}

/// The SPIFFE identity Istio gives a ServiceAccount's workloads.
pub fn spiffe(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// Gives `cluster` (inline endpoints, as Istio mode adds it) Istio's mutual TLS towards its
/// servers in the mesh, as istiod's auto mTLS would; servers outside the mesh keep plain
/// text. Leaves a cluster without servers in the mesh as it is.
///
/// # Errors
///
/// When the cluster cannot reach its servers in the mesh: it has a TLS transport of its own
/// (`spec.tls`), which Envoy cannot carry inside Istio's on one connection, or it is a mode
/// Cluster cluster whose servers are partly in the mesh.
pub fn apply(
    cluster: &mut cluster::Cluster,
    mesh: &MeshPods<'_>,
    trust_domain: &str,
) -> Result<(), Unreachable> {
    let (total, found) = in_mesh(cluster, mesh, trust_domain);
    if found.is_empty() {
        return Ok(());
    }
    let names = || {
        found
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if cluster.transport_socket.is_some() {
        return Err(Unreachable {
            field: "spec.tls",
            message: format!(
                "the Redis Pods {} have an istio-proxy, which encrypts with Istio's mutual TLS; Envoy cannot carry Redis's own TLS inside it on one connection: remove spec.tls, or take Redis's port out of their sidecar (annotation traffic.sidecar.istio.io/excludeInboundPorts)",
                names()
            ),
        });
    }
    let identities: BTreeSet<String> = found.iter().map(|(_, id)| id.clone()).collect();
    let socket = istio_mutual(&identities);
    let is_redis_cluster = matches!(
        cluster.cluster_discovery_type,
        Some(cluster::cluster::ClusterDiscoveryType::ClusterType(_))
    );
    if is_redis_cluster {
        if found.len() != total {
            return Err(Unreachable {
                field: "spec.endpoints",
                message: format!(
                    "{} of {total} seeds are Pods with an istio-proxy ({}) and the others are not; Envoy's Redis cluster connects to every server CLUSTER SLOTS names with one transport, so a mode Cluster RedisCluster must be all inside Istio's mesh or all outside it",
                    found.len(),
                    names()
                ),
            });
        }
        cluster.transport_socket = Some(socket);
        return Ok(());
    }
    for cla in cluster.load_assignment.iter_mut() {
        for ep in cla
            .endpoints
            .iter_mut()
            .flat_map(|l| l.lb_endpoints.iter_mut())
        {
            if address(ep).is_some_and(|ip| mesh.get(ip).is_some()) {
                ep.metadata
                    .get_or_insert_with(Default::default)
                    .filter_metadata
                    .insert(TRANSPORT_SOCKET_MATCH.to_owned(), tls_mode_istio());
            }
        }
    }
    // Istio's own two entries, by the names istiod gives them.
    cluster.transport_socket_matches = vec![
        cluster::cluster::TransportSocketMatch {
            name: "tlsMode-istio".to_owned(),
            r#match: Some(tls_mode_istio()),
            transport_socket: Some(socket),
        },
        cluster::cluster::TransportSocketMatch {
            name: "tlsMode-disabled".to_owned(),
            r#match: Some(pbw::Struct::default()),
            transport_socket: Some(raw_buffer()),
        },
    ];
    Ok(())
}

fn tls_mode_istio() -> pbw::Struct {
    pbw::Struct {
        fields: HashMap::from([(
            "tlsMode".to_owned(),
            pbw::Value {
                kind: Some(pbw::value::Kind::StringValue("istio".to_owned())),
            },
        )]),
    }
}

fn raw_buffer() -> core::TransportSocket {
    use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
    core::TransportSocket {
        name: "envoy.transport_sockets.raw_buffer".to_owned(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(
            crate::compile::any(&RawBuffer {}),
        )),
    }
}

/// SDS from pilot-agent, as istiod's own clusters ask for it.
fn sds(name: &str) -> tls::SdsSecretConfig {
    tls::SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(core::ConfigSource {
            resource_api_version: core::ApiVersion::V3 as i32,
            initial_fetch_timeout: Some(pbw::Duration::default()),
            config_source_specifier: Some(
                core::config_source::ConfigSourceSpecifier::ApiConfigSource(
                    core::ApiConfigSource {
                        api_type: core::api_config_source::ApiType::Grpc as i32,
                        transport_api_version: core::ApiVersion::V3 as i32,
                        set_node_on_first_message_only: true,
                        grpc_services: vec![core::GrpcService {
                            target_specifier: Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(
                                core::grpc_service::EnvoyGrpc {
                                    cluster_name: SDS_CLUSTER.to_owned(),
                                    ..Default::default()
                                },
                            )),
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
    }
}

/// The transport socket of Istio's mutual TLS: the sidecar's workload certificate, the
/// mesh's roots, and a server certificate naming one of `identities` (URI SANs).
pub fn istio_mutual(identities: &BTreeSet<String>) -> core::TransportSocket {
    let context = tls::UpstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            alpn_protocols: vec![ALPN.to_owned()],
            tls_certificate_sds_secret_configs: vec![sds(WORKLOAD_SECRET)],
            validation_context_type: Some(
                tls::common_tls_context::ValidationContextType::CombinedValidationContext(
                    tls::common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(tls::CertificateValidationContext {
                            match_typed_subject_alt_names: identities
                                .iter()
                                .map(|id| {
                                    crate::compile::san_exact(
                                        tls::subject_alt_name_matcher::SanType::Uri,
                                        id,
                                    )
                                })
                                .collect(),
                            ..Default::default()
                        }),
                        validation_context_sds_secret_config: Some(sds(ROOT_SECRET)),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    crate::compile::tls_transport_socket(&context)
}
