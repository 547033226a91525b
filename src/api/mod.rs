//! The `RedisCluster` custom resource (`redis-xds.dev/v1alpha1`).
//!
//! These types are the user-facing contract: the CRD in `crds/` is generated from them, the
//! Kubernetes watcher and the manifests directory both deserialize into them, and `compile`
//! reads them (through [`crate::model`]). Every field documented here is either turned into an
//! Envoy field by `compile` or rejected there with a reason; nothing is silently dropped.
//!
//! What the API server can check on its own is expressed in the schema (enums, ranges,
//! patterns, CEL rules), so a bad object is refused at `kubectl apply` time. `compile` repeats
//! every check because manifests files never pass through an API server.

pub mod duration;

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::duration::GoDuration;

/// API group of every resource redis-xds defines.
pub const GROUP: &str = "redis-xds.dev";
/// The only served (and stored) version.
pub const VERSION: &str = "v1alpha1";
/// Kind of the custom resource.
pub const KIND: &str = "RedisCluster";

/// One set of Redis servers (an Envoy cluster) and, optionally, a listener that sidecars open
/// for applications.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "redis-xds.dev",
    version = "v1alpha1",
    kind = "RedisCluster",
    namespaced,
    status = "RedisClusterStatus",
    shortname = "rdc",
    category = "redis-xds",
    doc = "A set of Redis servers that Envoy sidecars reach through redis_proxy, optionally with a listener the sidecars open for applications.",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Endpoints","type":"integer","jsonPath":".status.endpoints"}"#,
    printcolumn = r#"{"name":"Proxies","type":"integer","jsonPath":".status.proxies.connected"}"#,
    printcolumn = r#"{"name":"Synced","type":"integer","jsonPath":".status.proxies.synced"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("!has(self.mode) || self.mode != 'Sharded' || !has(self.topology)").message("spec.topology applies to mode Cluster only: Envoy discovers no topology for Sharded servers"))]
#[x_kube(validation = Rule::new("!has(self.mode) || self.mode != 'Sharded' || !has(self.listener) || !has(self.listener.readPolicy)").message("spec.listener.readPolicy applies to mode Cluster only: Envoy ignores it for Sharded servers"))]
#[x_kube(validation = Rule::new("has(self.mode) && self.mode == 'Sharded' || !has(self.sharding)").message("spec.sharding applies to mode Sharded only: a Redis Cluster places keys by slot, and Envoy given a load balancer for one sends keys to the wrong primary"))]
#[x_kube(validation = Rule::new("!has(self.mode) || self.mode != 'Sharded' || !has(self.dnsLookupFamily)").message("spec.dnsLookupFamily applies to mode Cluster only: Sharded endpoints are IP addresses"))]
#[x_kube(validation = Rule::new("!has(self.mode) || self.mode != 'Sharded' || !has(self.endpointAuth) || size(self.endpointAuth) == 0").message("spec.endpointAuth applies to mode Cluster only: Envoy authenticates Sharded servers with auth alone"))]
#[x_kube(validation = Rule::new("!has(self.awsIam) || !has(self.auth) && (!has(self.endpointAuth) || size(self.endpointAuth) == 0)").message("awsIam replaces auth and endpointAuth: Envoy would mix IAM tokens with these passwords"))]
#[serde(rename_all = "camelCase")]
pub struct RedisClusterSpec {
    /// How Envoy talks to the servers. `Cluster` (default): the Redis Cluster protocol, Envoy
    /// learns the slot map itself. `Sharded`: independent primaries, keys spread by consistent
    /// hashing on a stable endpoint name.
    #[serde(default)]
    pub mode: Mode,

    /// Where the Redis servers are: exactly one of `selector`, `service` or `static`.
    pub endpoints: Endpoints,

    /// Redis port on the endpoints found by `selector` or `service`. Default 6379.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u32>,

    /// Upstream AUTH: Envoy authenticates to every server with this Secret's `password` (and
    /// optional `username`). The Secret lives in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,

    /// AWS IAM authentication to ElastiCache or MemoryDB instead of a password: Envoy signs
    /// short-lived tokens with the sidecar's AWS credentials (`RedisProtocolOptions.aws_iam`).
    /// Not together with `auth` or `endpointAuth`, whose passwords Envoy would ignore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_iam: Option<AwsIam>,

    /// Credentials of single servers, e.g. an ACL user per node: a server at `address`
    /// authenticates with its own Secret instead of `auth`'s
    /// (`RedisProtocolOptions.credentials`). Servers not listed use `auth`. Mode Cluster
    /// only: Envoy uses these for the servers it discovers, never for Sharded servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub endpoint_auth: Vec<EndpointAuth>,

    /// TLS to the Redis servers (Envoy `Cluster.transport_socket`, `UpstreamTlsContext`): for
    /// the seeds and every server the cluster discovers, for commands and health checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,

    /// TCP keepalive on the connections to the servers
    /// (`Cluster.upstream_connection_options.tcp_keepalive`). Default on: first probe after
    /// 60s idle, then every 10s, 3 probes; a server that vanished without closing its
    /// connections is noticed in about 90s instead of the kernel's two hours, and idle
    /// connections survive NAT and conntrack timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,

    /// Upstream connect timeout (Envoy `Cluster.connect_timeout`). Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<GoDuration>,

    /// How Envoy resolves host names among the seeds and in `MOVED`/`ASK` replies (mode
    /// Cluster only): Envoy `Cluster.dns_lookup_family` and the listener's DNS cache.
    /// Default `V4Preferred`: Envoy's own default (`Auto`) takes the IPv6 address of a name
    /// that has both (`localhost` is `::1` first), stranding servers that listen on IPv4 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_lookup_family: Option<DnsLookupFamily>,

    /// Topology refresh settings (mode Cluster only): Envoy `RedisClusterConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<Topology>,

    /// How keys are spread over the servers and how servers are checked (mode Sharded only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharding: Option<Sharding>,

    /// The listener sidecars open for applications. Without it this RedisCluster is only a
    /// target of other RedisClusters' routes and mirrors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<Listener>,
}

/// How Envoy distributes keys over the servers.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Redis Cluster protocol (`envoy.clusters.redis`, CLUSTER_PROVIDED load balancing).
    #[default]
    Cluster,
    /// Independent primaries, ring-hash on the endpoint name, Redis health checks.
    Sharded,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Cluster => "Cluster",
            Mode::Sharded => "Sharded",
        })
    }
}

/// Mode Sharded: the consistent hash over the servers' stable names, and their health checks.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.minimumRingSize) || !has(self.maximumRingSize) || self.minimumRingSize <= self.maximumRingSize").message("minimumRingSize must not exceed maximumRingSize"))]
#[x_kube(validation = Rule::new("has(self.lbPolicy) && self.lbPolicy == 'Maglev' ? !has(self.hashFunction) && !has(self.minimumRingSize) && !has(self.maximumRingSize) : !has(self.tableSize)").message("hashFunction and the ring sizes apply to RingHash, tableSize to Maglev"))]
#[serde(rename_all = "camelCase")]
pub struct Sharding {
    /// `RingHash` (default, Envoy `RING_HASH`) or `Maglev` (`MAGLEV`: a fixed-size table,
    /// faster lookups, slightly more keys move when a server changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb_policy: Option<ShardingPolicy>,
    /// Hash of the server names onto the ring (`ring_hash_lb_config.hash_function`).
    /// Default `XXHash`; `MurmurHash2` places keys as libketama-style clients do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_function: Option<HashFunction>,
    /// Ring entries at least (`ring_hash_lb_config.minimum_ring_size`). Envoy default 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 8_388_608))]
    pub minimum_ring_size: Option<u32>,
    /// Ring entries at most (`ring_hash_lb_config.maximum_ring_size`). Envoy default 8M.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 8_388_608))]
    pub maximum_ring_size: Option<u32>,
    /// Maglev table size, a prime (`maglev_lb_config.table_size`). Envoy default 65537.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 5_000_011))]
    pub table_size: Option<u32>,
    /// Redis health checks (`envoy.health_checkers.redis`, a PING per interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Passive health checking (Envoy `Cluster.outlier_detection`): a server that fails
    /// connections or times out on consecutive commands is ejected from the ring for a
    /// while, so its keys go to the next server instead of failing until the next health
    /// checks. On by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
}

/// Outlier detection for Redis servers. Only Envoy's local-origin failures count
/// (`split_external_local_origin_errors`): failed connections and command timeouts, never
/// Redis error replies, which a client's wrong command would cause on a healthy server.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// `false` turns it off. Default `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Consecutive failures that eject a server (`consecutive_local_origin_failure`).
    /// Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub consecutive_failures: Option<u32>,
    /// How often ejections are reviewed (`interval`). Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<GoDuration>,
    /// How long a first ejection lasts, multiplied by the number of times the server was
    /// ejected (`base_ejection_time`). Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<GoDuration>,
    /// The largest share of servers ejected at once, in percent (`max_ejection_percent`).
    /// Default 50: an outage of most servers leaves keys where they are rather than
    /// piling every key onto the last ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_ejection_percent: Option<u32>,
}

/// Mode Sharded's load balancer.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ShardingPolicy {
    /// Consistent hash ring (Ketama).
    #[default]
    RingHash,
    /// Maglev.
    Maglev,
}

/// Envoy `RingHashLbConfig.HashFunction`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HashFunction {
    /// xxHash (`XX_HASH`).
    #[default]
    #[serde(rename = "XXHash")]
    XxHash,
    /// MurmurHash2 (`MURMUR_HASH_2`).
    MurmurHash2,
}

/// Health check timings (Envoy `HealthCheck`). A server marked down moves its keys to the
/// next one on the ring, so the defaults prefer not flapping to fast detection.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Time between checks (`interval`). Default 3s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<GoDuration>,
    /// Time a check may take (`timeout`). Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<GoDuration>,
    /// Failed checks before a server is marked down (`unhealthy_threshold`). Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub unhealthy_threshold: Option<u32>,
    /// Passed checks before it is up again (`healthy_threshold`). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub healthy_threshold: Option<u32>,
    /// A maintenance key (the Redis health checker's `key`): Envoy checks with `EXISTS key`
    /// instead of PING, and a server that holds the key fails, so setting it on a server
    /// drains it out of the hash ring (after `unhealthyThreshold` checks) while it keeps
    /// running; deleting it brings the server back. Default: PING.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub key: Option<String>,
}

/// Envoy `Cluster.DnsLookupFamily`: which addresses of a host name Envoy uses.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DnsLookupFamily {
    /// IPv4 when the name has an IPv4 address, else IPv6 (`V4_PREFERRED`).
    #[default]
    V4Preferred,
    /// IPv4 only (`V4_ONLY`).
    V4Only,
    /// IPv6 only (`V6_ONLY`).
    V6Only,
    /// IPv6 when the name has an IPv6 address, else IPv4 (`AUTO`, Envoy's default).
    Auto,
    /// Every address of both families (`ALL`).
    All,
}

/// Where the Redis servers are. Exactly one field is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.selector), has(self.service), has(self.static)].filter(x, x).size() == 1").message("set exactly one of endpoints.selector, endpoints.service or endpoints.static"))]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// Pods in this namespace whose labels match; the pod name is the stable endpoint
    /// name (StatefulSet pods keep it across restarts). Mode Cluster seeds with every one
    /// that has an IP, Ready or not: Envoy only asks seeds for CLUSTER SLOTS and rebuilds its
    /// cluster whenever they change. Mode Sharded sends one that is not Ready as DRAINING:
    /// out of the hash ring, its commands in flight completing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// A Service in this namespace: its EndpointSlice endpoints, ready or not, as for
    /// `selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub service: Option<String>,
    /// Fixed addresses, `host:port` or `name=host:port`. The name (default: the address
    /// itself) is what Sharded mode hashes on, so a server can move without moving keys.
    #[serde(default, rename = "static", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub static_: Option<Vec<String>>,
}

/// A reference to a Secret in the same namespace, and how Envoy gets its values.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Auth {
    /// The Secret holding `password` (required) and `username` (optional).
    pub secret_ref: SecretRef,
    /// `Inline` (default): the values travel to the proxy inside its configuration, over the
    /// authenticated xDS stream. `File`: the configuration only names files under
    /// `/etc/redis-xds/secrets/<secret name>/` that the sidecar mounts from the same Secret,
    /// so no password crosses the wire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
}

/// Client AUTH (`downstream_auth_passwords`, `downstream_auth_username`): the Secret of
/// `secretRef`, and during a password rotation the Secrets of `additionalSecretRefs` too.
/// Envoy accepts every password in its list and has one username, so every Secret must
/// carry the same `username` (or none).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DownstreamAuth {
    /// The Secret holding `password` (required) and `username` (optional): the current one.
    pub secret_ref: SecretRef,
    /// More Secrets whose `password` is accepted as well: the rotation window. Put the new
    /// Secret here, roll the clients onto it, then make it `secretRef` and drop the old one
    /// (docs/operations.md, "Rotating client passwords").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub additional_secret_refs: Vec<SecretRef>,
    /// As for `auth`: `Inline` (default) or `File`, for every Secret named here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
}

/// AWS IAM authentication (Envoy `AwsIam`, with the IAM-enabled user as `auth_username`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AwsIam {
    /// The cache (replication group or cluster) name the tokens are for (`cache_name`).
    #[schemars(length(min = 1, max = 255))]
    pub cache_name: String,
    /// The IAM-enabled Redis user Envoy authenticates as (`auth_username`).
    #[schemars(length(min = 1, max = 255))]
    pub user: String,
    /// `ElastiCache` (default) or `MemoryDB` (`service_name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<AwsIamService>,
    /// AWS region of the cache (`region`). Default: the sidecar's region provider chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,
    /// Lifetime of each token (`expiration_time`), at most 15m. Envoy default 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_time: Option<GoDuration>,
    /// Where the sidecar gets the AWS credentials that sign the tokens
    /// (`credential_provider`). Default: Envoy's default chain (environment, credentials
    /// file, web identity from `AWS_WEB_IDENTITY_TOKEN_FILE`, container and instance
    /// metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_provider: Option<AwsCredentialProvider>,
}

/// Envoy `AwsCredentialProvider`: files on the sidecar only, so that no AWS secret passes
/// through redis-xds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.webIdentity) || has(self.credentialsFile)").message("name webIdentity, credentialsFile or both"))]
pub struct AwsCredentialProvider {
    /// `AssumeRoleWithWebIdentity` with a token file (`assume_role_with_web_identity_provider`):
    /// EKS IAM roles for service accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_identity: Option<AwsWebIdentity>,
    /// A file in the AWS credentials format (`credentials_file_provider`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<AwsCredentialsFile>,
    /// Use only the providers named here, not Envoy's default chain with these settings
    /// (`custom_credential_provider_chain`). Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only_these: Option<bool>,
}

/// Web identity federation (`AssumeRoleWithWebIdentityCredentialProvider`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AwsWebIdentity {
    /// The role to assume (`role_arn`), e.g. `arn:aws:iam::123456789012:role/redis`.
    #[schemars(length(min = 20, max = 2048))]
    pub role_arn: String,
    /// Path of the web identity token on the sidecar (`web_identity_token_data_source`;
    /// Envoy re-reads it when it is rotated), e.g.
    /// `/var/run/secrets/eks.amazonaws.com/serviceaccount/token`.
    #[schemars(length(min = 1, max = 4096))]
    pub token_file: String,
    /// `role_session_name`. Default: Envoy's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 64))]
    pub role_session_name: Option<String>,
}

/// An AWS credentials file (`CredentialsFileCredentialProvider`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AwsCredentialsFile {
    /// Path of the file on the sidecar (`credentials_data_source`).
    #[schemars(length(min = 1, max = 4096))]
    pub path: String,
    /// The profile to read (`profile`). Default: `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub profile: Option<String>,
}

/// Which AWS service signs the IAM tokens.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AwsIamService {
    /// Amazon ElastiCache (`elasticache`).
    #[default]
    ElastiCache,
    /// Amazon MemoryDB (`memorydb`).
    #[serde(rename = "MemoryDB")]
    MemoryDb,
}

/// AUTH material for the server at one address.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointAuth {
    /// The server's `ip:port`, as the endpoints (or, in mode Cluster, CLUSTER SLOTS) name it.
    #[schemars(length(min = 1, max = 64))]
    pub address: String,
    /// Its Secret (`password`, optional `username`) and how the proxy gets it.
    #[serde(flatten)]
    pub auth: Auth,
}

/// How a proxy receives AUTH material.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Delivery {
    /// Inside the configuration.
    #[default]
    Inline,
    /// As files the sidecar mounts.
    File,
}

/// TCP keepalive settings (Envoy `TcpKeepalive`); whole seconds.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TcpKeepalive {
    /// Idle time before the first probe (`keepalive_time`). Default 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<GoDuration>,
    /// Time between probes (`keepalive_interval`). Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<GoDuration>,
    /// Unanswered probes before the connection is dropped (`keepalive_probes`). Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub probes: Option<u32>,
}

/// TLS from Envoy to the Redis servers.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamTls {
    /// A Secret whose `ca.crt` holds the CA certificates that may sign the servers'
    /// certificates (`validation_context.trusted_ca`). Default: the system trust store of the
    /// sidecar, `/etc/ssl/certs/ca-certificates.crt` (public CAs, as managed Redis uses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretRef>,
    /// A ConfigMap holding the CA bundle instead (as trust-manager's Bundles and
    /// cert-manager's CA injection publish them). The sidecar mounts it at
    /// `/etc/redis-xds/configmaps/<name>/` and Envoy reads `<key>` there; redis-xds itself
    /// never reads ConfigMaps (its RBAC grants no access to them), so Envoy is the one to
    /// judge the bundle. Not together with `caSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_config_map_ref: Option<ConfigMapKeyRef>,
    /// The name sent as SNI and required among the certificate's DNS names (`sni`,
    /// `validation_context.match_typed_subject_alt_names`). Without it, any certificate the
    /// CA signed is accepted, whatever its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub server_name: Option<String>,
    /// A Secret with `tls.crt` and `tls.key` (a `kubernetes.io/tls` Secret) that Envoy presents
    /// to servers that require client certificates (`tls-auth-clients yes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_secret_ref: Option<SecretRef>,
    /// `Inline` (default) or `File`, as for `auth`: with `File` the configuration names
    /// files under `/etc/redis-xds/secrets/<secret name>/` that the sidecar mounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
}

/// Names a key of a ConfigMap in the referring object's namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
pub struct ConfigMapKeyRef {
    /// ConfigMap name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key holding the PEM bundle. Default `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

/// Names a Secret in the referring object's namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Envoy `envoy.clusters.redis` topology refresh settings.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Topology {
    /// How often Envoy re-reads CLUSTER SLOTS (`cluster_refresh_rate`). Envoy default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_interval: Option<GoDuration>,
    /// Timeout of one topology request (`cluster_refresh_timeout`). Envoy default 3s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_timeout: Option<GoDuration>,
    /// Minimum time between redirection-triggered refreshes (`redirect_refresh_interval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_refresh_interval: Option<GoDuration>,
    /// MOVED/ASK replies that trigger a refresh (`redirect_refresh_threshold`); 0 disables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = u32::MAX))]
    pub redirect_refresh_threshold: Option<u32>,
    /// Upstream failures that trigger a refresh (`failure_refresh_threshold`); 0 disables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = u32::MAX))]
    pub failure_refresh_threshold: Option<u32>,
    /// Degraded-host events that trigger a refresh (`host_degraded_refresh_threshold`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = u32::MAX))]
    pub host_degraded_refresh_threshold: Option<u32>,
    /// Ask every server its zone with INFO at each topology refresh
    /// (`enable_zone_discovery`), for the zone-aware read policies. Only servers that
    /// report `availability_zone` (Valkey 8.1 and later, its `availability-zone` setting)
    /// have one; Redis does not. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_discovery: Option<bool>,
}

/// A `redis_proxy` listener on the sidecars that `clients` selects.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// Port the sidecar listens on for applications.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u32,
    /// IP address the sidecar listens on. Default 127.0.0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Which proxies get this listener. Default: every proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<Clients>,
    /// Where reads go (mode Cluster only). Default Master.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_policy: Option<ReadPolicy>,
    /// Per-command timeout (`op_timeout`). Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_timeout: Option<GoDuration>,
    /// Hash only the `{...}` part of keys (`enable_hashtagging`). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_hashtagging: Option<bool>,
    /// Follow MOVED/ASK (`enable_redirection`). Default true in mode Cluster, false in Sharded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_redirection: Option<bool>,
    /// Per-command stats on the upstream (`enable_command_stats`). Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_command_stats: Option<bool>,
    /// Flush pipelined requests after this long (`buffer_flush_timeout`). Envoy default 3ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer_flush_timeout: Option<GoDuration>,
    /// Buffer this many bytes before flushing (`max_buffer_size_before_flush`); 0 flushes
    /// every request at once. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = u32::MAX))]
    pub max_buffer_size_before_flush: Option<u32>,
    /// Cap on connections to hosts learned by redirection
    /// (`max_upstream_unknown_connections`). Envoy default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = u32::MAX))]
    pub max_upstream_unknown_connections: Option<u32>,
    /// Cap on new upstream connections per second, per Redis server, so that a reconnect
    /// storm (every client of every sidecar at once) cannot flood Redis
    /// (`settings.connection_rate_limit.connection_rate_limit_per_sec`). Default: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = u32::MAX))]
    pub connection_rate_limit: Option<u32>,
    /// RESP version of clients and servers (`protocol_version`). `RESP3`: clients must send
    /// `HELLO 3` before any data command, and every server routed to must speak RESP3
    /// (Redis 6.0+). Default `RESP2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<ProtocolVersion>,
    /// Commands added by Redis modules (e.g. `json.get`), which Envoy otherwise refuses as
    /// unsupported (`custom_commands`). Envoy routes them on their first argument as the key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub custom_commands: Vec<String>,
    /// Command latency stats in microseconds instead of milliseconds (`latency_in_micros`).
    /// Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_in_micros: Option<bool>,
    /// Match route prefixes case-insensitively (`prefix_routes.case_insensitive`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_insensitive: Option<bool>,
    /// Prefix routes; Envoy picks the longest matching prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Keys no route matches. Default: this RedisCluster, no mirror.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_all: Option<CatchAll>,
    /// Clients must AUTH with this Secret's `password` (and `username`, when present), or
    /// with a password of `additionalSecretRefs` during a rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downstream_auth: Option<DownstreamAuth>,
    /// Clients' AUTH is decided by an external gRPC service
    /// (`envoy.service.redis_auth.v3.RedisProxyExternalAuth`, `external_auth_provider`), e.g.
    /// one that checks one-time tokens. It overrides `downstreamAuth`'s passwords.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_auth: Option<ExternalAuth>,
    /// Injected faults (`faults`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<Fault>,
}

/// An external AUTH service for downstream clients.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalAuth {
    /// The service's `host:port`, reached from the sidecar over plaintext gRPC
    /// (`grpc_service.google_grpc.target_uri`); usually a container of the same Pod.
    #[schemars(length(min = 1, max = 261))]
    pub service: String,
    /// How long one AUTH may wait for the service (`grpc_service.timeout`). Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<GoDuration>,
    /// Honour the expiration the service returns: after it, commands are refused until the
    /// client authenticates again (`enable_auth_expiration`). Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_auth_expiration: Option<bool>,
}

/// Selects the proxies (sidecars) that receive a listener, by the namespace and labels they
/// report in their xDS node metadata.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Clients {
    /// Namespaces of the proxies; `*` means any. Default `["*"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
    /// Labels of the proxies. Default: any labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// Envoy `RedisProxy.ProtocolVersion`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProtocolVersion {
    /// RESP2.
    #[default]
    #[serde(rename = "RESP2")]
    Resp2,
    /// RESP3 (clients send `HELLO 3`).
    #[serde(rename = "RESP3")]
    Resp3,
}

/// Envoy `ConnPoolSettings.ReadPolicy`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadPolicy {
    /// Reads go to primaries only.
    Master,
    /// Primaries, replicas when no primary is healthy.
    PreferMaster,
    /// Replicas only.
    Replica,
    /// Replicas, primaries when no replica is healthy.
    PreferReplica,
    /// Any node.
    Any,
    /// Replicas in the proxy's zone, then any replica, then the primary
    /// (`LOCAL_ZONE_AFFINITY`). Needs `topology.zoneDiscovery` (servers that report
    /// `availability_zone` in INFO: Valkey 8.1 and later, not Redis) and a proxy that
    /// knows its zone (`node.locality.zone`: `bootstrap --zone`; injected sidecars take the
    /// pod's `topology.kubernetes.io/zone` label).
    LocalZoneAffinity,
    /// Replicas in the proxy's zone, then the primary if it is in that zone, then any
    /// replica, then the primary (`LOCAL_ZONE_AFFINITY_REPLICAS_AND_PRIMARY`). Needs what
    /// `LocalZoneAffinity` needs.
    LocalZoneAffinityReplicasAndPrimary,
}

/// A prefix route.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Key prefix. The longest matching prefix wins.
    #[schemars(length(min = 1))]
    pub prefix: String,
    /// Target RedisCluster: `name` (same namespace) or `namespace/name`.
    #[schemars(length(min = 1))]
    pub cluster: String,
    /// Strip the prefix before forwarding. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_prefix: Option<bool>,
    /// Read commands go to this RedisCluster instead (`read_command_policy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_cluster: Option<String>,
    /// Copies of matching commands go to these RedisClusters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirror: Vec<Mirror>,
    /// Rewrites each key before it is forwarded: `%KEY%` stands for the key (after
    /// `removePrefix`), e.g. `tenant-a:%KEY%` (`key_formatter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1000))]
    pub key_formatter: Option<String>,
}

/// What keys matching no route do.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CatchAll {
    /// Target RedisCluster. Default: the RedisCluster that owns the listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Read commands go to this RedisCluster instead (`read_command_policy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_cluster: Option<String>,
    /// Copies of commands go to these RedisClusters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirror: Vec<Mirror>,
    /// Rewrites each key before it is forwarded, as `routes[].keyFormatter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1000))]
    pub key_formatter: Option<String>,
}

/// A request mirror (`request_mirror_policy`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Mirror {
    /// Mirror target RedisCluster: `name` or `namespace/name`.
    #[schemars(length(min = 1))]
    pub cluster: String,
    /// Share of commands mirrored, 0..100. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub percent: Option<u32>,
    /// Mirror writes only. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_read_commands: Option<bool>,
}

/// An injected fault (`RedisFault`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.type != 'Delay' || has(self.delay)").message("a Delay fault needs delay"))]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    /// Error: reply with an error. Delay: hold the command for `delay`.
    #[serde(rename = "type")]
    pub type_: FaultType,
    /// Share of matching commands affected, 0..100.
    #[schemars(range(min = 0, max = 100))]
    pub percent: u32,
    /// Commands affected (e.g. GET); empty means every command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
    /// How long a Delay fault holds the command, or an Error fault its error (whole
    /// milliseconds, as Envoy counts them). Required for Delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<GoDuration>,
}

/// Envoy `RedisFault.RedisFaultType`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultType {
    /// Reply with an error.
    Error,
    /// Delay the command.
    Delay,
}

/// Observed state, written by the replica that holds the status Lease.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedisClusterStatus {
    /// `metadata.generation` these facts were computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` (the spec is valid and its references resolve) and `Programmed` (the
    /// proxies that should have it accepted it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Resolved Redis endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<u32>,
    /// Proxies that should receive this object's resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxies: Option<ProxyCounts>,
}

/// Counts of the proxies that should receive an object's resources.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProxyCounts {
    /// Connected proxies that select this object.
    pub connected: u32,
    /// Of those, the ones that ACKed the current version.
    pub synced: u32,
    /// Of those, the ones that NACKed it.
    pub rejected: u32,
}

/// Labels as found on Pods, Services and proxies.
pub type Labels = BTreeMap<String, String>;

/// The names of the Secrets a spec references: every `name` under a field called
/// `secretRef` or ending in `SecretRef` (`auth`, `listener.downstreamAuth`, `endpointAuth`,
/// `tls`), and in each item of a list ending in `SecretRefs`
/// (`listener.downstreamAuth.additionalSecretRefs`), in the RedisCluster's own namespace. Sorted, without repeats. The Kubernetes
/// source keeps the data of these Secrets only.
pub fn secret_names(spec: &RedisClusterSpec) -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (field, v) in map {
                    if (field == "secretRef" || field.ends_with("SecretRef"))
                        && let Some(name) = v.get("name").and_then(|n| n.as_str())
                    {
                        out.insert(name.to_owned());
                    }
                    if field.ends_with("SecretRefs")
                        && let Some(items) = v.as_array()
                    {
                        out.extend(
                            items
                                .iter()
                                .filter_map(|i| i.get("name")?.as_str())
                                .map(str::to_owned),
                        );
                    }
                    walk(v, out);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = std::collections::BTreeSet::new();
    if let Ok(value) = serde_json::to_value(spec) {
        walk(&value, &mut out);
    }
    out.into_iter().collect()
}
