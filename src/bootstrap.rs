//! `bootstrap`: the Envoy bootstrap of a sidecar that takes its configuration from
//! redis-xds over ADS, so nobody writes Envoy YAML by hand.
//!
//! The document is written as proto JSON and then parsed through Envoy's own descriptors,
//! which rejects any misspelt field here and prints the result canonically.

use std::collections::BTreeMap;
use std::path::PathBuf;

use prost_reflect::{DeserializeOptions, DynamicMessage};
use serde_json::{Value, json};

use crate::protojson;

/// Name of the static cluster that points at redis-xds.
pub const XDS_CLUSTER: &str = "redis-xds";

/// Where Envoy reads a file's worth of data: Envoy's `config.core.v3.DataSource`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSource {
    /// `filename`: read from this path (re-read by some consumers, e.g. call credentials).
    Filename(PathBuf),
    /// `inline_string`: the data itself, e.g. a CA bundle put in by the injector.
    InlineString(String),
}

impl DataSource {
    fn to_json(&self) -> Value {
        match self {
            DataSource::Filename(p) => json!({"filename": p}),
            DataSource::InlineString(s) => json!({"inlineString": s}),
        }
    }
}

impl From<PathBuf> for DataSource {
    fn from(p: PathBuf) -> Self {
        DataSource::Filename(p)
    }
}

/// TLS towards the xDS server; mirrors `serve --xds-tls-*`.
#[derive(Clone, Debug)]
pub struct ClientTls {
    /// CA bundle that the server certificate must chain to.
    pub ca: DataSource,
    /// Client certificate, for mutual TLS.
    pub cert: Option<PathBuf>,
    /// Client key, for mutual TLS.
    pub key: Option<PathBuf>,
    /// SNI and the name the server certificate must carry; default: the xDS host.
    pub server_name: Option<String>,
}

/// What goes into a bootstrap.
#[derive(Clone, Debug)]
pub struct BootstrapOptions {
    /// `HOST:PORT` of redis-xds.
    pub xds_address: String,
    /// `node.id`.
    pub node_id: String,
    /// `node.metadata.namespace`.
    pub namespace: Option<String>,
    /// `node.metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `node.locality.zone`: the zone the zone-aware read policies prefer. Left out when
    /// empty (Envoy's own default: no zone).
    pub zone: Option<String>,
    /// Admin port on 127.0.0.1.
    pub admin_port: u16,
    /// State-of-the-World instead of Delta.
    pub sotw: bool,
    /// TLS towards redis-xds.
    pub tls: Option<ClientTls>,
    /// Send this projected ServiceAccount token file as `authorization: Bearer` (matches
    /// `serve --xds-auth token`). Needs TLS: gRPC sends call credentials over TLS only.
    pub token_path: Option<PathBuf>,
    /// A listener on this address (`HOST`, `PORT`) that answers `GET /ready` from the
    /// admin interface, and nothing else: what kubelet's probes reach, since the admin
    /// interface stays on 127.0.0.1. `/ready` is 200 once Envoy has its first
    /// configuration (or its initial fetch timed out) and 503 while it drains.
    pub status: Option<(String, u16)>,
}

/// Name of the status listener of [`BootstrapOptions::status`].
pub const STATUS_LISTENER: &str = "redis-xds-status";
/// Name of the static cluster that points at the admin interface, for the status listener.
pub const ADMIN_CLUSTER: &str = "redis-xds-admin";

/// Errors building a bootstrap.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--xds-address` is not `HOST:PORT`.
    #[error(
        "--xds-address {0:?}: write HOST:PORT, e.g. redis-xds.redis-xds.svc:18000 or 127.0.0.1:18000"
    )]
    Address(String),
    /// Token authentication without TLS.
    #[error("--xds-auth token needs --xds-tls-ca: the token is only ever sent over TLS")]
    TokenWithoutTls,
    /// The JSON does not match Envoy's schema (a bug in this module).
    #[error("building the bootstrap: {0}")]
    Schema(String),
}

fn split_host_port(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// The bootstrap as canonical proto JSON.
pub fn bootstrap(opts: &BootstrapOptions) -> Result<Value, Error> {
    let (host, port) = split_host_port(&opts.xds_address)
        .ok_or_else(|| Error::Address(opts.xds_address.clone()))?;
    let is_ip = host.parse::<std::net::IpAddr>().is_ok();

    let mut metadata = serde_json::Map::new();
    if let Some(ns) = &opts.namespace {
        metadata.insert("namespace".into(), json!(ns));
    }
    if !opts.labels.is_empty() {
        metadata.insert("labels".into(), json!(opts.labels));
    }

    let mut xds_cluster = json!({
        "name": XDS_CLUSTER,
        "type": if is_ip { "STATIC" } else { "LOGICAL_DNS" },
        "connectTimeout": "1s",
        "loadAssignment": {
            "clusterName": XDS_CLUSTER,
            "endpoints": [{"lbEndpoints": [{"endpoint": {"address": {"socketAddress": {"address": host, "portValue": port}}}}]}]
        },
        "typedExtensionProtocolOptions": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicitHttpConfig": {"http2ProtocolOptions": {
                    // Matches the server's keepalive: a dead control plane is noticed in
                    // under a minute and Envoy reconnects (keeping its last config).
                    "connectionKeepalive": {"interval": "30s", "timeout": "10s"}
                }}
            }
        }
    });
    if let Some(tls) = &opts.tls {
        let server_name = tls.server_name.clone().unwrap_or_else(|| host.clone());
        let mut common = json!({
            "validationContext": {
                "trustedCa": tls.ca.to_json(),
                "matchTypedSubjectAltNames": [{
                    "sanType": if server_name.parse::<std::net::IpAddr>().is_ok() { "IP_ADDRESS" } else { "DNS" },
                    "matcher": {"exact": server_name}
                }]
            }
        });
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            common["tlsCertificates"] =
                json!([{"certificateChain": {"filename": cert}, "privateKey": {"filename": key}}]);
        }
        xds_cluster["transportSocket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": server_name,
                "commonTlsContext": common
            }
        });
    }

    let grpc_service = match &opts.token_path {
        None => json!({"envoyGrpc": {"clusterName": XDS_CLUSTER}}),
        Some(token) => {
            // Envoy's own gRPC client cannot read a rotating token file; the Google gRPC
            // client with the file_based_metadata plugin re-reads it for every stream.
            // The plugin takes effect only through its credentials factory
            // (GoogleGrpc.credentials_factory_name): the default factory leaves
            // `fromPlugin` call credentials out, and the stream goes without the token.
            let tls = opts.tls.as_ref().ok_or(Error::TokenWithoutTls)?;
            let mut ssl = json!({"rootCerts": tls.ca.to_json()});
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                ssl["certChain"] = json!({"filename": cert});
                ssl["privateKey"] = json!({"filename": key});
            }
            let mut args = json!({
                "grpc.keepalive_time_ms": {"intValue": "30000"},
                "grpc.keepalive_timeout_ms": {"intValue": "10000"}
            });
            if let Some(name) = &tls.server_name {
                args["grpc.ssl_target_name_override"] = json!({"stringValue": name});
            }
            json!({"googleGrpc": {
                "targetUri": format!("{host}:{port}"),
                "statPrefix": "redis_xds",
                "credentialsFactoryName": "envoy.grpc_credentials.file_based_metadata",
                "channelCredentials": {"sslCredentials": ssl},
                "callCredentials": [{"fromPlugin": {
                    "name": "envoy.grpc_credentials.file_based_metadata",
                    "typedConfig": {
                        "@type": "type.googleapis.com/envoy.config.grpc_credential.v3.FileBasedMetadataConfig",
                        "secretData": {"filename": token},
                        "headerKey": "authorization",
                        "headerPrefix": "Bearer "
                    }
                }}],
                "channelArgs": {"args": args}
            }})
        }
    };
    let mut clusters = vec![xds_cluster];
    let mut listeners = Vec::new();
    if let Some((address, port)) = &opts.status {
        clusters.push(json!({
            "name": ADMIN_CLUSTER,
            "type": "STATIC",
            "connectTimeout": "1s",
            "loadAssignment": {
                "clusterName": ADMIN_CLUSTER,
                "endpoints": [{"lbEndpoints": [{"endpoint": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": opts.admin_port}}}}]}]
            }
        }));
        listeners.push(json!({
            "name": STATUS_LISTENER,
            "address": {"socketAddress": {"address": address, "portValue": port}},
            "filterChains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typedConfig": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "statPrefix": "redis_xds_status",
                    "routeConfig": {"virtualHosts": [{
                        "name": "status",
                        "domains": ["*"],
                        "routes": [
                            {"match": {"path": "/ready", "headers": [{"name": ":method", "stringMatch": {"exact": "GET"}}]},
                             "route": {"cluster": ADMIN_CLUSTER, "timeout": "2s"}},
                            {"match": {"prefix": "/"}, "directResponse": {"status": 404}}
                        ]
                    }]},
                    "httpFilters": [{
                        "name": "envoy.filters.http.router",
                        "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                    }]
                }
            }]}]
        }));
    }
    let mut node =
        json!({"id": opts.node_id, "cluster": "redis-xds-sidecar", "metadata": metadata});
    if let Some(zone) = opts.zone.as_deref().filter(|z| !z.is_empty()) {
        node["locality"] = json!({"zone": zone});
    }
    let doc = json!({
        "node": node,
        "admin": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": opts.admin_port}}},
        "dynamicResources": {
            "adsConfig": {
                "apiType": if opts.sotw { "GRPC" } else { "DELTA_GRPC" },
                "transportApiVersion": "V3",
                "grpcServices": [grpc_service],
                "setNodeOnFirstMessageOnly": true
            },
            "cdsConfig": {"ads": {}, "resourceApiVersion": "V3"},
            "ldsConfig": {"ads": {}, "resourceApiVersion": "V3"}
        },
        "staticResources": {"clusters": clusters, "listeners": listeners}
    });
    canonical("envoy.config.bootstrap.v3.Bootstrap", &doc)
}

fn canonical(type_name: &str, doc: &Value) -> Result<Value, Error> {
    let desc = protojson::pool()
        .get_message_by_name(type_name)
        .ok_or_else(|| Error::Schema(format!("unknown type {type_name}")))?;
    let msg = DynamicMessage::deserialize_with_options(
        desc,
        doc,
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .map_err(|e| Error::Schema(e.to_string()))?;
    serde_json::to_value(&msg).map_err(|e| Error::Schema(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> BootstrapOptions {
        BootstrapOptions {
            zone: None,
            xds_address: "redis-xds.system.svc:18000".into(),
            node_id: "app-1".into(),
            namespace: Some("shop".into()),
            labels: [("app".to_string(), "checkout".to_string())]
                .into_iter()
                .collect(),
            admin_port: 9901,
            sotw: false,
            tls: None,
            token_path: None,
            status: None,
        }
    }

    #[test]
    fn should_carry_the_node_identity_and_delta_ads_by_default() {
        let b = bootstrap(&opts()).unwrap();
        assert_eq!(b["node"]["id"], "app-1");
        assert_eq!(b["node"]["metadata"]["namespace"], "shop");
        assert_eq!(b["node"]["metadata"]["labels"]["app"], "checkout");
        assert_eq!(b["dynamicResources"]["adsConfig"]["apiType"], "DELTA_GRPC");
        let cluster = &b["staticResources"]["clusters"][0];
        assert_eq!(cluster["type"], "LOGICAL_DNS");
        assert_eq!(
            b["admin"]["address"]["socketAddress"]["address"],
            "127.0.0.1"
        );
        let mut o = opts();
        o.sotw = true;
        o.xds_address = "127.0.0.1:18000".into();
        let b = bootstrap(&o).unwrap();
        assert_eq!(b["dynamicResources"]["adsConfig"]["apiType"], "GRPC");
        assert_eq!(b["staticResources"]["clusters"][0]["type"], "STATIC");
    }

    #[test]
    fn should_reject_an_address_without_port() {
        let mut o = opts();
        o.xds_address = "redis-xds".into();
        assert!(matches!(bootstrap(&o), Err(Error::Address(_))));
    }

    #[test]
    fn should_configure_mutual_tls_when_given_a_client_certificate() {
        let mut o = opts();
        o.tls = Some(ClientTls {
            ca: DataSource::Filename("/etc/xds/ca.pem".into()),
            cert: Some("/etc/xds/tls.crt".into()),
            key: Some("/etc/xds/tls.key".into()),
            server_name: None,
        });
        let b = bootstrap(&o).unwrap();
        let ts = &b["staticResources"]["clusters"][0]["transportSocket"]["typedConfig"];
        assert_eq!(ts["sni"], "redis-xds.system.svc");
        assert_eq!(
            ts["commonTlsContext"]["validationContext"]["trustedCa"]["filename"],
            "/etc/xds/ca.pem"
        );
        assert_eq!(
            ts["commonTlsContext"]["tlsCertificates"][0]["privateKey"]["filename"],
            "/etc/xds/tls.key"
        );
    }
}
