//! The operator view of a running server with a real Envoy: the debug endpoints, `status`,
//! metrics, and no password anywhere in them or in the log.

use crate::common;

use common::{http_get, run, start_envoy, start_serve_logging, wait_until};
use serde_json::Value;

const UPSTREAM_PASSWORD: &str = "op-view-upstream-secret";
const CLIENT_PASSWORD: &str = "op-view-client-secret";

fn manifests(port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: upstream, namespace: shop}}
stringData: {{username: envoy, password: {UPSTREAM_PASSWORD}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: clients, namespace: shop}}
stringData: {{password: {CLIENT_PASSWORD}}}
---
apiVersion: redis-xds.dev/v1alpha1
kind: RedisCluster
metadata: {{name: orders, namespace: shop}}
spec:
  endpoints: {{static: ["127.0.0.1:7000"]}}
  auth: {{secretRef: {{name: upstream}}}}
  listener:
    port: {port}
    downstreamAuth: {{secretRef: {{name: clients}}}}
---
apiVersion: redis-xds.dev/v1alpha1
kind: RedisCluster
metadata: {{name: broken, namespace: shop}}
spec:
  endpoints: {{static: ["127.0.0.1:7001"]}}
  listener: {{port: {port2}, catchAll: {{cluster: nowhere}}}}
"#,
        port2 = port + 1
    )
}

#[test]
fn operators_see_what_each_proxy_was_sent_and_whether_it_accepted_it_without_any_password() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("manifests");
    std::fs::create_dir(&dir).unwrap();
    let port = common::free_port();
    std::fs::write(dir.join("shop.yaml"), manifests(port)).unwrap();
    std::fs::write(
        dir.join("typo.yaml"),
        "apiVersion: v1\nkind: Secret\nmetadata: [oops\n",
    )
    .unwrap();
    // Debug logging: the most verbose the server gets must still not show a password.
    let serve = start_serve_logging(&dir, &[], "debug");
    let debug = serve.debug.clone();

    assert_eq!(http_get(&debug, "/healthz").as_deref(), Some("ok\n"));
    assert_eq!(http_get(&debug, "/readyz").as_deref(), Some("ready\n"));

    let xds = serve.xds.to_string();
    let (_envoy, admin) = start_envoy(
        tmp.path(),
        &[
            "--xds-address",
            &xds,
            "--node-id",
            "ops-proxy",
            "--namespace",
            "shop",
        ],
    );

    // `status` reaches SYNCED for every type the proxy asked for.
    let table = wait_until("status shows the proxy SYNCED", || {
        let out = run(&["status", "--debug-addr", &debug]);
        let text = String::from_utf8(out.stdout).ok()?;
        let row = text
            .lines()
            .find(|l| l.starts_with("ops-proxy"))?
            .to_string();
        (row.matches("SYNCED").count() == 2 && out.status.success()).then_some(text)
    });
    assert!(table.starts_with("PROXY"), "{table}");
    let row = table.lines().find(|l| l.starts_with("ops-proxy")).unwrap();
    assert!(row.contains("shop") && row.contains("delta"), "{row}");

    let syncz: Value = serde_json::from_str(&http_get(&debug, "/debug/syncz").unwrap()).unwrap();
    let p = &syncz["proxies"][0];
    assert_eq!(p["proxy"], "ops-proxy");
    assert_eq!(p["types"]["LDS"]["state"], "SYNCED");
    assert_eq!(
        p["types"]["LDS"]["acked_version"],
        p["types"]["LDS"]["sent_version"]
    );

    // config_dump: Envoy's layout, what was sent, passwords redacted.
    let dump: Value =
        serde_json::from_str(&http_get(&debug, "/debug/config_dump?proxy=ops-proxy").unwrap())
            .unwrap();
    let configs = dump["configs"].as_array().unwrap();
    assert_eq!(
        configs[0]["@type"],
        "type.googleapis.com/envoy.admin.v3.ClustersConfigDump"
    );
    assert_eq!(
        configs[0]["dynamicActiveClusters"][0]["cluster"]["name"],
        "redis/shop/orders"
    );
    assert_eq!(
        configs[2]["@type"],
        "type.googleapis.com/envoy.admin.v3.ListenersConfigDump"
    );
    let listener = &configs[2]["dynamicListeners"][0];
    assert_eq!(
        listener["name"],
        format!("redis/shop/orders@127.0.0.1:{port}")
    );
    let text = dump.to_string();
    assert!(text.contains("[redacted]"), "{text}");
    // What Envoy holds is what we say we sent.
    let envoy_dump = http_get(&admin, "/config_dump").unwrap();
    assert!(envoy_dump.contains(&format!("redis/shop/orders@127.0.0.1:{port}")));

    let missing = common::redis_xds_status(&debug, "/debug/config_dump?proxy=nobody");
    assert!(
        missing.contains("404") && missing.contains("no connected proxy"),
        "{missing}"
    );

    // The model: sources, and every problem named by file or object and field.
    let model: Value = serde_json::from_str(&http_get(&debug, "/debug/model").unwrap()).unwrap();
    let objects = model["redis_clusters"].as_array().unwrap();
    let orders = objects.iter().find(|o| o["name"] == "shop/orders").unwrap();
    assert_eq!(orders["accepted"], true);
    assert!(
        orders["source"].as_str().unwrap().ends_with("shop.yaml"),
        "{orders}"
    );
    let broken = objects.iter().find(|o| o["name"] == "shop/broken").unwrap();
    assert_eq!(broken["accepted"], false);
    let problems: Vec<&str> = model["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["text"].as_str().unwrap())
        .collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("typo.yaml") && p.contains("not valid YAML")),
        "{problems:?}"
    );
    assert!(
        problems.contains(
            &"shop/broken: spec.listener.catchAll.cluster: RedisCluster \"nowhere\" not found"
        ),
        "{problems:?}"
    );
    assert_eq!(model["secrets"][0]["keys"], serde_json::json!(["password"]));

    let metrics = http_get(&debug, "/metrics").unwrap();
    assert!(
        metrics.contains("redis_xds_xds_connected_proxies{variant=\"delta\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("redis_xds_xds_pushes_total{type=\"LDS\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("redis_xds_xds_push_latency_seconds_count"),
        "{metrics}"
    );
    assert!(
        metrics.contains("redis_xds_model_problems{stage=\"compile\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("redis_xds_model_problems{stage=\"load\"} 1"),
        "{metrics}"
    );

    // Not one response nor log line carries a password.
    let everything = [
        table,
        syncz.to_string(),
        text,
        model.to_string(),
        metrics,
        run(&["status", "--json", "--debug-addr", &debug])
            .stdout
            .iter()
            .map(|b| *b as char)
            .collect(),
        serve.log.lock().unwrap().clone(),
    ];
    for (i, body) in everything.iter().enumerate() {
        for secret in [UPSTREAM_PASSWORD, CLIENT_PASSWORD] {
            assert!(!body.contains(secret), "output {i} shows a password");
        }
    }
    // ...while Envoy did receive them (it could not authenticate otherwise).
    let out = run(&[
        "render",
        "--static-bootstrap",
        "--manifests",
        dir.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(UPSTREAM_PASSWORD));
}
