//! Istio as users run it, on the same node: istiod installed with Istio's own Helm charts
//! from the pinned istio.io/istio module, istio-proxy (pilot-agent + Envoy 1.40) injected
//! by istiod's webhook into every pod of `deploy/examples-istio`, redis-xds in Istio mode
//! (the chart's `istio.enabled`). Asserted on what the Redis servers saw, what the client
//! got back, and the client sidecar's own counters (TLS handshakes per cluster).
//!
//! The Redis servers are read from inside their pods (`kubectl exec`, loopback): under
//! STRICT mutual TLS their sidecars refuse a plain connection from the node itself.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::cluster::Node;
use crate::scenarios::{ready_condition, redis_xds_ready, under_traffic_in};
use crate::traffic;
use crate::wait_until;

const NS: &str = "shop-mesh";
const MINUTE: Duration = Duration::from_secs(60);

fn root() -> String {
    env!("CARGO_MANIFEST_DIR").to_owned()
}

fn istio_chart(name: &str) -> String {
    let module = std::env::var("ISTIO_MODULE_DIR")
        .expect("ISTIO_MODULE_DIR: the istio.io/istio module (. scripts/kube-tools)");
    format!("{module}/manifests/charts/{name}")
}

fn values() -> String {
    format!("{}/tests/node/istio-values.yaml", root())
}

/// `redis-cli` inside a Redis pod, over its loopback (no sidecar in the way).
fn server(node: &Node, pod: &str, args: &[&str]) -> String {
    let mut a = vec!["-n", NS, "exec", pod, "-c", "redis", "--", "redis-cli"];
    a.extend_from_slice(args);
    node.kubectl(&a)
}

/// `cmdstat_<command>` calls on a Redis pod.
fn calls(node: &Node, pod: &str, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:calls=");
    server(node, pod, &["info", "commandstats"])
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |rest| {
            rest.split(',').next().unwrap().trim().parse().unwrap()
        })
}

fn keys(node: &Node, pod: &str, pattern: &str) -> usize {
    server(node, pod, &["--scan", "--pattern", pattern])
        .lines()
        .filter(|l| !l.is_empty())
        .count()
}

/// The checkout pod: the client.
fn checkout(node: &Node) -> String {
    let pods = node.pods(NS, "app=checkout,role!=traffic");
    let ready: Vec<_> = pods.into_iter().filter(|p| p.2).collect();
    assert_eq!(ready.len(), 1, "one checkout pod Ready: {ready:?}");
    ready[0].0.clone()
}

/// Runs `script` in the client's app container: plain redis-cli to the Service, through
/// its istio-proxy.
fn client(node: &Node, script: &str) -> String {
    let pod = checkout(node);
    node.kubectl(&[
        "-n", NS, "exec", &pod, "-c", "app", "--", "sh", "-c", script,
    ])
}

/// The client sidecar's counters for the clusters redis-xds added: `stat -> value`.
fn proxy_stats(node: &Node) -> BTreeMap<String, u64> {
    let pod = checkout(node);
    let text = node.kubectl(&[
        "-n",
        NS,
        "exec",
        &pod,
        "-c",
        "istio-proxy",
        "--",
        "pilot-agent",
        "request",
        "GET",
        "stats?filter=^cluster%5C.redis/",
    ]);
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(": ")?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

/// The Redis Cluster's pods as (primaries, replicas), by pod name, once it is whole: every
/// server `cluster_state:ok` and listing every replica in CLUSTER SLOTS.
fn whole_cluster(node: &Node) -> (Vec<String>, Vec<String>) {
    wait_until("the mesh's Redis Cluster to be whole", 3 * MINUTE, || {
        let pods = node.pods(NS, "app=orders-redis");
        if pods.len() != 6 || pods.iter().any(|p| !p.2) {
            return None;
        }
        let by_ip: BTreeMap<&str, &str> =
            pods.iter().map(|p| (p.1.as_str(), p.0.as_str())).collect();
        let nodes = server(node, &pods[0].0, &["cluster", "nodes"]);
        let (mut primaries, mut replicas) = (Vec::new(), Vec::new());
        for l in nodes.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            let ip = f.get(1)?.split(['@', ':']).next()?;
            let flags = f.get(2)?;
            if flags.contains("fail") {
                return None;
            }
            let name = (*by_ip.get(ip)?).to_owned();
            if flags.contains("master") {
                primaries.push(name);
            } else {
                replicas.push(name);
            }
        }
        if primaries.len() != 3 || replicas.len() != 3 {
            return None;
        }
        for p in &pods {
            if !server(node, &p.0, &["cluster", "info"]).contains("cluster_state:ok") {
                return None;
            }
            let slots = server(node, &p.0, &["cluster", "slots"]);
            if replicas.iter().any(|r| {
                !slots
                    .lines()
                    .any(|l| pods.iter().any(|q| &q.0 == r && l == q.1))
            }) {
                return None;
            }
        }
        Some((primaries, replicas))
    })
}

/// Waits until GETs through the client work on every shard: its sidecar has redis_proxy and
/// has discovered every replica (Envoy's topology refresh, 5 s here).
fn reads_on_every_shard(node: &Node) {
    let end = Instant::now() + 2 * MINUTE;
    loop {
        let out = client(
            node,
            "for i in $(seq 1 30); do redis-cli -h orders-redis GET probe:$i 2>&1; done",
        );
        let lines: Vec<&str> = out.lines().collect();
        if lines.len() == 30 && lines.iter().all(|l| l.is_empty()) {
            return;
        }
        assert!(
            Instant::now() < end,
            "no replica reads on every shard through istio-proxy after 2 min; the last answers:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Replaces the client pod, and waits until its new istio-proxy serves reads on every shard:
/// every connection it holds is then a new one.
fn new_client(node: &Node) {
    node.kubectl(&[
        "-n",
        NS,
        "delete",
        "pod",
        "-l",
        "app=checkout,role!=traffic",
    ]);
    node.wait(
        &["-n", NS, "--for=condition=Available", "deployment/checkout"],
        180,
    );
    wait_until("the new checkout pod", MINUTE, || {
        let pods = node.pods(NS, "app=checkout,role!=traffic");
        (pods.len() == 1 && pods[0].2).then_some(())
    });
    reads_on_every_shard(node);
}

/// 100 SETs and 100 GETs of `<tag>:<i>` keys and 10 SETs of `session:<tag>:<i>` through the
/// client, then what the servers saw: writes on the primaries by slot, reads only on
/// replicas, every write (and no read) mirrored to orders-next, session keys on sessions
/// only; and the client's sidecar speaking TLS to the servers in the mesh only.
fn commands_land_where_they_should(node: &Node, tag: &str) {
    let (primaries, replicas) = whole_cluster(node);
    let next = node.pods(NS, "app=orders-next-redis")[0].0.clone();
    let sessions = node.pods(NS, "app=sessions-redis")[0].0.clone();
    let gets =
        |pods: &[String]| -> Vec<u64> { pods.iter().map(|p| calls(node, p, "get")).collect() };
    let (p0, r0, n0) = (gets(&primaries), gets(&replicas), calls(node, &next, "get"));
    let tls0 = proxy_stats(node);

    let out = client(
        node,
        &format!("for i in $(seq 1 100); do redis-cli -h orders-redis SET {tag}:$i v$i 2>&1; done"),
    );
    assert_eq!(
        out.lines().filter(|l| *l == "OK").count(),
        100,
        "{tag}: 100 SETs through istio-proxy: {out}"
    );
    let out = client(
        node,
        &format!("for i in $(seq 1 100); do redis-cli -h orders-redis GET {tag}:$i 2>&1; done"),
    );
    let want: Vec<String> = (1..=100).map(|i| format!("v{i}")).collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), want, "{tag}: GETs");
    let out = client(
        node,
        &format!(
            "for i in $(seq 1 10); do redis-cli -h orders-redis SET session:{tag}:$i s 2>&1; done"
        ),
    );
    assert_eq!(out.lines().filter(|l| *l == "OK").count(), 10, "{out}");

    let pattern = format!("{tag}:*");
    let by_primary: Vec<usize> = primaries.iter().map(|p| keys(node, p, &pattern)).collect();
    let (p1, r1, n1) = (gets(&primaries), gets(&replicas), calls(node, &next, "get"));
    let delta =
        |a: &[u64], b: &[u64]| -> Vec<u64> { a.iter().zip(b).map(|(x, y)| x - y).collect() };
    let (dp, dr) = (delta(&p1, &p0), delta(&r1, &r0));
    let mirrored = keys(node, &next, &pattern);
    let on_sessions = keys(node, &sessions, &format!("session:{tag}:*"));
    let sessions_on_orders: usize = primaries
        .iter()
        .map(|p| keys(node, p, &format!("session:{tag}:*")))
        .sum();
    println!(
        "  {tag}: 100 keys by primary {by_primary:?}; GETs on primaries {dp:?}, replicas {dr:?}; mirrored {mirrored} writes, {} reads; {on_sessions} session keys on sessions",
        n1 - n0
    );
    assert_eq!(by_primary.iter().sum::<usize>(), 100, "{tag}");
    assert!(by_primary.iter().all(|n| *n > 0), "{tag}: {by_primary:?}");
    assert_eq!(dp, [0, 0, 0], "{tag}: no GET on a primary");
    assert_eq!(dr.iter().sum::<u64>(), 100, "{tag}: every GET on a replica");
    assert_eq!(mirrored, 100, "{tag}: every write mirrored to orders-next");
    assert_eq!(n1 - n0, 0, "{tag}: no read mirrored (excludeReadCommands)");
    assert_eq!(on_sessions, 10, "{tag}: session keys on sessions");
    assert_eq!(sessions_on_orders, 0, "{tag}: no session key on orders");

    // Istio mutual TLS to the servers with a sidecar, plain text to the one without.
    let tls = proxy_stats(node);
    let stat = |s: &BTreeMap<String, u64>, k: &str| s.get(k).copied().unwrap_or(0);
    for cluster in ["orders", "orders-next"] {
        let handshakes = format!("cluster.redis/{NS}/{cluster}.ssl.handshake");
        let errors = format!("cluster.redis/{NS}/{cluster}.ssl.connection_error");
        assert!(
            stat(&tls, &handshakes) > 0,
            "{tag}: {handshakes} = 0: {tls:#?}"
        );
        assert_eq!(stat(&tls, &errors), stat(&tls0, &errors), "{tag}: {errors}");
    }
    let plain = format!("cluster.redis/{NS}/sessions");
    assert!(
        stat(&tls, &format!("{plain}.upstream_cx_total")) > 0,
        "{tls:#?}"
    );
    assert_eq!(stat(&tls, &format!("{plain}.ssl.handshake")), 0, "{tls:#?}");
}

/// The condition `type` of RedisCluster `name` as (status, reason, message).
fn condition(node: &Node, name: &str, type_: &str) -> Option<(String, String, String)> {
    let rc = node.get_json(&["rediscluster", "-n", NS, name]);
    rc["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (s("status"), s("reason"), s("message"))
        })
}

fn istiod_ready(node: &Node) {
    node.rollout_status("istio-system", "deployment/istiod");
}

/// `helm upgrade` of redis-xds's release with one more value, rolled out.
fn upgrade_redis_xds(node: &Node, set: &str) {
    let chart = format!("{}/charts/redis-xds", root());
    let upgraded = node.helm(&[
        "upgrade",
        "redis-xds",
        &chart,
        "-n",
        "redis-xds",
        "--reuse-values",
        "--set",
        set,
    ]);
    assert!(upgraded.contains("STATUS: deployed"), "{upgraded}");
    redis_xds_rolled_out(node);
}

fn redis_xds_rolled_out(node: &Node) {
    node.rollout_status("redis-xds", "deployment/redis-xds");
    wait_until("both redis-xds replicas Ready", 3 * MINUTE, || {
        redis_xds_ready(node)
    });
}

/// Istio installed as its docs say, with Helm from its own charts: base (CRDs), then
/// redis-xds switched to Istio mode (the chart's `istio.enabled`, as deploy/istio), then
/// istiod with redis-xds as a config source: redis-xds first, since istiod exits at start
/// while an `xds://` source does not answer.
pub fn install(node: &Node) {
    // The previous scenarios' workload is done with; its pods would only take the CPU that
    // the sidecars request.
    node.kubectl(&[
        "delete",
        "namespace",
        "shop",
        "--ignore-not-found",
        "--wait=false",
    ]);
    node.kubectl(&["create", "namespace", "istio-system"]);
    let base = node.helm(&[
        "install",
        "istio-base",
        &istio_chart("base"),
        "-n",
        "istio-system",
        "-f",
        &values(),
    ]);
    assert!(base.contains("STATUS: deployed"), "{base}");
    upgrade_redis_xds(node, "istio.enabled=true");
    let t = Instant::now();
    let istiod = node.helm(&[
        "install",
        "istiod",
        &istio_chart("istio-control/istio-discovery"),
        "-n",
        "istio-system",
        "-f",
        &values(),
    ]);
    assert!(istiod.contains("STATUS: deployed"), "{istiod}");
    istiod_ready(node);
    let pod = node.get_json(&["pods", "-n", "istio-system", "-l", "app=istiod"]);
    let image = &pod["items"][0]["spec"]["containers"][0]["image"];
    assert_eq!(image, "localhost/istio/pilot:kn");
    println!(
        "  istiod Ready {:.1}s after helm install (image {image})",
        t.elapsed().as_secs_f64()
    );
}

/// The article's workload in the mesh under the default PERMISSIVE mode: every pod but
/// the opted-out one runs istio-proxy, the cluster is created through the sidecars, and
/// the client's commands shard, read from replicas, route and mirror, with Istio mutual TLS
/// to the servers in the mesh. An edit reaches the running sidecar, and IstioProgrammed
/// turns True from istiod's own account, read in the cluster with a token.
pub fn workload(node: &Node) {
    crate::scenarios::static_volumes(node, "kn-mesh-pv", 6);
    node.kubectl(&["apply", "-k", &format!("{}/deploy/examples-istio", root())]);
    node.wait(
        &[
            "-n",
            NS,
            "--for=condition=complete",
            "job/orders-redis-create",
        ],
        300,
    );
    node.wait(
        &["-n", NS, "--for=condition=Available", "deployment/checkout"],
        180,
    );
    let pods = node.get_json(&["pods", "-n", NS]);
    for p in pods["items"].as_array().unwrap() {
        let name = p["metadata"]["name"].as_str().unwrap();
        let proxy = p["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == "istio-proxy");
        if name.starts_with("sessions-redis") {
            assert!(proxy.is_none(), "{name} opted out of injection");
        } else {
            let proxy = proxy.unwrap_or_else(|| panic!("{name} has no istio-proxy"));
            assert_eq!(proxy["image"], "localhost/istio/proxyv2:kn", "{name}");
            assert_eq!(proxy["restartPolicy"], "Always", "{name}: a native sidecar");
        }
    }
    whole_cluster(node);
    reads_on_every_shard(node);
    commands_land_where_they_should(node, "permissive");

    // IstioProgrammed from istiod's debug endpoints, asked from inside the cluster.
    let (status, reason, message) =
        wait_until("IstioProgrammed=True on orders", 2 * MINUTE, || {
            condition(node, "orders", "IstioProgrammed").filter(|c| c.0 == "True")
        });
    println!("  orders: IstioProgrammed={status} {reason}: {message}");
    assert_eq!(reason, "Programmed", "{message}");

    // An edit reaches the running sidecar: a new route.
    let t = Instant::now();
    node.kubectl(&[
        "-n",
        NS,
        "patch",
        "rediscluster",
        "orders",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/listener/routes/-","value":{"prefix":"cart:","cluster":"sessions"}}]"#,
    ]);
    let sessions = node.pods(NS, "app=sessions-redis")[0].0.clone();
    wait_until("cart: keys routed to sessions", MINUTE, || {
        let out = client(node, "redis-cli -h orders-redis SET cart:1 x 2>&1");
        (out.trim() == "OK" && keys(node, &sessions, "cart:*") == 1).then_some(())
    });
    println!(
        "  a new route reached the client's istio-proxy in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let generation = node.get_json(&["rediscluster", "-n", NS, "orders"])["metadata"]["generation"]
        .as_i64()
        .unwrap();
    wait_until("IstioProgrammed=True for the edit", MINUTE, || {
        let rc = node.get_json(&["rediscluster", "-n", NS, "orders"]);
        rc["status"]["conditions"].as_array()?.iter().find(|c| {
            c["type"] == "IstioProgrammed"
                && c["status"] == "True"
                && c["observedGeneration"].as_i64() == Some(generation)
        })?;
        Some(())
    });
}

/// Mesh-wide STRICT mutual TLS: plain text to the Redis pods is refused, and the client's
/// commands still land as before, also over connections opened after the change (a new
/// client pod). A RedisCluster that cannot reach its servers in the mesh says so.
pub fn strict(node: &Node) {
    node.apply(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec:\n  mtls: {mode: STRICT}\n",
    );
    let redis_ip = node.pods(NS, "app=orders-redis")[0].1.clone();
    let t = Instant::now();
    wait_until(
        "plain text refused by a Redis pod's istio-proxy",
        MINUTE,
        || {
            let pong = node.exec(&["redis-cli", "-h", &redis_ip, "ping"]);
            (!matches!(pong, Ok(ref s) if s.trim() == "PONG")).then_some(())
        },
    );
    println!(
        "  STRICT: plain text refused after {:.1}s",
        t.elapsed().as_secs_f64()
    );
    commands_land_where_they_should(node, "strict");
    // A new client: every upstream connection opened under STRICT.
    new_client(node);
    commands_land_where_they_should(node, "strict-new");

    // Servers half inside the mesh: a mode Cluster RedisCluster cannot reach them with one
    // transport, and its status says so.
    node.apply(&format!(
        "apiVersion: redis-xds.dev/v1alpha1\nkind: RedisCluster\nmetadata: {{name: mixed, namespace: {NS}}}\nspec:\n  endpoints:\n    selector:\n      matchExpressions: [{{key: app, operator: In, values: [orders-redis, sessions-redis]}}]\n---\napiVersion: redis-xds.dev/v1alpha1\nkind: RedisCluster\nmetadata: {{name: uses-mixed, namespace: {NS}}}\nspec:\n  mode: Sharded\n  endpoints: {{service: orders-next-redis}}\n  listener:\n    port: 6379\n    clients: {{namespaces: [{NS}], selector: {{matchLabels: {{app: nobody}}}}}}\n    enableRedirection: true\n    routes: [{{prefix: \"m:\", cluster: mixed}}]\n"
    ));
    let (_, reason, message) = wait_until("IstioProgrammed=False on mixed", MINUTE, || {
        condition(node, "mixed", "IstioProgrammed").filter(|c| c.0 == "False")
    });
    println!("  mixed: IstioProgrammed=False {reason}: {message}");
    assert!(message.contains("6 of 7 seeds"), "{message}");
    node.kubectl(&["-n", NS, "delete", "rediscluster", "mixed", "uses-mixed"]);
}

/// The write delivery: redis-xds writes EnvoyFilters, istiod reads only the API server, and
/// so istiod starts and serves while redis-xds is down. Under STRICT (left on by the
/// scenarios before), then PERMISSIVE.
pub fn write_delivery(node: &Node) {
    upgrade_redis_xds(node, "istio.delivery=write");
    wait_until("redis-xds's EnvoyFilter in shop-mesh", MINUTE, || {
        let list = node.get_json(&["envoyfilters", "-n", NS]);
        (!list["items"].as_array()?.is_empty()).then_some(())
    });
    // istiod without the xds:// source.
    node.helm(&[
        "upgrade",
        "istiod",
        &istio_chart("istio-control/istio-discovery"),
        "-n",
        "istio-system",
        "-f",
        &values(),
        "-f",
        &format!("{}/tests/node/istio-values-write.yaml", root()),
    ]);
    node.kubectl(&[
        "-n",
        "istio-system",
        "rollout",
        "restart",
        "deployment/istiod",
    ]);
    istiod_ready(node);
    reads_on_every_shard(node);
    commands_land_where_they_should(node, "write");

    // redis-xds down, istiod restarted, a new client: all served from the EnvoyFilters.
    node.kubectl(&[
        "-n",
        "redis-xds",
        "scale",
        "deployment/redis-xds",
        "--replicas=0",
    ]);
    wait_until("no redis-xds pod", 2 * MINUTE, || {
        node.pods("redis-xds", "app.kubernetes.io/name=redis-xds")
            .is_empty()
            .then_some(())
    });
    node.kubectl(&["-n", "istio-system", "delete", "pod", "-l", "app=istiod"]);
    istiod_ready(node);
    new_client(node);
    commands_land_where_they_should(node, "redis-xds-down");
    println!("  istiod restarted and a new client served while redis-xds was down");
    node.kubectl(&[
        "-n",
        "redis-xds",
        "scale",
        "deployment/redis-xds",
        "--replicas=2",
    ]);
    redis_xds_rolled_out(node);

    // And under the mesh's default PERMISSIVE mode again: still mutual TLS to the servers
    // in the mesh (commands_land_where_they_should counts the handshakes).
    node.kubectl(&[
        "-n",
        "istio-system",
        "delete",
        "peerauthentication",
        "default",
    ]);
    let redis_ip = node.pods(NS, "app=orders-redis")[0].1.clone();
    wait_until("plain text accepted again by a Redis pod", MINUTE, || {
        let pong = node.exec(&["redis-cli", "-h", &redis_ip, "ping"]).ok()?;
        (pong.trim() == "PONG").then_some(())
    });
    commands_land_where_they_should(node, "write-permissive");
}

/// Faults under steady traffic through istio-proxy, counted as in the faults scenario:
/// istiod restarted and one redis-xds pod deleted cost no command; a Redis primary lost
/// costs only the Redis Cluster's own failover.
pub fn faults(node: &Node) {
    node.apply(&traffic::pod(NS, "orders-redis"));
    node.wait(&["-n", NS, "--for=condition=Ready", "pod/traffic"], 120);
    wait_until("steady traffic through istio-proxy", 2 * MINUTE, || {
        let s = traffic::samples_in(node, NS);
        (s.len() >= 20 && s.iter().rev().take(20).all(|x| x.ok)).then_some(())
    });
    let mut zero_failures = Vec::new();
    let w = under_traffic_in(node, NS, "istiod restarted", || {
        node.kubectl(&["-n", "istio-system", "delete", "pod", "-l", "app=istiod"]);
        istiod_ready(node);
        None
    });
    zero_failures.push(("istiod restarted", w));
    let w = under_traffic_in(node, NS, "one redis-xds pod deleted", || {
        let pod = node.pods("redis-xds", "app.kubernetes.io/name=redis-xds")[0]
            .0
            .clone();
        node.kubectl(&["-n", "redis-xds", "delete", "pod", &pod]);
        redis_xds_rolled_out(node);
        None
    });
    zero_failures.push(("one redis-xds pod deleted", w));
    let (primaries, _) = whole_cluster(node);
    let victim = primaries[0].clone();
    let old_ip = node
        .pods(NS, "app=orders-redis")
        .into_iter()
        .find(|p| p.0 == victim)
        .unwrap()
        .1;
    let w = under_traffic_in(node, NS, "Redis primary pod deleted", || {
        node.kubectl(&["-n", NS, "delete", "pod", &victim, "--wait=false"]);
        wait_until("the primary's pod back on a new IP", 3 * MINUTE, || {
            node.pods(NS, "app=orders-redis")
                .iter()
                .any(|p| p.0 == victim && p.2 && p.1 != old_ip)
                .then_some(())
        });
        whole_cluster(node);
        None
    });
    assert!(
        w.longest_outage < Duration::from_secs(45),
        "Redis primary pod deleted: {w}"
    );
    assert_eq!(ready_condition(node), "True");
    for (name, w) in &zero_failures {
        assert!(w.sent > 0, "{name}: no traffic in the window");
        assert_eq!(w.failed, 0, "{name}: {w}");
    }
    // Gone before the next scenario counts GETs on the servers.
    node.kubectl(&["-n", NS, "delete", "pod", "traffic", "--grace-period=1"]);
}
