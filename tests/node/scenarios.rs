//! The scenarios, in the order a user meets them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde_json::Value;

use crate::cluster::Node;
use crate::traffic::{self, Window};
use crate::wait_until;

fn root() -> String {
    env!("CARGO_MANIFEST_DIR").to_owned()
}

const MINUTE: Duration = Duration::from_secs(60);

/// `helm install` of charts/redis-xds (the same objects as `kubectl apply -k deploy/`,
/// tests/suite/chart.rs) becomes Ready, from the image this repository's Dockerfile builds,
/// and redis-xds writes the webhooks' caBundle itself.
pub fn install(node: &Node) {
    let image = std::process::Command::new("buildah")
        .args([
            "inspect",
            "--type",
            "image",
            "docker.io/library/redis-xds:latest",
        ])
        .output()
        .expect("buildah runs");
    assert!(image.status.success(), "the image was built");
    let image: Value = serde_json::from_slice(&image.stdout).unwrap();
    let config = &image["OCIv1"]["config"];
    assert_eq!(config["User"], "65532:65532", "{config}");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/redis-xds"])
    );
    assert_eq!(config["Cmd"], serde_json::json!(["serve"]));

    let chart = format!("{}/charts/redis-xds", root());
    let installed = node.helm(&[
        "install",
        "redis-xds",
        &chart,
        "--namespace",
        "redis-xds",
        "--create-namespace",
    ]);
    assert!(installed.contains("STATUS: deployed"), "{installed}");
    node.wait(
        &[
            "-n",
            "redis-xds",
            "--for=condition=Available",
            "deployment/redis-xds",
        ],
        180,
    );
    wait_until("both redis-xds replicas Ready", 3 * MINUTE, || {
        let ready = node.pods("redis-xds", "app.kubernetes.io/name=redis-xds");
        (ready.len() == 2 && ready.iter().all(|p| p.2)).then_some(())
    });
    let webhooks = wait_until("a caBundle in every webhook", MINUTE, || {
        let mwc = node.get_json(&["mutatingwebhookconfiguration", "redis-xds"]);
        let hooks = mwc["webhooks"].as_array()?.clone();
        hooks
            .iter()
            .all(|h| {
                h["clientConfig"]["caBundle"]
                    .as_str()
                    .is_some_and(|b| !b.is_empty())
            })
            .then_some(hooks)
    });
    assert_eq!(webhooks.len(), 3);
    // The bundle is the CA redis-xds keeps in its Secret.
    let secret = node.get_json(&["secret", "-n", "redis-xds", "redis-xds-ca"]);
    assert_eq!(
        webhooks[0]["clientConfig"]["caBundle"],
        secret["data"]["ca.crt"]
    );
    let releases = node.helm(&["list", "--namespace", "redis-xds", "--output", "json"]);
    let releases: Value = serde_json::from_str(&releases).unwrap();
    assert_eq!(releases[0]["status"], "deployed", "{releases}");
    println!(
        "  redis-xds: helm install deployed, 2 replicas Ready, caBundle written to 3 webhooks"
    );
}

/// The Redis Cluster's nodes as `(ip, is_primary)`, read from one of them.
fn cluster_nodes(node: &Node, ip: &str) -> Vec<(String, bool)> {
    node.redis(ip, &["cluster", "nodes"])
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let addr = f.get(1)?.split(['@', ':']).next()?.to_owned();
            let flags = f.get(2)?;
            (!flags.contains("fail")).then(|| (addr, flags.contains("master")))
        })
        .collect()
}

/// Waits until the Redis Cluster of the pods `selector` selects is whole: `cluster_state:ok`
/// on every server, `primaries` primaries, and every replica listed in every server's
/// CLUSTER SLOTS (what Envoy reads; a replica shows there only after its first sync).
/// Returns (primaries, replicas) by IP.
fn whole_cluster(node: &Node, selector: &str, primaries: usize) -> (Vec<String>, Vec<String>) {
    wait_until(
        &format!("the Redis Cluster of {selector} to be whole"),
        3 * MINUTE,
        || {
            let pods = node.pods("shop", selector);
            if pods.iter().any(|p| !p.2) {
                return None;
            }
            let ips: Vec<&str> = pods.iter().map(|p| p.1.as_str()).collect();
            let nodes = cluster_nodes(node, ips[0]);
            let (p, r): (Vec<_>, Vec<_>) = nodes.iter().partition(|n| n.1);
            let p: Vec<String> = p.into_iter().map(|n| n.0.clone()).collect();
            let r: Vec<String> = r.into_iter().map(|n| n.0.clone()).collect();
            if p.len() != primaries || p.len() + r.len() != pods.len() {
                return None;
            }
            for ip in &ips {
                if !node
                    .redis(ip, &["cluster", "info"])
                    .contains("cluster_state:ok")
                {
                    return None;
                }
                let slots = node.redis(ip, &["cluster", "slots"]);
                if r.iter().any(|replica| !slots.lines().any(|l| l == replica)) {
                    return None;
                }
            }
            Some((p, r))
        },
    )
}

/// `cmdstat_<command>` calls on the server at `ip`.
fn calls(node: &Node, ip: &str, command: &str) -> u64 {
    let stats = node.redis(ip, &["info", "commandstats"]);
    let prefix = format!("cmdstat_{command}:calls=");
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |rest| {
            rest.split(',').next().unwrap().trim().parse().unwrap()
        })
}

/// Keys matching `pattern` on the server at `ip`.
fn keys(node: &Node, ip: &str, pattern: &str) -> usize {
    node.redis(ip, &["--scan", "--pattern", pattern])
        .lines()
        .filter(|l| !l.is_empty())
        .count()
}

/// Runs `script` in a checkout pod's application container, whose Redis is its sidecar.
fn in_app(node: &Node, pod: &str, script: &str) -> String {
    node.kubectl(&[
        "-n", "shop", "exec", pod, "-c", "app", "--", "sh", "-c", script,
    ])
}

/// A bearer token allowed to read `/debug/*` (the ClusterRole `redis-xds-debug`), made the
/// way docs/operations.md tells an operator to.
fn debug_token(node: &Node) -> String {
    if node
        .try_kubectl(&["-n", "redis-xds", "get", "serviceaccount", "node-test"])
        .is_err()
    {
        node.kubectl(&["-n", "redis-xds", "create", "serviceaccount", "node-test"]);
        node.kubectl(&[
            "create",
            "clusterrolebinding",
            "node-test-debug",
            "--clusterrole",
            "redis-xds-debug",
            "--serviceaccount",
            "redis-xds:node-test",
        ]);
    }
    node.kubectl(&["-n", "redis-xds", "create", "token", "node-test"])
        .trim()
        .to_owned()
}

/// Every replica's `/debug/syncz`, merged: proxy name -> (replica, {type: state}).
fn syncz(node: &Node, token: &str) -> BTreeMap<String, (String, BTreeMap<String, String>)> {
    let mut out = BTreeMap::new();
    for (pod, ip, _) in node.pods("redis-xds", "app.kubernetes.io/name=redis-xds") {
        let auth = format!("Authorization: Bearer {token}");
        let url = format!("http://{ip}:18001/debug/syncz");
        let Ok(body) = node.exec(&["curl", "-sf", "-H", &auth, &url]) else {
            continue;
        };
        let json: Value = serde_json::from_str(&body).unwrap();
        for p in json["proxies"].as_array().unwrap() {
            let types = p["types"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v["state"].as_str().unwrap_or("").to_owned()))
                .collect();
            out.insert(
                p["proxy"].as_str().unwrap().to_owned(),
                (pod.clone(), types),
            );
        }
    }
    out
}

/// `count` static volumes named `<prefix>-<i>` for a Redis StatefulSet's claims (this node
/// has no provisioner). Their data lives in the node's state directory, removed with it.
pub fn static_volumes(node: &Node, prefix: &str, count: usize) {
    let dir = node.state().join("pv");
    for i in 0..count {
        node.apply(&format!(
            "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: {prefix}-{i}}}\nspec:\n  capacity: {{storage: 1Gi}}\n  accessModes: [ReadWriteOnce]\n  persistentVolumeReclaimPolicy: Retain\n  hostPath: {{path: {}/{prefix}-{i}, type: DirectoryOrCreate}}\n",
            dir.display()
        ));
    }
}

/// `kubectl apply -k deploy/examples/`: every checkout pod gets its sidecar, SYNCED; the
/// app's commands land on the primaries by slot, reads on replicas (readPolicy Replica),
/// `session:` keys on the Sharded servers, and a tenth of the writes on the mirror.
pub fn examples(node: &Node) {
    static_volumes(node, "kn-pv", 6);
    node.kubectl(&["apply", "-k", &format!("{}/deploy/examples", root())]);
    node.wait(
        &[
            "-n",
            "shop",
            "--for=condition=complete",
            "job/orders-redis-create",
            "job/orders-next-redis-create",
        ],
        300,
    );
    node.wait(
        &[
            "-n",
            "shop",
            "--for=condition=Available",
            "deployment/checkout",
        ],
        180,
    );
    let checkout: Vec<String> = node
        .pods("shop", "app=checkout")
        .into_iter()
        .map(|p| p.0)
        .collect();
    assert_eq!(checkout.len(), 2, "{checkout:?}");
    for pod in &checkout {
        let p = node.get_json(&["pod", "-n", "shop", pod]);
        let sidecar = p["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == "redis-xds-proxy")
            .unwrap_or_else(|| panic!("{pod} has no injected sidecar: {}", p["spec"]));
        assert_eq!(sidecar["restartPolicy"], "Always", "a native sidecar");
        assert_eq!(sidecar["image"], "envoyproxy/envoy:v1.40.0");
    }

    // Each sidecar is connected to one replica and SYNCED there; the debug port refuses a
    // caller without a token.
    let token = debug_token(node);
    let (_, any_ip, _) = node
        .pods("redis-xds", "app.kubernetes.io/name=redis-xds")
        .remove(0);
    let anonymous = node
        .exec(&[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{any_ip}:18001/debug/syncz"),
        ])
        .unwrap();
    assert_eq!(anonymous, "401", "/debug/syncz without a token");
    let proxies = wait_until("every checkout sidecar SYNCED", 2 * MINUTE, || {
        let s = syncz(node, &token);
        checkout
            .iter()
            .all(|pod| {
                s.get(pod).is_some_and(|(_, types)| {
                    !types.is_empty() && types.values().all(|st| st == "SYNCED")
                })
            })
            .then_some(s)
    });
    for pod in &checkout {
        println!("  {pod}: {:?} via {}", proxies[pod].1, proxies[pod].0);
    }

    let (primaries, replicas) = whole_cluster(node, "app=orders-redis", 3);
    let (next_primaries, _) = whole_cluster(node, "app=orders-next-redis", 3);
    let app = &checkout[0];
    // Envoy learns replicas from CLUSTER SLOTS at its next topology refresh (5 s here):
    // until then a strict replica read has no host. Wait until reads work on every shard
    // (30 keys cover the three shards but with odds of 1 in 60,000).
    wait_until(
        "replica reads on every shard through the sidecar",
        MINUTE,
        || {
            let out = in_app(
                node,
                app,
                "for i in $(seq 1 30); do redis-cli GET probe:$i; done",
            );
            // Probe keys do not exist: every answer is an empty line (nil). redis-cli
            // prints an error without "(error)" when its output is not a terminal, so
            // look for anything but nil.
            let lines: Vec<&str> = out.lines().collect();
            (lines.len() == 30 && lines.iter().all(|l| l.is_empty())).then_some(())
        },
    );

    // Writes: 300 keys, each lands on the primary that owns its slot (a primary refuses
    // any other with MOVED), spread over all three.
    let before_get: Vec<u64> = primaries
        .iter()
        .chain(&replicas)
        .map(|ip| calls(node, ip, "get"))
        .collect();
    let out = in_app(
        node,
        app,
        "for i in $(seq 1 300); do redis-cli SET key:$i v$i; done",
    );
    assert_eq!(
        out.lines().filter(|l| *l == "OK").count(),
        300,
        "300 SETs through the sidecar: {out}"
    );
    let per_primary: Vec<usize> = primaries.iter().map(|ip| keys(node, ip, "key:*")).collect();
    println!("  300 keys by primary: {per_primary:?}");
    assert_eq!(per_primary.iter().sum::<usize>(), 300);
    assert!(per_primary.iter().all(|n| *n > 0), "{per_primary:?}");

    // Reads: 100 GETs, all answered by replicas (readPolicy Replica).
    let out = in_app(
        node,
        app,
        "for i in $(seq 1 100); do redis-cli GET key:$i; done",
    );
    let want: Vec<String> = (1..=100).map(|i| format!("v{i}")).collect();
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        want,
        "GETs through the sidecar"
    );
    let after_get: Vec<u64> = primaries
        .iter()
        .chain(&replicas)
        .map(|ip| calls(node, ip, "get"))
        .collect();
    let delta: Vec<u64> = after_get
        .iter()
        .zip(&before_get)
        .map(|(a, b)| a - b)
        .collect();
    println!(
        "  100 GETs: primaries {:?}, replicas {:?}",
        &delta[..3],
        &delta[3..]
    );
    assert_eq!(&delta[..3], [0, 0, 0], "no GET on a primary");
    assert_eq!(
        delta[3..].iter().sum::<u64>(),
        100,
        "every GET on a replica"
    );

    // The mirror: catchAll mirrors 10% of writes, and no reads, to orders-next.
    let mirrored: usize = next_primaries
        .iter()
        .map(|ip| keys(node, ip, "key:*"))
        .sum();
    let mirrored_gets: u64 = next_primaries.iter().map(|ip| calls(node, ip, "get")).sum();
    println!("  mirrored to orders-next: {mirrored} of 300 writes, {mirrored_gets} reads");
    assert!(
        (1..=100).contains(&mirrored),
        "10% of 300 writes mirrored, got {mirrored}"
    );
    assert_eq!(mirrored_gets, 0, "excludeReadCommands");

    // The app's own `session:` writes are routed to the Sharded sessions servers.
    let sessions: usize = node
        .pods("shop", "app=sessions-redis")
        .iter()
        .map(|p| keys(node, &p.1, "session:*"))
        .sum();
    let on_orders: usize = primaries.iter().map(|ip| keys(node, ip, "session:*")).sum();
    assert!(
        sessions >= checkout.len(),
        "session keys on sessions-redis: {sessions}"
    );
    assert_eq!(on_orders, 0, "no session key on the orders cluster");
}

/// Runs one fault while the traffic pod keeps sending, and sums up what it saw from the
/// fault's start until the traffic is steady again: once `fault` returned (the system it
/// disturbed is whole again), 20 commands in a row succeeded, all sent after that.
fn under_traffic(node: &Node, name: &str, fault: impl FnOnce() -> Option<f64>) -> Window {
    under_traffic_in(node, "shop", name, fault)
}

/// [`under_traffic`] for the traffic pod of `namespace`.
pub fn under_traffic_in(
    node: &Node,
    namespace: &str,
    name: &str,
    fault: impl FnOnce() -> Option<f64>,
) -> Window {
    let from = Timestamp::now();
    let t = Instant::now();
    let converged = fault();
    let recovered = Timestamp::now();
    let samples = wait_until(
        &format!("{name}: 20 commands in a row succeeding after the fault"),
        2 * MINUTE,
        || {
            let s = traffic::samples_in(node, namespace);
            let last: Vec<_> = s.iter().rev().take(20).collect();
            (last.len() == 20 && last.iter().all(|x| x.ok && x.at > recovered)).then_some(s)
        },
    );
    let to = samples.last().map_or(recovered, |s| s.at);
    let w = traffic::window(&samples, from, to);
    print!("  {name}: {w}; {:.1}s", t.elapsed().as_secs_f64());
    match converged {
        Some(s) => println!(", converged in {s:.1}s"),
        None => println!(),
    }
    w
}

/// The node Ready and every running pod of the test's namespaces Ready: the state each fault
/// starts from and must end in (an API server back after an outage also makes the node
/// controller mark the node NotReady until the kubelet reports again).
fn steady(node: &Node) {
    wait_until("the node and every pod Ready", 3 * MINUTE, || {
        if ready_condition(node) != "True" {
            return None;
        }
        for ns in ["redis-xds", "shop"] {
            let pods = node.get_json(&["pods", "-n", ns, "--field-selector=status.phase=Running"]);
            let all_ready = pods["items"].as_array()?.iter().all(|p| {
                p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            if !all_ready {
                return None;
            }
        }
        redis_xds_ready(node)
    });
}

pub fn redis_xds_ready(node: &Node) -> Option<()> {
    let pods = node.pods("redis-xds", "app.kubernetes.io/name=redis-xds");
    (pods.len() == 2 && pods.iter().all(|p| p.2)).then_some(())
}

pub fn ready_condition(node: &Node) -> String {
    node.kubectl(&[
        "get",
        "node",
        "kn-node",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ])
}

/// Faults under steady traffic, one at a time. The control plane going away, restarting or
/// losing its API server costs no command; an edit reaches the running sidecar within
/// seconds; a Redis primary lost costs only the Redis Cluster's own failover.
pub fn faults(node: &Node) {
    node.apply(traffic::POD);
    node.wait(&["-n", "shop", "--for=condition=Ready", "pod/traffic"], 120);
    wait_until("steady traffic", MINUTE, || {
        let s = traffic::samples(node);
        (s.len() >= 20 && s.iter().rev().take(20).all(|x| x.ok)).then_some(())
    });
    let mut zero_failures = Vec::new();
    steady(node);

    // The replica whose stream the traffic pod's sidecar holds: the one whose loss it feels.
    let token = debug_token(node);
    let serving = wait_until("the traffic sidecar SYNCED", MINUTE, || {
        let s = syncz(node, &token);
        let (replica, types) = s.get("traffic")?;
        types
            .values()
            .all(|st| st == "SYNCED")
            .then(|| replica.clone())
    });
    let w = under_traffic(node, "one redis-xds pod deleted", || {
        let pod = serving;
        node.kubectl(&["-n", "redis-xds", "delete", "pod", &pod]);
        steady(node);
        // The sidecar now holds a stream with another replica, and is in sync there.
        wait_until("the traffic sidecar SYNCED elsewhere", MINUTE, || {
            let s = syncz(node, &token);
            let (replica, types) = s.get("traffic")?;
            (replica != &pod && types.values().all(|st| st == "SYNCED")).then_some(())
        });
        None
    });
    zero_failures.push(("one redis-xds pod deleted", w));

    let w = under_traffic(node, "rollout restart of redis-xds", || {
        let before = node.pods("redis-xds", "app.kubernetes.io/name=redis-xds");
        node.kubectl(&[
            "-n",
            "redis-xds",
            "rollout",
            "restart",
            "deployment/redis-xds",
        ]);
        node.rollout_status("redis-xds", "deployment/redis-xds");
        steady(node);
        let after = node.pods("redis-xds", "app.kubernetes.io/name=redis-xds");
        assert!(
            after.iter().all(|a| before.iter().all(|b| a.0 != b.0)),
            "every replica replaced: {before:?} -> {after:?}"
        );
        None
    });
    zero_failures.push(("rollout restart of redis-xds", w));

    // A Redis primary deleted: its replica takes over after cluster-node-timeout (5 s), the
    // pod comes back on a new IP and rejoins as a replica. Before the API server and
    // kubelet faults: after them, kube-scheduler has twice left the replacement pod Pending
    // with no scheduling event ("Scheduler cache is corrupted" in its log), a fault of the
    // scheduler's and not of what this test measures.
    let (primaries, _) = whole_cluster(node, "app=orders-redis", 3);
    let pods = node.pods("shop", "app=orders-redis");
    let (victim, old_ip, _) = pods
        .iter()
        .find(|p| primaries.contains(&p.1))
        .expect("a primary pod")
        .clone();
    let w = under_traffic(node, "Redis primary pod deleted", || {
        node.kubectl(&["-n", "shop", "delete", "pod", &victim, "--wait=false"]);
        wait_until("the primary's pod back on a new IP", 3 * MINUTE, || {
            node.pods("shop", "app=orders-redis")
                .iter()
                .any(|p| p.0 == victim && p.2 && p.1 != old_ip)
                .then_some(())
        });
        whole_cluster(node, "app=orders-redis", 3);
        // The next fault starts from settled traffic, as after every other one: Envoy's
        // topology refresh may still be catching up with the rejoined replica.
        steady(node);
        None
    });
    // Redis Cluster fails over after cluster-node-timeout (5 s) plus an election; Envoy
    // then needs its next topology refresh (5 s). Anything near a minute would be ours.
    assert!(
        w.longest_outage < Duration::from_secs(45),
        "Redis primary pod deleted: {w}"
    );

    let w = under_traffic(node, "API server stopped for 15 s", || {
        node.stop("kube-apiserver");
        // The outage itself: what is measured is what the clients see meanwhile.
        std::thread::sleep(Duration::from_secs(15));
        node.start_component("kube-apiserver");
        node.wait_api();
        steady(node);
        None
    });
    zero_failures.push(("API server stopped for 15 s", w));

    let w = under_traffic(node, "kubelet stopped until the node is NotReady", || {
        let t = Instant::now();
        node.stop("kubelet");
        wait_until("the node and its Redis pods NotReady", 3 * MINUTE, || {
            let not_ready = ready_condition(node) != "True";
            let redis = node.pods("shop", "app=orders-redis");
            (not_ready && redis.iter().all(|p| !p.2)).then_some(())
        });
        println!(
            "  (node and pods NotReady {:.1}s after the kubelet stopped)",
            t.elapsed().as_secs_f64()
        );
        node.start_component("kubelet");
        steady(node);
        None
    });
    zero_failures.push(("kubelet stopped until the node is NotReady", w));

    let (primaries, _) = whole_cluster(node, "app=orders-redis", 3);
    let w = under_traffic(node, "RedisCluster edited (readPolicy Master)", || {
        let before: u64 = primaries.iter().map(|ip| calls(node, ip, "get")).sum();
        let t = Instant::now();
        node.kubectl(&[
            "-n",
            "shop",
            "patch",
            "rediscluster",
            "orders",
            "--type=merge",
            "-p",
            r#"{"spec":{"listener":{"readPolicy":"Master"}}}"#,
        ]);
        // The traffic pod's GETs start landing on primaries once its sidecar has the edit.
        wait_until("GETs on the primaries", MINUTE, || {
            let now: u64 = primaries.iter().map(|ip| calls(node, ip, "get")).sum();
            (now > before).then_some(())
        });
        let secs = t.elapsed().as_secs_f64();
        assert!(secs < 30.0, "the edit took {secs:.1}s to reach the sidecar");
        Some(secs)
    });
    zero_failures.push(("RedisCluster edited", w));

    for (name, w) in &zero_failures {
        assert!(w.sent > 0, "{name}: no traffic in the window");
        assert_eq!(w.failed, 0, "{name}: {w}");
    }
}
