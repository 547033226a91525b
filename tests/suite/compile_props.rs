//! Property tests: no input makes compile panic, and its output keeps its promises for any
//! input.

use crate::common;

use std::collections::BTreeSet;
use std::sync::Arc;

use proptest::prelude::*;
use redis_xds::api::duration::GoDuration;
use redis_xds::api::{
    Auth, CatchAll, Clients, DnsLookupFamily, DownstreamAuth, Endpoints, Fault, FaultType,
    Listener, Mirror, Mode, ProtocolVersion, ReadPolicy, RedisClusterSpec, Route, SecretRef,
    Topology,
};
use redis_xds::compile::{ProxyIdentity, compile, recompile};
use redis_xds::model::{
    EndpointSlice, Model, ObjectKey, Origin, Pod, RedisClusterObject, Secret, SecretValue,
    SliceEndpoint,
};

fn reference() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "a", "b", "c", "d", "other/a", "other/zz", "Bad Name", "", "a/b/c",
    ])
    .prop_map(String::from)
}

fn duration() -> impl Strategy<Value = Option<GoDuration>> {
    prop::option::of(
        prop::sample::select(vec!["0s", "1ms", "5s", "1h", "1.5s"])
            .prop_map(|s| s.parse().unwrap()),
    )
}

fn mirror() -> impl Strategy<Value = Mirror> {
    (
        reference(),
        prop::option::of(0u32..150),
        prop::option::of(any::<bool>()),
    )
        .prop_map(|(cluster, percent, ex)| Mirror {
            cluster,
            percent,
            exclude_read_commands: ex,
        })
}

fn route() -> impl Strategy<Value = Route> {
    (
        prop::sample::select(vec![
            String::new(),
            "a:".into(),
            "A:".into(),
            "a:b:".into(),
            "x".into(),
            // Envoy's limit is 1,000 bytes.
            "k".repeat(1000),
            "k".repeat(1001),
        ]),
        reference(),
        prop::option::of(any::<bool>()),
        prop::option::of(reference()),
        prop::collection::vec(mirror(), 0..3),
    )
        .prop_map(
            |(prefix, cluster, remove_prefix, read_cluster, mirror)| Route {
                // No %KEY%: refused.
                key_formatter: (prefix == "x").then(|| "same-key".to_owned()),
                prefix,
                cluster,
                remove_prefix,
                read_cluster,
                mirror,
            },
        )
}

fn fault() -> impl Strategy<Value = Fault> {
    (
        prop::bool::ANY,
        0u32..130,
        prop::collection::vec(
            prop::sample::select(vec!["GET", "set", "", "bad cmd"]).prop_map(String::from),
            0..3,
        ),
        duration(),
    )
        .prop_map(|(error, percent, commands, delay)| Fault {
            type_: if error {
                FaultType::Error
            } else {
                FaultType::Delay
            },
            percent,
            commands,
            delay,
        })
}

fn listener() -> impl Strategy<Value = Listener> {
    (
        (
            prop::sample::select(vec![0u32, 1, 6379, 6380, 70000]),
            prop::option::of(
                prop::sample::select(vec!["127.0.0.1", "0.0.0.0", "::1", "nope"])
                    .prop_map(String::from),
            ),
            prop::option::of(
                prop::collection::vec(
                    prop::sample::select(vec!["*", "ns", "other", "Bad"]).prop_map(String::from),
                    0..3,
                )
                .prop_map(|namespaces| Clients {
                    namespaces: Some(namespaces),
                    selector: None,
                }),
            ),
            prop::option::of(prop::sample::select(vec![
                ReadPolicy::Master,
                ReadPolicy::PreferMaster,
                ReadPolicy::Replica,
                ReadPolicy::PreferReplica,
                ReadPolicy::Any,
            ])),
            duration(),
            prop::option::of(any::<bool>()),
        ),
        (
            prop::collection::vec(route(), 0..4),
            prop::option::of((
                prop::option::of(reference()),
                prop::option::of(reference()),
                prop::collection::vec(mirror(), 0..2),
            )),
            prop::option::of(
                prop::sample::select(vec!["secret", "missing", "nopass"]).prop_map(String::from),
            ),
            prop::collection::vec(fault(), 0..3),
            duration(),
            prop::option::of(any::<u32>()),
        ),
    )
        .prop_map(
            |(
                (port, address, clients, read_policy, op_timeout, case_insensitive),
                (routes, catch_all, auth, faults, flush, unknown),
            )| {
                Listener {
                    port,
                    address,
                    clients,
                    read_policy,
                    op_timeout,
                    case_insensitive,
                    routes,
                    catch_all: catch_all.map(|(cluster, read_cluster, mirror)| CatchAll {
                        cluster,
                        read_cluster,
                        mirror,
                        key_formatter: None,
                    }),
                    downstream_auth: auth.map(|name| DownstreamAuth {
                        secret_ref: SecretRef { name },
                        additional_secret_refs: Vec::new(),
                        delivery: None,
                    }),
                    faults,
                    buffer_flush_timeout: flush,
                    max_upstream_unknown_connections: unknown,
                    ..Default::default()
                }
            },
        )
}

/// Any spec: mostly junk, so that every rejection path runs.
fn spec() -> impl Strategy<Value = RedisClusterSpec> {
    prop_oneof![junk_spec(), sane_spec()]
}

/// Durations a user may well write, from tiny to absurd.
fn sane_duration() -> impl Strategy<Value = Option<GoDuration>> {
    prop::option::of(
        prop::sample::select(vec!["1ms", "1.5s", "5s", "1h", "87600h", "1ns"])
            .prop_map(|s| s.parse().unwrap()),
    )
}

/// A spec whose every field is plausible on its own, with the values Envoy bounds (ports,
/// prefix lengths, integers, durations) spread over their whole range: the objects that are
/// accepted and sent, for the check against real Envoy.
fn sane_spec() -> impl Strategy<Value = RedisClusterSpec> {
    let route = (
        prop_oneof![
            "[a-z:{}]{1,12}",
            Just("k".repeat(1000)),
            Just("k".repeat(1001))
        ],
        prop::option::of(prop::sample::select(vec![
            "t:%KEY%",
            "{%KEY%}",
            "%KEY%:%KEY%",
        ])),
        prop::sample::select(vec!["a", "b", "c"]),
        prop::option::of(any::<bool>()),
        prop::option::of(prop::sample::select(vec!["a", "b"])),
        prop::collection::vec(
            (
                prop::sample::select(vec!["a", "c"]),
                0u32..=100,
                any::<bool>(),
            ),
            0..2,
        ),
    )
        .prop_map(
            |(prefix, key_formatter, cluster, remove_prefix, read_cluster, mirrors)| Route {
                prefix,
                key_formatter: key_formatter.map(String::from),
                cluster: cluster.into(),
                remove_prefix,
                read_cluster: read_cluster.map(String::from),
                mirror: mirrors
                    .into_iter()
                    .map(|(cluster, percent, ex)| Mirror {
                        cluster: cluster.into(),
                        percent: Some(percent),
                        exclude_read_commands: Some(ex),
                    })
                    .collect(),
            },
        );
    let fault =
        (any::<bool>(), 0u32..=100, sane_duration()).prop_map(|(error, percent, delay)| Fault {
            type_: if error || delay.is_none() {
                FaultType::Error
            } else {
                FaultType::Delay
            },
            percent,
            commands: vec!["GET".into()],
            delay: delay.filter(|_| !error),
        });
    let listener = (
        (
            1u32..=65535,
            prop::option::of(
                prop::sample::select(vec!["127.0.0.1", "::1", "0.0.0.0"]).prop_map(String::from),
            ),
            sane_duration(),
            prop::option::of(any::<bool>()),
            prop::option::of(any::<bool>()),
            prop::option::of(any::<bool>()),
        ),
        (
            sane_duration(),
            prop::option::of(any::<u32>()),
            prop::option::of(any::<u32>()),
            prop::option::of(any::<bool>()),
            prop::collection::vec(route, 0..3),
            prop::collection::vec(fault, 0..2),
            any::<bool>(),
        ),
        (
            prop::option::of(1u32..),
            prop::option::of(prop::sample::select(vec![
                ProtocolVersion::Resp2,
                ProtocolVersion::Resp3,
            ])),
            prop::collection::vec(
                prop::sample::select(vec!["json.get", "FT.SEARCH", "bf.add"])
                    .prop_map(String::from),
                0..2,
            )
            .prop_map(|mut v| {
                v.dedup();
                v
            }),
            prop::option::of(any::<bool>()),
        ),
    )
        .prop_map(
            |(
                (port, address, op_timeout, hashtagging, redirection, command_stats),
                (flush, buffer, unknown, case_insensitive, routes, faults, auth),
                (connection_rate_limit, protocol_version, custom_commands, latency_in_micros),
            )| Listener {
                connection_rate_limit,
                protocol_version,
                custom_commands,
                latency_in_micros,
                port,
                address,
                op_timeout,
                enable_hashtagging: hashtagging,
                enable_redirection: redirection,
                enable_command_stats: command_stats,
                buffer_flush_timeout: flush,
                max_buffer_size_before_flush: buffer,
                max_upstream_unknown_connections: unknown,
                case_insensitive,
                routes,
                faults,
                downstream_auth: auth.then(|| DownstreamAuth {
                    secret_ref: SecretRef {
                        name: "secret".into(),
                    },
                    additional_secret_refs: Vec::new(),
                    delivery: None,
                }),
                ..Default::default()
            },
        );
    (
        any::<bool>(),
        prop::collection::vec(
            prop::sample::select(vec!["127.0.0.1:7000", "n=127.0.0.1:7001", "[::1]:7002"])
                .prop_map(String::from),
            1..3,
        ),
        any::<bool>(),
        sane_duration(),
        sane_duration(),
        prop::option::of(listener),
        prop::option::of(prop::sample::select(vec![
            ReadPolicy::Master,
            ReadPolicy::PreferReplica,
            ReadPolicy::Any,
        ])),
        prop::option::of(prop::sample::select(vec![
            DnsLookupFamily::V4Preferred,
            DnsLookupFamily::Auto,
            DnsLookupFamily::All,
            DnsLookupFamily::V4Only,
            DnsLookupFamily::V6Only,
        ])),
        (
            any::<bool>(),
            1u32..=8_388_608,
            prop::sample::select(vec![2u32, 65537, 131071, 5_000_011]),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                sharded,
                statics,
                auth,
                connect_timeout,
                refresh,
                mut listener,
                read_policy,
                dns,
                (maglev, ring, table, tls),
            )| {
                if let Some(l) = listener.as_mut().filter(|_| !sharded) {
                    l.read_policy = read_policy;
                }
                RedisClusterSpec {
                    mode: if sharded {
                        Mode::Sharded
                    } else {
                        Mode::Cluster
                    },
                    endpoints: Endpoints {
                        static_: Some(statics.clone()),
                        ..Default::default()
                    },
                    port: None,
                    auth: auth.then(|| Auth {
                        secret_ref: SecretRef {
                            name: "secret".into(),
                        },
                        delivery: None,
                    }),
                    connect_timeout,
                    topology: (!sharded).then_some(Topology {
                        refresh_interval: refresh,
                        ..Default::default()
                    }),
                    dns_lookup_family: dns.filter(|_| !sharded),
                    tcp_keepalive: maglev.then(|| redis_xds::api::TcpKeepalive {
                        time: Some("2h".parse().unwrap()),
                        interval: Some("1s".parse().unwrap()),
                        probes: Some(9),
                    }),
                    aws_iam: (!auth && maglev).then(|| redis_xds::api::AwsIam {
                        cache_name: "cache".into(),
                        user: "iam-user".into(),
                        region: Some("eu-west-1".into()),
                        ..Default::default()
                    }),
                    endpoint_auth: statics
                        .iter()
                        .take(1)
                        .filter(|_| auth)
                        .filter_map(|s| s.rsplit('=').next()?.parse::<std::net::SocketAddr>().ok())
                        .map(|a| redis_xds::api::EndpointAuth {
                            address: a.to_string(),
                            auth: Auth {
                                secret_ref: SecretRef {
                                    name: "secret".into(),
                                },
                                delivery: None,
                            },
                        })
                        .collect(),
                    tls: tls.then(|| redis_xds::api::UpstreamTls {
                        ca_secret_ref: Some(SecretRef {
                            name: "tls-ca".into(),
                        }),
                        ca_config_map_ref: None,
                        server_name: Some("redis.example".into()),
                        client_certificate_secret_ref: Some(SecretRef {
                            name: "tls-client".into(),
                        }),
                        delivery: None,
                    }),
                    sharding: sharded.then(|| redis_xds::api::Sharding {
                        lb_policy: Some(if maglev {
                            redis_xds::api::ShardingPolicy::Maglev
                        } else {
                            redis_xds::api::ShardingPolicy::RingHash
                        }),
                        minimum_ring_size: (!maglev).then_some(ring),
                        table_size: maglev.then_some(table),
                        outlier_detection: Some(redis_xds::api::OutlierDetection {
                            consecutive_failures: Some(1 + ring % 1000),
                            max_ejection_percent: Some(ring % 101),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    listener,
                }
            },
        )
}

/// A spec with junk anywhere: every rejection path.
fn junk_spec() -> impl Strategy<Value = RedisClusterSpec> {
    (
        prop::bool::ANY,
        prop::collection::vec(
            prop::sample::select(vec![
                "127.0.0.1:7000",
                "n=127.0.0.1:7001",
                "host.example:1",
                "bad",
                "[::1]:7",
                "n=10.0.0.1:2",
            ])
            .prop_map(String::from),
            0..4,
        ),
        prop::option::of(prop::sample::select(vec![0u32, 6379, 70000])),
        prop::option::of((
            prop::sample::select(vec!["secret", "missing"]).prop_map(String::from),
            any::<bool>(),
        )),
        duration(),
        prop::option::of(duration().prop_map(|refresh_interval| Topology {
            refresh_interval,
            ..Default::default()
        })),
        prop::option::of(listener()),
    )
        .prop_map(
            |(sharded, statics, port, auth, connect_timeout, topology, listener)| {
                RedisClusterSpec {
                    mode: if sharded {
                        Mode::Sharded
                    } else {
                        Mode::Cluster
                    },
                    endpoints: Endpoints {
                        static_: Some(statics),
                        ..Default::default()
                    },
                    port,
                    auth: auth.map(|(name, file)| Auth {
                        secret_ref: SecretRef { name },
                        delivery: file.then_some(redis_xds::api::Delivery::File),
                    }),
                    connect_timeout,
                    topology,
                    // Refused in Sharded mode.
                    dns_lookup_family: (port == Some(6379)).then_some(DnsLookupFamily::Auto),
                    // Not whole seconds.
                    tcp_keepalive: (port == Some(0)).then(|| redis_xds::api::TcpKeepalive {
                        time: Some("1.5s".parse().unwrap()),
                        ..Default::default()
                    }),
                    // Together with auth: refused.
                    aws_iam: (port == Some(6379)).then(|| redis_xds::api::AwsIam {
                        cache_name: "cache".into(),
                        user: "u".into(),
                        ..Default::default()
                    }),
                    // Not ip:port.
                    endpoint_auth: vec![redis_xds::api::EndpointAuth {
                        address: "redis-0:6379".into(),
                        auth: Auth {
                            secret_ref: SecretRef {
                                name: "secret".into(),
                            },
                            delivery: None,
                        },
                    }]
                    .into_iter()
                    .filter(|_| port == Some(0))
                    .collect(),
                    // The Secret lacks ca.crt.
                    tls: (port == Some(0)).then(|| redis_xds::api::UpstreamTls {
                        ca_secret_ref: Some(SecretRef {
                            name: "secret".into(),
                        }),
                        ..Default::default()
                    }),
                    // Refused in Cluster mode; 65536 is no prime.
                    sharding: (port == Some(70000)).then(|| redis_xds::api::Sharding {
                        lb_policy: Some(redis_xds::api::ShardingPolicy::Maglev),
                        table_size: Some(65536),
                        ..Default::default()
                    }),
                    listener,
                }
            },
        )
}

fn model() -> impl Strategy<Value = Model> {
    prop::collection::vec(
        (
            prop::sample::select(vec!["ns/a", "ns/b", "ns/c", "other/a"]),
            spec(),
            0i64..3,
        ),
        0..6,
    )
    .prop_map(|objects| {
        let mut model = Model::default();
        for ns in ["ns", "other"] {
            let key = ObjectKey::new(ns, "secret");
            model.secrets.insert(
                key.clone(),
                Secret {
                    key,
                    data: [("password".to_string(), SecretValue::new("pw"))]
                        .into_iter()
                        .collect(),
                },
            );
            let key = ObjectKey::new(ns, "nopass");
            model.secrets.insert(
                key.clone(),
                Secret {
                    key,
                    data: Default::default(),
                },
            );
            let (ca, cert, private_key) = tls_material();
            for (name, data) in [
                ("tls-ca", vec![("ca.crt", ca)]),
                (
                    "tls-client",
                    vec![("tls.crt", cert), ("tls.key", private_key)],
                ),
            ] {
                let key = ObjectKey::new(ns, name);
                model.secrets.insert(
                    key.clone(),
                    Secret {
                        key,
                        data: data
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), SecretValue::new(v.as_bytes())))
                            .collect(),
                    },
                );
            }
        }
        for (seen, (key, spec, created)) in objects.into_iter().enumerate() {
            let (ns, name) = key.split_once('/').unwrap();
            let key = ObjectKey::new(ns, name);
            model.redis_clusters.insert(
                key.clone(),
                RedisClusterObject {
                    key,
                    generation: Some(1),
                    created: Some(created),
                    seen: seen as u64,
                    spec,
                    origin: Origin::Kubernetes,
                }
                .into(),
            );
        }
        model
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn compile_never_panics_and_keeps_its_promises(model in model(), ns in prop::option::of(prop::sample::select(vec!["ns", "other"]))) {
        let c = compile(&model);
        // Every object is either accepted, or rejected with at least one problem naming it.
        for (key, outcome) in &c.objects {
            let has_problem = c.problems.iter().any(|p| &p.object == key);
            prop_assert_eq!(outcome.accepted, !has_problem, "{} accepted={} problems={:?}", key, outcome.accepted, c.problems);
        }
        prop_assert_eq!(c.objects.len(), model.redis_clusters.len());
        // No listener refers to a cluster that is not served.
        for l in c.listeners.values() {
            for name in &l.clusters {
                prop_assert!(c.clusters.contains_key(name), "{} uses missing {}", l.listener.name, name);
            }
        }
        // A proxy's view holds every cluster its listeners use, and no two listeners on one socket.
        let view = c.view(&ProxyIdentity { namespace: ns.map(String::from), labels: None });
        let have: BTreeSet<&str> = view.clusters.iter().map(|c| c.cluster.name.as_str()).collect();
        let mut sockets = BTreeSet::new();
        for l in &view.listeners {
            for name in &l.clusters {
                prop_assert!(have.contains(name.as_str()));
            }
            let addr = l.listener.address.clone();
            prop_assert!(sockets.insert(format!("{addr:?}")), "two listeners on {:?}", addr);
        }
        // Every accepted object encodes and prints.
        for cc in c.clusters.values() {
            prop_assert!(redis_xds::protojson::to_json(&cc.cluster).is_ok());
        }
        // What passes compile (and with it Envoy's validation rules) is accepted by real
        // Envoy: a sample of views, as a static bootstrap through `envoy --mode validate`.
        if !view.listeners.is_empty() && sample_for_envoy() {
            let bootstrap = redis_xds::render::static_bootstrap(&view, 0);
            let json = redis_xds::protojson::to_json(&bootstrap).unwrap();
            // AUTH delivered as files names paths only a sidecar has mounted; Envoy would
            // refuse them here for their absence alone.
            if json.to_string().contains("/etc/redis-xds/secrets/") {
                return Ok(());
            }
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("bootstrap.json");
            std::fs::write(&path, json.to_string()).unwrap();
            let (ok, log) = common::envoy_validate(&path);
            // Envoy 1.40 in validate mode crashes on its way out (after printing OK) when a
            // Redis health checker carries aws_iam; it runs such a config normally.
            let text = json.to_string();
            let crashed_after_ok = log.contains("' OK")
                && text.contains("envoy.health_checkers.redis")
                && text.contains("\"awsIam\"");
            prop_assert!(ok || crashed_after_ok, "Envoy refused what compile accepted:\n{}\n{}", log, text);
        }
    }
}

/// Every other view with a listener, at most 40 per run: each `envoy --mode validate` takes
/// a good part of a second.
fn sample_for_envoy() -> bool {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static SEEN: AtomicUsize = AtomicUsize::new(0);
    let n = SEEN.fetch_add(1, Ordering::Relaxed);
    n.is_multiple_of(2) && n / 2 < 40
}

/// A CA certificate, and a client certificate and key it signed, as PEM: real material, so
/// that Envoy's check of a sampled view loads them.
fn tls_material() -> (String, String, String) {
    static MATERIAL: std::sync::OnceLock<(String, String, String)> = std::sync::OnceLock::new();
    MATERIAL
        .get_or_init(|| {
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca_cert = ca.self_signed(&ca_key).unwrap();
            let issuer = rcgen::Issuer::new(ca, ca_key);
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["client".to_string()])
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            (ca_cert.pem(), cert.pem(), key.serialize_pem())
        })
        .clone()
}

/// Endpoints from Pods by label, or from the EndpointSlices of a Service, so that what a
/// plan reads besides its spec matters.
fn endpoints_from(mut spec: RedisClusterSpec, source: u8) -> RedisClusterSpec {
    match source {
        1 => {
            let selector =
                serde_json::from_value(serde_json::json!({"matchLabels": {"app": "redis"}}))
                    .expect("a label selector");
            spec.endpoints = Endpoints {
                selector: Some(selector),
                ..Default::default()
            };
        }
        2 => {
            spec.endpoints = Endpoints {
                service: Some("redis".into()),
                ..Default::default()
            };
        }
        _ => {}
    }
    spec
}

/// A Pod `name` in `ns` with the label the selector above matches.
fn pod(ns: &str, name: &str, ready: bool) -> Pod {
    Pod {
        key: ObjectKey::new(ns, name),
        labels: Arc::new(
            [("app".to_string(), "redis".to_string())]
                .into_iter()
                .collect(),
        ),
        ip: Some(format!("10.0.0.{}", name.len())),
        ready,
        service_account: None,
    }
}

/// An EndpointSlice `name` of the Service above in `ns`.
fn slice(ns: &str, name: &str, ready: bool) -> EndpointSlice {
    EndpointSlice {
        key: ObjectKey::new(ns, name),
        service: "redis".into(),
        endpoints: vec![SliceEndpoint {
            name: format!("{name}-0"),
            ip: format!("10.1.0.{}", name.len()),
            ready,
        }],
    }
}

/// What can change between two models: per object a new spec, its removal or a new
/// creation time; new objects; Pods, EndpointSlices and the password of a Secret.
#[derive(Debug, Clone)]
struct Edit {
    specs: Vec<Option<Option<RedisClusterSpec>>>,
    created: Vec<Option<i64>>,
    added: Vec<(&'static str, RedisClusterSpec, u8)>,
    pods: Vec<(&'static str, &'static str, bool)>,
    slices: Vec<(&'static str, &'static str, bool)>,
    drop_password: Option<&'static str>,
}

fn edit() -> impl Strategy<Value = Edit> {
    let place = || prop::sample::select(vec!["ns", "other"]);
    (
        prop::collection::vec(prop::option::weighted(0.3, prop::option::of(spec())), 6),
        prop::collection::vec(prop::option::weighted(0.2, 0i64..3), 6),
        prop::collection::vec(
            (
                prop::sample::select(vec!["ns/d", "other/e", "ns/a"]),
                spec(),
                0u8..3,
            ),
            0..2,
        ),
        prop::collection::vec(
            (
                place(),
                prop::sample::select(vec!["p1", "p22"]),
                any::<bool>(),
            ),
            0..3,
        ),
        prop::collection::vec(
            (
                place(),
                prop::sample::select(vec!["s1", "s22"]),
                any::<bool>(),
            ),
            0..3,
        ),
        prop::option::weighted(0.2, place()),
    )
        .prop_map(
            |(specs, created, added, pods, slices, drop_password)| Edit {
                specs,
                created,
                added,
                pods,
                slices,
                drop_password,
            },
        )
}

fn apply(before: &Model, edit: &Edit) -> Model {
    let mut after = before.clone();
    let keys: Vec<ObjectKey> = after.redis_clusters.keys().cloned().collect();
    for ((key, change), created) in keys.iter().zip(&edit.specs).zip(&edit.created) {
        match change {
            None => {}
            Some(None) => {
                after.redis_clusters.remove(key);
                continue;
            }
            Some(Some(spec)) => {
                Arc::make_mut(after.redis_clusters.get_mut(key).expect("listed")).spec =
                    spec.clone();
            }
        }
        if let Some(created) = created {
            Arc::make_mut(after.redis_clusters.get_mut(key).expect("listed")).created =
                Some(*created);
        }
    }
    for (n, (key, spec, source)) in edit.added.iter().enumerate() {
        let (ns, name) = key.split_once('/').unwrap();
        let key = ObjectKey::new(ns, name);
        after.redis_clusters.insert(
            key.clone(),
            RedisClusterObject {
                key,
                generation: Some(2),
                created: Some(1),
                seen: 100 + n as u64,
                spec: endpoints_from(spec.clone(), *source),
                origin: Origin::Kubernetes,
            }
            .into(),
        );
    }
    for (ns, name, ready) in &edit.pods {
        after
            .pods
            .insert(ObjectKey::new(*ns, *name), pod(ns, name, *ready));
    }
    for (ns, name, ready) in &edit.slices {
        after
            .endpoint_slices
            .insert(ObjectKey::new(*ns, *name), slice(ns, name, *ready));
    }
    if let Some(ns) = edit.drop_password {
        let secret = after
            .secrets
            .get_mut(&ObjectKey::new(ns, "secret"))
            .expect("generated");
        secret.data.remove("password");
    }
    after
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Reusing the previous compile never changes the result: whatever was edited, each
    /// recompile of a chain equals a compile from scratch.
    #[test]
    fn recompile_equals_compile_from_scratch(
        before in model(),
        sources in prop::collection::vec(0u8..3, 6),
        ready in prop::collection::vec(any::<bool>(), 2),
        first in edit(),
        second in edit(),
    ) {
        let mut before = before;
        for (obj, source) in before.redis_clusters.values_mut().zip(sources) {
            Arc::make_mut(obj).spec = endpoints_from(obj.spec.clone(), source);
        }
        for (ns, ready) in ["ns", "other"].into_iter().zip(ready) {
            before.pods.insert(ObjectKey::new(ns, "p1"), pod(ns, "p1", ready));
            before.endpoint_slices.insert(ObjectKey::new(ns, "s1"), slice(ns, "s1", ready));
        }
        let mut model = before;
        let mut compiled = compile(&model);
        for edit in [first, second] {
            let next = apply(&model, &edit);
            let again = recompile(&next, Some((&model, &compiled)));
            // Resources, problems and outcomes; only what was reused is not compared.
            prop_assert_eq!(&again, &compile(&next));
            model = next;
            compiled = again;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// In Kubernetes mode only the Secrets that `secret_names` lists keep their data: every
    /// Secret the compile looks up must be among them, or it would be missing there while
    /// present in the cluster. With no Secrets at all, each lookup reports SecretNotFound.
    #[test]
    fn every_secret_the_compile_reads_is_one_the_kubernetes_source_keeps(spec in spec()) {
        let mut model = Model::default();
        let key = ObjectKey::new("ns", "a");
        model.redis_clusters.insert(
            key.clone(),
            RedisClusterObject {
                key,
                generation: Some(1),
                created: Some(0),
                seen: 0,
                spec: spec.clone(),
                origin: Origin::Kubernetes,
            }
            .into(),
        );
        let c = compile(&model);
        let kept: Vec<String> = redis_xds::api::secret_names(&spec)
            .iter()
            .map(|n| format!("{n:?}"))
            .collect();
        for p in c.problems.iter().filter(|p| p.reason == redis_xds::compile::Reason::SecretNotFound) {
            let read = p
                .message
                .strip_prefix("Secret ")
                .and_then(|m| m.rsplit_once(" not found in namespace"))
                .map(|(name, _)| name.to_owned())
                .unwrap_or_default();
            prop_assert!(kept.contains(&read), "{} is read at {} but not kept: {:?}", read, p.field, kept);
        }
    }
}
