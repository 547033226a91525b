//! Validation and compilation rules, driven through the manifests parser exactly as users
//! write objects.

use crate::common;

use std::path::{Path, PathBuf};

use redis_xds::compile::{Compiled, ProxyIdentity, Reason, compile, recompile};
use redis_xds::source::manifests::{LoadProblem, assemble, load_dir, parse_file};
use serde_json::Value;

fn load(yaml: &str) -> (Compiled, Vec<LoadProblem>) {
    let path = PathBuf::from("test.yaml");
    let parsed = parse_file(&path, yaml);
    let (model, problems, _) = assemble(&[(path, parsed)], &mut |_| None);
    (compile(&model), problems)
}

fn compiled(yaml: &str) -> Compiled {
    let (c, problems) = load(yaml);
    assert!(
        problems.is_empty(),
        "unexpected load problems: {problems:?}"
    );
    c
}

fn problem_lines(c: &Compiled) -> Vec<String> {
    c.problems.iter().map(ToString::to_string).collect()
}

/// The problem at `field`, which must be `RefIncompatible` and tell the user to turn
/// redirection on.
fn needs_redirection<'a>(c: &'a Compiled, field: &str) -> &'a redis_xds::compile::Problem {
    let p = c
        .problems
        .iter()
        .find(|p| p.field == field)
        .unwrap_or_else(|| panic!("{field}: {:?}", c.problems));
    assert_eq!(p.reason, redis_xds::compile::Reason::RefIncompatible);
    assert!(
        p.message.contains("enableRedirection: true"),
        "{}",
        p.message
    );
    p
}

/// `object:field` of every problem, in order.
fn problem_fields(c: &Compiled) -> Vec<String> {
    c.problems
        .iter()
        .map(|p| format!("{}:{}", p.object.name, p.field))
        .collect()
}

fn accepted(c: &Compiled, ns_name: &str) -> bool {
    let (ns, name) = ns_name.split_once('/').unwrap();
    c.objects[&redis_xds::model::ObjectKey::new(ns, name)].accepted
}

fn rc(ns: &str, name: &str, spec: &str) -> String {
    common::redis_cluster(ns, name, spec)
}

const STATIC: &str = "endpoints: {static: [\"127.0.0.1:7000\"]}";

fn listener_json(c: &Compiled, name: &str) -> Value {
    let l = &c.listeners[name].listener;
    let json = redis_xds::protojson::to_json(l).unwrap();
    json["filterChains"][0]["filters"][0]["typedConfig"].clone()
}

#[test]
fn should_reject_route_to_missing_cluster_and_still_compile_the_rest() {
    let yaml = rc(
        "shop",
        "orders",
        &format!(
            "{STATIC}\nlistener:\n  port: 6379\n  routes: [{{prefix: \"a:\", cluster: nowhere}}]"
        ),
    ) + &rc(
        "shop",
        "fine",
        &format!("{STATIC}\nlistener: {{port: 6380}}"),
    );
    let c = compiled(&yaml);
    assert_eq!(
        problem_lines(&c),
        ["shop/orders: spec.listener.routes[0].cluster: RedisCluster \"nowhere\" not found"]
    );
    assert_eq!(c.problems[0].reason, Reason::RefNotFound);
    assert!(!accepted(&c, "shop/orders"));
    assert!(accepted(&c, "shop/fine"));
    assert!(c.clusters.contains_key("redis/shop/fine"));
    assert!(!c.clusters.contains_key("redis/shop/orders"));
    assert_eq!(c.listeners.len(), 1);
}

#[test]
fn should_reject_referrers_of_a_rejected_cluster_along_the_chain() {
    let yaml = rc(
        "ns",
        "a",
        &format!("{STATIC}\nlistener:\n  port: 1000\n  catchAll: {{cluster: b}}"),
    ) + &rc(
        "ns",
        "b",
        &format!("{STATIC}\nlistener:\n  port: 1001\n  catchAll: {{mirror: [{{cluster: c}}]}}"),
    ) + &rc("ns", "c", "endpoints: {static: [\"no-port\"]}");
    let c = compiled(&yaml);
    assert!(!accepted(&c, "ns/a") && !accepted(&c, "ns/b") && !accepted(&c, "ns/c"));
    let lines = problem_lines(&c);
    assert!(lines.contains(&"ns/a: spec.listener.catchAll.cluster: RedisCluster \"b\" is not accepted; fix its problems first".to_string()), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ns/b: spec.listener.catchAll.mirror[0].cluster:")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ns/c: spec.endpoints.static[0]:")),
        "{lines:?}"
    );
    assert!(c.clusters.is_empty() && c.listeners.is_empty());
}

#[test]
fn should_resolve_cross_namespace_references() {
    let yaml = rc(
        "app",
        "front",
        &format!(
            "{STATIC}\nlistener:\n  port: 1000\n  routes: [{{prefix: \"x\", cluster: data/store}}]"
        ),
    ) + &rc("data", "store", STATIC);
    let c = compiled(&yaml);
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    let l = &c.listeners["redis/app/front@127.0.0.1:1000"];
    assert!(l.clusters.contains("redis/data/store"));
}

#[test]
fn should_give_a_contested_port_to_the_older_object() {
    let older = rc(
        "shop",
        "zz-old",
        &format!("{STATIC}\nlistener: {{port: 6379}}"),
    )
    .replace(
        "namespace: shop}",
        "namespace: shop, creationTimestamp: \"2024-01-01T00:00:00Z\"}",
    );
    let newer = rc(
        "shop",
        "aa-new",
        &format!("{STATIC}\nlistener: {{port: 6379}}"),
    )
    .replace(
        "namespace: shop}",
        "namespace: shop, creationTimestamp: \"2025-01-01T00:00:00Z\"}",
    );
    // Newer first in the file and first by name: age still decides.
    let c = compiled(&(newer + &older));
    assert!(accepted(&c, "shop/zz-old"));
    assert!(!accepted(&c, "shop/aa-new"));
    assert_eq!(c.problems.len(), 1);
    assert_eq!(c.problems[0].reason, Reason::PortConflict);
    assert_eq!(c.problems[0].field, "spec.listener.port");
    assert!(
        c.problems[0].message.contains("shop/zz-old"),
        "{}",
        c.problems[0].message
    );
}

#[test]
fn should_give_a_contested_port_to_the_first_defined_without_timestamps() {
    let c = compiled(
        &(rc(
            "x",
            "second-by-name",
            &format!("{STATIC}\nlistener: {{port: 7000, address: 0.0.0.0}}"),
        ) + &rc(
            "x",
            "a-first-by-name",
            &format!("{STATIC}\nlistener: {{port: 7000}}"),
        )),
    );
    // 0.0.0.0 and 127.0.0.1 collide on one host; the first in the file wins.
    assert!(accepted(&c, "x/second-by-name"));
    assert!(!accepted(&c, "x/a-first-by-name"));
}

#[test]
fn should_let_listeners_with_disjoint_clients_share_a_port() {
    let a = rc(
        "x",
        "a",
        &format!("{STATIC}\nlistener: {{port: 7000, clients: {{namespaces: [one]}}}}"),
    );
    let b = rc(
        "x",
        "b",
        &format!("{STATIC}\nlistener: {{port: 7000, clients: {{namespaces: [two]}}}}"),
    );
    let d = rc(
        "x",
        "d",
        &format!(
            "{STATIC}\nlistener: {{port: 7001, clients: {{selector: {{matchLabels: {{app: p}}}}}}}}"
        ),
    );
    let e = rc(
        "x",
        "e",
        &format!(
            "{STATIC}\nlistener: {{port: 7001, clients: {{selector: {{matchLabels: {{app: q}}}}}}}}"
        ),
    );
    let c = compiled(&(a + &b + &d + &e));
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    assert_eq!(c.listeners.len(), 4);
}

#[test]
fn should_send_a_proxy_only_its_listeners_and_the_clusters_they_use() {
    let yaml = rc(
        "x",
        "for-shop",
        "endpoints: {static: [\"127.0.0.1:7000\"]}\nlistener: {port: 7000, clients: {namespaces: [shop], selector: {matchLabels: {team: pay}}}, catchAll: {cluster: backend}}",
    ) + &rc("x", "backend", STATIC)
        + &rc(
            "x",
            "for-all",
            &format!("{STATIC}\nlistener: {{port: 7001}}"),
        )
        + &rc("x", "unused", STATIC);
    let c = compiled(&yaml);
    let names = |p: &ProxyIdentity| {
        let v = c.view(p);
        (
            v.listeners
                .iter()
                .map(|l| l.listener.name.clone())
                .collect::<Vec<_>>(),
            v.clusters
                .iter()
                .map(|c| c.cluster.name.clone())
                .collect::<Vec<_>>(),
        )
    };
    let labels = |k: &str, v: &str| Some([(k.to_string(), v.to_string())].into_iter().collect());
    let shop_pay = ProxyIdentity {
        namespace: Some("shop".into()),
        labels: labels("team", "pay"),
    };
    assert_eq!(
        names(&shop_pay),
        (
            vec![
                "redis/x/for-all@127.0.0.1:7001".to_string(),
                "redis/x/for-shop@127.0.0.1:7000".to_string()
            ],
            vec!["redis/x/backend".to_string(), "redis/x/for-all".to_string()]
        )
    );
    let shop_other = ProxyIdentity {
        namespace: Some("shop".into()),
        labels: labels("team", "web"),
    };
    assert_eq!(names(&shop_other).0, ["redis/x/for-all@127.0.0.1:7001"]);
    let elsewhere = ProxyIdentity {
        namespace: Some("web".into()),
        labels: labels("team", "pay"),
    };
    assert_eq!(names(&elsewhere).1, ["redis/x/for-all"]);
    // A proxy that reports no metadata matches every clients selector.
    let anonymous = ProxyIdentity::default();
    assert_eq!(names(&anonymous).0.len(), 2);
    // The unused, listener-less RedisCluster goes to nobody.
    assert!(!names(&anonymous).1.contains(&"redis/x/unused".to_string()));
}

#[test]
fn should_reject_read_policy_and_topology_on_sharded_mode() {
    let yaml = rc(
        "x",
        "s",
        "mode: Sharded\nendpoints: {static: [\"127.0.0.1:7000\"]}\ntopology: {refreshInterval: 5s}\nlistener: {port: 7000, readPolicy: Replica}",
    );
    let c = compiled(&yaml);
    let fields: Vec<&str> = c.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["spec.listener.readPolicy", "spec.topology"]);
    assert!(c.problems.iter().all(|p| p.reason == Reason::Invalid));
    // Sharded endpoints are IP addresses: no DNS family to choose.
    let c = compiled(&rc(
        "x",
        "s",
        "mode: Sharded\nendpoints: {static: [\"127.0.0.1:7000\"]}\ndnsLookupFamily: Auto",
    ));
    let fields: Vec<&str> = c.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["spec.dnsLookupFamily"]);
}

#[test]
fn should_reject_host_names_in_sharded_mode_but_accept_them_in_cluster_mode() {
    let c = compiled(&rc(
        "x",
        "s",
        "mode: Sharded\nendpoints: {static: [\"redis-0.example:6379\"]}",
    ));
    assert_eq!(c.problems.len(), 1);
    assert!(c.problems[0].message.contains("IP addresses"));
    let c = compiled(&rc(
        "x",
        "s",
        "endpoints: {static: [\"redis-0.example:6379\"]}",
    ));
    assert!(c.problems.is_empty());
}

#[test]
fn should_require_exactly_one_endpoint_source() {
    let c = compiled(&rc(
        "x",
        "a",
        "endpoints: {service: svc, static: [\"127.0.0.1:1\"]}",
    ));
    assert_eq!(
        problem_lines(&c),
        [
            "x/a: spec.endpoints: set exactly one of endpoints.selector, endpoints.service or endpoints.static"
        ]
    );
    let c = compiled(&rc("x", "a", "endpoints: {}"));
    assert_eq!(c.problems.len(), 1);
}

#[test]
fn should_accept_every_client_password_of_a_rotation_window_under_one_username() {
    let secret = |name: &str, user: &str, password: &str| {
        format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: x}}\nstringData: {{username: {user}, password: {password}}}\n"
        )
    };
    let listener = |additional: &str| {
        format!(
            "{STATIC}\nlistener: {{port: 1, downstreamAuth: {{secretRef: {{name: new}}, additionalSecretRefs: [{additional}]}}}}"
        )
    };
    let secrets =
        secret("new", "app", "n3w") + &secret("old", "app", "0ld") + &secret("other", "ops", "x");
    let c = compiled(&(rc("x", "a", &listener("{name: old}")) + &secrets));
    assert!(c.problems.is_empty(), "{:?}", problem_lines(&c));
    let proxy = listener_json(&c, "redis/x/a@127.0.0.1:1");
    let passwords: Vec<&str> = proxy["downstreamAuthPasswords"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["inlineString"].as_str().unwrap())
        .collect();
    assert_eq!(passwords, ["n3w", "0ld"], "the current password first");
    assert_eq!(proxy["downstreamAuthUsername"]["inlineString"], "app");

    // Envoy has one username for every password; a Secret named twice is a slip.
    let c = compiled(&(rc("x", "a", &listener("{name: other}, {name: new}")) + &secrets));
    assert_eq!(
        problem_fields(&c),
        [
            "a:spec.listener.downstreamAuth.additionalSecretRefs[0].name",
            "a:spec.listener.downstreamAuth.additionalSecretRefs[1].name",
        ]
    );
    assert!(
        c.problems[0].message.contains("one username"),
        "{}",
        c.problems[0]
    );
    assert!(
        c.problems[1].message.contains("named twice"),
        "{}",
        c.problems[1]
    );
    assert!(!accepted(&c, "x/a"));

    // The Kubernetes source keeps the data of the additional Secrets too.
    let spec: redis_xds::api::RedisClusterSpec = serde_json::from_value(serde_json::json!({
        "endpoints": {"static": ["127.0.0.1:7000"]},
        "listener": {"port": 1, "downstreamAuth": {"secretRef": {"name": "new"}, "additionalSecretRefs": [{"name": "old"}]}}
    }))
    .unwrap();
    assert_eq!(redis_xds::api::secret_names(&spec), ["new", "old"]);
}

#[test]
fn should_report_missing_secrets_and_missing_password_keys() {
    let secret = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: nopass, namespace: x}\nstringData: {username: u}\n";
    let yaml = rc(
        "x",
        "a",
        &format!("{STATIC}\nauth: {{secretRef: {{name: absent}}}}"),
    ) + &rc(
        "x",
        "b",
        &format!(
            "{STATIC}\nlistener: {{port: 1, downstreamAuth: {{secretRef: {{name: nopass}}}}}}"
        ),
    ) + secret;
    let c = compiled(&yaml);
    assert_eq!(
        problem_lines(&c),
        [
            "x/a: spec.auth.secretRef.name: Secret \"absent\" not found in namespace \"x\"",
            "x/b: spec.listener.downstreamAuth.secretRef.name: Secret x/nopass has no key \"password\": add it (and optionally \"username\")",
        ]
    );
    assert!(
        c.problems
            .iter()
            .all(|p| p.reason == Reason::SecretNotFound)
    );
}

#[test]
fn should_use_secret_data_and_string_data() {
    let secret = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: x}\ndata: {password: b2xk}\nstringData: {username: bmV3}\n";
    let yaml = rc(
        "x",
        "a",
        &format!("{STATIC}\nauth: {{secretRef: {{name: s}}}}"),
    ) + secret;
    let c = compiled(&yaml);
    let cluster = &c.clusters["redis/x/a"].cluster;
    let opts = &cluster.typed_extension_protocol_options["envoy.filters.network.redis_proxy"];
    let json = redis_xds::protojson::bytes_to_json(
        "envoy.extensions.filters.network.redis_proxy.v3.RedisProtocolOptions",
        &opts.value,
    )
    .unwrap();
    assert_eq!(json["authPassword"]["inlineString"], "old");
    assert_eq!(json["authUsername"]["inlineString"], "bmV3");
}

#[test]
fn should_reject_duplicate_and_empty_prefixes() {
    let yaml = rc(
        "x",
        "a",
        &format!(
            "{STATIC}\nlistener:\n  port: 1\n  caseInsensitive: true\n  routes: [{{prefix: \"A:\", cluster: a}}, {{prefix: \"a:\", cluster: a}}, {{prefix: \"\", cluster: a}}]"
        ),
    );
    let c = compiled(&yaml);
    let lines = problem_lines(&c);
    assert!(
        lines.contains(
            &"x/a: spec.listener.routes[1].prefix: prefix \"a:\" is routed twice (caseInsensitive)"
                .to_string()
        ),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l.starts_with("x/a: spec.listener.routes[2].prefix: prefix must not be empty")), "{lines:?}");
}

#[test]
fn should_reject_fault_percentages_over_one_hundred_per_command() {
    let yaml = rc(
        "x",
        "a",
        &format!(
            "{STATIC}\nlistener:\n  port: 1\n  faults: [{{type: Error, percent: 60}}, {{type: Delay, percent: 50, delay: 1s, commands: [get]}}]"
        ),
    );
    let c = compiled(&yaml);
    assert_eq!(
        problem_lines(&c),
        [
            "x/a: spec.listener.faults: fault percentages for get add up to 110; keep the total at or below 100"
        ]
    );
}

#[test]
fn should_reject_values_the_schema_would_reject() {
    let yaml = rc(
        "x",
        "a",
        "endpoints: {static: [\"127.0.0.1:1\"]}\nport: 70000\nconnectTimeout: 0s\nlistener:\n  port: 0\n  address: localhost\n  clients: {namespaces: [], selector: {matchExpressions: [{key: a, operator: Equals}]}}\n  catchAll: {mirror: [{cluster: a, percent: 101}]}\n  faults: [{type: Delay, percent: 1, delay: 500us}, {type: Delay, percent: 1}]",
    );
    let c = compiled(&yaml);
    let fields: Vec<&str> = c.problems.iter().map(|p| p.field.as_str()).collect();
    for expected in [
        "spec.port",
        "spec.connectTimeout",
        "spec.listener.port",
        "spec.listener.address",
        "spec.listener.clients.namespaces",
        "spec.listener.clients.selector.matchExpressions[0].operator",
        "spec.listener.catchAll.mirror[0].percent",
        "spec.listener.faults[0].delay",
        "spec.listener.faults[1].delay",
    ] {
        assert!(
            fields.contains(&expected),
            "missing {expected} in {fields:?}"
        );
    }
}

#[test]
fn should_reject_an_unknown_field_naming_its_path() {
    let yaml = rc(
        "x",
        "a",
        &format!("{STATIC}\nlistener: {{port: 1, readPolicyy: Replica}}"),
    );
    let (c, problems) = load(&yaml);
    assert!(c.objects.is_empty());
    assert_eq!(problems.len(), 1);
    assert_eq!(
        problems[0].to_string(),
        "test.yaml: RedisCluster x/a: spec.listener.readPolicyy: unknown field; check its spelling against `redis-xds crd` (fields are camelCase)"
    );
}

#[test]
fn should_report_an_unknown_kind_of_our_group_but_only_note_foreign_kinds() {
    let typo = rc("x", "a", STATIC).replace("kind: RedisCluster", "kind: RedisKluster");
    let foreign =
        "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: x}\n";
    let good = rc("x", "b", &format!("{STATIC}\nlistener: {{port: 7000}}"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("all.yaml"),
        format!("{typo}{foreign}{good}"),
    )
    .unwrap();
    let loaded = load_dir(dir.path()).unwrap();
    let problems: Vec<String> = loaded.problems.iter().map(ToString::to_string).collect();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("RedisKluster x/a")
            && problems[0].contains("is not a kind of redis-xds.dev"),
        "{problems:?}"
    );
    assert!(
        loaded.notes.iter().any(|n| n.contains("Deployment")),
        "{:?}",
        loaded.notes
    );
    assert!(!loaded.notes.iter().any(|n| n.contains("RedisKluster")));
    // The rest is still compiled, and `render` says so with exit status 1.
    assert!(
        compile(&loaded.model)
            .objects
            .contains_key(&redis_xds::model::ObjectKey::new("x", "b"))
    );
    let out = common::run(&["render", "--manifests", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RedisKluster"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("redis/x/b"));
}

#[test]
fn should_report_a_bad_duration_or_enum_with_its_field_path() {
    let (_, problems) = load(&rc(
        "x",
        "a",
        &format!("{STATIC}\nlistener: {{port: 1, opTimeout: 5sec}}"),
    ));
    assert_eq!(problems.len(), 1);
    let line = problems[0].to_string();
    assert!(
        line.starts_with(
            "test.yaml: RedisCluster x/a: spec.listener.opTimeout: invalid duration \"5sec\""
        ),
        "{line}"
    );
    let (_, problems) = load(&rc(
        "x",
        "a",
        &format!("{STATIC}\nlistener: {{port: 1, readPolicy: Replicas}}"),
    ));
    assert!(
        problems[0]
            .to_string()
            .contains("spec.listener.readPolicy: unknown variant `Replicas`"),
        "{}",
        problems[0]
    );
}

#[test]
fn should_seed_cluster_mode_with_every_selected_pod_that_has_an_address_ready_or_not() {
    let pod = |ns: &str, name: &str, app: &str, ip: Option<&str>, ready: &str| {
        let ip = ip.map(|i| format!("podIP: {i}, ")).unwrap_or_default();
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}\nstatus: {{{ip}conditions: [{{type: Ready, status: \"{ready}\"}}]}}\n"
        )
    };
    let yaml = rc(
        "x",
        "a",
        "endpoints: {selector: {matchLabels: {app: r}}}\nport: 7000",
    ) + &pod("x", "r-1", "r", Some("10.0.0.2"), "True")
        + &pod("x", "r-0", "r", Some("10.0.0.1"), "True")
        + &pod("x", "r-2", "r", Some("10.0.0.3"), "False")
        + &pod("x", "r-3", "r", None, "True")
        + &pod("y", "r-4", "r", Some("10.0.0.5"), "True")
        + &pod("x", "other", "web", Some("10.0.0.6"), "True");
    let c = compiled(&yaml);
    let cla = c.clusters["redis/x/a"]
        .cluster
        .load_assignment
        .clone()
        .unwrap();
    let json = redis_xds::protojson::to_json(&cla).unwrap();
    let addrs: Vec<String> = json["endpoints"][0]["lbEndpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let sa = &e["endpoint"]["address"]["socketAddress"];
            format!("{}:{}", sa["address"].as_str().unwrap(), sa["portValue"])
        })
        .collect();
    // r-2 is not Ready but has an address: it still answers CLUSTER SLOTS, and dropping
    // it would make Envoy rebuild the cluster.
    assert_eq!(addrs, ["10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"]);
    assert_eq!(
        c.objects[&redis_xds::model::ObjectKey::new("x", "a")].endpoints,
        3
    );

    // Mode Sharded hashes over Ready pods: one that is not Ready goes as DRAINING, out of
    // the ring but with its connections kept, and is not counted.
    let sharded = yaml.replace("  port: 7000", "  port: 7000\n  mode: Sharded");
    let c = compiled(&sharded);
    let json =
        redis_xds::protojson::to_json(c.clusters["redis/x/a"].endpoints.as_ref().unwrap()).unwrap();
    let addrs: Vec<(&str, &str)> = json["endpoints"][0]["lbEndpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["endpoint"]["address"]["socketAddress"]["address"]
                    .as_str()
                    .unwrap(),
                e["healthStatus"].as_str().unwrap_or("UNKNOWN"),
            )
        })
        .collect();
    assert_eq!(
        addrs,
        [
            ("10.0.0.1", "UNKNOWN"),
            ("10.0.0.2", "UNKNOWN"),
            ("10.0.0.3", "DRAINING")
        ]
    );
    assert_eq!(
        c.objects[&redis_xds::model::ObjectKey::new("x", "a")].endpoints,
        2
    );
}

#[test]
fn should_keep_cluster_mode_seeds_when_every_pod_turns_not_ready() {
    let pod = |name: &str, ip: &str, ready: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: r}}}}\nstatus: {{podIP: {ip}, conditions: [{{type: Ready, status: \"{ready}\"}}]}}\n"
        )
    };
    let spec = "endpoints: {selector: {matchLabels: {app: r}}}\nport: 7000";
    let ready = compiled(
        &(rc("x", "a", spec) + &pod("r-0", "10.0.0.1", "True") + &pod("r-1", "10.0.0.2", "True")),
    );
    let not_ready = compiled(
        &(rc("x", "a", spec) + &pod("r-0", "10.0.0.1", "False") + &pod("r-1", "10.0.0.2", "False")),
    );
    // The very same cluster, so Envoy has nothing to rebuild.
    assert_eq!(
        ready.clusters["redis/x/a"].cluster,
        not_ready.clusters["redis/x/a"].cluster
    );
    assert!(
        ready.clusters["redis/x/a"]
            .cluster
            .load_assignment
            .is_some()
    );
}

#[test]
fn should_hash_sharded_endpoints_on_their_stable_names() {
    let slice = "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s-1, namespace: x, labels: {kubernetes.io/service-name: svc}}\naddressType: IPv4\nendpoints:\n- {addresses: [10.1.0.1], targetRef: {kind: Pod, name: shard-b}}\n- {addresses: [10.1.0.2], targetRef: {kind: Pod, name: shard-a}, conditions: {ready: true}}\n- {addresses: [10.1.0.3], targetRef: {kind: Pod, name: shard-c}, conditions: {ready: false}}\n";
    let c = compiled(&(rc("x", "a", "mode: Sharded\nendpoints: {service: svc}") + slice));
    let cc = &c.clusters["redis/x/a"];
    assert!(
        cc.cluster.load_assignment.is_none(),
        "Sharded clusters use EDS"
    );
    let json = redis_xds::protojson::to_json(cc.endpoints.as_ref().unwrap()).unwrap();
    let keys: Vec<(&str, &str)> = json["endpoints"][0]["lbEndpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["metadata"]["filterMetadata"]["envoy.lb"]["hash_key"]
                    .as_str()
                    .unwrap(),
                e["endpoint"]["address"]["socketAddress"]["address"]
                    .as_str()
                    .unwrap(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        [
            ("shard-a", "10.1.0.2"),
            ("shard-b", "10.1.0.1"),
            ("shard-c", "10.1.0.3")
        ]
    );
    let health: Vec<&str> = json["endpoints"][0]["lbEndpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["healthStatus"].as_str().unwrap_or("UNKNOWN"))
        .collect();
    assert_eq!(
        health,
        ["UNKNOWN", "UNKNOWN", "DRAINING"],
        "the endpoint that is not ready drains"
    );
    let cluster = redis_xds::protojson::to_json(&cc.cluster).unwrap();
    assert_eq!(cluster["lbPolicy"], "RING_HASH");
    assert_eq!(cluster["ignoreHealthOnHostRemoval"], true);
    assert_eq!(
        cluster["healthChecks"][0]["customHealthCheck"]["name"],
        "envoy.health_checkers.redis"
    );
}

#[test]
fn should_default_the_catch_all_to_the_owner_and_mirrors_to_all_commands() {
    let yaml = rc(
        "x",
        "a",
        &format!("{STATIC}\nlistener: {{port: 1, catchAll: {{mirror: [{{cluster: b}}]}}}}"),
    ) + &rc("x", "b", STATIC);
    let c = compiled(&yaml);
    let proxy = listener_json(&c, "redis/x/a@127.0.0.1:1");
    let catch_all = &proxy["prefixRoutes"]["catchAllRoute"];
    assert_eq!(catch_all["cluster"], "redis/x/a");
    assert_eq!(catch_all["requestMirrorPolicy"][0]["cluster"], "redis/x/b");
    assert_eq!(
        catch_all["requestMirrorPolicy"][0]["runtimeFraction"]["defaultValue"]["numerator"],
        100
    );
    assert!(
        catch_all["requestMirrorPolicy"][0]
            .get("excludeReadCommands")
            .is_none()
    );
    assert_eq!(proxy["settings"]["opTimeout"], "5s");
    assert_eq!(proxy["settings"]["enableRedirection"], true);
    assert_eq!(proxy["settings"]["enableHashtagging"], true);
}

#[test]
fn should_carry_every_field_of_the_kitchen_sink_fixture_to_envoy() {
    let dir = common::root().join("tests/fixtures/everything");
    let loaded = load_dir(&dir).unwrap();
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    let c = compile(&loaded.model);
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    let proxy = listener_json(&c, "redis/shop/orders@127.0.0.1:6379");
    let s = &proxy["settings"];
    assert_eq!(s["opTimeout"], "0.750s");
    assert_eq!(s["enableHashtagging"], true);
    assert_eq!(s["enableRedirection"], true);
    assert_eq!(s["enableCommandStats"], true);
    assert_eq!(s["bufferFlushTimeout"], "0.002s");
    assert_eq!(s["maxBufferSizeBeforeFlush"], 4096);
    assert_eq!(s["maxUpstreamUnknownConnections"], 42);
    assert_eq!(s["readPolicy"], "PREFER_REPLICA");
    let routes = &proxy["prefixRoutes"];
    assert_eq!(routes["caseInsensitive"], true);
    assert_eq!(routes["routes"][0]["prefix"], "session:");
    assert_eq!(routes["routes"][0]["removePrefix"], true);
    assert_eq!(
        routes["routes"][0]["readCommandPolicy"]["cluster"],
        "redis/shop/sessions-ro"
    );
    let m = &routes["routes"][0]["requestMirrorPolicy"][0];
    assert_eq!(m["cluster"], "redis/shop/archive");
    assert_eq!(m["excludeReadCommands"], true);
    assert_eq!(m["runtimeFraction"]["defaultValue"]["numerator"], 50);
    assert_eq!(
        routes["catchAllRoute"]["readCommandPolicy"]["cluster"],
        "redis/shop/orders"
    );
    assert!(
        routes["catchAllRoute"]["requestMirrorPolicy"][0]["runtimeFraction"]["defaultValue"]
            .get("numerator")
            .is_none(),
        "percent 0 stays 0"
    );
    assert_eq!(proxy["faults"][0]["faultType"], "ERROR");
    assert_eq!(proxy["faults"][0]["commands"][0], "GET");
    assert_eq!(proxy["faults"][1]["delay"], "0.020s");
    assert_eq!(
        proxy["faults"][1]["faultEnabled"]["defaultValue"]["numerator"],
        5
    );
    assert_eq!(
        proxy["downstreamAuthPasswords"][0]["inlineString"],
        "kitchen-sink-downstream"
    );
    assert_eq!(proxy["downstreamAuthUsername"]["inlineString"], "app");

    let cluster = redis_xds::protojson::to_json(&c.clusters["redis/shop/orders"].cluster).unwrap();
    assert_eq!(cluster["connectTimeout"], "2s");
    assert_eq!(cluster["lbPolicy"], "CLUSTER_PROVIDED");
    let topo = &cluster["clusterType"]["typedConfig"];
    assert_eq!(
        topo["@type"],
        "type.googleapis.com/envoy.extensions.clusters.redis.v3.RedisClusterConfig"
    );
    assert_eq!(topo["clusterRefreshRate"], "10s");
    assert_eq!(topo["clusterRefreshTimeout"], "2s");
    assert_eq!(topo["redirectRefreshInterval"], "1s");
    assert_eq!(topo["redirectRefreshThreshold"], 7);
    assert_eq!(topo["failureRefreshThreshold"], 4);
    assert_eq!(topo["hostDegradedRefreshThreshold"], 2);
    let auth = &cluster["typedExtensionProtocolOptions"]["envoy.filters.network.redis_proxy"];
    assert_eq!(
        auth["authPassword"]["inlineString"],
        "kitchen-sink-upstream"
    );
    assert_eq!(auth["authUsername"]["inlineString"], "envoy");
    let seeds = cluster["loadAssignment"]["endpoints"][0]["lbEndpoints"]
        .as_array()
        .unwrap();
    assert_eq!(
        seeds.len(),
        3,
        "mode Cluster seeds with the pod that is not Ready too"
    );
    assert_eq!(
        seeds[0]["endpoint"]["address"]["socketAddress"]["portValue"],
        6380
    );

    let l = &c.listeners["redis/shop/orders@127.0.0.1:6379"];
    let ns: Vec<&String> = l.clients.namespaces.as_ref().unwrap().iter().collect();
    assert_eq!(ns, ["checkout", "shop"]);
    // Mode Cluster: every endpoint of the slice is a seed, the one not ready too.
    assert_eq!(
        c.objects[&redis_xds::model::ObjectKey::new("shop", "sessions")].endpoints,
        3
    );
}

#[test]
fn kitchen_sink_static_bootstrap_is_accepted_by_envoy() {
    let dir = common::root().join("tests/fixtures/everything");
    let out = common::run(&[
        "render",
        "--static-bootstrap",
        "--manifests",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bootstrap.json");
    std::fs::write(&path, &out.stdout).unwrap();
    let (ok, log) = common::envoy_validate(&path);
    assert!(ok, "{log}");
}

#[test]
fn should_report_malformed_files_by_line_and_keep_the_other_files() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("good.yaml"),
        rc("x", "good", &format!("{STATIC}\nlistener: {{port: 7000}}")),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("bad.yml"),
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s\n  oops: [\n",
    )
    .unwrap();
    std::fs::write(tmp.path().join("notes.txt"), "not a manifest").unwrap();
    std::fs::write(
        tmp.path().join("other.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
    )
    .unwrap();
    let loaded = load_dir(tmp.path()).unwrap();
    assert_eq!(loaded.problems.len(), 1, "{:?}", loaded.problems);
    let line = loaded.problems[0].to_string();
    let bad = tmp.path().join("bad.yml");
    assert!(
        line.starts_with(&format!("{}:4: not valid YAML", bad.display())),
        "{line}"
    );
    assert_eq!(loaded.notes.len(), 1);
    assert!(
        loaded.notes[0].contains("skipped apps/v1 Deployment default/d"),
        "{}",
        loaded.notes[0]
    );
    let c = compile(&loaded.model);
    assert_eq!(c.listeners.len(), 1);
}

#[test]
fn should_keep_the_first_of_two_objects_with_the_same_name() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("a.yaml"),
        rc("x", "dup", &format!("{STATIC}\nlistener: {{port: 7000}}")),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("b.yaml"),
        rc("x", "dup", &format!("{STATIC}\nlistener: {{port: 7001}}")),
    )
    .unwrap();
    let loaded = load_dir(tmp.path()).unwrap();
    assert_eq!(loaded.problems.len(), 1);
    assert!(
        loaded.problems[0]
            .to_string()
            .contains("already defined in"),
        "{}",
        loaded.problems[0]
    );
    let c = compile(&loaded.model);
    assert!(c.listeners.contains_key("redis/x/dup@127.0.0.1:7000"));
}

#[test]
fn render_exits_1_on_problems_but_still_prints_the_valid_part() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("all.yaml"),
        rc("x", "ok", &format!("{STATIC}\nlistener: {{port: 7000}}"))
            + &rc(
                "x",
                "broken",
                &format!(
                    "{STATIC}\nlistener: {{port: 7001, routes: [{{prefix: p, cluster: gone}}]}}"
                ),
            ),
    )
    .unwrap();
    let out = common::run(&["render", "--manifests", tmp.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        ["problem: x/broken: spec.listener.routes[0].cluster: RedisCluster \"gone\" not found"]
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["listeners"].as_array().unwrap().len(), 1);
    assert_eq!(json["listeners"][0]["name"], "redis/x/ok@127.0.0.1:7000");
}

#[test]
fn render_selects_the_view_of_one_proxy() {
    let dir = common::root().join("examples/auth");
    let args = |extra: &[&str]| {
        let mut a = vec!["render", "--manifests", dir.to_str().unwrap()];
        a.extend_from_slice(extra);
        let out = common::run(&a);
        assert!(out.status.success());
        let json: Value = serde_json::from_slice(&out.stdout).unwrap();
        json["listeners"].as_array().unwrap().len()
    };
    assert_eq!(
        args(&["--node-namespace", "shop", "--node-label", "app=checkout"]),
        1
    );
    assert_eq!(
        args(&["--node-namespace", "shop", "--node-label", "app=web"]),
        0
    );
    assert_eq!(
        args(&["--node-namespace", "other", "--node-label", "app=checkout"]),
        0
    );
}

#[test]
fn render_fails_clearly_on_a_missing_directory() {
    let out = common::run(&["render", "--manifests", "/nonexistent/dir"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/dir: not a directory"));
    let _ = Path::new("/");
}

fn model(yaml: &str) -> redis_xds::model::Model {
    let path = PathBuf::from("test.yaml");
    let parsed = parse_file(&path, yaml);
    let (model, problems, _) = assemble(&[(path, parsed)], &mut |_| None);
    assert!(
        problems.is_empty(),
        "unexpected load problems: {problems:?}"
    );
    model
}

#[test]
fn should_reuse_the_previous_compile_of_objects_whose_inputs_did_not_change() {
    let secret = |password: &str| {
        format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: s, namespace: x}}\nstringData: {{password: {password}}}\n"
        )
    };
    let objects = |b_port: u16| {
        rc(
            "x",
            "a",
            &format!("{STATIC}\nauth: {{secretRef: {{name: s}}}}"),
        ) + &rc(
            "y",
            "b",
            &format!("endpoints: {{static: [\"127.0.0.1:{b_port}\"]}}\nlistener: {{port: 7100}}"),
        ) + &rc("y", "c", STATIC)
    };
    let before = model(&(objects(7001) + &secret("one")));
    let first = compile(&before);
    let same =
        |c: &Compiled, name: &str| std::sync::Arc::ptr_eq(&first.clusters[name], &c.clusters[name]);

    // b's spec changed: only b is compiled again.
    let after = model(&(objects(7002) + &secret("one")));
    let again = recompile(&after, Some((&before, &first)));
    assert_eq!(again, compile(&after));
    assert!(same(&again, "redis/x/a") && same(&again, "redis/y/c"));
    assert!(!same(&again, "redis/y/b"));
    assert!(!std::sync::Arc::ptr_eq(
        &first.listeners["redis/y/b@127.0.0.1:7100"],
        &again.listeners["redis/y/b@127.0.0.1:7100"]
    ));

    // A Secret of namespace x changed: what x's objects read is compiled again.
    let after = model(&(objects(7001) + &secret("two")));
    let again = recompile(&after, Some((&before, &first)));
    assert_eq!(again, compile(&after));
    assert!(!same(&again, "redis/x/a"));
    assert!(same(&again, "redis/y/b") && same(&again, "redis/y/c"));
}

#[test]
fn should_follow_references_to_the_same_objects_when_others_come_and_go() {
    // a routes to c; d is rejected on its own. The compile remembers where a's reference
    // points; once b goes (or e comes before c), c is somewhere else among the objects.
    let a = rc(
        "x",
        "a",
        &format!("{STATIC}\nlistener: {{port: 7100, routes: [{{prefix: \"c:\", cluster: c}}]}}"),
    );
    let b = rc("x", "b", STATIC);
    let bb = rc("x", "bb", STATIC);
    let c = rc("x", "c", STATIC);
    let d = rc("x", "d", "endpoints: {}");
    let before = model(&[a.as_str(), &b, &c, &d].concat());
    let first = compile(&before);
    assert!(accepted(&first, "x/a") && !accepted(&first, "x/d"));
    for after in [
        model(&[a.as_str(), &c, &d].concat()),
        model(&[a.as_str(), &b, &bb, &c, &d].concat()),
    ] {
        let again = recompile(&after, Some((&before, &first)));
        assert_eq!(again, compile(&after));
        assert!(accepted(&again, "x/a"), "{:?}", problem_lines(&again));
    }
}

#[test]
fn should_update_what_an_unchanged_object_depends_on_in_a_recompile() {
    // a routes to c; only c's spec (then only a's generation) changes.
    let a = rc(
        "x",
        "a",
        &format!("{STATIC}\nlistener: {{port: 7100, routes: [{{prefix: \"c:\", cluster: c}}]}}"),
    );
    let good = model(&[a.as_str(), &rc("x", "c", STATIC)].concat());
    let bad = model(&[a.as_str(), &rc("x", "c", "endpoints: {}")].concat());
    let first = compile(&good);
    // c is rejected: a, unchanged, is rejected with it; c fixed: a is back.
    let broken = recompile(&bad, Some((&good, &first)));
    assert_eq!(broken, compile(&bad));
    assert!(!accepted(&broken, "x/a"));
    let fixed = recompile(&good, Some((&bad, &broken)));
    assert_eq!(fixed, compile(&good));
    assert!(accepted(&fixed, "x/a"));
    // A new generation with the same spec is reported in the outcome.
    let mut bumped = good.clone();
    let key = redis_xds::model::ObjectKey::new("x", "a");
    std::sync::Arc::make_mut(bumped.redis_clusters.get_mut(&key).expect("listed")).generation =
        Some(7);
    let again = recompile(&bumped, Some((&good, &fixed)));
    assert_eq!(again, compile(&bumped));
    assert_eq!(again.objects[&key].generation, Some(7));
}

#[test]
fn should_refuse_object_names_kubernetes_would_refuse_and_keep_the_rest() {
    // Without the check, x/y + z and x + y/z would both be redis/x/y/z.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("objects.yaml"),
        rc("x", "y/z", STATIC) + &rc("x/y", "z", STATIC) + &rc("x", "fine", STATIC),
    )
    .unwrap();
    let loaded = load_dir(tmp.path()).unwrap();
    let lines: Vec<String> = loaded.problems.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].contains("RedisCluster x/y/z")
            && lines[0].contains("metadata.name: \"y/z\" is not a Kubernetes object name"),
        "{lines:?}"
    );
    assert!(
        lines[1].contains("metadata.namespace: \"x/y\" is not a Kubernetes namespace"),
        "{lines:?}"
    );
    let c = compile(&loaded.model);
    let clusters: Vec<&String> = c.clusters.keys().collect();
    assert_eq!(clusters, ["redis/x/fine"]);
}

#[test]
fn should_give_a_contested_port_anew_when_only_the_ages_change() {
    let on_port = |name: &str| rc("x", name, &format!("{STATIC}\nlistener: {{port: 6379}}"));
    let before = model(&(on_port("a") + &on_port("b")));
    let first = compile(&before);
    assert!(accepted(&first, "x/a") && !accepted(&first, "x/b"));
    // Same specs; b turns out to be the older object.
    let mut after = before.clone();
    for (name, created) in [("a", 20), ("b", 10)] {
        let key = redis_xds::model::ObjectKey::new("x", name);
        std::sync::Arc::make_mut(after.redis_clusters.get_mut(&key).expect("listed")).created =
            Some(created);
    }
    let again = recompile(&after, Some((&before, &first)));
    assert_eq!(again, compile(&after));
    assert!(accepted(&again, "x/b") && !accepted(&again, "x/a"));
}

#[test]
fn should_count_the_endpoints_of_an_object_that_is_not_accepted() {
    // Invalid on its own (a Sharded object may not set readPolicy), endpoints fine: the
    // status shows them, so that ENDPOINTS 0 never points at the wrong problem.
    let c = compiled(&rc(
        "x",
        "a",
        "mode: Sharded\nendpoints: {static: [\"10.0.0.1:6379\", \"10.0.0.2:6379\"]}\nlistener: {port: 6379, readPolicy: Replica}",
    ));
    assert!(!accepted(&c, "x/a"), "{:?}", problem_lines(&c));
    assert_eq!(
        c.objects[&redis_xds::model::ObjectKey::new("x", "a")].endpoints,
        2
    );
}

#[test]
fn should_leave_out_what_envoy_would_refuse_naming_the_spec_field() {
    // Envoy's RouteValidationError: a prefix is at most 1,000 bytes. The object is left out
    // before sending (Envoy would NACK the whole update), its referrer with it, the rest
    // stays.
    let long = "k".repeat(1001);
    let yaml = rc(
        "shop",
        "orders",
        &format!(
            "{STATIC}\nlistener:\n  port: 6379\n  routes: [{{prefix: \"a:\", cluster: fine}}, {{prefix: \"{long}\", cluster: fine}}]"
        ),
    ) + &rc(
        "shop",
        "fine",
        &format!("{STATIC}\nlistener: {{port: 6380}}"),
    ) + &rc(
        "shop",
        "mirrors-orders",
        &format!(
            "{STATIC}\nlistener:\n  port: 6381\n  catchAll: {{mirror: [{{cluster: orders}}]}}"
        ),
    );
    let c = compiled(&yaml);
    let orders: Vec<_> = c
        .problems
        .iter()
        .filter(|p| p.object.name == "orders")
        .collect();
    assert_eq!(orders.len(), 1, "{:?}", c.problems);
    assert_eq!(orders[0].field, "spec.listener.routes[1].prefix");
    assert_eq!(orders[0].reason, Reason::Invalid);
    assert!(
        orders[0].message.contains("prefix_routes.routes[1].prefix")
            && orders[0].message.contains("1000"),
        "{}",
        orders[0].message
    );
    assert!(!accepted(&c, "shop/orders"));
    assert!(!accepted(&c, "shop/mirrors-orders"));
    assert!(accepted(&c, "shop/fine"));
    assert_eq!(c.listeners.len(), 1);

    // At exactly 1,000 bytes Envoy takes it, and so does redis-xds.
    let c = compiled(&yaml.replace(&long, &"k".repeat(1000)));
    assert!(accepted(&c, "shop/orders"), "{:?}", c.problems);
}

#[test]
fn should_map_the_redis_proxy_capabilities_to_their_envoy_fields() {
    let yaml = rc(
        "shop",
        "orders",
        "endpoints: {static: [\"localhost:7000\"]}\ndnsLookupFamily: All\nlistener:\n  port: 6379\n  protocolVersion: RESP3\n  customCommands: [json.get, ft.search]\n  connectionRateLimit: 50\n  latencyInMicros: true\n  routes: [{prefix: \"t:\", cluster: orders, keyFormatter: \"tenant-a:%KEY%\"}]\n  catchAll: {keyFormatter: \"{%KEY%}\"}",
    );
    let c = compiled(&yaml);
    let proxy = listener_json(&c, "redis/shop/orders@127.0.0.1:6379");
    assert_eq!(proxy["protocolVersion"], "RESP3");
    assert_eq!(
        proxy["customCommands"],
        serde_json::json!(["json.get", "ft.search"])
    );
    assert_eq!(proxy["latencyInMicros"], true);
    assert_eq!(
        proxy["settings"]["connectionRateLimit"]["connectionRateLimitPerSec"],
        50
    );
    // Redirections to host names resolve through a DNS cache of the same family.
    assert_eq!(
        proxy["settings"]["dnsCacheConfig"],
        serde_json::json!({"name": "redis-xds-all", "dnsLookupFamily": "ALL"})
    );
    let routes = &proxy["prefixRoutes"];
    assert_eq!(routes["routes"][0]["keyFormatter"], "tenant-a:%KEY%");
    assert_eq!(routes["catchAllRoute"]["keyFormatter"], "{%KEY%}");
    let cluster = redis_xds::protojson::to_json(&c.clusters["redis/shop/orders"].cluster).unwrap();
    assert_eq!(cluster["dnsLookupFamily"], "ALL");

    // The default family takes IPv4 first: `localhost` must not become ::1 alone.
    let c = compiled(&rc(
        "shop",
        "plain",
        "endpoints: {static: [\"localhost:7000\"]}\nlistener: {port: 6380}",
    ));
    let cluster = redis_xds::protojson::to_json(&c.clusters["redis/shop/plain"].cluster).unwrap();
    assert_eq!(cluster["dnsLookupFamily"], "V4_PREFERRED");
    let proxy = listener_json(&c, "redis/shop/plain@127.0.0.1:6380");
    assert_eq!(
        proxy["settings"]["dnsCacheConfig"]["name"],
        "redis-xds-v4-preferred"
    );
    // Without redirection there is nothing to resolve.
    let c = compiled(&rc(
        "shop",
        "plain",
        "endpoints: {static: [\"localhost:7000\"]}\nlistener: {port: 6380, enableRedirection: false}",
    ));
    let proxy = listener_json(&c, "redis/shop/plain@127.0.0.1:6380");
    assert!(proxy["settings"].get("dnsCacheConfig").is_none(), "{proxy}");
}

#[test]
fn should_reject_key_formatters_without_the_key_and_bad_custom_commands() {
    let yaml = rc(
        "shop",
        "orders",
        &format!(
            "{STATIC}\nlistener:\n  port: 6379\n  connectionRateLimit: 0\n  customCommands: [json.get, JSON.GET, \"bad cmd\", \"\"]\n  routes: [{{prefix: \"t:\", cluster: orders, keyFormatter: \"tenant-a\"}}]"
        ),
    );
    let c = compiled(&yaml);
    let fields: Vec<&str> = c.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.listener.connectionRateLimit",
            "spec.listener.customCommands[1]",
            "spec.listener.customCommands[2]",
            "spec.listener.customCommands[3]",
            "spec.listener.routes[0].keyFormatter",
        ],
        "{:?}",
        c.problems
    );
    assert!(problem_lines(&c).iter().any(|l| l.contains("has no %KEY%")));
    assert!(!accepted(&c, "shop/orders"));
}

#[test]
fn should_eject_failing_shards_on_local_origin_failures_only_by_default() {
    let sharded =
        "mode: Sharded\nendpoints: {static: [\"a=127.0.0.1:7000\", \"b=127.0.0.1:7001\"]}";
    let outlier = |c: &Compiled, name: &str| {
        redis_xds::protojson::to_json(&c.clusters[&format!("redis/x/{name}")].cluster).unwrap()
            ["outlierDetection"]
            .clone()
    };
    let c = compiled(&rc("x", "plain", sharded));
    let od = outlier(&c, "plain");
    assert_eq!(od["splitExternalLocalOriginErrors"], true);
    assert_eq!(od["consecutiveLocalOriginFailure"], 5);
    assert_eq!(od["enforcingConsecutiveLocalOriginFailure"], 100);
    assert_eq!(
        (
            &od["interval"],
            &od["baseEjectionTime"],
            &od["maxEjectionPercent"]
        ),
        (
            &serde_json::json!("10s"),
            &serde_json::json!("30s"),
            &serde_json::json!(50)
        )
    );
    // Detectors Envoy enforces by default would eject a healthy server for error replies.
    for detector in [
        "enforcingConsecutive5xx",
        "enforcingSuccessRate",
        "enforcingLocalOriginSuccessRate",
    ] {
        assert_eq!(od[detector], 0, "{detector} is enforced: {od}");
    }

    let c = compiled(&rc(
        "x",
        "tuned",
        &format!(
            "{sharded}\nsharding: {{outlierDetection: {{consecutiveFailures: 2, interval: 1s, baseEjectionTime: 5s, maxEjectionPercent: 100}}}}"
        ),
    ));
    let od = outlier(&c, "tuned");
    assert_eq!(
        (
            &od["consecutiveLocalOriginFailure"],
            &od["interval"],
            &od["baseEjectionTime"],
            &od["maxEjectionPercent"]
        ),
        (
            &serde_json::json!(2),
            &serde_json::json!("1s"),
            &serde_json::json!("5s"),
            &serde_json::json!(100)
        )
    );
    let c = compiled(&rc(
        "x",
        "off",
        &format!("{sharded}\nsharding: {{outlierDetection: {{enabled: false}}}}"),
    ));
    assert!(outlier(&c, "off").is_null());

    let c = compiled(&rc(
        "x",
        "bad",
        &format!(
            "{sharded}\nsharding: {{outlierDetection: {{consecutiveFailures: 0, maxEjectionPercent: 101, interval: 0s}}}}"
        ),
    ));
    let fields: Vec<&str> = c.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.sharding.outlierDetection.consecutiveFailures",
            "spec.sharding.outlierDetection.interval",
            "spec.sharding.outlierDetection.maxEjectionPercent",
        ],
        "{:?}",
        c.problems
    );
}

#[test]
fn should_map_sharding_and_refuse_what_the_chosen_balancer_ignores() {
    let sharded =
        "mode: Sharded\nendpoints: {static: [\"a=127.0.0.1:7000\", \"b=127.0.0.1:7001\"]}";
    let cluster = |c: &Compiled, name: &str| {
        redis_xds::protojson::to_json(&c.clusters[&format!("redis/x/{name}")].cluster).unwrap()
    };
    let c = compiled(&rc(
        "x",
        "ring",
        &format!(
            "{sharded}\nsharding: {{hashFunction: MurmurHash2, minimumRingSize: 4096, maximumRingSize: 65536, healthCheck: {{interval: 10s, timeout: 2s, unhealthyThreshold: 5, healthyThreshold: 2}}}}"
        ),
    ));
    let ring = cluster(&c, "ring");
    assert_eq!(ring["lbPolicy"], "RING_HASH");
    assert_eq!(
        ring["ringHashLbConfig"],
        serde_json::json!({"minimumRingSize": "4096", "maximumRingSize": "65536", "hashFunction": "MURMUR_HASH_2"})
    );
    let hc = &ring["healthChecks"][0];
    assert_eq!(
        (
            &hc["interval"],
            &hc["timeout"],
            &hc["unhealthyThreshold"],
            &hc["healthyThreshold"]
        ),
        (
            &serde_json::json!("10s"),
            &serde_json::json!("2s"),
            &serde_json::json!(5),
            &serde_json::json!(2)
        )
    );

    let c = compiled(&rc(
        "x",
        "maglev",
        &format!("{sharded}\nsharding: {{lbPolicy: Maglev, tableSize: 131071}}"),
    ));
    let maglev = cluster(&c, "maglev");
    assert_eq!(maglev["lbPolicy"], "MAGLEV");
    assert_eq!(maglev["maglevLbConfig"]["tableSize"], "131071");

    // Defaults: the ring with Envoy's sizes, the documented health check.
    let c = compiled(&rc("x", "plain", sharded));
    let plain = cluster(&c, "plain");
    assert!(plain.get("ringHashLbConfig").is_none());
    assert_eq!(plain["healthChecks"][0]["interval"], "3s");

    let c = compiled(
        &(rc(
            "x",
            "bad",
            &format!(
                "{sharded}\nsharding: {{lbPolicy: Maglev, tableSize: 65536, minimumRingSize: 10}}"
            ),
        ) + &rc(
            "x",
            "order",
            &format!("{sharded}\nsharding: {{minimumRingSize: 100, maximumRingSize: 10}}"),
        ) + &rc(
            "x",
            "cluster-mode",
            &format!("{STATIC}\nsharding: {{lbPolicy: Maglev}}"),
        )),
    );
    assert_eq!(
        problem_fields(&c),
        [
            "bad:spec.sharding.minimumRingSize",
            "bad:spec.sharding.tableSize",
            "cluster-mode:spec.sharding",
            "order:spec.sharding.minimumRingSize",
        ],
        "{:?}",
        c.problems
    );
}

#[test]
fn should_trust_a_ca_bundle_the_sidecar_mounts_from_a_config_map() {
    let c = compiled(
        &(rc(
            "x",
            "bundle",
            &format!(
                "{STATIC}\ntls: {{caConfigMapRef: {{name: trust-bundle, key: root-certs.pem}}, serverName: redis.example}}"
            ),
        ) + &rc(
            "x",
            "default-key",
            &format!("{STATIC}\ntls: {{caConfigMapRef: {{name: trust-bundle}}}}"),
        ) + &rc(
            "x",
            "both",
            &format!(
                "{STATIC}\ntls: {{caConfigMapRef: {{name: trust-bundle}}, caSecretRef: {{name: ca}}}}"
            ),
        ) + &rc(
            "x",
            "escape",
            &format!(
                "{STATIC}\ntls: {{caConfigMapRef: {{name: trust-bundle, key: ../../secrets/x}}}}"
            ),
        )),
    );
    let trusted = |name: &str| {
        redis_xds::protojson::to_json(&c.clusters[&format!("redis/x/{name}")].cluster).unwrap()
            ["transportSocket"]["typedConfig"]["commonTlsContext"]["validationContext"]
            ["trustedCa"]
            .clone()
    };
    assert_eq!(
        trusted("bundle"),
        serde_json::json!({"filename": "/etc/redis-xds/configmaps/trust-bundle/root-certs.pem"})
    );
    assert_eq!(
        trusted("default-key"),
        serde_json::json!({"filename": "/etc/redis-xds/configmaps/trust-bundle/ca.crt"})
    );
    let fields: Vec<String> = c
        .problems
        .iter()
        .map(|p| format!("{}:{}", p.object.name, p.field))
        .collect();
    assert_eq!(
        fields,
        [
            "both:spec.tls.caConfigMapRef",
            "both:spec.tls.caSecretRef.name",
            "escape:spec.tls.caConfigMapRef.key"
        ],
        "{:?}",
        c.problems
    );
}

#[test]
fn should_map_upstream_tls_and_report_missing_secret_keys() {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["redis".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
    let q = |s: &str| serde_json::to_string(s).unwrap();
    let secrets = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: ca, namespace: x}}\nstringData: {{ca.crt: {}}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: client, namespace: x}}\nstringData: {{tls.crt: {}, tls.key: {}}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: garbage, namespace: x}}\nstringData: {{ca.crt: not-a-certificate, tls.crt: {}, tls.key: {}}}\n",
        q(&cert_pem),
        q(&cert_pem),
        q(&key_pem),
        q(&cert_pem),
        q(&cert_pem),
    );
    let yaml = rc(
        "x",
        "a",
        &format!(
            "{STATIC}\ntls: {{caSecretRef: {{name: ca}}, serverName: redis.example, clientCertificateSecretRef: {{name: client}}}}"
        ),
    ) + &rc("x", "system", &format!("{STATIC}\ntls: {{}}"))
        + &rc(
            "x",
            "broken",
            &format!(
                "{STATIC}\ntls: {{caSecretRef: {{name: client}}, clientCertificateSecretRef: {{name: ca}}, serverName: \"Not A Name\"}}"
            ),
        )
        + &rc(
            "x",
            "garbage",
            &format!(
                "{STATIC}\ntls: {{caSecretRef: {{name: garbage}}, clientCertificateSecretRef: {{name: garbage}}}}"
            ),
        )
        + &secrets;
    let c = compiled(&yaml);
    let socket = |name: &str| {
        let cluster =
            redis_xds::protojson::to_json(&c.clusters[&format!("redis/x/{name}")].cluster).unwrap();
        cluster["transportSocket"].clone()
    };
    let tls = socket("a");
    assert_eq!(tls["name"], "envoy.transport_sockets.tls");
    let ctx = &tls["typedConfig"];
    assert_eq!(ctx["sni"], "redis.example");
    let common = &ctx["commonTlsContext"];
    assert_eq!(
        common["validationContext"]["trustedCa"]["inlineString"],
        cert_pem.as_str()
    );
    assert_eq!(
        common["validationContext"]["matchTypedSubjectAltNames"][0],
        serde_json::json!({"sanType": "DNS", "matcher": {"exact": "redis.example"}})
    );
    assert_eq!(
        common["tlsCertificates"][0]["certificateChain"]["inlineString"],
        cert_pem.as_str()
    );
    // The private key never shows in what operators read.
    let mut shown = tls.clone();
    redis_xds::protojson::redact(&mut shown);
    assert_eq!(
        shown["typedConfig"]["commonTlsContext"]["tlsCertificates"][0]["privateKey"]["inlineString"],
        redis_xds::protojson::REDACTED
    );
    // No CA Secret: the sidecar's system trust store.
    assert_eq!(
        socket("system")["typedConfig"]["commonTlsContext"]["validationContext"]["trustedCa"]["filename"],
        "/etc/ssl/certs/ca-certificates.crt"
    );
    let broken: Vec<String> = problem_lines(&c)
        .into_iter()
        .filter(|l| l.starts_with("x/broken"))
        .collect();
    assert_eq!(
        broken,
        [
            "x/broken: spec.tls.caSecretRef.name: Secret x/client has no \"ca.crt\": add it",
            "x/broken: spec.tls.clientCertificateSecretRef.name: Secret x/ca has no \"tls.crt\": add it",
            "x/broken: spec.tls.clientCertificateSecretRef.name: Secret x/ca has no \"tls.key\": add it",
            "x/broken: spec.tls.serverName: \"Not A Name\" is not a DNS name (lowercase letters, digits, '-' and '.')",
        ]
    );
    // What Envoy could not parse is refused here, without quoting it.
    let garbage: Vec<String> = problem_lines(&c)
        .into_iter()
        .filter(|l| l.starts_with("x/garbage"))
        .collect();
    assert_eq!(
        garbage,
        [
            "x/garbage: spec.tls.caSecretRef.name: \"ca.crt\" of Secret \"garbage\" does not hold PEM certificates, which Envoy cannot load (given such a CA, Envoy 1.40 crashed with a segmentation fault rather than refusing it): put the PEM the key is named for there",
            "x/garbage: spec.tls.clientCertificateSecretRef.name: \"tls.key\" of Secret \"garbage\" does not hold a PEM private key, which Envoy cannot load (given such a CA, Envoy 1.40 crashed with a segmentation fault rather than refusing it): put the PEM the key is named for there",
        ]
    );
}

#[test]
fn should_map_external_auth_and_refuse_a_service_that_is_not_host_port() {
    let yaml = rc(
        "x",
        "a",
        &format!(
            "{STATIC}\nlistener:\n  port: 6379\n  externalAuth: {{service: \"auth.x.svc:9000\", timeout: 250ms, enableAuthExpiration: true}}"
        ),
    ) + &rc(
        "x",
        "b",
        &format!("{STATIC}\nlistener:\n  port: 6380\n  externalAuth: {{service: \"auth.x.svc\"}}"),
    );
    let c = compiled(&yaml);
    let proxy = listener_json(&c, "redis/x/a@127.0.0.1:6379");
    assert_eq!(
        proxy["externalAuthProvider"],
        serde_json::json!({
            "grpcService": {
                "googleGrpc": {"targetUri": "auth.x.svc:9000", "statPrefix": "redis_external_auth"},
                "timeout": "0.250s"
            },
            "enableAuthExpiration": true
        })
    );
    assert_eq!(
        problem_lines(&c),
        [
            "x/b: spec.listener.externalAuth.service: \"auth.x.svc\" is not host:port (a DNS name or IP address, and a port 1..65535)"
        ]
    );
}

#[test]
fn should_map_credentials_per_endpoint() {
    let secrets = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: node-a, namespace: x}\nstringData: {username: a, password: pa}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: all, namespace: x}\nstringData: {password: p}\n";
    let yaml = rc(
        "x",
        "a",
        &format!(
            "{STATIC}\nauth: {{secretRef: {{name: all}}}}\nendpointAuth:\n  - {{address: \"127.0.0.1:7000\", secretRef: {{name: node-a}}}}"
        ),
    ) + &rc(
        "x",
        "b",
        &format!(
            "{STATIC}\nendpointAuth:\n  - {{address: \"redis-0:7000\", secretRef: {{name: node-a}}}}\n  - {{address: \"127.0.0.1:7001\", secretRef: {{name: missing}}}}"
        ),
    ) + secrets;
    let c = compiled(&yaml);
    let cluster = redis_xds::protojson::to_json(&c.clusters["redis/x/a"].cluster).unwrap();
    let options = &cluster["typedExtensionProtocolOptions"]["envoy.filters.network.redis_proxy"];
    assert_eq!(options["authPassword"]["inlineString"], "p");
    assert_eq!(
        options["credentials"],
        serde_json::json!([{
            "address": {"socketAddress": {"address": "127.0.0.1", "portValue": 7000}},
            "authPassword": {"inlineString": "pa"},
            "authUsername": {"inlineString": "a"}
        }])
    );
    let fields: Vec<&str> = c.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.endpointAuth[0].address",
            "spec.endpointAuth[1].secretRef.name"
        ]
    );
}

#[test]
fn should_keep_upstream_connections_alive_by_default_and_take_whole_seconds() {
    let c = compiled(
        &(rc("x", "plain", STATIC)
            + &rc(
                "x",
                "tuned",
                &format!("{STATIC}\ntcpKeepalive: {{time: 5m, interval: 30s, probes: 5}}"),
            )
            + &rc(
                "x",
                "bad",
                &format!("{STATIC}\ntcpKeepalive: {{time: 1500ms}}"),
            )),
    );
    let keepalive = |name: &str| {
        redis_xds::protojson::to_json(&c.clusters[&format!("redis/x/{name}")].cluster).unwrap()
            ["upstreamConnectionOptions"]["tcpKeepalive"]
            .clone()
    };
    assert_eq!(
        keepalive("plain"),
        serde_json::json!({"keepaliveTime": 60, "keepaliveInterval": 10, "keepaliveProbes": 3})
    );
    assert_eq!(
        keepalive("tuned"),
        serde_json::json!({"keepaliveTime": 300, "keepaliveInterval": 30, "keepaliveProbes": 5})
    );
    let fields: Vec<&str> = c.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["spec.tcpKeepalive.time"]);
}

/// Settings Envoy would ignore, change or choke on are refused where they are written, each
/// with the reason (tests/e2e/own_rules.rs shows real Envoy doing what the messages say).
#[test]
fn should_judge_key_formatter_operators_as_envoy_1_40_does() {
    let with = |f: &str| {
        compiled(&rc(
            "x",
            "a",
            &format!(
                "{STATIC}\nlistener: {{port: 1, catchAll: {{keyFormatter: {}}}}}",
                serde_json::to_string(f).unwrap()
            ),
        ))
    };
    // What Envoy fills in (or, for %%, writes as '%').
    for ok in [
        "tenant-a:%KEY%",
        "%HOSTNAME%/%KEY%",
        "%ENVIRONMENT(POD_NAMESPACE)%:%KEY%",
        "%START_TIME(%Y)%:%KEY%",
        "%START_TIME%:%KEY%",
        "%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%|%DOWNSTREAM_REMOTE_ADDRESS%|%KEY%",
        "100%%:%KEY%",
    ] {
        let c = with(ok);
        assert!(c.problems.is_empty(), "{ok}: {:?}", problem_lines(&c));
    }
    // What makes Envoy abort on the first command, or format as nothing.
    for (bad, says) in [
        ("100%:%KEY%", "a '%' that starts no operator"),
        ("%KEY%:%", "a '%' that starts no operator"),
        ("%KEY%:%KEY", "is not closed"),
        ("%HOSTNAME:4%:%KEY%", "is not closed"),
        ("%NOPE%:%KEY%", "does not fill in %NOPE%"),
        ("%DOWNSTREAM_LOCAL_PORT%:%KEY%", "does not fill in"),
        ("%HOSTNAME(x)%:%KEY%", "takes no argument"),
        ("%KEY%%KEY(x)%", "takes no argument"),
        ("%ENVIRONMENT%:%KEY%", "needs an argument"),
        ("%START_TIME(%Y:%KEY%", "no closing ')'"),
    ] {
        let c = with(bad);
        assert_eq!(
            problem_fields(&c),
            ["a:spec.listener.catchAll.keyFormatter"],
            "{bad}"
        );
        assert!(
            c.problems[0].message.contains(says),
            "{bad}: {}",
            c.problems[0]
        );
    }
}

#[test]
fn should_refuse_settings_envoy_would_ignore_change_or_choke_on() {
    let sharded = "mode: Sharded\nendpoints: {static: [\"127.0.0.1:7000\"]}";
    for (spec, field, says) in [
        (
            format!(
                "{STATIC}\nlistener: {{port: 1, routes: [{{prefix: \"t:\", cluster: a, keyFormatter: \"100%:%KEY%\"}}]}}"
            ),
            "spec.listener.routes[0].keyFormatter",
            "a '%' that starts no operator",
        ),
        (
            format!("{STATIC}\nlistener: {{port: 1, customCommands: [JSON.GET]}}"),
            "spec.listener.customCommands[0]",
            "write \"json.get\"",
        ),
        (
            format!("{STATIC}\nlistener: {{port: 1, customCommands: [mget]}}"),
            "spec.listener.customCommands[0]",
            "already proxies",
        ),
        (
            format!(
                "{STATIC}\nlistener: {{port: 1, faults: [{{type: Error, percent: 10, commands: [SET, set]}}]}}"
            ),
            "spec.listener.faults[0].commands[1]",
            "listed twice",
        ),
        (
            format!(
                "{STATIC}\nlistener: {{port: 1, faults: [{{type: Error, percent: 10, commands: [PING]}}]}}"
            ),
            "spec.listener.faults[0].commands[0]",
            "answers AUTH, PING",
        ),
        (
            format!(
                "{STATIC}\nlistener: {{port: 1, faults: [{{type: Error, percent: 10, commands: [nosuchcommand]}}]}}"
            ),
            "spec.listener.faults[0].commands[0]",
            "never fire",
        ),
        (
            format!(
                "{STATIC}\nlistener: {{port: 1, faults: [{{type: Delay, percent: 10, delay: 0s}}]}}"
            ),
            "spec.listener.faults[0].delay",
            "greater than 0",
        ),
        (
            format!("{STATIC}\nlistener: {{port: 1, opTimeout: 1500us}}"),
            "spec.listener.opTimeout",
            "whole number of milliseconds",
        ),
        (
            format!("{STATIC}\nlistener: {{port: 1, enableHashtagging: false}}"),
            "spec.listener.enableHashtagging",
            "mode Sharded only",
        ),
        (
            format!("{STATIC}\nlistener: {{port: 1, bufferFlushTimeout: 1ms}}"),
            "spec.listener.bufferFlushTimeout",
            "maxBufferSizeBeforeFlush",
        ),
        (
            format!("{sharded}\nlistener: {{port: 1, maxUpstreamUnknownConnections: 5}}"),
            "spec.listener.maxUpstreamUnknownConnections",
            "enableRedirection",
        ),
        (
            format!("{STATIC}\nlistener: {{port: 1, caseInsensitive: true}}"),
            "spec.listener.caseInsensitive",
            "no routes",
        ),
        (
            format!("{STATIC}\ntcpKeepalive: {{time: 10h}}"),
            "spec.tcpKeepalive.time",
            "32767s",
        ),
        (
            format!("{STATIC}\nawsIam: {{cacheName: c, user: \"\"}}"),
            "spec.awsIam.user",
            "turns IAM authentication off",
        ),
        (
            format!("{STATIC}\ntls: {{serverName: 10.0.0.5}}"),
            "spec.tls.serverName",
            "RFC 6066",
        ),
        (
            format!(
                "{STATIC}\nawsIam: {{cacheName: c, user: u}}\nendpointAuth: [{{address: \"127.0.0.1:7000\", secretRef: {{name: s}}}}]"
            ),
            "spec.endpointAuth",
            "never sends these passwords",
        ),
        (
            "mode: Sharded\nendpoints: {static: [\"127.0.0.1:7000\"]}\nendpointAuth: [{address: \"127.0.0.1:7000\", secretRef: {name: s}}]".to_owned(),
            "spec.endpointAuth",
            "mode Cluster only",
        ),
        (
            "mode: Sharded\nendpoints: {static: [\"127.0.0.1:7000\", \"127.0.0.1:7001\", \"127.0.0.1:7002\"]}\nsharding: {lbPolicy: Maglev, tableSize: 2}".to_owned(),
            "spec.sharding.tableSize",
            "give 1 of them no keys",
        ),
    ] {
        let c = compiled(&rc("x", "a", &spec));
        let p = c
            .problems
            .iter()
            .find(|p| p.field == field)
            .unwrap_or_else(|| panic!("{field} not refused: {:?}", c.problems));
        assert!(p.message.contains(says), "{field}: {}", p.message);
    }
    // What Envoy does honour stays accepted: hashtagging off in Sharded mode, prefixes that
    // differ beyond ASCII case, a fault on a custom command.
    for spec in [
        format!("{sharded}\nlistener: {{port: 1, enableHashtagging: false}}"),
        format!(
            "{STATIC}\nlistener: {{port: 1, caseInsensitive: true, routes: [{{prefix: \"Ä:\", cluster: a}}, {{prefix: \"ä:\", cluster: a}}]}}"
        ),
        format!(
            "{STATIC}\nlistener: {{port: 1, customCommands: [json.get], faults: [{{type: Error, percent: 10, commands: [JSON.GET]}}]}}"
        ),
        "mode: Sharded\nendpoints: {static: [\"127.0.0.1:7000\", \"127.0.0.1:7001\", \"127.0.0.1:7002\"]}\nsharding: {lbPolicy: Maglev, tableSize: 3}".to_owned(),
    ] {
        let c = compiled(&rc("x", "a", &spec));
        assert!(c.problems.is_empty(), "{spec}: {:?}", c.problems);
    }
}

#[test]
fn a_sharded_listener_routing_to_a_redis_cluster_must_follow_redirections() {
    let target = rc("x", "cl", STATIC);
    let owner = |extra: &str| {
        rc(
            "x",
            "sh",
            &format!(
                "mode: Sharded\nendpoints: {{static: [\"127.0.0.1:7100\"]}}\nlistener: {{port: 1, routes: [{{prefix: \"c:\", cluster: cl}}]{extra}}}"
            ),
        )
    };
    let c = compiled(&format!("{target}{}", owner("")));
    needs_redirection(&c, "spec.listener.routes[0].cluster");
    assert!(!accepted(&c, "x/sh") && accepted(&c, "x/cl"));
    let c = compiled(&format!("{target}{}", owner(", enableRedirection: true")));
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    // Incremental compiles see it too: the target turning into a Redis Cluster.
    let before_yaml = format!(
        "{}{}",
        rc(
            "x",
            "cl",
            "mode: Sharded\nendpoints: {static: [\"127.0.0.1:7000\"]}"
        ),
        owner("")
    );
    let before_model = model(&before_yaml);
    let before = redis_xds::compile::compile(&before_model);
    assert!(before.problems.is_empty(), "{:?}", before.problems);
    let after_model = model(&format!("{target}{}", owner("")));
    let after = redis_xds::compile::recompile(&after_model, Some((&before_model, &before)));
    assert!(
        after
            .problems
            .iter()
            .any(|p| p.reason == redis_xds::compile::Reason::RefIncompatible),
        "{:?}",
        after.problems
    );
}

#[test]
fn a_redirect_refresh_needs_a_listener_that_follows_redirections() {
    let target = |topology: &str, listener: &str| {
        rc(
            "x",
            "cl",
            &format!("{STATIC}\ntopology: {{{topology}}}{listener}"),
        )
    };
    let no_redirect = "\nlistener: {port: 1, enableRedirection: false}";
    // Its own listener does not follow MOVED/ASK, and nothing else routes to it.
    let c = compiled(&target("redirectRefreshThreshold: 3", no_redirect));
    needs_redirection(&c, "spec.topology.redirectRefreshThreshold");
    assert!(!accepted(&c, "x/cl"));
    // The interval alone too, unless a failure or degraded-host refresh uses it.
    let c = compiled(&target("redirectRefreshInterval: 2s", no_redirect));
    assert_eq!(
        c.problems
            .iter()
            .map(|p| p.field.as_str())
            .collect::<Vec<_>>(),
        ["spec.topology.redirectRefreshInterval"]
    );
    // What does take effect stays accepted: an interval shared with the failure refresh,
    // a threshold of 0 (off), no listener at all, or another listener that routes here
    // and follows redirections.
    let other = rc(
        "x",
        "front",
        "endpoints: {static: [\"127.0.0.1:7100\"]}\nlistener: {port: 2, routes: [{prefix: \"c:\", cluster: cl}]}",
    );
    for yaml in [
        target(
            "redirectRefreshInterval: 2s, failureRefreshThreshold: 3",
            no_redirect,
        ),
        target("redirectRefreshThreshold: 0", no_redirect),
        target("redirectRefreshThreshold: 3", ""),
        target("redirectRefreshThreshold: 3", no_redirect) + &other,
    ] {
        let c = compiled(&yaml);
        assert!(c.problems.is_empty(), "{yaml}: {:?}", c.problems);
    }
    // Incremental compiles see it too: the other listener stops following redirections.
    let before_model = model(&(target("redirectRefreshThreshold: 3", no_redirect) + &other));
    let before = redis_xds::compile::compile(&before_model);
    assert!(before.problems.is_empty(), "{:?}", before.problems);
    let after_model = model(
        &(target("redirectRefreshThreshold: 3", no_redirect)
            + &other.replace("port: 2,", "port: 2, enableRedirection: false,")),
    );
    let after = redis_xds::compile::recompile(&after_model, Some((&before_model, &before)));
    assert_eq!(
        problem_fields(&after),
        [
            "cl:spec.topology.redirectRefreshThreshold",
            "front:spec.listener.routes[0].cluster"
        ],
        "{:?}",
        after.problems
    );
}

#[test]
fn zone_aware_read_policies_need_zone_discovery() {
    for policy in ["LocalZoneAffinity", "LocalZoneAffinityReplicasAndPrimary"] {
        let without = compiled(&rc(
            "x",
            "z",
            &format!("{STATIC}\nlistener: {{port: 7000, readPolicy: {policy}}}"),
        ));
        assert_eq!(problem_fields(&without), ["z:spec.listener.readPolicy"]);
        let message = &without.problems[0].message;
        assert!(
            message.contains("zoneDiscovery") && message.contains("PreferReplica"),
            "{message}"
        );
        let with = compiled(&rc(
            "x",
            "z",
            &format!(
                "{STATIC}\ntopology: {{zoneDiscovery: true}}\nlistener: {{port: 7000, readPolicy: {policy}}}"
            ),
        ));
        assert!(with.problems.is_empty(), "{:?}", problem_lines(&with));
        let cluster = redis_xds::protojson::to_json(&with.clusters["redis/x/z"].cluster).unwrap();
        assert_eq!(
            cluster["clusterType"]["typedConfig"]["enableZoneDiscovery"],
            true
        );
    }
}

#[test]
fn aws_iam_signs_the_health_checks_too_with_the_credentials_named() {
    let spec = "mode: Sharded\nendpoints: {static: [\"127.0.0.1:7000\"]}\nawsIam:\n  cacheName: c\n  user: u\n  credentialProvider:\n    webIdentity: {roleArn: \"arn:aws:iam::123456789012:role/r\", tokenFile: /var/run/token}\n    credentialsFile: {path: /etc/aws/credentials, profile: redis}\n    onlyThese: true";
    let c = compiled(&rc("x", "iam", spec));
    assert!(c.problems.is_empty(), "{:?}", problem_lines(&c));
    let cluster = redis_xds::protojson::to_json(&c.clusters["redis/x/iam"].cluster).unwrap();
    let options = &cluster["typedExtensionProtocolOptions"]["envoy.filters.network.redis_proxy"];
    let health = &cluster["healthChecks"][0]["customHealthCheck"]["typedConfig"];
    assert_eq!(health["awsIam"], options["awsIam"], "{cluster}");
    let provider = &health["awsIam"]["credentialProvider"];
    assert_eq!(
        provider["assumeRoleWithWebIdentityProvider"]["webIdentityTokenDataSource"]["filename"],
        "/var/run/token"
    );
    assert_eq!(
        provider["credentialsFileProvider"]["credentialsDataSource"]["filename"],
        "/etc/aws/credentials"
    );
    assert_eq!(provider["credentialsFileProvider"]["profile"], "redis");
    assert_eq!(provider["customCredentialProviderChain"], true);

    let relative = compiled(&rc("x", "iam", &spec.replace("/var/run/token", "token")));
    assert_eq!(
        problem_fields(&relative),
        ["iam:spec.awsIam.credentialProvider.webIdentity.tokenFile"]
    );
}
