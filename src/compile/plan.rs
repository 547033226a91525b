//! Checks one RedisCluster on its own and resolves what it needs from the model (endpoints,
//! Secrets). The result is a [`Plan`]: everything the Envoy builders need, already validated,
//! or the list of every problem found (not just the first, so one edit can fix them all).
//!
//! References to other RedisClusters are only parsed here; whether their targets exist and
//! are accepted is decided across objects in [`super::compile`].

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::problem::{Problem, Reason};
use super::selector;
use crate::api::duration::GoDuration;
use crate::api::{
    DnsLookupFamily, FaultType, HashFunction, Mode, ProtocolVersion, ReadPolicy, RedisClusterSpec,
    ShardingPolicy,
};
use crate::model::{Model, ObjectKey, RedisClusterObject, Secret, SecretValue};

/// Where sidecars mount Secrets for `delivery: File`: `<root>/<secret name>/<key>`.
pub const SECRET_MOUNT_ROOT: &str = "/etc/redis-xds/secrets";
/// Where sidecars mount the ConfigMaps named by `spec.tls.caConfigMapRef`:
/// `<root>/<configmap name>/<key>`.
pub const CONFIG_MAP_MOUNT_ROOT: &str = "/etc/redis-xds/configmaps";

/// Default Redis port of `selector` and `service` endpoints.
pub const DEFAULT_REDIS_PORT: u16 = 6379;
/// Default upstream connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default per-command timeout; Envoy requires one.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Default listener address: sidecars serve their own pod only.
pub const DEFAULT_LISTENER_ADDRESS: &str = "127.0.0.1";

/// A Redis server address with its stable name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    /// Stable name; Sharded mode hashes on it.
    pub name: String,
    /// IP address or (Cluster mode, static only) DNS name.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Mode Sharded, a server that is not Ready: sent with `health_status: DRAINING`, so
    /// that it leaves the hash ring at once (no new keys) while Envoy keeps its connections
    /// and what is in flight on them completes. Removing it from the endpoints instead
    /// would make Envoy close them.
    pub draining: bool,
}

/// AUTH material from a Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// `username`, when the Secret has one.
    pub username: Option<SecretValue>,
    /// `password`.
    pub password: SecretValue,
    /// Inline, or files named after the Secret.
    pub delivery: crate::api::Delivery,
    /// The Secret's name, for file paths.
    pub secret: String,
}

/// TLS to the servers, with its Secrets resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPlan {
    /// `ca.crt` of the CA Secret, with the Secret's name; `None`: `ca_file`, else the
    /// system trust store.
    pub ca: Option<(String, SecretValue)>,
    /// The CA bundle as a file the sidecar mounts from a ConfigMap:
    /// `/etc/redis-xds/configmaps/<name>/<key>`.
    pub ca_file: Option<String>,
    /// SNI and required DNS name.
    pub server_name: Option<String>,
    /// `tls.crt` and `tls.key` of the client certificate Secret, with its name.
    pub client: Option<(String, SecretValue, SecretValue)>,
    /// Inline, or files named after the Secrets.
    pub delivery: crate::api::Delivery,
}

/// Which proxies a listener goes to.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientMatcher {
    /// Namespaces; `None` means any.
    pub namespaces: Option<BTreeSet<String>>,
    /// Label selector; `None` means any labels.
    pub selector: Option<LabelSelector>,
}

impl ClientMatcher {
    /// True when the proxy with this identity gets the listener. A proxy that reported no
    /// namespace (or no labels) matches every namespace (or selector): it said nothing that
    /// could exclude it.
    pub fn selects(&self, namespace: Option<&str>, labels: Option<&crate::api::Labels>) -> bool {
        let ns_ok = match (&self.namespaces, namespace) {
            (Some(allowed), Some(ns)) => allowed.contains(ns),
            _ => true,
        };
        let labels_ok = match (&self.selector, labels) {
            (Some(sel), Some(labels)) => selector::matches(sel, labels),
            _ => true,
        };
        ns_ok && labels_ok
    }

    /// False only when no proxy can be selected by both.
    pub fn may_overlap(&self, other: &ClientMatcher) -> bool {
        let ns = match (&self.namespaces, &other.namespaces) {
            (Some(a), Some(b)) => !a.is_disjoint(b),
            _ => true,
        };
        let labels = match (&self.selector, &other.selector) {
            (Some(a), Some(b)) => selector::may_overlap(a, b),
            _ => true,
        };
        ns && labels
    }
}

/// A reference from this object to another RedisCluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ref {
    /// Field that holds it, for problems.
    pub field: String,
    /// Target.
    pub target: ObjectKey,
}

/// A validated mirror.
#[derive(Clone, Debug, PartialEq)]
pub struct MirrorPlan {
    /// Target.
    pub target: ObjectKey,
    /// 0..=100.
    pub percent: u32,
    /// Writes only.
    pub exclude_read_commands: bool,
}

/// A validated route (`prefix` is empty for the catch-all route).
#[derive(Clone, Debug, PartialEq)]
pub struct RoutePlan {
    /// Key prefix.
    pub prefix: String,
    /// Strip the prefix.
    pub remove_prefix: bool,
    /// Target.
    pub target: ObjectKey,
    /// Target of read commands.
    pub read_target: Option<ObjectKey>,
    /// Mirrors.
    pub mirrors: Vec<MirrorPlan>,
    /// Key rewrite with `%KEY%`, if any.
    pub key_formatter: Option<String>,
}

/// A validated fault.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultPlan {
    /// Error or delay.
    pub kind: FaultType,
    /// 0..=100.
    pub percent: u32,
    /// Command names as written; empty means all.
    pub commands: Vec<String>,
    /// Delay faults only.
    pub delay: Option<Duration>,
}

/// A validated listener.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerPlan {
    /// Address.
    pub address: IpAddr,
    /// Port.
    pub port: u16,
    /// Who gets it.
    pub clients: ClientMatcher,
    /// Read policy (Cluster mode).
    pub read_policy: Option<ReadPolicy>,
    /// Per-command timeout.
    pub op_timeout: Duration,
    /// Hashtagging.
    pub enable_hashtagging: bool,
    /// Redirection.
    pub enable_redirection: bool,
    /// Command stats.
    pub enable_command_stats: bool,
    /// Buffer flush timeout, if set.
    pub buffer_flush_timeout: Option<Duration>,
    /// Buffer size before flush.
    pub max_buffer_size_before_flush: u32,
    /// Unknown upstream connection cap, if set.
    pub max_upstream_unknown_connections: Option<u32>,
    /// Case-insensitive prefixes.
    pub case_insensitive: bool,
    /// New upstream connections per second per server, if capped.
    pub connection_rate_limit: Option<u32>,
    /// RESP version.
    pub protocol_version: ProtocolVersion,
    /// Module commands, as written.
    pub custom_commands: Vec<String>,
    /// Latency stats in microseconds.
    pub latency_in_micros: bool,
    /// The DNS cache for host names in redirections: set when redirection is on, with the
    /// owner's lookup family.
    pub dns_cache: Option<DnsLookupFamily>,
    /// Prefix routes, in spec order.
    pub routes: Vec<RoutePlan>,
    /// The catch-all route.
    pub catch_all: RoutePlan,
    /// Client AUTH: the current Secret's credentials, then the other passwords accepted
    /// during a rotation, each with its Secret's name.
    pub downstream_auth: Option<(Credentials, Vec<(String, SecretValue)>)>,
    /// External AUTH service: `host:port`, timeout, whether expirations apply.
    pub external_auth: Option<(String, Duration, bool)>,
    /// Faults.
    pub faults: Vec<FaultPlan>,
    /// Every RedisCluster this listener sends commands to, with the field naming it.
    pub refs: Vec<Ref>,
}

/// Topology settings (Cluster mode).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopologyPlan {
    /// `cluster_refresh_rate`.
    pub refresh_interval: Option<Duration>,
    /// `cluster_refresh_timeout`.
    pub refresh_timeout: Option<Duration>,
    /// `redirect_refresh_interval`.
    pub redirect_refresh_interval: Option<Duration>,
    /// `redirect_refresh_threshold`.
    pub redirect_refresh_threshold: Option<u32>,
    /// `failure_refresh_threshold`.
    pub failure_refresh_threshold: u32,
    /// `host_degraded_refresh_threshold`.
    pub host_degraded_refresh_threshold: u32,
    /// `enable_zone_discovery`.
    pub zone_discovery: bool,
}

impl TopologyPlan {
    /// The field of a setting that acts only on redirections a listener follows: a
    /// `redirectRefreshThreshold` above 0, or a `redirectRefreshInterval` when it is not
    /// also the interval of the failure or degraded-host refreshes. Envoy's cluster counts
    /// a MOVED or ASK only when a pool follows it (`enable_redirection`).
    pub fn redirect_only_field(&self) -> Option<&'static str> {
        if self.redirect_refresh_threshold.is_some_and(|t| t > 0) {
            Some("spec.topology.redirectRefreshThreshold")
        } else if self.redirect_refresh_interval.is_some()
            && self.failure_refresh_threshold == 0
            && self.host_degraded_refresh_threshold == 0
        {
            Some("spec.topology.redirectRefreshInterval")
        } else {
            None
        }
    }
}

/// Mode Sharded: the load balancer over the servers and their health checks.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardingPlan {
    /// Ring hash or Maglev.
    pub policy: ShardingPolicy,
    /// Ring hash: the hash function, when set.
    pub hash_function: Option<HashFunction>,
    /// Ring hash: minimum ring size, when set.
    pub minimum_ring_size: Option<u32>,
    /// Ring hash: maximum ring size, when set.
    pub maximum_ring_size: Option<u32>,
    /// Maglev: table size (a prime), when set.
    pub table_size: Option<u32>,
    /// Health check interval.
    pub interval: Duration,
    /// Health check timeout.
    pub timeout: Duration,
    /// Failures before a server is down.
    pub unhealthy_threshold: u32,
    /// Successes before it is up.
    pub healthy_threshold: u32,
    /// The health checker's maintenance key (`EXISTS key` instead of PING), when set.
    pub health_check_key: Option<String>,
    /// Outlier detection, unless turned off.
    pub outlier_detection: Option<OutlierPlan>,
}

/// Outlier detection of mode Sharded (see [`crate::api::OutlierDetection`]).
#[derive(Clone, Debug, PartialEq)]
pub struct OutlierPlan {
    /// Consecutive local-origin failures that eject a server.
    pub consecutive_failures: u32,
    /// Review interval.
    pub interval: Duration,
    /// Base ejection time.
    pub base_ejection_time: Duration,
    /// Largest share of servers ejected at once, percent.
    pub max_ejection_percent: u32,
}

/// Outlier detection defaults of mode Sharded: five consecutive failed connections or timed
/// out commands eject a server for 30s (longer on each repeat), at most half of them.
pub const DEFAULT_OUTLIER: OutlierPlan = OutlierPlan {
    consecutive_failures: 5,
    interval: Duration::from_secs(10),
    base_ejection_time: Duration::from_secs(30),
    max_ejection_percent: 50,
};

/// Health check defaults of mode Sharded: a server marked down moves its keys to the next
/// on the ring, so flapping is avoided rather than detection hurried.
pub const DEFAULT_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(3);
/// See [`DEFAULT_HEALTH_CHECK_INTERVAL`].
pub const DEFAULT_HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// See [`DEFAULT_HEALTH_CHECK_INTERVAL`].
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
/// See [`DEFAULT_HEALTH_CHECK_INTERVAL`].
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 1;

/// One RedisCluster, validated and resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Identity.
    pub key: ObjectKey,
    /// Mode.
    pub mode: Mode,
    /// Resolved endpoints, sorted by name.
    pub endpoints: Vec<Endpoint>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Topology settings (Cluster mode).
    pub topology: TopologyPlan,
    /// How host names resolve (Cluster mode; `None` in Sharded mode).
    pub dns_lookup_family: Option<DnsLookupFamily>,
    /// Load balancing and health checks (Sharded mode; `None` in Cluster mode).
    pub sharding: Option<ShardingPlan>,
    /// Upstream AUTH.
    pub auth: Option<Credentials>,
    /// AWS IAM authentication instead of a password.
    pub aws_iam: Option<crate::api::AwsIam>,
    /// Upstream AUTH of single servers: IP address, port and credentials.
    pub endpoint_auth: Vec<(IpAddr, u16, Credentials)>,
    /// Upstream TLS.
    pub tls: Option<TlsPlan>,
    /// TCP keepalive: idle seconds before probing, seconds between probes, probes.
    pub tcp_keepalive: (u32, u32, u32),
    /// The listener, if any.
    pub listener: Option<ListenerPlan>,
}

/// Collects problems for one object.
struct Checker<'a> {
    key: &'a ObjectKey,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn report(&mut self, field: impl Into<String>, reason: Reason, message: impl Into<String>) {
        self.problems.push(Problem {
            object: self.key.clone(),
            field: field.into(),
            reason,
            message: message.into(),
        });
    }

    fn invalid(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.report(field, Reason::Invalid, message);
    }

    fn port(&mut self, field: &str, value: u32) -> u16 {
        match u16::try_from(value) {
            Ok(p) if p > 0 => p,
            _ => {
                self.invalid(field, format!("port {value} is out of range 1..65535"));
                1
            }
        }
    }

    /// A duration Envoy reads in whole milliseconds (`PROTOBUF_GET_MS_*`): a fraction of a
    /// millisecond would be dropped (`500us` becomes 0), so it is refused, not changed.
    fn millis(&mut self, field: &str, value: Option<&GoDuration>) -> Option<Duration> {
        let d = value?.get();
        if d.subsec_nanos() % 1_000_000 != 0 {
            let ms = d.as_millis();
            self.invalid(
                field,
                format!(
                    "{d:?} is not a whole number of milliseconds: Envoy counts this duration in milliseconds and would use {ms}ms; write e.g. {}ms",
                    ms.max(1)
                ),
            );
        }
        Some(d)
    }

    /// A duration in whole milliseconds, greater than 0.
    fn positive(&mut self, field: &str, value: Option<&GoDuration>) -> Option<Duration> {
        let d = self.millis(field, value)?;
        if d.is_zero() {
            self.invalid(field, "must be greater than 0");
        }
        Some(d)
    }

    fn percent(&mut self, field: &str, value: u32) -> u32 {
        if value > 100 {
            self.invalid(field, format!("percent {value} is out of range 0..100"));
        }
        value.min(100)
    }

    /// Parses `name` or `namespace/name`.
    fn reference(&mut self, field: &str, text: &str) -> Option<ObjectKey> {
        let (ns, name) = match text.split_once('/') {
            Some((ns, name)) => (ns, name),
            None => (self.key.namespace.as_str(), text),
        };
        if !is_dns_label(ns) || !is_dns_subdomain(name) {
            self.invalid(
                field,
                format!("{text:?} is not a RedisCluster reference: write `name` (same namespace) or `namespace/name`"),
            );
            return None;
        }
        Some(ObjectKey::new(ns, name))
    }

    /// The Secret `name` of this namespace, or a `SecretNotFound` problem at `field`.
    fn secret<'m>(&mut self, field: &str, model: &'m Model, name: &str) -> Option<&'m Secret> {
        let secret = model
            .secrets
            .get(&ObjectKey::new(&self.key.namespace, name));
        if secret.is_none() {
            self.report(
                field,
                Reason::SecretNotFound,
                format!(
                    "Secret {name:?} not found in namespace {:?}",
                    self.key.namespace
                ),
            );
        }
        secret
    }

    /// The value of `key` in the Secret `name` of this namespace, or a problem at `field`.
    fn secret_key(
        &mut self,
        field: &str,
        model: &Model,
        name: &str,
        key: &str,
    ) -> Option<SecretValue> {
        let secret = self.secret(field, model, name)?;
        match secret.data.get(key) {
            Some(v) if !v.expose().is_empty() => Some(v.clone()),
            _ => {
                self.report(
                    field,
                    Reason::SecretNotFound,
                    format!("Secret {} has no {key:?}: add it", secret.key),
                );
                None
            }
        }
    }

    fn credentials(
        &mut self,
        field: &str,
        model: &Model,
        auth: &crate::api::Auth,
    ) -> Option<Credentials> {
        let secret_name = auth.secret_ref.name.as_str();
        let secret = self.secret(field, model, secret_name)?;
        let secret_key = &secret.key;
        let Some(password) = secret.data.get("password") else {
            self.report(
                field,
                Reason::SecretNotFound,
                format!("Secret {secret_key} has no key \"password\": add it (and optionally \"username\")"),
            );
            return None;
        };
        if password.expose().is_empty() {
            self.invalid(
                field,
                format!("Secret {secret_key} has an empty \"password\""),
            );
            return None;
        }
        let username = secret
            .data
            .get("username")
            .filter(|u| !u.expose().is_empty())
            .cloned();
        Some(Credentials {
            username,
            password: password.clone(),
            delivery: auth.delivery.unwrap_or_default(),
            secret: secret_name.to_owned(),
        })
    }
}

/// How many endpoints `obj` resolves to (draining ones aside), whatever else is wrong with
/// it: the status shows them for objects that are not accepted too, so that the count never
/// hides a problem elsewhere (or suggests one where there is none).
pub fn endpoint_count(obj: &RedisClusterObject, model: &Model) -> usize {
    let mut c = Checker {
        key: &obj.key,
        problems: Vec::new(),
    };
    let port = match obj.spec.port {
        Some(p) => c.port("spec.port", p),
        None => DEFAULT_REDIS_PORT,
    };
    serving(&endpoints(&mut c, obj, model, port))
}

/// How many of `endpoints` serve: the ones not draining. What status shows as `endpoints`.
pub fn serving(endpoints: &[Endpoint]) -> usize {
    endpoints.iter().filter(|e| !e.draining).count()
}

/// Validates one object and resolves its inputs.
pub fn plan(obj: &RedisClusterObject, model: &Model) -> Result<Plan, Vec<Problem>> {
    let mut c = Checker {
        key: &obj.key,
        problems: Vec::new(),
    };
    let spec: &RedisClusterSpec = &obj.spec;
    let mode = spec.mode;

    let port = match spec.port {
        Some(p) => c.port("spec.port", p),
        None => DEFAULT_REDIS_PORT,
    };
    let endpoints = endpoints(&mut c, obj, model, port);

    let connect_timeout = c
        .positive("spec.connectTimeout", spec.connect_timeout.as_ref())
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);

    let mut topology = TopologyPlan::default();
    if let Some(t) = &spec.topology {
        // Cannot be shown on real Envoy: the topology settings exist only in the redis
        // cluster type's config, and a Sharded cluster is not of that type.
        if mode == Mode::Sharded {
            c.invalid(
                "spec.topology",
                "topology applies to mode Cluster only (Envoy discovers no topology for Sharded servers): remove it",
            );
        }
        topology = TopologyPlan {
            refresh_interval: c
                .positive("spec.topology.refreshInterval", t.refresh_interval.as_ref()),
            refresh_timeout: c.positive("spec.topology.refreshTimeout", t.refresh_timeout.as_ref()),
            redirect_refresh_interval: c.millis(
                "spec.topology.redirectRefreshInterval",
                t.redirect_refresh_interval.as_ref(),
            ),
            redirect_refresh_threshold: t.redirect_refresh_threshold,
            failure_refresh_threshold: t.failure_refresh_threshold.unwrap_or(0),
            host_degraded_refresh_threshold: t.host_degraded_refresh_threshold.unwrap_or(0),
            zone_discovery: t.zone_discovery.unwrap_or(false),
        };
    }

    let dns_lookup_family = match (mode, spec.dns_lookup_family) {
        (Mode::Cluster, family) => Some(family.unwrap_or_default()),
        (Mode::Sharded, None) => None,
        (Mode::Sharded, Some(_)) => {
            c.invalid(
                "spec.dnsLookupFamily",
                "dnsLookupFamily applies to mode Cluster only (Sharded endpoints are IP addresses): remove it",
            );
            None
        }
    };

    let sharding = sharding(&mut c, mode, spec.sharding.as_ref(), endpoints.len());

    let auth = spec
        .auth
        .as_ref()
        .and_then(|a| c.credentials("spec.auth.secretRef.name", model, a));

    let aws_iam = spec.aws_iam.clone();
    if let Some(iam) = &aws_iam {
        if spec.auth.is_some() {
            c.invalid(
                "spec.awsIam",
                "awsIam replaces auth: Envoy 1.40 sends IAM tokens on its command connections and this password, as awsIam.user, on its topology (CLUSTER SLOTS) connections only, two credentials for one user (seen on Envoy 1.40): remove spec.auth",
            );
        }
        if !spec.endpoint_auth.is_empty() {
            c.invalid(
                "spec.endpointAuth",
                "with awsIam Envoy authenticates to every server as awsIam.user with an IAM token and never sends these passwords (seen on Envoy 1.40): remove endpointAuth or awsIam",
            );
        }
        if let Some(p) = &iam.credential_provider {
            let paths = [
                p.web_identity.as_ref().map(|w| {
                    (
                        "spec.awsIam.credentialProvider.webIdentity.tokenFile",
                        &w.token_file,
                    )
                }),
                p.credentials_file.as_ref().map(|f| {
                    (
                        "spec.awsIam.credentialProvider.credentialsFile.path",
                        &f.path,
                    )
                }),
            ];
            for (field, path) in paths.into_iter().flatten() {
                if !path.starts_with('/') {
                    c.invalid(
                        field,
                        format!("{path:?} is not an absolute path: Envoy would look for it relative to its own working directory; write the full path on the sidecar"),
                    );
                }
            }
        }
        if iam.user.is_empty() {
            c.invalid(
                "spec.awsIam.user",
                "must not be empty: without a user Envoy turns IAM authentication off for this cluster",
            );
        }
        if let Some(e) = &iam.expiration_time
            && e.get() > MAX_AWS_IAM_EXPIRATION
        {
            c.invalid(
                "spec.awsIam.expirationTime",
                "must be at most 15m (AWS's limit for IAM authentication tokens)",
            );
        }
    }

    if mode == Mode::Sharded && !spec.endpoint_auth.is_empty() {
        c.invalid(
            "spec.endpointAuth",
            "endpointAuth applies to mode Cluster only: Envoy 1.40 authenticates Sharded servers with auth alone and never sends these passwords (seen on Envoy 1.40): use spec.auth",
        );
    }
    let mut endpoint_auth = Vec::new();
    let mut addresses = BTreeSet::new();
    for (i, e) in spec.endpoint_auth.iter().enumerate() {
        let base = format!("spec.endpointAuth[{i}]");
        let address = e
            .address
            .parse::<std::net::SocketAddr>()
            .ok()
            .filter(|a| a.port() > 0);
        let Some(address) = address else {
            c.invalid(
                format!("{base}.address"),
                format!(
                    "{:?} is not ip:port (Envoy matches servers by IP address and port)",
                    e.address
                ),
            );
            continue;
        };
        if !addresses.insert(address) {
            c.invalid(
                format!("{base}.address"),
                format!("{address} is listed twice"),
            );
        }
        if let Some(creds) = c.credentials(&format!("{base}.secretRef.name"), model, &e.auth) {
            endpoint_auth.push((address.ip(), address.port(), creds));
        }
    }

    let tls = spec.tls.as_ref().and_then(|t| tls(&mut c, model, t));

    let keepalive = spec.tcp_keepalive.clone().unwrap_or_default();
    let seconds = |c: &mut Checker<'_>, field: &str, value: Option<&GoDuration>, default: u32| {
        let Some(d) = value.map(GoDuration::get) else {
            return default;
        };
        match u32::try_from(d.as_secs()) {
            Ok(s) if s >= 1 && d.subsec_nanos() == 0 && s <= MAX_KEEPALIVE_SECONDS => s,
            _ => {
                c.invalid(
                    format!("spec.tcpKeepalive.{field}"),
                    "must be whole seconds from 1s to 32767s (Linux counts keepalive in seconds and refuses more for TCP_KEEPIDLE and TCP_KEEPINTVL; Envoy would then fail every connection)",
                );
                default
            }
        }
    };
    let tcp_keepalive = (
        seconds(&mut c, "time", keepalive.time.as_ref(), DEFAULT_KEEPALIVE.0),
        seconds(
            &mut c,
            "interval",
            keepalive.interval.as_ref(),
            DEFAULT_KEEPALIVE.1,
        ),
        match keepalive.probes {
            Some(p) if !(1..=100).contains(&p) => {
                c.invalid(
                    "spec.tcpKeepalive.probes",
                    format!("{p} is out of range 1..100"),
                );
                DEFAULT_KEEPALIVE.2
            }
            p => p.unwrap_or(DEFAULT_KEEPALIVE.2),
        },
    );

    let listener = spec
        .listener
        .as_ref()
        .map(|l| listener(&mut c, obj, model, l, topology.zone_discovery));

    if c.problems.is_empty() {
        Ok(Plan {
            key: obj.key.clone(),
            mode,
            endpoints,
            connect_timeout,
            topology,
            dns_lookup_family,
            sharding,
            auth,
            aws_iam,
            endpoint_auth,
            tls,
            tcp_keepalive,
            listener,
        })
    } else {
        Err(c.problems)
    }
}

fn endpoints(
    c: &mut Checker<'_>,
    obj: &RedisClusterObject,
    model: &Model,
    port: u16,
) -> Vec<Endpoint> {
    let e = &obj.spec.endpoints;
    let set = [
        e.selector.is_some(),
        e.service.is_some(),
        e.static_.is_some(),
    ];
    if set.iter().filter(|s| **s).count() != 1 {
        c.invalid(
            "spec.endpoints",
            "set exactly one of endpoints.selector, endpoints.service or endpoints.static",
        );
        return Vec::new();
    }
    let ns = &obj.key.namespace;
    // Mode Cluster sends seeds: Envoy asks them for CLUSTER SLOTS and follows the topology
    // Redis itself reports, readiness included. A server that is not Ready (its node lost
    // the API server for a while, a probe timed out) still answers that question, and Envoy
    // rebuilds its Redis cluster, connections and all, whenever the seeds change. So
    // readiness neither adds nor removes a seed: seeds change only when a server gets or
    // loses an address, and a cluster whose pods all turn not Ready keeps its seeds. Mode
    // Sharded hashes keys over the endpoints sent: one that is not Ready goes as draining.
    let drains = |ready: bool| !ready && obj.spec.mode == Mode::Sharded;
    let mut out = Vec::new();
    if let Some(sel) = &e.selector {
        if let Err((field, msg)) = selector::validate(sel) {
            c.invalid(format!("spec.endpoints.selector.{field}"), msg);
            return Vec::new();
        }
        out.extend(
            model
                .pods
                .values()
                .filter(|p| &p.key.namespace == ns && selector::matches(sel, &p.labels))
                .filter_map(|p| {
                    Some(Endpoint {
                        name: p.key.name.clone(),
                        host: p.ip.clone()?,
                        port,
                        draining: drains(p.ready),
                    })
                }),
        );
    } else if let Some(service) = &e.service {
        if !is_dns_label(service) {
            c.invalid(
                "spec.endpoints.service",
                format!("{service:?} is not a valid Service name"),
            );
            return Vec::new();
        }
        let mut seen = BTreeSet::new();
        for slice in model
            .endpoint_slices
            .values()
            .filter(|s| &s.key.namespace == ns && &s.service == service)
        {
            for ep in &slice.endpoints {
                if seen.insert(ep.ip.clone()) {
                    out.push(Endpoint {
                        name: ep.name.clone(),
                        host: ep.ip.clone(),
                        port,
                        draining: drains(ep.ready),
                    });
                }
            }
        }
    } else if let Some(entries) = &e.static_ {
        if entries.is_empty() {
            c.invalid("spec.endpoints.static", "list at least one address");
        }
        let mut names = BTreeSet::new();
        for (i, entry) in entries.iter().enumerate() {
            let field = format!("spec.endpoints.static[{i}]");
            match parse_static(entry) {
                Ok(ep) => {
                    if obj.spec.mode == Mode::Sharded && ep.host.parse::<IpAddr>().is_err() {
                        c.invalid(
                            &field,
                            format!("{entry:?}: mode Sharded needs IP addresses (Envoy does not resolve names for hashed endpoints)"),
                        );
                    }
                    if !names.insert(ep.name.clone()) {
                        c.invalid(
                            &field,
                            format!(
                                "endpoint name {:?} is used twice; names must be unique",
                                ep.name
                            ),
                        );
                    }
                    out.push(ep);
                }
                Err(msg) => c.invalid(&field, msg),
            }
        }
    }
    out.sort();
    out
}

/// Parses `[name=]host:port`, with IPv6 hosts in brackets.
fn parse_static(entry: &str) -> Result<Endpoint, String> {
    let hint = "write host:port or name=host:port, e.g. 10.0.0.5:6379, [fd00::5]:6379 or shard-a=redis-0.example:6379";
    let (name, addr) = match entry.split_once('=') {
        Some((n, a)) if !n.is_empty() => (Some(n), a),
        Some(_) => return Err(format!("{entry:?} has an empty name: {hint}")),
        None => (None, entry),
    };
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{entry:?} has no port: {hint}"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{entry:?} has an invalid port: {hint}"))?;
    let host = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{entry:?}: {v6:?} is not an IPv6 address: {hint}"))?;
        v6.to_owned()
    } else if host.parse::<std::net::Ipv4Addr>().is_ok() || is_dns_subdomain(host) {
        host.to_owned()
    } else {
        return Err(format!(
            "{entry:?}: {host:?} is neither an IP address nor a DNS name: {hint}"
        ));
    };
    Ok(Endpoint {
        name: name.map_or_else(|| addr.to_owned(), str::to_owned),
        host,
        port,
        draining: false,
    })
}

fn listener(
    c: &mut Checker<'_>,
    obj: &RedisClusterObject,
    model: &Model,
    l: &crate::api::Listener,
    zone_discovery: bool,
) -> ListenerPlan {
    let mode = obj.spec.mode;
    let port = c.port("spec.listener.port", l.port);
    let address_text = l.address.as_deref().unwrap_or(DEFAULT_LISTENER_ADDRESS);
    let address = address_text.parse::<IpAddr>().unwrap_or_else(|_| {
        c.invalid(
            "spec.listener.address",
            format!("{address_text:?} is not an IP address (e.g. 127.0.0.1 or ::1)"),
        );
        IpAddr::from([127, 0, 0, 1])
    });

    let mut clients = ClientMatcher {
        namespaces: None,
        selector: None,
    };
    if let Some(cl) = &l.clients {
        if let Some(namespaces) = &cl.namespaces {
            if namespaces.is_empty() {
                c.invalid(
                    "spec.listener.clients.namespaces",
                    "list namespaces, or \"*\" for any; an empty list would select no proxy",
                );
            }
            for (i, ns) in namespaces.iter().enumerate() {
                if ns != "*" && !is_dns_label(ns) {
                    c.invalid(
                        format!("spec.listener.clients.namespaces[{i}]"),
                        format!("{ns:?} is not a namespace name or \"*\""),
                    );
                }
            }
            if !namespaces.iter().any(|n| n == "*") {
                clients.namespaces = Some(namespaces.iter().cloned().collect());
            }
        }
        if let Some(sel) = &cl.selector {
            match selector::validate(sel) {
                Ok(()) => clients.selector = Some(sel.clone()),
                Err((field, msg)) => {
                    c.invalid(format!("spec.listener.clients.selector.{field}"), msg)
                }
            }
        }
    }

    if l.read_policy.is_some() && mode == Mode::Sharded {
        c.invalid(
            "spec.listener.readPolicy",
            "readPolicy applies to mode Cluster only (Envoy ignores it for Sharded servers): remove it",
        );
    } else if let Some(
        policy @ (ReadPolicy::LocalZoneAffinity | ReadPolicy::LocalZoneAffinityReplicasAndPrimary),
    ) = l.read_policy
        && !zone_discovery
    {
        c.invalid(
            "spec.listener.readPolicy",
            format!(
                "{policy:?} needs spec.topology.zoneDiscovery: true: without it Envoy knows no server's zone and reads from any replica, as PreferReplica does (seen on Envoy 1.40); set it (the servers must report availability_zone in INFO: Valkey 8.1 or later)"
            ),
        );
    }

    let op_timeout = c
        .positive("spec.listener.opTimeout", l.op_timeout.as_ref())
        .unwrap_or(DEFAULT_OP_TIMEOUT);
    let case_insensitive = l.case_insensitive.unwrap_or(false);
    // Cannot be shown on real Envoy: with no prefix to fold there is nothing to observe.
    // It is refused because it says something that does not happen.
    if l.case_insensitive.is_some() && l.routes.is_empty() {
        c.invalid(
            "spec.listener.caseInsensitive",
            "caseInsensitive applies to routes[].prefix, and this listener has no routes: remove it",
        );
    }
    if l.enable_hashtagging == Some(false) && mode == Mode::Cluster {
        c.invalid(
            "spec.listener.enableHashtagging",
            "enableHashtagging: false applies to mode Sharded only: in mode Cluster Envoy always hashes the {...} part of a key, as Redis Cluster requires; remove it",
        );
    }
    if l.buffer_flush_timeout.is_some() && l.max_buffer_size_before_flush.unwrap_or(0) == 0 {
        c.invalid(
            "spec.listener.bufferFlushTimeout",
            "bufferFlushTimeout applies only with maxBufferSizeBeforeFlush > 0 (Envoy otherwise sends every request at once and never starts this timer): remove it, or set maxBufferSizeBeforeFlush",
        );
    }
    if l.downstream_auth.is_some() && l.external_auth.is_some() {
        c.invalid(
            "spec.listener.downstreamAuth",
            "downstreamAuth is ignored when externalAuth is set (Envoy asks the external service about every AUTH and never compares these passwords): remove one of them",
        );
    }

    let mut refs = Vec::new();
    let mirrors =
        |c: &mut Checker<'_>, base: &str, list: &[crate::api::Mirror], refs: &mut Vec<Ref>| {
            let mut out = Vec::new();
            for (j, m) in list.iter().enumerate() {
                let field = format!("{base}.mirror[{j}]");
                let percent = c.percent(&format!("{field}.percent"), m.percent.unwrap_or(100));
                if let Some(target) = c.reference(&format!("{field}.cluster"), &m.cluster) {
                    refs.push(Ref {
                        field: format!("{field}.cluster"),
                        target: target.clone(),
                    });
                    out.push(MirrorPlan {
                        target,
                        percent,
                        exclude_read_commands: m.exclude_read_commands.unwrap_or(false),
                    });
                }
            }
            out
        };

    let mut routes = Vec::new();
    let mut prefixes = BTreeSet::new();
    for (i, r) in l.routes.iter().enumerate() {
        let base = format!("spec.listener.routes[{i}]");
        if r.prefix.is_empty() {
            c.invalid(
                format!("{base}.prefix"),
                "prefix must not be empty: use spec.listener.catchAll for keys no route matches",
            );
        }
        // Envoy folds ASCII letters only (`absl::AsciiStrToLower`): "Ä:" and "ä:" stay
        // two prefixes there, so they are two here.
        let folded = if case_insensitive {
            r.prefix.to_ascii_lowercase()
        } else {
            r.prefix.clone()
        };
        if !prefixes.insert(folded) {
            c.invalid(
                format!("{base}.prefix"),
                format!(
                    "prefix {:?} is routed twice{}",
                    r.prefix,
                    if case_insensitive {
                        " (caseInsensitive)"
                    } else {
                        ""
                    }
                ),
            );
        }
        let target = c.reference(&format!("{base}.cluster"), &r.cluster);
        let read_target = r
            .read_cluster
            .as_ref()
            .and_then(|rc| c.reference(&format!("{base}.readCluster"), rc));
        if let Some(t) = &target {
            refs.push(Ref {
                field: format!("{base}.cluster"),
                target: t.clone(),
            });
        }
        if let Some(t) = &read_target {
            refs.push(Ref {
                field: format!("{base}.readCluster"),
                target: t.clone(),
            });
        }
        let mirror = mirrors(c, &base, &r.mirror, &mut refs);
        let key_formatter = key_formatter(c, &base, r.key_formatter.as_deref());
        if let Some(target) = target {
            routes.push(RoutePlan {
                prefix: r.prefix.clone(),
                remove_prefix: r.remove_prefix.unwrap_or(false),
                target,
                read_target,
                mirrors: mirror,
                key_formatter,
            });
        }
    }

    let catch_all = {
        let base = "spec.listener.catchAll";
        let ca = l.catch_all.clone().unwrap_or_default();
        let target = match &ca.cluster {
            Some(t) => c.reference(&format!("{base}.cluster"), t),
            None => Some(obj.key.clone()),
        };
        let target = target.unwrap_or_else(|| obj.key.clone());
        refs.push(Ref {
            field: format!("{base}.cluster"),
            target: target.clone(),
        });
        let read_target = ca
            .read_cluster
            .as_ref()
            .and_then(|rc| c.reference(&format!("{base}.readCluster"), rc));
        if let Some(t) = &read_target {
            refs.push(Ref {
                field: format!("{base}.readCluster"),
                target: t.clone(),
            });
        }
        let mirror = mirrors(c, base, &ca.mirror, &mut refs);
        RoutePlan {
            prefix: String::new(),
            remove_prefix: false,
            target,
            read_target,
            mirrors: mirror,
            key_formatter: key_formatter(c, base, ca.key_formatter.as_deref()),
        }
    };

    let downstream_auth = l
        .downstream_auth
        .as_ref()
        .and_then(|a| downstream_auth(c, model, a));

    let mut custom_commands = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, cmd) in l.custom_commands.iter().enumerate() {
        let field = format!("spec.listener.customCommands[{i}]");
        if !is_command_name(cmd) {
            c.invalid(
                field,
                format!(
                    "{cmd:?} is not a Redis command name (letters, digits, `.`, `_`, `-`, `|`)"
                ),
            );
        } else if cmd.chars().any(|ch| ch.is_ascii_uppercase()) {
            // Envoy looks up the lower-cased command among these names as written.
            c.invalid(
                field,
                format!(
                    "{cmd:?} has upper-case letters: Envoy compares the lower-cased command with these names as written, so it would never match; write {:?} (clients may still send any case)",
                    cmd.to_ascii_lowercase()
                ),
            );
        } else if super::commands::is_proxied(cmd) {
            c.invalid(
                field,
                format!(
                    "{cmd:?} is a command Envoy already proxies; listed here it would replace Envoy's own handling of it (a multi-key command would no longer be split by key): remove it"
                ),
            );
        } else if !seen.insert(cmd.clone()) {
            c.invalid(field, format!("{cmd:?} is listed twice"));
        }
        custom_commands.push(cmd.clone());
    }

    let mut faults = Vec::new();
    for (i, f) in l.faults.iter().enumerate() {
        let base = format!("spec.listener.faults[{i}]");
        let percent = c.percent(&format!("{base}.percent"), f.percent);
        let delay = match (f.type_, &f.delay) {
            (FaultType::Delay, None) => {
                c.invalid(
                    format!("{base}.delay"),
                    "a Delay fault needs delay, e.g. 20ms",
                );
                None
            }
            (_, None) => None,
            // An Error fault with a delay answers the error after it (held 300 ms to within
            // Envoy's timer granularity on every run: tests/e2e/own_rules.rs).
            (_, Some(d)) => c.positive(&format!("{base}.delay"), Some(d)),
        };
        let mut commands = Vec::new();
        let mut listed = BTreeSet::new();
        for (j, cmd) in f.commands.iter().enumerate() {
            let field = format!("{base}.commands[{j}]");
            let lower = cmd.to_ascii_lowercase();
            if cmd.is_empty()
                || !cmd.chars().all(|ch| {
                    ch.is_ascii_alphanumeric() || ch == '_' || ch == '-' || ch == '|' || ch == '.'
                })
            {
                c.invalid(field, format!("{cmd:?} is not a Redis command name"));
            } else if super::commands::ANSWERED_BY_ENVOY.contains(&lower.as_str()) {
                c.invalid(
                    field,
                    format!("{cmd:?} never reaches fault injection (Envoy answers AUTH, PING, ECHO, TIME and QUIT itself): remove it"),
                );
            } else if !super::commands::is_proxied(&lower) && !seen.contains(&lower) {
                c.invalid(
                    field,
                    format!("{cmd:?} is not a command Envoy proxies (nor one of customCommands), so this fault would never fire"),
                );
            } else if !listed.insert(lower) {
                c.invalid(
                    field,
                    format!("{cmd:?} is listed twice (Envoy ignores case and would apply this fault twice to it, doubling its share): list each command once"),
                );
            }
            // Passed as written: Envoy lower-cases both sides itself.
            commands.push(cmd.clone());
        }
        faults.push(FaultPlan {
            kind: f.type_,
            percent,
            commands,
            delay,
        });
    }

    check_fault_budget(c, &faults);

    if l.connection_rate_limit == Some(0) {
        c.invalid(
            "spec.listener.connectionRateLimit",
            "must be at least 1 connection per second: remove it for no cap",
        );
    }
    let enable_redirection = l.enable_redirection.unwrap_or(mode == Mode::Cluster);
    // Cannot be shown on real Envoy beyond "nothing happens": without redirection every
    // MOVED reaches the client whatever the limit.
    if l.max_upstream_unknown_connections.is_some() && !enable_redirection {
        c.invalid(
            "spec.listener.maxUpstreamUnknownConnections",
            "maxUpstreamUnknownConnections applies only with enableRedirection (Envoy opens connections to unknown servers only to follow MOVED/ASK): remove it, or set enableRedirection: true",
        );
    }
    let external_auth = l.external_auth.as_ref().map(|e| {
        if !is_host_port(&e.service) {
            c.invalid(
                "spec.listener.externalAuth.service",
                format!(
                    "{:?} is not host:port (a DNS name or IP address, and a port 1..65535)",
                    e.service
                ),
            );
        }
        let timeout = c
            .positive("spec.listener.externalAuth.timeout", e.timeout.as_ref())
            .unwrap_or(DEFAULT_EXTERNAL_AUTH_TIMEOUT);
        (
            e.service.clone(),
            timeout,
            e.enable_auth_expiration.unwrap_or(false),
        )
    });

    ListenerPlan {
        address,
        port,
        clients,
        read_policy: l.read_policy,
        op_timeout,
        enable_hashtagging: l.enable_hashtagging.unwrap_or(true),
        enable_redirection,
        enable_command_stats: l.enable_command_stats.unwrap_or(false),
        buffer_flush_timeout: c.millis(
            "spec.listener.bufferFlushTimeout",
            l.buffer_flush_timeout.as_ref(),
        ),
        max_buffer_size_before_flush: l.max_buffer_size_before_flush.unwrap_or(0),
        max_upstream_unknown_connections: l.max_upstream_unknown_connections,
        case_insensitive,
        connection_rate_limit: l.connection_rate_limit,
        protocol_version: l.protocol_version.unwrap_or_default(),
        custom_commands,
        latency_in_micros: l.latency_in_micros.unwrap_or(false),
        dns_cache: enable_redirection.then(|| obj.spec.dns_lookup_family.unwrap_or_default()),
        routes,
        catch_all,
        downstream_auth,
        external_auth,
        faults,
        refs,
    }
}

/// `spec.listener.downstreamAuth`: the current Secret, then the passwords of the others.
fn downstream_auth(
    c: &mut Checker<'_>,
    model: &Model,
    a: &crate::api::DownstreamAuth,
) -> Option<(Credentials, Vec<(String, SecretValue)>)> {
    let current = crate::api::Auth {
        secret_ref: a.secret_ref.clone(),
        delivery: a.delivery,
    };
    let creds = c.credentials(
        "spec.listener.downstreamAuth.secretRef.name",
        model,
        &current,
    );
    let mut others = Vec::new();
    let mut names = BTreeSet::from([a.secret_ref.name.as_str()]);
    for (i, r) in a.additional_secret_refs.iter().enumerate() {
        let field = format!("spec.listener.downstreamAuth.additionalSecretRefs[{i}].name");
        if !names.insert(r.name.as_str()) {
            c.invalid(
                &field,
                format!("Secret {:?} is named twice; name each Secret once", r.name),
            );
            continue;
        }
        let auth = crate::api::Auth {
            secret_ref: r.clone(),
            delivery: a.delivery,
        };
        let Some(other) = c.credentials(&field, model, &auth) else {
            continue;
        };
        if let Some(creds) = &creds
            && other.username != creds.username
        {
            // Envoy has one downstream_auth_username for every password in the list. Cannot
            // be shown on real Envoy: its config cannot carry a second username.
            c.invalid(
                &field,
                format!(
                    "Secret {:?} has another \"username\" than {:?}: Envoy checks every password against one username; give both Secrets the same username (or none)",
                    r.name, a.secret_ref.name
                ),
            );
            continue;
        }
        others.push((r.name.clone(), other.password));
    }
    Some((creds?, others))
}

/// `spec.tls`: the referenced Secrets and their keys, and a DNS name to verify.
fn tls(c: &mut Checker<'_>, model: &Model, t: &crate::api::UpstreamTls) -> Option<TlsPlan> {
    let before = c.problems.len();
    let ca = t.ca_secret_ref.as_ref().and_then(|r| {
        let field = "spec.tls.caSecretRef.name";
        let v = c.secret_key(field, model, &r.name, "ca.crt")?;
        pem_check(c, field, &r.name, "ca.crt", &v, "CERTIFICATE");
        Some((r.name.clone(), v))
    });
    let client = t.client_certificate_secret_ref.as_ref().and_then(|r| {
        let field = "spec.tls.clientCertificateSecretRef.name";
        let cert = c.secret_key(field, model, &r.name, "tls.crt");
        let key = c.secret_key(field, model, &r.name, "tls.key");
        if let Some(v) = &cert {
            pem_check(c, field, &r.name, "tls.crt", v, "CERTIFICATE");
        }
        if let Some(v) = &key {
            pem_check(c, field, &r.name, "tls.key", v, "PRIVATE KEY");
        }
        Some((r.name.clone(), cert?, key?))
    });
    let ca_file = t.ca_config_map_ref.as_ref().and_then(|r| {
        let base = "spec.tls.caConfigMapRef";
        // Cannot be shown on real Envoy: its validation context holds one trusted_ca.
        if t.ca_secret_ref.is_some() {
            c.invalid(
                base,
                "set caSecretRef or caConfigMapRef, not both: Envoy trusts one CA source",
            );
            return None;
        }
        if !is_dns_subdomain(&r.name) {
            c.invalid(
                format!("{base}.name"),
                format!("{:?} is not a ConfigMap name (a DNS subdomain)", r.name),
            );
            return None;
        }
        let key = r.key.as_deref().unwrap_or("ca.crt");
        // Kubernetes' rule for ConfigMap keys, which also keeps the path inside the mount.
        let valid_key = !key.is_empty()
            && key != "."
            && key != ".."
            && key
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'));
        if !valid_key {
            c.invalid(
                format!("{base}.key"),
                format!("{key:?} is not a ConfigMap key (letters, digits, '-', '_' and '.')"),
            );
            return None;
        }
        Some(format!("{}/{}/{key}", CONFIG_MAP_MOUNT_ROOT, r.name))
    });
    // Shown on real Envoy in tests/e2e/tls.rs (sharded_tls): a certificate holding
    // 127.0.0.1 as an IP SAN fails verification against serverName 127.0.0.1.
    if let Some(name) = &t.server_name
        && name.parse::<IpAddr>().is_ok()
    {
        c.invalid(
            "spec.tls.serverName",
            format!("{name:?} is an IP address: SNI carries host names only (RFC 6066) and Envoy matches serverName against the certificate's DNS names, so it would never verify; use the DNS name the certificate carries, or leave serverName out"),
        );
    } else if let Some(name) = &t.server_name
        && !is_dns_subdomain(name)
    {
        c.invalid(
            "spec.tls.serverName",
            format!("{name:?} is not a DNS name (lowercase letters, digits, '-' and '.')"),
        );
    }
    (c.problems.len() == before).then(|| TlsPlan {
        ca,
        ca_file,
        server_name: t.server_name.clone(),
        client,
        delivery: t.delivery.unwrap_or_default(),
    })
}

/// Envoy cannot load a CA or certificate it cannot parse, nor a key that is not a PEM
/// private key (given a CA block that is not a certificate, Envoy 1.40 crashes:
/// tests/suite/envoy_refuses.rs): every PEM block of `value` must decode, certificates as X.509, and at
/// least one must carry a label ending in `label` (`CERTIFICATE`, `PRIVATE KEY`, which also
/// covers `RSA PRIVATE KEY` and `EC PRIVATE KEY`). The contents are never quoted.
fn pem_check(
    c: &mut Checker<'_>,
    field: &str,
    secret: &str,
    key: &str,
    value: &SecretValue,
    label: &str,
) {
    let mut found = false;
    let mut bad = false;
    for pem in x509_parser::pem::Pem::iter_from_buffer(value.expose()) {
        match pem {
            Ok(pem) if pem.label.ends_with(label) => {
                found = true;
                if label == "CERTIFICATE" && pem.parse_x509().is_err() {
                    bad = true;
                }
            }
            Ok(_) => {}
            Err(_) => bad = true,
        }
    }
    if bad || !found {
        let what = if label == "CERTIFICATE" {
            "PEM certificates"
        } else {
            "a PEM private key"
        };
        c.invalid(
            field,
            format!("{key:?} of Secret {secret:?} does not hold {what}, which Envoy cannot load (given such a CA, Envoy 1.40 crashed with a segmentation fault rather than refusing it): put the PEM the key is named for there"),
        );
    }
}

/// `spec.sharding`: mode Sharded only, ring sizes in order, a prime Maglev table with an
/// entry for each of the `servers`, and settings of one load balancer only (Envoy ignores
/// the other's).
fn sharding(
    c: &mut Checker<'_>,
    mode: Mode,
    spec: Option<&crate::api::Sharding>,
    servers: usize,
) -> Option<ShardingPlan> {
    let base = "spec.sharding";
    if mode == Mode::Cluster {
        if spec.is_some() {
            c.invalid(
                base,
                "sharding applies to mode Sharded only: a Redis Cluster places keys by slot, and Envoy 1.40, given a load balancer for one, places them by that instead, so keys reach the wrong primary and come back as MOVED (seen on Envoy 1.40): remove it",
            );
        }
        return None;
    }
    let s = spec.cloned().unwrap_or_default();
    let policy = s.lb_policy.unwrap_or_default();
    // Cannot be shown on real Envoy: a Cluster holds the settings of one load balancer
    // (`lb_config` is a oneof), so Envoy cannot even be given both.
    let ring_only = |c: &mut Checker<'_>, field: &str, set: bool| {
        if set && policy == ShardingPolicy::Maglev {
            c.invalid(
                format!("{base}.{field}"),
                format!("{field} applies to lbPolicy RingHash, which Maglev ignores: remove it"),
            );
        }
    };
    ring_only(c, "hashFunction", s.hash_function.is_some());
    ring_only(c, "minimumRingSize", s.minimum_ring_size.is_some());
    ring_only(c, "maximumRingSize", s.maximum_ring_size.is_some());
    if s.table_size.is_some() && policy == ShardingPolicy::RingHash {
        c.invalid(
            format!("{base}.tableSize"),
            "tableSize applies to lbPolicy Maglev, which RingHash ignores: remove it",
        );
    }
    for (field, value) in [
        ("minimumRingSize", s.minimum_ring_size),
        ("maximumRingSize", s.maximum_ring_size),
    ] {
        if let Some(v) = value
            && !(1..=MAX_RING_SIZE).contains(&v)
        {
            c.invalid(
                format!("{base}.{field}"),
                format!("{v} is out of range 1..{MAX_RING_SIZE} (Envoy's limit)"),
            );
        }
    }
    if let (Some(min), Some(max)) = (s.minimum_ring_size, s.maximum_ring_size)
        && min > max
    {
        c.invalid(
            format!("{base}.minimumRingSize"),
            format!("{min} exceeds maximumRingSize {max}"),
        );
    }
    if let Some(t) = s.table_size
        && (t > MAX_MAGLEV_TABLE_SIZE || !is_prime(t))
    {
        c.invalid(
            format!("{base}.tableSize"),
            format!("{t} is not a prime up to {MAX_MAGLEV_TABLE_SIZE}, which Envoy requires (e.g. 65537, 131071)"),
        );
    }
    // Maglev gives the servers table entries in turn until the table is full, so with
    // fewer entries than servers the last ones get none: Envoy accepts it, and those
    // servers never see a key.
    if let Some(t) = s.table_size
        && policy == ShardingPolicy::Maglev
        && usize::try_from(t).is_ok_and(|t| t < servers)
    {
        c.invalid(
            format!("{base}.tableSize"),
            format!("{t} entries for {servers} servers: Maglev would give {} of them no keys at all; use a prime well above the number of servers (Envoy's default 65537 keeps each server's share within about 1%)", servers - t as usize),
        );
    }
    let hc = s.health_check.unwrap_or_default();
    let hc_base = format!("{base}.healthCheck");
    let interval = c
        .positive(&format!("{hc_base}.interval"), hc.interval.as_ref())
        .unwrap_or(DEFAULT_HEALTH_CHECK_INTERVAL);
    let timeout = c
        .positive(&format!("{hc_base}.timeout"), hc.timeout.as_ref())
        .unwrap_or(DEFAULT_HEALTH_CHECK_TIMEOUT);
    let threshold = |c: &mut Checker<'_>, field: &str, v: Option<u32>, default: u32| {
        let v = v.unwrap_or(default);
        if !(1..=1000).contains(&v) {
            c.invalid(
                format!("{hc_base}.{field}"),
                format!("{v} is out of range 1..1000"),
            );
        }
        v
    };
    let unhealthy_threshold = threshold(
        c,
        "unhealthyThreshold",
        hc.unhealthy_threshold,
        DEFAULT_UNHEALTHY_THRESHOLD,
    );
    let healthy_threshold = threshold(
        c,
        "healthyThreshold",
        hc.healthy_threshold,
        DEFAULT_HEALTHY_THRESHOLD,
    );
    let od = s.outlier_detection.unwrap_or_default();
    let od_base = format!("{base}.outlierDetection");
    let outlier_detection = (od.enabled != Some(false)).then(|| OutlierPlan {
        consecutive_failures: match od.consecutive_failures {
            Some(v) if !(1..=1000).contains(&v) => {
                c.invalid(
                    format!("{od_base}.consecutiveFailures"),
                    format!("{v} is out of range 1..1000"),
                );
                v
            }
            v => v.unwrap_or(DEFAULT_OUTLIER.consecutive_failures),
        },
        interval: c
            .positive(&format!("{od_base}.interval"), od.interval.as_ref())
            .unwrap_or(DEFAULT_OUTLIER.interval),
        base_ejection_time: c
            .positive(
                &format!("{od_base}.baseEjectionTime"),
                od.base_ejection_time.as_ref(),
            )
            .unwrap_or(DEFAULT_OUTLIER.base_ejection_time),
        max_ejection_percent: match od.max_ejection_percent {
            Some(v) if v > 100 => {
                c.invalid(
                    format!("{od_base}.maxEjectionPercent"),
                    format!("{v} is out of range 0..100"),
                );
                v
            }
            v => v.unwrap_or(DEFAULT_OUTLIER.max_ejection_percent),
        },
    });
    Some(ShardingPlan {
        outlier_detection,
        policy,
        hash_function: s.hash_function,
        minimum_ring_size: s.minimum_ring_size,
        maximum_ring_size: s.maximum_ring_size,
        table_size: s.table_size,
        interval,
        timeout,
        unhealthy_threshold,
        healthy_threshold,
        health_check_key: hc.key,
    })
}

/// Envoy's limit on either ring size (`RingHashLbConfig`).
const MAX_RING_SIZE: u32 = 8_388_608;
/// Envoy's limit on a Maglev table (`MaglevLbConfig.table_size`).
const MAX_MAGLEV_TABLE_SIZE: u32 = 5_000_011;

fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..)
            .take_while(|d: &u32| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// TCP keepalive of upstream connections: 60s idle, then a probe every 10s, 3 probes.
pub const DEFAULT_KEEPALIVE: (u32, u32, u32) = (60, 10, 3);
/// Longest keepalive time or interval accepted, in seconds.
const MAX_KEEPALIVE_SECONDS: u32 = 32_767;

/// Longest lifetime of an AWS IAM authentication token (Envoy's `AwsIam.expiration_time`).
const MAX_AWS_IAM_EXPIRATION: Duration = Duration::from_secs(900);

/// How long one client AUTH may wait for an external AUTH service.
pub const DEFAULT_EXTERNAL_AUTH_TIMEOUT: Duration = Duration::from_secs(1);

/// `host:port` with a DNS name or IP address (IPv6 in brackets) and a port 1..65535.
fn is_host_port(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => host.parse::<std::net::Ipv4Addr>().is_ok() || is_dns_subdomain(host),
    };
    host_ok && port.parse::<u16>().is_ok_and(|p| p > 0)
}

/// A command name as Redis and its modules spell them (`get`, `JSON.GET`, `ft.search`).
fn is_command_name(cmd: &str) -> bool {
    !cmd.is_empty()
        && cmd.len() <= 64
        && cmd
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-' | '|'))
}

/// A route's `keyFormatter`: `%KEY%` must appear, or every key would become the same one.
///
/// Envoy reads the rest with its substitution formatter, lazily: when the first command the
/// route matches arrives. Checked against Envoy 1.40 (tests/e2e/own_rules.rs): `%%` is a
/// literal `%`; the operators of [`KEY_FORMATTER_OPERATORS`] are filled in; an operator
/// Envoy does not know, an argument or length on one that takes none, an unterminated
/// operator or a `%` that starts none make Envoy abort, the whole sidecar, on that command.
fn key_formatter(c: &mut Checker<'_>, base: &str, value: Option<&str>) -> Option<String> {
    let f = value?;
    let field = format!("{base}.keyFormatter");
    if !f.contains("%KEY%") {
        c.invalid(
            field,
            format!("{f:?} has no %KEY%: Envoy would send every key as this same string; write e.g. \"tenant-a:%KEY%\""),
        );
    } else if let Err(msg) = check_format_operators(f) {
        c.invalid(field, format!("{f:?}: {msg}"));
    }
    Some(f.to_owned())
}

/// The substitution-format operators a `keyFormatter` may use besides `%KEY%`, and whether
/// each takes an argument in parentheses: those Envoy 1.40 fills in when it formats a Redis
/// key. Others it knows (ports, `FILTER_STATE`, `DYNAMIC_METADATA`, upstream fields) format as
/// nothing there, and ones it does not know abort it.
pub const KEY_FORMATTER_OPERATORS: &[(&str, Argument)] = &[
    ("KEY", Argument::None),
    ("HOSTNAME", Argument::None),
    ("ENVIRONMENT", Argument::Required),
    ("START_TIME", Argument::Optional),
    ("START_TIME_LOCAL", Argument::Optional),
    ("DOWNSTREAM_REMOTE_ADDRESS", Argument::None),
    ("DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", Argument::None),
    ("DOWNSTREAM_LOCAL_ADDRESS", Argument::None),
    ("DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT", Argument::None),
];

/// Whether a format operator takes `(argument)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Argument {
    /// Never: Envoy aborts on one.
    None,
    /// Either way (`START_TIME`'s strftime format).
    Optional,
    /// Always (`ENVIRONMENT(NAME)`).
    Required,
}

/// Checks every `%` of a key formatter against what Envoy 1.40 does with it.
fn check_format_operators(f: &str) -> Result<(), String> {
    const ABORTS: &str = "Envoy aborts, the whole sidecar, on the first command this route matches";
    let mut rest = f;
    while let Some(at) = rest.find('%') {
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('%') {
            rest = after;
            continue;
        }
        let name_len = rest
            .find(|ch: char| !(ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..name_len];
        rest = &rest[name_len..];
        let has_argument = rest.starts_with('(');
        if has_argument {
            let Some(close) = rest.find(')') else {
                return Err(format!("%{name}( has no closing ')': {ABORTS}"));
            };
            rest = &rest[close + 1..];
        }
        let Some(after) = rest.strip_prefix('%') else {
            return Err(if name.is_empty() {
                format!("a '%' that starts no operator: {ABORTS}; write %% for a literal '%'")
            } else {
                format!(
                    "%{name} is not closed by '%' (a length limit such as %{name}:4% included): {ABORTS}"
                )
            });
        };
        rest = after;
        let Some((_, arg)) = KEY_FORMATTER_OPERATORS.iter().find(|(n, _)| *n == name) else {
            return Err(format!(
                "Envoy does not fill in %{name}% for a Redis key ({ABORTS} when it does not know the operator, and formats the ones it knows but cannot fill here as nothing); use %KEY% with {}",
                KEY_FORMATTER_OPERATORS[1..]
                    .iter()
                    .map(|(n, _)| format!("%{n}%"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        match (arg, has_argument) {
            (Argument::None, true) => {
                return Err(format!("%{name}% takes no argument: {ABORTS}"));
            }
            (Argument::Required, false) => {
                return Err(format!(
                    "%{name}% needs an argument, e.g. %{name}(POD_NAMESPACE)%: {ABORTS}"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Envoy draws one random number per command and walks the faults that apply to it, so
/// their percentages add up; past 100 the later faults can never fire (Envoy does not check).
fn check_fault_budget(c: &mut Checker<'_>, faults: &[FaultPlan]) {
    let everyone: u32 = faults
        .iter()
        .filter(|f| f.commands.is_empty())
        .map(|f| f.percent)
        .sum();
    let mut per_command: std::collections::BTreeMap<String, u32> =
        std::collections::BTreeMap::new();
    for f in faults {
        for cmd in &f.commands {
            *per_command.entry(cmd.to_ascii_lowercase()).or_default() += f.percent;
        }
    }
    let worst = per_command
        .iter()
        .map(|(cmd, p)| (cmd.as_str(), p + everyone))
        .chain(std::iter::once(("every command", everyone)))
        .find(|(_, total)| *total > 100);
    if let Some((cmd, total)) = worst {
        c.invalid(
            "spec.listener.faults",
            format!(
                "fault percentages for {cmd} add up to {total}; keep the total at or below 100"
            ),
        );
    }
}

/// RFC 1123 label: namespaces and Service names.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: object names and host names.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_parse_static_entries_with_and_without_names() {
        let ep = parse_static("10.0.0.5:6379").unwrap();
        assert_eq!(
            (ep.name.as_str(), ep.host.as_str(), ep.port),
            ("10.0.0.5:6379", "10.0.0.5", 6379)
        );
        let ep = parse_static("shard-a=127.0.0.1:7001").unwrap();
        assert_eq!(
            (ep.name.as_str(), ep.host.as_str(), ep.port),
            ("shard-a", "127.0.0.1", 7001)
        );
        let ep = parse_static("[fd00::5]:6379").unwrap();
        assert_eq!(ep.host, "fd00::5");
        let ep = parse_static("redis-0.example:6379").unwrap();
        assert_eq!(ep.host, "redis-0.example");
    }

    #[test]
    fn should_reject_static_entries_without_port_or_with_bad_hosts() {
        for bad in [
            "10.0.0.5",
            "10.0.0.5:0",
            "10.0.0.5:70000",
            "=1.2.3.4:5",
            "[zz]:1",
            "a b:1",
            ":6379",
        ] {
            let err = parse_static(bad).unwrap_err();
            assert!(err.contains("host:port"), "{bad}: {err}");
        }
    }
}
