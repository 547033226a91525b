//! Builds Envoy protobuf messages from validated [`Plan`]s. Every function here is a plain
//! translation: all decisions (defaults, validation, reference resolution) were made before.

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::extensions::clusters::redis::v3::RedisClusterConfig;
use envoy_types::pb::envoy::extensions::common::dynamic_forward_proxy::v3::DnsCacheConfig;
use envoy_types::pb::envoy::extensions::filters::network::redis_proxy::v3 as redis;
use envoy_types::pb::envoy::extensions::health_checkers::redis::v3::Redis as RedisHealthCheck;
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use envoy_types::pb::google::protobuf as pbw;

use super::names;
use super::plan::{
    Credentials, Endpoint, FaultPlan, ListenerPlan, MirrorPlan, Plan, RoutePlan, SECRET_MOUNT_ROOT,
    ShardingPlan, TlsPlan,
};
use crate::api::{
    Delivery, DnsLookupFamily, FaultType, HashFunction, Mode, ProtocolVersion, ReadPolicy,
    ShardingPolicy,
};
use crate::model::SecretValue;

/// Filter name of redis_proxy; also the key of its protocol options on clusters.
pub const REDIS_PROXY_FILTER: &str = "envoy.filters.network.redis_proxy";
/// Custom cluster type for Redis Cluster mode.
pub const REDIS_CLUSTER_TYPE: &str = "envoy.clusters.redis";
/// Health checker for Sharded mode.
pub const REDIS_HEALTH_CHECKER: &str = "envoy.health_checkers.redis";
/// Endpoint metadata namespace read by Envoy's hashing load balancers.
pub const LB_METADATA: &str = "envoy.lb";

/// Packs a message into `google.protobuf.Any`.
pub fn any<M: prost::Name>(m: &M) -> pbw::Any {
    pbw::Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn duration(d: Duration) -> pbw::Duration {
    pbw::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn percent(p: u32) -> core::RuntimeFractionalPercent {
    core::RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: p,
            denominator: DenominatorType::Hundred as i32,
        }),
        runtime_key: String::new(),
    }
}

/// Where Envoy finds the system's CA certificates (Debian's, and Envoy's and Istio's
/// proxy images'), for upstream TLS without a CA Secret.
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The DataSource of one Secret key: the value itself, or the file the sidecar mounts.
fn credential(creds: &Credentials, key: &str, value: &SecretValue) -> core::DataSource {
    secret_data(creds.delivery, &creds.secret, key, value)
}

/// The DataSource of key `key` of Secret `secret`, delivered inline or as a mounted file.
fn secret_data(
    delivery: Delivery,
    secret: &str,
    key: &str,
    value: &SecretValue,
) -> core::DataSource {
    match delivery {
        Delivery::Inline => secret_source(value),
        Delivery::File => file_source(format!("{SECRET_MOUNT_ROOT}/{secret}/{key}")),
    }
}

fn file_source(path: String) -> core::DataSource {
    core::DataSource {
        specifier: Some(core::data_source::Specifier::Filename(path)),
        ..Default::default()
    }
}

/// The cluster's TLS transport socket: trusted CAs, the name to send and verify, and the
/// client certificate.
fn upstream_tls(t: &TlsPlan) -> core::TransportSocket {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
    let trusted_ca = match (&t.ca, &t.ca_file) {
        (Some((secret, ca)), _) => secret_data(t.delivery, secret, "ca.crt", ca),
        (None, Some(path)) => file_source(path.clone()),
        (None, None) => file_source(SYSTEM_CA_FILE.to_owned()),
    };
    let names = t
        .server_name
        .iter()
        .map(|name| san_exact(tls::subject_alt_name_matcher::SanType::Dns, name))
        .collect();
    let context = tls::UpstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificates: t
                .client
                .iter()
                .map(|(secret, cert, key)| tls::TlsCertificate {
                    certificate_chain: Some(secret_data(t.delivery, secret, "tls.crt", cert)),
                    private_key: Some(secret_data(t.delivery, secret, "tls.key", key)),
                    ..Default::default()
                })
                .collect(),
            validation_context_type: Some(
                tls::common_tls_context::ValidationContextType::ValidationContext(
                    tls::CertificateValidationContext {
                        trusted_ca: Some(trusted_ca),
                        match_typed_subject_alt_names: names,
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        sni: t.server_name.clone().unwrap_or_default(),
        ..Default::default()
    };
    tls_transport_socket(&context)
}

/// A certificate name `name` must carry, of type `san_type` (DNS for a Redis server's own
/// certificate, URI for a SPIFFE identity), matched exactly
/// (`CertificateValidationContext.match_typed_subject_alt_names`).
pub fn san_exact(
    san_type: envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType,
    name: &str,
) -> envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::SubjectAltNameMatcher {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
    use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
    tls::SubjectAltNameMatcher {
        san_type: san_type as i32,
        matcher: Some(matcher::StringMatcher {
            match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(
                name.to_owned(),
            )),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The upstream transport socket `envoy.transport_sockets.tls` with `context`.
pub fn tls_transport_socket(
    context: &envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext,
) -> core::TransportSocket {
    core::TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(
            context,
        ))),
    }
}

fn secret_source(v: &SecretValue) -> core::DataSource {
    let specifier = match std::str::from_utf8(v.expose()) {
        Ok(s) => core::data_source::Specifier::InlineString(s.to_owned()),
        Err(_) => core::data_source::Specifier::InlineBytes(v.expose().to_vec()),
    };
    core::DataSource {
        specifier: Some(specifier),
        ..Default::default()
    }
}

/// A TCP socket address.
pub fn socket_address(host: &str, port: u16) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            protocol: core::socket_address::Protocol::Tcp as i32,
            address: host.to_owned(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(
                port,
            ))),
            ..Default::default()
        })),
    }
}

/// The ADS config source, used by EDS clusters.
pub fn ads_config_source() -> core::ConfigSource {
    core::ConfigSource {
        resource_api_version: core::ApiVersion::V3 as i32,
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

/// Endpoints of a cluster. In Sharded mode each carries its stable name as the ring-hash
/// key, so a server that comes back with a new address keeps its keys.
pub fn load_assignment(
    cluster_name: &str,
    mode: Mode,
    endpoints: &[Endpoint],
) -> endpoint::ClusterLoadAssignment {
    let lb_endpoints = endpoints
        .iter()
        .map(|ep| {
            let metadata = (mode == Mode::Sharded).then(|| core::Metadata {
                filter_metadata: HashMap::from([(
                    LB_METADATA.to_owned(),
                    pbw::Struct {
                        fields: HashMap::from([(
                            "hash_key".to_owned(),
                            pbw::Value {
                                kind: Some(pbw::value::Kind::StringValue(ep.name.clone())),
                            },
                        )]),
                    },
                )]),
                ..Default::default()
            });
            endpoint::LbEndpoint {
                host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                    endpoint::Endpoint {
                        address: Some(socket_address(&ep.host, ep.port)),
                        // Shown in Envoy's admin pages next to the hash key it stands for.
                        // Cluster mode seeds are only seeds: Envoy names hosts from CLUSTER SLOTS.
                        hostname: if mode == Mode::Sharded {
                            ep.name.clone()
                        } else {
                            String::new()
                        },
                        ..Default::default()
                    },
                )),
                metadata,
                health_status: if ep.draining {
                    core::HealthStatus::Draining as i32
                } else {
                    core::HealthStatus::Unknown as i32
                },
                ..Default::default()
            }
        })
        .collect();
    endpoint::ClusterLoadAssignment {
        cluster_name: cluster_name.to_owned(),
        endpoints: vec![endpoint::LocalityLbEndpoints {
            lb_endpoints,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The Envoy cluster of a plan and, for EDS clusters (Sharded mode), its endpoints as a
/// separate ClusterLoadAssignment.
pub fn cluster(plan: &Plan) -> (cluster::Cluster, Option<endpoint::ClusterLoadAssignment>) {
    let name = names::cluster_name(&plan.key);
    let mut c = cluster::Cluster {
        name: name.clone(),
        connect_timeout: Some(duration(plan.connect_timeout)),
        dns_lookup_family: plan
            .dns_lookup_family
            .map_or(0, |f| dns_lookup_family(f) as i32),
        ..Default::default()
    };
    c.transport_socket = plan.tls.as_ref().map(upstream_tls);
    let (time, interval, probes) = plan.tcp_keepalive;
    c.upstream_connection_options = Some(cluster::UpstreamConnectionOptions {
        tcp_keepalive: Some(core::TcpKeepalive {
            keepalive_time: Some(pbw::UInt32Value { value: time }),
            keepalive_interval: Some(pbw::UInt32Value { value: interval }),
            keepalive_probes: Some(pbw::UInt32Value { value: probes }),
        }),
        ..Default::default()
    });
    if plan.auth.is_some() || plan.aws_iam.is_some() || !plan.endpoint_auth.is_empty() {
        let mut options = redis::RedisProtocolOptions {
            credentials: plan
                .endpoint_auth
                .iter()
                .map(
                    |(ip, port, creds)| redis::redis_protocol_options::Credential {
                        address: Some(socket_address(&ip.to_string(), *port)),
                        auth_password: Some(credential(creds, "password", &creds.password)),
                        auth_username: creds
                            .username
                            .as_ref()
                            .map(|u| credential(creds, "username", u)),
                    },
                )
                .collect(),
            ..Default::default()
        };
        if let Some(iam) = &plan.aws_iam {
            options.aws_iam = Some(aws_iam(iam));
            options.auth_username = Some(core::DataSource {
                specifier: Some(core::data_source::Specifier::InlineString(iam.user.clone())),
                ..Default::default()
            });
        }
        if let Some(auth) = &plan.auth {
            options.auth_password = Some(credential(auth, "password", &auth.password));
            options.auth_username = auth
                .username
                .as_ref()
                .map(|u| credential(auth, "username", u));
        }
        c.typed_extension_protocol_options =
            HashMap::from([(REDIS_PROXY_FILTER.to_owned(), any(&options))]);
    }
    match plan.mode {
        Mode::Cluster => {
            let t = &plan.topology;
            let config = RedisClusterConfig {
                cluster_refresh_rate: t.refresh_interval.map(duration),
                cluster_refresh_timeout: t.refresh_timeout.map(duration),
                redirect_refresh_interval: t.redirect_refresh_interval.map(duration),
                redirect_refresh_threshold: t
                    .redirect_refresh_threshold
                    .map(|value| pbw::UInt32Value { value }),
                failure_refresh_threshold: t.failure_refresh_threshold,
                host_degraded_refresh_threshold: t.host_degraded_refresh_threshold,
                enable_zone_discovery: t.zone_discovery.then_some(pbw::BoolValue { value: true }),
            };
            c.cluster_discovery_type = Some(cluster::cluster::ClusterDiscoveryType::ClusterType(
                cluster::cluster::CustomClusterType {
                    name: REDIS_CLUSTER_TYPE.to_owned(),
                    typed_config: Some(any(&config)),
                },
            ));
            c.lb_policy = cluster::cluster::LbPolicy::ClusterProvided as i32;
            // Envoy otherwise holds its whole initialization (every listener) until this
            // cluster has read CLUSTER SLOTS once: one unreachable Redis would keep a new
            // sidecar from serving any other RedisCluster.
            c.wait_for_warm_on_init = Some(pbw::BoolValue { value: false });
            c.load_assignment = Some(load_assignment(&name, plan.mode, &plan.endpoints));
            (c, None)
        }
        Mode::Sharded => {
            c.cluster_discovery_type = Some(cluster::cluster::ClusterDiscoveryType::Type(
                cluster::cluster::DiscoveryType::Eds as i32,
            ));
            // A server that leaves the endpoints (taken out, or no longer Ready) leaves the
            // hash ring at once. By default Envoy keeps a removed host for as long as it
            // passes active health checks, so it would go on getting new keys.
            c.ignore_health_on_host_removal = true;
            c.eds_cluster_config = Some(cluster::cluster::EdsClusterConfig {
                eds_config: Some(ads_config_source()),
                service_name: String::new(),
            });
            let s = plan
                .sharding
                .as_ref()
                .expect("a Sharded plan has its sharding settings");
            sharding(&mut c, s);
            c.health_checks = vec![core::HealthCheck {
                timeout: Some(duration(s.timeout)),
                interval: Some(duration(s.interval)),
                unhealthy_threshold: Some(pbw::UInt32Value {
                    value: s.unhealthy_threshold,
                }),
                healthy_threshold: Some(pbw::UInt32Value {
                    value: s.healthy_threshold,
                }),
                health_checker: Some(core::health_check::HealthChecker::CustomHealthCheck(
                    core::health_check::CustomHealthCheck {
                        name: REDIS_HEALTH_CHECKER.to_owned(),
                        config_type: Some(
                            core::health_check::custom_health_check::ConfigType::TypedConfig(any(
                                &RedisHealthCheck {
                                    key: s.health_check_key.clone().unwrap_or_default(),
                                    // The health checker authenticates on its own
                                    // connections: with IAM, with its own tokens too.
                                    aws_iam: plan.aws_iam.as_ref().map(aws_iam),
                                },
                            )),
                        ),
                    },
                )),
                ..Default::default()
            }];
            let cla = load_assignment(&name, plan.mode, &plan.endpoints);
            (c, Some(cla))
        }
    }
}

/// Envoy's `AwsIam` of `awsIam`: the tokens' cache, service, region and lifetime, and where
/// the sidecar finds the credentials that sign them.
fn aws_iam(iam: &crate::api::AwsIam) -> redis::AwsIam {
    use envoy_types::pb::envoy::extensions::common::aws::v3 as aws;
    let file = |path: &str| core::DataSource {
        specifier: Some(core::data_source::Specifier::Filename(path.to_owned())),
        ..Default::default()
    };
    let credential_provider =
        iam.credential_provider
            .as_ref()
            .map(|p| aws::AwsCredentialProvider {
                assume_role_with_web_identity_provider: p.web_identity.as_ref().map(|w| {
                    aws::AssumeRoleWithWebIdentityCredentialProvider {
                        web_identity_token_data_source: Some(file(&w.token_file)),
                        role_arn: w.role_arn.clone(),
                        role_session_name: w.role_session_name.clone().unwrap_or_default(),
                    }
                }),
                credentials_file_provider: p.credentials_file.as_ref().map(|f| {
                    aws::CredentialsFileCredentialProvider {
                        credentials_data_source: Some(file(&f.path)),
                        profile: f.profile.clone().unwrap_or_default(),
                    }
                }),
                custom_credential_provider_chain: p.only_these.unwrap_or(false),
                ..Default::default()
            });
    redis::AwsIam {
        credential_provider,
        cache_name: iam.cache_name.clone(),
        service_name: match iam.service.unwrap_or_default() {
            crate::api::AwsIamService::ElastiCache => "elasticache",
            crate::api::AwsIamService::MemoryDb => "memorydb",
        }
        .to_owned(),
        region: iam.region.clone().unwrap_or_default(),
        expiration_time: iam.expiration_time.as_ref().map(|d| duration(d.get())),
    }
}

/// Mode Sharded's load balancer: ring hash or Maglev, with the sizes given.
fn sharding(c: &mut cluster::Cluster, s: &ShardingPlan) {
    use cluster::cluster::{LbConfig, LbPolicy, MaglevLbConfig, RingHashLbConfig};
    c.outlier_detection = s.outlier_detection.as_ref().map(outlier_detection);
    let size = |v: Option<u32>| {
        v.map(|value| pbw::UInt64Value {
            value: value.into(),
        })
    };
    match s.policy {
        ShardingPolicy::RingHash => {
            c.lb_policy = LbPolicy::RingHash as i32;
            if s.hash_function.is_some()
                || s.minimum_ring_size.is_some()
                || s.maximum_ring_size.is_some()
            {
                use cluster::cluster::ring_hash_lb_config::HashFunction as Envoy;
                c.lb_config = Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
                    minimum_ring_size: size(s.minimum_ring_size),
                    maximum_ring_size: size(s.maximum_ring_size),
                    hash_function: match s.hash_function.unwrap_or_default() {
                        HashFunction::XxHash => Envoy::XxHash,
                        HashFunction::MurmurHash2 => Envoy::MurmurHash2,
                    } as i32,
                }));
            }
        }
        ShardingPolicy::Maglev => {
            c.lb_policy = LbPolicy::Maglev as i32;
            if s.table_size.is_some() {
                c.lb_config = Some(LbConfig::MaglevLbConfig(MaglevLbConfig {
                    table_size: size(s.table_size),
                }));
            }
        }
    }
}

/// Envoy's redis client reports failed connections and command timeouts as local-origin
/// results; with `split_external_local_origin_errors` only those eject. Every other
/// detector is enforced at 0%: Envoy enforces some by default (consecutive "5xx", success
/// rates), and for Redis an error reply says nothing about the server's health.
fn outlier_detection(o: &super::plan::OutlierPlan) -> cluster::OutlierDetection {
    let uint = |value: u32| Some(pbw::UInt32Value { value });
    cluster::OutlierDetection {
        split_external_local_origin_errors: true,
        consecutive_local_origin_failure: uint(o.consecutive_failures),
        enforcing_consecutive_local_origin_failure: uint(100),
        interval: Some(duration(o.interval)),
        base_ejection_time: Some(duration(o.base_ejection_time)),
        max_ejection_percent: uint(o.max_ejection_percent),
        enforcing_consecutive_5xx: uint(0),
        enforcing_consecutive_gateway_failure: uint(0),
        enforcing_success_rate: uint(0),
        enforcing_local_origin_success_rate: uint(0),
        enforcing_failure_percentage: uint(0),
        enforcing_failure_percentage_local_origin: uint(0),
        ..Default::default()
    }
}

fn mirror(m: &MirrorPlan) -> redis::redis_proxy::prefix_routes::route::RequestMirrorPolicy {
    redis::redis_proxy::prefix_routes::route::RequestMirrorPolicy {
        cluster: names::cluster_name(&m.target),
        runtime_fraction: Some(percent(m.percent)),
        exclude_read_commands: m.exclude_read_commands,
    }
}

fn route(r: &RoutePlan) -> redis::redis_proxy::prefix_routes::Route {
    redis::redis_proxy::prefix_routes::Route {
        prefix: r.prefix.clone(),
        remove_prefix: r.remove_prefix,
        cluster: names::cluster_name(&r.target),
        request_mirror_policy: r.mirrors.iter().map(mirror).collect(),
        read_command_policy: r.read_target.as_ref().map(|t| {
            redis::redis_proxy::prefix_routes::route::ReadCommandPolicy {
                cluster: names::cluster_name(t),
            }
        }),
        key_formatter: r.key_formatter.clone().unwrap_or_default(),
    }
}

fn dns_lookup_family(f: DnsLookupFamily) -> cluster::cluster::DnsLookupFamily {
    use cluster::cluster::DnsLookupFamily as Envoy;
    match f {
        DnsLookupFamily::V4Preferred => Envoy::V4Preferred,
        DnsLookupFamily::V4Only => Envoy::V4Only,
        DnsLookupFamily::V6Only => Envoy::V6Only,
        DnsLookupFamily::Auto => Envoy::Auto,
        DnsLookupFamily::All => Envoy::All,
    }
}

/// The DNS cache a listener resolves redirection targets with. One cache per lookup family,
/// named after it: Envoy requires every use of a cache name to carry the same settings.
fn dns_cache(f: DnsLookupFamily) -> DnsCacheConfig {
    DnsCacheConfig {
        name: format!(
            "redis-xds-{}",
            dns_lookup_family(f)
                .as_str_name()
                .to_ascii_lowercase()
                .replace('_', "-")
        ),
        dns_lookup_family: dns_lookup_family(f) as i32,
        ..Default::default()
    }
}

fn read_policy(p: ReadPolicy) -> redis::redis_proxy::conn_pool_settings::ReadPolicy {
    use redis::redis_proxy::conn_pool_settings::ReadPolicy as Envoy;
    match p {
        ReadPolicy::Master => Envoy::Master,
        ReadPolicy::PreferMaster => Envoy::PreferMaster,
        ReadPolicy::Replica => Envoy::Replica,
        ReadPolicy::PreferReplica => Envoy::PreferReplica,
        ReadPolicy::Any => Envoy::Any,
        ReadPolicy::LocalZoneAffinity => Envoy::LocalZoneAffinity,
        ReadPolicy::LocalZoneAffinityReplicasAndPrimary => {
            Envoy::LocalZoneAffinityReplicasAndPrimary
        }
    }
}

fn fault(f: &FaultPlan) -> redis::redis_proxy::RedisFault {
    use redis::redis_proxy::redis_fault::RedisFaultType;
    redis::redis_proxy::RedisFault {
        fault_type: match f.kind {
            FaultType::Error => RedisFaultType::Error,
            FaultType::Delay => RedisFaultType::Delay,
        } as i32,
        fault_enabled: Some(percent(f.percent)),
        delay: f.delay.map(duration),
        commands: f.commands.clone(),
    }
}

fn downstream_auth(
    proxy: &mut redis::RedisProxy,
    (creds, others): &(Credentials, Vec<(String, SecretValue)>),
) {
    proxy.downstream_auth_passwords =
        std::iter::once(credential(creds, "password", &creds.password))
            .chain(others.iter().map(|(secret, password)| {
                secret_data(creds.delivery, secret, "password", password)
            }))
            .collect();
    proxy.downstream_auth_username = creds
        .username
        .as_ref()
        .map(|u| credential(creds, "username", u));
}

/// The redis_proxy listener of a plan.
pub fn listener(plan: &Plan, l: &ListenerPlan) -> listener::Listener {
    let mut proxy = redis::RedisProxy {
        stat_prefix: names::stat_prefix(&plan.key),
        settings: Some(redis::redis_proxy::ConnPoolSettings {
            op_timeout: Some(duration(l.op_timeout)),
            enable_hashtagging: l.enable_hashtagging,
            enable_redirection: l.enable_redirection,
            max_buffer_size_before_flush: l.max_buffer_size_before_flush,
            buffer_flush_timeout: l.buffer_flush_timeout.map(duration),
            max_upstream_unknown_connections: l
                .max_upstream_unknown_connections
                .map(|value| pbw::UInt32Value { value }),
            enable_command_stats: l.enable_command_stats,
            read_policy: l.read_policy.map_or(0, |p| read_policy(p) as i32),
            dns_cache_config: l.dns_cache.map(dns_cache),
            connection_rate_limit: l.connection_rate_limit.map(|per_sec| {
                redis::redis_proxy::ConnectionRateLimit {
                    connection_rate_limit_per_sec: per_sec,
                }
            }),
        }),
        latency_in_micros: l.latency_in_micros,
        custom_commands: l.custom_commands.clone(),
        protocol_version: match l.protocol_version {
            ProtocolVersion::Resp2 => redis::redis_proxy::ProtocolVersion::Resp2,
            ProtocolVersion::Resp3 => redis::redis_proxy::ProtocolVersion::Resp3,
        } as i32,
        prefix_routes: Some(redis::redis_proxy::PrefixRoutes {
            routes: l.routes.iter().map(route).collect(),
            case_insensitive: l.case_insensitive,
            catch_all_route: Some(route(&l.catch_all)),
        }),
        faults: l.faults.iter().map(fault).collect(),
        ..Default::default()
    };
    if let Some(creds) = &l.downstream_auth {
        downstream_auth(&mut proxy, creds);
    }
    if let Some((service, timeout, expiration)) = &l.external_auth {
        proxy.external_auth_provider = Some(redis::RedisExternalAuthProvider {
            grpc_service: Some(core::GrpcService {
                timeout: Some(duration(*timeout)),
                target_specifier: Some(core::grpc_service::TargetSpecifier::GoogleGrpc(
                    core::grpc_service::GoogleGrpc {
                        target_uri: service.clone(),
                        stat_prefix: "redis_external_auth".to_owned(),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
            enable_auth_expiration: *expiration,
        });
    }
    listener::Listener {
        name: names::listener_name(&plan.key, l.address, l.port),
        address: Some(socket_address(&l.address.to_string(), l.port)),
        traffic_direction: core::TrafficDirection::Outbound as i32,
        filter_chains: vec![listener::FilterChain {
            filters: vec![listener::Filter {
                name: REDIS_PROXY_FILTER.to_owned(),
                config_type: Some(listener::filter::ConfigType::TypedConfig(any(&proxy))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}
