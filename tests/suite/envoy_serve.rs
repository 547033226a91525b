//! Real Envoy 1.40 against `redis-xds serve`, over Delta and over SotW: it ends up with
//! the listener and clusters active, serves Redis on the listener, and follows a change.

use crate::common;

use common::{envoy_dynamic, redis_command, start_envoy, start_serve, wait_until};

fn manifests(listener_port: u16) -> String {
    manifests_with(listener_port, "")
}

/// `cache_extra`: more spec fields of the Sharded `cache` object.
fn manifests_with(listener_port: u16, cache_extra: &str) -> String {
    format!(
        r#"apiVersion: redis-xds.dev/v1alpha1
kind: RedisCluster
metadata: {{name: orders, namespace: shop}}
spec:
  endpoints: {{static: ["127.0.0.1:7000", "127.0.0.1:7001"]}}
  listener:
    port: {listener_port}
    clients: {{namespaces: [shop]}}
    routes: [{{prefix: "c:", cluster: cache}}]
---
apiVersion: redis-xds.dev/v1alpha1
kind: RedisCluster
metadata: {{name: cache, namespace: shop}}
spec:
  mode: Sharded
  endpoints: {{static: ["a=127.0.0.1:7100", "b=127.0.0.1:7101"]}}
{cache_extra}"#
    )
}

/// The `connectTimeout` of Envoy's active cluster `name`, and how many clusters warm.
fn active_timeout_and_warming(admin: &str, name: &str) -> Option<(String, usize)> {
    let body = common::http_get(admin, "/config_dump")?;
    let dump: serde_json::Value = serde_json::from_str(&body).ok()?;
    let mut timeout = None;
    let mut warming = 0;
    for config in dump["configs"].as_array()? {
        for c in config["dynamic_active_clusters"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if c["cluster"]["name"] == name {
                timeout = c["cluster"]["connect_timeout"].as_str().map(str::to_owned);
            }
        }
        warming += config["dynamic_warming_clusters"]
            .as_array()
            .map_or(0, Vec::len);
    }
    Some((timeout?, warming))
}

fn extra(port: u16) -> String {
    format!(
        r#"apiVersion: redis-xds.dev/v1alpha1
kind: RedisCluster
metadata: {{name: extra, namespace: shop}}
spec:
  endpoints: {{static: ["127.0.0.1:7200"]}}
  listener: {{port: {port}}}
"#
    )
}

fn envoy_follows_serve(sotw: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("manifests");
    std::fs::create_dir(&dir).unwrap();
    let port = common::free_port();
    std::fs::write(dir.join("orders.yaml"), manifests(port)).unwrap();
    let common::Serve {
        proc: mut serve,
        xds,
        log,
        ..
    } = start_serve(&dir, &[]);

    let xds = xds.to_string();
    let mut args = vec![
        "--xds-address",
        &xds,
        "--node-id",
        "envoy-test",
        "--namespace",
        "shop",
        "--label",
        "app=test",
    ];
    if sotw {
        args.push("--sotw");
    }
    let (_envoy, admin) = start_envoy(tmp.path(), &args);

    let listener = format!("redis/shop/orders@127.0.0.1:{port}");
    wait_until("Envoy holds both clusters and the listener", || {
        let (clusters, listeners) = envoy_dynamic(&admin)?;
        (clusters == ["redis/shop/cache", "redis/shop/orders"] && listeners == [listener.clone()])
            .then_some(())
    });
    // redis_proxy answers PING itself: the listener is really serving Redis.
    let reply = wait_until("the listener answers PING", || {
        redis_command(&format!("127.0.0.1:{port}"), &["PING"])
    });
    assert_eq!(reply, "+PONG\r\n");
    // Envoy's Prometheus output names the RedisCluster in one label, so that a dashboard
    // groups commands by object: its tag extractor takes a redis_proxy stat prefix up to the
    // first dot, and redis-xds's prefix has none.
    let prometheus = common::http_get(&admin, "/stats/prometheus").unwrap();
    assert!(
        prometheus.contains("\nenvoy_redis_command_get_total{envoy_redis_prefix=\"shop/orders\"} ")
            && !prometheus.contains("envoy_redis_orders_"),
        "{}",
        prometheus
            .lines()
            .filter(|l| l.contains("redis"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // A cluster-level edit of the EDS-fed Sharded cluster, its endpoints unchanged: Envoy
    // warms the new cluster until its ClusterLoadAssignment arrives, which redis-xds sends
    // with it rather than leaving Envoy to its 15 s initial fetch timeout.
    std::fs::write(
        dir.join("orders.yaml"),
        manifests_with(port, "  connectTimeout: 3s\n"),
    )
    .unwrap();
    wait_until("Envoy's cache cluster active with the new timeout", || {
        let (timeout, warming) = active_timeout_and_warming(&admin, "redis/shop/cache")?;
        (timeout == "3s" && warming == 0).then_some(())
    });
    let stats = common::http_get(&admin, "/stats?filter=init_fetch_timeout").unwrap();
    assert!(
        stats.contains("init_fetch_timeout"),
        "Envoy reports its fetch timeouts: {stats}"
    );
    assert!(
        stats
            .lines()
            .filter(|l| l.contains("init_fetch_timeout"))
            .all(|l| l.ends_with(": 0")),
        "a cluster waited for its endpoints until the initial fetch timed out:\n{stats}"
    );

    // A change: a new RedisCluster with a listener appears on the proxy, without restart.
    let port2 = common::free_port();
    std::fs::write(dir.join("extra.yaml"), extra(port2)).unwrap();
    let listener2 = format!("redis/shop/extra@127.0.0.1:{port2}");
    wait_until("Envoy holds the new listener and cluster", || {
        let (clusters, listeners) = envoy_dynamic(&admin)?;
        (clusters.contains(&"redis/shop/extra".to_string()) && listeners.contains(&listener2))
            .then_some(())
    });
    // And a removal takes the listener away, then its cluster.
    std::fs::remove_file(dir.join("extra.yaml")).unwrap();
    wait_until("Envoy dropped the removed listener and cluster", || {
        let (clusters, listeners) = envoy_dynamic(&admin)?;
        (!clusters.contains(&"redis/shop/extra".to_string()) && listeners == [listener.clone()])
            .then_some(())
    });

    let status = serve.terminate();
    assert!(
        status.success(),
        "serve exits cleanly on SIGTERM: {status:?}\n{}",
        log.lock().unwrap()
    );
    let log = log.lock().unwrap();
    assert!(log.contains("proxy connected"), "{log}");
    assert!(log.contains("stopped"), "{log}");
    assert!(
        !log.contains("rejected configuration"),
        "Envoy NACKed something:\n{log}"
    );
}

#[test]
fn envoy_over_delta_gets_listener_and_clusters_and_follows_changes() {
    envoy_follows_serve(false);
}

#[test]
fn envoy_over_sotw_gets_listener_and_clusters_and_follows_changes() {
    envoy_follows_serve(true);
}

/// A client password rotation on real Envoy: while `additionalSecretRefs` names the old
/// Secret, a client still on the old password and one already on the new one both get in;
/// once it is dropped, only the new one does.
#[test]
fn envoy_should_accept_old_and_new_client_passwords_during_a_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("manifests");
    std::fs::create_dir(&dir).unwrap();
    let port = common::free_port();
    let objects = |additional: &str| {
        format!(
            r#"apiVersion: v1
kind: Secret
metadata: {{name: clients-2026-11, namespace: shop}}
stringData: {{username: app, password: old-secret}}
---
apiVersion: v1
kind: Secret
metadata: {{name: clients-2026-12, namespace: shop}}
stringData: {{username: app, password: new-secret}}
---
apiVersion: redis-xds.dev/v1alpha1
kind: RedisCluster
metadata: {{name: orders, namespace: shop}}
spec:
  endpoints: {{static: ["127.0.0.1:7000"]}}
  listener:
    port: {port}
    downstreamAuth:
      secretRef: {{name: clients-2026-12}}
{additional}"#
        )
    };
    let window = "      additionalSecretRefs: [{name: clients-2026-11}]\n";
    std::fs::write(dir.join("orders.yaml"), objects(window)).unwrap();
    let common::Serve {
        proc: _serve, xds, ..
    } = start_serve(&dir, &[]);
    let xds = xds.to_string();
    let (_envoy, admin) = start_envoy(
        tmp.path(),
        &[
            "--xds-address",
            &xds,
            "--node-id",
            "rotation",
            "--namespace",
            "shop",
        ],
    );
    let addr = format!("127.0.0.1:{port}");
    let auth = |password: &str| redis_command(&addr, &["AUTH", "app", password]);
    wait_until("the listener answers AUTH", || auth("new-secret"));
    assert_eq!(
        auth("new-secret").unwrap(),
        "+OK\r\n",
        "a client on the new password"
    );
    assert_eq!(
        auth("old-secret").unwrap(),
        "+OK\r\n",
        "a client still on the old one"
    );
    assert!(
        auth("guess").unwrap().starts_with('-'),
        "any other password is refused"
    );

    // The window closes: the old password stops working, the new one goes on.
    std::fs::write(dir.join("orders.yaml"), objects("")).unwrap();
    wait_until("Envoy refuses the old password", || {
        auth("old-secret")?.starts_with('-').then_some(())
    });
    assert_eq!(auth("new-secret").unwrap(), "+OK\r\n");
    let (_, listeners) = envoy_dynamic(&admin).unwrap();
    assert_eq!(listeners, [format!("redis/shop/orders@127.0.0.1:{port}")]);
}

/// The LDS state `/debug/syncz` gives the proxy `node`, and the names it lists as refused.
fn lds_state(debug: &str, node: &str) -> Option<(String, Vec<String>)> {
    let syncz: serde_json::Value =
        serde_json::from_str(&common::http_get(debug, "/debug/syncz")?).ok()?;
    let p = syncz["proxies"]
        .as_array()?
        .iter()
        .find(|p| p["proxy"] == node)?;
    let lds = &p["types"]["LDS"];
    let rejected = lds["rejected"]
        .as_array()?
        .iter()
        .filter_map(|r| Some(r["name"].as_str()?.to_owned()))
        .collect();
    Some((lds["state"].as_str()?.to_owned(), rejected))
}

/// The listener `name` in redis-xds's config dump of the proxy `node`.
fn dumped_listener(debug: &str, node: &str, name: &str) -> Option<serde_json::Value> {
    let path = format!("/debug/config_dump?proxy={node}");
    let dump: serde_json::Value = serde_json::from_str(&common::http_get(debug, &path)?).ok()?;
    dump["configs"][2]["dynamicListeners"]
        .as_array()?
        .iter()
        .find(|l| l["name"] == name)
        .cloned()
}

/// A listener Envoy refuses because another process holds its port: redis-xds says the
/// proxy does not hold it (NACKED, not in its config dump but for the error), and offers it
/// again on its own once a retry is due, so that Envoy takes it when the port is free,
/// though nothing about the listener changed.
fn refused_listener_is_offered_again(sotw: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("manifests");
    std::fs::create_dir(&dir).unwrap();
    let port = common::free_port();
    let busy = std::net::TcpListener::bind(("127.0.0.1", port)).expect("hold the port");
    std::fs::write(dir.join("orders.yaml"), manifests(port)).unwrap();
    let common::Serve {
        proc: mut serve,
        xds,
        debug,
        log,
    } = start_serve(&dir, &[]);
    let xds = xds.to_string();
    let node = if sotw {
        "refused-sotw"
    } else {
        "refused-delta"
    };
    let mut args = vec!["--xds-address", &xds, "--node-id", node];
    args.extend(["--namespace", "shop"]);
    if sotw {
        args.push("--sotw");
    }
    let (_envoy, admin) = start_envoy(tmp.path(), &args);
    let listener = format!("redis/shop/orders@127.0.0.1:{port}");

    let (state, rejected) = wait_until("the proxy refused the listener", || {
        lds_state(&debug, node).filter(|(_, r)| !r.is_empty())
    });
    assert_eq!(state, "NACKED");
    assert_eq!(rejected, std::slice::from_ref(&listener));
    let (clusters, listeners) = envoy_dynamic(&admin).unwrap();
    assert_eq!(clusters, ["redis/shop/cache", "redis/shop/orders"]);
    assert!(listeners.is_empty(), "Envoy holds {listeners:?}");
    let dumped = dumped_listener(&debug, node, &listener).expect("the refused listener");
    assert!(
        dumped.get("activeState").is_none(),
        "a refused listener is not held: {dumped}"
    );
    let details = dumped["errorState"]["details"].as_str().unwrap_or_default();
    assert!(
        details.contains(&listener) && details.contains("Address already in use"),
        "Envoy's own message: {dumped}"
    );
    assert!(
        common::http_get(&debug, "/metrics")
            .unwrap()
            .lines()
            .any(
                |l| l.starts_with("redis_xds_xds_nacks_total{type=\"LDS\"} ") && !l.ends_with(" 0")
            ),
        "the NACK is counted"
    );

    // The port is freed outside redis-xds: the retry brings the listener to Envoy.
    drop(busy);
    common::wait_until_for(
        "Envoy holds the listener once its port is free",
        std::time::Duration::from_secs(60),
        || {
            let (_, listeners) = envoy_dynamic(&admin)?;
            (listeners == [listener.clone()]).then_some(())
        },
    );
    wait_until("the proxy is SYNCED", || {
        lds_state(&debug, node).filter(|(state, r)| state == "SYNCED" && r.is_empty())
    });
    let dumped = dumped_listener(&debug, node, &listener).unwrap();
    assert!(
        dumped.get("activeState").is_some() && dumped.get("errorState").is_none(),
        "{dumped}"
    );
    let reply = wait_until("the listener answers PING", || {
        redis_command(&format!("127.0.0.1:{port}"), &["PING"])
    });
    assert_eq!(reply, "+PONG\r\n");
    serve.terminate();
    let log = log.lock().unwrap();
    assert!(log.contains("offering refused resources again"), "{log}");
}

#[test]
fn a_listener_refused_over_delta_is_offered_again_once_its_port_is_free() {
    refused_listener_is_offered_again(false);
}

#[test]
fn a_listener_refused_over_sotw_is_offered_again_once_its_port_is_free() {
    refused_listener_is_offered_again(true);
}
