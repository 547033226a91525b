//! redis-xds's own rules about what Envoy refuses when it loads a configuration, checked
//! in both directions against real Envoy 1.40 (`envoy --mode validate`): the nearest
//! setting redis-xds accepts, rendered as a static bootstrap, loads; the same bootstrap
//! edited to the setting redis-xds refuses does not, with Envoy's own message. (The rules
//! about what Envoy loads but then mishandles are shown with traffic in tests/e2e.)

use crate::common;

use std::path::Path;

use serde_json::{Value, json};

/// A RedisCluster `x/s` with `spec`, and a listener on port 7100 unless `spec` has one (a
/// bootstrap holds only the clusters its listeners use).
fn rc(spec: &str) -> String {
    let spec = if spec.contains("listener:") {
        spec.to_owned()
    } else {
        format!("{spec}\nlistener: {{port: 7100}}")
    };
    common::redis_cluster("x", "s", &spec)
}

/// `render --static-bootstrap` of `manifests`: the bootstrap, or the problems printed.
fn render(dir: &Path, manifests: &str) -> Result<Value, String> {
    common::render_static(dir, &[("s.yaml", manifests)])
}

/// Envoy's verdict on `bootstrap`: `Ok` when it loads, else its output.
fn envoy_loads(dir: &Path, bootstrap: &Value) -> Result<(), String> {
    let path = dir.join("bootstrap.json");
    std::fs::write(&path, bootstrap.to_string()).unwrap();
    match common::envoy_validate(&path) {
        (true, _) => Ok(()),
        (false, out) => Err(out),
    }
}

/// One rule in both directions: redis-xds accepts `accepted` and Envoy loads it; redis-xds
/// refuses `refused` at `field`; and Envoy, given the accepted bootstrap edited by `edit`
/// to what `refused` asks for, refuses it saying `envoy_says`.
fn both_directions(
    accepted: &str,
    refused: &str,
    field: &str,
    edit: impl FnOnce(&mut Value),
    envoy_says: &str,
) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let problems = render(dir, refused).expect_err("redis-xds refuses it");
    assert!(problems.contains(field), "{field}: {problems}");
    let mut bootstrap = render(dir, accepted).expect("redis-xds accepts it");
    envoy_loads(dir, &bootstrap).expect("Envoy loads what redis-xds accepts");
    edit(&mut bootstrap);
    let out = envoy_loads(dir, &bootstrap).expect_err("Envoy refuses it");
    assert!(
        out.contains(envoy_says),
        "expected {envoy_says:?} in:\n{out}"
    );
}

fn cluster(b: &mut Value) -> &mut Value {
    &mut b["staticResources"]["clusters"][0]
}

const SHARDED: &str = "mode: Sharded\nendpoints: {static: [\"127.0.0.1:7000\", \"127.0.0.1:7001\", \"127.0.0.1:7002\"]}";

#[test]
fn sharded_servers_must_be_ip_addresses() {
    both_directions(
        &rc(SHARDED),
        &rc("mode: Sharded\nendpoints: {static: [\"localhost:7000\"]}"),
        "spec.endpoints.static[0]",
        |b| {
            cluster(b)["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"]
                ["socketAddress"]["address"] = json!("localhost");
        },
        "malformed IP address: localhost",
    );
}

#[test]
fn maglev_tables_must_be_prime() {
    both_directions(
        &rc(&format!(
            "{SHARDED}\nsharding: {{lbPolicy: Maglev, tableSize: 5}}"
        )),
        &rc(&format!(
            "{SHARDED}\nsharding: {{lbPolicy: Maglev, tableSize: 4}}"
        )),
        "spec.sharding.tableSize",
        |b| cluster(b)["maglevLbConfig"]["tableSize"] = json!("4"),
        "must be prime",
    );
}

#[test]
fn ring_sizes_must_be_in_order() {
    both_directions(
        &rc(&format!(
            "{SHARDED}\nsharding: {{minimumRingSize: 1024, maximumRingSize: 1024}}"
        )),
        &rc(&format!(
            "{SHARDED}\nsharding: {{minimumRingSize: 2048, maximumRingSize: 1024}}"
        )),
        "spec.sharding.minimumRingSize",
        |b| cluster(b)["ringHashLbConfig"]["minimumRingSize"] = json!("2048"),
        "ring hash: minimum_ring_size (2048) > maximum_ring_size (1024)",
    );
}

#[test]
fn prefixes_must_differ_once_folded() {
    let routes = |second: &str| {
        rc(&format!(
            "{SHARDED}\nlistener:\n  port: 7100\n  caseInsensitive: true\n  routes: [{{prefix: \"A:\", cluster: s}}, {{prefix: \"{second}\", cluster: s}}]"
        ))
    };
    both_directions(
        &routes("b:"),
        &routes("a:"),
        "spec.listener.routes[1].prefix",
        |b| {
            b["staticResources"]["listeners"][0]["filterChains"][0]["filters"][0]["typedConfig"]
                ["prefixRoutes"]["routes"][1]["prefix"] = json!("a:");
        },
        "prefix `a:` already exists.",
    );
}

/// A self-signed CA certificate, PEM.
fn ca_pem() -> String {
    common::pki::Ca::new("redis-xds test CA").pem()
}

#[test]
fn a_ca_must_be_pem_certificates() {
    let with_ca = |pem: &str| {
        let indented: Vec<String> = pem.lines().map(|l| format!("    {l}")).collect();
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: ca, namespace: x}}\nstringData:\n  ca.crt: |\n{}\n---\n{}",
            indented.join("\n"),
            rc("endpoints: {static: [\"127.0.0.1:7000\"]}\ntls: {caSecretRef: {name: ca}}")
        )
    };
    let good = ca_pem();
    let garbage =
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";
    both_directions(
        &with_ca(&good),
        &with_ca(garbage),
        "spec.tls.caSecretRef.name",
        |b| {
            let text = b.to_string().replace(
                &serde_json::to_string(&good).unwrap()
                    [1..serde_json::to_string(&good).unwrap().len() - 1],
                &serde_json::to_string(garbage).unwrap()
                    [1..serde_json::to_string(garbage).unwrap().len() - 1],
            );
            *b = serde_json::from_str(&text).unwrap();
        },
        // Not a refusal: Envoy 1.40 crashes on it, at startup as here, and so would a
        // sidecar given it over xDS.
        "Caught Segmentation fault",
    );
}
